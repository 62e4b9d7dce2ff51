"""The demo dataset: a deterministic synthetic MMSA-format pickle.

Per sample a *dominant* modality (text, vision or audio; balanced) carries the overall
sentiment: its unimodal score equals the label y. Of the two others one agrees weakly
(s = 0.4·y + noise) and one conflicts (s = -0.6·y + noise). Each modality's features
encode only its own unimodal score s_m (stored as regression_labels_T/_A/_V) plus noise:

- text: token ids drawn from positive / negative / neutral word pools of the tiny BERT
  vocabulary (kuda_mmsa.data.tiny_bert); the share of sentiment words is fixed, the
  positive/negative split follows s_T. ``text`` (the 768-d placeholder MMSA's non-BERT
  models read) is a fixed random embedding of those ids, zero on padding.
- vision / audio: every valid frame = s_m · (fixed direction) + a per-sample nuisance +
  Gaussian noise; frames after ``*_lengths`` are zero. No -inf, no NaN.

``annotations`` holds 'dominant:text' | 'dominant:vision' | 'dominant:audio' so analyses
can group by it. Everything is a function of the arguments (seed included).
"""
from __future__ import annotations

import numpy as np

from . import vocab as V

MODALITIES = ("text", "vision", "audio")
SPLITS = ("train", "valid", "test")
GENERATOR_VERSION = 1

DEFAULTS = dict(
    n_train=600, n_valid=150, n_test=150,
    text_len=24, vision_len=32, vision_dim=20, audio_len=48, audio_dim=16,
    text_dim=768, seed=0,
)


def _unimodal_scores(rng, n):
    """Returns y [n], dominant index [n] (0 T, 1 V, 2 A), s [n, 3] in T, V, A order."""
    y = np.round(rng.uniform(-1.0, 1.0, size=n) * 5.0) / 5.0          # SIMS-like 0.2 grid
    dominant = np.tile(np.arange(3), n // 3 + 1)[:n]
    rng.shuffle(dominant)
    s = np.zeros((n, 3))
    for i in range(n):
        d = dominant[i]
        others = [m for m in range(3) if m != d]
        if rng.random() < 0.5:
            others.reverse()
        agree, conflict = others
        s[i, d] = y[i]
        s[i, agree] = 0.4 * y[i] + rng.normal(0.0, 0.15)
        s[i, conflict] = -0.6 * y[i] + rng.normal(0.0, 0.15)
    s = np.clip(np.round(s * 5.0) / 5.0, -1.0, 1.0)
    s[np.arange(n), dominant] = y
    return y.astype(np.float32), dominant, s.astype(np.float32)


def _text(rng, s_t, text_len, text_dim, embed):
    n = len(s_t)
    ids = np.zeros((n, text_len), dtype=np.int64)
    mask = np.zeros((n, text_len), dtype=np.int64)
    raw = []
    for i in range(n):
        n_words = int(rng.integers(max(3, text_len // 3), text_len - 1))  # + [CLS] [SEP]
        p_sent = 0.5
        p_pos = (1.0 + float(s_t[i])) / 2.0
        words = []
        for _ in range(n_words):
            if rng.random() < p_sent:
                pool = V.POSITIVE if rng.random() < p_pos else V.NEGATIVE
            else:
                pool = V.NEUTRAL
            words.append(pool[int(rng.integers(len(pool)))])
        tok = [V.CLS_ID] + [V.TOKEN_TO_ID[w] for w in words] + [V.SEP_ID]
        ids[i, : len(tok)] = tok
        mask[i, : len(tok)] = 1
        raw.append(" ".join(words))
    text_bert = np.stack([ids, mask, np.zeros_like(ids)], axis=1).astype(np.float32)
    text = embed[ids] * mask[..., None]
    return raw, text_bert, text.astype(np.float32)


def _frames(rng, s_m, length, dim, direction):
    n = len(s_m)
    lengths = rng.integers(max(2, length // 3), length + 1, size=n)
    x = np.zeros((n, length, dim), dtype=np.float32)
    for i in range(n):
        L = int(lengths[i])
        nuisance = rng.normal(0.0, 0.3, size=dim)
        x[i, :L] = s_m[i] * direction + nuisance + rng.normal(0.0, 0.8, size=(L, dim))
    return x, lengths.astype(np.int64)


def make_demo_splits(n_train=DEFAULTS["n_train"], n_valid=DEFAULTS["n_valid"],
                     n_test=DEFAULTS["n_test"], text_len=DEFAULTS["text_len"],
                     vision_len=DEFAULTS["vision_len"], vision_dim=DEFAULTS["vision_dim"],
                     audio_len=DEFAULTS["audio_len"], audio_dim=DEFAULTS["audio_dim"],
                     text_dim=DEFAULTS["text_dim"], seed=DEFAULTS["seed"]) -> dict:
    """The demo data as MMSA's pickle layout: {split: {key: numpy array}}."""
    if text_len < 5:
        raise ValueError("text_len must be at least 5 ([CLS], 3 words, [SEP])")
    master = np.random.default_rng(seed)
    # Fixed per-dataset structure (shared by all splits).
    dir_v = master.normal(0.0, 1.0, size=vision_dim)
    dir_v *= 1.5 / np.sqrt((dir_v ** 2).mean())
    dir_a = master.normal(0.0, 1.0, size=audio_dim)
    dir_a *= 1.5 / np.sqrt((dir_a ** 2).mean())
    embed = master.normal(0.0, 0.5, size=(V.VOCAB_SIZE, text_dim)).astype(np.float32)
    embed[V.PAD_ID] = 0.0
    data = {}
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_valid, n_test))):
        rng = np.random.default_rng([seed, k + 1])
        y, dominant, s = _unimodal_scores(rng, n)
        raw, text_bert, text = _text(rng, s[:, 0], text_len, text_dim, embed)
        vision, v_len = _frames(rng, s[:, 1], vision_len, vision_dim, dir_v)
        audio, a_len = _frames(rng, s[:, 2], audio_len, audio_dim, dir_a)
        cls = np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.int64)
        data[split] = {
            "raw_text": np.array(raw, dtype=object),
            "id": np.array([f"demo_{split}_{i:05d}" for i in range(n)], dtype=object),
            "text": text,
            "text_bert": text_bert,
            "audio": audio,
            "vision": vision,
            "audio_lengths": a_len,
            "vision_lengths": v_len,
            "regression_labels": y,
            "classification_labels": cls,
            "annotations": np.array([f"dominant:{MODALITIES[d]}" for d in dominant],
                                    dtype=object),
            "regression_labels_T": s[:, 0].copy(),
            "regression_labels_V": s[:, 1].copy(),
            "regression_labels_A": s[:, 2].copy(),
        }
    return data


def facts_of(data: dict) -> dict:
    """Dataset facts read from MMSA-format data (MMSA's [T, A, V] order)."""
    tr = data["train"]
    return {
        "seq_lens": [int(tr["text_bert"].shape[2]), int(tr["audio"].shape[1]),
                     int(tr["vision"].shape[1])],
        "feature_dims": [int(tr["text"].shape[2]), int(tr["audio"].shape[2]),
                         int(tr["vision"].shape[2])],
        "splits": {s: int(len(data[s]["regression_labels"])) for s in SPLITS if s in data},
        "train_samples": int(len(tr["regression_labels"])),
    }
