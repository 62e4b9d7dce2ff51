"""Run identity: the files of one training run (a model, a dataset, a seed and its settings)
under a name no other run has, held by a lock while the run is alive.

MMSA saves every run of a model on a dataset to ``<models>/<model>-<dataset>.pth``, so two
runs at once in the same folders overwrite and then test each other's weights. Here each run
writes ``<models>/runs/<model>-<dataset>-seed<seed>-<settings id>.pth`` with its sidecar
(``.pth.json``), its resume state (``.pth.resume``) and, once tested, its result
(``.pth.result.json``); the settings id is a hash of everything that defines the result (the
effective config, the data's content, the package version, the world size). A lock on the run
(``.<name>.pth.lock``, released by the system when the process dies, even by kill -9) keeps a
second process from training the same run at the same time. MMSA's own name,
``<models>/<model>-<dataset>.pth`` (and its ``.json``), is then replaced in one rename by the
newest finished run's weights (a hard link where the file system allows it, else a copy).

The result record lets a multi-seed command resume: a seed whose record matches is not
trained again when the same command runs again; the command removes its records once its
result row is written.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from .. import __version__
from ..config.schema import KEYS
from ..errors import KudaInputError
from ..files import LockHeld, atomic_path, atomic_write_text, file_lock, lock_path, remove_stale_temps
from ..training.checkpoints import plain, weights_info_path

logger = logging.getLogger("MMSA")

RUNS_DIR = "runs"
RESULT_FORMAT = "kuda_mmsa.run-result/1"
# KuDA: the keys that define a result (the 'run' section only says where things are)
RESULT_KEYS = tuple(k.name for k in KEYS if k.section in ("model", "train"))
# args of any model that say where things are or what is shown, never what is computed
PLACE_KEYS = {"model_save_path", "published_save_path", "run_name", "settings_keys", "device", "log_dir", "cur_seed",
              "seed", "custom_feature", "featurePath", "feature_T", "feature_A", "feature_V", "data_root",
              "knowledge_dir", "dataset_download", "is_tune", "rank", "progress", "plots", "data_fingerprint",
              "train_mode", "pretrained_arg", "gpu_ids", "knowledge_source"}


def result_settings(args: Mapping[str, Any]) -> dict:
    """What defines a run's result, apart from its seed (the settings id hashes this)."""
    data = args.get("data_fingerprint")        # the file (where, size, time) and its content
    if args.get("model_name") == "kuda":
        config = {k: args.get(k) for k in RESULT_KEYS}
        config["pretrain"] = args.get("pretrain")
        config["KeyEval"] = args.get("KeyEval")
    else:       # the keys the run started with: what MMSA's trainers add to args while training is not a setting
        keys = args.get("settings_keys") or list(args)
        config = {k: args.get(k) for k in keys if k not in PLACE_KEYS}
    return plain({"version": __version__, "model": args.get("model_name"), "dataset": args.get("dataset_name"),
                  "config": config, "data": data, "world_size": int(args.get("world_size", 1) or 1)})


def settings_id(args: Mapping[str, Any]) -> str:
    text = json.dumps(result_settings(args), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class RunFiles:
    """The files of one run. ``published`` is MMSA's name (<models>/<model>-<dataset>.pth)."""
    published: Path
    weights: Path
    settings: str
    seed: int

    @classmethod
    def for_args(cls, published, args: Mapping[str, Any]) -> "RunFiles":
        published = Path(published)
        sid = settings_id(args)
        seed = int(args.get("seed") or 0)
        name = f"{args['model_name']}-{args['dataset_name']}-seed{seed}-{sid}.pth"
        return cls(published, published.parent / RUNS_DIR / name, sid, seed)

    @property
    def name(self) -> str:
        return self.weights.name[:-len(".pth")]

    @property
    def resume(self) -> Path:
        return Path(str(self.weights) + ".resume")

    @property
    def result(self) -> Path:
        return Path(str(self.weights) + ".result.json")

    @property
    def lock(self) -> Path:
        return lock_path(self.weights)

    # ------------------------------------------------------------------ the lock
    @contextmanager
    def locked(self, what: str):
        """Hold this run's lock; a run of the same name alive in another process is refused."""
        try:
            with file_lock(self.lock, blocking=False):
                yield
        except LockHeld as e:
            raise KudaInputError(
                f"The same run is being trained right now by {e.holder}: {what} (run {self.name}, files "
                f"{self.weights}*). Its state is not interrupted; this process does not touch it. Two runs of "
                f"the same settings and seed give the same result: wait for that one to finish (its result row "
                f"is written when it ends), or start this one with other seeds or settings.") from None

    # ------------------------------------------------------------------ result records
    def write_result(self, results: Dict[str, float], args: Mapping[str, Any]) -> Path:
        record = {"format": RESULT_FORMAT, "run": self.name, "seed": self.seed, "settings": result_settings(args),
                  "results": {k: float(v) for k, v in results.items()}, "weights": str(self.weights),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        return atomic_write_text(self.result, json.dumps(plain(record), indent=1))

    def finished_result(self, args: Mapping[str, Any]) -> Optional[Dict[str, float]]:
        """The results of this run when an earlier process finished it (its record matches and
        its weights are there), else None."""
        if not self.result.is_file() or not self.weights.is_file():
            return None
        try:
            record = json.loads(self.result.read_text())
        except (OSError, ValueError):
            return None
        if (not isinstance(record, dict) or record.get("format") != RESULT_FORMAT
                or record.get("settings") != result_settings(args) or record.get("seed") != self.seed):
            return None
        results = record.get("results")
        if not isinstance(results, dict) or not all(isinstance(v, (int, float)) for v in results.values()):
            return None
        return {k: float(v) for k, v in results.items()}

    def forget_result(self) -> None:
        self.result.unlink(missing_ok=True)

    # ------------------------------------------------------------------ MMSA's name
    def publish(self) -> Path:
        """Make MMSA's ``<model>-<dataset>.pth`` (and its .json) this run's, each in one rename."""
        pairs = [(self.weights, self.published)]
        info = weights_info_path(self.weights)
        # runs finishing at once: the weights and .json of one run (the lock lives in runs/)
        with file_lock(self.weights.parent / f".{self.published.name}.publish.lock"):
            if info.is_file():
                pairs.append((info, weights_info_path(self.published)))
            else:
                weights_info_path(self.published).unlink(missing_ok=True)   # an older run's config
            for src, dst in pairs:
                remove_stale_temps(dst)
                with atomic_path(dst) as tmp:
                    os.unlink(tmp)
                    try:
                        os.link(src, tmp)
                    except OSError:
                        shutil.copyfile(src, tmp)
        return self.published
