"""A tiny local BERT for the demo dataset (no hub access, deterministic weights).

Built from a BertConfig (4 layers, hidden 64, 4 heads) whose vocabulary is the demo
vocabulary (kuda_mmsa.data.vocab), initialised under ``torch.manual_seed(0)`` inside a
forked RNG (the caller's random state is untouched), saved with ``save_pretrained`` plus
``vocab.txt`` and tokenizer files, so ``BertModel``/``BertTokenizer``/``AutoConfig``
``.from_pretrained(folder)`` all load it offline.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import vocab as V
from .cache import cache_root, replace_dir_atomically

TINY_BERT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=128)
TINY_BERT_VERSION = 1
DEMO_BERT_NAME = "demo-tiny-bert"


def _build(folder: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=V.VOCAB_SIZE, pad_token_id=V.PAD_ID,
                        type_vocab_size=2, **TINY_BERT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config)
    model.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(V.TOKENS) + "\n", encoding="utf-8")
    try:
        from transformers import BertTokenizer

        tok = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True)
        tok.save_pretrained(folder)
    except Exception:  # older/newer tokenizer APIs: vocab.txt alone is enough for BERT
        pass


def ensure_demo_text_encoder(cache_dir=None) -> Path:
    """Folder of the tiny demo BERT, built on first use (atomically)."""
    root = cache_root(cache_dir) / "demo"
    final = root / f"tiny-bert-v{TINY_BERT_VERSION}-vocab{V.VOCAB_SIZE}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tiny-bert-"))
    _build(tmp)
    replace_dir_atomically(tmp, final)
    return final
