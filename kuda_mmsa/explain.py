"""``python -m kuda_mmsa explain``: what a trained KuDA model did, sample by sample.

    python -m kuda_mmsa explain --weights W --feature-file F [--split test] [--out DIR]
                                [-c CONFIG] [-d DATASET]

Rebuilds the model from the same configuration as training (get_config_regression('kuda',
DATASET, CONFIG) plus the shapes the loader reads from the data), loads MMSA's saved state
dict (keys ``Model.*``) on the CPU, runs KuDATrainer.do_test on the split and writes

- ``explain-<split>.csv``: id, T, V, A (unimodal scores), R_T, R_V, R_A (ratios), prediction,
  label, abs_error and, when the data has ``annotations``, annotation;
- ``ratio_distribution.png``: histogram of each modality's ratio;
- ``ratio_by_dominant.png`` (data annotated 'dominant:<modality>', e.g. the demo data) or
  ``ratio_by_error.png`` (otherwise: |error| bins);
- ``samples.png``: paper-Figure-1-style panels for chosen samples (--samples ID ... or,
  by default, one correct and one wrong per annotated group / the best and worst samples);
- ``summary.json``: MMSA's metrics on the split and, with annotations, the fraction of
  samples whose largest ratio is on the annotated dominant modality.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

logger = logging.getLogger("MMSA")

MODS = ("T", "V", "A")
NAME_TO_INDEX = {"text": 0, "vision": 1, "audio": 2}
CSV_COLUMNS = ["id", "T", "V", "A", "R_T", "R_V", "R_A", "prediction", "label", "abs_error",
               "annotation"]
ERROR_BINS = (0.0, 0.1, 0.2, 0.4, float("inf"))


# ---------------------------------------------------------------------- model and data
def build_args(dataset: str = "demo", config_file: Optional[str] = None,
               feature_file: Optional[str] = None, config: Optional[dict] = None):
    """MMSA args for kuda as a run would have them, on the CPU, loader not yet built."""
    import torch

    from .mmsa.config import get_config_regression

    args = get_config_regression("kuda", dataset, config_file or "")
    if config:
        args.update(config)
    args.custom_feature = str(feature_file) if feature_file else None
    args.feature_T = args.feature_A = args.feature_V = ""
    args.device = torch.device("cpu")
    args.progress = False
    args.cur_seed = 1
    return args


def load_model(args, weights):
    """KuDA (MMSA's AMIO wrapper, keys ``Model.*``) with the saved weights, eval mode."""
    import torch

    from .mmsa.register import _patches, register

    register()
    model = _patches()["AMIO"](args)
    state = torch.load(str(weights), map_location="cpu")
    if isinstance(state, dict) and "model" in state and "optimizer" in state:
        state = state["model"]  # an interrupted-training (.resume) file
    if not any(k.startswith("Model.") for k in state):
        state = {f"Model.{k}": v for k, v in state.items()}
    model.load_state_dict(state)
    return model.eval()


def collect(args, weights, split: str = "test"):
    """(rows, metrics): one dict per sample of ``split`` (CSV_COLUMNS) and MMSA's metrics."""
    import torch

    from .mmsa.data import MMDataLoader
    from .mmsa.trainer import KuDATrainer

    torch.manual_seed(0)
    loaders = MMDataLoader(args, 0)          # fills seq_lens / feature_dims from the data
    if split not in loaders:
        from .errors import KudaInputError

        raise KudaInputError(f"Split '{split}' is not in the data; splits: {sorted(loaders)}.")
    model = load_model(args, weights)
    res = KuDATrainer(args).do_test(model, loaders[split], mode=split.upper(),
                                    return_sample_results=True)
    ds = loaders[split].dataset
    ann = {}
    if getattr(ds, "annotations", None) is not None:
        ann = {str(i): str(a) for i, a in zip(ds.ids, ds.annotations)}
    rows = []
    for sid, pred, ratio, uni, label in zip(res["Ids"], res["SResults"], res["Ratios"],
                                            res["Unimodal"], res["Labels"]):
        rows.append({"id": str(sid), "T": uni[0], "V": uni[1], "A": uni[2],
                     "R_T": ratio[0], "R_V": ratio[1], "R_A": ratio[2],
                     "prediction": pred, "label": label, "abs_error": abs(pred - label),
                     "annotation": ann.get(str(sid), "")})
    metrics = {k: v for k, v in res.items()
               if k not in ("Ids", "SResults", "Ratios", "Unimodal", "Labels")}
    return rows, metrics


def dominant_of(annotation: str) -> Optional[int]:
    """'dominant:vision' -> 1 (T, V, A order); None when not such an annotation."""
    a = str(annotation or "")
    if a.startswith("dominant:"):
        return NAME_TO_INDEX.get(a.split(":", 1)[1].strip().lower())
    return None


def on_dominant(row, d: int) -> bool:
    """True when the ratio of modality d is strictly the largest (a tie, e.g. the uniform
    ratio of static fusion, picks nothing)."""
    r = [float(row["R_T"]), float(row["R_V"]), float(row["R_A"])]
    return all(r[d] > r[m] + 1e-9 for m in range(3) if m != d)


def dominant_fraction(rows) -> Optional[float]:
    """Fraction of annotated samples whose largest ratio is on the dominant modality."""
    hits = [on_dominant(r, d) for r in rows for d in [dominant_of(r.get("annotation"))] if d is not None]
    return float(np.mean(hits)) if hits else None


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
            from .errors import KudaInputError

            raise KudaInputError(f"--samples: ids not in the split: {missing[:5]}")
        return [by_id[i] for i in ids]
    annotated = [r for r in rows if dominant_of(r.get("annotation")) is not None and abs(r["label"]) >= 0.6]
    if annotated:
        chosen = []
        for name, d in NAME_TO_INDEX.items():
            group = [r for r in annotated if dominant_of(r["annotation"]) == d]
            hit = [r for r in group if on_dominant(r, d)]
            chosen += sorted(hit, key=lambda r: r["abs_error"])[:per_group]
        miss = [r for r in annotated if not on_dominant(r, dominant_of(r["annotation"]))]
        return chosen + sorted(miss, key=lambda r: -r["abs_error"])[:max(6 - len(chosen), 0)]
    ranked = sorted(rows, key=lambda r: r["abs_error"])
    return ranked[:3] + ranked[-3:]


# ---------------------------------------------------------------------- outputs
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
    from . import plots

    ratios = [[r["R_T"], r["R_V"], r["R_A"]] for r in rows]
    written = [plots.ratio_distribution(ratios, out / "ratio_distribution.png")]
    if rows and all(dominant_of(r.get("annotation")) is not None for r in rows):
        frac = dominant_fraction(rows)
        written.append(plots.ratio_by_group(
            ratios, [r["annotation"].split(":", 1)[1] for r in rows], out / "ratio_by_dominant.png",
            group_order=list(NAME_TO_INDEX), xlabel="annotated dominant modality",
            title=f"Ratios by the true dominant modality (largest ratio on it: {frac:.0%})"))
    else:
        order = [error_bin(lo) for lo in ERROR_BINS[:-1]]
        written.append(plots.ratio_by_group(
            ratios, [error_bin(r["abs_error"]) for r in rows], out / "ratio_by_error.png",
            group_order=order, xlabel="|prediction − label|",
            title="Ratios by absolute error of the prediction"))
    written.append(plots.sample_panels(choose_samples(rows, sample_ids), out / "samples.png"))
    return [p for p in written if p is not None]


def explain(weights, feature_file=None, split="test", out="explain", config_file=None,
            dataset="demo", sample_ids=None, plots=True) -> dict:
    """Library entry point; returns the summary (also written to summary.json)."""
    out = Path(out)
    args = build_args(dataset, config_file, feature_file)
    rows, metrics = collect(args, weights, split)
    csv_path = write_csv(rows, out / f"explain-{split}.csv")
    pngs = write_plots(rows, out, sample_ids) if plots else []
    summary = {"weights": str(weights), "split": split, "samples": len(rows),
               "metrics": {k: float(v) for k, v in metrics.items()},
               "dominant_fraction": dominant_fraction(rows),
               "csv": str(csv_path), "plots": [str(p) for p in pngs]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def build_parser(prog="python -m kuda_mmsa explain") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="MMSA's saved KuDA weights (e.g. kuda-demo.pth)")
    p.add_argument("--feature-file", default=None,
                   help="MMSA-format pickle (default: the dataset's file; -d demo: the demo data)")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--out", default="explain", help="output folder (default: ./explain)")
    p.add_argument("-c", "--config", default=None, help="the -c file used in training, if any")
    p.add_argument("-d", "--dataset", default="demo", help="dataset name used in training (default demo)")
    p.add_argument("--samples", nargs="*", default=None, help="ids for the per-sample panels")
    p.add_argument("--knowledge-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pretrained", default=None, help="text encoder, if overridden in training")
    p.add_argument("--no-plots", action="store_true", help="CSV and summary only")
    return p


def main(argv=None) -> int:
    import sys

    from .errors import KudaInputError

    parser = build_parser()
    a = parser.parse_args(argv)
    if not Path(a.weights).is_file():
        print(f"{parser.prog}: error: weights file not found: {a.weights}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(name)s - %(message)s")
    try:
        from .mmsa.config import configure, reset_settings
        from .mmsa.datasets import canonical_name

        configure(pretrained=a.pretrained, knowledge_dir=a.knowledge_dir)
        try:
            s = explain(a.weights, a.feature_file, a.split, a.out, a.config,
                        canonical_name(a.dataset), a.samples, plots=not a.no_plots)
        finally:
            reset_settings()
    except KudaInputError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    m = s["metrics"]
    print(f"{s['samples']} {a.split} samples: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    if s["dominant_fraction"] is not None:
        print(f"largest ratio on the annotated dominant modality: {s['dominant_fraction']:.1%}")
    print(f"wrote {s['csv']}" + "".join(f"\nwrote {p}" for p in s["plots"]))
    return 0
