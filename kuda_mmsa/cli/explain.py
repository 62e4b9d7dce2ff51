"""``explain``: what a trained KuDA model did, sample by sample.

    kuda-mmsa explain --weights W [-d DATASET] [--feature-file F] [--split test] [--out DIR]

The model is rebuilt from the configuration saved next to the weights (``W.json``, written by
training; ``-c`` and the flags override it) and the split is run through it. Writes

- ``explain-<split>.csv``: id, T, V, A (unimodal scores), R_T, R_V, R_A (ratios), prediction,
  label, abs_error and annotation (data with ``annotations``, e.g. the demo's dominant modality);
- ``ratio_distribution.png``: histogram of each modality's ratio;
- ``ratio_by_dominant.png`` (data annotated 'dominant:<modality>') or ``ratio_by_error.png``;
- ``samples.png``: panels for chosen samples (--samples ID ... or, by default, one correct and
  one wrong per annotated group / the best and worst samples);
- ``summary.json``: MMSA's metrics on the split and, with annotations, the fraction of samples
  whose largest ratio is on the annotated dominant modality.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Dict, List, Optional

from .. import plots
from ..data import make_loaders
from ..errors import KudaInputError
from ..mmsa.trained import load_trained
from ..training.evaluation import MODALITY_INDEX, dominant_fraction, dominant_of, on_dominant, predict
from ..training.metrics import metrics_for
from .common import add_flags, command_parser, console_logging, overrides, run_command

CSV_COLUMNS = ["id", "T", "V", "A", "R_T", "R_V", "R_A", "prediction", "label", "abs_error", "annotation"]
ERROR_BINS = (0.0, 0.1, 0.2, 0.4, float("inf"))


def collect(weights, split: str = "test", dataset: Optional[str] = None, config_file=None, feature_file=None,
            config: Optional[dict] = None):
    """(rows, metrics): one dict per sample of ``split`` (CSV_COLUMNS) and MMSA's metrics."""
    args, features, model = load_trained(weights, dataset, config_file, feature_file, config)
    if split not in features.splits:
        raise KudaInputError(f"Split '{split}' is not in the data; splits: {sorted(features.splits)}.")
    ds = features[split]
    loader = make_loaders({split: ds}, int(args.batch_size), 0)[split]
    p = predict(model, loader, args.device)
    metrics = metrics_for(args.metrics_name)(p.pred, p.labels)
    ann = {}
    if getattr(ds, "annotations", None) is not None:
        ann = {str(i): str(a) for i, a in zip(ds.ids, ds.annotations)}
    rows = p.rows()
    for r in rows:
        r["annotation"] = ann.get(r["id"], "")
    return rows, metrics


def error_bin(err: float) -> str:
    for lo, hi in zip(ERROR_BINS[:-1], ERROR_BINS[1:]):
        if lo <= err < hi:
            return f"[{lo:g}, {hi:g})" if hi != float("inf") else f"≥ {lo:g}"
    return f"≥ {ERROR_BINS[-2]:g}"


def choose_samples(rows, ids: Optional[List[str]] = None, per_group: int = 1) -> List[Dict]:
    if ids:
        by_id = {r["id"]: r for r in rows}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise KudaInputError(f"--samples: ids not in the split: {missing[:5]}")
        return [by_id[i] for i in ids]
    annotated = [r for r in rows if dominant_of(r.get("annotation")) is not None and abs(r["label"]) >= 0.6]
    if annotated:
        chosen = []
        for d in MODALITY_INDEX.values():
            group = [r for r in annotated if dominant_of(r["annotation"]) == d]
            hit = [r for r in group if on_dominant(r, d)]
            chosen += sorted(hit, key=lambda r: r["abs_error"])[:per_group]
        miss = [r for r in annotated if not on_dominant(r, dominant_of(r["annotation"]))]
        return chosen + sorted(miss, key=lambda r: -r["abs_error"])[:max(6 - len(chosen), 0)]
    ranked = sorted(rows, key=lambda r: r["abs_error"])
    return ranked[:3] + ranked[-3:]


def write_csv(rows, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6f}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS})
    return path


def write_plots(rows, out: Path, sample_ids=None) -> List[Path]:
    ratios = [[r["R_T"], r["R_V"], r["R_A"]] for r in rows]
    written = [plots.ratio_distribution(ratios, out / "ratio_distribution.png")]
    if rows and all(dominant_of(r.get("annotation")) is not None for r in rows):
        frac = dominant_fraction(rows)
        written.append(plots.ratio_by_group(
            ratios, [r["annotation"].split(":", 1)[1] for r in rows], out / "ratio_by_dominant.png",
            group_order=list(MODALITY_INDEX), xlabel="annotated dominant modality",
            title=f"Ratios by the true dominant modality (largest ratio on it: {frac:.0%})"))
    else:
        order = [error_bin(lo) for lo in ERROR_BINS[:-1]]
        written.append(plots.ratio_by_group(
            ratios, [error_bin(r["abs_error"]) for r in rows], out / "ratio_by_error.png",
            group_order=order, xlabel="|prediction − label|", title="Ratios by absolute error of the prediction"))
    written.append(plots.sample_panels(choose_samples(rows, sample_ids), out / "samples.png"))
    return [p for p in written if p is not None]


def explain(weights, feature_file=None, split="test", out="explain", config_file=None, dataset=None,
            sample_ids=None, plots=True, config: Optional[dict] = None) -> dict:
    """Library entry point; returns the summary (also written to summary.json)."""
    out = Path(out)
    rows, metrics = collect(weights, split, dataset, config_file, feature_file, config)
    csv_path = write_csv(rows, out / f"explain-{split}.csv")
    pngs = write_plots(rows, out, sample_ids) if plots else []
    summary = {"weights": str(weights), "split": split, "samples": len(rows), "metrics": metrics,
               "dominant_fraction": dominant_fraction(rows), "csv": str(csv_path), "plots": [str(p) for p in pngs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "weights", "dataset", "feature_file", "config", "data_root", "pretrained", "no_plots",
              "verbose", "out", dataset=None, out="explain")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--samples", nargs="*", default=None, help="ids for the per-sample panels")
    return p


def run(a) -> int:
    console_logging(a.verbose)
    s = explain(a.weights, a.feature_file, a.split, a.out, a.config or None, a.dataset, a.samples,
                plots=not a.no_plots, config=overrides(a) or None)
    m = s["metrics"]
    print(f"{s['samples']} {a.split} samples: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if s["dominant_fraction"] is not None:
        print(f"largest ratio on the annotated dominant modality: {s['dominant_fraction']:.1%}")
    print(f"wrote {s['csv']}" + "".join(f"\nwrote {p}" for p in s["plots"]))
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
