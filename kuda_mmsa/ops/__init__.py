"""The Python face of the fused kernels.

``ratio_cross_attention(q, k, v, weight, key_padding_mask=None, scale=None)``
    out[b, m] = weight[b, m] * softmax(scale * q[b, m] k[b, m]^T, padded keys excluded) v[b, m]
    q [B, M, H, Lq, d]; k, v [B, M, H, Lk, d]; weight [B, M]; key_padding_mask [B, M, Lk]
    bool (True = padding) or None; scale defaults to 1/sqrt(d). fp32/fp16/bf16 with fp32
    accumulation, output in q's dtype. A query row whose keys are all padding gives zeros
    and zero gradients. Differentiable in q, k, v and weight; works under
    ``torch.compile(fullgraph=True)``. Non-contiguous q/k/v are made contiguous once, here
    (a copy), so the op and its backward see contiguous tensors.

Backends are chosen once, at import (see ``_loader``):

* ``compiled``  -- the extension ``kuda_mmsa._C`` built with the package (C++ CPU kernel;
  CUDA kernel when it was built with CUDA);
* ``jit``       -- opt-in: with ``KUDA_MMSA_JIT=1`` and no usable ``_C``, ``csrc/`` of a source
  checkout is compiled with ninja on import (this can take minutes the first time; the
  result is cached under ``$KUDA_MMSA_CACHE`` or ``~/.cache/kuda_mmsa``). Never automatic;
* ``reference`` -- the exact pure-PyTorch ``ratio_cross_attention_reference``.

``KUDA_MMSA_KERNELS=auto`` (default) takes the first available per device;
``reference`` always runs the reference; ``require`` raises when the compiled op is
missing (at import), or cannot run the given inputs (at call). A missing or
ABI-mismatched extension never breaks ``import kuda_mmsa``: one warning, then the
reference. ``backend()`` reports the choice, e.g. ``{"cpu": "compiled", "cuda": "reference"}``.

Inputs the kernels do not take (mixed q/k/v dtypes, other dtypes, d > 128 on CUDA) run
the reference (or raise under ``require``). fp64 is one of them: the compiled kernels compute
in fp32 and refuse fp64 with a clear error, so fp64 inputs (``torch.autograd.gradcheck``)
run the reference, which then computes in fp64, never downcasting.

CUDA routing: measured as GPU time on an H200, the fused CUDA kernels win in fp32 where the
keys are few (the DAF blocks attend over the text length, ~50 keys: 1.27x SDPA forward +
backward) or the heads narrow (head dim 16: 1.5x at 925 keys), and lose to PyTorch's SDPA
elsewhere, in fp16/bf16 at every length. In ``auto`` mode every other CUDA call therefore
runs as SDPA over the M stacked sources with the weight applied afterwards
(``attention_by_sdpa``), with the same contract (an all-padding row gives zeros and zero
gradients); ``require`` always runs the kernel. ``route(q, k, v, weight)`` says which one a
call takes.

Tensor cores (opt-in): with ``KUDA_MMSA_TC=1`` (read at every call, so it can be switched at
run time), fp16/bf16 inputs on an sm_80+ GPU run a FlashAttention-style WMMA kernel (fp32
accumulation; softmax probabilities and their gradients rounded to the input dtype before
the tensor-core products, as FlashAttention does); fp32 inputs and older GPUs keep the
SIMT kernels, which stay the default. ``backend()["cuda_tc"]`` says "on" or "off".
"""
from __future__ import annotations

import math
import os
from typing import Dict, Optional

import torch

from . import _loader
from .reference import ratio_cross_attention_reference

_MODE = _loader.mode()
_BACKEND: Dict[str, str] = _loader.load(_MODE)
if any(v != "reference" for v in _BACKEND.values()):
    from . import _registration  # noqa: F401  (fake kernels + autograd formula)

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


TC_ENV = "KUDA_MMSA_TC"


def tensor_cores_requested() -> bool:
    """KUDA_MMSA_TC=1 (the C++ side reads the same variable at every call)."""
    return os.environ.get(TC_ENV, "") == "1"


def backend() -> Dict[str, str]:
    """What runs on each device: "compiled", "jit" or "reference"; and "cuda_tc": "on" when
    fp16/bf16 CUDA inputs take the tensor-core kernels (KUDA_MMSA_TC=1 and a compiled CUDA
    op; GPUs older than sm_80 still run the SIMT kernels), else "off"."""
    b = dict(_BACKEND)
    b["cuda_tc"] = "on" if b.get("cuda", "reference") != "reference" and tensor_cores_requested() else "off"
    return b


def compiled(device_type: str) -> bool:
    """Whether a compiled (or JIT-built) kernel serves this device type."""
    return _BACKEND.get(device_type, "reference") != "reference"


def _kernel_takes(q, k, v, weight, key_padding_mask) -> Optional[str]:
    """None if the compiled op can run these inputs, else the reason it cannot."""
    if not compiled(q.device.type):
        return f"no compiled kuda_mmsa kernel for device '{q.device.type}' (backend(): {_BACKEND})"
    if q.dim() != 5:
        return "q must be 5-d"
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _DTYPES:
        return f"q, k, v must share one of {_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if not weight.is_floating_point():
        return "weight must be floating point"
    if q.device.type == "cuda" and q.shape[-1] > 128:
        return f"head dim {q.shape[-1]} > 128 is not supported by the CUDA kernel"
    return None


# CUDA routing (auto mode), from GPU time per call on an H200 (tools/bench_kernels.py, calls
# replayed from CUDA graphs as the captured training step runs them; SDPA = cuDNN/flash or
# memory-efficient): the kernels win in fp32 at up to 64 keys (1.24x forward, 1.27x forward +
# backward at the DAF shape) and at head dim 16 (1.5-1.6x at 925 keys), tie in fp32 at 128
# keys and lose from there; in fp16/bf16 SDPA's tensor-core kernels win at every length
# (the SIMT kernel: 0.66x forward + backward at 50 keys, 0.14x at 500).
CUDA_KERNEL_MAX_KEYS = 64
CUDA_KERNEL_FP32_MAX_HEAD_DIM = 16


def route(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, weight: torch.Tensor) -> str:
    """"kernel", "sdpa" or "reference": what ratio_cross_attention runs for these inputs."""
    if q.dim() == 5 and q.device.type == "cuda" and _MODE == "auto" and not (
            q.dtype == torch.float32
            and (k.shape[3] <= CUDA_KERNEL_MAX_KEYS or q.shape[-1] <= CUDA_KERNEL_FP32_MAX_HEAD_DIM)):
        return "sdpa"
    return "kernel" if _kernel_takes(q, k, v, weight, None) is None else "reference"


def attention_by_sdpa(q, k, v, weight, key_padding_mask=None, scale=None) -> torch.Tensor:
    """ratio_cross_attention computed by scaled_dot_product_attention over the B*M stacked
    sources, then the weight. A (b, m) whose keys are all padding attends to all of them (so
    SDPA is defined) with weight 0, hence zeros and zero gradients, as the kernels give."""
    b, m, h, lq, d = q.shape
    lk = k.shape[3]
    attn_mask = None
    if key_padding_mask is not None:
        keep = key_padding_mask.logical_not()                                # [B, M, Lk]
        alive = keep.any(-1, keepdim=True)                                   # [B, M, 1]
        attn_mask = (keep | ~alive).view(b * m, 1, 1, lk)   # a dead (b, m) attends to all keys ...
        weight = weight * alive[..., 0]                     # ... and weighs 0
    o = torch.nn.functional.scaled_dot_product_attention(
        q.reshape(b * m, h, lq, d), k.reshape(b * m, h, lk, d), v.reshape(b * m, h, lk, d),
        attn_mask=attn_mask, scale=scale)
    return (o.view(b, m, h, lq, d) * weight.to(o.dtype)[:, :, None, None, None]).to(q.dtype)


def ratio_cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    weight: torch.Tensor,
    key_padding_mask: Optional[torch.Tensor] = None,
    scale: Optional[float] = None,
) -> torch.Tensor:
    """Fused ratio-weighted cross-attention over M stacked sources (see module docstring)."""
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if route(q, k, v, weight) == "sdpa":
        return attention_by_sdpa(q, k, v, weight, key_padding_mask, scale)
    why_not = _kernel_takes(q, k, v, weight, key_padding_mask)
    if why_not is None:
        if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
            key_padding_mask = key_padding_mask.to(torch.bool)
        return torch.ops.kuda_mmsa.ratio_cross_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), weight, key_padding_mask, float(scale)
        )
    if _MODE == "require":
        raise RuntimeError(f"KUDA_MMSA_KERNELS=require: {why_not}")
    return ratio_cross_attention_reference(q, k, v, weight, key_padding_mask, scale)


__all__ = ["ratio_cross_attention", "ratio_cross_attention_reference", "attention_by_sdpa", "route", "backend",
           "compiled", "tensor_cores_requested", "CUDA_KERNEL_MAX_KEYS", "CUDA_KERNEL_FP32_MAX_HEAD_DIM"]
