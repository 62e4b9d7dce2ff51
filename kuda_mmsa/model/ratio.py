"""Sentiment ratio (KUDA.md §3): R_m = softmax_m(-k (s_m - s)^2), i.e.
r_m = exp(-k (s_m - s)^2) normalised over the modalities.

Where the target s comes from is a registry, so ablations add sources without touching the
model: `consensus` (label-free: the mean unimodal score) and `label` (the ground truth; the
authors' training-time choice)."""
from typing import Callable, Dict, Optional

import torch

RatioTarget = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _consensus(scores: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    return scores.mean(dim=-1, keepdim=True)


def _label(scores: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
    if labels is None:
        raise ValueError("ratio_source 'label' needs the labels in forward()")
    return labels.reshape(-1, 1).to(scores.dtype)


RATIO_TARGETS: Dict[str, RatioTarget] = {"consensus": _consensus, "label": _label}


def sentiment_ratio(scores: torch.Tensor, target: torch.Tensor, k: float) -> torch.Tensor:
    """scores [B, M] unimodal predictions, target [B, 1] -> ratios [B, M] summing to 1."""
    return torch.softmax(-k * (scores - target) ** 2, dim=-1)
