"""KuDA's forward contract, through its outputs and config keys only (no private helpers, so
these tests outlive a refactor of kuda_mmsa/model): which outputs each ratio_source adds, the
auxiliary loss only with labels and only in dynamic mode, the authors' combine only in
training, and static fusion's uniform ratio. References are computed here.
"""
import pytest
import torch
from test_model import make_batch, make_model


def _forward(model, labels=None, **batch_over):
    batch, y = make_batch()
    batch.update(batch_over)
    return model(**batch, labels=y if labels is True else labels), y


@pytest.mark.parametrize("source, extra", [("estimate", {"estimate"}), ("prediction", {"estimate"}),
                                           ("reliability", {"log_var"}), ("consensus", set()),
                                           ("label", set())])
def test_each_ratio_source_adds_its_outputs_in_dynamic_mode(source, extra):
    model = make_model(ratio_source=source).eval()
    with torch.no_grad():
        out, _ = _forward(model)
    base = {"M", "T", "V", "A", "ratio", "present", "ce"}
    assert set(out) == base | extra                            # no labels: no auxiliary loss
    b = out["M"].shape[0]
    for k in extra:
        assert out[k].shape == ((b, 1) if k == "estimate" else (b, 3))
    torch.testing.assert_close(out["ratio"].sum(-1), torch.ones(b))


def test_the_estimators_auxiliary_loss_is_its_mse_against_the_labels():
    model = make_model(ratio_source="estimate").train()
    out, y = _forward(model, labels=True)
    want = ((out["estimate"].detach().double() - y.double()) ** 2).mean()
    assert float(out["aux"]) == pytest.approx(float(want), rel=1e-5)
    assert out["aux"].requires_grad


def test_the_reliability_heads_learn_from_the_labels_only_when_given():
    model = make_model(ratio_source="reliability").train()
    out, y = _forward(model, labels=True)
    assert set(out) >= {"log_var", "aux"} and torch.isfinite(out["aux"]) and out["aux"].requires_grad
    out["aux"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("source", ["estimate", "reliability", "prediction"])
def test_reference_mode_has_no_label_free_heads_in_its_outputs(source):
    model = make_model(ratio_source=source, fusion_mode="reference").train()
    out, _ = _forward(model, labels=True)
    assert not {"estimate", "log_var", "aux"} & set(out)


def test_static_fusion_reports_the_uniform_ratio_and_ignores_the_labels():
    model = make_model(use_ratio=False).train()
    torch.manual_seed(0)
    with_labels, _ = _forward(model, labels=True)
    torch.manual_seed(0)
    without, _ = _forward(model)
    torch.testing.assert_close(with_labels["ratio"], torch.full_like(with_labels["ratio"], 1 / 3))
    torch.testing.assert_close(with_labels["M"], without["M"], rtol=0, atol=0)


def test_the_authors_combine_acts_in_dynamic_training_only():
    """authors_combine: sum_m LN_m((1 + R_m) y_m) in training (the authors' code); evaluation
    and every run without it compute the same as evaluation."""
    torch.manual_seed(0)
    on = make_model(authors_combine=True)
    off = make_model(authors_combine=False)
    # the combine's own parameters (what "on" has besides "off"'s), moved off their identity
    # start as training would move them
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in on.named_parameters():
            if name in extra:
                p.copy_(torch.randn(p.shape, generator=g))
    off.load_state_dict({k: v for k, v in on.state_dict().items() if k not in extra})
    with torch.no_grad():
        m = {}
        for name, model in (("on", on), ("off", off)):
            for mode in ("train", "eval"):
                getattr(model, mode)()
                m[name, mode] = _forward(model, labels=True)[0]["M"]
    torch.testing.assert_close(m["off", "train"], m["off", "eval"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["on", "eval"], m["off", "eval"], rtol=1e-5, atol=1e-6)
    assert (m["on", "train"] - m["on", "eval"]).abs().max() > 1e-4


def test_check_inputs_refuses_the_ids_forward_would_refuse():
    """The host check a captured step runs (check_inputs) refuses token ids outside the text
    encoder's vocabulary (VOCAB ids, written in test_model) and segment ids outside its token
    types (BERT: 2), and passes a valid batch whatever else it is given."""
    from test_model import VOCAB

    from kuda_mmsa.errors import KudaInputError

    model = make_model()
    batch, _ = make_batch()
    model.check_inputs(**batch)                                  # valid: no error
    for bad_id in (VOCAB, -1):
        bad = dict(batch, text=batch["text"].clone())
        bad["text"][1, 0, 0] = bad_id
        with pytest.raises(KudaInputError, match="vocabulary of 100 tokens"):
            model.check_inputs(**bad)
    bad = dict(batch, text=batch["text"].clone())
    bad["text"][0, 2, 0] = 2                                     # segment id 2: BERT has types 0 and 1
    with pytest.raises(KudaInputError, match="has 2 token types"):
        model.check_inputs(**bad)


def test_checkpointing_all_reaches_a_text_encoder_with_only_the_older_method_name():
    """gradient_checkpointing: all also checkpoints a text encoder that has only
    gradient_checkpointing_enable (transformers 4's name), and it still trains."""
    from transformers import BertModel

    from test_model import make_config

    class OlderBert(BertModel):
        @property
        def activation_checkpointing_enable(self):        # as in transformers 4: no such method
            raise AttributeError("activation_checkpointing_enable")

        def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
            # transformers 4's method (transformers 5 runs it as an override of its alias)
            super().gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def on(b):      # transformers 5 name, else 4's
        return bool(b.is_activation_checkpointing if hasattr(b, "is_activation_checkpointing")
                    else b.is_gradient_checkpointing)

    config = make_config(gradient_checkpointing="all")
    torch.manual_seed(0)
    bert = OlderBert(config.pretrained)
    assert not hasattr(bert, "activation_checkpointing_enable") and not on(bert)
    from kuda_mmsa.model import KuDA

    model = KuDA(config, text_encoder=bert).train()
    assert model.branches["T"].bert is bert and on(bert)
    batch, y = make_batch()
    model(**batch, labels=y)["M"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in bert.encoder.parameters())
