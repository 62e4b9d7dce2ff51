"""The tuning runner as library code: MMSA's random search (``tune_random``) and Optuna's TPE
(``tune_optuna``), reached by ``MMSA_run(..., is_tune=True, tuner=...)`` through the registry
TUNERS (kuda_mmsa.registry), and ``run_trial``, one trial as a sweep cell. A tuner gets the
``MMSA_run`` call's arguments as checked there (``initial``: the args of the call, ``eff``:
KuDA's effective config, ``dirs``: the output folders, ``rng``: the draws) and returns a
RunResult whose ``tune_rows`` are the rows it added to ``<res>/tune/``."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from ..errors import KudaInputError
from ..files import atomic_path, ensure_writable_dir, file_lock, lock_path
from ..mmsa import patches
from ..mmsa.args import KUDA, build_args, plain_args
from ..mmsa.run import RunResult
from ..mmsa.seed_run import _add_handlers, run_seed, setup_seed
from ..registry import TUNERS
from ..sweeps.cells import Cell
from ..sweeps.executors import InlineExecutor, describe_result, run_cells
from ..sweeps.tuner import EpochMonitor, OptunaReporter, OptunaTuner, TrialPruned
from ..training import distributed
from ..training.checkpoints import weights_info_path
from ..training.metrics import lower_is_better

logger = logging.getLogger("MMSA")


@TUNERS.register("random")
def tune_random(model_name, dataset_name, config_file, config, config_source, seeds, tune_times, custom_feature,
                initial, eff, dirs, num_workers, rng, executor=None, gpu_ids=(), verbose_level=1) -> RunResult:
    """MMSA's random search: ``tune_times`` draws, each trained with the first seed; a draw
    already in the tune CSV is skipped. With an ``executor`` the draws run as parallel cells."""
    ctx = distributed.current()
    logger.info(f"Tuning with seed {seeds[0]}")
    csv_file = dirs["res_save_dir"] / "tune" / f"{dataset_name}-{model_name}.csv"
    if ctx.is_main:
        csv_file.parent.mkdir(parents=True, exist_ok=True)
    d_paras = list(initial.get("d_paras") or [])
    done = []
    if ctx.is_main and csv_file.is_file():
        df = pd.read_csv(csv_file)
        done = [[df.loc[i, k] for k in d_paras] for i in range(len(df))]
    done = ctx.broadcast(done)
    result = RunResult(model_name, dataset_name, [seeds[0]], [], dict(initial))

    def record(params, res):
        if ctx.is_main:
            with file_lock(lock_path(csv_file)):     # other tuners may add rows to the same file
                df = pd.read_csv(csv_file) if csv_file.is_file() else pd.DataFrame(columns=d_paras + list(res))
                df.loc[len(df)] = [params[c] for c in d_paras] + [res[k] for k in res]
                with atomic_path(csv_file) as tmp:
                    df.to_csv(tmp, index=None)
        result.per_seed.append(res)
        result.tune_rows.append({**{c: params[c] for c in d_paras}, **res})
        logger.info(f"Results saved to {csv_file}.")

    cells = []
    for i in range(tune_times):
        args, _ = build_args(model_name, dataset_name, config_file, config, config_source, tune=True,
                             rng=rng, custom_feature=custom_feature)
        for k in ("model_save_path", "device", "train_mode", "custom_feature", "feature_T", "feature_A",
                  "feature_V", "log_dir", "is_tune", "world_size", "rank"):
            args[k] = initial[k]
        args["cur_seed"], args["seed"] = i + 1, seeds[0]
        logger.info(f"{'-' * 30} Tuning [{i + 1}/{tune_times}] {'-' * 30}")
        logger.info(f"Args: {plain_args(args)}")
        cur = [args[k] for k in d_paras]
        if cur in done:
            logger.info("This set of parameters has been run. Skip.")
            continue
        done.append(cur)
        if executor is not None:
            params = {k: args[k] for k in d_paras}
            cells.append(_trial_cell(f"random-{len(cells) + 1}-{_params_tag(params)}", model_name, dataset_name,
                                     params, seeds[0], config_file, config, config_source, custom_feature,
                                     initial, dirs, num_workers, verbose_level))
            continue
        setup_seed(seeds[0])
        res = run_seed(args, num_workers, is_tune=True)
        record({k: args[k] for k in d_paras}, res)
    if cells:
        logger.info(f"[tune] {len(cells)} trial(s) on {executor.describe()}")

        def on_done(r):
            logger.info(f"[tune] {r.key}: {describe_result(r)}")
            if r.ok:
                record(r.cell.kwargs["params"], r.value["results"])

        failed = [r for r in run_cells(executor, cells, on_done) if not r.ok]
        if failed:
            logger.warning(f"[tune] {len(failed)} trial(s) failed (not in {csv_file}; run again to retry them).")
    result.csv = csv_file
    return result


def _params_tag(params: dict) -> str:
    import hashlib
    import json

    return hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _trial_cell(key, model_name, dataset_name, params, seed, config_file, config, config_source, custom_feature,
                initial, dirs, num_workers, verbose_level, optuna=None) -> Cell:
    trial_dir = dirs["res_save_dir"] / "tune" / f"{dataset_name}-{model_name}-trials" / key
    kwargs = dict(model_name=model_name, dataset_name=dataset_name, params=dict(params), seed=int(seed),
                  trial_dir=str(trial_dir), config_file=str(config_file) if config_file else None,
                  config=dict(config or {}), config_source=config_source,
                  custom_feature=str(custom_feature) if custom_feature else None,
                  feature_T=initial.get("feature_T") or "", feature_A=initial.get("feature_A") or "",
                  feature_V=initial.get("feature_V") or "", num_workers=int(num_workers or 0),
                  verbose_level=int(verbose_level), optuna=optuna)
    return Cell(key, run_trial, kwargs, trial_dir, label=key)


def run_trial(model_name: str, dataset_name: str, params: dict, seed: int, trial_dir: str,
              config_file: str = None, config: dict = None, config_source: str = "tuning trial",
              custom_feature: str = None, feature_T: str = "", feature_A: str = "", feature_V: str = "",
              num_workers: int = 0, verbose_level: int = 1, gpu_ids=None, optuna: dict = None) -> dict:
    """One tuning trial (a sweep cell): MMSA's tune step for ``params`` with one seed, its
    weights, log and resume state in ``trial_dir``. Returns {"results": test metrics, "valid":
    the best validation KeyEval, "epochs", "pruned"}; with ``optuna`` (the study and trial)
    every epoch's validation value is reported and the study may prune the trial."""
    trial_dir = ensure_writable_dir(Path(trial_dir), "trial folder")
    overrides = dict(config or {})
    if model_name == KUDA:
        overrides.update(params)                       # checked by the schema, like -c keys
    args, _ = build_args(model_name, dataset_name, config_file, overrides or None,
                         f"{config_source} + trial parameters", custom_feature=custom_feature)
    if model_name != KUDA:
        args.update(params)                            # MMSA's own tune keys, as its search sets them
    save = trial_dir / f"{model_name}-{dataset_name}.pth"
    args.update(model_save_path=save, device=patches.assign_gpu(list(gpu_ids or [])), train_mode="regression",
                custom_feature=custom_feature, feature_T=feature_T or "", feature_A=feature_A or "",
                feature_V=feature_V or "", log_dir=str(trial_dir), is_tune=True, cur_seed=1, seed=int(seed))
    handlers = _add_handlers(trial_dir, model_name, dataset_name, verbose_level)
    try:
        logger.info(f"Trial parameters: {params}")
        reporter = OptunaReporter(optuna, log=logger.warning) if optuna else None
        monitor = EpochMonitor(args["KeyEval"], reporter)
        setup_seed(int(seed))
        try:
            res = run_seed(args, num_workers, is_tune=True, log_args=True, on_epoch=monitor)
        except TrialPruned as e:
            logger.info(f"Trial {e}")
            own = Path(args["model_save_path"])          # the trial's run files (run_seed set it)
            for p in (own, weights_info_path(own), Path(str(own) + ".resume")):
                p.unlink(missing_ok=True)
            return {"pruned": True, "valid": monitor.best, "epochs": monitor.epochs, "results": None}
        logger.info("Trial results: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return {"pruned": False, "valid": monitor.best, "epochs": monitor.epochs, "results": res}
    finally:
        for h in handlers:
            logger.removeHandler(h)
            h.close()


@TUNERS.register("optuna")
def tune_optuna(model_name, dataset_name, config_file, config, config_source, seeds, tune_times, custom_feature,
                initial, eff, dirs, num_workers, rng=None, executor=None, gpu_ids=(), verbose_level=1) -> RunResult:
    """Optuna's TPE over the tune section's candidate lists (the schema-checked search space),
    pruning on the validation KeyEval per epoch; the study lives in
    ``<res>/tune/<dataset>-<model>-optuna.db`` and a killed study resumes; ``tune_times`` is
    the number of finished trials the study should have. Each finished trial's parameters and
    test metrics go to ``<res>/tune/<dataset>-<model>-optuna.csv``."""
    if model_name != KUDA or eff is None:
        raise KudaInputError(
            f"--tuner optuna searches KuDA's typed config (the tune section of configs/kuda.yaml or -c); "
            f"'{model_name}' is an MMSA model: tune it with -t (MMSA's random search).")
    d_paras = list(eff.tune.get("d_paras") or [])
    space = {k: list(eff.tune[k]) for k in d_paras}
    key = initial["KeyEval"]
    direction = "minimize" if lower_is_better(key) else "maximize"
    tune_dir = dirs["res_save_dir"] / "tune"
    db = tune_dir / f"{dataset_name}-{model_name}-optuna.db"
    csv_file = tune_dir / f"{dataset_name}-{model_name}-optuna.csv"
    study = OptunaTuner(db, f"{dataset_name}-{model_name}", direction, space, seed=seeds[0], log=logger.info)
    executor = executor if executor is not None else InlineExecutor(gpu_ids)
    logger.info(f"[tune] Optuna TPE, {direction} validation {key} over {', '.join(d_paras)}; study {db} has "
                f"{study.finished()} finished trial(s), target {tune_times}; trials on {executor.describe()}.")
    result = RunResult(model_name, dataset_name, [seeds[0]], [], dict(initial))

    def make_cell(number, params, spec):
        return _trial_cell(f"optuna-{number:04d}", model_name, dataset_name, params, seeds[0], config_file, config,
                           config_source, custom_feature, initial, dirs, num_workers, verbose_level, optuna=spec)

    def on_done(number, params, r, state):
        value = r.value if isinstance(r.value, dict) else {}
        shown = f"valid {key} {value['valid']:.4f}" if isinstance(value.get("valid"), float) else ""
        if state == "complete":
            res = value["results"]
            row = {"trial": number, **params, f"valid_{key}": value["valid"], **res}
            with file_lock(lock_path(csv_file)):
                rows = pd.read_csv(csv_file).to_dict("records") if csv_file.is_file() else []
                with atomic_path(csv_file) as tmp:
                    pd.DataFrame(rows + [row]).to_csv(tmp, index=None)
            result.per_seed.append(res)
            result.tune_rows.append(row)
            logger.info(f"[tune] trial {number} {params}: {describe_result(r)} ({shown})")
        elif state == "pruned":
            logger.info(f"[tune] trial {number} {params}: pruned after epoch {value.get('epochs')} ({shown})")
        else:
            logger.warning(f"[tune] trial {number} {params}: {describe_result(r)}")

    ran = study.run(tune_times, executor, make_cell, on_done)
    best = study.best()
    if best is not None:
        logger.info(f"[tune] best trial {best['number']}: validation {key} {best['value']:.4f} with {best['params']} "
                    f"(ran {ran} trial(s) now; study {db}, rows {csv_file})")
    result.csv = csv_file
    result.study = best
    return result
