"""Robustness to test-time corruption: evaluating a model over a grid of corruptions, and the
two summary figures of MultiBench's robustness protocol (Liang et al., NeurIPS 2021 Datasets
and Benchmarks; their eval_scripts/robustness.py), adapted to regression metrics.

For one model, one corruption kind and one modality, a metric f is measured at rates
x_0 = 0 < x_1 < ... < x_K (f_0 is the clean score). Scores are first made "higher is better"
(g = -f for MAE and Loss, g = f otherwise). Then

- relative robustness RR = trapezoid area under g over the rates divided by the rate range,
  i.e. the mean score along the curve. MultiBench sums with a fixed step 0.1 and min-max
  normalises against its stored baselines; with a handful of models that normalisation is
  unstable, so we report the raw mean (in the metric's units; for MAE the sign is restored,
  so RR(MAE) is the mean MAE along the curve, lower is better);
- effective robustness ER = mean over i >= 1 of [(g_i - g_0) - (r_i - r_0)], with r a fixed
  reference model's curve (MultiBench uses late fusion): how much less a model degrades than
  the reference once its clean score is accounted for. Positive = more robust than the
  reference, for every metric (MAE included).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader

from ..data.corruption import Corruption, CorruptedDataset
from .metrics import lower_is_better

SUMMARY_METRICS = ("MAE", "Corr")


def evaluate_grid(test_split, test_fn: Callable[[DataLoader], Mapping[str, float]], kinds: Iterable[str],
                  modalities: Iterable[str], rates: Sequence[float], seeds: Iterable[int], batch_size: int,
                  snr_db: float = 0.0, vocab_size=None, min_length: int = 0, bert_text: bool = True) -> List[dict]:
    """One row per (kind, modality, rate, seed): the corruption and test_fn's metrics."""
    rows = []
    for seed in seeds:
        for kind in kinds:
            for modality in modalities:
                for rate in rates:
                    c = Corruption(kind, modality, float(rate), int(seed), snr_db)
                    ds = CorruptedDataset(test_split, c, vocab_size=vocab_size, min_length=min_length,
                                          bert_text=bert_text)
                    loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
                    metrics = {k: float(v) for k, v in test_fn(loader).items() if isinstance(v, (int, float))}
                    rows.append({"corruption": kind, "modality": modality, "rate": float(rate), "seed": int(seed),
                                 **metrics})
    return rows


def _higher_better(metric: str, values: np.ndarray) -> np.ndarray:
    return -values if lower_is_better(metric) else values


def relative_robustness(rates: Sequence[float], values: Sequence[float], metric: str) -> float:
    """Mean of the metric along the curve (trapezoid area / rate range), in the metric's units."""
    x, y = np.asarray(rates, float), np.asarray(values, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))
    return area / float(x[-1] - x[0])


def effective_robustness(rates: Sequence[float], values: Sequence[float], ref_values: Sequence[float],
                         metric: str) -> float:
    """Mean over the corrupted rates of how much less the model degrades than the reference
    (positive = more robust), on the higher-is-better scale."""
    x = np.asarray(rates, float)
    order = np.argsort(x)
    g = _higher_better(metric, np.asarray(values, float)[order])
    r = _higher_better(metric, np.asarray(ref_values, float)[order])
    if len(g) < 2:
        return 0.0
    return float(np.mean((g[1:] - g[0]) - (r[1:] - r[0])))


def summaries(rows: List[dict], reference: str, group: str = "model", mean_over_rates: bool = False) -> List[dict]:
    """Per (group, kind, modality, seed): RR and ER of each summary metric; ER against the
    ``reference`` group's curve for the same kind, modality and seed (absent: no ER). With
    ``mean_over_rates`` also ``Mean_<metric>``: the plain mean over the rates, 0 included
    (LNLN's reported figure; RR weighs the two end rates by half)."""
    out = []
    keys = sorted({(r[group], r["corruption"], r["modality"], int(r["seed"])) for r in rows},
                  key=lambda k: (str(k[0]), k[1], k[2], k[3]))
    for name, kind, modality, seed in keys:
        mine = sorted((r for r in rows if (r[group], r["corruption"], r["modality"], int(r["seed"]))
                       == (name, kind, modality, seed)), key=lambda r: float(r["rate"]))
        ref = sorted((r for r in rows if (r[group], r["corruption"], r["modality"], int(r["seed"]))
                      == (reference, kind, modality, seed)), key=lambda r: float(r["rate"]))
        rates = [float(r["rate"]) for r in mine]
        entry: Dict = {group: name, "corruption": kind, "modality": modality, "seed": seed}
        for metric in SUMMARY_METRICS:
            vals = [float(r[metric]) for r in mine]
            entry[f"RR_{metric}"] = relative_robustness(rates, vals, metric)
            if mean_over_rates:
                entry[f"Mean_{metric}"] = float(np.mean(vals))
            if ref and [float(r["rate"]) for r in ref] == rates:
                entry[f"ER_{metric}"] = effective_robustness(rates, vals, [float(r[metric]) for r in ref], metric)
        out.append(entry)
    return out
