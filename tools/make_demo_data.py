#!/usr/bin/env python
"""Write the demo dataset (MMSA-format pickle) and its tiny BERT.

    python tools/make_demo_data.py                      # the default, into the cache
    python tools/make_demo_data.py --out demo.pkl --n-train 60 --seed 1
    python tools/make_demo_data.py --family noisy --out noisy.pkl   # a generated family

Without --out the files go to the cache (``--cache-dir``, else $KUDA_MMSA_CACHE, else
~/.cache/kuda_mmsa), exactly where ``-d demo`` looks; with --out, a pickle of that
name is written (use it with ``--feature-file``). The generator lives in
kuda_mmsa/data/demo.py; this script only parses arguments.
"""
import argparse
import json
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kuda_mmsa.data import (DEMO_DEFAULTS, FAMILIES, demo_facts, ensure_demo_data,  # noqa: E402
                            ensure_demo_text_encoder, ensure_family_data, facts_of, make_demo_splits,
                            make_family)
from kuda_mmsa.data.cache import atomic_write_bytes  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for key, default in DEMO_DEFAULTS.items():
        p.add_argument("--" + key.replace("_", "-"), type=int, default=default,
                       help=f"default {default}")
    p.add_argument("--out", type=Path, default=None, help="write the pickle here instead of the cache")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-bert", action="store_true", help="do not build the tiny BERT")
    p.add_argument("--family", choices=sorted(FAMILIES), default=None,
                   help="one of the generated families (kuda_mmsa/data/families.py) with its own defaults; "
                        "the size options above do not apply to it")
    a = p.parse_args(argv)
    params = {k: getattr(a, k) for k in DEMO_DEFAULTS}
    if a.family:
        path = a.out or ensure_family_data(a.family, a.cache_dir)
        if a.out:
            data = make_family(a.family)
            atomic_write_bytes(a.out, pickle.dumps(data, protocol=4))
            facts = facts_of(data)
        else:
            facts = demo_facts(path)
    elif a.out is None:
        path = ensure_demo_data(a.cache_dir, **params)
        facts = demo_facts(path)
    else:
        data = make_demo_splits(**params)
        atomic_write_bytes(a.out, pickle.dumps(data, protocol=4))
        path, facts = a.out, facts_of(data)
    print(f"demo data: {path}")
    print(json.dumps(facts))
    if not a.no_bert:
        print(f"tiny BERT: {ensure_demo_text_encoder(a.cache_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
