"""Experiments as library code: the ablation, robustness, explanation and reproduction runners
and the variant registry. They build runs through the MMSA glue (kuda_mmsa.mmsa) and run them
through the sweep executors (kuda_mmsa.sweeps); kuda_mmsa.cli holds their parsers and printing.
"""
