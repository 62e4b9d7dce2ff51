"""``MMSA_run`` with MMSA 2.2.1's signature, outputs and defaults, made trustworthy.

The same result CSVs (``<res>/normal/<dataset>.csv``: one row per call, each metric as
(mean x 100, std x 100) over seeds; ``<res>/tune/<dataset>-<model>.csv``), log file
(``<log>/<model>-<dataset>.log``) and weights (``<models>/<model>-<dataset>.pth``) as MMSA, and
MMSA's own models and trainers for stock models. What it adds, before any training: the
configuration is checked against the schema (kuda) or MMSA's keys (stock models), the output
folders must be writable and the results CSVs able to take the row, left-over temp files of
killed writes are removed, and the data is read and validated. During training: each run
writes under its own name and holds its lock (kuda_mmsa.mmsa.run_files), so runs sharing the
folders never test each other's weights, and MMSA's weights file becomes the newest finished
run's; weights an earlier run left at the save path are never tested as this run's; a
diverging run stops with a clear error. Each seed's row goes to ``<dataset>-seeds.csv`` as
it ends, and the same command run again skips the seeds that finished. At the end: MMSA's
row, appended under the file's lock, a plain results table (no ``np.float64(...)``) and the
per-seed results are returned.

Under torchrun (WORLD_SIZE > 1) a KuDA run is data-parallel (kuda_mmsa.training.distributed):
each process takes the GPU of its LOCAL_RANK (or the CPU), the process group starts here,
and rank 0 alone writes the result CSV, the log, the weights and the plots. Tuning (``-t``)
may run its trials on an executor (local devices or Ray: kuda_mmsa.sweeps), with
MMSA's random search or Optuna (``tuner='optuna'``): the tuners are the registry TUNERS,
whose built-ins live in kuda_mmsa.experiments.tuning (imported when first used). One seed's
training and testing is kuda_mmsa.mmsa.seed_run.
"""
from __future__ import annotations

import functools
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..data.loaders import global_batch_size
from ..errors import KudaInputError, KudaTrainingError
from ..files import append_csv_row, check_csv_target, ensure_writable_dir
from ..training import distributed
from ..training.checkpoints import weights_info_path
from ..registry import TUNERS
from ..sweeps.executors import Executor
from . import patches
from .args import KUDA, build_args
from .datasets import canonical_name
from .defaults import default_workers
from .seed_run import _add_handlers, run_seed, setup_seed

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
    weights: List[Path] = field(default_factory=list)   # per seed: the run's own weights
    tune_rows: List[dict] = field(default_factory=list)
    study: Optional[dict] = None            # the best Optuna trial (--tuner optuna)

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


def MMSA_run(model_name: str, dataset_name: str, config_file: str = None, config: dict = None,
             seeds: list = None, is_tune: bool = False, tune_times: int = 50, custom_feature: str = None,
             feature_T: str = None, feature_A: str = None, feature_V: str = None, gpu_ids: list = None,
             num_workers: int = None, verbose_level: int = 1, model_save_dir: str = None,
             res_save_dir: str = None, log_dir: str = None,
             config_source: str = "MMSA_run(config=...)", executor: Optional[Executor] = None,
             tuner: str = "random", dist_backend: str = "auto") -> RunResult:
    """Train and test a model as MMSA_run does (see module docstring); ``config`` overrides
    the configuration (``config_source`` names where it came from in errors). Tuning only:
    ``executor`` runs the trials (kuda_mmsa.sweeps; None = one after another here),
    ``tuner`` is 'random' (MMSA's search) or 'optuna' (the registry TUNERS). Under torchrun:
    ``dist_backend`` (auto | nccl | gloo). Defaults as the command line's: ``num_workers`` min(8, CPUs) (MMSA: 4,
    which makes torch warn on smaller machines), ``gpu_ids`` the GPU with the most free memory,
    else the CPU (MMSA: [0], a warning on a machine without a GPU)."""
    model_name, dataset_name = str(model_name).lower(), canonical_name(dataset_name)
    seeds = list(seeds or DEFAULT_SEEDS)
    bad = [s for s in seeds if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < 2 ** 32]
    if bad:
        raise KudaInputError(f"Seeds must be integers in [0, 2**32 - 1] (numpy, random and torch are all "
                             f"seeded with them); found {bad}.")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    seeds = list(dict.fromkeys(seeds))
    if num_workers is None:
        num_workers = default_workers()
    if not isinstance(num_workers, int) or num_workers < 0:
        raise KudaInputError(f"num_workers (-n) must be an integer >= 0; found {num_workers!r}.")
    gpu_ids = list(gpu_ids if gpu_ids is not None else [])
    tuner = str(tuner or "random").lower()
    if tuner not in TUNERS:
        raise KudaInputError(f"tuner must be 'random' (MMSA's search) or 'optuna'; got {tuner!r}.")
    if (executor is not None or tuner != "random") and not is_tune:
        raise KudaInputError(
            "--devices, --executor and --tuner run tuning trials (-t) in parallel; a plain run trains its seeds "
            "one after another. For several cells at once use `kuda-mmsa ablate ... --devices ...`.")
    ctx = distributed.env_context()
    if ctx.distributed:
        if model_name != KUDA:
            raise KudaInputError(
                f"Data-parallel training under torchrun is for model kuda; '{model_name}' uses MMSA's own trainer. "
                f"Run it without torchrun.")
        if executor is not None or tuner != "random":
            raise KudaInputError(
                "Under torchrun every process trains the same run; --devices, --executor and --tuner optuna "
                "start runs of their own. Use them without torchrun.")
    home = Path.home() / "MMSA"
    dirs = {}
    for key, value, what in (("model_save_dir", model_save_dir, "model folder (--model-save-dir)"),
                             ("res_save_dir", res_save_dir, "result folder (--res-save-dir)"),
                             ("log_dir", log_dir, "log folder (--log-dir)")):
        folder = Path(value).expanduser() if value else home / DEFAULT_DIRS[key]
        dirs[key] = ensure_writable_dir(folder, what) if ctx.is_main else folder

    device, owned, notes = None, False, []
    if ctx.distributed:
        # Refusals before the process group starts (every rank refuses alike; none waits)
        device, backend, notes = distributed.choose_device(ctx, gpu_ids, dist_backend)
        checked, _ = build_args(model_name, dataset_name, config_file, config, config_source,
                              custom_feature=custom_feature)
        global_batch_size(checked["batch_size"], ctx.world_size, bool(checked.get("per_rank_batch")))
        owned = distributed.init(ctx, backend, device)
    args = None
    try:
        # MMSA draws tune configs from the clock (the same draws on every rank)
        rng = random.Random(ctx.broadcast(time.time_ns()) if ctx.distributed else time.time_ns())
        args, eff = build_args(model_name, dataset_name, config_file, config, config_source, tune=is_tune,
                               rng=rng, custom_feature=custom_feature)
        handlers = _add_handlers(dirs["log_dir"], model_name, dataset_name, verbose_level, ctx.rank)
        try:
            args.update(model_save_path=dirs["model_save_dir"] / f"{model_name}-{dataset_name}.pth",
                        device=device if ctx.distributed else patches.assign_gpu(gpu_ids), train_mode="regression",
                        custom_feature=custom_feature, feature_T=feature_T or "", feature_A=feature_A or "",
                        feature_V=feature_V or "", log_dir=str(dirs["log_dir"]), is_tune=bool(is_tune),
                        world_size=ctx.world_size, rank=ctx.rank)
            logger.info("======================================== Program Start ========================================")
            note = loss_note(args)
            if note:
                logger.info(note)
            if ctx.distributed:
                batch = global_batch_size(args["batch_size"], ctx.world_size, bool(args.get("per_rank_batch")))
                for note in notes:
                    logger.warning(note)
                logger.info(f"Data-parallel run: {ctx.world_size} processes ({backend}), rank 0 on {device}; "
                            f"global batch {batch} ({batch // ctx.world_size} per process); only rank 0 "
                            f"writes the results, the log, the weights and the plots.")
            if is_tune:
                return TUNERS[tuner](model_name, dataset_name, config_file, config, config_source, seeds, tune_times,
                                     custom_feature, args, eff, dirs, num_workers, rng, executor=executor,
                                     gpu_ids=gpu_ids, verbose_level=verbose_level)
            if repeated:
                logger.warning(f"Seed(s) {repeated} given more than once: each seed runs once (a repeated seed "
                               f"would give the same result again and shrink the std).")
            csv_file = dirs["res_save_dir"] / "normal" / f"{dataset_name}.csv"
            seeds_csv = dirs["res_save_dir"] / "normal" / f"{dataset_name}-seeds.csv"
            family = _metric_names(args.get("metrics_name"))
            checks = functools.partial(_check_result_files, csv_file, seeds_csv, family)
            ctx.on_main(checks) if ctx.distributed else checks()      # before any training
            logger.info(f"Seeds: {seeds}")
            result = RunResult(model_name, dataset_name, seeds, [], dict(args))
            finished_runs = []
            for i, seed in enumerate(seeds):
                setup_seed(seed)
                args["cur_seed"], args["seed"] = i + 1, seed
                logger.info(f"{'-' * 30} Running with seed {seed} [{i + 1}/{len(seeds)}] {'-' * 30}")
                outcome = {}
                res = run_seed(args, num_workers, log_args=(i == 0), reuse=True, outcome=outcome)
                logger.info(f"Result for seed {seed}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
                result.per_seed.append(res)
                result.weights.append(outcome["run"].weights)
                finished_runs.append(outcome["run"])
                if ctx.is_main and not outcome["reused"]:
                    # this seed's row now, then its record: a rerun of a killed command skips it
                    _append_seed_row(seeds_csv, model_name, seed, outcome["run"], res)
                    outcome["run"].write_result(res, args)
            result.csv = csv_file
            if ctx.is_main:
                result.csv = _append_csv(csv_file, model_name, result.per_seed)
                for run in finished_runs:       # the command is complete: a rerun trains again, as MMSA's
                    run.forget_result()
            logger.info(f"Results ({model_name} on {dataset_name}, test split):\n{result.table()}")
            logger.info(f"Results saved to {result.csv} (per seed: {seeds_csv}).")
            if ctx.is_main:
                logger.info(describe_outputs(result, args, seeds_csv, dirs["log_dir"] / f"{model_name}-{dataset_name}.log"))
            return result
        finally:
            for h in handlers:
                logger.removeHandler(h)
                h.close()
    except Exception as e:
        if ctx.distributed and distributed.is_peer_failure(e):
            run_path = (args or {}).get("model_save_path")
            resume = Path(str(run_path) + ".resume") if run_path else None
            raise KudaTrainingError(distributed.peer_failure_message(ctx, e, resume)) from None
        raise
    finally:
        if owned:
            distributed.shutdown()


def loss_note(args) -> Optional[str]:
    """Why KuDA's training loss may go below zero (said once per command), or None."""
    if args.get("model_name") != KUDA or args.get("ratio_source") != "reliability":
        return None
    return ("Training loss = MSE + ce_weight x CE + the reliability heads' Gaussian negative log-likelihood, the mean "
            "over modalities of (s_m - y)^2 / exp(v_m) + v_m, where v_m is the log of modality m's predicted squared "
            "error. v_m is negative once that error is below 1, so the training loss can be negative; it is not a "
            "sign of divergence. The validation and test Loss is the MSE alone (>= 0).")


def describe_outputs(result: RunResult, args, seeds_csv: Path, log_file: Path) -> str:
    """Every file this command wrote and where, for the end of the log (the files that exist:
    stock models write no config and no curves, --no-plots no PNG)."""
    from ..training.run_config import RunConfig
    from ..training.trainer import curves_path

    lines = [f"  results (MMSA's row: mean and std x 100 over seeds): {result.csv}",
             f"  results per seed: {seeds_csv}", f"  log: {log_file}"]
    published = Path(args["published_save_path"])
    if published.is_file():
        info = weights_info_path(published)
        lines.append(f"  weights under MMSA's name (the last finished run's; each run keeps its own below): {published}"
                     + (f", with the config they were trained with: {info}" if info.is_file() else ""))
    for seed, weights in zip(result.seeds, result.weights):
        run = [f"weights {weights}"]
        if weights_info_path(weights).is_file():
            run.append(f"config {weights_info_path(weights)}")
        png = curves_path(RunConfig.from_args(dict(args, seed=seed))) if args["model_name"] == KUDA else None
        if png is not None and png.is_file():
            run.append(f"training curves {png}")
        lines.append(f"  seed {seed}: " + "; ".join(run))
    return "Outputs:\n" + "\n".join(lines)


def _metric_names(family) -> List[str]:
    """The metric names MMSA reports for a metrics family (SIMS, MOSI, MOSEI), in its order."""
    from ..training.metrics import metrics_for

    y = torch.linspace(-1, 1, 12).view(-1, 1)
    try:
        return list(metrics_for(family or "SIMS")(y, y.flip(0)))
    except KudaInputError:
        return []


def _check_result_files(csv_file: Path, seeds_csv: Path, metrics: List[str]) -> None:
    """Refuse, before training, a results CSV this run could not add its row to."""
    def results_header(header):
        missing = [m for m in metrics if m not in header]
        if header[:1] != ["Model"] or missing:
            return (f"has the columns {header}, not MMSA's results layout for this dataset (Model, then "
                    f"{', '.join(metrics)} and Loss; missing: {missing or ['Model']}).")
        return None

    def seeds_header(header):
        if header[:3] != list(SEED_COLUMNS):
            return f"has the columns {header}; a per-seed results file starts with {list(SEED_COLUMNS)}."
        return None

    check_csv_target(csv_file, "results CSV", "--res-save-dir", results_header)
    check_csv_target(seeds_csv, "per-seed results CSV", "--res-save-dir", seeds_header)


SEED_COLUMNS = ("Model", "seed", "run")


def _append_seed_row(seeds_csv: Path, model_name: str, seed: int, run, res: Dict[str, float]) -> Path:
    """One finished seed's test metrics (full precision), written as soon as the seed ends."""
    header = list(SEED_COLUMNS) + list(res) + ["weights"]
    row = [model_name, seed, run.name] + [repr(float(v)) for v in res.values()] + [str(run.weights)]
    where, why = append_csv_row(seeds_csv, header, row)
    if why:
        logger.warning(f"Seed {seed}'s row could not be added to {seeds_csv} ({why}); it is in {where}.")
    return where


def _append_csv(csv_file: Path, model_name: str, per_seed: List[Dict[str, float]]) -> Path:
    """MMSA's result row: the model, then (mean x 100, std x 100) per metric; appended under
    the file's lock. A file whose columns changed during the run gets the row in a side file
    (named in the log): the result is never lost."""
    metrics = list(per_seed[0])
    row = [model_name] + [str((round(float(np.mean([r[m] for r in per_seed]) * 100), 2),
                               round(float(np.std([r[m] for r in per_seed]) * 100), 2))) for m in metrics]
    where, why = append_csv_row(csv_file, ["Model"] + metrics, row)
    if why:
        logger.warning(f"The results row could not be added to {csv_file} ({why}); it was written to {where} "
                       f"instead.")
    return where

