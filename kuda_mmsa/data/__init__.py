"""Data: safe reading and validation of MMSA feature pickles, seeded loaders, and the
generated data (the demo set, its tiny BERT).

The names below are imported on first use (PEP 562): most of them need torch, and the
command line's parsers import light modules of this package (``kinds``) without paying
for it.
"""
import importlib

_WHERE = {
    "cache_root": "cache", "demo_facts": "cache", "ensure_demo_data": "cache", "ensure_family_data": "cache",
    "Corruption": "corruption", "CorruptedDataset": "corruption",
    "FAMILIES": "families", "make_family": "families",
    "DEMO_DEFAULTS": ("demo", "DEFAULTS"), "facts_of": "demo", "make_demo_splits": "demo",
    "FeatureSet": "features", "FeatureSpec": "features", "KudaMMDataset": "features",
    "file_identity": "features", "read_features": "features",
    "make_loaders": "loaders", "split_generator": "loaders",
    "DEMO_BERT_NAME": "tiny_bert", "ensure_demo_text_encoder": "tiny_bert",
    "text_encoder_vocab_size": "validate",
}

__all__ = list(_WHERE)


def __getattr__(name):
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attr = where if isinstance(where, tuple) else (where, name)
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
