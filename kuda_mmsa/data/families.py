"""Generated families of MMSA-format data for checking claims about the model on data it was
not tuned on (the demo is a showcase, not the evidence). Each family has dims, lengths and
split sizes unlike the demo's, the demo's vocabulary (so the tiny local BERT reads its text)
and labels in [-1, 1] (SIMS metrics):

- ``dominant``: per sample a different modality carries the label (s = y); one of the others
  agrees weakly (0.4 y + noise), one conflicts (-0.6 y + noise), as in the demo;
- ``noisy``: every modality carries the label (s = y + small noise), but for ``corrupt_share``
  of the samples one random modality is pure noise: text of random tokens, frames of
  unstructured Gaussian noise; its unimodal label is 0 (it carries no sentiment);
- ``missing``: every modality carries the label, but for ``corrupt_share`` of the samples one
  random modality is missing: empty text (all padding) or length 0 and zero frames; its
  unimodal label is 0;
- ``padded``: every modality carries the label (s = y + noise 0.25), lengths are very unequal
  (log-uniform from 2 to the padded length: most sequences short, a few full) and every padded
  frame of vision and audio holds one constant offset vector per modality, each entry
  +-``pad_value`` (4x the signal's scale): a model that averages over or attends to padding
  sees mostly the offset, weighted by how short the sample is; padded text tokens are [PAD];
- ``subset``: text and one more modality carry the label with noise (s = y + noise 0.35); the
  ``informative`` modality carries it exactly (s = y) for ``subset_share`` of the samples and
  is a distractor for the rest (s drawn independently of y, as strong): annotated
  'dominant:<modality>' on the subset (so ``explain``/``ablate`` score where the largest ratio
  sits) and 'distractor:<modality>' elsewhere.

``annotations`` says which modality dominates, is noise, is missing or distracts
('dominant:vision', 'noisy:audio', 'missing:text', 'distractor:vision', 'clean'). Everything is
a function of the arguments; a new family never changes the data of the existing ones.
"""
from __future__ import annotations

import numpy as np

from . import vocab as V
from .demo import MODALITIES, SPLITS, _frames, _text, _unimodal_scores

FAMILIES = {
    "dominant": dict(n_train=480, n_valid=120, n_test=240, text_len=16, vision_len=40, vision_dim=12,
                     audio_len=60, audio_dim=24, text_dim=32, seed=101),
    "noisy": dict(n_train=540, n_valid=135, n_test=180, text_len=20, vision_len=24, vision_dim=30,
                  audio_len=36, audio_dim=10, text_dim=32, seed=202, corrupt_share=0.4),
    "missing": dict(n_train=420, n_valid=105, n_test=210, text_len=18, vision_len=28, vision_dim=16,
                    audio_len=50, audio_dim=14, text_dim=32, seed=303, corrupt_share=0.4),
    "padded": dict(n_train=450, n_valid=110, n_test=200, text_len=22, vision_len=48, vision_dim=18,
                   audio_len=72, audio_dim=12, text_dim=32, seed=404, pad_value=6.0),
    "subset": dict(n_train=480, n_valid=120, n_test=240, text_len=18, vision_len=30, vision_dim=14,
                   audio_len=44, audio_dim=20, text_dim=32, seed=505, subset_share=0.4, informative="vision"),
}


def _agreeing_scores(rng, n):
    y = np.round(rng.uniform(-1.0, 1.0, size=n) * 5.0) / 5.0
    s = np.clip(y[:, None] + rng.normal(0.0, 0.1, size=(n, 3)), -1.0, 1.0)
    return y.astype(np.float32), s.astype(np.float32)


def make_family(name: str, **overrides) -> dict:
    """The family ``name`` (FAMILIES, parameters overridable) as MMSA's pickle layout."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; families: {sorted(FAMILIES)}")
    p = dict(FAMILIES[name], **overrides)
    _check_params(name, p)
    master = np.random.default_rng(p["seed"])
    dirs = []
    for dim in (p["vision_dim"], p["audio_dim"]):
        d = master.normal(0.0, 1.0, size=dim)
        dirs.append(d * 1.5 / np.sqrt((d ** 2).mean()))
    embed = master.normal(0.0, 0.5, size=(V.VOCAB_SIZE, p["text_dim"])).astype(np.float32)
    embed[V.PAD_ID] = 0.0
    if name == "padded":   # drawn after everything the older families draw: their data stays as it was
        offsets = [p["pad_value"] * np.where(master.random(dim) < 0.5, -1.0, 1.0)
                   for dim in (p["vision_dim"], p["audio_dim"])]
    data = {}
    for k, (split, n) in enumerate(zip(SPLITS, (p["n_train"], p["n_valid"], p["n_test"]))):
        rng = np.random.default_rng([p["seed"], k + 1])
        if name in ("padded", "subset"):
            data[split] = _new_family(name, p, rng, n, split, embed, dirs, offsets if name == "padded" else None)
            continue
        if name == "dominant":
            y, dominant, s = _unimodal_scores(rng, n)
            which = dominant
            ann = np.array([f"dominant:{MODALITIES[d]}" for d in dominant], dtype=object)
        else:
            y, s = _agreeing_scores(rng, n)
            which = np.where(rng.random(n) < p["corrupt_share"], rng.integers(0, 3, size=n), -1)
            s[which >= 0, which[which >= 0]] = 0.0
            ann = np.array([f"{name}:{MODALITIES[w]}" if w >= 0 else "clean" for w in which], dtype=object)
        raw, text_bert, text = _text(rng, s[:, 0], p["text_len"], p["text_dim"], embed)
        vision, v_len = _frames(rng, s[:, 1], p["vision_len"], p["vision_dim"], dirs[0])
        audio, a_len = _frames(rng, s[:, 2], p["audio_len"], p["audio_dim"], dirs[1])
        if name != "dominant":
            _corrupt(name, rng, which, text_bert, text, embed, (vision, v_len), (audio, a_len), raw)
        data[split] = _split(name, split, raw, text, text_bert, (vision, v_len), (audio, a_len), y, s, ann)
    return data


def _split(name, split, raw, text, text_bert, vision, audio, y, s, ann) -> dict:
    """One split in MMSA's layout (every family's), with its annotations and unimodal labels."""
    n = len(y)
    return {
        "raw_text": np.array(raw, dtype=object),
        "id": np.array([f"{name}_{split}_{i:05d}" for i in range(n)], dtype=object),
        "text": text, "text_bert": text_bert, "audio": audio[0], "vision": vision[0],
        "audio_lengths": audio[1], "vision_lengths": vision[1],
        "regression_labels": y,
        "classification_labels": np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.int64),
        "annotations": ann,
        "regression_labels_T": s[:, 0].copy(), "regression_labels_V": s[:, 1].copy(),
        "regression_labels_A": s[:, 2].copy(),
    }


def _corrupt(name, rng, which, text_bert, text, embed, vision, audio, raw):
    """Pure noise or a missing modality for the samples where ``which`` names one."""
    for i in np.flatnonzero(which >= 0):
        m = which[i]
        if m == 0:
            length = int(text_bert[i, 1].sum())
            if name == "missing":
                text_bert[i] = 0
                text[i] = 0
                raw[i] = ""
            else:                      # random tokens from the whole vocabulary, specials kept
                ids = rng.integers(5, V.VOCAB_SIZE, size=max(length - 2, 0))
                text_bert[i, 0, 1:length - 1] = ids
                text[i, :length] = embed[text_bert[i, 0, :length].astype(int)]
                raw[i] = " ".join(V.TOKENS[j] for j in ids)
        else:
            frames, lengths = vision if m == 1 else audio
            if name == "missing":
                frames[i] = 0
                lengths[i] = 0
            else:                      # no direction, no per-sample nuisance: unstructured noise
                frames[i, : lengths[i]] = rng.normal(0.0, 2.0, size=(lengths[i], frames.shape[2]))


def _check_params(name, p):
    if name == "padded" and not p["pad_value"] > 0:
        raise ValueError(f"family 'padded' needs pad_value > 0 (the offset in padded frames); got {p['pad_value']!r}")
    if name == "subset":
        if p["informative"] not in MODALITIES:
            raise ValueError(f"family 'subset': informative must be one of {MODALITIES}; got {p['informative']!r}")
        if not 0 < p["subset_share"] < 1:
            raise ValueError(f"family 'subset' needs 0 < subset_share < 1 (both groups non-empty); "
                             f"got {p['subset_share']!r}")


def _noisy_scores(rng, y, sd):
    """[n, 3] scores y + N(0, sd), on the labels' 0.2 grid, clipped to [-1, 1]."""
    s = y[:, None] + rng.normal(0.0, sd, size=(len(y), 3))
    return np.clip(np.round(s * 5.0) / 5.0, -1.0, 1.0).astype(np.float32)


def _log_uniform_lengths(rng, n, length):
    """Very unequal lengths: log-uniform on [2, length], so most are short and a few are full."""
    return np.clip(np.round(np.exp(rng.uniform(np.log(2.0), np.log(length), size=n))), 2, length).astype(np.int64)


def _padded_frames(rng, s_m, length, dim, direction, offset):
    """Frames as in the demo (s_m along a direction + per-sample nuisance + noise) on
    log-uniform lengths; every padded frame is ``offset``."""
    n = len(s_m)
    lengths = _log_uniform_lengths(rng, n, length)
    x = np.broadcast_to(offset.astype(np.float32), (n, length, dim)).copy()
    for i in range(n):
        L = int(lengths[i])
        x[i, :L] = s_m[i] * direction + rng.normal(0.0, 0.3, size=dim) + rng.normal(0.0, 0.8, size=(L, dim))
    return x, lengths


def _truncate_text(rng, raw, text_bert, text, length):
    """Cut each sample's text to a log-uniform number of tokens ([CLS] words [SEP], at least
    one word), padding after it; ``text`` follows ``text_bert``."""
    n, _, width = text_bert.shape
    valid = text_bert[:, 1].sum(1).astype(int)
    keep = np.minimum(_log_uniform_lengths(rng, n, width) + 1, valid)      # >= 3 tokens
    for i in range(n):
        k = int(keep[i])
        ids = text_bert[i, 0, : k - 1].copy()
        text_bert[i, :2] = 0
        text_bert[i, 0, : k - 1] = ids
        text_bert[i, 0, k - 1] = V.SEP_ID
        text_bert[i, 1, :k] = 1
        text[i, k:] = 0
        raw[i] = " ".join(raw[i].split()[: k - 2])


def _new_family(name, p, rng, n, split, embed, dirs, offsets):
    y = (np.round(rng.uniform(-1.0, 1.0, size=n) * 5.0) / 5.0).astype(np.float32)
    if name == "padded":
        s = _noisy_scores(rng, y, 0.25)
        ann = np.array(["clean"] * n, dtype=object)
    else:
        s = _noisy_scores(rng, y, 0.35)
        m = MODALITIES.index(p["informative"])
        subset = rng.random(n) < p["subset_share"]
        distractor = (np.round(rng.uniform(-1.0, 1.0, size=n) * 5.0) / 5.0).astype(np.float32)
        s[:, m] = np.where(subset, y, distractor)
        ann = np.array([f"dominant:{p['informative']}" if a else f"distractor:{p['informative']}" for a in subset],
                       dtype=object)
    raw, text_bert, text = _text(rng, s[:, 0], p["text_len"], p["text_dim"], embed)
    if name == "padded":
        _truncate_text(rng, raw, text_bert, text, p["text_len"])
        vision, v_len = _padded_frames(rng, s[:, 1], p["vision_len"], p["vision_dim"], dirs[0], offsets[0])
        audio, a_len = _padded_frames(rng, s[:, 2], p["audio_len"], p["audio_dim"], dirs[1], offsets[1])
    else:
        vision, v_len = _frames(rng, s[:, 1], p["vision_len"], p["vision_dim"], dirs[0])
        audio, a_len = _frames(rng, s[:, 2], p["audio_len"], p["audio_dim"], dirs[1])
    return _split(name, split, raw, text, text_bert, (vision, v_len), (audio, a_len), y, s, ann)
