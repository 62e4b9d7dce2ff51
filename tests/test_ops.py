"""Tests of the fused ratio_cross_attention kernels against the exact PyTorch reference.

Tolerances (normalised max error, max|op - ref| / max(max|ref|, 1)), reference computed
in fp32 from the same (rounded) inputs:
    fp32: values 2e-5, gradients 1e-4
    fp16: values 2e-3, gradients 5e-3
    bf16: values 1e-2, gradients 2e-2
The CPU grid is a sampled subset (runs in seconds); the CUDA grid is larger and is
skipped (not failed) without a GPU. Kernel tests call torch.ops.kuda_mmsa directly so
they cannot silently compare the reference with itself.
"""
import itertools
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import kuda_mmsa.ops as ops
from kuda_mmsa.ops import ratio_cross_attention_reference as reference

ROOT = Path(__file__).resolve().parents[1]
TOL = {  # dtype: (values, gradients)
    torch.float32: (2e-5, 1e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1e-2, 2e-2),
}


def _op_loaded(device_key="CPU"):
    try:
        torch.ops.kuda_mmsa._ratio_cross_attention_fwd
    except (AttributeError, RuntimeError):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key("kuda_mmsa::_ratio_cross_attention_fwd", device_key)


HAS_CUDA = torch.cuda.is_available()
needs_cpu_op = pytest.mark.skipif(not _op_loaded("CPU"), reason="compiled kuda_mmsa op not built (run setup.py build_ext)")
needs_cuda_op = pytest.mark.skipif(
    not HAS_CUDA or not _op_loaded("CUDA"),
    reason="no CUDA GPU" if not HAS_CUDA else "extension built without CUDA kernels",
)


def make_inputs(B, M, H, Lq, Lk, d, dtype, device, masked, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, M, H, Lq, d, generator=g)
    k = torch.randn(B, M, H, Lk, d, generator=g)
    v = torch.randn(B, M, H, Lk, d, generator=g)
    w = torch.randn(B, M, generator=g)
    w.view(-1)[0] = 0.0  # a zero weight
    w.view(-1)[-1] = -1.5  # a negative weight
    mask = None
    if masked:
        mask = torch.rand(B, M, Lk, generator=g) < 0.35
        rng = random.Random(seed)
        for _ in range(max(1, (B * M) // 3)):  # random fully masked (b, m): all their rows see no key
            mask[rng.randrange(B), rng.randrange(M)] = True
        mask[..., 0] &= torch.rand(B, M, generator=g) < 0.5  # keep some rows alive
    to = lambda t: t.to(device=device, dtype=dtype)
    return to(q), to(k), to(v), w.to(device), (None if mask is None else mask.to(device))


def nerr(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values"
    return ((a - b).abs().max() / b.abs().max().clamp_min(1.0)).item() if b.numel() else 0.0


def check_against_reference(B, M, H, Lq, Lk, d, dtype, device, masked, seed=0, scale=None):
    q, k, v, w, mask = make_inputs(B, M, H, Lq, Lk, d, dtype, device, masked, seed)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    tv, tg = TOL[dtype]
    # op: the public C++ op (composes _ratio_cross_attention_fwd, backward via the registered formula)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    out.backward(gout)
    # reference in fp32 from the same rounded inputs
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, scale)
    ref.backward(gout.float())
    assert nerr(out, ref) < tv, f"values: {nerr(out, ref):.3e}"
    for name, a, b in zip("qkvw", leaves, rleaves):
        e = nerr(a.grad, b.grad)
        assert e < tg, f"grad {name}: {e:.3e}"
    if mask is not None:  # rows of a fully padded (b, m): exact zeros, zero gradients
        dead = mask.all(-1)
        if dead.any():
            assert (out.detach()[dead] == 0).all()
            assert (leaves[0].grad[dead] == 0).all()


# (B, M, H, Lq, Lk, d, masked) -- a representative sample, not the product
CPU_CASES = [
    (1, 1, 1, 1, 1, 16, False),
    (2, 3, 2, 7, 9, 16, True),
    (3, 2, 4, 50, 50, 64, True),
    (1, 4, 1, 300, 13, 32, True),
    (2, 1, 2, 13, 300, 64, False),
    (5, 3, 1, 65, 129, 128, True),
    (1, 2, 8, 1, 77, 64, True),
    (2, 2, 3, 33, 1, 32, False),
    (4, 3, 2, 17, 64, 40, True),  # d not a multiple of 16
    (1, 1, 2, 129, 65, 8, True),
]


@needs_cpu_op
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "B{}M{}H{}Lq{}Lk{}d{}{}".format(*c[:6], "m" if c[6] else ""))
def test_cpu_matches_reference_fp32(case):
    check_against_reference(*case[:6], torch.float32, "cpu", case[6])


@needs_cpu_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", [CPU_CASES[2], CPU_CASES[5], CPU_CASES[8]], ids=["daf", "d128", "d40"])
def test_cpu_matches_reference_half(case, dtype):
    check_against_reference(*case[:6], dtype, "cpu", case[6], seed=3)


@needs_cpu_op
@pytest.mark.parametrize("scale", [3.0, 1e-4])
def test_cpu_extreme_scales(scale):
    """Scores of hundreds (masked keys far above the valid ones) and nearly flat ones."""
    check_against_reference(2, 3, 2, 40, 70, 32, torch.float32, "cpu", True, seed=5, scale=scale)


def check_masked_keys_far_above_valid(device):
    """Valid scores near -96, masked ones near +96 (and padded tile columns at 0): any
    exp of a masked/padded score left unclamped overflows and 0 * inf gives NaN."""
    B, M, H, Lq, Lk, d = 1, 2, 1, 3, 10, 32
    q = torch.ones(B, M, H, Lq, d, device=device)
    k = torch.ones(B, M, H, Lk, d, device=device)
    k[..., :5, :] = -1.0
    v = torch.randn(B, M, H, Lk, d, generator=torch.Generator().manual_seed(0)).to(device)
    w = torch.tensor([[1.0, -2.0]], device=device)
    mask = torch.zeros(B, M, Lk, dtype=torch.bool, device=device)
    mask[..., 5:] = True
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, 3.0)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    out.backward(gout)
    rleaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, 3.0)
    ref.backward(gout)
    assert nerr(out, ref) < 1e-5
    for a, b in zip(leaves, rleaves):
        assert nerr(a.grad, b.grad) < 1e-4


@needs_cpu_op
def test_cpu_masked_keys_far_above_valid():
    check_masked_keys_far_above_valid("cpu")


@needs_cpu_op
@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_cpu_lower_isa_paths(isa):
    """The CPU kernel is compiled per ISA (baseline, AVX2, AVX-512) and picked at run time;
    KUDA_MMSA_CPU_ISA caps the choice so the paths this machine would not pick are checked."""
    r = _run_py(
        """
        import sys; sys.path.insert(0, "tests")
        import torch
        from test_ops import check_against_reference
        for case in [(2, 3, 2, 7, 9, 16, True), (1, 2, 3, 70, 130, 64, True), (2, 1, 1, 33, 65, 40, False)]:
            check_against_reference(*case[:6], torch.float32, "cpu", case[6])
        check_against_reference(1, 2, 2, 20, 50, 32, torch.bfloat16, "cpu", True)
        print("OK")
        """,
        KUDA_MMSA_CPU_ISA=isa,
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


@needs_cpu_op
def test_public_wrapper_uses_kernel_and_handles_noncontiguous():
    assert ops.backend()["cpu"] in ("compiled", "jit")
    q, k, v, w, mask = make_inputs(2, 3, 4, 20, 30, 32, torch.float32, "cpu", True)
    # non-contiguous views of the same values
    qn = q.transpose(3, 4).contiguous().transpose(3, 4)
    kn = k.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    assert not qn.is_contiguous() and not kn.is_contiguous()
    out = ops.ratio_cross_attention(qn, kn, v, w, mask)
    assert nerr(out, reference(q, k, v, w, mask)) < TOL[torch.float32][0]
    # default scale and int mask are accepted
    out2 = ops.ratio_cross_attention(q, k, v, w, mask.to(torch.uint8), scale=None)
    assert nerr(out2, reference(q, k, v, w, mask)) < TOL[torch.float32][0]


@needs_cpu_op
def test_fully_masked_gives_zeros_not_nan():
    q, k, v, w, _ = make_inputs(2, 2, 2, 5, 6, 16, torch.float32, "cpu", False)
    mask = torch.ones(2, 2, 6, dtype=torch.bool)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = ops.ratio_cross_attention(*leaves, mask)
    out.sum().backward()
    assert (out == 0).all()
    for t in leaves:
        assert torch.isfinite(t.grad).all() and (t.grad == 0).all()


@needs_cpu_op
def test_opcheck_cpu():
    q, k, v, w, mask = make_inputs(2, 2, 2, 9, 11, 16, torch.float32, "cpu", True)
    rg = lambda t: t.clone().requires_grad_()
    torch.library.opcheck(torch.ops.kuda_mmsa._ratio_cross_attention_fwd.default, (rg(q), rg(k), rg(v), rg(w), mask, 0.25))
    torch.library.opcheck(torch.ops.kuda_mmsa._ratio_cross_attention_fwd.default, (q, k, v, w, None, 0.25))
    torch.library.opcheck(torch.ops.kuda_mmsa.ratio_cross_attention.default, (rg(q), rg(k), rg(v), rg(w), mask, 0.25))
    out, o_unw, lse = torch.ops.kuda_mmsa._ratio_cross_attention_fwd(q, k, v, w, mask, 0.25)
    torch.library.opcheck(
        torch.ops.kuda_mmsa._ratio_cross_attention_bwd.default,
        (torch.randn_like(out), q, k, v, w, mask, o_unw, lse, 0.25),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


class TinyDAF(torch.nn.Module):
    """A DAF-like block: one target attends to M sources through the fused op."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.h, self.dh = heads, dim // heads
        self.q = torch.nn.Linear(dim, dim, bias=False)
        self.kv = torch.nn.Linear(dim, 2 * dim, bias=False)
        self.o = torch.nn.Linear(dim, dim)
        self.ln = torch.nn.LayerNorm(dim)

    def forward(self, target, sources, ratio, mask):
        B, L, D = target.shape
        M, Ls = sources.shape[1], sources.shape[2]
        q = self.q(target).view(B, 1, L, self.h, self.dh).transpose(2, 3).expand(B, M, self.h, L, self.dh)
        k, v = self.kv(sources).view(B, M, Ls, 2, self.h, self.dh).permute(3, 0, 1, 4, 2, 5)
        a = ops.ratio_cross_attention(q, k, v, M * ratio, mask)  # [B, M, H, L, dh]
        a = a.sum(1).transpose(1, 2).reshape(B, L, D)
        return self.ln(target + self.o(a))


def _tiny_daf_inputs(device):
    g = torch.Generator().manual_seed(7)
    target = torch.randn(2, 5, 32, generator=g)
    sources = torch.randn(2, 3, 6, 32, generator=g)
    ratio = torch.softmax(torch.randn(2, 3, generator=g), -1)
    mask = torch.zeros(2, 3, 6, dtype=torch.bool)
    mask[0, 1, 3:] = True
    mask[1, 2] = True
    return [t.to(device) for t in (target, sources, ratio, mask)]


def _compile_and_compare(device, backend):
    torch._dynamo.reset()
    model = TinyDAF().to(device)
    inputs = _tiny_daf_inputs(device)
    eager_leaf = inputs[0].clone().requires_grad_()
    ref = model(eager_leaf, *inputs[1:])
    ref.square().sum().backward()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    leaf = inputs[0].clone().requires_grad_()
    out = compiled(leaf, *inputs[1:])
    out.square().sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(leaf.grad, eager_leaf.grad, atol=1e-4, rtol=1e-4)


@needs_cpu_op
def test_compile_fullgraph_aot_eager_cpu():
    _compile_and_compare("cpu", "aot_eager")


def _inductor_cpu_works():
    try:
        torch._dynamo.reset()
        torch.compile(lambda x: (x * 2).sin(), fullgraph=True)(torch.ones(3))
        return True, ""
    except Exception as e:  # no C++ toolchain for inductor, etc.
        return False, f"inductor's C++ compile is unavailable here: {type(e).__name__}: {str(e)[:200]}"


@needs_cpu_op
def test_compile_fullgraph_inductor_cpu():
    ok, why = _inductor_cpu_works()
    if not ok:
        pytest.skip(why)
    _compile_and_compare("cpu", "inductor")


# ---------------------------------------------------------------- backend selection
def _run_py(code, **env):
    e = dict(os.environ)
    e.pop("KUDA_MMSA_KERNELS", None)
    e.pop("KUDA_MMSA_JIT", None)
    e.update(env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=e, cwd=ROOT, timeout=300)


_HIDE_C = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kuda_mmsa._C":
            raise OSError("undefined symbol: _ZN3c10 (simulated ABI mismatch)")
sys.meta_path.insert(0, _Block())
"""


def test_backend_reference_forced():
    r = _run_py(
        """
        import torch, kuda_mmsa.ops as ops
        assert ops.backend() == {"cpu": "reference", "cuda": "reference"}, ops.backend()
        q = torch.randn(1, 2, 1, 3, 8); k = torch.randn(1, 2, 1, 4, 8); w = torch.randn(1, 2)
        assert torch.equal(ops.ratio_cross_attention(q, k, k, w), ops.ratio_cross_attention_reference(q, k, k, w))
        print("OK")
        """,
        KUDA_MMSA_KERNELS="reference",
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr


def test_backend_require_raises_when_missing():
    r = _run_py(_HIDE_C + "import kuda_mmsa.ops\n", KUDA_MMSA_KERNELS="require")
    assert r.returncode != 0
    assert "KUDA_MMSA_KERNELS=require" in r.stderr and "missing" in r.stderr, r.stderr


def test_backend_broken_extension_warns_once_and_falls_back():
    r = _run_py(
        _HIDE_C
        + textwrap.dedent(
            """
            import warnings
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                import kuda_mmsa, kuda_mmsa.ops as ops
            msgs = [str(w.message) for w in caught if "kuda_mmsa" in str(w.message)]
            assert len(msgs) == 1, msgs
            assert ops.backend() == {"cpu": "reference", "cuda": "reference"}, ops.backend()
            print("OK")
            """
        ),
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr


@needs_cpu_op
def test_backend_reports_compiled_and_require_passes():
    r = _run_py("import kuda_mmsa.ops as ops; print(ops.backend())", KUDA_MMSA_KERNELS="require")
    assert r.returncode == 0, r.stderr
    assert "'cpu': 'compiled'" in r.stdout or "'cpu': 'jit'" in r.stdout, r.stdout


@pytest.mark.slow
def test_backend_jit_build_when_opted_in(tmp_path):
    """KUDA_MMSA_JIT=1 with no usable _C: csrc/ is compiled (ninja) into KUDA_MMSA_CACHE."""
    import shutil

    from torch.utils import cpp_extension

    if shutil.which("c++") is None or not cpp_extension.is_ninja_available():
        pytest.skip("no C++ compiler or ninja")
    r = _run_py(
        _HIDE_C
        + textwrap.dedent(
            """
            import torch, kuda_mmsa.ops as ops
            assert ops.backend()["cpu"] == "jit", ops.backend()
            g = torch.Generator().manual_seed(0)
            q = torch.randn(2, 3, 2, 5, 16, generator=g); k = torch.randn(2, 3, 2, 7, 16, generator=g)
            w = torch.randn(2, 3, generator=g)
            d = (ops.ratio_cross_attention(q, k, k, w) - ops.ratio_cross_attention_reference(q, k, k, w)).abs().max()
            assert d < 1e-5, d
            print("OK")
            """
        ),
        KUDA_MMSA_JIT="1",
        KUDA_MMSA_CACHE=str(tmp_path),
        CUDA_VISIBLE_DEVICES="",  # CPU-only JIT build keeps this test short
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout + r.stderr[-3000:]


def test_extension_built_means_compiled_backend():
    """If a _C library sits in the package, it must load: a broken build must not hide."""
    built = list((ROOT / "kuda_mmsa").glob("_C*.so")) + list((ROOT / "kuda_mmsa").glob("_C*.pyd"))
    if not built:
        pytest.skip("extension not built in place")
    assert ops.backend()["cpu"] == "compiled", ops.backend()


# ---------------------------------------------------------------- CUDA
CUDA_GRID = [
    c
    for c in itertools.product(
        [1, 3, 5],  # B
        [1, 2, 4],  # M
        [1, 8],  # H
        [(1, 1), (50, 50), (7, 300), (300, 129), (64, 65), (129, 33)],  # (Lq, Lk)
        [16, 32, 64, 128, 40, 8],  # d
        [False, True],  # masked
    )
]
random.Random(0).shuffle(CUDA_GRID)
CUDA_GRID = CUDA_GRID[:60]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CUDA_GRID, ids=lambda c: "B{}M{}H{}Lq{}Lk{}d{}{}".format(*c[:3], *c[3], c[4], "m" if c[5] else ""))
@pytest.mark.cuda
@needs_cuda_op
def test_cuda_matches_reference(case, dtype):
    B, M, H, (Lq, Lk), d, masked = case
    check_against_reference(B, M, H, Lq, Lk, d, dtype, "cuda", masked, seed=hash(case) % 1000)


@pytest.mark.cuda
@needs_cuda_op
@pytest.mark.parametrize("scale", [3.0, 1e-4])
def test_cuda_extreme_scales(scale):
    check_against_reference(2, 3, 2, 40, 70, 32, torch.float32, "cuda", True, seed=5, scale=scale)


@pytest.mark.cuda
@needs_cuda_op
def test_cuda_masked_keys_far_above_valid():
    check_masked_keys_far_above_valid("cuda")


@pytest.mark.cuda
@needs_cuda_op
def test_cuda_daf_shape_and_opcheck():
    check_against_reference(32, 3, 8, 50, 50, 64, torch.float16, "cuda", True)
    q, k, v, w, mask = make_inputs(2, 2, 2, 9, 70, 64, torch.float32, "cuda", True)
    rg = lambda t: t.clone().requires_grad_()
    torch.library.opcheck(torch.ops.kuda_mmsa._ratio_cross_attention_fwd.default, (rg(q), rg(k), rg(v), rg(w), mask, 0.125))
    torch.library.opcheck(torch.ops.kuda_mmsa.ratio_cross_attention.default, (rg(q), rg(k), rg(v), rg(w), None, 0.125))
    assert ops.backend()["cuda"] in ("compiled", "jit")


@pytest.mark.cuda
@needs_cuda_op
def test_cuda_compile_fullgraph():
    _compile_and_compare("cuda", "aot_eager")
    _compile_and_compare("cuda", "inductor")
