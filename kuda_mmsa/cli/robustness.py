"""``robustness``: trained KuDA models under test-time corruption of one modality at a time.

    kuda-mmsa robustness --weights W [W ...] [-d DATASET | --feature-file F] [--corrupt missing noise swap]
                         [--modality T V A] [--rate 0 0.25 0.5 0.75 1] [-s SEED ...] [--out DIR]

Each model is rebuilt from the config saved next to its weights and evaluated on the test
split with a share ``rate`` of the samples corrupted in one modality (kuda_mmsa.data.corruption:
missing, Gaussian noise at --snr-db, or swapped with another sample's), for each seed; the
corrupted samples depend only on the seed, so every model sees the same corruption. Writes

- ``robustness.csv``: model, corruption, modality, rate, seed and MMSA's metrics;
- ``robustness_summary.csv`` and ``robustness.md``: per model, corruption and modality, the
  relative robustness (mean of MAE / Corr along the rate curve) and the effective robustness
  against --reference (how much less it degrades; positive = more robust), MultiBench's two
  summary figures (kuda_mmsa.training.robustness), mean ± std over seeds;
- ``robustness-<corruption>.png``: MAE and Corr against rate, one line per model, seed bands.

``kuda-mmsa ablate --robustness ...`` does the same for KuDA variants and MMSA peers.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

from .. import plots
from ..data.corruption import KINDS
from ..errors import KudaInputError
from ..files import atomic_path
from ..mmsa.args import RUN_KEYS, build_args
from ..mmsa.trained import load_trained, tester_for
from ..training.robustness import SUMMARY_METRICS, evaluate_grid, summaries
from .common import add_flags, command_parser, console_logging, finite_float, overrides, run_command

DEFAULT_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
ID_COLUMNS = ["model", "corruption", "modality", "rate", "seed"]


def add_grid_flags(p, prefix: str = "") -> None:
    """The corruption grid's flags (also used by `ablate --robustness`)."""
    if not prefix:
        p.add_argument("--corrupt", nargs="+", default=list(KINDS), choices=KINDS, metavar="KIND",
                       help=f"Corruptions: {', '.join(KINDS)}. Default: all")
    p.add_argument("--modality", nargs="+", default=["T", "V", "A"], type=str.upper, choices=["T", "V", "A"],
                   help="Modalities corrupted (one at a time). Default: T V A")
    p.add_argument("--rate", nargs="+", type=finite_float, default=list(DEFAULT_RATES),
                   help="Shares of test samples corrupted. Default: 0 0.25 0.5 0.75 1")
    p.add_argument("--snr-db", type=finite_float, default=0.0,
                   help="Signal-to-noise ratio of 'noise', in dB. Default: 0")


def check_rates(rates) -> List[float]:
    rates = sorted({float(r) for r in rates})
    if any(not 0.0 <= r <= 1.0 for r in rates):
        raise KudaInputError(f"--rate values must lie in [0, 1]; found {rates}.")
    if 0.0 not in rates:
        rates = [0.0] + rates          # the clean score anchors both summary figures
    return rates


def write_csv(rows: List[dict], path: Path, first: List[str]) -> Path:
    cols = list(first) + [k for r in rows for k in r if k not in first]
    cols = list(dict.fromkeys(cols))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path) -> List[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if k in ("corruption", "modality", "model", "variant"):
                continue
            try:
                r[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows


def _mean_std(vals) -> str:
    vals = [float(v) for v in vals if v != "" and v is not None]
    return f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else "–"


def markdown(rows: List[dict], summary: List[dict], group: str, reference: str) -> str:
    """Per corruption: metric at each rate (mean ± std over seeds) and RR / ER per model."""
    out = []
    names = list(dict.fromkeys(str(r[group]) for r in rows))
    for kind in dict.fromkeys(r["corruption"] for r in rows):
        for modality in dict.fromkeys(r["modality"] for r in rows if r["corruption"] == kind):
            rates = sorted({float(r["rate"]) for r in rows if r["corruption"] == kind})
            out.append(f"#### {kind}, modality {modality}\n")
            head = [group] + [f"{m} @ {x:g}" for m in SUMMARY_METRICS for x in rates] + \
                   [f"RR {m}" for m in SUMMARY_METRICS] + [f"ER {m} vs {reference}" for m in SUMMARY_METRICS]
            out.append("| " + " | ".join(head) + " |")
            out.append("|" + "---|" * len(head))
            for name in names:
                mine = [r for r in rows if str(r[group]) == name and r["corruption"] == kind and r["modality"] == modality]
                summ = [s for s in summary if str(s[group]) == name and s["corruption"] == kind
                        and s["modality"] == modality]
                if not mine:
                    continue
                cells = [_mean_std([r[m] for r in mine if float(r["rate"]) == x]) for m in SUMMARY_METRICS for x in rates]
                cells += [_mean_std([s.get(f"RR_{m}") for s in summ]) for m in SUMMARY_METRICS]
                cells += [_mean_std([s.get(f"ER_{m}") for s in summ if f"ER_{m}" in s]) for m in SUMMARY_METRICS]
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out)


def write_outputs(rows: List[dict], out: Path, group: str, reference: str) -> Dict[str, Path]:
    """CSV, summary CSV, Markdown and one PNG per corruption kind."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summaries(rows, reference, group)
    first = [group] + (["model"] if group != "model" else []) + ID_COLUMNS[1:]
    paths = {"csv": write_csv(rows, out / "robustness.csv", first),
             "summary": write_csv(summary, out / "robustness_summary.csv", [group, "corruption", "modality", "seed"])}
    md = out / "robustness.md"
    md.write_text(f"Test split, MMSA's metrics, mean ± std over seeds. RR: mean of the metric along the rate "
                  f"curve; ER: how much less the metric degrades than {reference} (positive = more robust).\n\n"
                  + markdown(rows, summary, group, reference))
    paths["markdown"] = md
    for kind in dict.fromkeys(r["corruption"] for r in rows):
        png = plots.robustness_curves(rows, out / f"robustness-{kind}.png", kind, group=group)
        if png is not None:
            paths[f"png_{kind}"] = png
    return paths


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    p.add_argument("--weights", nargs="+", required=True, help="Trained KuDA weights (one or more models).")
    p.add_argument("--labels", nargs="+", default=None, help="A name per weights file (default: the file names).")
    add_flags(p, "dataset", "feature_file", "config", "data_root", "pretrained", "seeds", "verbose", "out",
              dataset=None, out="robustness")
    add_grid_flags(p)
    p.add_argument("--reference", default=None, help="Model the effective robustness is measured against "
                                                     "(a --labels name). Default: the first model")
    return p


def run(a) -> int:
    console_logging(2 if a.verbose == 2 else 0)      # one test log line per evaluation is too many
    labels = a.labels or [Path(w).stem for w in a.weights]
    if len(labels) != len(a.weights) or len(set(labels)) != len(labels):
        raise KudaInputError(f"--labels needs one distinct name per --weights file; found {labels} for "
                             f"{len(a.weights)} file(s).")
    reference = a.reference or labels[0]
    if reference not in labels:
        raise KudaInputError(f"--reference '{reference}' is not one of the models: {labels}.")
    rates = check_rates(a.rate)
    rows = []
    for name, weights in zip(labels, a.weights):
        args, features, model = load_trained(weights, a.dataset, a.config or None, a.feature_file,
                                             overrides(a) or None)
        args.model_save_path = str(weights)
        split, test_fn, options = tester_for(args, features, model)
        for r in evaluate_grid(split, test_fn, a.corrupt, a.modality, rates, a.seeds or [1111],
                               int(args.batch_size), a.snr_db, **options):
            rows.append({"model": name, **r})
        print(f"[robustness] {name}: {len(a.corrupt) * len(a.modality) * len(rates) * len(a.seeds or [1])} "
              f"evaluations")
    paths = write_outputs(rows, Path(a.out), "model", reference)
    print((Path(a.out) / "robustness.md").read_text())
    for k, v in paths.items():
        print(f"wrote {v}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)


# ---------------------------------------------------------------------- ablation runner
def cell_args(variant, dataset: str, run_dir: Path, feature_file=None, config_file=None, config=None):
    """The args a finished ablation cell ran with (rebuilt; its weights are in run_dir)."""
    cfg = dict(config or {})
    if not variant.is_kuda:
        cfg = {k: v for k, v in cfg.items() if k in RUN_KEYS}
    cfg.update(variant.config)
    args, _ = build_args(variant.model, dataset, config_file if variant.is_kuda else None, cfg or None,
                         f"ablation variant {variant.name}", custom_feature=feature_file)
    args.update(custom_feature=str(feature_file) if feature_file else None, feature_T="", feature_A="", train_mode="regression",
                feature_V="", device=torch.device("cpu"), progress=False,
                model_save_path=str(run_dir / f"{variant.model}-{args.dataset_name}.pth"))
    return args


def ablation_robustness(out: Path, dataset: str, cells, grid: dict, feature_file=None, config_file=None,
                        config=None, reference=None, echo=print) -> Dict[str, Path]:
    """Robustness of every finished (variant, seed) cell of an ablation, from its saved
    weights, with corruption seed = the cell's seed (every variant sees the same corruption).
    Rows already in <out>/robustness.csv are kept (resumable)."""
    path = out / "robustness.csv"
    rows = read_csv(path)
    done = {(r["variant"], int(r["seed"])) for r in rows}
    rates = check_rates(grid["rates"])
    for variant, seed in cells:
        if (variant.name, int(seed)) in done:
            continue
        run_dir = out / "runs" / variant.name / f"seed{seed}"
        args = cell_args(variant, dataset, run_dir, feature_file, config_file, config)
        split, test_fn, options = tester_for(args)
        echo(f"[ablate] robustness of {variant.name} seed {seed}")
        for r in evaluate_grid(split, test_fn, grid["kinds"], grid["modalities"], rates, [seed],
                               int(args.batch_size), grid["snr_db"], **options):
            rows.append({"variant": variant.name, "model": variant.model, **r})
        write_csv(rows, path, ["variant", "model"] + ID_COLUMNS[1:])      # after every cell
    names = list(dict.fromkeys(v.name for v, _ in cells))
    selected = [r for r in rows if r["variant"] in names and (r["variant"], int(r["seed"])) in
                {(v.name, int(s)) for v, s in cells}]
    reference = reference or ("lf_dnn" if "lf_dnn" in names else names[0])
    return write_outputs(selected, out, "variant", reference)
