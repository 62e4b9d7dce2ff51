#!/usr/bin/env python
"""Count what one stage-2 training step asks of the device, on the CPU (no GPU needed).

Every aten operator that a step dispatches becomes (at least) one kernel launch on a GPU, and
every operator that reads a tensor's value back on the host (``.item()``, ``int(t)``,
``nonzero``, boolean indexing) stalls the GPU and makes the step impossible to capture in a
CUDA graph. This tool runs one training step of the benchmark model (tools/bench_train.py's
shapes and sizes: CH-SIMS v2 lengths, a bert-base-sized text encoder with random weights)
under a TorchDispatchMode and prints:

  - the number of non-view operators dispatched (forward, backward, clipping, AdamW), in total
    and by phase, and the most frequent ones;
  - every host read, with the operator and a short stack of where it came from.

``--as-captured`` runs the step the way a CUDA graph records it: the model's host-side checks
and per-batch trimming off, the optimiser capturable and HF transformers told that a stream is
being captured. The step must then read nothing on the host (exit status 1 otherwise), which
is checked here on the CPU before a GPU ever sees the code.

    python tools/count_ops.py [-b 2] [--precision fp32|bf16] [--as-captured] [--json FILE]
"""
import argparse
import collections
import contextlib
import json
import sys
import traceback
from pathlib import Path
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Operators whose result is read on the host (a device sync on a GPU).
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select",
              "unique", "_unique", "_unique2", "unique_consecutive", "equal", "allclose", "_assert_async"}


class DispatchCounter(TorchDispatchMode):
    """Counts the non-view aten operators dispatched inside it, by phase, and records host reads."""

    def __init__(self):
        super().__init__()
        self.phase = "forward"
        self.counts = collections.Counter()
        self.by_phase = collections.Counter()
        self.host_reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view:
            self.counts[name] += 1
            self.by_phase[self.phase] += 1
        if name in HOST_READS:
            frames = [f for f in traceback.extract_stack()[:-1] if "torch/utils/_python_dispatch" not in f.filename]
            where = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-6:]]
            self.host_reads.append({"op": name, "phase": self.phase, "where": where})
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@contextlib.contextmanager
def as_captured():
    """What the model and transformers see while a CUDA graph is captured, simulated on the CPU."""
    with mock.patch("kuda_mmsa.model.encoders.capturing", lambda: True), \
            mock.patch("transformers.utils.import_utils.is_cuda_stream_capturing", lambda: True):
        yield


def build(batch: int, precision: str, capturable: bool):
    from transformers import BertConfig

    from kuda_mmsa.config.schema import defaults
    from kuda_mmsa.model import KuDA, KuDAConfig
    from kuda_mmsa.training.optim import make_adamw

    torch.manual_seed(0)
    cfg = KuDAConfig(feature_dims=[768, 25, 177], seq_lens=[50, 925, 232], pretrained=BertConfig(vocab_size=21128),
                     gradient_checkpointing="none")
    model = KuDA(cfg)
    model.freeze_knowledge()
    params = [p for p in model.parameters() if p.requires_grad]
    d = defaults()
    opt = make_adamw(params, lr=d["learning_rate"], weight_decay=d["weight_decay"], capturable=capturable)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 21128, (batch, 50), generator=g)
    inputs = {"text": torch.stack([ids.float(), torch.ones(batch, 50), torch.zeros(batch, 50)], 1),
              "vision": torch.randn(batch, 232, 177, generator=g), "audio": torch.randn(batch, 925, 25, generator=g),
              "vision_lengths": torch.randint(116, 233, (batch,), generator=g),
              "audio_lengths": torch.randint(462, 926, (batch,), generator=g),
              "labels": torch.rand(batch, 1, generator=g) * 2 - 1}
    return model, params, opt, inputs, d


def count_step(batch: int = 2, precision: str = "fp32", captured: bool = False) -> DispatchCounter:
    """One training step of the benchmark model under a DispatchCounter (the trainer's step:
    training.step.TrainStep with the trainer's loss)."""
    from kuda_mmsa.training.precision import autocast
    from kuda_mmsa.training.step import TrainStep

    model, params, opt, inputs, d = build(batch, precision, capturable=captured)
    model.train()
    counter = DispatchCounter()

    def forward_loss(x):
        counter.phase = "forward"
        with autocast("cpu", precision):
            out = model(**{k: v for k, v in x.items() if k != "labels"}, labels=x["labels"])
        out = {k: v.float() for k, v in out.items()}
        loss = torch.nn.functional.mse_loss(out["M"], x["labels"]) + d["ce_weight"] * out["ce"]
        if "aux" in out:
            loss = loss + out["aux"]
        counter.phase = "backward"     # what follows in TrainStep: backward, clipping, AdamW
        return loss, {"loss": loss.detach()}

    step = TrainStep(forward_loss, params, opt, d["grad_clip"], "cpu")
    step(inputs)                       # warm-up: optimiser state, lazy initialisation
    with contextlib.ExitStack() as stack:
        if captured:
            stack.enter_context(as_captured())
        stack.enter_context(counter)
        step._body(inputs, 1.0) if captured else step(inputs)
    return counter


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-b", "--batch-size", type=int, default=2)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--as-captured", action="store_true", help="the step as a CUDA graph records it (see above)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--json")
    a = ap.parse_args()
    c = count_step(a.batch_size, a.precision, a.as_captured)
    print(f"# one stage-2 training step, batch {a.batch_size}, {a.precision}, bert-base sizes, CH-SIMS v2 lengths"
          f"{', as captured' if a.as_captured else ', eager'}; torch {torch.__version__}")
    print(f"non-view operators dispatched: {c.total} ({', '.join(f'{k} {v}' for k, v in c.by_phase.items())})")
    print("most frequent: " + ", ".join(f"{k} {v}" for k, v in c.counts.most_common(a.top)))
    print(f"host reads: {len(c.host_reads)}")
    for r in c.host_reads[:20]:
        print(f"  {r['op']} ({r['phase']}): " + " <- ".join(reversed(r["where"][-3:])))
    if a.json:
        Path(a.json).write_text(json.dumps({"total": c.total, "by_phase": dict(c.by_phase), "counts": dict(c.counts),
                                            "host_reads": c.host_reads}, indent=1))
    if a.as_captured and c.host_reads:
        sys.exit(1)


if __name__ == "__main__":
    main()
