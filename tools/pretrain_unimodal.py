#!/usr/bin/env python
"""Stage 1 of KuDA from a checkout: the same as `kuda-mmsa pretrain` / `python -m kuda_mmsa
pretrain` (kuda_mmsa/cli/pretrain.py), kept so that the paper-style command works.

    python tools/pretrain_unimodal.py -d sims2 --pretrained /models/bert-base-chinese
"""
import sys

from kuda_mmsa.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main(prog="tools/pretrain_unimodal.py"))
