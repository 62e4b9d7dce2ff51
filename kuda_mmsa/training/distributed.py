"""Data-parallel training (DistributedDataParallel) under torchrun.

``torchrun --nproc_per_node N -m kuda_mmsa -m kuda -d D`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in their environment (``env_context``).
MMSA_run then picks each process's device and backend (``choose_device``: the GPU of its
LOCAL_RANK, NCCL when every process has its own GPU, gloo on CPUs or when processes share a
GPU), starts the process group (``init``) and the trainer wraps the model (``wrap``).

What makes the result that of one process:
- every rank sees its contiguous share of the same global batches as one process
  (kuda_mmsa.data.loaders.ShardedBatchSampler), and the loss of a rank is scaled by its share
  of the global batch, so the averaged gradient is the gradient of the global batch's mean
  loss; the learning-rate schedule has the same number of steps;
- evaluation runs on every rank's share of a split and gathers the predictions in the
  split's order, each sample exactly once (``predict_split``), so metrics, epoch selection
  and early stopping are computed on the whole split, identically on every rank;
- rank 0 alone writes files; what it reads (resume state, best weights, stage-1 knowledge)
  reaches the others by broadcast (``on_main``, ``sync_module``), so no shared file system is
  needed, and an error on rank 0 is raised on every rank (no rank waits forever).
The correlation-estimation loss (ce_weight > 0) takes its negatives from each rank's share
of the batch, as data-parallel contrastive losses usually do: only with ce_weight 0 is a run
on N processes the same computation as on one.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from .. import files
from ..data.loaders import Shard, ShardedBatchSampler
from ..errors import KudaError, KudaInputError, KudaTrainingError
from .evaluation import Predictions, predict

logger = logging.getLogger("MMSA")

BACKENDS = ("auto", "nccl", "gloo")
ENV_TIMEOUT = "KUDA_MMSA_DIST_TIMEOUT_MIN"      # minutes a rank waits for the others (default 360:
DEFAULT_TIMEOUT_MIN = 360                      # stage 1 may run on rank 0 while the others wait)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel run (world_size 1: a plain run)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world_size)

    # ------------------------------------------------------------------ collectives
    def _active(self) -> bool:
        return self.distributed and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self._active():
            dist.barrier()

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self._active():
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj: Any) -> List[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self._active():
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, values: Sequence[float]) -> List[float]:
        if not self._active():
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only; its result, or its error, on every rank."""
        if not self._active():
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except KudaError as e:
                outcome = ("error", e)
            except Exception as e:  # not picklable in general: keep the type name and message
                outcome = ("error", KudaTrainingError(f"Rank 0 failed: {type(e).__name__}: {e}"))
                self.broadcast(outcome)
                raise
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def sync_module(self, module: torch.nn.Module) -> None:
        """Every parameter and buffer of ``module`` from rank 0 (in place)."""
        if not self._active():
            return
        with torch.no_grad():
            for t in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(t.data, src=0)


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def env_context(env=None) -> DistContext:
    """The context torchrun set in the environment (world_size 1 outside torchrun)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return DistContext()
        rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except (KeyError, ValueError) as e:
        raise KudaInputError(
            f"WORLD_SIZE is set ({env.get('WORLD_SIZE')!r}) but the rest of torchrun's environment is "
            f"missing or malformed ({e}): start data-parallel runs with torchrun "
            f"(torchrun --nproc_per_node N -m kuda_mmsa ...), which sets RANK and LOCAL_RANK.") from None
    return DistContext(rank, world, local, local_world)


def current() -> DistContext:
    """The running process group's context (world_size 1 when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    env = env_context()
    return DistContext(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world_size)


# ---------------------------------------------------------------------- devices and start
def choose_device(ctx: DistContext, gpu_ids=None, backend: str = "auto",
                  cuda_count: Optional[int] = None) -> Tuple[torch.device, str, List[str]]:
    """(device, backend, notes) of this rank. GPUs: the one of LOCAL_RANK (``-g`` ids, when
    there is one per local process, are mapped by LOCAL_RANK; otherwise ``-g`` is ignored);
    backend auto = NCCL when every local process has its own GPU, else gloo."""
    backend = str(backend or "auto").lower()
    if backend not in BACKENDS:
        raise KudaInputError(f"--dist-backend must be one of {', '.join(BACKENDS)}; got {backend!r}.")
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = [int(g) for g in (gpu_ids or [])]
    notes = []
    if cuda_count == 0:
        if backend == "nccl":
            raise KudaInputError(
                f"--dist-backend nccl needs CUDA GPUs, but none is visible to rank {ctx.rank} (torch "
                f"{torch.__version__}, CUDA {'available' if torch.cuda.is_available() else 'not available'}"
                f"). On CPUs use --dist-backend gloo (or auto, which picks gloo without GPUs).")
        if ids:
            notes.append(f"-g {ids} ignored: no CUDA GPU is visible; the {ctx.world_size} processes run on CPUs.")
        return torch.device("cpu"), "gloo", notes
    if ids and len(ids) >= ctx.local_world_size:
        gpu = ids[ctx.local_rank]
        if not 0 <= gpu < cuda_count:
            raise KudaInputError(f"-g {ids}: GPU {gpu} (for LOCAL_RANK {ctx.local_rank}) does not exist; "
                                 f"{cuda_count} CUDA device(s) are visible (0..{cuda_count - 1}).")
        shared = len(set(ids[:ctx.local_world_size])) < ctx.local_world_size
    else:
        if ids:
            notes.append(f"-g {ids} ignored under torchrun: it names fewer GPUs than the "
                         f"{ctx.local_world_size} processes of this node, so each process uses the GPU "
                         f"of its LOCAL_RANK (restrict GPUs with CUDA_VISIBLE_DEVICES).")
        gpu = ctx.local_rank % cuda_count
        shared = ctx.local_world_size > cuda_count
    if backend == "auto":
        backend = "gloo" if shared else "nccl"
        if shared:
            notes.append(f"{ctx.local_world_size} processes share {cuda_count} GPU(s): gloo backend "
                         f"(NCCL needs one GPU per process).")
    elif backend == "nccl" and shared:
        raise KudaInputError(
            f"--dist-backend nccl needs one GPU per process, but the {ctx.local_world_size} processes of "
            f"this node share {cuda_count} GPU(s). Start fewer processes (--nproc_per_node {cuda_count}) "
            f"or use --dist-backend gloo.")
    return torch.device("cuda", gpu), backend, notes


def timeout() -> datetime.timedelta:
    try:
        minutes = float(os.environ.get(ENV_TIMEOUT, DEFAULT_TIMEOUT_MIN))
    except ValueError:
        minutes = DEFAULT_TIMEOUT_MIN
    return datetime.timedelta(minutes=minutes)


def init(ctx: DistContext, backend: str, device: torch.device) -> bool:
    """Start the process group from torchrun's environment (env://); False when one is
    already running (then the caller does not own it)."""
    if not ctx.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size, timeout=timeout())
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` (which keeps its own parameters)."""
    from torch.nn.parallel import DistributedDataParallel

    # find_unused_parameters: some trainable parameters take no part in a given
    # configuration's loss (e.g. BERT's pooler), which DDP otherwise reports as an error.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return model.module if isinstance(model, DistributedDataParallel) else model


def seed_rank(ctx: DistContext, seed: int) -> None:
    """Ranks > 0 draw their own dropout masks (rank 0 keeps the run's stream)."""
    if ctx.distributed and ctx.rank > 0:
        torch.manual_seed((int(seed) * 1_000_003 + ctx.rank) % 2 ** 63)


def loss_scale(ctx: DistContext, loader, step: int, local_size: int) -> float:
    """Factor of this rank's mean loss so that DDP's gradient average is the gradient of the
    global batch's mean loss (1 outside data-parallel runs)."""
    sampler = getattr(loader, "batch_sampler", None)
    if not ctx.distributed or not isinstance(sampler, ShardedBatchSampler):
        return 1.0
    return local_size * ctx.world_size / sampler.global_size(step)


# ---------------------------------------------------------------------- evaluation
def _empty_predictions() -> Predictions:
    return Predictions(torch.zeros(0, 1), torch.zeros(0, 1), torch.zeros(0, 3), torch.zeros(0, 3), [])


def predict_split(ctx: DistContext, model, loader, device, precision: str = "fp32", forward=None) -> Predictions:
    """``predict`` over the whole split: in a data-parallel run each rank predicts its share
    and the shares are gathered in the split's order (every sample once). ``forward``: as
    predict's."""
    model = unwrap(model)
    sampler = getattr(loader, "batch_sampler", None)
    if not (ctx.distributed and isinstance(sampler, ShardedBatchSampler)):
        return predict(model, loader, device, precision, forward=forward)
    positions = sampler.local_positions()
    local = predict(model, loader, device, precision, forward=forward) if positions else _empty_predictions()
    shares = ctx.all_gather((positions, local.pred, local.labels, local.unimodal, local.ratio, local.ids))
    n = sampler.n
    order: List[Optional[Tuple[int, int]]] = [None] * n
    for r, (pos, *_rest) in enumerate(shares):
        for i, p in enumerate(pos):
            order[p] = (r, i)
    if any(o is None for o in order):
        raise KudaTrainingError("Evaluation gathered fewer predictions than the split has samples.")

    def stack(k):
        return torch.stack([shares[r][k][i] for r, i in order]) if n else shares[0][k]

    return Predictions(stack(1), stack(2), stack(3), stack(4), [shares[r][5][i] for r, i in order])


# ---------------------------------------------------------------------- failures and shared files
def is_peer_failure(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank has died."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                            "NCCL communicator was aborted", "ProcessGroupGloo", "ProcessGroupNCCL"))


def peer_failure_message(ctx: DistContext, exc: BaseException, resume: Optional[Path] = None) -> str:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    where = (f"the state after the last finished epoch is in {resume} (written by rank 0)"
             if resume else "each finished epoch's state is saved next to the weights (<weights>.resume)")
    return (f"Rank {ctx.rank} of this data-parallel run ({ctx.world_size} processes) lost contact with "
            f"the others ({first}): another process stopped; torchrun names it and its exit code. "
            f"Nothing is lost: {where}; run the same torchrun command again to resume.")


@contextlib.contextmanager
def file_lock(folder):
    """An exclusive lock on ``<folder>/.kuda-mmsa.lock`` between processes (parallel sweep
    cells that share one stage-1 knowledge folder); a no-op where locks are unavailable."""
    with files.file_lock(Path(folder) / ".kuda-mmsa.lock", required=False):
        yield
