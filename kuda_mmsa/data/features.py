"""Reading an MMSA-format feature pickle into validated datasets, before any training.

``read_features(spec)`` reads the file once, with the restricted unpickler, checks every
split (keys, ranks, sample counts, lengths, non-finite values, token ids against the text
encoder's vocabulary, labels inside the dataset's range, no empty split, the same feature
dims in every split) and returns a ``FeatureSet``: one ``KudaMMDataset`` per split, shaped
exactly like MMSA's MMDataset items, plus the shapes read from the data and a fingerprint
of the data (file identity, split sizes, a hash of ids and labels) that checkpoints and
resume states record.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import KudaInputError
from .validate import (SPLITS, UNIMODAL_KEYS, as_array, check_label_range, check_lengths,
                       check_rank, check_splits, check_token_ids, clean_nonfinite, read_pickle,
                       require_keys)

logger = logging.getLogger("MMSA")


@dataclass
class FeatureSpec:
    """What to read and how to check it."""
    path: Path
    use_bert: bool = True                  # text is text_bert [N, 3, L] (ids, mask, segments)
    aligned: bool = False                  # MMSA's aligned features have no *_lengths
    normalized: bool = False               # mean over time of audio/vision (MMSA's non-sequence models)
    overrides: Dict[str, Path] = field(default_factory=dict)  # {"T"|"A"|"V": per-modality file}
    vocab_size: Optional[int] = None       # of the text encoder; token ids are checked against it
    encoder_name: str = ""
    label_range: Optional[Tuple[float, float]] = None
    require_unimodal_labels: bool = False  # stage 1 needs regression_labels_T/_A/_V
    splits: Sequence[str] = SPLITS
    missing_hint: str = ""
    min_length: int = 0                    # 1 for MMSA's sequence encoders, which cannot take an empty sequence


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


@dataclass
class FeatureSet:
    splits: Dict[str, KudaMMDataset]
    feature_dims: List[int]     # MMSA order [T, A, V]; T is the text feature dim (0 with BERT ids)
    seq_lens: List[int]         # MMSA order [T, A, V]
    fingerprint: dict

    def __getitem__(self, split) -> KudaMMDataset:
        return self.splits[split]


def file_identity(path) -> dict:
    p = Path(path).expanduser().resolve()
    st = p.stat()
    return {"path": str(p), "bytes": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def _digest(*arrays) -> str:
    h = hashlib.sha1()
    for a in arrays:
        a = np.asarray(a)
        if a.dtype == object:
            h.update("\x1f".join(map(str, a.reshape(-1).tolist())).encode("utf-8", "replace"))
        else:
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]


def _modality(split_data, key, path, split, rank, layout, neg_inf_to_zero=False):
    arr = as_array(split_data[key], path, split, key)
    check_rank(arr, rank, path, split, key, layout)
    return clean_nonfinite(np.array(arr, dtype=np.float32, copy=True), path, split, key,
                           neg_inf_to_zero=neg_inf_to_zero)


def read_features(spec: FeatureSpec) -> FeatureSet:
    path = Path(spec.path).expanduser()
    data = read_pickle(path, missing_hint=spec.missing_hint)
    check_splits(data, path, spec.splits)
    sources = {"T": (data, path), "A": (data, path), "V": (data, path)}
    for m, p in spec.overrides.items():
        if p:
            what = {"T": "text", "A": "audio", "V": "vision"}[m]
            other = read_pickle(p, what=f"{what} feature file (-F{m.lower()})", missing_hint=spec.missing_hint)
            check_splits(other, p, spec.splits)
            sources[m] = (other, Path(p))
    text_key = "text_bert" if spec.use_bert else "text"
    out: Dict[str, KudaMMDataset] = {}
    fp_splits = {}
    for split in spec.splits:
        sd = data[split]
        keys = ["raw_text", "id", "audio", "vision", "regression_labels", text_key]
        if not spec.aligned:
            keys += ["audio_lengths", "vision_lengths"]
        if spec.require_unimodal_labels:
            keys += list(UNIMODAL_KEYS)
        require_keys(sd, keys, path, split)
        src = {m: (d[split], p) for m, (d, p) in sources.items()}
        require_keys(src["T"][0], [text_key], src["T"][1], split)
        require_keys(src["A"][0], ["audio"] + ([] if spec.aligned else ["audio_lengths"]), src["A"][1], split)
        require_keys(src["V"][0], ["vision"] + ([] if spec.aligned else ["vision_lengths"]), src["V"][1], split)

        (sd_T, path_T), (sd_A, path_A), (sd_V, path_V) = src["T"], src["A"], src["V"]
        if spec.use_bert:
            text = _modality(sd_T, "text_bert", path_T, split, 3, "[N, 3, L] (ids, mask, segments)")
            if text.shape[1] != 3:
                raise KudaInputError(
                    f"The feature file '{path_T}', split '{split}', key 'text_bert' has shape "
                    f"{tuple(text.shape)}; expected [N, 3, L] (input ids, attention mask, segment ids).")
            if spec.vocab_size:
                check_token_ids(text, spec.vocab_size, spec.encoder_name, path_T, split)
        else:
            text = _modality(sd_T, "text", path_T, split, 3, "[N, L_T, d_T]")
        audio = _modality(sd_A, "audio", path_A, split, 3, "[N, L_A, d_A]", neg_inf_to_zero=True)
        vision = _modality(sd_V, "vision", path_V, split, 3, "[N, L_V, d_V]")

        labels_m = clean_nonfinite(as_array(sd["regression_labels"], path, split, "regression_labels").reshape(-1),
                                   path, split, "regression_labels")
        n = len(labels_m)
        if n == 0:
            raise KudaInputError(
                f"The feature file '{path}', split '{split}' has no samples (regression_labels is "
                f"empty). Every split must hold at least one sample: training, epoch selection and "
                f"testing each need theirs.")
        for key, arr in (("text", text), ("audio", audio), ("vision", vision)):
            if arr.shape[0] != n:
                raise KudaInputError(
                    f"The feature file '{path}', split '{split}': '{key}' has {arr.shape[0]} samples "
                    f"but regression_labels has {n}; every key of a split must hold the same samples.")
        if spec.label_range is not None:
            check_label_range(labels_m, spec.label_range, path, split, "regression_labels")
        labels = {"M": labels_m}
        if all(k in sd for k in UNIMODAL_KEYS):
            for m, k in zip("TAV", UNIMODAL_KEYS):
                lab = as_array(sd[k], path, split, k).reshape(-1)
                if lab.shape != (n,):
                    raise KudaInputError(
                        f"The feature file '{path}', split '{split}', key '{k}' has {lab.shape[0]} "
                        f"values; expected {n} (one per sample).")
                labels[m] = clean_nonfinite(lab, path, split, k)
                if spec.label_range is not None:
                    check_label_range(labels[m], spec.label_range, path, split, k)
        a_len = v_len = None
        if not spec.aligned:
            a_len = as_array(sd_A["audio_lengths"], path_A, split, "audio_lengths", np.int64)
            v_len = as_array(sd_V["vision_lengths"], path_V, split, "vision_lengths", np.int64)
            a_len = a_len.reshape(-1) if a_len.size == n else a_len
            v_len = v_len.reshape(-1) if v_len.size == n else v_len
            check_lengths(a_len, audio.shape[1], n, path_A, split, "audio_lengths")
            check_lengths(v_len, vision.shape[1], n, path_V, split, "vision_lengths")
            if spec.min_length:
                a_len, v_len = np.maximum(a_len, spec.min_length), np.maximum(v_len, spec.min_length)
        if spec.normalized:
            # MMSA's behaviour for the non-sequence baselines: mean over all frames.
            audio = audio.mean(axis=1, keepdims=True)
            vision = vision.mean(axis=1, keepdims=True)
        raw = list(sd["raw_text"]) if len(sd["raw_text"]) == n else [""] * n
        ids = list(sd["id"]) if len(sd["id"]) == n else [f"{split}_{i}" for i in range(n)]
        ann = sd.get("annotations")
        out[split] = KudaMMDataset(split, text, audio, vision, a_len, v_len, labels,
                                   np.asarray(raw, dtype=object), np.asarray(ids, dtype=object),
                                   None if ann is None else np.asarray(ann, dtype=object))
        out[split].unimodal_keys = [k for k in UNIMODAL_KEYS if k in sd]    # stage 1 needs all three
        out[split].source = str(path)
        fp_splits[split] = {
            "n": n, "text": list(text.shape[1:]), "audio": list(audio.shape[1:]),
            "vision": list(vision.shape[1:]),
            "ids_labels": _digest(np.asarray(ids, dtype=object), labels_m),
        }
    _check_same_dims(out, path, spec.use_bert)
    first = next(iter(out.values()))
    dims = [0 if spec.use_bert else int(first.text.shape[2]), int(first.audio.shape[2]),
            int(first.vision.shape[2])]
    fingerprint = {"file": file_identity(path),
                   "overrides": {m: file_identity(p) for m, p in spec.overrides.items() if p},
                   "splits": fp_splits}
    return FeatureSet(out, dims, list(first.get_seq_len(spec.use_bert)), fingerprint)


def _check_same_dims(splits: Dict[str, KudaMMDataset], path, use_bert: bool) -> None:
    """Feature dims and padded lengths must agree across splits (one model serves them all)."""
    shape_of = {
        "text_bert" if use_bert else "text": lambda d: d.text.shape[1:],
        "audio": lambda d: d.audio.shape[1:],
        "vision": lambda d: d.vision.shape[1:],
    }
    names = list(splits)
    for key, get in shape_of.items():
        shapes = {s: tuple(get(splits[s])) for s in names}
        if len(set(shapes.values())) > 1:
            found = ", ".join(f"{s} {shape}" for s, shape in shapes.items())
            raise KudaInputError(
                f"The feature file '{path}': '{key}' has different [length, dim] in different "
                f"splits ({found}). One model is trained on 'train' and tested on the others, so "
                f"every split must share the feature extractor and the padded length; re-export "
                f"the splits together.")
