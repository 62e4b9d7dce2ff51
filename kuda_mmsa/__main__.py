"""``python -m kuda_mmsa``: the extended MMSA command line (same as ``python -m MMSA``
with the start-up hook installed)."""
import sys

from kuda_mmsa.mmsa.cli import main

if __name__ == "__main__":
    if sys.argv[1:2] == ["explain"]:
        from kuda_mmsa.explain import main as explain_main

        sys.exit(explain_main(sys.argv[2:]))
    sys.exit(main())
