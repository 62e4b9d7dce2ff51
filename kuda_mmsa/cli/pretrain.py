"""``pretrain``: stage 1 of KuDA. Pre-train each modality's encoder + adapters + decoder on its
unimodal labels and write one knowledge checkpoint per modality.

    kuda-mmsa pretrain -d sims2
    kuda-mmsa pretrain -d demo --modalities T --epochs 3
    kuda-mmsa pretrain -d sims2 --data-root /data/MMSA --pretrained /models/bert-base-chinese

Checkpoints go to <knowledge-dir>/<dataset>/<text encoder>/<settings id>/{text,vision,audio}.pth
(settings.json there lists the stage-1 settings the id stands for), where <knowledge-dir> is
--knowledge-dir, else $KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge; stage 2
(`kuda-mmsa -m kuda -d DATASET`) with the same settings finds them there. A modality whose
checkpoint is already there for the same data is skipped (--overwrite retrains it); an
interrupted run resumes from the last finished epoch. -s sets pretrain.seed (default 1111). Hyper-parameters: the `pretrain`
keys of the config (`kuda-mmsa config keys`).
"""
from __future__ import annotations

import argparse

from ..config.schema import SCHEMA
from ..errors import KudaInputError
from ..mmsa.datasets import canonical_name
from .common import add_flags, command_parser, console_logging, overrides, run_command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "dataset", "config", "feature_file", "data_root", "knowledge_dir", "pretrained",
              "seeds", "gpu_ids", "num_workers", "verbose", "no_progress", dataset="sims2")
    p.add_argument("--modalities", nargs="+", default=["T", "V", "A"], type=str.upper,
                   choices=["T", "V", "A"], help="Any of T V A. Default: all")
    p.add_argument("--epochs", default=None,
                   help="Epochs for every modality (e.g. 20) or per modality (e.g. T=100,V=100,A=50). "
                        "Default: the config's pretrain.epochs")
    p.add_argument("--overwrite", action="store_true",
                   help="Retrain modalities whose checkpoint exists (also when made with other data or settings).")
    return p


def parse_epochs(text):
    """'20' -> 20; 'T=100,V=100,A=50' -> {T: 100, V: 100, A: 50}."""
    if text is None:
        return None
    try:
        if "=" not in text:
            return int(text)
        return {k.strip().upper(): int(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise KudaInputError(
            f"--epochs takes a number (20) or per-modality numbers (T=100,V=100,A=50); found {text!r}.") from None


def run(a: argparse.Namespace) -> int:
    # imported here, not at the top: `-h` and argument errors answer without loading torch
    from ..mmsa.args import build_args
    from ..mmsa.loader import load_features
    from ..mmsa.patches import assign_gpu
    from ..training.run_config import RunConfig
    from ..training.stage1 import job_for_run, pretrain_command, pretrain_unimodal

    console_logging(a.verbose)
    if len(a.seeds) > 1:
        raise KudaInputError(f"Stage 1 writes one knowledge checkpoint per modality, so it takes one seed "
                             f"(-s); found {a.seeds}.")
    args, _ = build_args("kuda", canonical_name(a.dataset), a.config or None, overrides(a) or None,
                         "command line", custom_feature=a.feature_file)
    args.knowledge_from = None          # stage 1 writes the knowledge of its own dataset
    args.custom_feature = a.feature_file
    args.pretrained_arg = a.pretrained
    epochs = parse_epochs(a.epochs)
    if epochs is not None:
        args.pretrain["epochs"] = dict(args.pretrain["epochs"], **SCHEMA["pretrain.epochs"].check(epochs, "--epochs"))
    device = assign_gpu(a.gpu_ids)
    features = load_features(args)      # stage 1 checks the unimodal labels (the rule train's stage 1 follows)
    if a.seeds:
        args.pretrain["seed"] = SCHEMA["pretrain.seed"].check(a.seeds[0], "-s/--seeds")
    run = RunConfig.from_args(args)
    job = job_for_run(run, device=device, num_workers=a.num_workers, command=pretrain_command(run))
    paths = pretrain_unimodal(job, features.splits, a.modalities, overwrite=a.overwrite)
    for m, path in paths.items():
        print(f"{m}: {path}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
