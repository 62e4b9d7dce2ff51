"""Validation of MMSA-format feature pickles, with one-paragraph errors.

Policy on non-finite values (documented, tested):
- ``-inf`` in ``audio`` becomes 0, as MMSA does (COVAREP features contain -inf);
- any other non-finite value (NaN anywhere, +inf, -inf outside audio, non-finite labels)
  is an error naming the file, split, key and count: silently zeroing NaNs hides broken
  feature extraction.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from ..errors import KudaInputError
from ..model.encoders import local_encoder_config
from . import safe_pickle

SPLITS = ("train", "valid", "test")
UNIMODAL_KEYS = ("regression_labels_T", "regression_labels_A", "regression_labels_V")


def read_pickle(path, what: str = "feature file", missing_hint: str = "") -> dict:
    """Unpickle an MMSA feature file with the restricted unpickler (no code from the file
    runs); KudaInputError on a missing, unreadable, corrupt or truncated file, a file that
    names a global MMSA files never contain, or one that is not a dict of splits."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KudaInputError(
            f"The {what} '{path}' does not exist"
            + (" (it is a folder)" if path.is_dir() else "") + ". " + missing_hint)
    try:
        with open(path, "rb") as f:
            data = safe_pickle.load(f, str(path))
    except KudaInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError, OSError, MemoryError) as e:
        raise KudaInputError(
            f"The {what} '{path}' could not be read as an MMSA-format pickle "
            f"({type(e).__name__}: {e}). The file is corrupt or truncated (an interrupted "
            f"download or copy?); download it again or regenerate it. Expected a pickle "
            f"of a dict {{'train', 'valid', 'test'}} -> dict of numpy arrays.") from None
    if not isinstance(data, dict):
        raise KudaInputError(
            f"The {what} '{path}' holds a {type(data).__name__}, not the MMSA layout: a "
            f"dict with splits 'train', 'valid', 'test', each a dict of numpy arrays.")
    return data


def check_splits(data: dict, path, splits=SPLITS) -> None:
    missing = [s for s in splits if s not in data]
    if missing:
        raise KudaInputError(
            f"The feature file '{path}' has no split(s) {missing}; found "
            f"{sorted(map(str, data))}. MMSA-format pickles hold 'train', 'valid' and "
            f"'test', each a dict of numpy arrays.")
    for s in splits:
        if not isinstance(data[s], dict):
            raise KudaInputError(
                f"The feature file '{path}': split '{s}' is a {type(data[s]).__name__}, "
                f"expected a dict of numpy arrays (keys text_bert, audio, vision, ...).")


def require_keys(split_data, keys, path, split):
    missing = [k for k in keys if k not in split_data]
    if missing:
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', lacks the key(s) {missing}; it "
            f"has {sorted(map(str, split_data))}. The MMSA unaligned layout has raw_text, "
            f"id, text, text_bert [N,3,L], audio [N,L_A,d_A], vision [N,L_V,d_V], "
            f"audio_lengths, vision_lengths, regression_labels (and for the SIMS sets "
            f"regression_labels_T/_A/_V).")


def as_array(x, path, split, key, dtype=np.float32):
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}' cannot be read as a "
            f"numeric array ({e}).") from None


def check_rank(arr, rank, path, split, key, layout):
    if arr.ndim != rank:
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}' has shape "
            f"{tuple(arr.shape)} ({arr.ndim}-D); expected {rank}-D {layout}.")


def clean_nonfinite(arr, path, split, key, neg_inf_to_zero=False):
    """Applies the policy above in place; returns the array."""
    if neg_inf_to_zero:
        arr[arr == -np.inf] = 0
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(bad.sum()) - n_nan
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}' contains "
            f"{n_nan} NaN and {n_inf} infinite value(s) (of {arr.size}). Only -inf in "
            f"'audio' is accepted (set to 0, as MMSA does); fix the feature extraction or "
            f"clean the file (e.g. np.nan_to_num) before training.")
    return arr


def check_label_range(labels, label_range, path, split, key):
    """Labels outside the dataset's range are refused: MMSA's metrics bin them by that range."""
    lo, hi = float(label_range[0]), float(label_range[1])
    bad = (labels < lo - 1e-6) | (labels > hi + 1e-6)
    if bad.any():
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}': {int(bad.sum())} of "
            f"{labels.size} label(s) lie outside the dataset's range [{lo:g}, {hi:g}] (found "
            f"min {float(labels.min()):g}, max {float(labels.max()):g}). The metrics of this "
            f"dataset assume that range: pick the dataset (-d) whose label range the file uses "
            f"(sims/simsv2: [-1, 1], mosi/mosei: [-3, 3]) or fix the labels.")


def check_lengths(lengths, seq_len, n, path, split, key):
    if lengths.shape != (n,):
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}' has shape "
            f"{tuple(lengths.shape)}; expected ({n},), one length per sample.")
    if n == 0:
        return
    too_long = lengths > seq_len
    if too_long.any() or (lengths < 0).any():
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key '{key}': "
            f"{int(too_long.sum())} length(s) exceed the sequence length {seq_len} "
            f"(max found {int(lengths.max())}) and {int((lengths < 0).sum())} are "
            f"negative; lengths must lie in [0, {seq_len}]. Were the features truncated "
            f"without updating the lengths?")


def check_token_ids(text_bert, vocab_size, pretrained, path, split):
    ids = text_bert[:, 0, :]
    if ids.size == 0:
        return
    hi, lo = float(ids.max()), float(ids.min())
    if hi >= vocab_size or lo < 0:
        n_bad = int(((ids >= vocab_size) | (ids < 0)).sum())
        raise KudaInputError(
            f"The feature file '{path}', split '{split}', key 'text_bert' holds token ids "
            f"up to {int(hi)} ({n_bad} id(s) outside [0, {vocab_size})), but the text "
            f"encoder '{pretrained}' has a vocabulary of {vocab_size}. The pickle was "
            f"tokenised for another BERT (e.g. Chinese ids with an English BERT): set "
            f"--pretrained (or `pretrained` in the config) to the BERT that tokenised it "
            f"(bert-base-chinese for the SIMS sets, bert-base-uncased for MOSI/MOSEI).")


def text_encoder_vocab_size(pretrained):
    """vocab_size of a text encoder from local files only (None when not resolvable
    offline)."""
    cfg = local_encoder_config(pretrained)
    return (int(getattr(cfg, "vocab_size", 0)) or None) if cfg is not None else None
