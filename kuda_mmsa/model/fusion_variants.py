"""Fusion ablations: the modules that replace the dynamic attention fusion (DAF) blocks when the
config key ``fusion`` is not 'daf' (registered in model/fusions.py; the paper never compares
DAF with simpler fusions).

Everything else stays KuDA's: the same encoders, adapters and knowledge, the same length
alignment (every modality mapped to [B, L_T, D]), the same output head, loss and ratio. Each
variant weights modality m by w_m = weight_m * present_m, normalised to sum to M (the number of
modalities): in dynamic mode weight = M * R_m, so the ratio still decides how much each modality
counts and a missing modality counts 0; with static fusion (``use_ratio: false``) or in
reference mode every present modality counts 1.

- ``concat``: the weighted sequences concatenated along the feature axis, projected back to D
  (Linear 3D -> D), then one Transformer layer (self-attention over time, padding masked, and
  feed-forward; fusion_heads, fusion_ff_size, fusion_dropout);
- ``add``: the weighted mean of the sequences, then one such Transformer layer;
- ``late``: no fused sequence: the output head scores each modality's pooled sequence and the
  prediction is the weighted mean of the M scores. The representation the correlation-estimation
  loss compares with the modalities is the weighted mean of their pooled sequences.
"""
from typing import List, Optional, Tuple

import torch
from torch import nn

from .config import KuDAConfig
from .layers import TransformerStack, masked_mean

def modality_weights(weight: torch.Tensor, present: Optional[torch.Tensor]) -> torch.Tensor:
    """[B, M] weights summing to M per sample (present modalities only when ``present`` is given)."""
    w = weight.float()
    if present is not None:
        w = w * present.to(w.dtype)
    m = w.shape[-1]
    total = w.sum(-1, keepdim=True)
    uniform = torch.full_like(w, 1.0)
    # the clamp only keeps the unused branch finite (its gradient would be NaN): at the
    # smallest normal number, any positive total still normalises to M
    return torch.where(total > 0, m * w / total.clamp(min=torch.finfo(w.dtype).tiny), uniform)


class SequenceFusion(nn.Module):
    """concat or add, then one Transformer layer: returns the fused sequence [B, L_T, D]."""

    def __init__(self, config: KuDAConfig, kind: str, num_modalities: int):
        super().__init__()
        d = config.hidden_size
        self.kind = kind
        self.project = nn.Linear(num_modalities * d, d) if kind == "concat" else None
        self.layer = TransformerStack(1, d, config.fusion_heads, config.fusion_ff_size, config.fusion_dropout)

    def forward(self, sources: List[torch.Tensor], weight: torch.Tensor, text_pad: Optional[torch.Tensor],
                present: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = modality_weights(weight, present).to(sources[0].dtype)
        scaled = [h * w[:, i, None, None] for i, h in enumerate(sources)]
        if self.kind == "concat":
            f = self.project(torch.cat(scaled, dim=-1))
        else:
            f = sum(scaled) / len(scaled)
        return self.layer(f, text_pad)


class LateFusion(nn.Module):
    """The output head on each modality's pooled sequence; the weighted mean of the scores."""

    def forward(self, sources: List[torch.Tensor], weight: torch.Tensor, text_pad: Optional[torch.Tensor],
                head: nn.Module, present: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        w = modality_weights(weight, present).to(sources[0].dtype)
        m = len(sources)
        pooled = [masked_mean(h, text_pad) for h in sources]
        scores = torch.cat([head(p) for p in pooled], dim=-1)              # [B, M]
        prediction = (scores * w).sum(-1, keepdim=True) / m
        fused = sum(p * w[:, i, None] for i, p in enumerate(pooled)) / m
        return prediction, fused

