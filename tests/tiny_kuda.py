"""The tiny KuDA configuration the training, ablation and explain tests train with (seconds
per run on 2 CPU cores on the tiny demo data of conftest.py)."""
from pathlib import Path

import yaml

TINY_KUDA = dict(
    hidden_size=16, fusion_heads=2, fusion_head_dim=8, fusion_ff_size=32, fusion_layers=2,
    av_hidden_size=8, av_heads=2, av_ff_size=8, av_layers=2, adapter_heads=2,
    batch_size=8, epochs=2, early_stop=5, learning_rate=1e-3,
    pretrain={"epochs": {"T": 1, "V": 1, "A": 1}, "batch_size": 8, "early_stop": 5},
)


def run_of(**keys):
    """A RunConfig from a few args (the rest: the schema's defaults), with data dims of its own
    for the helpers that never build a model."""
    from kuda_mmsa.training.run_config import RunConfig

    return RunConfig.from_args({"feature_dims": [8, 4, 6], "seq_lens": [5, 6, 7], **keys})


def write_tiny_config(path, **overrides) -> Path:
    """Write TINY_KUDA (with overrides) as a YAML config file for `-c`."""
    path = Path(path)
    path.write_text(yaml.safe_dump({**TINY_KUDA, **overrides}))
    return path
