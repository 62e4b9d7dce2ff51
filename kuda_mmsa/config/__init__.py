"""The one typed configuration schema (bottom layer: every other package may use it).

``schema``: every key with type, range, default and help; ``layers``: reading config files
and applying them over the defaults with provenance (``resolve``), ``render`` for
``config show``; ``keys``: checking one value.
"""
from .keys import Key, closest
from .layers import (DATA_FACTS, Effective, apply_mapping, describe_keys, package_config_path,
                     read_config_file, render, resolve)
from .schema import FUSION_MODES, KEYS, PRECISIONS, SCHEMA, defaults, keys_of

__all__ = [
    "Key", "closest", "DATA_FACTS", "Effective", "apply_mapping", "describe_keys",
    "package_config_path", "read_config_file", "render", "resolve", "FUSION_MODES",
    "KEYS", "PRECISIONS", "SCHEMA", "defaults", "keys_of",
]
