"""What the ratios say about a trained model: per-sample ratios, predictions and errors, the
samples to look at and their plots (``kuda-mmsa explain``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, List, Optional

from .. import plots
from ..files import output_folder
from ..errors import KudaInputError


CSV_COLUMNS = ["id", "T", "V", "A", "R_T", "R_V", "R_A", "prediction", "label", "abs_error", "annotation"]


ERROR_BINS = (0.0, 0.1, 0.2, 0.4, float("inf"))


def collect(weights, split: str = "test", dataset: Optional[str] = None, config_file=None, feature_file=None,
            config: Optional[dict] = None, gpu_ids=None, info: Optional[dict] = None):
    """(rows, metrics): one dict per sample of ``split`` (CSV_COLUMNS) and MMSA's metrics, on
    training's device and in its precision. ``info`` (a dict) receives them."""
    from ..mmsa.trained import evaluation_precision, load_trained, predict_split
    from ..training.metrics import metrics_for

    args, features, model = load_trained(weights, dataset, config_file, feature_file, config, gpu_ids=gpu_ids)
    if split not in features.splits:
        raise KudaInputError(f"Split '{split}' is not in the data; splits: {sorted(features.splits)}.")
    ds = features[split]
    p = predict_split(args, model, ds)
    if info is not None:
        info.update(device=str(args.device), precision=evaluation_precision(args)[0])
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
    from ..training.evaluation import MODALITY_INDEX, dominant_of, on_dominant

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
    from ..training.evaluation import MODALITY_INDEX, dominant_fraction, dominant_of

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


def default_out(weights, res_save_dir=None) -> Path:
    """``<res_save_dir or ~/MMSA/results>/explain/<weights file name without .pth>``."""
    return output_folder(None, "explain", Path(weights).name.removesuffix(".pth"), res_save_dir)


def explain(weights, feature_file=None, split="test", out=None, config_file=None, dataset=None,
            sample_ids=None, plots=True, config: Optional[dict] = None, res_save_dir=None, gpu_ids=None) -> dict:
    """Library entry point; returns the summary (also written to summary.json). ``out``
    defaults to ``default_out(weights, res_save_dir)``."""
    from ..training.evaluation import dominant_fraction, ratio_placement

    out = Path(out).expanduser() if out else default_out(weights, res_save_dir)
    info = {}
    rows, metrics = collect(weights, split, dataset, config_file, feature_file, config, gpu_ids, info)
    csv_path = write_csv(rows, out / f"explain-{split}.csv")
    pngs = write_plots(rows, out, sample_ids) if plots else []
    summary = {"weights": str(weights), "split": split, "samples": len(rows), "metrics": metrics, **info,
               "dominant_fraction": dominant_fraction(rows), "ratio_placement": ratio_placement(rows),
               "csv": str(csv_path), "plots": [str(p) for p in pngs]}
    summary["summary"] = str(out / "summary.json")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def describe_dominant(s: dict) -> str:
    """What the dominant-modality figure means, with this run's shares (module docstring)."""
    place = s.get("ratio_placement") or {}
    n = place.get("samples", 0)
    if s.get("dominant_fraction") is None or not n:
        return ""
    head = (f"largest ratio on the annotated dominant modality: {s['dominant_fraction']:.1%} of the {n} annotated "
            f"samples")
    if place.get("uniform") == n:
        return (f"{head}: n/a, this model's ratios are uniform (static fusion, or reference mode, which has no ratio "
                f"at evaluation), so no modality is largest.")
    return (f"{head} (a random pick would give 33.3%).\n"
            f"  The ratio never sees the label: it favours the modality whose own score lies nearest the median of "
            f"the three scores. Its largest value is on that modality for {place['median']:.1%} of these samples, "
            f"while the annotated dominant modality is the one nearest the median for only "
            f"{place['dominant_is_median']:.1%} of them (on the demo data the median is mostly the modality that "
            f"agrees weakly with the label). So this share measures whether the label-free ratio finds the "
            f"dominant modality, not how good the predictions are (the metrics above).")
