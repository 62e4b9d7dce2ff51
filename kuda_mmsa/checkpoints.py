"""Checkpoint files: atomic writes, stage-1 knowledge checkpoints and their checks.

A stage-1 ("knowledge") checkpoint holds one unimodal branch (encoder + adapters + decoder)
with enough metadata to refuse a mismatched model with a clear message instead of a
state-dict traceback. Files are written to a temp file and renamed, so an interrupted run
never leaves a half-written checkpoint behind, and they load on CPU whatever device saved them.
"""
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping

import torch
from torch import nn

from .errors import KudaCheckpointError
from .files import atomic_path, default_knowledge_root

KNOWLEDGE_FORMAT = "kuda_mmsa.knowledge/1"
MODALITY_NAMES = {"T": "text", "V": "vision", "A": "audio"}


def atomic_save(obj: Any, path) -> Path:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def cpu_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def encoder_tag(pretrained: Any) -> str:
    """A folder-safe name for the text encoder (knowledge is only valid for the same BERT)."""
    name = getattr(pretrained, "name_or_path", None) or str(pretrained)
    name = name.rstrip("/\\")
    name = os.path.basename(name) if os.path.isdir(name) else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "text-encoder"


def knowledge_dir(args: Mapping[str, Any]) -> Path:
    root = args.get("knowledge_dir") or default_knowledge_root()
    return Path(root).expanduser() / str(args["dataset_name"]) / encoder_tag(args.get("pretrained"))


def knowledge_paths(args: Mapping[str, Any]) -> Dict[str, Path]:
    folder = knowledge_dir(args)
    return {m: folder / f"{MODALITY_NAMES[m]}.pth" for m in ("T", "V", "A")}


def save_knowledge(branch: nn.Module, path, modality: str, meta: Mapping[str, Any]) -> Path:
    return atomic_save(
        {"format": KNOWLEDGE_FORMAT, "modality": modality, "meta": dict(meta), "state_dict": cpu_state_dict(branch)},
        path,
    )


def read_checkpoint(path, what: str) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KudaCheckpointError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise KudaCheckpointError(
            f"{what} {path} could not be read ({exc.__class__.__name__}: {exc}). The file is truncated "
            "or not a kuda_mmsa checkpoint; delete it and run stage 1 again."
        ) from None


def load_knowledge_into(branch: nn.Module, path, modality: str, command: str) -> Dict[str, Any]:
    """Load a stage-1 checkpoint into `branch`, checking modality and every tensor shape."""
    ckpt = read_checkpoint(path, f"Stage-1 {MODALITY_NAMES[modality]} checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != KNOWLEDGE_FORMAT:
        raise KudaCheckpointError(
            f"Stage-1 checkpoint {path} is not a kuda_mmsa knowledge checkpoint (expected format "
            f"{KNOWLEDGE_FORMAT!r}, found {ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}). "
            f"Re-create it with: {command}"
        )
    if ckpt.get("modality") != modality:
        raise KudaCheckpointError(
            f"Stage-1 checkpoint {path} holds modality {ckpt.get('modality')!r}, expected {modality!r}. "
            f"Re-create it with: {command}"
        )
    own = branch.state_dict()
    theirs = ckpt["state_dict"]
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = [(k, tuple(theirs[k].shape), tuple(own[k].shape)) for k in own if k in theirs and theirs[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k, found, expected = wrong[0]
            detail.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k}: checkpoint {found}, model {expected}")
        if missing:
            detail.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        raise KudaCheckpointError(
            f"Stage-1 {MODALITY_NAMES[modality]} checkpoint {path} does not match this model: "
            f"{'; '.join(detail)}. It was made with {ckpt.get('meta', {})}; the data, text encoder "
            f"or encoder sizes differ. Re-create it for this setup with: {command}"
        )
    branch.load_state_dict(theirs)
    return ckpt
