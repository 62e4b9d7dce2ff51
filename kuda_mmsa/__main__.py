"""``python -m kuda_mmsa``: the command line (same as ``kuda-mmsa``)."""
import sys

from kuda_mmsa.cli.main import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m kuda_mmsa"))
