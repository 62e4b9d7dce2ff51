"""One seed of ``MMSA_run``: MMSA's setup_seed, its log handlers, and the train-and-test of
one seed (MMSA's _run) with the checks ``kuda_mmsa.mmsa.run`` promises: the data is validated
before the model is built, each run writes under its own name and holds its lock
(kuda_mmsa.mmsa.run_files), no stale weights are tested, the best weights are loaded with
``weights_only=True``, a diverging stock model is a clear error. Used by ``MMSA_run`` and by
the tuning trials (kuda_mmsa.experiments.tuning)."""
from __future__ import annotations

import contextlib
import functools
import gc
import logging
import random
import sys
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

from ..errors import KudaTrainingError
from ..files import remove_stale_temps
from ..training import distributed
from ..training.checkpoints import weights_info_path
from . import patches
from .args import KUDA, plain_args
from .run_files import RunFiles

logger = logging.getLogger("MMSA")


def setup_seed(seed: int) -> None:
    """MMSA's setup_seed (deterministic cuDNN included)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _add_handlers(log_dir: Optional[Path], model_name: str, dataset_name: str, verbose_level: int,
                  rank: int = 0) -> list:
    """MMSA's log file and console; a data-parallel rank > 0 writes no log and shows errors
    only (prefixed with its rank)."""
    handlers = []
    if log_dir is not None and rank == 0:
        fh = logging.FileHandler(log_dir / f"{model_name}-{dataset_name}.log")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s - %(name)s [%(levelname)s] - %(message)s"))
        handlers.append(fh)
    ch = logging.StreamHandler(sys.stderr)
    if rank == 0:
        ch.setLevel({0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}.get(int(verbose_level), logging.INFO))
        ch.setFormatter(logging.Formatter("%(name)s - %(message)s"))
    else:
        ch.setLevel(logging.ERROR)
        ch.setFormatter(logging.Formatter(f"%(name)s [rank {rank}] - %(message)s"))
    handlers.append(ch)
    logger.setLevel(logging.DEBUG)
    for h in handlers:
        logger.addHandler(h)
    return handlers


def run_seed(args, num_workers: int = 0, is_tune: bool = False, log_args: bool = False,
             on_epoch=None, reuse: bool = False, outcome: Optional[dict] = None) -> Dict[str, float]:
    """Train and test one seed (MMSA's _run), with checks: the data is validated before the
    model is built, no stale weights are tested, a diverging stock model is a clear error.
    The run writes under its own name (kuda_mmsa.mmsa.run_files: dataset, model, seed and a
    settings id) and holds its lock while alive; once tested, MMSA's ``<model>-<dataset>.pth``
    becomes its weights. ``reuse``: a run an earlier process already finished (its result
    record matches) is not trained again; its recorded results are returned. ``outcome``
    (a dict) receives ``run`` (the RunFiles) and ``reused``.
    ``on_epoch(epoch, validation results)`` runs after every KuDA epoch (it may raise to stop).
    In a data-parallel run rank 0 reads the best weights and sends them to the others."""
    ctx = distributed.current()
    args.setdefault("settings_keys", sorted(args))     # before any trainer adds keys of its own
    dataloader = patches.MMDataLoader(args, num_workers)
    if log_args:  # after the data is read: the shapes and file the run really uses
        logger.info(f"Running with args: {plain_args(args)}")
    published = Path(args.get("published_save_path") or args["model_save_path"])
    run = RunFiles.for_args(published, args)
    args.update(published_save_path=published, model_save_path=run.weights, run_name=run.name)
    if outcome is not None:
        outcome.update(run=run, reused=False)
    what = f"model {args['model_name']}, dataset {args['dataset_name']}, seed {args.get('seed')}"
    with (run.locked(what) if ctx.is_main else contextlib.nullcontext()):
        finished = run.finished_result(args) if (reuse and ctx.is_main) else None
        finished = ctx.broadcast(finished) if ctx.distributed else finished
        if finished is not None:
            logger.info(f"Seed {args.get('seed')} was finished by an earlier run of this command (result record "
                        f"{run.result}, weights {run.weights}): not trained again.")
            if outcome is not None:
                outcome["reused"] = True
            return finished
        res = _train_and_test(args, dataloader, run, is_tune, on_epoch)
        if ctx.is_main and not is_tune:
            run.publish()
            if reuse:
                run.write_result(res, args)
    return res


def _train_and_test(args, dataloader, run, is_tune: bool, on_epoch) -> Dict[str, float]:
    ctx = distributed.current()
    model = patches.AMIO(args).to(args["device"])
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(f"The model has {n_params} trainable parameters")
    logger.info(f"Run {run.name}: weights {run.weights}")
    trainer = patches.ATIO().getTrain(args)
    if on_epoch is not None:
        if hasattr(trainer, "epoch_callbacks"):
            trainer.epoch_callbacks.append(on_epoch)
        else:
            logger.info(f"{args['model_name']}'s MMSA trainer reports no per-epoch validation: no pruning.")
    save = Path(args["model_save_path"])
    if ctx.is_main:
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

    def load_best(net):
        if not save.is_file():
            raise KudaTrainingError(f"{args['model_name']} saved no weights at {save}: nothing can be tested.")
        net.load_state_dict(torch.load(save, map_location=args["device"], weights_only=True))

    if ctx.distributed:
        ctx.on_main(functools.partial(load_best, model))
        ctx.sync_module(model)
    else:
        load_best(model)
    model.to(args["device"])
    results = trainer.do_test(model, dataloader["test"], mode="TEST")
    if is_tune and ctx.is_main:
        save.unlink(missing_ok=True)        # MMSA deletes tune-mode weights
        weights_info_path(save).unlink(missing_ok=True)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gc.collect()
    return {k: float(v) for k, v in results.items() if isinstance(v, (int, float, np.floating))}
