"""Experiments as library code: the ablation, robustness, explanation, reproduction and tuning
runners and the variant registry (the tuners are reached through kuda_mmsa.registry.TUNERS).
They build runs through the MMSA glue (kuda_mmsa.mmsa) and run them through the sweep
executors (kuda_mmsa.sweeps); kuda_mmsa.cli holds their parsers and printing.
"""
