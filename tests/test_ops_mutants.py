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


@pytest.mark.parametrize("cuda_build, cuda_home, gpu", [(None, None, False), ("12.4", "/usr/local/cuda", True),
                                                        (None, "/usr/local/cuda", True), ("12.4", None, True),
                                                        ("12.4", "/usr/local/cuda", False)])
def test_the_jit_build_compiles_the_cuda_sources_only_with_cuda_torch_toolkit_and_gpu(
        monkeypatch, tmp_path, cuda_build, cuda_home, gpu):
    """csrc/cuda/*.cu join the build (with -DKUDA_WITH_CUDA, in a '..._cuda' cache folder) only
    when torch is a CUDA build, the CUDA toolkit is found and a GPU is there; else a CPU-only
    build of csrc/*.cpp. The cache folder is reused by the next build; the compiler is quiet
    unless KUDA_MMSA_JIT_VERBOSE=1."""
    from torch.utils import cpp_extension

    (tmp_path / "src" / "cuda").mkdir(parents=True)
    for name in ("b.cpp", "a.cpp", "cuda/k.cu"):
        (tmp_path / "src" / name).write_text("")
    monkeypatch.setattr(_loader, "_source_dir", lambda: tmp_path / "src")
    monkeypatch.setenv("CXX", sys.executable)
    monkeypatch.setenv("KUDA_MMSA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("KUDA_MMSA_JIT_VERBOSE", raising=False)
    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", cuda_build)
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", cuda_home)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    calls = []
    monkeypatch.setattr(cpp_extension, "load", lambda **kw: calls.append(kw))
    _loader._jit_build()
    _loader._jit_build()                                 # the cache folder exists: built again there
    monkeypatch.setenv("KUDA_MMSA_JIT_VERBOSE", "1")
    _loader._jit_build()
    with_cuda = bool(cuda_build and cuda_home and gpu)
    cpp = [str(tmp_path / "src" / n) for n in ("a.cpp", "b.cpp")]
    first = calls[0]
    assert first["sources"] == cpp + ([str(tmp_path / "src" / "cuda" / "k.cu")] if with_cuda else [])
    assert ("-DKUDA_WITH_CUDA" in first["extra_cflags"]) == with_cuda and "-O3" in first["extra_cflags"]
    assert "-DKUDA_WITH_CUDA" in first["extra_cuda_cflags"]
    tag = f"torch{torch.__version__.replace('+', '_')}_{'cuda' if with_cuda else 'cpu'}"
    assert Path(first["build_directory"]) == tmp_path / "cache" / tag and Path(first["build_directory"]).is_dir()
    assert [c["build_directory"] for c in calls] == [first["build_directory"]] * 3
    assert [c["verbose"] for c in calls] == [False, False, True]


def _import_ops_afresh():
    """Run kuda_mmsa/ops/__init__.py again as a fresh module (not put in sys.modules), as
    `import kuda_mmsa.ops` runs it; returns (the module, the line of this file that ran it)."""
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("kuda_mmsa.ops", ops.__file__,
                                                  submodule_search_locations=list(ops.__path__))
    module = importlib.util.module_from_spec(spec)
    line = inspect.currentframe().f_lineno + 1
    spec.loader.exec_module(module)
    return module, line


def test_the_import_warnings_name_the_line_that_imported_the_ops(no_library, monkeypatch):
    """A missing library, or an unknown KUDA_MMSA_KERNELS, is reported at the user's import
    line (where `import kuda_mmsa.ops` ran), not inside the package."""
    monkeypatch.setenv("KUDA_MMSA_KERNELS", "fast")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fresh, line = _import_ops_afresh()
    assert fresh.backend() == {"cpu": "reference", "cuda": "reference", "cuda_tc": "off"}
    missing = [w for w in seen if issubclass(w.category, RuntimeWarning)]
    mode = [w for w in seen if "KUDA_MMSA_KERNELS='fast'" in str(w.message)]
    assert len(missing) == 1 and (missing[0].filename, missing[0].lineno) == (__file__, line)
    assert mode and (mode[0].filename, mode[0].lineno) == (__file__, line)


def test_the_op_without_a_mask_attends_to_every_key():
    q, k, v, w, _ = _inputs(seed=7)
    for scale in (None, 0.3):
        got = ops.ratio_cross_attention(q, k, v, w, scale=scale)
        want = _definition(q, k, v, w, None, 1 / math.sqrt(q.shape[-1]) if scale is None else scale)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- fake kernels
_REFUSED = {  # inputs the compiled op refuses -> the words of its message
    "q not 5-d": (dict(q=(3, 2, 4, 8)), r"q must be \[B, M, H, Lq, d\]"),
    "k not 5-d": (dict(k=(3, 2, 5, 8), v=(3, 2, 5, 8)), r"k, v must be \[B, M, H, Lk, d\]"),
    "v shaped unlike k": (dict(v=(2, 3, 2, 4, 8)), r"k,? (and )?v (must be|shapes differ)"),
    "mixed dtypes": (dict(dtype_kv=torch.float64), r"q, k, v must share a dtype"),
    "weight not [B, M]": (dict(weight=(3,)), r"weight must be \[B, M\]"),
    "mask not bool": (dict(mask_dtype=torch.uint8), r"(key_padding_)?mask must be bool"),
}


def _raw_inputs(q=(2, 3, 2, 4, 8), k=(2, 3, 2, 5, 8), v=(2, 3, 2, 5, 8), weight=(2, 3),
                dtype_kv=torch.float32, mask_dtype=torch.bool):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(q, generator=g), torch.randn(k, generator=g).to(dtype_kv),
            torch.randn(v, generator=g).to(dtype_kv), torch.rand(weight, generator=g),
            torch.zeros(k[:2] + k[-2:-1], dtype=mask_dtype))


@pytest.mark.parametrize("case", list(_REFUSED))
def test_the_fake_kernels_refuse_what_the_compiled_kernels_refuse(case):
    """torch.compile traces the op with its fake (meta) kernels: they refuse each input the
    compiled CPU kernel refuses, with the same kind of message, forward and backward."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    over, words = _REFUSED[case]
    fwd, bwd = torch.ops.kuda_mmsa._ratio_cross_attention_fwd, torch.ops.kuda_mmsa._ratio_cross_attention_bwd
    good_q, good_k, good_v, good_w, good_mask = _raw_inputs()
    out, o_unw, lse = fwd(good_q, good_k, good_v, good_w, good_mask, 0.3)
    x = _raw_inputs(**over)
    grads = (torch.zeros(x[0].shape), torch.zeros(x[0].shape), torch.zeros(x[0].shape[:-1]))   # out, o_unw, lse
    pattern = r"^ratio_cross_attention: " + words
    for fake in (False, True):
        mode = FakeTensorMode() if fake else None
        with (mode if fake else torch.no_grad()):
            conv = (lambda t: mode.from_tensor(t)) if fake else (lambda t: t)
            args = [conv(t) for t in x]
            g_out, g_unw, g_lse = (conv(t) for t in grads)
            with pytest.raises(RuntimeError, match=pattern):
                fwd(*args, 0.3)
            with pytest.raises(RuntimeError, match=pattern):
                bwd(g_out, *args, g_unw, g_lse, 0.3)
    for fake in (False, True):                      # and they take the valid inputs
        mode = FakeTensorMode() if fake else None
        with (mode if fake else torch.no_grad()):
            conv = (lambda t: mode.from_tensor(t)) if fake else (lambda t: t)
            got = fwd(*(conv(t) for t in (good_q, good_k, good_v, good_w, good_mask)), 0.3)
            assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in (out, o_unw, lse)]
            got = bwd(*(conv(t) for t in (out, good_q, good_k, good_v, good_w, good_mask, o_unw, lse)), 0.3)
            assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in (good_q, good_k, good_v, good_w)]
