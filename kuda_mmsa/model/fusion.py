"""Length alignment and dynamic attention fusion (DAF) blocks (KuDA paper, method section:
dynamic attention fusion).

The M cross-attentions of a block run as one call of
`kuda_mmsa.ops.ratio_cross_attention`, which multiplies modality m's attention message by
weight[b, m] inside the kernel. In `dynamic` mode weight = n_present * R_m (M * R_m when all M are
present), so the ratio changes how
much of each modality enters F; in `reference` mode the weight is 1 and the ratio enters the
authors' way, (1 + R_m) before a LayerNorm (where it has no effect but through eps).

Reference mode (or ``authors_dropout``) also trains as the authors' code does: the
cross-attention dropout acts after the output projection (ours: before it, on the message the
ratio weighted, so that each modality's projection sees the same dropout), and the block's own
feed-forward has no dropout (ours: fusion_dropout, the same regularisation as the
cross-attention's). ``authors_combine`` brings the authors' training-time combine to dynamic
mode."""
from typing import List, Optional

import torch
from torch import nn

from .. import ops
from .config import KuDAConfig
from .layers import Dropout, SelfAttention

FUSION_EPS = 1e-6


class FeedForward(nn.Module):
    """LN -> Linear(D -> ff) -> GELU -> dropout -> Linear(ff -> D) -> dropout."""

    def __init__(self, width: int, ff_size: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width), nn.Linear(width, ff_size), nn.GELU(), Dropout(dropout),
            nn.Linear(ff_size, width), Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LengthAlignment(nn.Module):
    """H_m = Linear_time(Linear_width(U_m)): every modality mapped to [B, L_T, D]."""

    def __init__(self, in_width: int, in_len: int, out_width: int, out_len: int):
        super().__init__()
        self.in_len = in_len
        self.width = nn.Linear(in_width, out_width)
        self.time = nn.Linear(in_len, out_len)

    def forward(self, u: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        x = self.width(u)
        if pad is not None:
            # Padded steps contribute nothing to the time mixing, whatever they hold.
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)
        if x.shape[1] < self.in_len:
            x = nn.functional.pad(x, (0, 0, 0, self.in_len - x.shape[1]))
        return self.time(x.transpose(1, 2)).transpose(1, 2)


class RatioCrossAttention(nn.Module):
    """For each source m: MHA(q = F, k = v = H_m), heads x head_dim, q/k/v without bias,
    output projection with bias; all M attentions through one fused op call."""

    def __init__(self, num_sources: int, width: int, heads: int, head_dim: int, dropout: float,
                 dropout_after_projection: bool = False):
        super().__init__()
        self.dropout_after_projection = dropout_after_projection
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.ModuleList(nn.Linear(width, inner, bias=False) for _ in range(num_sources))
        self.k = nn.ModuleList(nn.Linear(width, inner, bias=False) for _ in range(num_sources))
        self.v = nn.ModuleList(nn.Linear(width, inner, bias=False) for _ in range(num_sources))
        self.out = nn.ModuleList(nn.Linear(inner, width) for _ in range(num_sources))
        self.dropout = Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [B, L, inner] -> [B, H, L, d]
        b, l, _ = x.shape
        return x.view(b, l, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, target: torch.Tensor, sources: List[torch.Tensor], weight: torch.Tensor,
                key_padding_mask: Optional[torch.Tensor]) -> List[torch.Tensor]:
        q = torch.stack([self._split(proj(target)) for proj in self.q], dim=1)
        k = torch.stack([self._split(proj(h)) for proj, h in zip(self.k, sources)], dim=1)
        v = torch.stack([self._split(proj(h)) for proj, h in zip(self.v, sources)], dim=1)
        msg = ops.ratio_cross_attention(q, k, v, weight, key_padding_mask)  # [B, M, H, Lq, d]
        b, m, h, lq, d = msg.shape
        msg = msg.permute(0, 1, 3, 2, 4).reshape(b, m, lq, h * d)
        if self.dropout_after_projection:
            return [self.dropout(proj(msg[:, i])) for i, proj in enumerate(self.out)]
        msg = self.dropout(msg)
        return [proj(msg[:, i]) for i, proj in enumerate(self.out)]


class DAFBlock(nn.Module):
    def __init__(self, config: KuDAConfig, num_sources: int = 3):
        super().__init__()
        d, ff, p = config.hidden_size, config.fusion_ff_size, config.fusion_dropout
        self.mode = config.fusion_mode
        authors_dropout = config.authors("dropout")
        self.cross = RatioCrossAttention(num_sources, d, config.fusion_heads, config.fusion_head_dim, p,
                                         dropout_after_projection=authors_dropout)
        self.cross_norm1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_sources))
        self.cross_ff = nn.ModuleList(FeedForward(d, ff, p) for _ in range(num_sources))
        self.cross_norm2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_sources))
        if config.authors("combine"):
            # LN_m of the authors' ratio-weighted combine (their training path only).
            self.ratio_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(num_sources))
        self.combine_norm = nn.LayerNorm(d)
        self.fuse_norm = nn.LayerNorm(d, eps=FUSION_EPS)
        self.self_attn = SelfAttention(d, config.fusion_heads, config.fusion_head_dim, bias=False)
        self.self_norm = nn.LayerNorm(d, eps=FUSION_EPS)
        self.ff = FeedForward(d, ff, 0.0 if authors_dropout else p)
        self.ff_norm = nn.LayerNorm(d, eps=FUSION_EPS)

    def forward(self, f: torch.Tensor, sources: List[torch.Tensor], weight: torch.Tensor,
                pad: Optional[torch.Tensor], reference_ratio: Optional[torch.Tensor] = None) -> torch.Tensor:
        kpm = None if pad is None else pad.unsqueeze(1).expand(-1, len(sources), -1)
        messages = self.cross(f, sources, weight, kpm)
        ys = []
        for i, a in enumerate(messages):
            y = self.cross_norm1[i](f + a)
            ys.append(self.cross_norm2[i](y + self.cross_ff[i](y)))
        if reference_ratio is not None:
            # The authors' training path: (1 + R_m) * y_m, then LN_m (which undoes the scale).
            z = sum(norm((1.0 + reference_ratio[:, i, None, None]) * y)
                    for i, (norm, y) in enumerate(zip(self.ratio_norms, ys)))
        else:
            z = sum(ys)
        z = self.combine_norm(z)
        f = self.fuse_norm(f + z)
        f = self.self_norm(f + self.self_attn(f, pad))
        return self.ff_norm(f + self.ff(f))
