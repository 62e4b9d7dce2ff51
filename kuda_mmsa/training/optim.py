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


def make_adamw(params, lr: float, weight_decay: float, capturable: bool = False) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where this torch has one for the device (no per-step
    temporaries the size of the parameters: less peak memory, faster), else the default.

    ``capturable``: for a step replayed from a CUDA graph. The step count and the learning rate
    then live on the GPU (the rate as a tensor that the schedule overwrites in place), so the
    graph reads their current values at every replay."""
    params = list(params)
    if capturable:
        device = params[0].device
        return torch.optim.AdamW(params, lr=torch.tensor(float(lr), device=device), weight_decay=weight_decay,
                                 fused=True, capturable=True)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float):
    """Linear warm-up then cosine decay, stepped once per optimiser step.

    A rate held as a tensor (``make_adamw(capturable=True)``) keeps a Python base rate, so
    that each step writes the new rate with one fill_ instead of computing it on the GPU and
    reading it back (a host sync per step)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group.setdefault("initial_lr", float(group["lr"]))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup_ratio))


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` that keeps this optimiser's own kind: a state saved
    by a capturable optimiser (rate as a tensor) resumes a plain one and the other way round."""
    kinds = [(g.get("capturable", False), g["lr"]) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, (capturable, lr) in zip(optimizer.param_groups, kinds):
        saved = float(group["lr"])
        group["capturable"] = capturable
        if isinstance(lr, torch.Tensor):
            lr.fill_(saved)
            group["lr"] = lr
        else:
            group["lr"] = saved
        if isinstance(group.get("initial_lr"), torch.Tensor):
            group["initial_lr"] = float(group["initial_lr"])
