"""The Python side of the fused op (kuda_mmsa.ops), in-process: how the backend is chosen
(KUDA_MMSA_KERNELS, a missing or broken library, the opt-in JIT build and why it fails), which
inputs the compiled op takes, and that the public op equals its definition written here
whatever mask dtype it is given. tests/test_ops.py checks the same choices in fresh
interpreters; these run in this process so that mutation testing sees them.
"""
import math
from pathlib import Path
import sys
import warnings

import pytest
import torch

from kuda_mmsa import ops
from kuda_mmsa.ops import _loader


# ---------------------------------------------------------------------- KUDA_MMSA_KERNELS
@pytest.mark.parametrize("value, want", [(None, "auto"), ("", "auto"), ("  Reference ", "reference"),
                                         ("REQUIRE", "require"), ("auto", "auto")])
def test_the_kernels_mode_is_read_from_the_environment(monkeypatch, value, want):
    if value is None:
        monkeypatch.delenv("KUDA_MMSA_KERNELS", raising=False)
    else:
        monkeypatch.setenv("KUDA_MMSA_KERNELS", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a valid value warns about nothing
        assert _loader.mode() == want


def test_an_unknown_kernels_mode_warns_and_means_auto(monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "fast")
    with pytest.warns(UserWarning, match=r"KUDA_MMSA_KERNELS='fast' is not one of \('auto', 'reference', "
                                         r"'require'\); using 'auto'"):
        assert _loader.mode() == "auto"


def test_reference_mode_loads_nothing(monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "reference")
    monkeypatch.setattr(_loader, "_ops_registered", lambda: pytest.fail("reference mode must not look for the op"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _loader.load() == {"cpu": "reference", "cuda": "reference"}


def test_the_built_extension_serves_the_cpu(monkeypatch):
    """This checkout is built (pip install -e .): its op is registered and has a CPU kernel."""
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "auto")
    assert _loader._ops_registered() and _loader._has_kernel("CPU")
    assert not _loader._has_kernel("NoSuchDispatchKey")
    got = _loader.load()
    assert got["cpu"] == "compiled" and got["cuda"] in ("compiled", "reference")
    assert got["cuda"] == ("compiled" if _loader._has_kernel("CUDA") else "reference")


@pytest.fixture
def no_library(monkeypatch):
    """As if kuda_mmsa._C were missing: nothing registered, the import fails."""
    import kuda_mmsa

    monkeypatch.setattr(_loader, "_ops_registered", lambda: False)
    monkeypatch.delattr(kuda_mmsa, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "kuda_mmsa._C", None)      # import -> ImportError
    monkeypatch.delenv("KUDA_MMSA_JIT", raising=False)


def test_a_missing_library_warns_once_and_falls_back_to_the_reference(no_library, monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "auto")
    with pytest.warns(RuntimeWarning) as w:
        assert _loader.load() == {"cpu": "reference", "cuda": "reference"}
    assert len(w) == 1
    text = str(w[0].message)
    assert text.startswith("kuda_mmsa: fused kernels unavailable, using the PyTorch reference: "
                           "kuda_mmsa._C could not be loaded (ModuleNotFoundError: ")
    assert text.endswith(" (set KUDA_MMSA_JIT=1 to build it on first import)")


def test_require_turns_a_missing_library_into_an_error_naming_the_fix(no_library, monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "require")
    with pytest.raises(RuntimeError, match=r"KUDA_MMSA_KERNELS=require but the compiled kuda_mmsa op is missing: "
                                           r"kuda_mmsa._C could not be loaded \(ModuleNotFoundError: .*\)\. Build it with "
                                           r"`pip install --no-build-isolation -e \.`"):
        _loader.load()


def test_the_jit_build_runs_only_when_opted_in_and_its_failure_is_named(no_library, monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "auto")
    calls = []

    def failing_build():
        calls.append(1)
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(_loader, "_jit_build", failing_build)
    with pytest.warns(RuntimeWarning):
        _loader.load()
    assert calls == []                              # not opted in: never built
    monkeypatch.setenv("KUDA_MMSA_JIT", "1")
    with pytest.warns(RuntimeWarning) as w:
        assert _loader.load() == {"cpu": "reference", "cuda": "reference"}
    text = str(w[0].message)
    assert calls == [1] and "; JIT build failed (RuntimeError: no C++ compiler found)" in text
    assert "set KUDA_MMSA_JIT=1" not in text        # already set: no such hint


def test_a_jit_build_serves_the_devices_it_registered(monkeypatch):
    """A JIT build that registered the op reports "jit" where it has a kernel; one that did
    not register it falls back to the reference."""
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "auto")
    monkeypatch.setenv("KUDA_MMSA_JIT", "1")
    import kuda_mmsa

    monkeypatch.delattr(kuda_mmsa, "_C", raising=False)
    monkeypatch.setitem(sys.modules, "kuda_mmsa._C", None)
    registered = {"now": False}
    monkeypatch.setattr(_loader, "_ops_registered", lambda: registered["now"])
    monkeypatch.setattr(_loader, "_jit_build", lambda: registered.update(now=True))
    monkeypatch.setattr(_loader, "_has_kernel", lambda key: key == "CPU")
    assert _loader.load() == {"cpu": "jit", "cuda": "reference"}
    monkeypatch.setattr(_loader, "_jit_build", lambda: None)     # built, but nothing registered
    registered["now"] = False
    with pytest.warns(RuntimeWarning):
        assert _loader.load() == {"cpu": "reference", "cuda": "reference"}


def test_the_jit_build_names_what_it_lacks(monkeypatch, tmp_path):
    from torch.utils import cpp_extension

    monkeypatch.setattr(_loader, "_source_dir", lambda: None)
    with pytest.raises(RuntimeError, match=r"the C\+\+ sources \(csrc/\) are not next to the package"):
        _loader._jit_build()
    monkeypatch.setattr(_loader, "_source_dir", lambda: tmp_path)
    monkeypatch.setenv("CXX", "no-such-compiler-kuda")
    with pytest.raises(RuntimeError, match=r"no C\+\+ compiler found"):
        _loader._jit_build()
    monkeypatch.setenv("CXX", sys.executable)            # any program that exists
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(RuntimeError, match="ninja is not installed"):
        _loader._jit_build()
    seen = {}
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: seen.update(kw))
    monkeypatch.setenv("KUDA_MMSA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "a.cpp").write_text("")
    _loader._jit_build()
    assert seen["name"] == "kuda_mmsa_jit" and seen["sources"] == [str(tmp_path / "a.cpp")]
    assert seen["is_python_module"] is False and "-fopenmp" in seen["extra_ldflags"]
    assert Path(seen["build_directory"]).parent == tmp_path / "cache" and Path(seen["build_directory"]).is_dir()


def test_a_source_checkout_has_its_csrc():
    src = _loader._source_dir()
    assert src is not None and (src / "ratio_attention.cpp").is_file() and src.name == "csrc"


# ---------------------------------------------------------------------- the public op
def _definition(q, k, v, w, pad, scale):
    """out[b, m] = w[b, m] * softmax(scale * q k^T, padded keys excluded) v, in float64."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale
    if pad is not None:
        s = s.masked_fill(pad[:, :, None, None, :].bool(), float("-inf"))
    return (torch.softmax(s, -1) @ v.double()) * w.double()[:, :, None, None, None]


def _inputs(seed=0, d=8):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 2, 4, d, generator=g)
    k, v = torch.randn(2, 3, 2, 5, d, generator=g), torch.randn(2, 3, 2, 5, d, generator=g)
    w = torch.rand(2, 3, generator=g)
    pad = torch.zeros(2, 3, 5, dtype=torch.bool)
    pad[0, 1, 3:] = True
    pad[1, 2, 1:] = True
    return q, k, v, w, pad


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.float32])
def test_the_op_is_its_definition_for_any_mask_dtype_and_the_default_scale(mask_dtype):
    q, k, v, w, pad = _inputs()
    want = _definition(q, k, v, w, pad, 1 / math.sqrt(q.shape[-1]))
    got = ops.ratio_cross_attention(q, k, v, w, pad.to(mask_dtype))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    got = ops.ratio_cross_attention(q, k, v, w, pad, scale=0.3)
    torch.testing.assert_close(got.double(), _definition(q, k, v, w, pad, 0.3), rtol=1e-5, atol=1e-5)


def test_the_compiled_op_takes_only_what_it_can_run():
    q, k, v, w, _ = _inputs()
    assert ops.route(q, k, v, w) == "kernel"
    assert ops.route(q[0], k[0], v[0], w) == "reference"                             # not 5-d
    assert ops.route(q, k.half(), v, w) == "reference"                                # mixed dtypes
    assert ops.route(q.double(), k.double(), v.double(), w) == "reference"            # fp64: never downcast
    assert ops.route(q.half(), k.half(), v.half(), w) == "kernel"
    assert ops.route(q, k, v, (w > 0.5).long()) == "reference"                       # integer weight
    assert ops.compiled("cpu") and not ops.compiled("no-such-device")


def test_require_refuses_inputs_the_kernel_cannot_run(monkeypatch):
    q, k, v, w, pad = _inputs()
    monkeypatch.setattr(ops, "_MODE", "require")
    with pytest.raises(RuntimeError, match=r"KUDA_MMSA_KERNELS=require: q, k, v must share one of"):
        ops.ratio_cross_attention(q, k.double(), v, w, pad)
    monkeypatch.setattr(ops, "_MODE", "auto")       # auto: the reference runs them
    got = ops.ratio_cross_attention(q.double(), k.double(), v.double(), w.double(), pad)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, _definition(q, k, v, w, pad, 1 / math.sqrt(8)), rtol=1e-12, atol=1e-12)


def test_tensor_cores_are_asked_for_with_kuda_mmsa_tc_1(monkeypatch):
    monkeypatch.setenv("KUDA_MMSA_TC", "1")
    assert ops.tensor_cores_requested()
    assert ops.backend()["cuda_tc"] == ("on" if ops.compiled("cuda") else "off")
    monkeypatch.setenv("KUDA_MMSA_TC", "0")
    assert not ops.tensor_cores_requested() and ops.backend()["cuda_tc"] == "off"
    monkeypatch.setattr(ops, "_BACKEND", {"cpu": "compiled", "cuda": "compiled"})
    assert ops.backend()["cuda_tc"] == "off"
    monkeypatch.setenv("KUDA_MMSA_TC", "1")
    assert ops.backend() == {"cpu": "compiled", "cuda": "compiled", "cuda_tc": "on"}
    monkeypatch.setattr(ops, "_BACKEND", {"cpu": "compiled", "cuda": "reference"})
    assert ops.backend()["cuda_tc"] == "off"


# ---------------------------------------------------------------------- CUDA routing
def _cuda_like(lk, d, dtype=torch.float32):
    """q, k, v, weight as CUDA tensors without a GPU (fake tensors: shapes, dtypes and
    devices only, no data), for the routing decision, which reads nothing else."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(2, 3, 2, 4, d, dtype=dtype, device="cuda")
        k = torch.empty(2, 3, 2, lk, d, dtype=dtype, device="cuda")
        w = torch.empty(2, 3, device="cuda")
    return q, k, k, w


@pytest.mark.parametrize("mode", ["auto", "require"])
def test_cuda_calls_take_the_route_the_docstring_gives(monkeypatch, mode):
    """With a compiled CUDA op, auto mode runs the kernel in fp32 where the keys are at most
    CUDA_KERNEL_MAX_KEYS (64) or the head dim at most CUDA_KERNEL_FP32_MAX_HEAD_DIM (16), and
    SDPA for every other call (fp16/bf16 always); require always takes the kernel; a head dim
    over 128 is not the CUDA kernel's (the reference then), though it is the CPU kernel's."""
    monkeypatch.setattr(ops, "_BACKEND", {"cpu": "compiled", "cuda": "compiled"})
    monkeypatch.setattr(ops, "_MODE", mode)
    sdpa = "sdpa" if mode == "auto" else "kernel"
    assert (ops.CUDA_KERNEL_MAX_KEYS, ops.CUDA_KERNEL_FP32_MAX_HEAD_DIM) == (64, 16)
    cases = [  # (keys, head dim, dtype), route
        ((64, 32, torch.float32), "kernel"), ((65, 32, torch.float32), sdpa),
        ((500, 16, torch.float32), "kernel"), ((500, 17, torch.float32), sdpa),
        ((64, 128, torch.float32), "kernel"), ((8, 16, torch.float16), sdpa), ((8, 16, torch.bfloat16), sdpa),
    ]
    for (lk, d, dtype), want in cases:
        assert ops.route(*_cuda_like(lk, d, dtype)) == want, (lk, d, dtype)
    assert ops.route(*_cuda_like(8, 129)) == "reference"                    # d > 128: not the CUDA kernel's
    q, k, v, w, _ = _inputs(d=130)
    assert ops.route(q, k, v, w) == "kernel"                                 # the CPU kernel takes it
    monkeypatch.setattr(ops, "_BACKEND", {"cpu": "compiled", "cuda": "reference"})
    assert ops.route(*_cuda_like(8, 32)) == "reference"                      # no CUDA op built


def test_a_call_routed_to_sdpa_is_the_definition_with_its_mask_and_default_scale(monkeypatch):
    """What auto mode runs for long keys on CUDA (SDPA, then the weight), here on the CPU:
    the op's definition, with the mask and the default scale 1/sqrt(d) it was given."""
    q, k, v, w, pad = _inputs(seed=4)
    monkeypatch.setattr(ops, "route", lambda *a: "sdpa")
    got = ops.ratio_cross_attention(q, k, v, w, pad)
    torch.testing.assert_close(got.double(), _definition(q, k, v, w, pad, 1 / math.sqrt(8)), rtol=1e-5, atol=1e-5)
    got = ops.ratio_cross_attention(q, k, v, w, pad, scale=0.3)
    torch.testing.assert_close(got.double(), _definition(q, k, v, w, pad, 0.3), rtol=1e-5, atol=1e-5)
