"""Optimiser, learning-rate schedule and numeric precision shared by stage 1 and stage 2."""
import contextlib
import math

import torch


def warmup_cosine(total_steps: int, warmup_ratio: float):
    warmup = max(int(total_steps * warmup_ratio), 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def make_adamw(params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where this torch has one for the device (no per-step
    temporaries the size of the parameters: less peak memory, faster), else the default."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def autocast(device, precision: str = "fp32"):
    """Mixed precision for the forward pass: 'bf16' runs matrix products in bfloat16 (CPUs with
    AVX512-BF16/AMX and recent GPUs do them much faster; no loss scaling needed), 'fp32' none."""
    if precision not in PRECISIONS:
        from .errors import KudaInputError

        raise KudaInputError(f"Config key 'precision' must be one of {sorted(PRECISIONS)}, found {precision!r}.")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    # No weight-cast cache: it would hold a bf16 copy of every weight until the step ends.
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=False)
