"""``ablate``: KuDA's ablations next to stock MMSA models, on the same splits and seeds.

    kuda-mmsa ablate -d demo -s 1111 -s 1112 -s 1113
    kuda-mmsa ablate -d sims2 --feature-file unaligned.pkl --variants kuda kuda_static lf_dnn

<out> is --out, else ``~/MMSA/results/ablation/<dataset>/`` (``<dataset>-<feature file name>``
with --feature-file; under --res-save-dir if given). Every (variant, seed) is one MMSA_run with one seed and its own model/result/log folders
under ``<out>/runs/<variant>/seed<seed>/``, so the metrics are MMSA's own (MetricsTop on the
test split at the epoch selected on the validation set), kept at full precision. Writes
``<out>/ablation.csv`` (one row per variant x seed, added under a lock: several ablate
processes may share one --out; a file that could not take the rows is refused before any
cell runs) and ``<out>/ablation.md`` (mean ± std over seeds). Resumable:
a (variant, seed) already in ablation.csv is not run again when its settings fingerprint
(the effective config, the feature file's content, the text encoder, the package version)
is the one it was run with; otherwise it runs again and the reason is printed. For KuDA
variants on data annotated 'dominant:<modality>' (the demo data) ``DomFrac`` is the fraction
of test samples whose largest ratio is on the annotated dominant modality (n/a for a variant
whose ratios are uniform, e.g. static fusion, and for MMSA's models, which have none; see
``kuda-mmsa explain`` for what the figure means). Variants are a registry (kuda_mmsa.experiments.variants).

Parallel: ``--devices 0,1,2,3`` (or ``cpu:4``) runs one cell per device at a time, each in its
own process; ``--executor ray [--address ADDR]`` runs each cell as a Ray task. One progress
line per finished cell; every finished cell is written to ablation.csv at once, so a killed
sweep restarted with the same command runs only the missing cells.
"""

from __future__ import annotations

import argparse

from ..data.kinds import KINDS
from ..errors import KudaInputError
from ..mmsa.datasets import canonical_name
from ..experiments.ablation import DEFAULT_SEEDS, default_out, run_ablation
from ..experiments.robustness import resolve_grid
from ..experiments.variants import DEFAULT_VARIANTS, VARIANTS
from ..sweeps.executors import make_executor
from .common import add_flags, add_output_flags, command_parser, overrides, run_command
from .robustness import add_grid_flags


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "dataset", "feature_file", "seeds", "config", "data_root", "knowledge_dir", "pretrained",
              "num_workers", "verbose", "no_plots", "no_progress", "devices", "executor", "address",
              dataset="required")
    add_output_flags(p, "ablation", "<dataset>[-<feature file name>]")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                   metavar="VARIANT", help="Default: " + ", ".join(DEFAULT_VARIANTS))
    g = p.add_argument_group("robustness (test-time corruption of every cell)")
    g.add_argument("--robustness", nargs="*", default=None, choices=KINDS, metavar="KIND",
                   help=f"Evaluate every cell under corruption: any of {', '.join(KINDS)} (none given: all; "
                        f"with --protocol tfrnet or lnln give none)")
    add_grid_flags(g, prefix="ablate")
    g.add_argument("--reference", default=None, choices=list(VARIANTS), metavar="VARIANT",
                   help="Variant the effective robustness is measured against. Default: lf_dnn if run, else the first")
    return p


def run(a) -> int:
    grid = None
    if a.robustness is not None:
        grid = {**resolve_grid(a.protocol, a.robustness, a.modality, a.rate, kinds_flag="--robustness"),
                "snr_db": a.snr_db}
    elif a.protocol != "ours":
        raise KudaInputError(f"--protocol {a.protocol} chooses how --robustness corrupts the test data; found it "
                             f"without --robustness, so nothing would use it. Add --robustness.")
    executor = make_executor(a.devices, a.executor, a.address)
    try:
        out = a.out or default_out(canonical_name(a.dataset), a.feature_file, a.res_save_dir or None)
        res = run_ablation(canonical_name(a.dataset), a.seeds or DEFAULT_SEEDS, a.variants, out,
                           feature_file=a.feature_file, config_file=a.config or None, num_workers=a.num_workers,
                           verbose_level=a.verbose, config=overrides(a) or None, robustness=grid,
                           reference=a.reference, executor=executor)
    finally:
        if executor is not None:
            executor.close()
    print(res["table"])
    if grid:
        print(res["robustness"]["markdown"].read_text())
    print(f"CSV: {res['csv']}\nMarkdown: {res['markdown']}\nran now: {len(res['ran'])} run(s)")
    if res["failed"]:
        print(f"{len(res['failed'])} cell(s) failed (run the same command again to retry them): "
              + "; ".join(f"{n} seed {s}" for n, s, _ in res["failed"]))
        return 3
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
