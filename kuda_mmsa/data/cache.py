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


def cache_root(cache_dir=None) -> Path:
    """``cache_dir``, else ``$KUDA_MMSA_CACHE``, else ``~/.cache/kuda_mmsa``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("KUDA_MMSA_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "kuda_mmsa"


def _params_tag(params: dict) -> str:
    full = dict(DEFAULTS)
    unknown = set(params) - set(full)
    if unknown:
        raise TypeError(f"unknown demo data parameters: {sorted(unknown)}; "
                        f"known: {sorted(full)}")
    full.update(params)
    if full == DEFAULTS:
        return "default"
    blob = json.dumps(full, sort_keys=True).encode()
    return hashlib.sha1(blob).hexdigest()[:10]


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def ensure_demo_data(cache_dir=None, **params) -> Path:
    """Path of the demo pickle for these generator parameters (defaults: DEFAULTS),
    generating it atomically (temp file + rename) on first use. A JSON sidecar with
    its facts (shapes, split sizes) is written next to it."""
    tag = _params_tag(params)
    folder = cache_root(cache_dir) / "demo"
    path = folder / f"demo-v{GENERATOR_VERSION}-{tag}.pkl"
    meta = path.with_suffix(".json")
    if path.is_file() and meta.is_file():
        return path
    data = make_demo_splits(**params)
    facts = facts_of(data)
    facts["generator"] = {"version": GENERATOR_VERSION, **dict(DEFAULTS, **params)}
    atomic_write_bytes(path, pickle.dumps(data, protocol=4))
    atomic_write_bytes(meta, json.dumps(facts, indent=1).encode())
    return path


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
