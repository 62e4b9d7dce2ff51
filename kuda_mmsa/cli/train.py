"""``train`` (the default command): MMSA's command line, extended.

Every stock MMSA 2.2.1 flag with the same name and default, except: ``-n`` defaults to
min(8, CPU count) (results do not depend on it); ``-c ''`` and empty save dirs mean the
defaults (MMSA raised FileNotFoundError / wrote into the cwd). Added: model ``kuda``;
datasets ``simsv2`` (alias ``sims2``) and ``demo``; ``--data-root``, ``--feature-file``,
``--knowledge-dir``, ``--knowledge-from``, ``--pretrained``, ``--no-plots``,
``--no-progress``; tuning trials in parallel (``-t`` with ``--devices``, ``--executor``,
``--address``) and ``--tuner optuna``; under torchrun, ``--dist-backend`` and
``--per-rank-batch``. MMSA's default of five seeds stays; pass ``-s`` for fewer.

Data-parallel training: ``torchrun --nproc_per_node N -m kuda_mmsa -m kuda -d D ...``.
"""
from __future__ import annotations

import argparse

from ..errors import KudaInputError
from ..mmsa.datasets import canonical_name
from ..registry import TUNERS
from .common import Parser, add_flags, overrides, run_command

DESCRIPTION = ("Train and test a model (KuDA or a stock MMSA model) with MMSA's loader, metrics, "
               "result CSVs and logs.")


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = Parser(prog=prog, description=DESCRIPTION)
    add_flags(p, "model", "dataset", "config", dataset="sims")
    p.add_argument("-t", "--tune", action="store_true",
                   help="Whether to tune hyper parameters. Default: False")
    p.add_argument("-tt", "--tune-times", type=int, default=50,
                   help="Number of times to tune hyper parameters. Default: 50")
    add_flags(p, "seeds", "num_workers", "verbose", "model_save_dir", "res_save_dir", "log_dir", "gpu_ids")
    for flag, dest, what in (("-Ft", "--feature-T", "text"), ("-Fa", "--feature-A", "audio"),
                             ("-Fv", "--feature-V", "video")):
        p.add_argument(flag, dest, type=str, default="", help=f'Path to custom {what} feature file. Default: ""')
    g = p.add_argument_group("kuda_mmsa")
    for name in ("data_root", "feature_file", "knowledge_dir", "knowledge_from", "pretrained", "no_plots",
                 "no_progress"):
        add_flags(g, name)
    t = p.add_argument_group("tuning in parallel (-t)")
    t.add_argument("--tuner", type=str.lower, default="random", choices=TUNERS.names(),
                   help="; ".join(f"{n}: {TUNERS.help(n)}" for n in TUNERS) + ". Default: random")
    add_flags(t, "devices", "executor", "address")
    d = p.add_argument_group("data-parallel (torchrun --nproc_per_node N -m kuda_mmsa ...)")
    d.add_argument("--dist-backend", type=str.lower, default="auto", choices=["auto", "nccl", "gloo"],
                   help="auto: NCCL when every process has its own GPU, else gloo. Default: auto")
    add_flags(d, "per_rank_batch")
    return p


def run(a: argparse.Namespace) -> int:
    # imported here, not at the top: `-h` and argument errors answer without loading torch and MMSA
    from ..mmsa.register import register
    from ..mmsa.run import MMSA_run
    from ..sweeps.executors import make_executor

    register()
    config = overrides(a)
    if a.verbose == 0:
        config.setdefault("progress", False)
    if (a.devices or a.executor or a.tuner != "random") and not a.tune:
        raise KudaInputError("--devices, --executor and --tuner run tuning trials in parallel: add -t (and -tt N). "
                             "For parallel ablation cells: kuda-mmsa ablate ... --devices ...")
    executor = make_executor(a.devices, a.executor, a.address) if a.tune else None
    try:
        result = MMSA_run(
            model_name=a.model, dataset_name=canonical_name(a.dataset), config_file=a.config or None,
            config=config or None, config_source="command line", seeds=a.seeds, is_tune=a.tune,
            tune_times=a.tune_times, custom_feature=a.feature_file or None, feature_T=a.feature_T,
            feature_A=a.feature_A, feature_V=a.feature_V, model_save_dir=a.model_save_dir or None,
            res_save_dir=a.res_save_dir or None, log_dir=a.log_dir or None, gpu_ids=a.gpu_ids,
            num_workers=a.num_workers, verbose_level=a.verbose, executor=executor, tuner=a.tuner,
            dist_backend=a.dist_backend)
    finally:
        if executor is not None:
            executor.close()
    if a.verbose == 0 and not a.tune:   # the log's table is hidden at -v 0: print the results
        print(result.table())
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
