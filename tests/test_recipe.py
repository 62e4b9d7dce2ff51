"""The training recipe the README states, checked against the recipe written here:

- stage 2: loss = MSE + ce_weight · CE (+ the ratio heads' own losses in dynamic mode),
  AdamW, a linear warm-up per step over warmup_ratio of the steps then cosine decay to 0,
  the global gradient norm clipped at grad_clip (0 = off);
- the epoch is selected on the validation set by KeyEval, with early stopping, and a run
  that diverges keeps the best checkpoint and the last good state;
- reference mode trains as the authors do (AUTHORS below: the loss terms, where dropout acts,
  how position embeddings start), no label-free ratio heads in its loss.

The stage-2 trainer runs a probe network here: its outputs are simple functions of its
parameters, so the test computes the gradient the recipe asks for itself.
"""
import copy
import math
from pathlib import Path

import pytest
import torch
from test_model import make_batch, make_config, make_model
from tiny_kuda import write_tiny_config
from torch import nn

from kuda_mmsa.errors import KudaTrainingError
from kuda_mmsa.model import KuDA

# The authors' training, as their code does it (the README's table "Dynamic and reference
# mode"). Clipping and the per-epoch LR schedule are where the README says ours differs.
AUTHORS = {
    "loss terms": ("MSE", "ce_weight * CE"),
    "cross-attention dropout": "after the output projection",
    "DAF feed-forward dropout": 0.0,
    "attention-probability dropout": "encoders and adapters",
    "position embeddings start": "zeros",
    "decoder dropout": 0.0,
}


# ---------------------------------------------------------------------- a probe in the trainer
class Probe(nn.Module):
    """Stands in for KuDA in the stage-2 trainer: M = <x, w> + b and ce = mean((<x, c>)²) for
    the pooled audio x, aux = 0.3 b² when `aux` is on; remembers each training forward."""

    def __init__(self, dim, aux=False, nan_from_call=None):
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.w = nn.Parameter(torch.randn(dim, generator=g))
        self.b = nn.Parameter(torch.full((1,), 0.5))
        self.c = nn.Parameter(torch.randn(dim, generator=g))
        self.aux, self.nan_from_call = aux, nan_from_call
        self.calls = []

    def capture_blockers(self):            # the trainer's step protocol (kuda.KuDA has the same)
        return ["a probe: its forward remembers each call on the host"]

    def check_inputs(self, **_):
        pass

    def forward(self, text, audio, vision, audio_lengths=None, vision_lengths=None, labels=None):
        x = audio.float().mean(1)
        m = (x @ self.w + self.b)[:, None]
        b = x.shape[0]
        out = {"M": m, "T": m.detach(), "V": m.detach(), "A": m.detach(), "ratio": torch.full((b, 3), 1 / 3),
               "present": torch.ones(b, 3, dtype=torch.bool), "ce": ((x @ self.c) ** 2).mean()}
        if self.aux:
            out["aux"] = 0.3 * (self.b ** 2).sum()
        if self.training and labels is not None:
            self.calls.append((x.detach().clone(), labels.detach().clone(),
                               {k: v.detach().clone() for k, v in self.named_parameters()}))
            if self.nan_from_call is not None and len(self.calls) >= self.nan_from_call:
                out["M"] = out["M"] * float("nan")
        return out


def recipe_gradients(x, y, params, ce_weight, aux):
    """The gradient of the README's loss at `params` for the batch (x, y)."""
    p = {k: v.clone().requires_grad_() for k, v in params.items()}
    m = (x @ p["w"] + p["b"])[:, None]
    loss = ((m - y) ** 2).mean() + ce_weight * ((x @ p["c"]) ** 2).mean()
    if aux:
        loss = loss + 0.3 * (p["b"] ** 2).sum()
    loss.backward()
    return {k: v.grad for k, v in p.items()}


@pytest.fixture
def probe_run(tiny_demo_pickle, tmp_path, monkeypatch):
    """run(**config) -> (probe, optimizer steps seen, args): the stage-2 trainer on the tiny
    demo data with a Probe; each optimizer step records the lr and the gradients it applies."""
    from test_training import make_kuda_args

    from kuda_mmsa.training.trainer import KuDATrainer

    steps = []
    real_step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        group = self.param_groups[0]
        steps.append({"lr": group["lr"], "weight_decay": group["weight_decay"],
                      "grads": [p.grad.detach().clone() for p in group["params"]]})
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)

    def run(aux=False, nan_from_call=None, **config):
        config = {"use_knowledge": False, "precision": "fp32", "plots": False, **config}
        cfg = write_tiny_config(tmp_path / "c.yaml", **config)
        args, loaders = make_kuda_args(tiny_demo_pickle, cfg, tmp_path)
        probe = Probe(args["feature_dims"][1], aux=aux, nan_from_call=nan_from_call)
        trainer = KuDATrainer(args)
        trainer.do_train(probe, loaders())
        return probe, steps, args

    return run


def _flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def test_loss_is_mse_plus_ce_weight_times_ce_and_clipping_is_off_at_zero(probe_run):
    probe, steps, args = probe_run(epochs=1, grad_clip=0.0, ce_weight=0.25)
    assert len(steps) == len(probe.calls) == 4            # 30 samples, batches of 8
    names = [n for n, _ in probe.named_parameters()]
    for (x, y, params), step in zip(probe.calls, steps):
        want = recipe_gradients(x, y, params, 0.25, aux=False)
        torch.testing.assert_close(_flat(step["grads"]), _flat([want[n] for n in names]), rtol=1e-5, atol=1e-6)


def test_the_ratio_heads_own_loss_is_added(probe_run):
    probe, steps, args = probe_run(epochs=1, grad_clip=0.0, aux=True)
    names = [n for n, _ in probe.named_parameters()]
    for (x, y, params), step in zip(probe.calls, steps):
        want = recipe_gradients(x, y, params, float(args["ce_weight"]), aux=True)
        torch.testing.assert_close(_flat(step["grads"]), _flat([want[n] for n in names]), rtol=1e-5, atol=1e-6)


def test_the_global_gradient_norm_is_clipped_at_grad_clip(probe_run):
    clip = 0.05
    probe, steps, args = probe_run(epochs=1, grad_clip=clip)
    names = [n for n, _ in probe.named_parameters()]
    clipped = 0
    for (x, y, params), step in zip(probe.calls, steps):
        raw = _flat([recipe_gradients(x, y, params, float(args["ce_weight"]), aux=False)[n] for n in names])
        norm = float(raw.norm())
        want = raw * min(1.0, clip / (norm + 1e-6))
        clipped += norm > clip
        torch.testing.assert_close(_flat(step["grads"]), want, rtol=1e-5, atol=1e-7)
    assert clipped == len(steps), "the probe's gradients should all be above the clip norm"


def test_default_recipe_is_adamw_with_clipping_at_one():
    from kuda_mmsa.config.schema import SCHEMA

    assert SCHEMA["grad_clip"].default == 1.0
    assert SCHEMA["ce_weight"].default == 0.1
    assert SCHEMA["warmup_ratio"].default == 0.1
    assert SCHEMA["decoder_dropout"].default == AUTHORS["decoder dropout"]


def test_lr_warms_up_linearly_per_step_then_decays_as_a_cosine(probe_run):
    lr, ratio = 1e-3, 0.25
    probe, steps, args = probe_run(epochs=5, early_stop=50, learning_rate=lr, warmup_ratio=ratio,
                                   weight_decay=0.01)
    total = 5 * 4
    warm = int(total * ratio)
    want = [lr * (i + 1) / warm if i < warm else lr * 0.5 * (1 + math.cos(math.pi * (i - warm) / (total - warm)))
            for i in range(total)]
    got = [s["lr"] for s in steps]
    assert len(got) == total
    for i, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-15), (i, got, want)
    assert max(got) == pytest.approx(lr) and got.index(max(got)) == warm - 1
    assert all(s["weight_decay"] == 0.01 for s in steps)


# ---------------------------------------------------------------------- epoch selection
def test_the_epoch_with_the_best_validation_key_is_kept_and_training_stops_early(probe_run, monkeypatch):
    """Validation KeyEval (Loss for the demo data: lower is better) per epoch as scripted
    here; the weights at the save path are those after the best epoch, and training stops
    `early_stop` epochs after it."""
    from kuda_mmsa.training.trainer import KuDATrainer

    script = [0.5, 0.3, 0.4, 0.35, 0.31, 0.2, 0.1]
    seen = []

    def scripted(self, model, dataloader, mode="VAL", return_sample_results=False):
        if mode != "VAL":
            return {"Loss": 0.0}
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"Loss": script[len(seen) - 1], "Corr": 0.0}

    monkeypatch.setattr(KuDATrainer, "do_test", scripted)
    probe, steps, args = probe_run(epochs=7, early_stop=3)
    assert len(seen) == 5                                  # epochs 3, 4, 5 did not beat epoch 2
    saved = torch.load(args["model_save_path"], weights_only=True)
    best = min(range(len(seen)), key=lambda i: script[i])
    for k, v in saved.items():
        torch.testing.assert_close(v, seen[best][k], rtol=0, atol=0)
    import json

    info = json.loads(Path(str(args["model_save_path"]) + ".json").read_text())
    assert info["epoch"] == best + 1 and info["valid"] == {"Loss": script[best]}


def test_a_diverging_run_keeps_the_best_weights_and_the_last_good_state(probe_run, monkeypatch):
    from kuda_mmsa.training.trainer import KuDATrainer

    states = []
    script = [0.5, 0.3, 0.4, 0.2]

    def scripted(self, model, dataloader, mode="VAL", return_sample_results=False):
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"Loss": script[len(states) - 1]}

    monkeypatch.setattr(KuDATrainer, "do_test", scripted)
    with pytest.raises(KudaTrainingError, match="epoch 4") as e:
        probe_run(epochs=6, early_stop=10, nan_from_call=13)      # 4 steps per epoch: epoch 4 diverges
    save = Path(str(e.value).split("is kept at ")[1].split(",")[0])
    resume = Path(str(save) + ".resume")
    assert len(states) == 3
    weights = torch.load(save, weights_only=True)                  # best: epoch 2
    for k, v in weights.items():
        torch.testing.assert_close(v, states[1][k], rtol=0, atol=0)
    state = torch.load(resume, weights_only=True)                  # last good: after epoch 3
    assert state["epoch"] == 3 and state["best_epoch"] == 2
    for k, v in state["model"].items():
        torch.testing.assert_close(v, states[2][k], rtol=0, atol=0)


# ---------------------------------------------------------------------- reference mode = the authors'
def test_reference_mode_trains_on_the_authors_loss_terms_only():
    """No label-free ratio head adds a loss in reference mode (the authors have none), whatever
    ratio_source says; dynamic mode's reliability heads do add theirs."""
    inputs, labels = make_batch()
    for source in ("reliability", "estimate"):
        ref = make_model(fusion_mode="reference", ratio_source=source).train()
        out = ref(**inputs, labels=labels)
        assert "aux" not in out, source
        dyn = make_model(fusion_mode="dynamic", ratio_source=source).train()
        assert "aux" in dyn(**inputs, labels=labels), source


def _daf_messages(model, inputs, labels):
    got = []
    hooks = [b.cross.register_forward_hook(lambda mod, a, out: got.append(out)) for b in model.blocks]
    model(**inputs, labels=labels)
    for h in hooks:
        h.remove()
    return [msg for msgs in got for msg in msgs]


@pytest.mark.parametrize("mode", ["reference", "dynamic"])
def test_dropout_acts_where_each_mode_says(mode):
    p = 0.5
    torch.manual_seed(0)
    model = make_model(fusion_mode=mode, fusion_dropout=p, av_dropout=p, adapter_dropout=p).train()
    inputs, labels = make_batch()
    zero_share = torch.stack([(m == 0).float().mean() for m in _daf_messages(model, inputs, labels)]).mean()
    block = model.blocks[0]
    x = torch.randn(4, 12, block.ff_norm.normalized_shape[0])
    ff_varies = not torch.equal(block.ff(x), block.ff(x))
    sources, w = [torch.randn_like(x) for _ in range(3)], torch.ones(4, 3)
    assert not torch.equal(block.cross(x, sources, w, None)[0], block.cross(x, sources, w, None)[0])  # it drops
    attn = [mod for name, mod in model.named_modules()
            if name.startswith(("branches.V.encoder", "branches.A.adapters")) and hasattr(mod, "attn_dropout")]
    assert attn, "no self-attention found in the vision encoder and audio adapters"
    if mode == "reference":
        # after the output projection: whole output elements are dropped (p of them zero)
        assert 0.4 < float(zero_share) < 0.6
        assert AUTHORS["DAF feed-forward dropout"] == 0.0 and not ff_varies
        assert all(a.attn_dropout == p for a in attn)          # attention probabilities dropped
    else:
        # before the projection (its bias makes exact zeros rare); the DAF feed-forward drops
        assert float(zero_share) < 0.01
        assert ff_varies
        assert all(a.attn_dropout == 0.0 for a in attn)


def test_attention_probability_dropout_changes_the_attention_in_reference_mode_only():
    """What attn_dropout promises: in training the same input attends differently call to
    call in reference mode, identically in dynamic mode (other dropouts off)."""
    for mode, varies in (("reference", True), ("dynamic", False)):
        torch.manual_seed(0)
        model = make_model(fusion_mode=mode, av_dropout=0.5).train()
        attn = next(mod for name, mod in model.named_modules()
                    if name.startswith("branches.A.encoder") and hasattr(mod, "attn_dropout"))
        width = model.branches["A"].encoder.layers[0].norm1.normalized_shape[0] \
            if hasattr(model.branches["A"].encoder.layers[0], "norm1") else model.config.av_hidden_size
        x = torch.randn(2, 9, width)
        a, b = attn(x, None), attn(x, None)
        assert (not torch.equal(a, b)) == varies, mode


def test_position_embeddings_start_at_zero_in_reference_mode_and_small_normal_in_dynamic():
    for m in ("V", "A"):
        ref = make_model(fusion_mode="reference").branches[m].pos
        assert AUTHORS["position embeddings start"] == "zeros" and torch.count_nonzero(ref) == 0
        torch.manual_seed(3)
        dyn = KuDA(make_config(seq_lens=[12, 200, 160])).branches[m].pos.detach()
        assert abs(float(dyn.mean())) < 0.004
        assert 0.018 < float(dyn.std()) < 0.022


def test_reference_mode_uses_the_label_ratio_in_training_and_none_in_evaluation():
    model = make_model(fusion_mode="reference", ratio_k=5.0)
    inputs, labels = make_batch()
    out = model.train()(**inputs, labels=labels)
    scores = torch.cat([out[m] for m in "TVA"], -1).detach()
    e = torch.exp(-5.0 * (scores - labels) ** 2)
    torch.testing.assert_close(out["ratio"], e / e.sum(-1, keepdim=True))
    ev = copy.deepcopy(model).eval()(**inputs)
    torch.testing.assert_close(ev["ratio"], torch.full((4, 3), 1 / 3))


@pytest.mark.parametrize("over", [dict(fusion_mode="reference"), dict(mask_padding=False)])
def test_the_authors_padding_averages_over_padded_steps(over):
    """Reference mode, and dynamic mode with mask_padding: false, average over padding and
    attend to it as the authors do: what the padded steps hold changes the prediction."""
    model = make_model(**over).eval()
    inputs, _ = make_batch()
    noisy = {k: v.clone() for k, v in inputs.items()}
    pad = torch.arange(noisy["audio"].shape[1])[None, :] >= inputs["audio_lengths"][:, None]
    noisy["audio"][pad] = 5.0
    with torch.no_grad():
        assert (model(**noisy)["M"] - model(**inputs)["M"]).abs().max() > 1e-4


def _with_padding_content(inputs, value):
    """inputs with every padded vision and audio frame set to `value` (real frames unchanged)."""
    out = {k: v.clone() for k, v in inputs.items()}
    for key in ("audio", "vision"):
        pad = torch.arange(out[key].shape[1])[None, :] >= inputs[f"{key}_lengths"][:, None]
        out[key][pad] = value
    return out


def test_zero_padding_keeps_padded_content_out_of_an_unmasked_prediction():
    """zero_padding: means run over the padded length, as with mask_padding: false, yet what
    padding holds never changes a prediction, its scores, ratios or CE loss: the model computes
    exactly what the unmasked model computes on the same samples padded with zeros."""
    zeroed = make_model(mask_padding=False, zero_padding=True).eval()
    unmasked = make_model(mask_padding=False).eval()
    inputs, _ = make_batch()
    clean = _with_padding_content(inputs, 0.0)
    with torch.no_grad():
        want = unmasked(**clean)
        for value in (5.0, -40.0):
            got = zeroed(**_with_padding_content(inputs, value))
            for k in ("M", "T", "V", "A", "ratio", "ce"):
                torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)


def test_zero_padding_still_averages_over_the_padded_length():
    """Zeroed padding is not masked: the padded steps still enter the means, so the same real
    frames padded to the same length give another prediction than the masked model gives, and
    a sample with more real frames differs from one whose extra frames are padding."""
    zeroed = make_model(mask_padding=False, zero_padding=True).eval()
    masked = make_model().eval()
    inputs, _ = make_batch()
    with torch.no_grad():
        assert (zeroed(**inputs)["M"] - masked(**inputs)["M"]).abs().max() > 1e-4
        longer = {k: v.clone() for k, v in inputs.items()}
        longer["vision_lengths"] = torch.full_like(inputs["vision_lengths"], inputs["vision"].shape[1])
        # the extra frames hold zeros either way: only whether they count as real differs
        assert (zeroed(**longer)["M"] - zeroed(**inputs)["M"]).abs().max() > 1e-4


@pytest.mark.parametrize("over", [dict(), dict(fusion_mode="reference", mask_padding=False)])
def test_zero_padding_changes_nothing_where_padding_is_masked_or_in_reference_mode(over):
    """Masked, padding is ignored anyway; reference mode is the authors' computation, which
    keeps what padding holds: zero_padding must not act in either."""
    plain = make_model(**over).eval()
    zeroed = make_model(zero_padding=True, **over).eval()
    assert not zeroed.config.zeroes_padding()
    inputs = _with_padding_content(make_batch()[0], 5.0)
    with torch.no_grad():
        torch.testing.assert_close(zeroed(**inputs)["M"], plain(**inputs)["M"], atol=0, rtol=0)


def test_the_ratio_heads_losses_are_their_definitions():
    """Dynamic mode's auxiliary losses: reliability heads, the Gaussian NLL of each present
    modality's squared error, mean over present (sample, modality) pairs; the estimate
    source, the MSE of its estimate against the label."""
    inputs, labels = make_batch()
    inputs["audio_lengths"] = torch.tensor([0, 4, 0, 9])              # two samples without audio
    model = make_model(ratio_source="reliability").train()
    out = model(**inputs, labels=labels)
    scores = torch.cat([out[m] for m in "TVA"], -1).detach()
    v, present = out["log_var"], out["present"]
    terms = (scores - labels) ** 2 * torch.exp(-v) + v
    torch.testing.assert_close(out["aux"], terms[present].mean())
    est = make_model(ratio_source="estimate").train()
    out = est(**inputs, labels=labels)
    torch.testing.assert_close(out["aux"], ((out["estimate"] - labels) ** 2).mean())


def test_a_higher_is_better_key_selects_its_maximum(probe_run, monkeypatch):
    from kuda_mmsa.training.trainer import KuDATrainer

    script = [0.2, 0.6, 0.5, 0.4, 0.3]
    seen = []

    def scripted(self, model, dataloader, mode="VAL", return_sample_results=False):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"Corr": script[len(seen) - 1], "Loss": 0.0}

    monkeypatch.setattr(KuDATrainer, "do_test", scripted)
    probe, steps, args = probe_run(epochs=5, early_stop=3, KeyEval="Corr")
    assert len(seen) == 5
    saved = torch.load(args["model_save_path"], weights_only=True)
    assert all(torch.equal(v, seen[1][k]) for k, v in saved.items())


def test_no_finite_validation_value_means_no_weights_and_a_clear_error(probe_run, monkeypatch):
    from kuda_mmsa.training.trainer import KuDATrainer

    monkeypatch.setattr(KuDATrainer, "do_test", lambda self, *a, **k: {"Loss": float("nan")})
    with pytest.raises(KudaTrainingError, match="No epoch gave a finite validation Loss"):
        probe_run(epochs=2, early_stop=5)


def test_epoch_results_are_returned_per_epoch_for_mmsa(probe_run, monkeypatch, tiny_demo_pickle, tmp_path):
    """MMSA's trainer protocol: do_train(..., return_epoch_results=True) gives each epoch's
    train, valid and test results."""
    from test_training import make_kuda_args

    from kuda_mmsa.training.trainer import KuDATrainer

    cfg = write_tiny_config(tmp_path / "e.yaml", use_knowledge=False, precision="fp32", plots=False, epochs=3,
                            early_stop=10)
    args, loaders = make_kuda_args(tiny_demo_pickle, cfg, tmp_path)
    results = KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders(), return_epoch_results=True)
    assert set(results) == {"train", "valid", "test"}
    assert all(len(results[s]) == 3 for s in results)
    assert all("MAE" in r and "Loss" in r for s in results for r in results[s])


def test_stage2_trains_on_the_loaded_knowledge_and_keeps_it_frozen(tiny_demo_pickle, tmp_path):
    """do_train loads the stage-1 checkpoints into the model (running stage 1 when missing)
    and trains everything else: adapters and decoders end equal to the checkpoints'."""
    from test_training import make_kuda_args

    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.training.trainer import KuDATrainer

    cfg = write_tiny_config(tmp_path / "k.yaml", plots=False, epochs=1, precision="fp32")
    args, loaders = make_kuda_args(tiny_demo_pickle, cfg, tmp_path)
    torch.manual_seed(0)
    model = build_kuda(args)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = KuDATrainer(args)
    trainer.do_train(model, loaders())
    assert set(trainer.knowledge) == {"T", "V", "A"}
    folder = next((tmp_path / "knowledge" / "demo").glob("*/*"))
    for m, name in (("T", "text"), ("V", "vision"), ("A", "audio")):
        ckpt = torch.load(folder / f"{name}.pth", weights_only=True)["state_dict"]
        knowledge = [k for k in ckpt if k.startswith(("decoder.", "adapters."))]
        assert knowledge
        for k in knowledge:
            assert torch.equal(model.branches[m].state_dict()[k], ckpt[k]), (m, k)
    moved = [k for k, v in model.state_dict().items() if k.startswith("blocks.") and not torch.equal(v, start[k])]
    assert moved, "the fusion did not train"


@pytest.mark.parametrize("family", ["MOSI", "SIMS"])
def test_the_trainer_reports_the_datasets_own_mmsa_metrics(family, tiny_demo_pickle, tmp_path):
    from MMSA.utils import MetricsTop
    from test_training import make_kuda_args

    from kuda_mmsa.training.trainer import KuDATrainer

    args, _ = make_kuda_args(tiny_demo_pickle, write_tiny_config(tmp_path / "m.yaml"), tmp_path)
    args.metrics_name = family
    pred, true = torch.linspace(-1, 1, 12).view(-1, 1), torch.linspace(-0.8, 0.9, 12).flip(0).view(-1, 1)
    want = MetricsTop("regression").getMetics(family)(pred, true)
    got = KuDATrainer(args).metrics(pred, true)
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(float(want[k])) for k in want)
