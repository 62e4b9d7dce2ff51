"""Correlation-estimation loss (KuDA paper, method section: correlation estimation): InfoNCE between each modality's pooled
sequence and the pooled fused sequence, the batch serving as negatives."""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def correlation_estimation_loss(modality_means: Sequence[torch.Tensor], fused_mean: torch.Tensor,
                                present: Optional[torch.Tensor] = None) -> torch.Tensor:
    """sum_m -mean_b( <x_b, p_b> - logsumexp_j <x_b, p_j> ) with x, p L2-normalised; with
    ``present`` [B, M] bool, modality m's mean runs over the samples where it is present."""
    p = F.normalize(fused_mean, dim=-1)
    targets = torch.arange(p.shape[0], device=p.device)
    total = fused_mean.new_zeros(())
    for i, x in enumerate(modality_means):
        logits = F.normalize(x, dim=-1) @ p.t()
        if present is None:
            total = total + F.cross_entropy(logits, targets)
        else:
            per = F.cross_entropy(logits, targets, reduction="none")
            w = present[:, i].to(per.dtype)
            total = total + (per * w).sum() / w.sum().clamp(min=1)
    return total
