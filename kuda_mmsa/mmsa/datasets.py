"""The one table of dataset facts.

Everything MMSA's config needs to know about a dataset that is not a hyper-parameter:
relative feature file, sequence lengths and feature dimensions (MMSA's order [T, A, V]),
split sizes, metrics family, label range, unimodal labels, KeyEval, language and the
default text encoder. Shapes here are *defaults*: the loader reads the real shapes from
the pickle (as MMSA does) and only complains when a user config fixes different ones.

File names are relative to the data root (``--data-root``, else ``$MMSA_DATA_ROOT``, else
``~/MMSA/datasets``) and follow MMSA's own layout:

- sims:   ``SIMS/Processed/unaligned_39.pkl`` (CH-SIMS, MMSA download page)
- simsv2: ``SIMSv2/Processed/unaligned.pkl`` (CH-SIMS v2 *supervised* unaligned features,
  from the CH-SIMS v2 download page; MMSA 2.2.1 has no entry for it, this is the name the
  MMSA authors' CH-SIMS v2 release uses for the unaligned pickle)
- mosi:   ``MOSI/Processed/unaligned_50.pkl``
- mosei:  ``MOSEI/Processed/unaligned_50.pkl``
- demo:   generated on first use into the cache (kuda_mmsa.data.ensure_demo_data); its
  facts are read from the generated file, never hard-coded.
"""
from __future__ import annotations

import copy

from ..errors import KudaInputError

ALIASES = {"sims2": "simsv2"}

DATASETS = {
    "sims": dict(
        featurePath="SIMS/Processed/unaligned_39.pkl",
        seq_lens=[39, 400, 55], feature_dims=[768, 33, 709],
        splits={"train": 1368, "valid": 456, "test": 457},
        metrics_name="SIMS", label_range=[-1.0, 1.0], has_unimodal_labels=True,
        KeyEval="Loss", language="cn", num_classes=3, default_bert="bert-base-chinese",
        mmsa_params_from="sims", download="the MMSA dataset page (CH-SIMS, "
        "https://github.com/thuiar/MMSA, 'Datasets')",
    ),
    "simsv2": dict(
        featurePath="SIMSv2/Processed/unaligned.pkl",
        seq_lens=[50, 925, 232], feature_dims=[768, 25, 177],
        splits={"train": 2722, "valid": 647, "test": 1034},
        metrics_name="SIMS", label_range=[-1.0, 1.0], has_unimodal_labels=True,
        KeyEval="Loss", language="cn", num_classes=3, default_bert="bert-base-chinese",
        mmsa_params_from="sims", download="the CH-SIMS v2 download page "
        "(https://github.com/thuiar/ch-sims-v2, supervised unaligned features)",
    ),
    "mosi": dict(
        featurePath="MOSI/Processed/unaligned_50.pkl",
        seq_lens=[50, 375, 500], feature_dims=[768, 5, 20],
        splits={"train": 1284, "valid": 229, "test": 686},
        metrics_name="MOSI", label_range=[-3.0, 3.0], has_unimodal_labels=False,
        KeyEval="Loss", language="en", num_classes=3, default_bert="bert-base-uncased",
        mmsa_params_from="mosi", download="the MMSA dataset page (CMU-MOSI, "
        "https://github.com/thuiar/MMSA, 'Datasets')",
    ),
    "mosei": dict(
        featurePath="MOSEI/Processed/unaligned_50.pkl",
        seq_lens=[50, 500, 500], feature_dims=[768, 74, 35],
        splits={"train": 16326, "valid": 1871, "test": 4659},
        metrics_name="MOSEI", label_range=[-3.0, 3.0], has_unimodal_labels=False,
        KeyEval="Loss", language="en", num_classes=3, default_bert="bert-base-uncased",
        mmsa_params_from="mosei", download="the MMSA dataset page (CMU-MOSEI, "
        "https://github.com/thuiar/MMSA, 'Datasets')",
    ),
    "demo": dict(
        featurePath=None,  # generated: kuda_mmsa.data.ensure_demo_data()
        seq_lens=None, feature_dims=None, splits=None,  # read from the generated file
        metrics_name="SIMS", label_range=[-1.0, 1.0], has_unimodal_labels=True,
        KeyEval="Loss", language="en", num_classes=3, default_bert="demo-tiny-bert",
        mmsa_params_from="sims", download="kuda_mmsa itself (generated on first use, "
        "no download)",
    ),
}

STOCK_DATASETS = ("mosi", "mosei", "sims")


def canonical_name(name: str) -> str:
    name = str(name).lower()
    return ALIASES.get(name, name)


def dataset_choices() -> list:
    return sorted(set(DATASETS) | set(ALIASES))


def get_facts(name: str, generate_demo: bool = True) -> dict:
    """A copy of the facts of dataset ``name`` (aliases accepted). Raises KudaInputError
    listing the choices for an unknown name. The demo entry is completed from the
    generated file (generated on first use), unless ``generate_demo`` is False (a run on
    another feature file: its facts come from that file)."""
    key = canonical_name(name)
    if key not in DATASETS:
        raise KudaInputError(
            f"Unknown dataset '{name}'. kuda_mmsa knows: {', '.join(dataset_choices())} "
            f"(sims2 is an alias of simsv2). To train on another MMSA-format pickle, pick the "
            f"dataset whose metrics you want (e.g. -d sims) and pass --feature-file PATH."
        )
    facts = copy.deepcopy(DATASETS[key])
    facts["name"] = key
    if key == "demo" and facts["featurePath"] is None and generate_demo:
        from ..data import demo_facts, ensure_demo_data   # here: the parsers import this table

        path = ensure_demo_data()
        facts.update(demo_facts(path))
        facts["featurePath"] = str(path)
    return facts


def metrics_family(name: str) -> str | None:
    key = canonical_name(name)
    if key in DATASETS:
        return DATASETS[key]["metrics_name"]
    return None
