"""Python-side registrations of the C++ ops: fake (meta) kernels for torch.compile and
the autograd formula. Imported only once the op library is loaded."""
from __future__ import annotations

import torch

_fwd = torch.ops.kuda_mmsa._ratio_cross_attention_fwd
_bwd = torch.ops.kuda_mmsa._ratio_cross_attention_bwd


def _check(q, k, v, weight, key_padding_mask):
    torch._check(q.dim() == 5, lambda: f"ratio_cross_attention: q must be [B, M, H, Lq, d], got {tuple(q.shape)}")
    torch._check(k.dim() == 5 and v.shape == k.shape, lambda: "ratio_cross_attention: k, v must be [B, M, H, Lk, d]")
    torch._check(q.dtype == k.dtype == v.dtype, lambda: "ratio_cross_attention: q, k, v must share a dtype")
    torch._check(weight.dim() == 2, lambda: "ratio_cross_attention: weight must be [B, M]")
    if key_padding_mask is not None:
        torch._check(key_padding_mask.dtype == torch.bool, lambda: "ratio_cross_attention: mask must be bool")


@torch.library.register_fake("kuda_mmsa::_ratio_cross_attention_fwd")
def _fwd_fake(q, k, v, weight, key_padding_mask, scale):
    _check(q, k, v, weight, key_padding_mask)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    o_unw = q.new_empty(q.shape, dtype=torch.float32)
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    return out, o_unw, lse


@torch.library.register_fake("kuda_mmsa::_ratio_cross_attention_bwd")
def _bwd_fake(grad_out, q, k, v, weight, key_padding_mask, o_unweighted, lse, scale):
    _check(q, k, v, weight, key_padding_mask)
    return (
        torch.empty_like(q, memory_format=torch.contiguous_format),
        torch.empty_like(k, memory_format=torch.contiguous_format),
        torch.empty_like(v, memory_format=torch.contiguous_format),
        torch.empty_like(weight, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, weight, key_padding_mask, scale = inputs
    _, o_unw, lse = output
    ctx.save_for_backward(q, k, v, weight, key_padding_mask, o_unw, lse)
    ctx.scale = scale
    # o_unweighted and lse are saved state, not results: no gradient flows through them.
    ctx.mark_non_differentiable(o_unw, lse)


def _backward(ctx, grad_out, _grad_o_unw, _grad_lse):
    q, k, v, weight, key_padding_mask, o_unw, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(q)
    dq, dk, dv, dweight = _bwd(grad_out, q, k, v, weight, key_padding_mask, o_unw, lse, ctx.scale)
    return dq, dk, dv, dweight, None, None


torch.library.register_autograd(
    "kuda_mmsa::_ratio_cross_attention_fwd", _backward, setup_context=_setup_context
)
