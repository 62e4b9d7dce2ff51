"""One optimisation step (forward, loss, backward, gradient clipping, optimiser step) and one
evaluation forward, run eagerly or replayed from a CUDA graph (the ``cuda_graphs`` key).

Why graphs: a stage-2 step at CH-SIMS v2 sizes launches about 3,600 kernels (a bert-base text
encoder, two sequence encoders with their adapters, three DAF blocks, autocast's casts, the
optimiser). On an H200 launching them takes the host longer than running them takes the GPU,
so an eager step leaves the GPU idle most of the time. MMSA pads every modality to one length
per dataset, so every full batch has the same shapes: the step is captured once and then
replayed with one launch.

What capture needs, and where it is provided:
- fixed input addresses: each batch is copied into static buffers that the graph reads;
- no GPU value read on the host inside the step: the model skips its host-side checks and its
  data-dependent trimming of padded steps while a graph is captured (model.layers.capturing),
  and the step runs those checks on the CPU batch instead (``check``);
- a capturable optimiser: its step count and learning rate live on the GPU and the schedule
  writes the rate in place (training.optim);
- lazy initialisation done before capture: the first ``warmup`` steps of the shape run eagerly
  on the capture stream; they are real steps of the run, not extra ones.

A batch of another shape (the last, smaller batch of an epoch) runs eagerly. When capture is
impossible (``blockers``, data-parallel runs) or fails, one log line says why and the run
continues eagerly with the same results.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import torch

logger = logging.getLogger("MMSA")

Inputs = Mapping[str, torch.Tensor]
Report = Dict[str, torch.Tensor]


def graphs_wanted(mode: str, device, distributed: bool = False) -> Tuple[bool, str]:
    """(whether to capture, why) for the ``cuda_graphs`` key on ``device``."""
    device = torch.device(device)
    if mode == "off":
        return False, "cuda_graphs: off"
    if device.type != "cuda":
        return False, f"cuda_graphs: auto captures CUDA steps only (device {device})"
    if distributed:
        return False, "cuda_graphs: auto does not capture data-parallel steps (their gradient all-reduce runs eagerly)"
    return True, "cuda_graphs: auto on a CUDA device"


def _signature(inputs: Inputs) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(inputs.items()))


class _Captured:
    """Static inputs, the graph and its static outputs for one input signature."""

    def __init__(self, inputs: Inputs, device: torch.device):
        self.inputs = {k: torch.empty(v.shape, dtype=v.dtype, device=device) for k, v in inputs.items()}
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.outputs: Report = {}

    def load(self, inputs: Inputs) -> None:
        for k, v in inputs.items():
            self.inputs[k].copy_(v, non_blocking=True)


class _GraphRunner:
    """What training and evaluation steps share: the choice of path per batch, warm-up on the
    capture stream, capture, fallback and the one log line."""

    def __init__(self, device, enabled: bool, warmup: int, what: str, blockers: Iterable[str] = (),
                 check: Optional[Callable[..., None]] = None):
        self.device = torch.device(device)
        self.check = check
        self.warmup = max(int(warmup), 1)
        self.what = what
        blockers = list(blockers)
        self.enabled = bool(enabled) and self.device.type == "cuda" and not blockers
        self.disabled_because: Optional[str] = "; ".join(blockers) if enabled and blockers else None
        self._announced = False
        self.failure: Optional[str] = None       # why capture failed, if it did
        self._captured: Optional[_Captured] = None
        self._signature: Optional[tuple] = None
        self._seen = 0
        self._stream = torch.cuda.Stream(self.device) if self.enabled else None

    @property
    def captured(self) -> bool:
        return self._captured is not None and self._captured.graph is not None

    def _say(self, message: str, warn: bool = False) -> None:
        if not self._announced:
            (logger.warning if warn else logger.info)(message)
            self._announced = True

    def run(self, inputs: Inputs, eager: Callable[[Inputs], Report], body: Callable[[Inputs], Report],
            before_capture: Callable[[], None] = lambda: None) -> Report:
        """``eager(inputs)`` moves inputs to the device and runs the step; ``body(static inputs)``
        is what the graph records. Returns the step's report (tensors the caller owns)."""
        if self.disabled_because:
            self._say(f"{self.what} runs eagerly: {self.disabled_because}.")
        if not self.enabled:
            return eager(inputs)
        sig = _signature(inputs)
        if self._signature is None:
            self._signature = sig           # the first shape is the one every full batch has
        if sig != self._signature:
            return eager(inputs)            # e.g. the last, smaller batch of an epoch
        if self.check is not None:
            self.check(**inputs)
        if self.captured:
            self._captured.load(inputs)
            self._captured.graph.replay()
            return {k: v.clone() for k, v in self._captured.outputs.items()}
        self._seen += 1
        if self._seen <= self.warmup:
            return self._on_stream(lambda: eager(inputs))
        return self._capture(sig, inputs, eager, body, before_capture)

    def _on_stream(self, fn):
        current = torch.cuda.current_stream(self.device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = fn()
        current.wait_stream(self._stream)
        for v in out.values():
            v.record_stream(current)
        return out

    def _capture(self, sig, inputs, eager, body, before_capture) -> Report:
        cap = _Captured(inputs, self.device)
        cap.load(inputs)
        try:
            before_capture()
            torch.cuda.synchronize(self.device)
            graph = torch.cuda.CUDAGraph()
            # thread_local: a DataLoader's pin-memory thread may call CUDA meanwhile
            with torch.cuda.graph(graph, stream=self._stream, capture_error_mode="thread_local"):
                cap.outputs = body(cap.inputs)
        except Exception as exc:       # capture refused an operation: keep training eagerly
            self.enabled = False
            self._captured = None
            torch.cuda.synchronize(self.device)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self.failure = f"{type(exc).__name__}: {first[:300]}"
            self._say(f"{self.what}: CUDA graph capture failed ({self.failure}); this run continues eagerly.",
                      warn=True)
            return eager(inputs)
        cap.graph = graph
        self._captured = cap
        self._say(f"{self.what} is captured in a CUDA graph after {self.warmup} eager step(s) and replayed "
                  f"for every batch of shape {dict((k, s) for k, s, _ in sig)}; other shapes run eagerly.")
        cap.graph.replay()               # capture records without running: this is the step itself
        return {k: v.clone() for k, v in cap.outputs.items()}


class _Replayable:
    """What a step with a _GraphRunner reports about its capture."""

    _runner: _GraphRunner

    @property
    def captured(self) -> bool:
        return self._runner.captured

    @property
    def capture_failure(self) -> Optional[str]:
        """Why capture failed, if it did."""
        return self._runner.failure


class TrainStep(_Replayable):
    """``step(inputs, loss_scale=1.0) -> report``: one optimisation step.

    ``forward_loss(inputs) -> (loss, report)`` runs the model and the loss on device tensors
    (the caller's autocast inside it); ``report`` holds detached tensors to return (loss terms,
    predictions). Gradients are zeroed before the forward, clipped to ``clip`` (0: not), and
    ``optimizer`` steps; the schedule is the caller's (after the step, as usual)."""

    def __init__(self, forward_loss: Callable[[Inputs], Tuple[torch.Tensor, Report]], params: List[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, clip: float, device, graphs: bool = False, warmup: int = 3,
                 blockers: Iterable[str] = (), check: Optional[Callable[..., None]] = None,
                 what: str = "The training step"):
        self.forward_loss = forward_loss
        self.params = list(params)
        self.optimizer = optimizer
        self.clip = float(clip)
        self.device = torch.device(device)
        self._runner = _GraphRunner(device, graphs, warmup, what, blockers, check)

    def _to_device(self, inputs: Inputs) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}

    def _body(self, inputs: Inputs, loss_scale: float) -> Report:
        loss, report = self.forward_loss(inputs)
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        return report

    def _eager(self, inputs: Inputs, loss_scale: float) -> Report:
        # Before the forward, not after it: the last step's gradients would stay alive beside
        # this step's activations (0.45 GiB more peak memory with a bert-base text encoder).
        self.optimizer.zero_grad(set_to_none=True)
        return self._body(self._to_device(inputs), loss_scale)

    def __call__(self, inputs: Inputs, loss_scale: float = 1.0) -> Report:
        if loss_scale != 1.0:     # a data-parallel share: never captured
            return self._eager(inputs, loss_scale)
        return self._runner.run(inputs, lambda x: self._eager(x, 1.0), lambda x: self._body(x, 1.0),
                                before_capture=lambda: self.optimizer.zero_grad(set_to_none=True))


class EvalForward(_Replayable):
    """``forward(inputs) -> report``: an evaluation forward (no gradients), eager or replayed
    from a CUDA graph captured for the first input shape, as TrainStep. ``fn(inputs)`` returns
    the report (detached tensors)."""

    def __init__(self, fn: Callable[[Inputs], Report], device, graphs: bool = False, warmup: int = 1,
                 check: Optional[Callable[..., None]] = None, what: str = "Evaluation"):
        self.fn = fn
        self.device = torch.device(device)
        self._runner = _GraphRunner(device, graphs, warmup, what, (), check)

    def _body(self, inputs: Inputs) -> Report:
        with torch.no_grad():
            return self.fn(inputs)

    def __call__(self, inputs: Inputs) -> Report:
        return self._runner.run(inputs, lambda x: self._body({k: v.to(self.device, non_blocking=True)
                                                              for k, v in x.items()}), self._body)
