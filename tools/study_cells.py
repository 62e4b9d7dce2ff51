#!/usr/bin/env python
"""Summarise an ``ablate --robustness`` folder as the README's evidence table.

    python tools/study_cells.py OUT [OUT ...] --against kuda_reference kuda_static

Per variant: clean test MAE and Corr (mean ± population std over seeds, from ablation.csv),
DomFrac, the MAE under each corruption and rate (mean over the modalities and seeds), and,
over every (corruption, modality, rate > 0) cell of robustness.csv, how many cells it is
better / worse than each --against variant on *both* MAE and Corr by more than the seed
spread (the difference of the means exceeds the sum of the two stds). Reads only the CSVs
``ablate`` wrote; prints Markdown.
"""
import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np


def _read(path: Path):
    if not path.is_file():
        sys.exit(f"{path} does not exist: give a folder `kuda-mmsa ablate --robustness` wrote (--out).")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _stats(values):
    v = [float(x) for x in values if x not in ("", None)]
    return (float(np.mean(v)), float(np.std(v)), len(v)) if v else None


def cells_of(rows):
    """{variant: {(corruption, modality, rate): {'MAE': [...], 'Corr': [...]}}} for rate > 0."""
    out = defaultdict(lambda: defaultdict(lambda: {"MAE": [], "Corr": []}))
    for r in rows:
        if float(r["rate"]) > 0:
            key = (r["corruption"], r["modality"], float(r["rate"]))
            out[r["variant"]][key]["MAE"].append(float(r["MAE"]))
            out[r["variant"]][key]["Corr"].append(float(r["Corr"]))
    return out


def compare(a, b):
    """(better, worse, cells): cells where a beats / loses to b on both metrics beyond the spread."""
    better = worse = n = 0
    for key in a.keys() & b.keys():
        (ma, sa), (mb, sb) = ((np.mean(x["MAE"]), np.std(x["MAE"])) for x in (a[key], b[key]))
        (ca, ta), (cb, tb) = ((np.mean(x["Corr"]), np.std(x["Corr"])) for x in (a[key], b[key]))
        n += 1
        better += (mb - ma > sa + sb) and (ca - cb > ta + tb)
        worse += (ma - mb > sa + sb) and (cb - ca > ta + tb)
    return better, worse, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("outs", nargs="+", type=Path)
    p.add_argument("--against", nargs="+", default=["kuda_reference", "kuda_static"])
    a = p.parse_args(argv)
    for out in a.outs:
        rows = _read(out / "ablation.csv")
        variants = list(dict.fromkeys(r["variant"] for r in rows))
        rob = cells_of(_read(out / "robustness.csv")) if (out / "robustness.csv").is_file() else {}
        groups = sorted({(k[0], k[2]) for cells in rob.values() for k in cells})
        head = ["variant", "seeds", "clean MAE", "clean Corr", "DomFrac"]
        head += [f"MAE {kind} @ {rate:g}" for kind, rate in groups]
        head += [f"vs {v}: better / worse / cells" for v in a.against]
        print(f"\n{out.name}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for v in variants:
            rs = [r for r in rows if r["variant"] == v]
            line = [v, str(len(rs))]
            for col in ("MAE", "Corr", "DomFrac"):
                s = _stats(r.get(col) for r in rs)
                line.append(f"{s[0]:.3f} ± {s[1]:.3f}" if s else "n/a")
            cells = rob.get(v, {})
            for kind, rate in groups:     # mean over the corrupted modalities and the seeds
                mae = [np.mean(c["MAE"]) for k, c in cells.items() if (k[0], k[2]) == (kind, rate)]
                line.append(f"{np.mean(mae):.3f}" if mae else "–")
            for ref in a.against:
                if v == ref or not cells or ref not in rob:
                    line.append("–")
                else:
                    b, w, n = compare(cells, rob[ref])
                    line.append(f"{b} / {w} / {n}")
            print("| " + " | ".join(line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
