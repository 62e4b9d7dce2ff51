"""Tests of the fused ratio_cross_attention kernels against the exact PyTorch reference.

Tolerances (normalised max error, max|op - ref| / max(max|ref|, 1)), reference computed
in fp32 from the same (rounded) inputs:
    fp32: values 2e-5, gradients 1e-4
    fp16: values 2e-3, gradients 5e-3
    bf16: values 1e-2, gradients 2e-2
The CUDA tensor-core path (KUDA_MMSA_TC=1, fp16/bf16, sm_80+) rounds the softmax
probabilities and their gradients to the input dtype before the tensor-core products (as
FlashAttention does), so it gets its own tolerances (TOL_TC):
    fp16: values 3e-3, gradients 1e-2
    bf16: values 1.5e-2, gradients 4e-2
bf16 has an 8-bit significand: PyTorch's own bf16 computation of the same formula (the
matmuls, the softmax and its gradient each rounded to bf16, as the tensor-core kernels round
P and dS) can itself miss the fp32 reference by more than these bounds, e.g. 0.0625 on dq
when many equal scores make the softmax gradient a near-cancelling sum. So for bf16 a
kernel may also err up to twice PyTorch's own bf16 error on the same inputs (the rule of
FlashAttention's tests); fp32 and fp16 keep the fixed bounds above.
Every CUDA test picks the tolerances of the path that runs, so tools/gpu_check.sh runs this
file once as is and once with KUDA_MMSA_TC=1; the tests named *_tc_* switch it on themselves.
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
TOL_TC = {  # the CUDA tensor-core path (see the module docstring)
    torch.float16: (3e-3, 1e-2),
    torch.bfloat16: (1.5e-2, 4e-2),
}


def tc_active(dtype, device) -> bool:
    """True when a call with these inputs takes the tensor-core kernels (KUDA_MMSA_TC=1)."""
    return (
        torch.device(device).type == "cuda"
        and dtype in TOL_TC
        and os.environ.get("KUDA_MMSA_TC") == "1"
        and torch.cuda.get_device_capability()[0] >= 8
    )


def tolerances(dtype, device):
    return TOL_TC[dtype] if tc_active(dtype, device) else TOL[dtype]


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


def _misaligned(t):
    """A contiguous copy of t whose data pointer is not 16-byte aligned (one element in)."""
    buf = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def same_dtype_reference(q, k, v, w, mask, scale):
    """The reference formula computed by PyTorch in the inputs' own dtype (no upcast)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        pad = mask[:, :, None, None, :]
        dead = pad.all(-1, keepdim=True)
        probs = torch.softmax(scores.masked_fill(pad & ~dead, float("-inf")), -1).masked_fill(dead, 0.0)
    else:
        probs = torch.softmax(scores, -1)
    return torch.matmul(probs, v) * w.to(q.dtype)[:, :, None, None, None]


def bounds(dtype, device, inputs, mask, scale, gout, ref, ref_grads):
    """(value bound, [q, k, v, weight gradient bounds]): the fixed tolerances, and for bf16
    at least twice PyTorch's own bf16 error (module docstring)."""
    tv, tg = tolerances(dtype, device)
    if dtype != torch.bfloat16:
        return tv, [tg] * 4
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = same_dtype_reference(*leaves, mask, scale)
    out.backward(gout)
    return max(tv, 2 * nerr(out.detach(), ref)), [max(tg, 2 * nerr(a.grad, b)) for a, b in zip(leaves, ref_grads)]


def check_against_reference(B, M, H, Lq, Lk, d, dtype, device, masked, seed=0, scale=None, misaligned=False):
    q, k, v, w, mask = make_inputs(B, M, H, Lq, Lk, d, dtype, device, masked, seed)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    tv, tg = tolerances(dtype, device)
    # op: the public C++ op (composes _ratio_cross_attention_fwd, backward via the registered formula)
    if misaligned:  # the kernels' scalar (not 16-byte) load path
        leaves = [_misaligned(t.detach()).requires_grad_() for t in (q, k, v)] + [w.detach().clone().requires_grad_()]
        assert all(t.data_ptr() % 16 for t in leaves[:3])
    else:
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, scale)
    assert out.dtype == q.dtype and out.shape == q.shape
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(device=device, dtype=dtype)
    out.backward(gout)
    # reference in fp32 from the same rounded inputs
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, scale)
    ref.backward(gout.float())
    tv, tgs = bounds(dtype, device, (q, k, v, w), mask, scale, gout, ref.detach(), [t.grad for t in rleaves])
    assert nerr(out, ref) < tv, f"values: {nerr(out, ref):.3e}"
    for name, a, b, tg in zip("qkvw", leaves, rleaves, tgs):
        e = nerr(a.grad, b.grad)
        assert e < tg, f"grad {name}: {e:.3e} (bound {tg:.3e})"
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


def check_masked_keys_far_above_valid(device, dtype=torch.float32):
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
    q, k, v = (t.to(dtype) for t in (q, k, v))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, 3.0)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    out.backward(gout)
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, 3.0)
    ref.backward(gout.float())
    if dtype == torch.float32:
        tv, tgs = 1e-5, [1e-4] * 4
    else:
        tv, tgs = bounds(dtype, device, (q, k, v, w), mask, 3.0, gout, ref.detach(), [t.grad for t in rleaves])
    assert nerr(out, ref) < tv
    for name, a, b, tg in zip("qkvw", leaves, rleaves, tgs):
        assert nerr(a.grad, b.grad) < tg, f"grad {name}: {nerr(a.grad, b.grad):.3e} (bound {tg:.3e})"


@needs_cpu_op
def test_cpu_masked_keys_far_above_valid():
    check_masked_keys_far_above_valid("cpu")


@needs_cpu_op
@pytest.mark.parametrize("holes", [False, True], ids=["suffix", "suffix+holes"])
def test_cpu_padded_key_suffix_matches_reference(holes):
    # Key padding masks are suffixes (lengths); the kernel stops at the last key tile holding a
    # valid key, so whole 64-key tiles of padding are skipped. Values and gradients must not
    # notice, and padded keys get exactly zero dK, dV.
    B, M, H, Lq, Lk, d = 6, 1, 2, 40, 300, 16
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, M, H, L, d, generator=g) for L in (Lq, Lk, Lk))
    w = torch.rand(B, M, generator=g) + 0.5
    lengths = torch.tensor([300, 200, 64, 65, 1, 130])
    mask = (torch.arange(Lk)[None, :] >= lengths[:, None])[:, None, :].expand(B, M, Lk).clone()
    if holes:  # and masked keys before the last valid one
        mask |= torch.rand(B, M, Lk, generator=g) < 0.3
        mask[torch.arange(B), :, lengths - 1] = False
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, 0.25)
    rleaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, 0.25)
    gout = torch.randn(out.shape, generator=g)
    out.backward(gout)
    ref.backward(gout)
    assert nerr(out, ref) < 1e-5
    for name, a, b in zip("qkvw", leaves, rleaves):
        assert nerr(a.grad, b.grad) < 1e-4, name
    padded = mask[:, :, None, :].expand(B, M, H, Lk)
    assert (leaves[1].grad[padded] == 0).all() and (leaves[2].grad[padded] == 0).all()


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sdpa_route_matches_reference_and_zeroes_dead_rows(dtype):
    """attention_by_sdpa, what long key sequences on CUDA run: the reference's values and
    gradients, and a (b, m) with every key padded gives exact zeros and zero gradients."""
    q, k, v, w, mask = make_inputs(3, 3, 2, 9, 70, 16, torch.float32, "cpu", True, seed=21)
    mask[1, 2] = True
    q, k, v, w = (t.to(dtype) for t in (q, k, v, w))
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = ops.attention_by_sdpa(*leaves, mask, 0.25)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out.backward(gout)
    rleaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask, 0.25)
    ref.backward(gout)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype and nerr(out, ref) < tol
    for a, b in zip(leaves, rleaves):
        assert nerr(a.grad, b.grad) < 10 * tol
    assert (out.detach()[1, 2] == 0).all() and (leaves[0].grad[1, 2] == 0).all()
    assert leaves[3].grad[1, 2] == 0 and (leaves[1].grad[1, 2] == 0).all()


def test_route_takes_the_kernel_on_cuda_only_where_it_was_measured_faster():
    q, k, v, w, _ = make_inputs(1, 1, 1, 4, ops.CUDA_KERNEL_MAX_KEYS + 1, 32, torch.float32, "cpu", False)
    assert ops.route(q, k, v, w) in ("kernel", "reference")        # CPU: never SDPA
    if HAS_CUDA:
        kernel = "kernel" if _op_loaded("CUDA") else "reference"
        qc, kc, vc, wc = (t.cuda() for t in (q, k, v, w))
        assert ops.route(qc, kc, vc, wc) == "sdpa"                 # fp32, many keys
        short = kc[:, :, :, :ops.CUDA_KERNEL_MAX_KEYS]
        assert ops.route(qc, short, short, wc) == kernel           # fp32, few keys
        d16 = [t[..., :ops.CUDA_KERNEL_FP32_MAX_HEAD_DIM] for t in (qc, kc, vc)]
        assert ops.route(*d16, wc) == kernel                       # fp32 at head dim 16
        for half in (torch.bfloat16, torch.float16):               # fp16/bf16: always SDPA
            assert ops.route(*(t.to(half) for t in d16), wc) == "sdpa"
            assert ops.route(qc.to(half), short.to(half), short.to(half), wc) == "sdpa"


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
    e.pop("KUDA_MMSA_TC", None)
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
        assert ops.backend() == {"cpu": "reference", "cuda": "reference", "cuda_tc": "off"}, ops.backend()
        q = torch.randn(1, 2, 1, 3, 8); k = torch.randn(1, 2, 1, 4, 8); w = torch.randn(1, 2)
        assert torch.equal(ops.ratio_cross_attention(q, k, k, w), ops.ratio_cross_attention_reference(q, k, k, w))
        print("OK")
        """,
        KUDA_MMSA_KERNELS="reference",
    )
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr



def test_an_unknown_kernels_mode_warns_once_at_import():
    r = _run_py("import warnings\nwarnings.simplefilter('default')\nimport kuda_mmsa.ops\n", KUDA_MMSA_KERNELS="fast")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("KUDA_MMSA_KERNELS='fast' is not one of") == 1, r.stderr

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
            assert ops.backend() == {"cpu": "reference", "cuda": "reference", "cuda_tc": "off"}, ops.backend()
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


def test_backend_reports_tensor_cores():
    """cuda_tc is "on" only with KUDA_MMSA_TC=1 and a compiled CUDA op; never without it."""
    code = "import kuda_mmsa.ops as ops; print(ops.backend())"
    off = _run_py(code)
    assert off.returncode == 0 and "'cuda_tc': 'off'" in off.stdout, off.stdout + off.stderr
    on = _run_py(code, KUDA_MMSA_TC="1")
    assert on.returncode == 0, on.stderr
    expect = "on" if "'cuda': 'reference'" not in on.stdout else "off"
    assert f"'cuda_tc': '{expect}'" in on.stdout, on.stdout
    forced = _run_py(code, KUDA_MMSA_TC="1", KUDA_MMSA_KERNELS="reference")
    assert "'cuda_tc': 'off'" in forced.stdout, forced.stdout + forced.stderr


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
def test_cuda_matches_reference(case, dtype, request):
    B, M, H, (Lq, Lk), d, masked = case
    if (case, dtype) in TC_KNOWN_INACCURATE and tc_active(dtype, "cuda"):
        request.applymarker(pytest.mark.xfail(strict=True, reason=TC_KNOWN_INACCURATE[case, dtype]))
    check_against_reference(B, M, H, Lq, Lk, d, dtype, "cuda", masked, seed=hash(case) % 1000)


# Known defects of the opt-in tensor-core path (KUDA_MMSA_TC=1), found on an H200. Strict:
# the test fails as soon as the defect is fixed, so this list cannot go stale.
TC_KNOWN_INACCURATE = {
    ((1, 1, 8, (64, 65), 16, False), torch.bfloat16):
        "weight gradient 0.063 from the tensor-core forward's saved output, 14x PyTorch's own bf16 error "
        "(0.0045) on these inputs: open; the path stays opt-in and auto mode never takes it",
}


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
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_unaligned_and_odd_head_dims(dtype):
    """d not a multiple of 8 and data pointers off 16-byte alignment: the scalar load paths."""
    check_against_reference(2, 3, 2, 50, 70, 12, dtype, "cuda", True, seed=11)
    check_against_reference(1, 2, 3, 70, 130, 100, dtype, "cuda", True, seed=12)
    check_against_reference(2, 2, 2, 65, 129, 64, dtype, "cuda", True, seed=13, misaligned=True)


# ---------------------------------------------------------------- CUDA tensor cores
# The tensor-core kernels (KUDA_MMSA_TC=1, fp16/bf16, sm_80+), switched on per test: the
# C++ side reads KUDA_MMSA_TC at every call.
@pytest.fixture
def tc_on(monkeypatch):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core kernels need sm_80 or newer")
    monkeypatch.setenv("KUDA_MMSA_TC", "1")
    assert ops.backend()["cuda_tc"] == "on", ops.backend()


def _cuda_kernel_names(fn):
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = {e.key for e in prof.key_averages()}
    if not any("kernel" in n for n in names):
        pytest.skip(f"the profiler records no CUDA kernels here: {sorted(names)[:5]}")
    return names


def _fwd_bwd(dtype, masked=True, shape=(2, 3, 2, 70, 130, 64)):
    q, k, v, w, mask = make_inputs(*shape, dtype, "cuda", masked)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]

    def run():
        out = torch.ops.kuda_mmsa.ratio_cross_attention(*leaves, mask, 0.125)
        out.backward(torch.ones_like(out))

    return run


@pytest.mark.cuda
@needs_cuda_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_tc_kernels_run_only_when_asked(dtype, monkeypatch):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core kernels need sm_80 or newer")
    monkeypatch.delenv("KUDA_MMSA_TC", raising=False)
    off = _cuda_kernel_names(_fwd_bwd(dtype))
    assert not any("tc::" in n for n in off), sorted(off)
    assert any("rca_fwd_kernel" in n for n in off) and any("rca_bwd_kernel" in n for n in off), sorted(off)
    monkeypatch.setenv("KUDA_MMSA_TC", "1")
    on = _cuda_kernel_names(_fwd_bwd(dtype))
    assert any("tc::" in n and "fwd_kernel" in n for n in on), sorted(on)
    assert any("tc::" in n and "bwd_kernel" in n for n in on), sorted(on)
    assert not any("rca_fwd_kernel" in n or "rca_bwd_kernel" in n for n in on), sorted(on)
    # fp32 keeps the SIMT kernels even with KUDA_MMSA_TC=1
    f32 = _cuda_kernel_names(_fwd_bwd(torch.float32))
    assert not any("tc::" in n for n in f32) and any("rca_fwd_kernel" in n for n in f32), sorted(f32)


TC_GRID = CUDA_GRID[:40] + [
    (2, 3, 2, (50, 50), 64, True),  # DAF shape
    (1, 3, 2, (925, 925), 64, True),  # audio length: many key tiles, online rescaling
    (2, 2, 1, (50, 925), 64, True),
    (1, 2, 2, (925, 50), 128, False),
    (2, 1, 3, (64, 64), 16, True),  # exact tiles
    (1, 2, 2, (128, 192), 32, True),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", TC_GRID, ids=lambda c: "B{}M{}H{}Lq{}Lk{}d{}{}".format(*c[:3], *c[3], c[4], "m" if c[5] else ""))
@pytest.mark.cuda
@needs_cuda_op
def test_cuda_tc_matches_reference(case, dtype, tc_on):
    B, M, H, (Lq, Lk), d, masked = case
    check_against_reference(B, M, H, Lq, Lk, d, dtype, "cuda", masked, seed=hash(case) % 1000)


@pytest.mark.cuda
@needs_cuda_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_tc_odd_dims_unaligned_scales_and_far_masked(dtype, tc_on):
    check_against_reference(2, 3, 2, 50, 70, 12, dtype, "cuda", True, seed=11)
    check_against_reference(1, 2, 3, 70, 130, 100, dtype, "cuda", True, seed=12)
    check_against_reference(2, 2, 2, 65, 129, 64, dtype, "cuda", True, seed=13, misaligned=True)
    for scale in (3.0, 1e-4):
        check_against_reference(2, 3, 2, 40, 70, 32, dtype, "cuda", True, seed=5, scale=scale)
    check_masked_keys_far_above_valid("cuda", dtype)


@pytest.mark.cuda
@needs_cuda_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_tc_fully_masked_rows_give_zeros(dtype, tc_on):
    q, k, v, w, _ = make_inputs(2, 2, 2, 70, 80, 64, dtype, "cuda", False)
    mask = torch.zeros(2, 2, 80, dtype=torch.bool, device="cuda")
    mask[0, 1] = True
    mask[1, 0] = True
    mask[1, 1, 64:] = True  # a whole key tile of padding next to a live one
    leaves = [t.clone().requires_grad_() for t in (q, k, v, w)]
    out = ops.ratio_cross_attention(*leaves, mask)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device="cuda", dtype=dtype)
    out.backward(gout)
    dead = mask.all(-1)
    assert (out.detach()[dead] == 0).all()
    for t in leaves[:3]:
        assert torch.isfinite(t.grad).all()
        assert (t.grad[dead] == 0).all()
    for t in leaves[1:3]:  # masked keys get no gradient
        assert (t.grad.transpose(2, 3)[mask].float() == 0).all()
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask)
    ref.backward(gout.float())
    tv, tg = TOL_TC[dtype]
    assert nerr(out, ref) < tv
    for a, b in zip(leaves, rleaves):
        assert nerr(a.grad, b.grad) < tg


@pytest.mark.cuda
@needs_cuda_op
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_tc_opcheck(dtype, tc_on):
    # Lk <= 128: at most two key tiles add to each dQ element, so the fp32 atomics are
    # order-independent and eager and compiled runs agree exactly.
    q, k, v, w, mask = make_inputs(2, 2, 2, 9, 70, 64, dtype, "cuda", True)
    rg = lambda t: t.clone().requires_grad_()
    fwd = torch.ops.kuda_mmsa._ratio_cross_attention_fwd
    torch.library.opcheck(fwd.default, (rg(q), rg(k), rg(v), rg(w), mask, 0.125))
    torch.library.opcheck(fwd.default, (q, k, v, w, None, 0.125))
    torch.library.opcheck(torch.ops.kuda_mmsa.ratio_cross_attention.default, (rg(q), rg(k), rg(v), rg(w), mask, 0.125))
    out, o_unw, lse = fwd(q, k, v, w, mask, 0.125)
    torch.library.opcheck(
        torch.ops.kuda_mmsa._ratio_cross_attention_bwd.default,
        (torch.randn_like(out), q, k, v, w, mask, o_unw, lse, 0.125),
        test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.cuda
@needs_cuda_op
def test_cuda_tc_and_simt_share_saved_state(monkeypatch):
    """o_unweighted and lse mean the same on both paths: a forward on one path and a
    backward on the other give the reference gradients."""
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core kernels need sm_80 or newer")
    q, k, v, w, mask = make_inputs(2, 3, 2, 70, 130, 64, torch.float16, "cuda", True, seed=4)
    gout = torch.randn(q.shape, generator=torch.Generator().manual_seed(9)).to(device="cuda", dtype=q.dtype)
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    reference(*rleaves, mask, 0.125).backward(gout.float())
    fwd, bwd = torch.ops.kuda_mmsa._ratio_cross_attention_fwd, torch.ops.kuda_mmsa._ratio_cross_attention_bwd
    for fwd_tc in (True, False):
        monkeypatch.setenv("KUDA_MMSA_TC", "1" if fwd_tc else "0")
        out, o_unw, lse = fwd(q, k, v, w, mask, 0.125)
        monkeypatch.setenv("KUDA_MMSA_TC", "0" if fwd_tc else "1")
        grads = bwd(gout, q, k, v, w, mask, o_unw, lse, 0.125)
        for a, b in zip(grads, rleaves):
            assert nerr(a, b.grad) < TOL_TC[torch.float16][1]


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_public_op_on_long_keys(dtype):
    """The public op at the audio length (routed to SDPA): the reference's values and
    gradients within the dtype's tolerance, zeros for an all-padding source."""
    q, k, v, w, mask = make_inputs(2, 3, 2, 50, 925, 64, dtype, "cuda", True, seed=8)
    mask[0, 1] = True
    assert ops.route(q, k, v, w) == "sdpa"
    tv, tg = TOL[dtype]
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, w)]
    out = ops.ratio_cross_attention(*leaves, mask)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2)).to(device="cuda", dtype=dtype)
    out.backward(gout)
    rleaves = [t.detach().float().clone().requires_grad_() for t in (q, k, v, w)]
    ref = reference(*rleaves, mask)
    ref.backward(gout.float())
    assert out.dtype == dtype and nerr(out, ref) < tv
    for name, a, b in zip("qkvw", leaves, rleaves):
        assert nerr(a.grad, b.grad) < tg, name
    assert (out.detach()[0, 1] == 0).all() and (leaves[0].grad[0, 1] == 0).all()


@pytest.mark.cuda
@needs_cuda_op
def test_cuda_compile_fullgraph():
    _compile_and_compare("cuda", "aot_eager")
    _compile_and_compare("cuda", "inductor")


# ---------------------------------------------------------------------- fp64: no silent downcast
def _fp64_inputs(requires_grad=True):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(2, 3, 2, 4, 5, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 2, 6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(2, 3, 2, 6, 5, generator=g, dtype=torch.float64)
    w = torch.rand(2, 3, generator=g, dtype=torch.float64) + 0.5
    mask = torch.zeros(2, 3, 6, dtype=torch.bool)
    mask[0, 1, 3:] = True
    mask[1, 2, :] = True                     # a source whose keys are all padding
    return [t.requires_grad_(requires_grad) for t in (q, k, v, w)] + [mask]


def test_reference_gradcheck_in_fp64():
    q, k, v, w, mask = _fp64_inputs()
    assert torch.autograd.gradcheck(lambda *a: ops.ratio_cross_attention_reference(*a, mask), (q, k, v, w))


def test_fp64_through_the_public_op_is_computed_in_fp64():
    q, k, v, w, mask = _fp64_inputs()
    out = ops.ratio_cross_attention(q, k, v, w, mask)
    assert out.dtype == torch.float64
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(5)
    scores = scores.masked_fill(mask[:, :, None, None, :], float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)
    expected = (probs @ v) * w[:, :, None, None, None]
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)   # fp32 would miss by ~1e-7
    assert torch.autograd.gradcheck(lambda *a: ops.ratio_cross_attention(*a, mask), (q, k, v, w))


@pytest.mark.skipif(ops.backend()["cpu"] == "reference", reason="no compiled CPU kernel")
def test_compiled_cpu_kernel_refuses_fp64_clearly():
    q, k, v, w, mask = _fp64_inputs(requires_grad=False)
    with pytest.raises(RuntimeError, match="dtype must be float32, float16 or bfloat16, got Double"):
        torch.ops.kuda_mmsa.ratio_cross_attention(q, k, v, w, mask, 0.5)
