"""Building blocks shared by the encoders, adapters and fusion: masks, masked means and a
post-norm Transformer encoder layer on scaled_dot_product_attention (memory-efficient: no
[L, L] score tensor is kept for long audio sequences)."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import ops


class _MaskDropout(torch.autograd.Function):
    """Inverted dropout that keeps a 1-byte mask for backward.

    On CPU, ``F.dropout`` draws its mask with ``bernoulli_`` (about 6 ns an element on two
    cores, 9 % of a CH-SIMS v2 training step) and keeps it as a float tensor. Here the mask
    comes from 15 random bits per element (about 2.5x faster to draw) and is kept as bool,
    a quarter of the memory. p is rounded to threshold / 32768 and the kept values are
    scaled by 1 / (1 - that p), so the output stays unbiased."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, threshold: int) -> torch.Tensor:
        n = x.numel()
        # random_() on int32 fills 31 random bits; each int16 half carries 15 uniform low bits.
        bits = torch.empty((n + 1) // 2, dtype=torch.int32, device=x.device).random_()
        keep = (bits.view(torch.int16)[:n].bitwise_and_(0x7FFF) >= threshold).view(x.shape)
        ctx.scale = 32768.0 / (32768 - threshold)
        ctx.save_for_backward(keep)
        return torch.where(keep, x * ctx.scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None


class Dropout(nn.Dropout):
    """nn.Dropout with the faster, leaner CPU mask of _MaskDropout; elsewhere (CUDA's fused
    dropout already keeps a bool mask), under torch.compile and for p outside the range the
    rounding serves, it is nn.Dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        threshold = round(self.p * 32768)
        if x.device.type != "cpu" or not 0 < threshold < 32768 or torch.compiler.is_compiling():
            return F.dropout(x, self.p, True, self.inplace)
        return _MaskDropout.apply(x, threshold)


def capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream: nothing may then read
    a GPU value on the host (``int(t)``, ``.item()``, data-dependent shapes)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def use_mask_dropout(module: nn.Module) -> nn.Module:
    """Swap every plain nn.Dropout inside ``module`` (a Hugging Face text encoder) for Dropout."""
    for parent in module.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
    return module


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, max_len] bool, True = padding. A length of 0 keeps one position
    valid so attention never sees a row without keys."""
    lengths = lengths.to(torch.long).clamp(min=1, max=max_len)
    pos = torch.arange(max_len, device=lengths.device)
    return pos[None, :] >= lengths[:, None]


def masked_mean(x: torch.Tensor, pad: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over time of x [B, L, D], ignoring positions where pad [B, L] is True."""
    if pad is None:
        return x.mean(dim=1)
    keep = (~pad).to(x.dtype).unsqueeze(-1)
    return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


def sdpa_mask(pad: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Key padding [B, Lk] (True = pad) -> SDPA boolean mask [B, 1, 1, Lk] (True = attend)."""
    if pad is None:
        return None
    return (~pad)[:, None, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention (fused qkv projection) on SDPA.

    By default no dropout on the attention probabilities: it forces SDPA onto its "math"
    path, which materialises [L, L] scores (13x slower and 2.5x the memory for audio at
    L=925 on CPU); callers regularise with dropout on the attention output instead.
    ``attn_dropout`` > 0 restores it (reference mode: torch's TransformerEncoderLayer, which
    the authors use, drops attention probabilities)."""

    def __init__(self, width: int, heads: int, head_dim: Optional[int] = None, bias: bool = True,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.attn_dropout = attn_dropout
        self.heads = heads
        self.head_dim = head_dim or width // heads
        inner = self.heads * self.head_dim
        self.qkv = nn.Linear(width, 3 * inner, bias=bias)
        self.out = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, l, _ = x.shape
        q, k, v = self.qkv(x).view(b, l, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        one = x.new_ones(b, 1)
        if p == 0.0 and ops.route(q[:, None], k[:, None], v[:, None], one) == "kernel":
            # The fused kernel with one source and weight 1 is plain masked attention. On CPU
            # it beats SDPA's flash path at these shapes (forward + backward, 2 threads,
            # padded lengths: 1.6x at L 925 / head dim 16, 1.5x at L 232, 1.7x at L 50); on
            # CUDA where ops.route says so (short keys, or fp32 at head dim 16: 1.6x at L 925).
            kpm = None if pad is None else pad[:, None, :]
            y = ops.ratio_cross_attention(q[:, None], k[:, None], v[:, None], one, kpm)[:, 0]
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask(pad), dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, l, self.heads * self.head_dim))


class TransformerLayer(nn.Module):
    """Post-norm encoder layer with GELU, as torch.nn.TransformerEncoderLayer(norm_first=False)."""

    def __init__(self, width: int, heads: int, ff_size: int, dropout: float, attn_dropout: float = 0.0):
        super().__init__()
        self.attn = SelfAttention(width, heads, attn_dropout=attn_dropout)
        self.norm1 = nn.LayerNorm(width)
        self.ff = nn.Sequential(
            nn.Linear(width, ff_size), nn.GELU(), Dropout(dropout), nn.Linear(ff_size, width)
        )
        self.norm2 = nn.LayerNorm(width)
        self.drop1 = Dropout(dropout)
        self.drop2 = Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.norm1(x + self.drop1(self.attn(x, pad)))
        return self.norm2(x + self.drop2(self.ff(x)))


class TransformerStack(nn.Module):
    """Layers iterated by hand so that every intermediate state is available.

    With `checkpointing` "always" (or "cpu" and the input on a CPU), each layer's activations
    are recomputed in backward instead of kept (long audio sequences: less memory for some
    extra compute); "never" keeps them."""

    def __init__(self, layers: int, width: int, heads: int, ff_size: int, dropout: float,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(TransformerLayer(width, heads, ff_size, dropout, attn_dropout)
                                    for _ in range(layers))
        self.checkpointing = "never"

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor] = None, return_all: bool = False):
        states = [x]
        recompute = (self.training and torch.is_grad_enabled()
                     and (self.checkpointing == "always" or (self.checkpointing == "cpu" and x.device.type == "cpu")))
        for layer in self.layers:
            if recompute:
                x = checkpoint(layer, x, pad, use_reentrant=False)
            else:
                x = layer(x, pad)
            states.append(x)
        return states if return_all else x
