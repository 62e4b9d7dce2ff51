"""The training step and the evaluation forward (kuda_mmsa.training.step): eager on the CPU
exactly as the trainer's loop was written before it moved there, capture-safe (nothing read
on the host while a CUDA graph is recorded, checked on the CPU), and, on a GPU, a captured
step that gives the eager step's numbers."""
import logging
import sys
from pathlib import Path

import pytest
import torch

from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.training.optim import load_optimizer_state, make_adamw, make_schedule, warmup_cosine
from kuda_mmsa.training.step import EvalForward, TrainStep, graphs_wanted

from test_model import make_batch, make_model  # tests/ is on sys.path (pytest rootdir-relative)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import count_ops  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
CE, CLIP, LR = 0.1, 1.0, 1e-3


def forward_loss_of(model, device="cpu"):
    def forward_loss(x):
        out = model(**{k: v for k, v in x.items() if k != "labels"}, labels=x["labels"])
        out = {k: v.float() for k, v in out.items()}
        loss = torch.nn.functional.mse_loss(out["M"], x["labels"]) + CE * out["ce"]
        if "aux" in out:
            loss = loss + out["aux"]
        return loss, {"loss": loss.detach(), "M": out["M"].detach()}
    return forward_loss


def batches(n, b=4):
    out = []
    for i in range(n):
        inputs, labels = make_batch(b=b, seed=10 + i)
        out.append({**inputs, "labels": labels})
    return out


def test_eager_step_is_the_loop_it_replaced():
    """The trainer's loop body as it was written before TrainStep (zero_grad, forward, MSE +
    CE + aux, backward, clip, AdamW, schedule): the same losses and weights, bit for bit."""
    data = batches(4)
    ref = make_model(seed=3, fusion_dropout=0.2).train()
    params = [p for p in ref.parameters() if p.requires_grad]
    opt = make_adamw(params, LR, 1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(4, 0.25))
    torch.manual_seed(7)
    ref_losses = []
    for x in data:
        opt.zero_grad(set_to_none=True)
        out = ref(**{k: v for k, v in x.items() if k != "labels"}, labels=x["labels"])
        out = {k: v.float() for k, v in out.items()}
        loss = torch.nn.functional.mse_loss(out["M"], x["labels"]) + CE * out["ce"] + out["aux"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        ref_losses.append(loss.item())

    model = make_model(seed=3, fusion_dropout=0.2).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_adamw(params, LR, 1e-5)
    sched = make_schedule(opt, 4, 0.25)
    step = TrainStep(forward_loss_of(model), params, opt, CLIP, "cpu", graphs=True)   # graphs: CUDA only
    torch.manual_seed(7)
    losses = []
    for x in data:
        losses.append(step(x)["loss"].item())
        sched.step()
    assert losses == ref_losses
    for (n, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), n
    assert not step.captured


def test_clip_and_loss_scale_reach_the_gradients():
    """clip bounds the global gradient norm the optimiser sees; a loss scale (a data-parallel
    share) scales the gradients."""
    x = batches(1)[0]
    seen = {}

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen["norm"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.param_groups[0]["params"]
                                                                 if p.grad is not None]))
            return super().step(closure)

    for clip, scale in ((0.0, 1.0), (0.0, 0.5), (1e-3, 1.0)):
        model = make_model(seed=1).train()
        params = [p for p in model.parameters() if p.requires_grad]
        TrainStep(forward_loss_of(model), params, Spy(params, lr=0.0), clip, "cpu")(x, loss_scale=scale)
        seen[(clip, scale)] = float(seen["norm"])
    assert seen[(0.0, 0.5)] == pytest.approx(0.5 * seen[(0.0, 1.0)], rel=1e-4)
    assert seen[(1e-3, 1.0)] == pytest.approx(1e-3, rel=1e-3) and seen[(0.0, 1.0)] > 1e-2


def test_capturable_optimizer_and_schedule_follow_the_plain_ones():
    """The capturable AdamW (rate as a tensor) with make_schedule takes the plain optimiser's
    steps; its state resumes a plain optimiser and the other way round."""
    torch.manual_seed(0)
    w0 = torch.randn(50)
    grads = [torch.randn(50) for _ in range(6)]
    runs = {}
    for capturable in (False, True):
        p = torch.nn.Parameter(w0.clone())
        opt = make_adamw([p], 1e-2, 1e-3, capturable=capturable)
        sched = make_schedule(opt, 6, 0.5)
        lrs = []
        for g in grads:
            p.grad = g.clone()
            opt.step()
            sched.step()
            lrs.append(float(opt.param_groups[0]["lr"]))
        runs[capturable] = (p.detach().clone(), lrs, opt)
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-5, atol=1e-6)
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-6)
    assert runs[True][1] == pytest.approx([1e-2 * warmup_cosine(6, 0.5)(i) for i in range(1, 7)], rel=1e-6)
    for src, dst in ((True, False), (False, True)):
        q = torch.nn.Parameter(w0.clone())
        opt = make_adamw([q], 5.0, 1e-3, capturable=dst)
        load_optimizer_state(opt, runs[src][2].state_dict())
        group = opt.param_groups[0]
        assert group["capturable"] == dst and isinstance(group["lr"], torch.Tensor) == dst
        assert float(group["lr"]) == pytest.approx(runs[src][1][-1], rel=1e-6)


def test_step_reads_nothing_on_the_host_as_captured():
    """What a CUDA graph records must not read a GPU value on the host (.item(), int(t),
    nonzero, data-dependent shapes): the full benchmark-shaped step (bert-base text encoder,
    CH-SIMS v2 lengths), run as captured, dispatches no host read. Eagerly it does (the model's
    id check and per-batch trimming), which shows the counter sees them."""
    eager = count_ops.count_step(batch=1, captured=False)
    assert {r["op"] for r in eager.host_reads} >= {"_local_scalar_dense"}
    captured = count_ops.count_step(batch=1, captured=True)
    assert captured.host_reads == [], captured.host_reads[:3]
    assert captured.total > 1000          # the whole step was counted: forward, backward, AdamW
    assert captured.by_phase["backward"] > 0


def test_captured_step_checks_the_host_batch():
    """Token ids outside the encoder's vocabulary are refused by the host check a captured
    step runs (the forward's own check is off while capturing)."""
    model = make_model()
    x = batches(1)[0]
    x["text"][0, 0, 0] = 10_000
    with pytest.raises(KudaInputError, match="vocabulary"):
        model.check_inputs(**x)


def test_blockers_and_graph_choice():
    assert graphs_wanted("auto", "cpu")[0] is False
    assert graphs_wanted("off", "cuda")[0] is False
    assert graphs_wanted("auto", "cuda", distributed=True)[0] is False
    assert graphs_wanted("auto", "cuda")[0] is True
    assert make_model().capture_blockers() == []
    assert any("modality_dropout" in b for b in make_model(modality_dropout=0.2).capture_blockers())
    assert any("checkpointing" in b for b in make_model(gradient_checkpointing="sequences").capture_blockers())


def test_blocked_capture_runs_eagerly_and_says_why_once(caplog):
    """cuda_graphs asked for, a blocker present: one log line naming it, then eager steps."""
    model = make_model(modality_dropout=0.3).train()
    params = [p for p in model.parameters() if p.requires_grad]
    step = TrainStep(forward_loss_of(model), params, make_adamw(params, LR, 0.0), CLIP, "cpu", graphs=True,
                     blockers=model.capture_blockers())
    with caplog.at_level(logging.INFO, logger="MMSA"):
        for x in batches(3):
            assert torch.isfinite(step(x)["loss"])
    said = [r.getMessage() for r in caplog.records if "runs eagerly" in r.getMessage()]
    assert len(said) == 1 and "modality_dropout" in said[0], said
    assert not step.captured


# ---------------------------------------------------------------------------------------- CUDA
def _cuda_runs(graphs, data, dropout=0.0, steps_warmup=2):
    model = make_model(seed=3, fusion_dropout=dropout, av_dropout=dropout).cuda().train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_adamw(params, LR, 1e-5, capturable=True)
    sched = make_schedule(opt, len(data), 0.25)
    step = TrainStep(forward_loss_of(model), params, opt, CLIP, "cuda", graphs=graphs, warmup=steps_warmup,
                     check=model.check_inputs)
    losses = []
    for x in data:
        losses.append(step(x)["loss"].item())
        sched.step()
    return model, step, losses


@cuda
def test_cuda_graph_step_matches_eager():
    """A captured and replayed step trains as the eager one: the same loss trajectory and
    weights (fp32, no dropout), including a last batch of another shape that runs eagerly
    between replays."""
    data = batches(7) + [dict(batches(1, b=3)[0])] + batches(2)
    m_e, s_e, l_e = _cuda_runs(False, data)
    m_g, s_g, l_g = _cuda_runs(True, data)
    assert s_g.captured and not s_e.captured
    torch.testing.assert_close(torch.tensor(l_g), torch.tensor(l_e), rtol=1e-4, atol=1e-5)
    for (n, a), (_, b) in zip(m_g.state_dict().items(), m_e.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=n)


@cuda
def test_cuda_graph_replays_draw_new_dropout():
    """Each replay draws fresh dropout masks: the same batch twice gives two losses, as eager."""
    x = batches(1)[0]
    _, step, losses = _cuda_runs(True, [x] * 6, dropout=0.3)
    assert step.captured
    assert len(set(round(v, 7) for v in losses[3:])) == 3


@cuda
def test_cuda_graph_eval_forward_matches_eager():
    model = make_model(seed=2).cuda().eval()
    fn = lambda x: {"M": model(**x)["M"].float()}
    eager, graph = EvalForward(fn, "cuda", graphs=False), EvalForward(fn, "cuda", graphs=True,
                                                                        check=model.check_inputs)
    data = [make_batch(b=4, seed=s)[0] for s in range(5)]
    outs = [(eager(x)["M"], graph(x)["M"]) for x in data]
    assert graph.captured
    for a, b in outs:
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert not torch.equal(outs[-1][1], outs[-2][1])   # replays read the new batch


@cuda
def test_cuda_failed_capture_falls_back_to_eager(caplog):
    """A step that reads a GPU value on the host cannot be captured: one warning, and the run
    goes on eagerly with the eager step's numbers."""
    data = batches(6)
    losses = {}
    for graphs in (False, True):
        model = make_model(seed=3).cuda().train()
        params = [p for p in model.parameters() if p.requires_grad]
        inner = forward_loss_of(model)

        def reads_on_host(x):
            loss, report = inner(x)
            if float(loss) < 0:          # a host read: refused while capturing
                raise AssertionError
            return loss, report

        step = TrainStep(reads_on_host, params, make_adamw(params, LR, 1e-5, capturable=True), CLIP, "cuda",
                         graphs=graphs, warmup=2)
        with caplog.at_level(logging.INFO, logger="MMSA"):
            losses[graphs] = [step(x)["loss"].item() for x in data]
        assert not step.captured
    assert step.capture_failure
    assert sum("capture failed" in r.getMessage() for r in caplog.records) == 1
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]), rtol=1e-4, atol=1e-5)
