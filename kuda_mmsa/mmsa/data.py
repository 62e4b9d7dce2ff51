"""MMSA-compatible data loading for any dataset in the table (and any MMSA pickle).

``MMDataLoader(args, num_workers)`` is a drop-in for ``MMSA.data_loader.MMDataLoader``:
the same batch keys (text, audio, vision, audio_lengths, vision_lengths, labels {'M' and
'T','A','V' whenever the pickle has regression_labels_T/_A/_V, whatever the dataset's
name}, id, raw_text, index), the same in-place updates of ``args`` (feature_dims,
seq_lens; plus train_samples), but the pickle is read once and validated first
(kuda_mmsa.data.validate) so that bad input is one clear KudaInputError.

Differences from MMSA, on purpose: only the train split is shuffled (metrics do not
depend on order; fixed evaluation order helps analysis), with a generator seeded from
``torch.initial_seed()`` (MMSA's ``setup_seed``) so the data order is deterministic and
independent of how many random numbers the model's initialisation drew.

``load_splits(args)`` returns the validated datasets ({split: KudaMMDataset}) for code
that builds its own loaders (stage 1).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..data.validate import (SPLITS, UNIMODAL_KEYS, _require, as_array, check_lengths,
                             check_rank, check_splits, check_token_ids, clean_nonfinite,
                             read_pickle, text_encoder_vocab_size)
from ..errors import KudaInputError

logger = logging.getLogger("MMSA")

__all__ = ["MMDataLoader", "load_splits", "KudaMMDataset", "feature_file_of",
           "missing_file_hint"]


def _get(args, key, default=None):
    try:
        v = args.get(key, default)
    except AttributeError:
        v = getattr(args, key, default)
    return default if v is None else v


def missing_file_hint(args) -> str:
    name = _get(args, "dataset_name", "?")
    where = _get(args, "dataset_download", "the MMSA / CH-SIMS v2 dataset download pages")
    root = _get(args, "data_root", None)
    return (
        f"Dataset '{name}' features come from {where}. Put the file under the data root "
        f"with MMSA's relative name (data root: --data-root, else $MMSA_DATA_ROOT, else "
        f"~/MMSA/datasets{'; now ' + repr(str(root)) if root else ''}), or pass any "
        f"MMSA-format pickle with --feature-file PATH (MMSA_run(custom_feature=...)). "
        f"`-d demo` needs no download."
    )


def feature_file_of(args) -> Path:
    """The pickle this run reads: ``custom_feature`` if set, else ``featurePath``."""
    path = _get(args, "custom_feature", "") or _get(args, "featurePath", "")
    if not path:
        raise KudaInputError(
            f"No feature file configured for dataset '{_get(args, 'dataset_name', '?')}': "
            f"neither custom_feature nor featurePath is set. " + missing_file_hint(args))
    return Path(path).expanduser()


class KudaMMDataset(Dataset):
    """One split, already validated; items shaped exactly like MMSA's MMDataset."""

    def __init__(self, split, text, audio, vision, audio_lengths, vision_lengths,
                 labels, raw_text, ids, annotations=None):
        self.mode = split
        self.text, self.audio, self.vision = text, audio, vision
        self.audio_lengths, self.vision_lengths = audio_lengths, vision_lengths
        self.labels, self.raw_text, self.ids = labels, raw_text, ids
        self.annotations = annotations

    def __len__(self):
        return len(self.labels["M"])

    def get_seq_len(self, use_bert=True):
        if use_bert:
            return (self.text.shape[2], self.audio.shape[1], self.vision.shape[1])
        return (self.text.shape[1], self.audio.shape[1], self.vision.shape[1])

    def __getitem__(self, index):
        sample = {
            "raw_text": self.raw_text[index],
            "text": torch.from_numpy(self.text[index]),
            "audio": torch.from_numpy(self.audio[index]),
            "vision": torch.from_numpy(self.vision[index]),
            "index": index,
            "id": self.ids[index],
            "labels": {k: torch.from_numpy(v[index].reshape(-1)) for k, v in self.labels.items()},
        }
        if self.audio_lengths is not None:
            sample["audio_lengths"] = self.audio_lengths[index]
            sample["vision_lengths"] = self.vision_lengths[index]
        return sample


def _modality(split_data, key, path, split, rank, layout, neg_inf_to_zero=False):
    arr = as_array(split_data[key], path, split, key)
    check_rank(arr, rank, path, split, key, layout)
    return clean_nonfinite(np.array(arr, dtype=np.float32, copy=True), path, split, key,
                           neg_inf_to_zero=neg_inf_to_zero)


def _check_fixed_dims(args, name, idx, found, path):
    """Error when a user config fixed feature_dims[idx] to a value the file contradicts."""
    fixed = _get(args, "feature_dims", None)
    facts = _get(args, "_facts_feature_dims", None)
    if fixed is None or facts is None:
        return
    try:
        want, table = int(fixed[idx]), int(facts[idx])
    except (TypeError, ValueError, IndexError):
        return
    if want != table and want != found:
        raise KudaInputError(
            f"The config fixes feature_dims[{idx}] ({name}) = {want} (feature_dims is "
            f"[T, A, V]), but the feature file '{path}' has {name} features of dimension "
            f"{found}. Remove feature_dims from your config (it is read from the data) "
            f"or use the matching feature file.")


def _read_override(args, key, path_key, split, hint):
    path = _get(args, path_key, "")
    if not path:
        return None, None
    data = read_pickle(path, what=f"{key} feature file ({path_key})", missing_hint=hint)
    check_splits(data, path)
    return data[split], Path(path)


def load_splits(args, splits=SPLITS, require_unimodal_labels: bool = False) -> dict:
    """Validated datasets {split: KudaMMDataset} for ``args`` (MMSA config dict/edict).

    Reads ``custom_feature`` (else ``featurePath``), optional ``feature_T/_A/_V``
    overrides, ``use_bert``, ``need_data_aligned``, ``need_normalized``, ``pretrained``.
    Updates args in place as MMSA does: ``feature_dims`` ([T, A, V]), ``seq_lens``,
    ``train_samples``. With ``require_unimodal_labels`` (stage 1), a pickle without
    regression_labels_T/_A/_V is an error.
    """
    path = feature_file_of(args)
    hint = missing_file_hint(args)
    data = read_pickle(path, missing_hint=hint)
    check_splits(data, path, splits)
    use_bert = bool(_get(args, "use_bert", False))
    aligned = bool(_get(args, "need_data_aligned", False))
    text_key = "text_bert" if use_bert else "text"
    pretrained = _get(args, "pretrained", None)
    vocab_size = text_encoder_vocab_size(pretrained) if use_bert else None
    if use_bert and vocab_size is None and pretrained:
        logger.debug(f"vocabulary of '{pretrained}' not found locally; token ids unchecked")

    out = {}
    for split in splits:
        sd = data[split]
        keys = ["raw_text", "id", "audio", "vision", "regression_labels", text_key]
        if not aligned:
            keys += ["audio_lengths", "vision_lengths"]
        if require_unimodal_labels:
            keys += list(UNIMODAL_KEYS)
        _require(sd, keys, path, split)
        sd_T, p_T = _read_override(args, "text", "feature_T", split, hint)
        sd_A, p_A = _read_override(args, "audio", "feature_A", split, hint)
        sd_V, p_V = _read_override(args, "vision", "feature_V", split, hint)
        src_T, path_T = (sd_T, p_T) if sd_T is not None else (sd, path)
        src_A, path_A = (sd_A, p_A) if sd_A is not None else (sd, path)
        src_V, path_V = (sd_V, p_V) if sd_V is not None else (sd, path)
        _require(src_T, [text_key], path_T, split)
        _require(src_A, ["audio"] + ([] if aligned else ["audio_lengths"]), path_A, split)
        _require(src_V, ["vision"] + ([] if aligned else ["vision_lengths"]), path_V, split)

        if use_bert:
            text = _modality(src_T, "text_bert", path_T, split, 3, "[N, 3, L] (ids, mask, segments)")
            if text.shape[1] != 3:
                raise KudaInputError(
                    f"The feature file '{path_T}', split '{split}', key 'text_bert' has "
                    f"shape {tuple(text.shape)}; expected [N, 3, L] (input ids, attention "
                    f"mask, segment ids).")
            if vocab_size:
                check_token_ids(text, vocab_size, pretrained, path_T, split)
        else:
            text = _modality(src_T, "text", path_T, split, 3, "[N, L_T, d_T]")
            _check_fixed_dims(args, "text", 0, text.shape[2], path_T)
        audio = _modality(src_A, "audio", path_A, split, 3, "[N, L_A, d_A]", neg_inf_to_zero=True)
        _check_fixed_dims(args, "audio", 1, audio.shape[2], path_A)
        vision = _modality(src_V, "vision", path_V, split, 3, "[N, L_V, d_V]")
        _check_fixed_dims(args, "vision", 2, vision.shape[2], path_V)

        labels_m = as_array(sd["regression_labels"], path, split, "regression_labels").reshape(-1)
        n = len(labels_m)
        clean_nonfinite(labels_m, path, split, "regression_labels")
        for key, arr in (("text", text), ("audio", audio), ("vision", vision)):
            if arr.shape[0] != n:
                raise KudaInputError(
                    f"The feature file '{path}', split '{split}': '{key}' has "
                    f"{arr.shape[0]} samples but regression_labels has {n}; every key of "
                    f"a split must hold the same samples.")
        labels = {"M": labels_m}
        if all(k in sd for k in UNIMODAL_KEYS):
            for m, k in zip("TAV", UNIMODAL_KEYS):
                lab = as_array(sd[k], path, split, k).reshape(-1)
                if lab.shape != (n,):
                    raise KudaInputError(
                        f"The feature file '{path}', split '{split}', key '{k}' has "
                        f"{lab.shape[0]} values; expected {n} (one per sample).")
                labels[m] = clean_nonfinite(lab, path, split, k)
        a_len = v_len = None
        if not aligned:
            a_len = as_array(src_A["audio_lengths"], path_A, split, "audio_lengths", np.int64)
            v_len = as_array(src_V["vision_lengths"], path_V, split, "vision_lengths", np.int64)
            a_len = a_len.reshape(-1) if a_len.size == n else a_len
            v_len = v_len.reshape(-1) if v_len.size == n else v_len
            check_lengths(a_len, audio.shape[1], n, path_A, split, "audio_lengths")
            check_lengths(v_len, vision.shape[1], n, path_V, split, "vision_lengths")
        if _get(args, "need_normalized", False):
            # MMSA's behaviour for the non-sequence baselines: mean over all frames.
            audio = audio.mean(axis=1, keepdims=True)
            vision = vision.mean(axis=1, keepdims=True)
        raw = list(sd["raw_text"]) if len(sd["raw_text"]) == n else [""] * n
        ids = list(sd["id"]) if len(sd["id"]) == n else [f"{split}_{i}" for i in range(n)]
        ann = sd.get("annotations")
        out[split] = KudaMMDataset(split, text, audio, vision, a_len, v_len, labels,
                                   np.asarray(raw, dtype=object), np.asarray(ids, dtype=object),
                                   None if ann is None else np.asarray(ann, dtype=object))
        logger.info(f"{split} samples: {n}")

    first = out["train"] if "train" in out else next(iter(out.values()))
    dims = list(_get(args, "feature_dims", None) or [768, 0, 0])
    if not use_bert:
        dims[0] = int(first.text.shape[2])
    elif not dims[0]:
        dims[0] = 768
    dims[1], dims[2] = int(first.audio.shape[2]), int(first.vision.shape[2])
    args["feature_dims"] = dims
    args["seq_lens"] = list(first.get_seq_len(use_bert))
    if "train" in out:
        args["train_samples"] = len(out["train"])
    return out


def MMDataLoader(args, num_workers=0):
    """Drop-in replacement for MMSA's MMDataLoader (see module docstring)."""
    num_workers = int(num_workers or 0)
    datasets = load_splits(args)
    seed = torch.initial_seed() % (2 ** 63)
    loaders = {}
    for k, (split, ds) in enumerate(datasets.items()):
        gen = torch.Generator()
        gen.manual_seed(seed + k)
        loaders[split] = DataLoader(ds, batch_size=int(_get(args, "batch_size", 32)),
                                    num_workers=num_workers, shuffle=(split == "train"),
                                    generator=gen)
    return loaders
