"""MMSA's own metrics (MetricsTop, regression) by metrics family, with plain float values.

MMSA is the reference for every number we report (the authors' metric code swaps
prediction and truth in f1_score; MMSA's order is the right one)."""
from __future__ import annotations

from typing import Callable, Dict

from ..errors import KudaInputError

FAMILIES = ("SIMS", "MOSI", "MOSEI")


def metrics_for(family: str) -> Callable[..., Dict[str, float]]:
    """fn(y_pred [N, 1] tensor, y_true [N, 1] tensor) -> {metric: float} for a family."""
    from MMSA.utils.metricsTop import MetricsTop

    table = MetricsTop("regression").metrics_dict
    if family not in table:
        raise KudaInputError(f"No MMSA metrics for family '{family}'; families: {sorted(table)}.")
    fn = table[family]

    def metrics(y_pred, y_true) -> Dict[str, float]:
        return {k: float(v) for k, v in fn(y_pred, y_true).items()}

    metrics.__name__ = fn.__name__
    return metrics


def lower_is_better(metric: str) -> bool:
    return metric in ("Loss", "MAE")
