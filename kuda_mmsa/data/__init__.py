"""Data: safe reading and validation of MMSA feature pickles, seeded loaders, and the
generated data (the demo set, its tiny BERT)."""
from .cache import cache_root, demo_facts, ensure_demo_data, ensure_family_data
from .corruption import Corruption, CorruptedDataset
from .families import FAMILIES, make_family
from .demo import DEFAULTS as DEMO_DEFAULTS
from .demo import facts_of, make_demo_splits
from .features import FeatureSet, FeatureSpec, KudaMMDataset, file_identity, read_features
from .loaders import make_loaders, split_generator
from .tiny_bert import DEMO_BERT_NAME, ensure_demo_text_encoder
from .validate import text_encoder_vocab_size

__all__ = [
    "cache_root", "demo_facts", "ensure_demo_data", "ensure_family_data", "Corruption", "CorruptedDataset",
    "FAMILIES", "make_family", "ensure_demo_text_encoder",
    "make_demo_splits", "facts_of", "DEMO_DEFAULTS", "DEMO_BERT_NAME", "FeatureSet",
    "FeatureSpec", "KudaMMDataset", "file_identity", "read_features", "make_loaders",
    "split_generator", "text_encoder_vocab_size",
]
