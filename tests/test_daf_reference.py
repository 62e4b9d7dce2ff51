"""The fusion computed from its equations, written here with plain tensor operations and the
module's own weights (the way the README says reference mode was checked against the authors'
code: mapped weights), in float64 with tight tolerances, so that a changed residual, norm,
epsilon, bias, mask or weight shows.

DAF block (KuDA paper, dynamic attention fusion), for fused sequence F and sources H_m:
    a_m  = Out_m( w_m · MHA(F Wq_m, H_m Wk_m, H_m Wv_m; keys at text padding excluded) )
    y_m  = LN2_m(u_m + FF_m(u_m)),  u_m = LN1_m(F + a_m)
    z    = LN_c(Σ_m y_m)            (authors' training path: Σ_m LN_m((1 + R_m) y_m))
    F1   = LN_f(F + z);  F2 = LN_s(F1 + SA(F1));  F' = LN_o(F2 + FF(F2))
with FF(x) = W2 GELU(W1 LN(x)) (+ biases), no bias on any q/k/v projection, LayerNorm eps
1e-5 in the cross branch and 1e-6 in the fuse/self/feed-forward norms (the authors' values).
The model: H_m = Time_m(Width_m(U_m) with padded steps zeroed), F0 = Σ_m present_m H_m,
w = n_present · R, prediction = Head(mean of F_L over the valid text positions).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from test_model import make_batch, make_model

TOL = dict(rtol=1e-10, atol=1e-10)


def ln(x, norm, eps):
    return F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, eps)


def linear(x, layer, bias=True):
    assert (layer.bias is not None) == bias, "bias where the equations have none (or none where they have one)"
    return x @ layer.weight.T + (layer.bias if bias else 0)


def mha(q, k, v, heads, d, pad):
    b, lq, lk = q.shape[0], q.shape[1], k.shape[1]
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(d)
    if pad is not None:
        s = s.masked_fill(pad[:, None, None, :], float("-inf"))
    return (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(b, lq, heads * d)


def feed_forward(x, ff, eps=1e-5):
    norm, l1, _, _, l2, _ = ff.net
    return linear(F.gelu(linear(ln(x, norm, eps), l1)), l2)


def daf_block(block, f, sources, weight, pad, reference_ratio=None):
    cross, heads, d = block.cross, block.cross.heads, block.cross.head_dim
    ys = []
    for m, h in enumerate(sources):
        msg = mha(linear(f, cross.q[m], bias=False), linear(h, cross.k[m], bias=False),
                  linear(h, cross.v[m], bias=False), heads, d, pad)
        a = linear(weight[:, m, None, None] * msg, cross.out[m])
        u = ln(f + a, block.cross_norm1[m], 1e-5)
        ys.append(ln(u + feed_forward(u, block.cross_ff[m]), block.cross_norm2[m], 1e-5))
    if reference_ratio is None:
        z = sum(ys)
    else:
        z = sum(ln((1 + reference_ratio[:, m, None, None]) * y, block.ratio_norms[m], 1e-5) for m, y in enumerate(ys))
    f1 = ln(f + ln(z, block.combine_norm, 1e-5), block.fuse_norm, 1e-6)
    sa = block.self_attn
    qkv = linear(f1, sa.qkv, bias=False)
    inner = sa.heads * sa.head_dim
    att = linear(mha(qkv[..., :inner], qkv[..., inner:2 * inner], qkv[..., 2 * inner:], sa.heads, sa.head_dim, pad),
                 sa.out)
    f2 = ln(f1 + att, block.self_norm, 1e-6)
    return ln(f2 + feed_forward(f2, block.ff), block.ff_norm, 1e-6)


def _sample(model, b=4, seed=0, width=None):
    g = torch.Generator().manual_seed(seed)
    width = width or model.config.hidden_size
    lengths = torch.tensor([3, 12, 7, 5][:b])
    pad = torch.arange(12)[None] >= lengths[:, None]
    f = torch.randn(b, 12, width, generator=g, dtype=torch.float64)
    sources = [torch.randn(b, 12, width, generator=g, dtype=torch.float64) for _ in range(3)]
    weight = torch.rand(b, 3, generator=g, dtype=torch.float64) * 3
    return f, sources, weight, pad


def _randomise_norms(model):
    with torch.no_grad():        # trained LayerNorms are not the identity they start as
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("mode", ["dynamic", "reference"])
def test_daf_block_equals_its_equations(mode):
    model = make_model(fusion_mode=mode).double().eval()
    _randomise_norms(model)
    f, sources, weight, pad = _sample(model)
    if mode == "reference":
        weight = torch.ones_like(weight)
    for block in model.blocks:
        with torch.no_grad():
            got = block(f, sources, weight, pad)
            want = daf_block(block, f, sources, weight, pad)
        torch.testing.assert_close(got, want, **TOL)


def test_the_authors_training_combine_equals_its_equation():
    model = make_model(fusion_mode="reference").double().train()     # all dropouts are 0 here
    _randomise_norms(model)
    f, sources, _, pad = _sample(model)
    ratio = torch.softmax(torch.randn(4, 3, dtype=torch.float64), -1)
    ones = torch.ones(4, 3, dtype=torch.float64)
    with torch.no_grad():
        for block in model.blocks:
            torch.testing.assert_close(block(f, sources, ones, pad, ratio),
                                       daf_block(block, f, sources, ones, pad, ratio), **TOL)


def test_length_alignment_equals_its_equation():
    model = make_model().double().eval()
    g = torch.Generator().manual_seed(1)
    for m in "VA":
        align = model.align[m]
        in_len = align.in_len
        u = torch.randn(3, in_len - 2, align.width.in_features, generator=g, dtype=torch.float64)  # shorter: padded
        pad = torch.arange(in_len - 2)[None] >= torch.tensor([2, in_len - 2, 5])[:, None]
        x = linear(u, align.width) * (~pad)[..., None]
        x = torch.cat([x, torch.zeros(3, 2, x.shape[-1], dtype=torch.float64)], 1)
        want = linear(x.transpose(1, 2), align.time).transpose(1, 2)
        with torch.no_grad():
            torch.testing.assert_close(align(u, pad), want, **TOL)


@pytest.mark.parametrize("mode", ["dynamic", "reference"])
def test_the_prediction_is_the_head_of_the_mean_fused_sequence(mode, monkeypatch):
    """F0 = Σ present_m H_m (every modality in reference mode), the blocks with weights
    n_present · R (1 in reference mode), then the head on the mean over valid text steps."""
    model = make_model(fusion_mode=mode, ratio_source="consensus", ratio_k=5.0).double().eval()
    _randomise_norms(model)
    inputs, _ = make_batch()
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in inputs.items()}
    inputs["vision_lengths"] = torch.tensor([0, 5, 16, 2])         # sample 0 without vision
    sources = {}
    hooks = [model.align[m].register_forward_hook(lambda mod, a, out, m=m: sources.__setitem__(m, out))
             for m in "TVA"]
    with torch.no_grad():
        out = model(**inputs)
    for h in hooks:
        h.remove()
    hs = [sources[m] for m in "TVA"]
    present = out["present"].double()
    text_pad = inputs["text"][:, 1] == 0
    if mode == "dynamic":
        weight = present.sum(-1, keepdim=True) * out["ratio"]
        f = sum(present[:, i, None, None] * h for i, h in enumerate(hs))
        pad = text_pad
    else:
        weight = torch.ones_like(present)
        f = sum(hs)
        pad = None                                   # the authors attend to padding
    with torch.no_grad():
        for block in model.blocks:
            f = daf_block(block, f, hs, weight, pad)
        keep = (~text_pad).double()[..., None] if mode == "dynamic" else torch.ones_like(f[..., :1])
        fused = (f * keep).sum(1) / keep.sum(1)
        want = fused
        for layer in model.head.mlp:       # Linear, GELU, ..., Linear -> 1
            want = linear(want, layer) if isinstance(layer, torch.nn.Linear) else F.gelu(want)
    torch.testing.assert_close(out["M"], want, **TOL)
