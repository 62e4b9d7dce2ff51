"""MMSA-compatible data loading for any dataset of the table (and any MMSA-format pickle).

``MMDataLoader(args, num_workers)`` is a drop-in for ``MMSA.data_loader.MMDataLoader``: the
same batch keys (text, audio, vision, audio_lengths, vision_lengths, labels {'M' and
'T','A','V' whenever the pickle has regression_labels_T/_A/_V, whatever the dataset's name},
id, raw_text, index) and the same in-place updates of ``args`` (feature_dims, seq_lens,
train_samples), plus ``data_fingerprint``. The pickle is read once, without running code
from it, and validated before any training (kuda_mmsa.data.features). Loaders are seeded
per split from ``torch.initial_seed()`` (MMSA's setup_seed), so results do not depend on
the number of workers (kuda_mmsa.data.loaders). In a data-parallel run (``args.world_size``
> 1, set by MMSA_run under torchrun) each loader yields this rank's (``args.rank``) share of
the global batch (``batch_size``, or ``batch_size`` per rank with ``per_rank_batch``).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..data import FeatureSpec, make_loaders, read_features, text_encoder_vocab_size
from ..data.loaders import Shard, global_batch_size
from ..errors import KudaInputError

logger = logging.getLogger("MMSA")

__all__ = ["MMDataLoader", "feature_spec", "load_features", "missing_file_hint"]


def _get(args, key, default=None):
    v = args.get(key, default)
    return default if v is None else v


def missing_file_hint(args) -> str:
    name = _get(args, "dataset_name", "?")
    where = _get(args, "dataset_download", "the MMSA / CH-SIMS v2 dataset download pages")
    root = _get(args, "data_root", None)
    return (
        f"Dataset '{name}' features come from {where}. Put the file under the data root with "
        f"MMSA's relative name (data root: --data-root, else $MMSA_DATA_ROOT, else ~/MMSA/datasets"
        f"{'; now ' + repr(str(root)) if root else ''}), or pass any MMSA-format pickle with "
        f"--feature-file PATH (MMSA_run(custom_feature=...)). `-d demo` needs no download."
    )


def feature_spec(args, require_unimodal_labels: bool = False) -> FeatureSpec:
    """What the run reads: ``custom_feature`` if set, else ``featurePath``; -Ft/-Fa/-Fv."""
    path = _get(args, "custom_feature", "") or _get(args, "featurePath", "")
    if not path:
        raise KudaInputError(
            f"No feature file configured for dataset '{_get(args, 'dataset_name', '?')}': neither "
            f"custom_feature nor featurePath is set. " + missing_file_hint(args))
    use_bert = bool(_get(args, "use_bert", False))
    pretrained = _get(args, "pretrained", None)
    vocab = text_encoder_vocab_size(pretrained) if use_bert else None
    if use_bert and vocab is None and pretrained:
        logger.debug(f"vocabulary of '{pretrained}' not found locally; token ids unchecked")
    label_range = _get(args, "label_range", None)
    return FeatureSpec(
        path=Path(path).expanduser(), use_bert=use_bert, aligned=bool(_get(args, "need_data_aligned", False)),
        normalized=bool(_get(args, "need_normalized", False)),
        overrides={m: Path(p) for m, p in (("T", _get(args, "feature_T", "")), ("A", _get(args, "feature_A", "")),
                                           ("V", _get(args, "feature_V", ""))) if p},
        vocab_size=vocab, encoder_name=str(pretrained or ""),
        label_range=tuple(label_range) if label_range else None,
        require_unimodal_labels=require_unimodal_labels, missing_hint=missing_file_hint(args),
        # KuDA reads length 0 as a missing modality; MMSA's sequence encoders need one step
        min_length=0 if _get(args, "model_name", "") == "kuda" else 1)


def load_features(args, require_unimodal_labels: bool = False):
    """Read and validate the run's data; update ``args`` in place as MMSA does."""
    features = read_features(feature_spec(args, require_unimodal_labels))
    dims = list(_get(args, "feature_dims", None) or [768, 0, 0])
    if not args.get("use_bert"):
        dims[0] = features.feature_dims[0]
    elif not dims[0]:
        dims[0] = 768
    dims[1], dims[2] = features.feature_dims[1], features.feature_dims[2]
    args["feature_dims"] = dims
    args["seq_lens"] = list(features.seq_lens)
    args["train_samples"] = len(features["train"]) if "train" in features.splits else args.get("train_samples")
    args["data_fingerprint"] = features.fingerprint
    sizes = ", ".join(f"{s} {len(d)}" for s, d in features.splits.items())
    logger.info(f"Data: {features.fingerprint['file']['path']} ({sizes}; [T, A, V] lengths "
                f"{args['seq_lens']}, feature dims {dims})")
    return features


def MMDataLoader(args, num_workers=0):
    """Drop-in replacement for MMSA's MMDataLoader (see module docstring)."""
    features = load_features(args)
    world = int(_get(args, "world_size", 1))
    batch = global_batch_size(int(_get(args, "batch_size", 32)), world, bool(_get(args, "per_rank_batch", False)))
    shard = Shard(int(_get(args, "rank", 0)), world) if world > 1 else None
    cuda = str(_get(args, "device", "cpu")).startswith("cuda") and torch.cuda.is_available()
    return make_loaders(features.splits, batch, torch.initial_seed(), int(num_workers or 0), shard=shard,
                        pin_memory=cuda)
