"""Ablations of KuDA next to stock MMSA models, on the same splits and seeds.

Every (variant, seed) is one ``MMSA_run`` call (after ``register()``) with one seed, its own
model/result/log folders under ``<out>/runs/<variant>/seed<seed>/``, so metrics are MMSA's
own (its MetricsTop on the test split at the epoch selected on the validation set). The
per-seed result dict is taken from MMSA's ``_run`` at full precision (MMSA's result CSV
only keeps the mean × 100 rounded to 2 decimals); MMSA's own CSV is written too.

Outputs in ``<out>``: ``ablation.csv`` (one row per variant × seed with every metric),
``ablation.md`` (mean ± std over seeds per metric). Resumable: a (variant, seed) already in
ablation.csv is not run again. For KuDA variants on data annotated 'dominant:<modality>'
(the demo data) the column ``DomFrac`` is the fraction of test samples whose largest ratio
is on the annotated dominant modality (kuda_mmsa.explain).

Variants are a registry (``VARIANTS``); add one with ``register_variant``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .files import atomic_path

logger = logging.getLogger("MMSA")

DEFAULT_SEEDS = (1111, 1112, 1113)
ID_COLUMNS = ["variant", "model", "seed"]
EXTRA_COLUMNS = ["DomFrac", "seconds"]


@dataclass(frozen=True)
class Variant:
    name: str
    model: str                      # MMSA model name
    config: Dict = field(default_factory=dict)   # overrides of the model's config
    description: str = ""

    @property
    def is_kuda(self) -> bool:
        return self.model == "kuda"


VARIANTS: Dict[str, Variant] = {}


def register_variant(v: Variant) -> Variant:
    VARIANTS[v.name] = v
    return v


for _v in (
    Variant("kuda", "kuda", {}, "KuDA as configured (configs/kuda.yaml), dynamic fusion"),
    Variant("kuda_reference", "kuda", {"fusion_mode": "reference"},
            "the authors' computation (label ratio in training, none at evaluation)"),
    Variant("kuda_static", "kuda", {"use_ratio": False}, "static fusion: every modality weight 1"),
    Variant("kuda_no_knowledge", "kuda", {"use_knowledge": False},
            "no stage-1 knowledge: adapters and decoders from scratch"),
    Variant("kuda_no_ce", "kuda", {"ce_weight": 0.0}, "no correlation-estimation loss"),
    Variant("kuda_consensus", "kuda", {"ratio_source": "consensus"},
            "ratio target = mean unimodal score"),
    Variant("kuda_estimate", "kuda", {"ratio_source": "estimate"},
            "ratio target = learned label-free estimate"),
    Variant("lf_dnn", "lf_dnn", {}, "MMSA LF-DNN"),
    Variant("tfn", "tfn", {}, "MMSA TFN"),
    Variant("self_mm", "self_mm", {}, "MMSA Self-MM (BERT = the dataset's text encoder)"),
):
    register_variant(_v)

DEFAULT_VARIANTS = ("kuda", "kuda_reference", "kuda_static", "kuda_no_knowledge", "kuda_no_ce",
                    "kuda_consensus", "kuda_estimate", "lf_dnn", "tfn", "self_mm")


# ---------------------------------------------------------------------- CSV
def read_rows(csv_path) -> List[dict]:
    p = Path(csv_path)
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return list(csv.DictReader(f))


def write_rows(rows: List[dict], csv_path) -> Path:
    p = Path(csv_path)
    cols = list(ID_COLUMNS)
    for r in rows:
        for k in r:
            if k not in cols and k not in EXTRA_COLUMNS:
                cols.append(k)
    cols += [c for c in EXTRA_COLUMNS if any(c in r for r in rows)]
    with atomic_path(p) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="")
        w.writeheader()
        w.writerows(rows)
    return p


def _num(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def summarize(rows: List[dict], variants: Optional[Iterable[str]] = None) -> str:
    """Markdown table: one row per variant, mean ± std (population std, as MMSA) over seeds."""
    import numpy as np

    order = list(variants) if variants else list(dict.fromkeys(r["variant"] for r in rows))
    metric_cols = []
    for r in rows:
        for k in r:
            if k not in ID_COLUMNS and k != "seconds" and k not in metric_cols:
                metric_cols.append(k)
    metric_cols = [c for c in metric_cols if c != "DomFrac"] + (["DomFrac"] if "DomFrac" in metric_cols else [])
    lines = ["| variant | seeds | " + " | ".join(metric_cols) + " |",
             "|---|---|" + "---|" * len(metric_cols)]
    for name in order:
        rs = [r for r in rows if r["variant"] == name]
        if not rs:
            continue
        cells = []
        for c in metric_cols:
            vals = [v for v in (_num(r.get(c)) for r in rs) if v is not None]
            cells.append(f"{np.mean(vals):.4f} ± {np.std(vals):.4f}" if vals else "–")
        lines.append(f"| {name} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- running
class _Capture:
    """Wraps MMSA.run._run for one call: keeps the args and the per-seed result dict."""

    def __init__(self):
        self.calls = []

    def __enter__(self):
        import MMSA.run as run

        self._run, self._orig = run, run._run

        def _run(args, *a, **kw):
            result = self._orig(args, *a, **kw)
            self.calls.append((dict(args), dict(result)))
            return result

        run._run = _run
        logger_ = logging.getLogger("MMSA")
        self._handlers = list(logger_.handlers)
        return self

    def __exit__(self, *exc):
        self._run._run = self._orig
        logger_ = logging.getLogger("MMSA")
        for h in list(logger_.handlers):   # MMSA_run adds a file and a stream handler per call
            if h not in self._handlers:
                logger_.removeHandler(h)
                h.close()
        return False


def run_one(variant: Variant, dataset: str, seed: int, run_dir: Path, feature_file=None,
            config_file=None, num_workers: int = 0, verbose_level: int = 1,
            config: Optional[dict] = None) -> dict:
    """One MMSA_run call; returns {metric: value} (MMSA's) plus DomFrac for KuDA variants."""
    import time

    import MMSA.run as run

    from .mmsa.register import register

    register()
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(variant.config)
    if config:
        cfg.update(config)
    (run_dir / "variant.json").write_text(json.dumps(
        {"variant": variant.name, "model": variant.model, "config": cfg,
         "config_file": str(config_file) if config_file else None,
         "dataset": dataset, "seed": seed, "feature_file": str(feature_file) if feature_file else None},
        indent=2))
    t0 = time.time()
    with _Capture() as cap:
        run.MMSA_run(variant.model, dataset, config_file=(config_file if variant.is_kuda else None),
                     config=cfg or None, seeds=[seed], custom_feature=feature_file or None,
                     gpu_ids=[], num_workers=num_workers, verbose_level=verbose_level,
                     model_save_dir=str(run_dir), res_save_dir=str(run_dir), log_dir=str(run_dir))
    if not cap.calls:
        raise RuntimeError(f"MMSA_run produced no result for {variant.name} seed {seed}")
    args, result = cap.calls[-1]
    out = {k: float(v) for k, v in result.items()}
    out["seconds"] = round(time.time() - t0, 1)
    if variant.is_kuda:
        out["DomFrac"] = _dominant_fraction(args)
    return out


def _dominant_fraction(args) -> Optional[float]:
    from easydict import EasyDict

    from . import explain

    a = EasyDict(args)
    a.progress = False
    try:
        rows, _ = explain.collect(a, a.model_save_path, "test")
    except Exception as e:  # the analysis must never lose a finished run
        logger.warning(f"DomFrac not computed: {e}")
        return None
    return explain.dominant_fraction(rows)


def run_ablation(dataset: str, seeds: Iterable[int] = DEFAULT_SEEDS,
                 variants: Iterable[str] = DEFAULT_VARIANTS, out="ablation",
                 feature_file=None, config_file=None, num_workers: int = 0,
                 verbose_level: int = 1, echo=print) -> dict:
    """Runs the missing (variant, seed) pairs; returns {'csv', 'markdown', 'table', 'ran'}."""
    from .errors import KudaInputError

    variants = list(variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise KudaInputError(f"Unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "ablation.csv", out / "ablation.md"
    rows = read_rows(csv_path)
    done = {(r["variant"], int(r["seed"])) for r in rows}
    ran = []
    for name in variants:
        v = VARIANTS[name]
        for seed in seeds:
            if (name, int(seed)) in done:
                continue
            echo(f"[ablate] {name} seed {seed}: running ({v.description})")
            res = run_one(v, dataset, int(seed), out / "runs" / name / f"seed{seed}",
                          feature_file=feature_file, config_file=config_file,
                          num_workers=num_workers, verbose_level=verbose_level)
            rows.append({"variant": name, "model": v.model, "seed": int(seed), **res})
            write_rows(rows, csv_path)          # after every run: an interruption loses nothing
            ran.append((name, int(seed)))
    selected = [r for r in rows if r["variant"] in variants and int(r["seed"]) in {int(s) for s in seeds}]
    table = summarize(selected, variants)
    header = (f"Dataset `{dataset}`{' (' + str(feature_file) + ')' if feature_file else ''}, "
              f"seeds {', '.join(str(s) for s in seeds)}; test split, MMSA's metrics, mean ± std "
              f"over seeds. DomFrac: fraction of test samples whose largest ratio is on the "
              f"annotated dominant modality.\n\n")
    md_path.write_text(header + table)
    if not csv_path.exists():
        write_rows(rows, csv_path)
    return {"csv": csv_path, "markdown": md_path, "table": table, "ran": ran}
