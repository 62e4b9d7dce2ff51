"""Behaviour of the KuDA network that users rely on (no MMSA needed)."""
import math

import pytest
import torch
from transformers import BertConfig

from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.model import (KuDA, KuDAConfig, correlation_estimation_loss, scaled_layer_indices,
                             sentiment_ratio)

L_T, L_A, L_V = 12, 20, 16
D_A, D_V = 5, 7
VOCAB = 100


def make_config(**over):
    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    base = dict(feature_dims=[32, D_A, D_V], seq_lens=[L_T, L_A, L_V], pretrained=bert, hidden_size=32,
                fusion_heads=4, fusion_head_dim=8, fusion_ff_size=64, av_hidden_size=16, av_heads=4,
                av_ff_size=16, av_layers=4, fusion_dropout=0.0, av_dropout=0.0, adapter_dropout=0.0,
                decoder_dropout=0.0)
    base.update(over)
    return KuDAConfig(**base)


def make_model(seed=0, **over):
    torch.manual_seed(seed)
    return KuDA(make_config(**over))


def make_batch(b=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (b, L_T), generator=g)
    text_len = torch.randint(3, L_T + 1, (b,), generator=g)
    mask = (torch.arange(L_T)[None] < text_len[:, None]).float()
    ids = ids * mask.long()
    text = torch.stack([ids.float(), mask, torch.zeros(b, L_T)], 1)
    al = torch.randint(1, L_A + 1, (b,), generator=g)
    vl = torch.randint(1, L_V + 1, (b,), generator=g)
    audio = torch.randn(b, L_A, D_A, generator=g) * (torch.arange(L_A)[None, :, None] < al[:, None, None])
    vision = torch.randn(b, L_V, D_V, generator=g) * (torch.arange(L_V)[None, :, None] < vl[:, None, None])
    labels = torch.rand(b, 1, generator=g) * 2 - 1
    return dict(text=text, audio=audio, vision=vision, audio_lengths=al, vision_lengths=vl), labels


def test_forward_contract_shapes_and_gradients():
    model = make_model()
    inputs, labels = make_batch()
    out = model(**inputs, labels=labels)
    assert set(out) >= {"M", "T", "V", "A", "ratio", "ce"}
    for k in "MTVA":
        assert out[k].shape == (4, 1)
    assert out["ratio"].shape == (4, 3)
    torch.testing.assert_close(out["ratio"].sum(-1), torch.ones(4))
    assert out["ce"].dim() == 0
    (out["M"].pow(2).mean() + out["ce"]).backward()
    grads = [p.grad for p in model.blocks.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_padding_content_does_not_change_predictions_in_dynamic_mode():
    model = make_model().eval()
    inputs, _ = make_batch()
    ref = model(**inputs)
    noisy = {k: v.clone() for k, v in inputs.items()}
    for key, lengths, length in (("audio", "audio_lengths", L_A), ("vision", "vision_lengths", L_V)):
        pad = torch.arange(length)[None, :] >= inputs[lengths][:, None]
        noisy[key][pad] = torch.randn_like(noisy[key][pad]) * 100
    text_pad = inputs["text"][:, 1] == 0
    noisy["text"][:, 0][text_pad] = torch.randint(1, VOCAB, (int(text_pad.sum()),)).float()
    out = model(**noisy)
    for k in ("M", "T", "V", "A", "ratio"):
        torch.testing.assert_close(out[k], ref[k], atol=1e-5, rtol=1e-5)


def test_reference_mode_ratio_is_inert_but_dynamic_ratio_is_not():
    inputs, labels = make_batch()
    other = -labels  # a different target gives different ratios
    # A large k spreads the ratios so that an effect, if any, is far above rounding.
    ref_model = make_model(fusion_mode="reference", ratio_k=5.0).train()
    a, b = ref_model(**inputs, labels=labels), ref_model(**inputs, labels=other)
    assert (a["ratio"] - b["ratio"]).abs().max() > 1e-3
    # (1 + R_m) scales y_m uniformly and LN_m removes the scale: only LayerNorm's eps is left.
    torch.testing.assert_close(a["M"], b["M"], atol=1e-4, rtol=1e-4)

    dyn = make_model(fusion_mode="dynamic", ratio_source="label", ratio_k=5.0).train()
    c, d = dyn(**inputs, labels=labels), dyn(**inputs, labels=other)
    assert (c["M"] - d["M"]).abs().max() > 1e-3


def test_dynamic_ratio_changes_output_against_static_fusion():
    inputs, _ = make_batch()
    dyn = make_model(ratio_k=5.0).eval()
    static = make_model(ratio_k=5.0, use_ratio=False).eval()
    static.load_state_dict(dyn.state_dict())
    out_d, out_s = dyn(**inputs), static(**inputs)
    torch.testing.assert_close(out_s["ratio"], torch.full((4, 3), 1 / 3))
    assert (out_d["ratio"] - 1 / 3).abs().max() > 1e-4
    assert (out_d["M"] - out_s["M"]).abs().max() > 1e-5


def test_dynamic_mode_trains_and_evaluates_the_same_computation():
    model = make_model()
    inputs, labels = make_batch()
    train_out = model.train()(**inputs, labels=labels)
    eval_out = model.eval()(**inputs)
    for k in ("M", "ratio", "ce"):
        torch.testing.assert_close(train_out[k], eval_out[k], atol=1e-6, rtol=1e-6)


def test_reference_mode_trains_and_evaluates_different_combines():
    model = make_model(fusion_mode="reference")
    with torch.no_grad():  # trained LN_m are not the identity they start as
        for block in model.blocks:
            for norm in block.ratio_norms:
                norm.weight.uniform_(0.5, 1.5)
                norm.bias.uniform_(-0.5, 0.5)
    inputs, labels = make_batch()
    train_out = model.train()(**inputs, labels=labels)
    eval_out = model.eval()(**inputs)
    assert (train_out["M"] - eval_out["M"]).abs().max() > 1e-4


def test_ratio_formula_matches_hand_computation():
    scores = torch.tensor([[0.5, -0.2, 0.9]])
    s, k = 0.3, 0.1
    r = [math.exp(-k * (x - s) ** 2) for x in scores[0].tolist()]
    expected = torch.tensor([[x / sum(r) for x in r]])
    torch.testing.assert_close(sentiment_ratio(scores, torch.tensor([[s]]), k), expected)


def test_ce_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(5, 8, generator=g) for _ in range(3)]
    p = torch.randn(5, 8, generator=g)
    total = 0.0
    pn = [row / row.norm() for row in p]
    for x in xs:
        xn = [row / row.norm() for row in x]
        acc = 0.0
        for b in range(5):
            sims = [float(xn[b] @ pn[j]) for j in range(5)]
            acc += sims[b] - math.log(sum(math.exp(s) for s in sims))
        total += -acc / 5
    assert correlation_estimation_loss(xs, p).item() == pytest.approx(total, rel=1e-5)


def test_adapter_layer_indices_scale_with_depth():
    assert scaled_layer_indices([3, 6, 9, 11], 12) == [3, 6, 9, 11]
    assert scaled_layer_indices([3, 6, 9, 11], 4) == [1, 2, 3, 4]
    assert scaled_layer_indices([3, 6, 9, 11], 6) == [2, 3, 5, 6]


def test_token_ids_outside_vocabulary_are_a_clear_error():
    model = make_model().eval()
    inputs, _ = make_batch()
    inputs["text"][0, 0, 0] = VOCAB + 5
    with pytest.raises(KudaInputError, match="vocabulary"):
        model(**inputs)


def test_invalid_fusion_mode_is_a_clear_error():
    with pytest.raises(KudaInputError, match="'fusion_mode'.*'dynamic', 'reference'.*'static'"):
        KuDAConfig.from_dict({"fusion_mode": "static", "feature_dims": [768, 5, 20], "seq_lens": [50, 375, 500]})


def test_estimate_ratio_source_is_label_free_and_trains_its_estimator():
    model = make_model(ratio_source="estimate", ratio_k=5.0)
    inputs, labels = make_batch()
    train_out = model.train()(**inputs, labels=labels)
    expected = torch.nn.functional.mse_loss(train_out["estimate"], labels)
    torch.testing.assert_close(train_out["aux"], expected)
    train_out["aux"].backward()
    assert all(p.grad is not None for p in model.ratio_estimator.parameters())
    # The ratio targets the estimate, not the label: same ratio with or without labels.
    eval_out = model.eval()(**inputs)
    assert "aux" not in eval_out
    torch.testing.assert_close(train_out["ratio"], eval_out["ratio"])
    scores = torch.cat([eval_out[m] for m in "TVA"], -1)
    torch.testing.assert_close(eval_out["ratio"], sentiment_ratio(scores, eval_out["estimate"], 5.0))


@pytest.mark.parametrize("mode", ["sequences", "all", "auto"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(mode):
    # With dropout on: the recomputation must draw the same masks as the first pass.
    drop = dict(fusion_dropout=0.2, av_dropout=0.2, adapter_dropout=0.1)
    inputs, labels = make_batch()
    plain = make_model(gradient_checkpointing="none", **drop).train()
    ckpt = make_model(gradient_checkpointing=mode, **drop).train()
    ckpt.load_state_dict(plain.state_dict())
    grads, losses = [], []
    for model in (plain, ckpt):
        torch.manual_seed(5)
        out = model(**inputs, labels=labels)
        loss = out["M"].pow(2).mean() + out["ce"]
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[1], losses[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_modes_choose_the_documented_stacks():
    from kuda_mmsa.model.layers import TransformerStack

    def stacks(model):
        return {n: m.checkpointing for n, m in model.named_modules() if isinstance(m, TransformerStack)}

    auto = stacks(make_model())  # the default
    assert {v for n, v in auto.items() if n.startswith(("branches.V.", "branches.A."))} == {"cpu"}
    assert {v for n, v in auto.items() if n.startswith("branches.T.")} == {"never"}
    seq = stacks(make_model(gradient_checkpointing="sequences"))
    assert {v for n, v in seq.items() if n.startswith(("branches.V.", "branches.A."))} == {"always"}
    assert {v for n, v in seq.items() if n.startswith("branches.T.")} == {"never"}
    assert set(stacks(make_model(gradient_checkpointing="all")).values()) == {"always"}
    assert set(stacks(make_model(gradient_checkpointing="none")).values()) == {"never"}
    # Earlier versions' booleans keep their meaning; anything else is a clear error.
    assert make_config(gradient_checkpointing=True).gradient_checkpointing == "all"
    assert make_config(gradient_checkpointing=False).gradient_checkpointing == "none"
    with pytest.raises(KudaInputError, match="gradient_checkpointing.*'sequences'.*found 'audio'"):
        make_config(gradient_checkpointing="audio")
    with pytest.raises(KudaInputError, match="gradient_checkpointing"):
        make_config(gradient_checkpointing=1)


def test_dropout_keeps_p_unbiased_masks_gradients_and_follows_the_seed():
    from kuda_mmsa.model.layers import Dropout

    x = torch.rand(400, 500) + 0.5
    x.requires_grad_(True)
    for p in (0.1, 0.3, 0.5):
        drop = Dropout(p).train()
        torch.manual_seed(0)
        y = drop(x)
        kept = y != 0
        n = kept.numel()
        # binomial: the kept share within 5 standard deviations of 1 - p
        assert abs(kept.float().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
        torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=2e-4, atol=0)  # p rounded to 1/32768
        assert abs(y.sum().item() / x.sum().item() - 1) < 0.01                     # unbiased
        g = torch.randn_like(x)
        (dx,) = torch.autograd.grad(y, x, g)
        torch.testing.assert_close(dx, torch.where(kept, g / (1 - p), 0.0), rtol=2e-4, atol=0)
        torch.manual_seed(0)
        assert torch.equal(drop(x), y)                         # the same seed draws the same mask
        assert not torch.equal(drop(x), y)                     # and the next call another one
    assert torch.equal(Dropout(0.3).eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_the_text_encoders_dropouts_are_swapped_with_their_rates():
    from kuda_mmsa.model.layers import Dropout

    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, hidden_dropout_prob=0.15, attention_probs_dropout_prob=0.05)
    model = make_model(pretrained=bert)
    drops = [m for m in model.branches["T"].bert.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(type(m) is Dropout for m in drops)
    assert {m.p for m in drops} == {0.15, 0.05}  # hidden states; attention (its p is read by SDPA)


def test_self_attention_on_the_fused_kernel_matches_sdpa(monkeypatch):
    from kuda_mmsa import ops
    from kuda_mmsa.model.layers import SelfAttention

    if not ops.compiled("cpu"):
        pytest.skip("the CPU kernel is not built")
    torch.manual_seed(0)
    attn = SelfAttention(16, 4)
    x = torch.randn(3, 11, 16, requires_grad=True)
    pad = torch.arange(11)[None] >= torch.tensor([11, 6, 1])[:, None]
    calls = []
    real = ops.ratio_cross_attention
    monkeypatch.setattr(ops, "ratio_cross_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    fused = attn(x, pad)
    assert calls, "the CPU path did not take the fused kernel"
    (g_fused,) = torch.autograd.grad(fused.square().sum(), x)
    monkeypatch.setattr(ops, "compiled", lambda device_type: False)   # SDPA, the reference here
    ref = attn(x, pad)
    (g_ref,) = torch.autograd.grad(ref.square().sum(), x)
    torch.testing.assert_close(fused, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_fused, g_ref, atol=1e-5, rtol=1e-4)


def test_dynamic_mode_skips_batch_wide_padding_without_changing_results():
    model = make_model().eval()
    inputs, _ = make_batch()
    inputs["audio_lengths"] = torch.tensor([5, 3, 7, 2])  # the last 13 audio steps are padding for all
    inputs["audio"][:, 7:] = 0
    trimmed = model(**inputs)
    model.branches["A"].trim_padding = False
    full = model(**inputs)
    for k in ("M", "A", "ratio"):
        torch.testing.assert_close(trimmed[k], full[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("over", [dict(fusion_mode="reference"), dict(use_ratio=False), dict(),
                                  dict(ratio_source="estimate")], ids=["reference", "static", "reliability", "estimate"])
def test_a_model_builds_only_the_ratio_heads_its_rule_uses_and_runs_in_float64(over):
    # reference mode's ratio comes from the label and static fusion has none: neither may carry
    # (or run) learned ratio heads; an fp64 model computes in fp64 throughout
    model = make_model(**over).double()
    heads = {n.split(".")[0] for n, _ in model.named_parameters()} & {"reliability", "ratio_estimator"}
    rule = model.config.ratio_source if model.dynamic and model.config.use_ratio else None
    assert heads == ({"reliability"} if rule == "reliability" else {"ratio_estimator"} if rule == "estimate"
                     else set())
    x, y = make_batch()
    x = {k: v.double() if v.is_floating_point() else v for k, v in x.items()}
    out = model(**x, labels=y.double())
    assert out["M"].dtype == torch.float64 and torch.isfinite(out["M"]).all()
    model.eval()
    with torch.no_grad():
        assert model(**x)["M"].dtype == torch.float64


def test_weights_saved_with_every_ratio_head_still_load_into_reference_mode():
    # earlier versions built the reliability heads in every mode; their reference-mode weights
    # must load (the unused heads skipped), and an unknown key must still be refused
    old = make_model(fusion_mode="reference")
    state = dict(old.state_dict())
    state.update({f"reliability.{k}": v for k, v in make_model().reliability.state_dict().items()})
    fresh = make_model(seed=3, fusion_mode="reference")
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in old.state_dict().items())
    with pytest.raises(RuntimeError, match="not_a_head"):
        fresh.load_state_dict({**state, "not_a_head.weight": torch.zeros(1)})


def test_forward_returns_a_typed_output_that_reads_like_mmsas_dict():
    from kuda_mmsa.model.outputs import KuDAOutput

    model = make_model()          # reliability: reports log_var; given labels, its aux loss
    x, y = make_batch()
    out = model(**x, labels=y)
    assert isinstance(out, KuDAOutput)
    assert list(out.keys()) == ["M", "T", "V", "A", "ratio", "present", "ce", "aux", "log_var"]
    assert all(out[k] is getattr(out, k) for k in out.keys()) and dict(out.items())["M"] is out.M
    assert "estimate" not in out and out.get("estimate") is None
    with pytest.raises(KeyError):
        out["estimate"]
    model.eval()
    with torch.no_grad():
        assert "aux" not in model(**x)                       # no labels, no auxiliary loss
    out.with_report({"log_var": out.ratio, "toy": out.M})    # a rule's own names go to extras
    assert out.log_var is out.ratio and out["toy"] is out.M and "toy" in out.keys()
