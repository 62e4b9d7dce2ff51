"""Checkpoint files: atomic writes, loads that never run code, fingerprints, and the stage-1
knowledge checkpoints with their checks.

Every file is written to a temp file and renamed, so an interrupted run never leaves a
half-written checkpoint, and loaded with ``torch.load(weights_only=True)``: tensors, numbers,
strings, lists and dicts only, so a file from someone else cannot run code. Resume states
keep their random-number states as tensors and their counters as plain numbers.

A stage-1 ("knowledge") checkpoint holds one unimodal branch (encoder + adapters + decoder)
and records what it was trained on: the data's fingerprint, the text encoder, the stage-1
settings and a unique id that stage 2 records in its own fingerprint.
"""
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from .. import __version__
from ..errors import KudaCheckpointError, KudaStaleStateError
from ..files import atomic_path, default_knowledge_root, write_error

KNOWLEDGE_FORMAT = "kuda_mmsa.knowledge/2"
RESUME_FORMAT = "kuda_mmsa.resume/2"
STAGE1_PARTIAL_FORMAT = "kuda_mmsa.stage1-partial/2"
MODALITY_NAMES = {"T": "text", "V": "vision", "A": "audio"}


def atomic_save(obj: Any, path) -> Path:
    """torch.save into a temp file, renamed over ``path`` when complete. A write that fails
    (full disk, file size limit: torch reports it as a RuntimeError such as 'unexpected pos' or
    'iostream error', not an OSError) is one paragraph saying so, and ``path`` keeps its
    previous content."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:    # our states always pickle: torch's writer failed to write
            text = str(e)
            first = text.strip().splitlines()[0] if text.strip() else "torch.save failed"
            raise write_error(path, f"torch.save: {first[:160]}") from None
    return Path(path)


def cpu_state_dict(module: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def plain(obj: Any) -> Any:
    """obj with numpy numbers, tuples and paths turned into JSON types (what weights_only
    loading accepts and fingerprints compare)."""
    return json.loads(json.dumps(obj, default=_to_plain))


def _to_plain(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (Path, torch.device)):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return repr(o)


def differences(old: Any, new: Any, prefix: str = "") -> List[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            name = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(name)
            else:
                out += differences(old[k], new[k], name)
        return out
    return [] if old == new else [prefix or "(value)"]


def describe_differences(old: Mapping, new: Mapping, limit: int = 6) -> str:
    diffs = differences(old, new)
    shown = []
    for name in diffs[:limit]:
        shown.append(f"{name}: {_lookup(old, name)!r} -> {_lookup(new, name)!r}")
    more = f" and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return "; ".join(shown) + more


def _lookup(d, dotted):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return "<absent>"
        cur = cur[part]
    if isinstance(cur, (dict, list)) and len(json.dumps(cur, default=str)) > 60:
        return "<...>"
    return cur


def read_checkpoint(path, what: str) -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise KudaCheckpointError(f"{what} {path} does not exist.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise KudaCheckpointError(
            f"{what} {path} could not be read ({exc.__class__.__name__}: {detail[:200]}). The file "
            "is truncated, corrupt, or not a kuda_mmsa/MMSA checkpoint (only tensors, numbers, "
            "strings, lists and dicts are loaded: a file that needs code to load is refused). "
            "Delete it and run again."
        ) from None


def weights_info_path(weights) -> Path:
    """The JSON next to stage-2 weights recording their configuration and data."""
    weights = Path(weights)
    return weights.with_name(weights.name + ".json")


# ---------------------------------------------------------------------- knowledge
def encoder_tag(pretrained: Any) -> str:
    """A folder-safe name for the text encoder (knowledge is only valid for the same encoder)."""
    name = getattr(pretrained, "name_or_path", None) or str(pretrained)
    name = name.rstrip("/\\")
    name = os.path.basename(name) if os.path.isdir(name) else name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "text-encoder"


def settings_id(settings: Mapping[str, Any]) -> str:
    """A short name for stage-1 settings: knowledge made with other settings (epochs, branch
    sizes, padding means, seed) lives in another folder, never mistaken for this one."""
    import hashlib

    return hashlib.sha1(json.dumps(plain(settings), sort_keys=True).encode()).hexdigest()[:10]


def knowledge_folder(root, dataset: str, pretrained: Any, settings: Mapping[str, Any]) -> Path:
    """<root>/<dataset>/<text encoder>/<settings id>/ (settings.json there says which)."""
    root = Path(root).expanduser() if root else default_knowledge_root()
    return root / str(dataset) / encoder_tag(pretrained) / settings_id(settings)


def knowledge_paths(root, dataset: str, pretrained: Any, settings: Mapping[str, Any]) -> Dict[str, Path]:
    folder = knowledge_folder(root, dataset, pretrained, settings)
    return {m: folder / f"{MODALITY_NAMES[m]}.pth" for m in ("T", "V", "A")}


def save_knowledge(branch: nn.Module, path, modality: str, meta: Mapping[str, Any]) -> Path:
    meta = dict(plain(meta), uid=uuid.uuid4().hex, version=__version__)
    return atomic_save({"format": KNOWLEDGE_FORMAT, "modality": modality, "meta": meta,
                        "state_dict": cpu_state_dict(branch)}, path)


def read_knowledge(path, modality: str, command: str) -> Dict[str, Any]:
    """The checkpoint dict of a stage-1 checkpoint for `modality` (format and modality checked)."""
    ckpt = read_checkpoint(path, f"Stage-1 {MODALITY_NAMES[modality]} checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != KNOWLEDGE_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise KudaCheckpointError(
            f"Stage-1 checkpoint {path} is not a kuda_mmsa knowledge checkpoint of this version "
            f"(expected format {KNOWLEDGE_FORMAT!r}, found {found!r}). Re-create it with: {command}")
    if ckpt.get("modality") != modality:
        raise KudaCheckpointError(
            f"Stage-1 checkpoint {path} holds modality {ckpt.get('modality')!r}, expected {modality!r}. "
            f"Re-create it with: {command}")
    return ckpt


def data_content(fingerprint: Optional[Mapping]) -> Optional[dict]:
    """What a data fingerprint says about the content (split sizes, shapes, ids and labels),
    leaving out where the file is: moving a dataset does not make its knowledge stale."""
    if not fingerprint:
        return None
    return plain({"splits": fingerprint.get("splits")})


def check_knowledge_origin(ckpt: Mapping, path, modality: str, expected: Mapping[str, Any],
                           command: str, allow_other_data: bool = False) -> None:
    """Refuse knowledge trained on other data or with another text encoder than `expected`
    ({"data": fingerprint, "encoder": {...}})."""
    meta = ckpt.get("meta", {})
    checks = [("encoder", "text encoder")]
    if not allow_other_data:
        checks.insert(0, ("data", "data"))
    for key, what in checks:
        if key not in expected:
            continue
        have, want = meta.get(key), expected[key]
        if key == "data":
            have, want = data_content(have), data_content(want)
        if plain(have) != plain(want):
            raise KudaStaleStateError(
                f"Stage-1 {MODALITY_NAMES[modality]} checkpoint {path} was trained on other {what} "
                f"than this run uses ({describe_differences(have or {}, plain(want) or {})}). "
                f"Knowledge is only valid for the data and text encoder it was trained on: run stage 1 "
                f"for this setup ({command}) after deleting {Path(path).parent}, or use another "
                f"--knowledge-dir. Knowledge from another dataset is the paper's protocol for "
                f"MOSI/MOSEI: ask for it with --knowledge-from DATASET.")


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], path, what: str,
                       command: str, made_with: Any = None, strict: bool = True) -> None:
    """load_state_dict with a one-paragraph error naming the first mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state)) if strict else []
    unexpected = sorted(set(state) - set(own)) if strict else []
    wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        detail = []
        if wrong:
            k, found, expected = wrong[0]
            detail.append(f"{len(wrong)} tensor(s) of another shape, e.g. {k}: checkpoint {found}, model {expected}")
        if missing:
            detail.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        made = f" It was made with {made_with}." if made_with else ""
        raise KudaCheckpointError(
            f"{what} {path} does not match this model: {'; '.join(detail)}.{made} The data, text "
            f"encoder or model sizes differ. Re-create it for this setup with: {command}")
    module.load_state_dict(state, strict=strict)


def load_knowledge_into(branch: nn.Module, path, modality: str, command: str) -> Dict[str, Any]:
    """Load a stage-1 checkpoint into `branch`, checking format, modality and every tensor shape."""
    ckpt = read_knowledge(path, modality, command)
    load_state_checked(branch, ckpt["state_dict"], path, f"Stage-1 {MODALITY_NAMES[modality]} checkpoint",
                       command, made_with=ckpt.get("meta"))
    return ckpt


# ---------------------------------------------------------------------- resume states
def read_resume(path, expected_format: str, fingerprint: Mapping, what: str, refuse: bool = True):
    """(state, note): the saved state at `path` when its fingerprint equals `fingerprint`
    (None when there is no file). A state made for another run is refused
    (KudaStaleStateError naming the differences and the file to delete), or with
    ``refuse=False`` removed, with a one-line note saying so."""
    path = Path(path)
    if not path.exists():
        return None, None
    state = read_checkpoint(path, what)
    if not isinstance(state, dict) or state.get("format") != expected_format:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise KudaStaleStateError(
            f"{what} {path} has format {found!r}, not {expected_format!r} (it was written by another "
            f"version of kuda_mmsa). Delete it to start this run from the beginning.")
    old = state.get("fingerprint", {})
    if plain(old) == plain(fingerprint):
        return state, None
    message = (f"{what} {path} was saved by a run with other settings, data or knowledge "
               f"({describe_differences(old, plain(fingerprint))}).")
    if refuse:
        raise KudaStaleStateError(
            f"{message} Resuming it would report that run's result for this one. Delete the file to "
            f"start this run from the beginning, or go back to that run's settings to finish it.")
    path.unlink()
    return None, message + " It was removed; this run starts from the beginning."
