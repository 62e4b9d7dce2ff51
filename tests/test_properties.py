"""Promises that are laws, checked on random cases (hypothesis; the profile in conftest.py
keeps them deterministic and small):

- the fused op equals its definition, written here, for random shapes, masks and weights;
- padding never changes a prediction;
- a modality missing from a sample behaves exactly as if absent: in the fusion (weight 0,
  the others keep weight 1 on average), in the ratio and in the CE loss;
- the reliability ratio is invariant to scaling and shifting the labels;
- a resume state is refused after any change of data, seed, config or world size.
"""
import copy
import functools
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_model import D_A, D_V, L_A, L_T, L_V, VOCAB, make_model

from kuda_mmsa import ops
from kuda_mmsa.model.losses import correlation_estimation_loss
from kuda_mmsa.model.ratio import reliability_ratio, sentiment_ratio

SEEDS = st.integers(0, 2 ** 31 - 1)


# ---------------------------------------------------------------------- the op
def attention_by_definition(q, k, v, weight, mask, scale):
    """out[b, m] = weight[b, m] softmax(scale q kᵀ over the keys that are not padding) v;
    zeros for a query whose keys are all padding. In fp64, from the README's definition."""
    q, k, v, weight = (t.double() for t in (q, k, v, weight))
    scores = scale * q @ k.transpose(-1, -2)                        # [B, M, H, Lq, Lk]
    valid = ~mask[:, :, None, None, :]
    e = torch.exp(scores - scores.max(-1, keepdim=True).values) * valid
    total = e.sum(-1, keepdim=True)
    probs = torch.where(total > 0, e / total.clamp(min=1e-300), torch.zeros_like(e))
    return weight[:, :, None, None, None] * (probs @ v)


@settings(max_examples=40)
@given(b=st.integers(1, 3), m=st.integers(1, 3), h=st.integers(1, 2), lq=st.integers(1, 9),
       lk=st.integers(1, 70), d=st.sampled_from([4, 8, 16, 32]), pad_rate=st.sampled_from([0.0, 0.3, 0.9, 1.0]),
       custom_scale=st.booleans(), seed=SEEDS)
def test_op_equals_its_definition_for_random_shapes_masks_and_weights(b, m, h, lq, lk, d, pad_rate,
                                                                     custom_scale, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, m, h, lq, d, generator=g, requires_grad=True)
    k = torch.randn(b, m, h, lk, d, generator=g, requires_grad=True)
    v = torch.randn(b, m, h, lk, d, generator=g, requires_grad=True)
    weight = (torch.rand(b, m, generator=g) * 3).requires_grad_()
    mask = torch.rand(b, m, lk, generator=g) < pad_rate
    if pad_rate < 1.0 and seed % 2:
        mask[..., 0] = False          # every row keeps a key (rate 1.0: every row is all padding)
    scale = 0.3 if custom_scale else None
    out = ops.ratio_cross_attention(q, k, v, weight, mask, scale=scale)
    ref = attention_by_definition(q, k, v, weight, mask, scale if custom_scale else 1 / math.sqrt(d))
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v, weight), grad)
    want = torch.autograd.grad(ref, (q, k, v, weight), grad.double())
    for name, a, e in zip("qkvw", got, want):
        torch.testing.assert_close(a.double(), e.double(), atol=1e-4, rtol=1e-4, msg=lambda s, n=name: f"grad {n}: {s}")


# ---------------------------------------------------------------------- the model
@functools.lru_cache(maxsize=None)
def _model(source):
    return make_model(ratio_source=source).eval()


def _inputs(b, seed, vision_lengths=None, audio_lengths=None, text_lengths=None):
    g = torch.Generator().manual_seed(seed)
    tl = torch.tensor(text_lengths) if text_lengths is not None else torch.randint(1, L_T + 1, (b,), generator=g)
    al = torch.tensor(audio_lengths) if audio_lengths is not None else torch.randint(1, L_A + 1, (b,), generator=g)
    vl = torch.tensor(vision_lengths) if vision_lengths is not None else torch.randint(1, L_V + 1, (b,), generator=g)
    mask = (torch.arange(L_T)[None] < tl[:, None]).float()
    ids = torch.randint(1, VOCAB, (b, L_T), generator=g) * mask.long()
    text = torch.stack([ids.float(), mask, torch.zeros(b, L_T)], 1)
    audio = torch.randn(b, L_A, D_A, generator=g) * (torch.arange(L_A)[None, :, None] < al[:, None, None])
    vision = torch.randn(b, L_V, D_V, generator=g) * (torch.arange(L_V)[None, :, None] < vl[:, None, None])
    return dict(text=text, audio=audio, vision=vision, audio_lengths=al, vision_lengths=vl)


@settings(max_examples=12)
@given(b=st.integers(1, 4), seed=SEEDS, source=st.sampled_from(["reliability", "consensus"]))
def test_padding_never_changes_a_prediction(b, seed, source):
    """Random lengths; then anything in the padded steps of vision, audio and text (ids)
    and at the fused sequence's padded positions: M, the unimodal scores and the ratios stay."""
    model = _model(source)
    inputs = _inputs(b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    noisy = {k: v.clone() for k, v in inputs.items()}
    for key, lengths, length in (("audio", "audio_lengths", L_A), ("vision", "vision_lengths", L_V)):
        pad = torch.arange(length)[None, :] >= inputs[lengths][:, None]
        noisy[key][pad] = torch.randn(noisy[key][pad].shape, generator=g) * 50
    text_pad = inputs["text"][:, 1] == 0
    noisy["text"][:, 0][text_pad] = torch.randint(1, VOCAB, (int(text_pad.sum()),), generator=g).float()
    with torch.no_grad():
        ref = model(**inputs)
        out = model(**noisy)
    for k in ("M", "T", "V", "A", "ratio"):
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5)


@settings(max_examples=16, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=SEEDS, source=st.sampled_from(["reliability", "consensus", "estimate", "prediction"]),
       presence=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4))
def test_a_missing_modality_behaves_exactly_as_if_absent(seed, source, presence, monkeypatch):
    """Per sample, V and A present or not at random (T always). A sample's prediction and
    ratios do not depend on anything of a modality it lacks (that branch's weights, its
    alignment, its reliability head); the missing one has ratio 0 and op weight 0, and the
    present ones' op weights average 1, as when all are present."""
    b = len(presence)
    model = copy.deepcopy(_model(source))
    vl = [int(v) * (1 + seed % L_V) for v, _ in presence]
    al = [int(a) * (1 + seed % L_A) for _, a in presence]
    inputs = _inputs(b, seed, vision_lengths=vl, audio_lengths=al)
    present = torch.tensor([[True, v, a] for v, a in presence])

    from kuda_mmsa.model import fusion

    weights, real = [], fusion.ops.ratio_cross_attention

    def spy(q, k, v, weight, *a, **kw):
        if weight.shape[1] == 3:
            weights.append(weight.detach().clone())
        return real(q, k, v, weight, *a, **kw)

    monkeypatch.setattr(fusion.ops, "ratio_cross_attention", spy)
    with torch.no_grad():
        ref = model(**inputs)
    for w in weights:
        assert torch.all(w[~present] == 0)
        torch.testing.assert_close(w.sum(-1), present.sum(-1).to(w.dtype))
    assert torch.all(ref["ratio"][~present] == 0)
    torch.testing.assert_close(ref["ratio"].sum(-1), torch.ones(b))
    for i, m in ((1, "V"), (2, "A")):
        lacking = ~present[:, i]
        if not lacking.any():
            continue
        changed = copy.deepcopy(model)
        with torch.no_grad():
            params = list(changed.branches[m].parameters()) + list(changed.align[m].parameters())
            if changed.reliability is not None:
                params += list(changed.reliability.heads[i].parameters())
            for p in params:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + i)))
            out = changed(**inputs)
        torch.testing.assert_close(out["M"][lacking], ref["M"][lacking], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["ratio"][lacking], ref["ratio"][lacking], atol=1e-6, rtol=1e-6)
        if "estimate" in ref:        # the label-free target ignores it too
            torch.testing.assert_close(out["estimate"][lacking], ref["estimate"][lacking], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- the CE loss
def infonce_by_definition(means, fused, present):
    """sum over modalities m of the mean, over the samples where m is present, of
    -log softmax_j(<x_b, p_j>)[b] (x, p L2-normalised; every sample of the batch a negative)."""
    p = fused / fused.norm(dim=-1, keepdim=True)
    total = 0.0
    for i, x in enumerate(means):
        x = x / x.norm(dim=-1, keepdim=True)
        logits = x @ p.T
        terms = -(logits.diagonal() - torch.logsumexp(logits, dim=-1))
        rows = present[:, i]
        if rows.any():
            total = total + terms[rows].mean()
    return torch.as_tensor(total, dtype=fused.dtype)


@settings(max_examples=40)
@given(b=st.integers(1, 6), d=st.integers(2, 8), seed=SEEDS, data=st.data())
def test_ce_loss_counts_each_modality_only_where_it_is_present(b, d, seed, data):
    present = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3),
                                              min_size=b, max_size=b)))
    g = torch.Generator().manual_seed(seed)
    means = [torch.randn(b, d, generator=g, dtype=torch.float64) for _ in range(3)]
    fused = torch.randn(b, d, generator=g, dtype=torch.float64)
    loss = correlation_estimation_loss(means, fused, present)
    torch.testing.assert_close(loss, infonce_by_definition(means, fused, present))
    # what a missing modality's pooled vector holds changes nothing
    moved = [torch.where(present[:, i, None], x, torch.randn(b, d, generator=g, dtype=torch.float64) * 10)
             for i, x in enumerate(means)]
    torch.testing.assert_close(correlation_estimation_loss(moved, fused, present), loss)
    everyone = torch.ones(b, 3, dtype=torch.bool)
    torch.testing.assert_close(correlation_estimation_loss(means, fused, None),
                               infonce_by_definition(means, fused, everyone))


# ---------------------------------------------------------------------- ratios
FINITE = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=60)
@given(b=st.integers(1, 5), seed=SEEDS, scale=st.floats(0.05, 20.0, **FINITE), shift=st.floats(-5, 5, **FINITE),
       agreement=st.floats(0.0, 5.0, **FINITE), data=st.data())
def test_reliability_ratio_is_invariant_to_scaling_and_shifting_the_labels(b, seed, scale, shift, agreement, data):
    """Labels y -> c·y + t move each unimodal score the same way and its expected squared
    error by c², i.e. log_var by 2 log c: the ratios stay."""
    present = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3),
                                              min_size=b, max_size=b)))
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, 3, generator=g, dtype=torch.float64)
    log_var = torch.randn(b, 3, generator=g, dtype=torch.float64)
    r = reliability_ratio(scores, log_var, present, agreement)
    r2 = reliability_ratio(scale * scores + shift, log_var + 2 * math.log(scale), present, agreement)
    torch.testing.assert_close(r2, r, atol=1e-9, rtol=1e-7)


def _reliability_by_definition(scores, log_var, agreement):
    """The README's rule over the modalities given (all present): inverse-variance weights
    lowered by the squared distance to the median, in units of the typical error."""
    s, v = scores.tolist(), log_var.tolist()
    ordered = sorted(s)
    n = len(s)
    center = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    typical = math.exp(sum(v) / n)
    w = [math.exp(-vm - agreement * (sm - center) ** 2 / typical) for sm, vm in zip(s, v)]
    return [x / sum(w) for x in w]


@settings(max_examples=60)
@given(seed=SEEDS, agreement=st.floats(0.0, 5.0, **FINITE),
       present=st.lists(st.booleans(), min_size=3, max_size=3).filter(any))
def test_ratio_of_a_sample_with_missing_modalities_is_the_ratio_without_them(seed, agreement, present):
    """A missing modality gets 0; the present ones get what the rule gives over them alone
    (for reliability and for the consensus source)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(1, 3, generator=g, dtype=torch.float64)
    log_var = torch.randn(1, 3, generator=g, dtype=torch.float64)
    mask = torch.tensor([present])
    idx = [i for i, p in enumerate(present) if p]
    r = reliability_ratio(scores, log_var, mask, agreement)[0]
    want = _reliability_by_definition(scores[0, idx], log_var[0, idx], agreement)
    assert all(r[i] == 0 for i in range(3) if not present[i])
    torch.testing.assert_close(r[idx], torch.tensor(want, dtype=torch.float64))

    from kuda_mmsa.model.ratio import Consensus

    k = 0.7
    target = Consensus.mean(scores, mask)
    c = sum(scores[0, i].item() for i in idx) / len(idx)
    torch.testing.assert_close(target, torch.tensor([[c]], dtype=torch.float64))
    rc = sentiment_ratio(scores, target, k, mask)[0]
    e = [math.exp(-k * (scores[0, i].item() - c) ** 2) for i in idx]
    assert all(rc[i] == 0 for i in range(3) if not present[i])
    torch.testing.assert_close(rc[idx], torch.tensor([x / sum(e) for x in e], dtype=torch.float64))


# ---------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def saved_run(tiny_demo_pickle, tmp_path_factory):
    from test_training import make_kuda_args
    from tiny_kuda import write_tiny_config

    tmp = tmp_path_factory.mktemp("resume-law")
    args, _ = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp / "c.yaml"), tmp)
    args.world_size = 1
    return args


def _config_change(key):
    """Another valid value of ``key`` (the run is typed and checked when it is built, so the
    change must be one a user could make): another choice, the other bool, another number in
    range that keeps the widths divisible by the heads."""
    from kuda_mmsa.config.schema import SCHEMA
    from kuda_mmsa.errors import KudaInputError
    from kuda_mmsa.training.run_config import RunConfig

    spec = SCHEMA[key]

    def candidates(value):
        if spec.choices:
            return [c for c in spec.choices if c != value]
        if isinstance(value, bool):
            return [not value]
        if isinstance(value, (int, float)):
            return [value * 2, value + 1, value / 2, 0.05, 1]
        if isinstance(value, list):
            return [[x + 1 for x in value], value[:-1]]
        return [f"{value}-changed"]

    def change(a):
        for new in candidates(a.get(key)):
            try:
                RunConfig.from_args(dict(a, **{key: spec.check(new, "test")}))
            except (KudaInputError, ValueError, TypeError):
                continue
            a[key] = spec.check(new, "test")
            return
        raise AssertionError(f"no valid change of {key} from {a.get(key)!r}")
    return change


def _result_keys():
    from kuda_mmsa.config.schema import KEYS

    return tuple(k.name for k in KEYS if k.section in ("model", "train"))


CHANGES = st.one_of(
    st.sampled_from(_result_keys()).map(lambda k: ("config " + k, _config_change(k))),
    st.integers(0, 10 ** 6).map(lambda s: ("seed", lambda a: a.__setitem__("seed", a["seed"] + 1 + s))),
    st.integers(2, 64).map(lambda n: ("world size", lambda a: a.__setitem__("world_size", n))),
    st.sampled_from(["splits", "file", "hash"]).map(lambda part: ("data " + part, lambda a: a.__setitem__(
        "data_fingerprint", {**a["data_fingerprint"], part: f"other {part}"}))),
    st.just(("knowledge", "knowledge")),
)


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(change=CHANGES)
def test_a_resume_is_refused_after_any_change_of_data_seed_config_or_world_size(change, saved_run, tmp_path):
    from kuda_mmsa.errors import KudaStaleStateError
    from kuda_mmsa.training.checkpoints import RESUME_FORMAT, atomic_save, read_resume
    from kuda_mmsa.training.trainer import KuDATrainer

    name, apply = change
    before = KuDATrainer(saved_run)
    path = tmp_path / "run.pth.resume"
    atomic_save({"format": RESUME_FORMAT, "fingerprint": before.fingerprint()}, path)
    later_args = copy.deepcopy(saved_run)
    if apply == "knowledge":
        later = KuDATrainer(later_args)
        before.knowledge = {"T": "uid-1"}
        atomic_save({"format": RESUME_FORMAT, "fingerprint": before.fingerprint()}, path)
        later.knowledge = {"T": "uid-2"}
    else:
        apply(later_args)
        assume(later_args != saved_run)
        later = KuDATrainer(later_args)
    with pytest.raises(KudaStaleStateError):
        read_resume(path, RESUME_FORMAT, later.fingerprint(), "Interrupted training state")
    state, _ = read_resume(path, RESUME_FORMAT, before.fingerprint(), "Interrupted training state")
    assert state is not None, name
