"""``python -m kuda_mmsa``: the extended MMSA command line (same as ``python -m MMSA``
with the start-up hook installed)."""
import sys

from kuda_mmsa.mmsa.cli import main

if __name__ == "__main__":
    sys.exit(main())
