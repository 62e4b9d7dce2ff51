"""Numeric precision of the forward pass: the ``precision`` key (auto | fp32 | bf16).

``auto`` chooses bfloat16 autocast only where the hardware computes it natively: a CUDA GPU
that supports bf16, or a CPU with AVX512-BF16 or AMX-BF16 (read from /proc/cpuinfo at run
time) on which torch runs its AVX512 kernels (not capped by ATEN_CPU_CAPABILITY). Elsewhere
bf16 is emulated (about 10x slower than fp32 on an AVX2-only CPU), so auto means fp32 there. The decision is a pure function of the detected capabilities
(``choose``), and the run logs what was chosen and why.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import FrozenSet, Tuple

import torch

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Capabilities:
    device_type: str                                 # "cpu" | "cuda" | ...
    cpu_flags: FrozenSet[str] = field(default_factory=frozenset)
    cuda_bf16: bool = False
    # torch's CPU kernel level (torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2",
    # ...); below AVX512 when capped with ATEN_CPU_CAPABILITY, "" when unknown
    cpu_capability: str = ""


def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def detect(device) -> Capabilities:
    device = torch.device(device)
    if device.type == "cuda":
        return Capabilities("cuda", cuda_bf16=bool(torch.cuda.is_bf16_supported()))
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # an older torch without the query
        capability = ""
    return Capabilities(device.type, cpu_flags=cpu_flags(), cpu_capability=capability)


def choose(requested: str, caps: Capabilities) -> Tuple[str, str]:
    """(precision, reason) for the ``precision`` key on hardware ``caps``."""
    if requested != "auto":
        return requested, f"precision: {requested} in the config"
    if caps.device_type == "cuda":
        if caps.cuda_bf16:
            return "bf16", "auto: this GPU computes bfloat16 natively"
        return "fp32", "auto: this GPU has no bfloat16 support"
    if caps.device_type == "cpu":
        native = [f for f in NATIVE_BF16_CPU_FLAGS if f in caps.cpu_flags]
        if native and caps.cpu_capability and not caps.cpu_capability.startswith("AVX512"):
            return "fp32", (f"auto: the CPU has {', '.join(native)}, but torch runs its CPU kernels at "
                            f"{caps.cpu_capability} (ATEN_CPU_CAPABILITY), where bfloat16 is emulated")
        if native:
            return "bf16", f"auto: the CPU has native bfloat16 ({', '.join(native)})"
        return "fp32", ("auto: the CPU has no AVX512-BF16/AMX (bfloat16 would be emulated, "
                        "about 10x slower)")
    return "fp32", f"auto: no bfloat16 rule for device type '{caps.device_type}'"


def autocast(device, precision: str):
    """Autocast context for the forward pass ('fp32': none)."""
    dtype = DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    # No weight-cast cache: it would hold a bf16 copy of every weight until the step ends.
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype, cache_enabled=False)
