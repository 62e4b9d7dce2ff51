"""``MMSA_run`` with MMSA 2.2.1's signature, outputs and defaults, made trustworthy.

The same result CSVs (``<res>/normal/<dataset>.csv``: one row per call, each metric as
(mean x 100, std x 100) over seeds; ``<res>/tune/<dataset>-<model>.csv``), log file
(``<log>/<model>-<dataset>.log``) and weights (``<models>/<model>-<dataset>.pth``) as MMSA, and
MMSA's own models and trainers for stock models. What it adds, before any training: the
configuration is checked against the schema (kuda) or MMSA's keys (stock models), the output
folders must be writable, left-over temp files of killed writes are removed, and the data
is read and validated. During training: weights an earlier run left at the save path are
never tested as this run's; a diverging run stops with a clear error. At the end: a plain
results table (no ``np.float64(...)``) and the per-seed results are returned.
"""
from __future__ import annotations

import gc
import logging
import sys
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..errors import KudaTrainingError
from ..files import ensure_writable_dir, remove_stale_temps
from .args import KUDA, build_args, plain_args
from .datasets import canonical_name

logger = logging.getLogger("MMSA")
DEFAULT_SEEDS = [1111, 1112, 1113, 1114, 1115]
DEFAULT_DIRS = {"model_save_dir": "saved_models", "res_save_dir": "results", "log_dir": "logs"}


@dataclass
class RunResult:
    model: str
    dataset: str
    seeds: List[int]
    per_seed: List[Dict[str, float]]
    args: dict
    csv: Optional[Path] = None
    tune_rows: List[dict] = field(default_factory=list)

    def table(self) -> str:
        """Plain text: one row per seed, then mean ± std (population std, as MMSA)."""
        if not self.per_seed:
            return "(no results)"
        metrics = list(self.per_seed[0])
        head = ["seed"] + metrics
        rows = [[str(s)] + [f"{r[m]:.4f}" for m in metrics] for s, r in zip(self.seeds, self.per_seed)]
        if len(self.per_seed) > 1:
            rows.append(["mean±std"] + [f"{np.mean([r[m] for r in self.per_seed]):.4f}±"
                                        f"{np.std([r[m] for r in self.per_seed]):.4f}" for m in metrics])
        width = [max(len(x) for x in col) for col in zip(head, *rows)]
        line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, width))  # noqa: E731
        return "\n".join([line(head)] + [line(r) for r in rows])


def setup_seed(seed: int) -> None:
    """MMSA's setup_seed (deterministic cuDNN included)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _add_handlers(log_dir: Path, model_name: str, dataset_name: str, verbose_level: int) -> list:
    fh = logging.FileHandler(log_dir / f"{model_name}-{dataset_name}.log")
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
    ch = logging.StreamHandler(sys.stderr)
    ch.setLevel({0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}.get(int(verbose_level), logging.INFO))
    ch.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    logger.setLevel(logging.DEBUG)
    for h in (fh, ch):
        logger.addHandler(h)
    return [fh, ch]


def run_seed(args, num_workers: int = 0, is_tune: bool = False, log_args: bool = False) -> Dict[str, float]:
    """Train and test one seed (MMSA's _run), with checks: the data is validated before the
    model is built, no stale weights are tested, a diverging stock model is a clear error."""
    from . import patches

    dataloader = patches.MMDataLoader(args, num_workers)
    if log_args:  # after the data is read: the shapes and file the run really uses
        logger.info(f"Running with args: {plain_args(args)}")
    model = patches.AMIO(args).to(args["device"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"The model has {n_params} trainable parameters")
    trainer = patches.ATIO().getTrain(args)
    save = Path(args["model_save_path"])
    remove_stale_temps(save)
    if args["model_name"] != KUDA:
        save.unlink(missing_ok=True)        # the KuDA trainer decides itself (it may resume)
    try:
        trainer.do_train(model, dataloader)
    except ValueError as e:
        if "NaN" in str(e) or "infinity" in str(e):
            raise KudaTrainingError(
                f"Training of {args['model_name']} diverged (non-finite predictions: {str(e).splitlines()[0]}). "
                f"Lower its learning_rate.") from None
        raise
    if not save.is_file():
        raise KudaTrainingError(f"{args['model_name']} saved no weights at {save}: nothing can be tested.")
    model.load_state_dict(torch.load(save, map_location=args["device"], weights_only=True))
    model.to(args["device"])
    results = trainer.do_test(model, dataloader["test"], mode="TEST")
    if is_tune:
        save.unlink(missing_ok=True)        # MMSA deletes tune-mode weights
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gc.collect()
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float, np.floating))}


def MMSA_run(model_name: str, dataset_name: str, config_file: str = None, config: dict = None,
             seeds: list = None, is_tune: bool = False, tune_times: int = 50, custom_feature: str = None,
             feature_T: str = None, feature_A: str = None, feature_V: str = None, gpu_ids: list = None,
             num_workers: int = 4, verbose_level: int = 1, model_save_dir: str = None,
             res_save_dir: str = None, log_dir: str = None,
             config_source: str = "MMSA_run(config=...)") -> RunResult:
    """Train and test a model as MMSA_run does (see module docstring); ``config`` overrides
    the configuration (``config_source`` names where it came from in errors)."""
    model_name, dataset_name = str(model_name).lower(), canonical_name(dataset_name)
    seeds = list(seeds or DEFAULT_SEEDS)
    gpu_ids = list(gpu_ids if gpu_ids is not None else [0])
    home = Path.home() / "MMSA"
    dirs = {}
    for key, value, what in (("model_save_dir", model_save_dir, "model folder (--model-save-dir)"),
                             ("res_save_dir", res_save_dir, "result folder (--res-save-dir)"),
                             ("log_dir", log_dir, "log folder (--log-dir)")):
        dirs[key] = ensure_writable_dir(Path(value) if value else home / DEFAULT_DIRS[key], what)

    rng = random.Random(time.time_ns())     # MMSA draws tune configs from the clock
    args, _ = build_args(model_name, dataset_name, config_file, config, config_source, tune=is_tune,
                         rng=rng, custom_feature=custom_feature)
    handlers = _add_handlers(dirs["log_dir"], model_name, dataset_name, verbose_level)
    try:
        from .patches import assign_gpu

        args.update(model_save_path=dirs["model_save_dir"] / f"{model_name}-{dataset_name}.pth",
                    device=assign_gpu(gpu_ids), train_mode="regression", custom_feature=custom_feature,
                    feature_T=feature_T or "", feature_A=feature_A or "", feature_V=feature_V or "",
                    log_dir=str(dirs["log_dir"]), is_tune=bool(is_tune))
        logger.info("======================================== Program Start ========================================")
        if is_tune:
            return _tune(model_name, dataset_name, config_file, config, config_source, seeds, tune_times,
                         custom_feature, args, dirs, num_workers, rng)
        logger.info(f"Seeds: {seeds}")
        result = RunResult(model_name, dataset_name, seeds, [], dict(args))
        for i, seed in enumerate(seeds):
            setup_seed(seed)
            args["cur_seed"], args["seed"] = i + 1, seed
            logger.info(f"{'-' * 30} Running with seed {seed} [{i + 1}/{len(seeds)}] {'-' * 30}")
            res = run_seed(args, num_workers, log_args=(i == 0))
            logger.info(f"Result for seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
            result.per_seed.append(res)
        result.csv = _append_csv(dirs["res_save_dir"] / "normal" / f"{dataset_name}.csv", model_name,
                                 result.per_seed)
        logger.info(f"Results ({model_name} on {dataset_name}, test split):\n{result.table()}")
        logger.info(f"Results saved to {result.csv}.")
        return result
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()


def _append_csv(csv_file: Path, model_name: str, per_seed: List[Dict[str, float]]) -> Path:
    """MMSA's result row: the model, then (mean x 100, std x 100) per metric."""
    import pandas as pd

    from ..files import atomic_path

    metrics = list(per_seed[0])
    row = [model_name] + [(round(float(np.mean([r[m] for r in per_seed]) * 100), 2),
                           round(float(np.std([r[m] for r in per_seed]) * 100), 2)) for m in metrics]
    df = pd.read_csv(csv_file) if csv_file.is_file() else pd.DataFrame(columns=["Model"] + metrics)
    df.loc[len(df)] = row
    with atomic_path(csv_file) as tmp:
        df.to_csv(tmp, index=None)
    return csv_file


def _tune(model_name, dataset_name, config_file, config, config_source, seeds, tune_times, custom_feature,
          initial, dirs, num_workers, rng) -> RunResult:
    """MMSA's random search: ``tune_times`` draws, each trained with the first seed; a draw
    already in the tune CSV is skipped."""
    import pandas as pd

    from ..files import atomic_path

    logger.info(f"Tuning with seed {seeds[0]}")
    csv_file = dirs["res_save_dir"] / "tune" / f"{dataset_name}-{model_name}.csv"
    csv_file.parent.mkdir(parents=True, exist_ok=True)
    d_paras = list(initial.get("d_paras") or [])
    done = []
    if csv_file.is_file():
        df = pd.read_csv(csv_file)
        done = [[df.loc[i, k] for k in d_paras] for i in range(len(df))]
    result = RunResult(model_name, dataset_name, [seeds[0]], [], dict(initial))
    for i in range(tune_times):
        args, _ = build_args(model_name, dataset_name, config_file, config, config_source, tune=True,
                             rng=rng, custom_feature=custom_feature)
        for k in ("model_save_path", "device", "train_mode", "custom_feature", "feature_T", "feature_A",
                  "feature_V", "log_dir", "is_tune"):
            args[k] = initial[k]
        args["cur_seed"], args["seed"] = i + 1, seeds[0]
        logger.info(f"{'-' * 30} Tuning [{i + 1}/{tune_times}] {'-' * 30}")
        logger.info(f"Args: {plain_args(args)}")
        cur = [args[k] for k in d_paras]
        if cur in done:
            logger.info("This set of parameters has been run. Skip.")
            continue
        setup_seed(seeds[0])
        res = run_seed(args, num_workers, is_tune=True)
        done.append(cur)
        df = pd.read_csv(csv_file) if csv_file.is_file() else pd.DataFrame(columns=d_paras + list(res))
        df.loc[len(df)] = [args[c] for c in d_paras] + [res[k] for k in res]
        with atomic_path(csv_file) as tmp:
            df.to_csv(tmp, index=None)
        result.per_seed.append(res)
        result.tune_rows.append({**{c: args[c] for c in d_paras}, **res})
        logger.info(f"Results saved to {csv_file}.")
    result.csv = csv_file
    return result
