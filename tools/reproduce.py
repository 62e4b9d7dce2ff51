#!/usr/bin/env python
"""The paper's table from a checkout: the same as `kuda-mmsa reproduce` / `python -m kuda_mmsa
reproduce` (kuda_mmsa/cli/reproduce.py).

    python tools/reproduce.py --data-root R --pretrained-zh P_ZH --pretrained-en P_EN [-d sims sims2 mosi mosei]
                              [--seeds ...] [--dry-run]
"""
import sys

from kuda_mmsa.cli.reproduce import main

if __name__ == "__main__":
    sys.exit(main(prog="tools/reproduce.py"))
