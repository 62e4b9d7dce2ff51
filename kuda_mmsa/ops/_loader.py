"""Finds the compiled op library and decides, once, which backend runs on each device.

Order for ``KUDA_MMSA_KERNELS=auto`` (the default):
1. the compiled extension ``kuda_mmsa._C`` (built by ``pip install`` / ``setup.py build_ext``);
2. a JIT build of ``csrc/`` with ``torch.utils.cpp_extension.load`` -- only when
   ``KUDA_MMSA_JIT=1``, a C++ compiler and ninja are present and the sources are there
   (a source checkout); cached under ``$KUDA_MMSA_CACHE`` or ``~/.cache/kuda_mmsa``;
3. the pure-PyTorch reference.
A library that is missing or fails to load (ABI mismatch) gives one warning, never an
import error. ``KUDA_MMSA_KERNELS=reference`` skips 1 and 2 silently;
``KUDA_MMSA_KERNELS=require`` turns a missing compiled op into an error.
"""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch

LIB = "kuda_mmsa"
FWD = f"{LIB}::_ratio_cross_attention_fwd"
MODES = ("auto", "reference", "require")


def mode() -> str:
    m = os.environ.get("KUDA_MMSA_KERNELS", "auto").strip().lower() or "auto"
    if m not in MODES:
        warnings.warn(f"KUDA_MMSA_KERNELS={m!r} is not one of {MODES}; using 'auto'", stacklevel=3)
        m = "auto"
    return m


def _ops_registered() -> bool:
    try:
        getattr(getattr(torch.ops, LIB), "_ratio_cross_attention_fwd")
        return True
    except (AttributeError, RuntimeError):
        return False


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(FWD, dispatch_key))
    except Exception:
        return False


def _source_dir() -> Optional[Path]:
    root = Path(__file__).resolve().parents[2] / "csrc"
    return root if (root / "ratio_attention.cpp").is_file() else None


def _jit_build() -> None:
    from torch.utils import cpp_extension

    src = _source_dir()
    if src is None:
        raise RuntimeError("the C++ sources (csrc/) are not next to the package: JIT needs a source checkout")
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        raise RuntimeError("no C++ compiler found")
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed")
    sources = [str(p) for p in sorted(src.glob("*.cpp"))]
    with_cuda = bool(torch.version.cuda) and cpp_extension.CUDA_HOME is not None and torch.cuda.is_available()
    if with_cuda:
        sources += [str(p) for p in sorted((src / "cuda").glob("*.cu"))]
    tag = f"torch{torch.__version__.replace('+', '_')}_{'cuda' if with_cuda else 'cpu'}"
    cache = Path(os.environ.get("KUDA_MMSA_CACHE", Path.home() / ".cache" / "kuda_mmsa")) / tag
    cache.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name="kuda_mmsa_jit",
        sources=sources,
        extra_cflags=["-O3", "-fopenmp", "-fno-trapping-math", "-fno-math-errno"] + (["-DKUDA_WITH_CUDA"] if with_cuda else []),
        extra_ldflags=["-fopenmp"],
        extra_cuda_cflags=["-O3", "--use_fast_math", "-DKUDA_WITH_CUDA"],
        build_directory=str(cache),
        is_python_module=False,
        verbose=os.environ.get("KUDA_MMSA_JIT_VERBOSE") == "1",
    )


def load(m: Optional[str] = None) -> Dict[str, str]:
    """Loads the op library if allowed (``m``: the mode already read, else read here, so that
    an unknown value warns once); returns {"cpu": ..., "cuda": ...} with values "compiled",
    "jit" or "reference"."""
    m = mode() if m is None else m
    if m == "reference":
        return {"cpu": "reference", "cuda": "reference"}
    source = None
    problems = []
    if _ops_registered():
        source = "compiled"
    else:
        try:
            from kuda_mmsa import _C  # noqa: F401  (loading the library registers the ops)

            source = "compiled"
        except Exception as e:  # missing, or built against another torch (ABI mismatch)
            problems.append(f"kuda_mmsa._C could not be loaded ({type(e).__name__}: {e})")
    if source is None and os.environ.get("KUDA_MMSA_JIT") == "1":
        try:
            _jit_build()
            source = "jit"
        except Exception as e:
            problems.append(f"JIT build failed ({type(e).__name__}: {e})")
    if source is None or not _ops_registered():
        if m == "require":
            raise RuntimeError(
                "KUDA_MMSA_KERNELS=require but the compiled kuda_mmsa op is missing: "
                + "; ".join(problems)
                + ". Build it with `pip install --no-build-isolation -e .` (or set KUDA_MMSA_JIT=1)."
            )
        hint = "" if os.environ.get("KUDA_MMSA_JIT") == "1" else " (set KUDA_MMSA_JIT=1 to build it on first import)"
        warnings.warn(
            "kuda_mmsa: fused kernels unavailable, using the PyTorch reference: " + "; ".join(problems) + hint,
            RuntimeWarning,
            stacklevel=3,
        )
        return {"cpu": "reference", "cuda": "reference"}
    return {
        "cpu": source if _has_kernel("CPU") else "reference",
        "cuda": source if _has_kernel("CUDA") else "reference",
    }
