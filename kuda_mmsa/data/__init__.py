"""Synthetic MMSA-format data: the demo dataset, its tiny BERT, pickle validation."""
from .cache import cache_root, demo_facts, ensure_demo_data
from .demo import DEFAULTS as DEMO_DEFAULTS
from .demo import facts_of, make_demo_splits
from .tiny_bert import DEMO_BERT_NAME, ensure_demo_text_encoder

__all__ = [
    "cache_root", "demo_facts", "ensure_demo_data", "ensure_demo_text_encoder",
    "make_demo_splits", "facts_of", "DEMO_DEFAULTS", "DEMO_BERT_NAME",
]
