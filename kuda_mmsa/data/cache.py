"""Cache folder and atomic writes for generated artefacts (demo data, tiny BERT)."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

from ..files import atomic_path
from . import safe_pickle
from .demo import DEFAULTS, GENERATOR_VERSION, facts_of, make_demo_splits
from .families import FAMILIES, make_family


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$KUDA_MMSA_CACHE``, else ``~/.cache/kuda_mmsa``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KUDA_MMSA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kuda_mmsa"


def _params_tag(params: dict, defaults: dict, what: str) -> str:
    full = dict(defaults)
    unknown = set(params) - set(full)
    if unknown:
        raise TypeError(f"unknown {what} parameters: {sorted(unknown)}; known: {sorted(full)}")
    full.update(params)
    if full == defaults:
        return "default"
    blob = json.dumps(full, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def _ensure_generated(name: str, build, defaults: dict, params: dict, cache_dir) -> Path:
    """Path of a generated pickle for these parameters, generated atomically (temp file +
    rename) on first use, with a JSON sidecar of its facts (shapes, split sizes)."""
    tag = _params_tag(params, defaults, f"{name} data")
    path = cache_root(cache_dir) / "demo" / f"{name}-v{GENERATOR_VERSION}-{tag}.pkl"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return path
    data = build(**params)
    facts = facts_of(data)
    facts["generator"] = {"name": name, "version": GENERATOR_VERSION, **dict(defaults, **params)}
    atomic_write_bytes(path, pickle.dumps(data, protocol=4))
    atomic_write_bytes(meta, json.dumps(facts, indent=1).encode())
    return path


def ensure_demo_data(cache_dir=None, **params) -> Path:
    """Path of the demo pickle for these generator parameters (defaults: DEFAULTS)."""
    return _ensure_generated("demo", make_demo_splits, DEFAULTS, params, cache_dir)


def ensure_family_data(family: str, cache_dir=None, **params) -> Path:
    """Path of a generated family's pickle (kuda_mmsa.data.families; defaults: FAMILIES)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; families: {sorted(FAMILIES)}")
    return _ensure_generated(family, lambda **p: make_family(family, **p), FAMILIES[family], params, cache_dir)


def demo_facts(path) -> dict:
    """Facts (seq_lens, feature_dims in MMSA's [T, A, V] order, splits, train_samples)
    of a generated demo pickle: from its sidecar, else from the data itself."""
    path = Path(path)
    meta = path.with_suffix(".json")
    if meta.is_file():
        facts = json.loads(meta.read_text())
    else:
        with open(path, "rb") as f:
            facts = facts_of(safe_pickle.load(f))
    return {k: facts[k] for k in ("seq_lens", "feature_dims", "splits", "train_samples")}


def replace_dir_atomically(tmp_dir: Path, final: Path) -> None:
    """Move a fully written folder into place; if another process won the race, keep
    theirs."""
    try:
        os.replace(tmp_dir, final)
    except OSError:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        if not final.is_dir():
            raise
