"""The test-time corruptions (kuda_mmsa.data.corruption) and the robustness protocols
(kuda_mmsa.training.protocols), named where the command line's parsers can read them without
importing torch."""
KINDS = ("missing", "noise", "swap")
# ours: KINDS x one modality x share of samples; tfrnet: MMSA's TFR-Net missing option;
# lnln: LNLN's evaluation (Zhang et al., NeurIPS 2024). See kuda_mmsa.training.protocols.
PROTOCOLS = ("ours", "tfrnet", "lnln")
