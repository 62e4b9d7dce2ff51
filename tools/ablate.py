#!/usr/bin/env python
"""Ablations from a checkout: the same as `kuda-mmsa ablate` (kuda_mmsa/cli/ablate.py).

    python tools/ablate.py -d demo -s 1111 -s 1112 -s 1113 --out ablation
"""
import sys

from kuda_mmsa.cli.ablate import main

if __name__ == "__main__":
    sys.exit(main(prog="tools/ablate.py"))
