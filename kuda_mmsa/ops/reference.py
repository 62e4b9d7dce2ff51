"""Pure-PyTorch reference of every op. The compiled kernels are tested against these."""
import math
from typing import Optional

import torch


def ratio_cross_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """out[b, m] = weight[b, m] * softmax(scale * q[b, m] k[b, m]^T, masked) v[b, m].

    q [B, M, H, Lq, d]; k, v [B, M, H, Lk, d]; weight [B, M];
    key_padding_mask [B, M, Lk] bool, True = padding. Accumulates in fp32 (fp64 inputs in
    fp64: never a silent downcast) and returns q's dtype. A query row whose keys are all
    padding returns zeros (and zero gradients), never NaN.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * scale  # [B, M, H, Lq, Lk]
    if key_padding_mask is not None:
        pad = key_padding_mask[:, :, None, None, :].to(torch.bool)
        all_pad = pad.all(dim=-1, keepdim=True)
        # Rows with no valid key are unmasked before softmax (so no NaN appears anywhere in
        # the graph) and zeroed afterwards.
        scores = scores.masked_fill(pad & ~all_pad, float("-inf"))
        probs = torch.softmax(scores, dim=-1).masked_fill(all_pad, 0.0)
    else:
        probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v.to(acc)) * weight.to(acc)[:, :, None, None, None]
    return out.to(q.dtype)
