"""Optimiser and learning-rate schedule shared by stage 1 and stage 2."""
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
