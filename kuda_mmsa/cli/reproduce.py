"""``reproduce``: the paper's table in one command: stage 1, stage 2, the ablations and the MMSA
peers on every dataset, with MMSA's seeds and the paper's settings (configs/kuda.yaml).

    kuda-mmsa reproduce --data-root R --pretrained-zh P_ZH --pretrained-en P_EN [-d sims sims2 mosi mosei]
                        [-s 1111 -s 1112 ...] [--variants ...] [--dry-run] [--out DIR]
    python tools/reproduce.py ...   (the same)

Per dataset every (variant, seed) cell is one MMSA_run (the ablation runner, kuda_mmsa.experiments.ablation:
MMSA's metrics on the test split at the epoch chosen on the validation split), under
``<out>/<dataset>/``; <out> is --out, else ``~/MMSA/results/reproduction/`` (under
--res-save-dir if given). Text encoders: --pretrained-zh for the Chinese sets (sims, simsv2),
--pretrained-en for MOSI/MOSEI, for KuDA and for the MMSA peers that use BERT. Knowledge: the
SIMS sets pre-train on their own unimodal labels; MOSI and MOSEI have none and take the
knowledge of --knowledge-from (default simsv2, the authors' pre-training set), the paper's
protocol (kuda_mmsa.training.transfer); their text knowledge is the source's when both use
the same text encoder, else their own (--knowledge-text). Stage 1 runs inside the first cell
that needs it. Resumable: a finished cell (in <out>/<dataset>/ablation.csv) and finished
stage-1 knowledge are not run again.

Writes ``<out>/reproduction.md``: per dataset and variant, our mean ± std over seeds of each
MMSA metric, beside a published number where one can be cited (MMSA's published results for
the peers), with its source and the difference; a cell without a source stays empty. And
``<out>/reproduction.csv``: every cell's row.

--dry-run prints the plan: datasets, encoders, feature files, knowledge, the stage-1 folders
and whether they exist, the cells still to run, and an estimated time per KuDA run from a short
timing probe (one training step of the model on synthetic inputs of the dataset's shapes,
times the steps of a run; data loading and early stopping not counted). --feature-file-for
DATASET=PATH uses any MMSA-format pickle as that dataset (repeatable).
"""

from __future__ import annotations

import argparse
import sys

from ..config.schema import KNOWLEDGE_TEXT
from ..mmsa.datasets import dataset_choices
from ..experiments.reproduction import (DEFAULT_DATASETS, DEFAULT_KNOWLEDGE_FROM, DEFAULT_SEEDS, DEFAULT_VARIANTS,
                                        parse_feature_files, reproduce)
from ..experiments.variants import VARIANTS
from ..sweeps.executors import make_executor
from .common import add_flags, add_output_flags, command_parser, console_logging, guarded, output_folder


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    p.add_argument("-d", "--datasets", nargs="+", type=str.lower, default=list(DEFAULT_DATASETS),
                   choices=dataset_choices(), metavar="DATASET",
                   help=f"Datasets (sims2 = simsv2). Default: {' '.join(DEFAULT_DATASETS)}")
    add_flags(p, "seeds", "config", "data_root", "knowledge_dir", "num_workers", "verbose", "no_plots",
              "no_progress", "devices", "executor", "address")
    add_output_flags(p, "reproduction", "")
    p.add_argument("--pretrained-zh", default=None,
                   help="Chinese text encoder (sims, simsv2): a local folder. Default: bert-base-chinese from the "
                        "local Hugging Face cache")
    p.add_argument("--pretrained-en", default=None,
                   help="English text encoder (mosi, mosei): a local folder. Default: bert-base-uncased from the "
                        "local Hugging Face cache")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help="Default: " + " ".join(DEFAULT_VARIANTS))
    p.add_argument("--knowledge-from", default=DEFAULT_KNOWLEDGE_FROM, type=str.lower,
                   choices=dataset_choices() + ["none"],
                   help="Knowledge source of the datasets without unimodal labels (mosi, mosei); none = their own "
                        f"(multimodal label as target). Default: {DEFAULT_KNOWLEDGE_FROM}")
    p.add_argument("--knowledge-text", default="auto", type=str.lower, choices=["auto"] + list(KNOWLEDGE_TEXT),
                   help="Their text knowledge: auto = the source's when both datasets use the same text encoder, "
                        "else their own; or source, own, scratch. Default: auto")
    p.add_argument("--feature-file-for", action="append", default=[], metavar="DATASET=PATH",
                   help="Use this MMSA-format pickle as DATASET's features (repeatable).")
    p.add_argument("--dry-run", action="store_true",
                   help="Print the plan, the number of runs and an estimated time per run; run nothing.")
    return p


def run(a) -> int:
    console_logging(a.verbose if not a.dry_run else 0)
    base = {}
    if a.data_root:
        base["data_root"] = a.data_root
    if a.knowledge_dir:
        base["knowledge_dir"] = a.knowledge_dir
    if a.no_plots:
        base["plots"] = False
    if a.no_progress:
        base["progress"] = False
    executor = None if a.dry_run else make_executor(a.devices, a.executor, a.address)
    try:
        res = reproduce(a.datasets, a.seeds or DEFAULT_SEEDS, a.variants,
                        output_folder(a.out, "reproduction", "", a.res_save_dir or None), a.pretrained_zh, a.pretrained_en,
                        a.knowledge_from, a.knowledge_text, parse_feature_files(a.feature_file_for),
                        a.config or None, base, a.dry_run, a.num_workers, a.verbose, executor,
                        command=getattr(a, "command", ""))
    finally:
        if executor is not None:
            executor.close()
    if a.dry_run:
        return 0
    print(f"Markdown: {res['markdown']}\nCSV: {res['csv']}\nran now: {len(res['ran'])} cell(s)")
    if res["failed"]:
        print(f"{len(res['failed'])} cell(s) failed (run the same command again to retry them): "
              + "; ".join(f"{d} {n} seed {s}" for d, n, s, _ in res["failed"]))
        return 3
    return 0


def main(argv=None, prog=None) -> int:
    parser = build_parser(prog)
    a = parser.parse_args(argv)
    a.command = " ".join([parser.prog] + list(argv if argv is not None else sys.argv[1:]))
    return guarded(parser.prog, lambda: run(a))
