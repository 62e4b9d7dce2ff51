"""Token- and frame-level random missing data, as MMSA's TFR-Net option and LNLN draw it.

What we follow: MMSA 2.2.1, ``MMSA/data_loader.py``, ``MMDataset.generate_m`` (used when the
config sets ``data_missing``, as TFR-Net's does, with ``missing_rate`` and ``missing_seed``
per modality), and LNLN's ``core/dataset.py`` (github.com/Haoyu-ha/LNLN), which copies that
function. For one modality of a split of N samples padded to length L:

- ``np.random.seed(seed)``, then one uniform draw u of shape (N, L) for the whole split; a
  token or frame is missing where u <= rate and it lies within the sample's true length
  (text: attention mask 1; audio / vision: the first ``*_lengths`` frames). Each modality is
  drawn with its own rate, from the same seed (MMSA's ``missing_seed`` per modality);
- text (BERT ids, attention mask, segment ids): a missing token id becomes [UNK]; [CLS] (the
  first token) and [SEP] (the last token within the mask) are always kept; the attention
  mask, the segment ids and the padding are unchanged;
- audio / vision: a missing frame is set to zero; the lengths are unchanged.

So sample i's mask is row i of the draw: the same seed gives MMSA's mask on the same split
arrays, and rate 0 leaves every sample as it is. Where we differ, and why:

- [UNK] is the text encoder's own [UNK] id (MMSA and LNLN write 100, bert-base's id);
- frames past a sample's length are left as they are (MMSA multiplies them by 0 too, which
  only matters for non-zero padding), and a text with no token at all is left as it is
  (MMSA's formula would write -100 into its first and last position);
- text given as feature vectors (a model without BERT; MMSA's TFR-Net needs BERT) has no
  text length here: its token vectors are zeroed like frames, over the whole sequence.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import KudaInputError
from .corruption import MODALITY_KEYS

logger = logging.getLogger("MMSA")


@dataclass(frozen=True)
class RandomMissing:
    """Per-modality missing rates (``(("T", 0.3), ("A", 0.3))``) drawn with one seed."""
    rates: Tuple[Tuple[str, float], ...]
    seed: int = 1111

    def __post_init__(self):
        for modality, rate in self.rates:
            if modality not in MODALITY_KEYS:
                raise KudaInputError(f"Unknown modality '{modality}' to make missing; choices: T, V, A.")
            if not 0.0 <= float(rate) <= 1.0:
                raise KudaInputError(f"Missing rate {rate} of modality {modality} is outside [0, 1] (--rate).")

    @classmethod
    def of(cls, rates: Mapping[str, float], seed: int = 1111) -> "RandomMissing":
        return cls(tuple((m, float(r)) for m, r in rates.items()), int(seed))


def uniform_draw(n: int, length: int, seed: int) -> np.ndarray:
    """MMSA's draw: ``np.random.seed(seed); np.random.uniform(size=(n, length))``, from a
    private generator with the same stream (the global one is left alone)."""
    return np.random.RandomState(int(seed)).uniform(size=(n, length))


def padded_length(item: dict, modality: str, bert_text: bool) -> int:
    x = item[MODALITY_KEYS[modality][0]]
    return int(x.shape[-1] if modality == "T" and bert_text else x.shape[0])


def text_encoder_unk_id(pretrained) -> Optional[int]:
    """The [UNK] id of a text encoder's tokenizer, from local files only (None if unknown)."""
    if not pretrained:
        return None
    try:
        from transformers import AutoTokenizer

        unk = AutoTokenizer.from_pretrained(str(pretrained), local_files_only=True).unk_token_id
        if unk is not None:
            return int(unk)
    except Exception:  # no tokenizer files offline: a BERT folder's vocab.txt is enough
        pass
    vocab = Path(str(pretrained)).expanduser() / "vocab.txt"
    if vocab.is_file():
        tokens = vocab.read_text(encoding="utf-8").splitlines()
        if "[UNK]" in tokens:
            return tokens.index("[UNK]")
    return None


class RandomMissingDataset(Dataset):
    """A validated split (KudaMMDataset) with tokens / frames missing as ``spec`` says."""

    def __init__(self, base, spec: RandomMissing, unk_id: Optional[int] = None, bert_text: bool = True):
        self.base = base
        self.spec = spec
        self.unk_id = unk_id
        self.bert_text = bert_text
        active = [(m, r) for m, r in spec.rates if r > 0]
        if any(m == "T" for m, _ in active) and bert_text and unk_id is None:
            raise KudaInputError("Missing text tokens become the text encoder's [UNK] token, but its id could not "
                                 "be read offline from the tokenizer or vocab.txt of the text encoder (--pretrained); "
                                 "make the text encoder's files available locally.")
        n = len(base)
        first = base[0] if n else None
        # one draw per modality for the whole split, as MMSA draws it (row i = sample i)
        self.draws = {m: (r, uniform_draw(n, padded_length(first, m, bert_text), spec.seed)) for m, r in active} \
            if n else {}
        for attr in ("ids", "annotations", "labels", "mode"):
            setattr(self, attr, getattr(base, attr, None))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        item = self.base[index]
        if not self.draws:
            return item
        item = dict(item)
        for modality, (rate, draw) in self.draws.items():
            key, len_key = MODALITY_KEYS[modality]
            u = draw[index]
            if modality == "T" and self.bert_text:
                item[key] = self._text(item[key], u, rate)
            else:
                length = item.get(len_key) if len_key else None
                item[key] = self._frames(item[key], u, rate, length)
        return item

    def _text(self, x: torch.Tensor, u: np.ndarray, rate: float) -> torch.Tensor:
        valid = x[1] > 0                                  # attention mask: the true tokens
        n_tokens = int(valid.sum())                       # 0 (no text): nothing is valid, nothing changes
        missing = torch.from_numpy(u <= rate) & valid
        missing[0] = False                                # [CLS]
        missing[n_tokens - 1] = False                     # [SEP]
        out = x.clone()
        out[0] = torch.where(missing, torch.full_like(x[0], float(self.unk_id)), x[0])
        return out

    @staticmethod
    def _frames(x: torch.Tensor, u: np.ndarray, rate: float, length) -> torch.Tensor:
        valid = x.shape[0] if length is None else min(int(length), x.shape[0])
        missing = torch.from_numpy(u[:valid] <= rate)
        out = x.clone()
        out[:valid][missing] = 0
        return out
