"""Test-time corruption of one modality, deterministic per seed.

``CorruptedDataset(split, Corruption(kind, modality, rate, seed))`` wraps a validated split
(KudaMMDataset) and corrupts modality T, V or A of a fixed share ``rate`` of its samples. Which
samples are corrupted depends only on (seed, kind, modality) and the rate: the first
round(rate * N) of one permutation, so the samples at rate 0.25 are among those at 0.5, and
every model evaluated with the same seed sees exactly the same corruption. Rate 0 returns the
split's items unchanged.

- ``missing``: the modality is absent: zero features and length 0 (text: token ids, attention
  mask and segments all zero), which the model reads as "not present";
- ``noise``: additive Gaussian noise at ``snr_db`` (per sample, relative to the power of its
  valid frames); for BERT token ids, each word token is replaced by a random vocabulary token
  with probability 1 / (1 + 10^(snr/10)) (0.5 at 0 dB), [CLS]/[SEP]/padding kept;
- ``swap``: the modality (features and length) is taken from another sample of the split, so
  it is confidently wrong.

``min_length`` (1 for stock MMSA models, whose sequence encoders cannot take an empty
sequence) keeps a missing modality's length at that minimum; its features are still zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import KudaInputError
from .kinds import KINDS

MODALITY_KEYS = {"T": ("text", None), "V": ("vision", "vision_lengths"), "A": ("audio", "audio_lengths")}
SPECIAL_IDS = 5            # [PAD] [UNK] [CLS] [SEP] [MASK] lead BERT-style vocabularies


@dataclass(frozen=True)
class Corruption:
    kind: str
    modality: str
    rate: float
    seed: int = 0
    snr_db: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise KudaInputError(f"Unknown corruption '{self.kind}'; choices: {', '.join(KINDS)}.")
        if self.modality not in MODALITY_KEYS:
            raise KudaInputError(f"Unknown modality '{self.modality}' to corrupt; choices: T, V, A.")
        if not 0.0 <= float(self.rate) <= 1.0:
            raise KudaInputError(f"Corruption rate {self.rate} is outside [0, 1].")

    def stream(self) -> list:
        return [int(self.seed), KINDS.index(self.kind), "TVA".index(self.modality)]


def corrupted_indices(n: int, c: Corruption) -> np.ndarray:
    order = np.random.default_rng(c.stream()).permutation(n)
    return np.sort(order[: int(round(c.rate * n))])


class CorruptedDataset(Dataset):
    def __init__(self, base, corruption: Corruption, vocab_size: Optional[int] = None, min_length: int = 0,
                 bert_text: bool = True):
        self.base = base
        self.bert_text = bert_text
        self.corruption = corruption
        self.vocab_size = vocab_size
        self.min_length = int(min_length)
        n = len(base)
        self.chosen = set(corrupted_indices(n, corruption).tolist())
        rng = np.random.default_rng(corruption.stream() + [1])
        # swap partner: another sample (a random derangement of the whole split)
        shift = rng.integers(1, n) if n > 1 else 0
        self.partner = (np.arange(n) + shift) % n
        for attr in ("ids", "annotations", "labels", "mode"):
            setattr(self, attr, getattr(base, attr, None))

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        item = self.base[index]
        if index not in self.chosen:
            return item
        c = self.corruption
        key, len_key = MODALITY_KEYS[c.modality]
        item = dict(item)
        if c.kind == "swap":
            other = self.base[int(self.partner[index])]
            item[key] = other[key]
            if len_key and len_key in item:
                item[len_key] = other[len_key]
            return item
        x = item[key].clone()
        if c.kind == "missing":
            item[key] = torch.zeros_like(x)
            if len_key and len_key in item:
                item[len_key] = type(item[len_key])(self.min_length)
            return item
        rng = np.random.default_rng(c.stream() + [2, int(index)])
        if c.modality == "T" and self.bert_text:      # BERT ids, attention mask, segments
            item[key] = self._noisy_tokens(x, rng)
        else:
            item[key] = self._noisy_frames(x, item.get(len_key) if len_key else None, rng)
        return item

    def _noisy_frames(self, x: torch.Tensor, length, rng) -> torch.Tensor:
        valid = x if length is None else x[: max(int(length), 1)]
        power = float((valid.double() ** 2).mean()) if valid.numel() else 0.0
        sigma = np.sqrt(power / 10 ** (self.corruption.snr_db / 10)) if power > 0 else 0.0
        noise = torch.from_numpy(rng.normal(0.0, sigma, size=tuple(x.shape)).astype(np.float32))
        if length is not None:
            noise[max(int(length), 1):] = 0       # padding stays padding
        return x + noise

    def _noisy_tokens(self, x: torch.Tensor, rng) -> torch.Tensor:
        if not self.vocab_size:
            raise KudaInputError("Noise on BERT token ids needs the text encoder's vocabulary size.")
        ids, mask = x[0].long(), x[1] > 0
        words = mask.clone()
        last = int(mask.sum()) - 1
        words[0] = False                            # [CLS]
        if last > 0:
            words[last] = False                     # [SEP]
        p = 1.0 / (1.0 + 10 ** (self.corruption.snr_db / 10))
        flip = torch.from_numpy(rng.random(ids.shape[0]) < p) & words
        random_ids = torch.from_numpy(rng.integers(SPECIAL_IDS, self.vocab_size, size=ids.shape[0]))
        out = x.clone()
        out[0] = torch.where(flip, random_ids, ids).to(x.dtype)
        return out
