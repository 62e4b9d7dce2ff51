"""Sentiment ratio (KuDA paper, method section: sentiment knowledge guiding): R_m = softmax_m(-k (s_m - s)^2), i.e.
r_m = exp(-k (s_m - s)^2) normalised over the modalities.

Where the target s comes from is a registry, so ablations add sources without touching the
model. Each entry takes (scores [B, M], labels [B, 1] or None, estimate [B, 1] or None):
- `consensus`: label-free, the mean unimodal score;
- `estimate`: label-free, a small learned estimator of the overall score from the unimodal
  scores (RatioEstimator), trained with an auxiliary MSE against the label, so the ratio
  approximates the authors' label-based one and exists at inference too;
- `prediction`: label-free, the model's own prediction from a first fusion pass with every
  modality weighted 1 (static fusion, same blocks and head; trained with an auxiliary MSE),
  i.e. "how close is each modality to what the whole model thinks"; costs a second pass
  through the fusion blocks;
- `label`: the ground truth (the authors' training-time choice; training only)."""
from typing import Callable, Dict, Optional

import torch

from torch import nn

RatioTarget = Callable[[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]


def _consensus(scores, labels=None, estimate=None) -> torch.Tensor:
    return scores.mean(dim=-1, keepdim=True)


def _estimate(scores, labels=None, estimate=None) -> torch.Tensor:
    if estimate is None:
        raise ValueError("ratio_source 'estimate' needs the model's RatioEstimator output")
    return estimate.detach()


def _prediction(scores, labels=None, estimate=None) -> torch.Tensor:
    if estimate is None:
        raise ValueError("ratio_source 'prediction' needs the model's first-pass prediction")
    return estimate.detach()


def _label(scores, labels=None, estimate=None) -> torch.Tensor:
    if labels is None:
        raise ValueError("ratio_source 'label' needs the labels in forward()")
    return labels.reshape(-1, 1).to(scores.dtype)


RATIO_TARGETS: Dict[str, RatioTarget] = {"consensus": _consensus, "estimate": _estimate,
                                         "prediction": _prediction, "label": _label}
LABEL_FREE = ("consensus", "estimate", "prediction")


class RatioEstimator(nn.Module):
    """Overall score estimated from the (detached) unimodal scores: 3 -> 16 -> 1."""

    def __init__(self, num_modalities: int = 3, hidden: int = 16):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(num_modalities, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.mlp(scores.detach())


def sentiment_ratio(scores: torch.Tensor, target: torch.Tensor, k: float) -> torch.Tensor:
    """scores [B, M] unimodal predictions, target [B, 1] -> ratios [B, M] summing to 1."""
    return torch.softmax(-k * (scores - target) ** 2, dim=-1)
