#!/usr/bin/env python
"""Ablations of KuDA and stock MMSA baselines on the same splits and seeds.

    python tools/ablate.py -d demo
    python tools/ablate.py -d demo -s 1111 -s 1112 --variants kuda kuda_static lf_dnn --out /tmp/abl
    python tools/ablate.py -d sims2 --feature-file /data/unaligned.pkl --pretrained /models/bert-base-chinese

Writes <out>/ablation.csv (one row per variant x seed, MMSA's metrics) and <out>/ablation.md
(mean ± std over seeds) and prints the table. A (variant, seed) already in the CSV is not
run again. The logic lives in kuda_mmsa/ablation.py; this file only parses arguments.
"""
import argparse
import sys

from kuda_mmsa.ablation import DEFAULT_SEEDS, DEFAULT_VARIANTS, VARIANTS, run_ablation
from kuda_mmsa.errors import KudaInputError


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", required=True, help="sims, sims2/simsv2, mosi, mosei or demo")
    p.add_argument("--feature-file", default=None, help="any MMSA-format feature pickle")
    p.add_argument("-s", "--seeds", action="append", type=int, default=[],
                   help=f"seed (repeat for several; default {' '.join(map(str, DEFAULT_SEEDS))})")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=list(VARIANTS),
                   metavar="VARIANT", help="default: all of " + ", ".join(DEFAULT_VARIANTS))
    p.add_argument("--out", default="ablation", help="output folder (default ./ablation)")
    p.add_argument("-c", "--config", default=None,
                   help="YAML/JSON overriding configs/kuda.yaml for the KuDA variants")
    p.add_argument("--data-root", default=None, help="folder of MMSA's datasets")
    p.add_argument("--knowledge-dir", default=None, help="stage-1 checkpoints folder")
    p.add_argument("--pretrained", default=None, help="text encoder (HF name or local BERT folder)")
    p.add_argument("-n", "--num-workers", type=int, default=0)
    p.add_argument("-v", "--verbose", type=int, default=1, choices=[0, 1, 2])
    p.add_argument("--no-plots", action="store_true", help="no training-curve PNGs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    try:
        from kuda_mmsa.mmsa.config import configure
        from kuda_mmsa.mmsa.datasets import canonical_name

        configure(data_root=a.data_root, knowledge_dir=a.knowledge_dir, pretrained=a.pretrained,
                  plots=False if a.no_plots else None)
        res = run_ablation(canonical_name(a.dataset), a.seeds or DEFAULT_SEEDS, a.variants, a.out,
                           feature_file=a.feature_file, config_file=a.config,
                           num_workers=a.num_workers, verbose_level=a.verbose)
    except KudaInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(res["table"])
    print(f"CSV: {res['csv']}\nMarkdown: {res['markdown']}\nran now: {len(res['ran'])} run(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
