"""Tiny local text encoders of every supported family, built from their configs (no hub access,
deterministic weights): BERT, RoBERTa, XLM-R, DeBERTa-v2 (v3 layout: relative attention, no
absolute positions, no token types) and ELECTRA (embedding width below the hidden width).

Each folder holds ``config.json``, the weights and a tokenizer that ``AutoTokenizer`` loads
offline. The vocabulary is the demo's words (kuda_mmsa.data.vocab) after the family's own
special tokens in the family's own order, so the same raw text gets different ids per family:

    bert, electra     [PAD] [UNK] [CLS] [SEP] [MASK] words...   (the demo's ids)
    roberta, xlm-r    <s> <pad> </s> <unk> <mask> words...
    deberta-v2        [PAD] [CLS] [SEP] [UNK] [MASK] words...

BERT and ELECTRA use their own WordPiece tokenizer classes on ``vocab.txt``; the others a word-
level ``tokenizers`` tokenizer with the family's specials and template (their real tokenizers
need BPE merges or a SentencePiece model, which a made-up vocabulary does not have).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from . import vocab as V
from .cache import cache_root, replace_dir_atomically

FAMILIES = ("bert", "roberta", "xlm-roberta", "deberta-v2", "electra")
TINY_ENCODERS_VERSION = 1
TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
SPECIALS = {
    "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "electra": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "xlm-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "deberta-v2": ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
}
WORDS = V.POSITIVE + V.NEGATIVE + V.NEUTRAL


def tokens(family: str) -> list:
    return SPECIALS[family] + WORDS


def _roles(family: str) -> dict:
    s = SPECIALS[family]
    if family in ("roberta", "xlm-roberta"):
        return dict(cls=s[0], pad=s[1], sep=s[2], unk=s[3], mask=s[4])
    if family == "deberta-v2":
        return dict(pad=s[0], cls=s[1], sep=s[2], unk=s[3], mask=s[4])
    return dict(pad=s[0], unk=s[1], cls=s[2], sep=s[3], mask=s[4])


def _config(family: str, max_len: int, sizes: dict):
    from transformers import (BertConfig, DebertaV2Config, ElectraConfig, RobertaConfig,
                              XLMRobertaConfig)

    ids = {role: tokens(family).index(tok) for role, tok in _roles(family).items()}
    n = len(tokens(family))
    if family == "bert":
        return BertConfig(vocab_size=n, pad_token_id=ids["pad"], type_vocab_size=2,
                          max_position_embeddings=max_len, **sizes)
    if family == "electra":
        return ElectraConfig(vocab_size=n, pad_token_id=ids["pad"], type_vocab_size=2,
                             embedding_size=max(sizes["hidden_size"] // 2, 8), max_position_embeddings=max_len,
                             **sizes)
    if family in ("roberta", "xlm-roberta"):
        cls = RobertaConfig if family == "roberta" else XLMRobertaConfig
        # positions start after the pad id: room for max_len tokens needs max_len + pad + 1
        return cls(vocab_size=n, pad_token_id=ids["pad"], bos_token_id=ids["cls"], eos_token_id=ids["sep"],
                   type_vocab_size=1, max_position_embeddings=max_len + ids["pad"] + 1, **sizes)
    if family == "deberta-v2":
        return DebertaV2Config(vocab_size=n, pad_token_id=ids["pad"], type_vocab_size=0,
                               max_position_embeddings=max_len, relative_attention=True, position_buckets=16,
                               max_relative_positions=-1, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, **sizes)
    raise ValueError(f"unknown encoder family {family!r}; families: {', '.join(FAMILIES)}")


def _save_tokenizer(family: str, folder: Path) -> None:
    roles = _roles(family)
    if family in ("bert", "electra"):
        from transformers import BertTokenizer, ElectraTokenizer

        (folder / "vocab.txt").write_text("\n".join(tokens(family)) + "\n", encoding="utf-8")
        cls = BertTokenizer if family == "bert" else ElectraTokenizer
        cls(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
        return
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens(family))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=roles["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    cls, sep = roles["cls"], roles["sep"]
    pair = f"{cls} $A {sep} {sep} $B {sep}" if family != "deberta-v2" else f"{cls} $A {sep} $B {sep}"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=pair, special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, cls_token=cls, sep_token=sep, pad_token=roles["pad"],
                                   unk_token=roles["unk"], mask_token=roles["mask"],
                                   bos_token=cls, eos_token=sep)
    fast.save_pretrained(folder)


def build_tiny_encoder(family: str, folder, max_len: int = 128, **sizes) -> Path:
    """Write a tiny encoder of ``family`` into ``folder`` (weights from torch.manual_seed(0) in a
    forked RNG: the caller's random state is untouched)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    if family not in FAMILIES:
        raise ValueError(f"unknown encoder family {family!r}; families: {', '.join(FAMILIES)}")
    hf_logging.disable_progress_bar()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = _config(family, max_len, dict(TINY_SIZES, **sizes))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
    model.save_pretrained(folder)
    _save_tokenizer(family, folder)
    (folder / "kuda_tiny_encoder.json").write_text(json.dumps({"family": family, "version": TINY_ENCODERS_VERSION}))
    return folder


def ensure_tiny_encoder(family: str, cache_dir=None) -> Path:
    """Folder of the tiny ``family`` encoder in the cache, built on first use (atomically)."""
    root = cache_root(cache_dir) / "encoders"
    final = root / f"tiny-{family}-v{TINY_ENCODERS_VERSION}"
    if (final / "config.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tiny-{family}-"))
    build_tiny_encoder(family, tmp)
    replace_dir_atomically(tmp, final)
    return final
