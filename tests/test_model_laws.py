"""What the model's docstrings and the README promise about presence, modality dropout,
the ratio sources and their heads, each checked against what the test computes itself
(found by tools/mutate.py: mutants of kuda.py and ratio.py that no test noticed)."""
import pytest
import torch
from test_model import L_A, L_T, L_V, make_batch, make_config, make_model

from kuda_mmsa.model import KuDA
from kuda_mmsa.model.ratio import RatioEstimator, masked_softmax


# ---------------------------------------------------------------------- presence
def test_a_sample_without_text_tokens_has_text_missing():
    model = make_model(ratio_source="consensus").eval()
    inputs, _ = make_batch()
    inputs["text"][1, :2] = 0                      # sample 1: no token at all
    inputs["text"][2, :2] = 0                      # sample 2: one token
    inputs["text"][2, :2, 0] = torch.tensor([7.0, 1.0])
    with torch.no_grad():
        out = model(**inputs)
    assert out["present"].tolist() == [[True, True, True], [False, True, True], [True, True, True],
                                       [True, True, True]]
    assert out["ratio"][1, 0] == 0 and out["ratio"][0, 0] > 0


def test_without_lengths_every_vision_and_audio_step_is_valid():
    """MMSA's aligned data has no lengths: vision and audio are then present, every step
    counting (the same as lengths equal to the padded length)."""
    model = make_model().eval()
    inputs, _ = make_batch(b=2)          # (not 3: the text tensor's second dim is 3)
    full = dict(inputs, audio_lengths=torch.full((2,), L_A), vision_lengths=torch.full((2,), L_V))
    bare = {k: v for k, v in inputs.items() if not k.endswith("_lengths")}
    with torch.no_grad():
        a, b = model(**bare), model(**full)
    assert b["present"].all() and a["present"].all() and a["present"].shape == (2, 3)
    torch.testing.assert_close(a["M"], b["M"])


def test_what_a_missing_modality_holds_changes_nothing():
    """A modality with length 0 is missing whatever its tensor holds (its encoder still sees
    one position, which must be empty)."""
    model = make_model().eval()
    inputs, _ = make_batch()
    inputs["vision_lengths"] = torch.tensor([0, 4, 0, 9])
    inputs["audio_lengths"] = torch.tensor([3, 0, 0, 5])
    noisy = {k: v.clone() for k, v in inputs.items()}
    noisy["vision"][[0, 2]] = torch.randn(2, L_V, noisy["vision"].shape[-1]) * 10
    noisy["audio"][[1, 2]] = torch.randn(2, L_A, noisy["audio"].shape[-1]) * 10
    with torch.no_grad():
        a, b = model(**inputs), model(**noisy)
    for k in ("M", "ratio", "T", "V", "A"):      # its own unimodal score included
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------- modality dropout
def test_modality_dropout_drops_at_its_rate_never_everything_and_only_in_training():
    p = 0.4
    model = make_model(modality_dropout=p, ratio_source="consensus")
    inputs, labels = make_batch(b=400, seed=3)
    torch.manual_seed(0)
    out = model.train()(**inputs, labels=labels)
    present = out["present"]
    assert present.any(-1).all()                                   # never all three
    rate = 1 - present.float().mean()
    # each of 3 drops with p, except where all three would go (p^3 of the samples; one is put back)
    expected = p - p ** 3 / 3
    assert abs(float(rate) - expected) < 0.05, (float(rate), expected)
    assert torch.all(out["ratio"][~present] == 0)                # dropped = missing
    with torch.no_grad():
        ev = model.eval()(**inputs)
    assert ev["present"].all()                                     # evaluation never drops


def test_modality_dropout_makes_the_dropped_modality_exactly_missing(monkeypatch):
    """A dropped modality gives the same outputs as the same sample with it absent."""
    model = make_model(modality_dropout=0.5, ratio_source="consensus", fusion_dropout=0.0)
    inputs, labels = make_batch(b=16, seed=5)
    torch.manual_seed(1)
    out = model.train()(**inputs, labels=labels)
    gone = ~out["present"]
    assert gone[:, 1:].any(), "no vision or audio dropped: pick another seed"
    absent = {k: v.clone() for k, v in inputs.items()}
    absent["text"][gone[:, 0]] = 0
    absent["vision_lengths"] = inputs["vision_lengths"].masked_fill(gone[:, 1], 0)
    absent["audio_lengths"] = inputs["audio_lengths"].masked_fill(gone[:, 2], 0)
    with torch.no_grad():
        ref = model.eval()(**absent)       # no other dropout here: training = evaluation
    torch.testing.assert_close(ref["present"], out["present"])
    for k in ("M", "ratio", "T", "V", "A"):
        torch.testing.assert_close(out[k].detach(), ref[k], atol=1e-5, rtol=1e-5)


def test_modality_dropout_without_lengths():
    """Aligned data (no lengths): a dropped vision or audio gets length 0 like any missing one."""
    model = make_model(modality_dropout=0.5, ratio_source="consensus").train()
    inputs, labels = make_batch(b=2, seed=5)
    bare = {k: v for k, v in inputs.items() if not k.endswith("_lengths")}
    torch.manual_seed(2)
    out = model(**bare, labels=labels)
    assert out["present"].shape == (2, 3) and out["present"].any(-1).all()
    assert torch.all(out["ratio"][~out["present"]] == 0)
    # the same draws with the full lengths given: the same outputs (no length is the full one)
    full = dict(bare, audio_lengths=torch.full((2,), L_A), vision_lengths=torch.full((2,), L_V))
    torch.manual_seed(2)
    again = model(**full, labels=labels)
    for k in ("present", "M", "ratio", "V", "A"):
        torch.testing.assert_close(again[k], out[k])


def test_capture_blockers_name_what_runs_on_the_host():
    """A CUDA-graph step is refused, with the reason, exactly for modality dropout and for
    checkpointed sequences (both decide or restore random state on the host)."""
    assert make_model(gradient_checkpointing="none").capture_blockers() == []
    assert any("modality_dropout" in w for w in make_model(modality_dropout=0.2, gradient_checkpointing="none")
               .capture_blockers())
    for mode in ("sequences", "all"):
        assert any(mode in w for w in make_model(gradient_checkpointing=mode).capture_blockers())


# ---------------------------------------------------------------------- the ratio
def test_the_ratio_is_detached_and_fp32_under_bf16_autocast():
    model = make_model().train()
    inputs, labels = make_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**inputs, labels=labels)
    assert out["ratio"].dtype == torch.float32 and not out["ratio"].requires_grad


def test_label_ratio_exists_only_in_training():
    """Reference mode: no ratio at evaluation even when labels are passed; the dynamic
    'label' ablation falls back to the consensus target there."""
    inputs, labels = make_batch()
    ref = make_model(fusion_mode="reference", ratio_k=5.0).eval()
    with torch.no_grad():
        torch.testing.assert_close(ref(**inputs, labels=labels)["ratio"], torch.full((4, 3), 1 / 3))
    dyn = make_model(ratio_source="label", ratio_k=5.0).eval()
    with torch.no_grad():
        out = dyn(**inputs, labels=labels)
    s = torch.cat([out[m] for m in "TVA"], -1)
    e = torch.exp(-5.0 * (s - s.mean(-1, keepdim=True)) ** 2)
    torch.testing.assert_close(out["ratio"], e / e.sum(-1, keepdim=True))


def test_each_agreement_rule_targets_what_it_names_and_computes_only_what_it_needs():
    from types import SimpleNamespace

    from kuda_mmsa.model.ratio import RatioInputs
    from kuda_mmsa.registry import RATIO_RULES

    scores = torch.randn(2, 3)
    present = torch.tensor([[True, False, True], [True, True, True]])
    labels = torch.tensor([[0.5], [-1.0]])
    first_pass = torch.tensor([[0.2], [0.3]])

    def never():
        raise AssertionError("this rule must not ask for it")

    def inputs(training=True, labels=labels, pass_=never):
        return RatioInputs(scores=scores, present=present, labels=labels, training=training,
                           pooled=never, static_prediction=pass_)

    config = SimpleNamespace(ratio_k=0.1)
    mean_present = torch.tensor([[(scores[0, 0] + scores[0, 2]) / 2], [scores[1].mean()]])

    def target(name, model=None, **kw):
        return RATIO_RULES[name](config).target(model, inputs(**kw))

    s_, aux, _ = target("consensus")
    torch.testing.assert_close(s_, mean_present)
    assert aux is None
    s_, aux, report = target("prediction", pass_=lambda: first_pass)
    assert torch.equal(s_, first_pass) and torch.equal(report["estimate"], first_pass)
    torch.testing.assert_close(aux, ((first_pass - labels) ** 2).mean())      # it learns the label
    estimator = RATIO_RULES["estimate"](config).heads([4, 4, 4])["ratio_estimator"]
    s_, aux, _ = target("estimate", model=SimpleNamespace(ratio_estimator=estimator))
    torch.testing.assert_close(s_, estimator.mlp(scores * present))             # a missing score counts 0
    s_, _, _ = target("label")
    assert torch.equal(s_, labels)
    s_, _, _ = target("label", training=False, labels=None)    # no label at evaluation: consensus
    torch.testing.assert_close(s_, mean_present)


def test_a_row_with_no_modality_present_gets_the_uniform_ratio():
    logits = torch.tensor([[0.3, -1.0, 2.0], [0.3, -1.0, 2.0]])
    present = torch.tensor([[False, False, False], [True, False, True]])
    r = masked_softmax(logits, present)
    torch.testing.assert_close(r[0], torch.full((3,), 1 / 3))
    e = torch.exp(torch.tensor([0.3, 2.0]))
    torch.testing.assert_close(r[1], torch.stack([e[0] / e.sum(), torch.tensor(0.0), e[1] / e.sum()]))


def test_the_estimator_ignores_a_missing_modality_score():
    torch.manual_seed(0)
    est = RatioEstimator(3)
    scores = torch.randn(4, 3)
    present = torch.tensor([[True, False, True]] * 4)
    moved = scores.clone()
    moved[:, 1] = torch.randn(4) * 10
    torch.testing.assert_close(est(scores, present), est(moved, present))
    torch.testing.assert_close(est(scores, present), est(scores * present, None))


def test_the_prediction_source_takes_the_static_fusion_prediction_as_its_target():
    """ratio_source 'prediction': the target is the same network's prediction with every
    modality weighted 1 (static fusion)."""
    inputs, _ = make_batch()
    dyn = make_model(ratio_source="prediction", ratio_k=5.0).eval()
    static = make_model(ratio_source="prediction", use_ratio=False).eval()
    static.load_state_dict(dyn.state_dict())
    with torch.no_grad():
        out, plain = dyn(**inputs), static(**inputs)
    torch.testing.assert_close(out["estimate"], plain["M"])
    s = torch.cat([out[m] for m in "TVA"], -1)
    e = torch.exp(-5.0 * (s - plain["M"]) ** 2)
    torch.testing.assert_close(out["ratio"], e / e.sum(-1, keepdim=True))


# ---------------------------------------------------------------------- structure
def test_the_given_text_encoder_is_the_text_branchs():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64))
    model = KuDA(make_config(), text_encoder=bert)
    assert model.branches["T"].bert is bert
    assert all(not hasattr(model.branches[m], "bert") or model.branches[m].bert is not bert for m in "VA")


@pytest.mark.parametrize("fusion", ["concat", "add", "late"])
def test_fusion_ablations_have_no_daf_blocks(fusion):
    model = make_model(fusion=fusion)
    assert len(model.blocks) == 0 and model.fusion_variant is not None


def test_gradient_checkpointing_all_also_checkpoints_the_text_encoder():
    def on(model):
        bert = model.branches["T"].bert
        return bool(getattr(bert, "is_gradient_checkpointing", False))

    assert on(make_model(gradient_checkpointing="all"))
    assert not on(make_model(gradient_checkpointing="sequences")) and not on(make_model(gradient_checkpointing="none"))
    # and it still trains the text encoder (non-reentrant checkpointing: its weights get gradients)
    model = make_model(gradient_checkpointing="all").train()
    inputs, labels = make_batch()
    model(**inputs, labels=labels)["M"].sum().backward()
    grads = [p.grad for p in model.branches["T"].bert.encoder.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
