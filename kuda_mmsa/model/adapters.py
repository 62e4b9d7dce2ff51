"""Knowledge-injection ("mixed-domain") adapters and the unimodal decoder (KuDA paper, method section: knowledge injection)."""
from typing import List, Optional

import torch
from torch import nn

from .layers import Dropout, TransformerStack, masked_mean


class Adapter(nn.Module):
    """Linear(d -> d/2) -> small Transformer -> Linear(d/2 -> d) -> + input."""

    def __init__(self, width: int, layers: int, heads: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        inner = width // 2
        self.down = nn.Linear(width, inner)
        self.encoder = TransformerStack(layers, inner, heads, max(inner // 2, 1), dropout, attn_dropout)
        self.up = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        return x + self.up(self.encoder(self.down(x), pad))


class AdapterChain(nn.Module):
    """x = LN(h_0 + h_{i1}) -> adapter_1 -> x = LN(x + h_{i2}) -> adapter_2 -> ... = domain
    knowledge. One LayerNorm is shared by every step, as in the reference."""

    def __init__(self, width: int, count: int, layers: int, heads: int, dropout: float, norm: nn.LayerNorm,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.adapters = nn.ModuleList(Adapter(width, layers, heads, dropout, attn_dropout) for _ in range(count))
        self.norm = norm

    def forward(self, base: torch.Tensor, taps: List[torch.Tensor], pad: Optional[torch.Tensor]) -> torch.Tensor:
        x = base
        for adapter, h in zip(self.adapters, taps):
            x = adapter(self.norm(x + h), pad)
        return x


class UnimodalDecoder(nn.Module):
    """mean over time -> dropout -> w -> p/2 -> p/4 -> p/8 -> 1 with GELUs, where p is the
    encoder width (w = 2p: encoder output and adapter knowledge concatenated)."""

    def __init__(self, width: int, dropout: float, encoder_width: Optional[int] = None):
        super().__init__()
        p = encoder_width or width // 2
        self.dropout = Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(width, p // 2), nn.GELU(),
            nn.Linear(p // 2, p // 4), nn.GELU(),
            nn.Linear(p // 4, p // 8), nn.GELU(),
            nn.Linear(p // 8, 1),
        )

    def forward(self, u: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.dropout(masked_mean(u, pad)))
