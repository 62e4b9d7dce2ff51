"""Sweeps: many independent runs ("cells": an ablation's (variant, seed), a tuning trial) on
several devices or machines, without a scheduler of our own.

- ``LocalExecutor`` (``--devices 0,1,2,3`` or ``--devices cpu:4``): one cell per device at a
  time, each in its own Python process (``python -m kuda_mmsa.training.sweeps CELL RESULT``)
  that sees only its device (CUDA_VISIBLE_DEVICES) and writes its output to
  ``<cell folder>/worker.log``.
- ``RayExecutor`` (``--executor ray [--address ADDR]``): each cell is a Ray task (one GPU
  each on a cluster with GPUs, else one CPU), on an embedded Ray (no address) or on a
  running cluster (``ray start``, e.g. inside a Slurm allocation). Ray is an optional extra:
  ``pip install -e '.[ray]'``.
- ``InlineExecutor``: the cells one after another in this process.

A cell names a module-level function and JSON-able keyword arguments; the executor adds
``gpu_ids`` ([0]: the one GPU the cell sees; []: CPU) and returns its JSON-able result.
The caller keeps the results (CSV rows) as cells finish, so a killed sweep restarted with the
same command runs only the missing cells.

``OptunaTuner`` (``--tuner optuna``, optional extra ``pip install -e '.[optuna]'``): TPE over
the tune section's candidate lists, a study in SQLite that a killed tuner resumes (trials
that were running are run again with the same parameters), trials on the same executors,
and pruning on the validation metric after every epoch (``EpochMonitor`` reports it from
the trial's process to the study).
"""
from __future__ import annotations

import importlib
import json
import math
import os
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import KudaError, KudaInputError
from ..files import atomic_write_text
from .metrics import lower_is_better

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
PARENT_ENV = "KUDA_MMSA_SWEEP_PARENT"      # pid of the sweep that started a worker process
PASSED_ENV_PREFIXES = ("KUDA_MMSA_", "MMSA_", "HF_", "TRANSFORMERS_", "OMP_NUM_THREADS")


# ---------------------------------------------------------------------- cells
@dataclass
class Cell:
    key: str                        # unique within a sweep (also the name in progress lines)
    fn: Callable[..., Any]          # a module-level function: run by name in a worker process
    kwargs: Dict[str, Any]          # JSON-able
    workdir: Path                   # the cell's own folder (its worker files go there)
    label: str = ""


@dataclass
class CellResult:
    key: str
    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    where: str = ""                 # the device (and host) it ran on
    log: Optional[str] = None
    cell: Optional[Cell] = field(default=None, repr=False)


def function_name(fn: Callable) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name or fn.__module__ == "__main__":
        raise ValueError(f"{name}: a sweep cell must be a module-level function of an importable module")
    return name


def resolve_function(name: str) -> Callable:
    module, _, qual = name.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def call_cell(fn_name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Run one cell here; {"ok", "value" | "error", "seconds"} (errors are kept, not raised)."""
    t0 = time.time()
    try:
        value = resolve_function(fn_name)(**kwargs)
        return {"ok": True, "value": value, "seconds": round(time.time() - t0, 1)}
    except KudaError as e:
        return {"ok": False, "error": str(e), "seconds": round(time.time() - t0, 1)}
    except Exception as e:
        tb = traceback.format_exc(limit=8)
        return {"ok": False, "error": f"{type(e).__name__}: {e}\n{tb}", "seconds": round(time.time() - t0, 1)}


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


# ---------------------------------------------------------------------- executors
class Executor:
    """Runs cells, ``slots`` at a time: submit(cell), then wait() returns finished ones."""
    name = "executor"
    slots = 1

    def describe(self) -> str:
        return self.name

    def submit(self, cell: Cell) -> None:
        raise NotImplementedError

    def wait(self) -> List[CellResult]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InlineExecutor(Executor):
    """The cells one after another in this process (``gpu_ids`` as given)."""
    name = "this process"

    def __init__(self, gpu_ids: Sequence[int] = ()):
        self.gpu_ids = list(gpu_ids)
        self._queue: List[Cell] = []

    def submit(self, cell: Cell) -> None:
        self._queue.append(cell)

    def wait(self) -> List[CellResult]:
        cell = self._queue.pop(0)
        out = call_cell(function_name(cell.fn), dict(cell.kwargs, gpu_ids=self.gpu_ids))
        return [CellResult(cell.key, out["ok"], out.get("value"), out.get("error", ""), out["seconds"],
                           "this process", None, cell)]


def parse_devices(spec: str, cuda_count: Optional[int] = None) -> List[str]:
    """'0,1,3' -> ['cuda:0', 'cuda:1', 'cuda:3']; 'cpu:4' -> ['cpu'] * 4; 'cpu' -> ['cpu']."""
    text = str(spec or "").strip().lower()
    bad = KudaInputError(
        f"--devices {spec!r}: expected GPU indices separated by commas (--devices 0,1,2,3) or CPU "
        f"slots (--devices cpu:4); each device runs one cell at a time.")
    if text == "cpu" or text.startswith("cpu:"):
        count = text.partition(":")[2] or "1"
        if not count.isdigit() or int(count) < 1:
            raise bad
        return ["cpu"] * int(count)
    try:
        ids = [int(x.strip().removeprefix("cuda:")) for x in text.split(",") if x.strip()]
    except ValueError:
        raise bad from None
    if not ids or len(set(ids)) != len(ids):
        raise bad
    if cuda_count is None:
        import torch

        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [i for i in ids if not 0 <= i < cuda_count]
    if missing:
        raise KudaInputError(
            f"--devices {spec}: GPU(s) {missing} are not visible ({cuda_count} CUDA device(s) here"
            f"{', 0..' + str(cuda_count - 1) if cuda_count else ''}). Use --devices cpu:N for CPU slots.")
    return [f"cuda:{i}" for i in ids]


class LocalExecutor(Executor):
    """One worker process per cell, one cell per device at a time."""
    name = "local processes"

    def __init__(self, devices: Sequence[str], python: str = sys.executable):
        self.devices = list(devices)
        self.slots = len(self.devices)
        self.python = python
        self._free = list(range(len(self.devices)))
        self._running: Dict[int, tuple] = {}       # slot -> (Popen, cell, t0, result path, log path)

    def describe(self) -> str:
        cpus = self.devices.count("cpu")
        gpus = [d for d in self.devices if d != "cpu"]
        parts = ([", ".join(gpus)] if gpus else []) + ([f"cpu x{cpus}"] if cpus else [])
        return f"{' + '.join(parts)} (local processes)"

    def _env(self, device: str) -> Dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONUNBUFFERED"] = "1"
        env[PARENT_ENV] = str(os.getpid())         # the worker ends itself when this process dies
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            if "OMP_NUM_THREADS" not in os.environ:   # share the cores among the CPU slots
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.devices.count("cpu")))
        else:
            env["CUDA_VISIBLE_DEVICES"] = device.split(":")[1]
        return env

    def submit(self, cell: Cell) -> None:
        slot = self._free.pop(0)
        device = self.devices[slot]
        folder = Path(cell.workdir)
        folder.mkdir(parents=True, exist_ok=True)
        spec, result, log = folder / "cell.json", folder / "result.json", folder / "worker.log"
        result.unlink(missing_ok=True)
        kwargs = dict(cell.kwargs, gpu_ids=[] if device == "cpu" else [0])
        atomic_write_text(spec, json.dumps({"fn": function_name(cell.fn), "kwargs": kwargs}, indent=1))
        with open(log, "w") as out:
            proc = subprocess.Popen([self.python, "-m", "kuda_mmsa.training.sweeps", str(spec), str(result)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=self._env(device), start_new_session=True)
        self._running[slot] = (proc, cell, time.time(), result, log)

    def wait(self) -> List[CellResult]:
        while True:
            done = []
            for slot, (proc, cell, t0, result, log) in list(self._running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del self._running[slot]
                self._free.append(slot)
                done.append(self._result(cell, rc, t0, result, log, self.devices[slot]))
            if done:
                return done
            time.sleep(0.2)

    @staticmethod
    def _result(cell, rc, t0, result: Path, log: Path, device: str) -> CellResult:
        seconds = round(time.time() - t0, 1)
        try:
            out = json.loads(result.read_text())
        except (OSError, ValueError):
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.is_file() else []
            why = f"signal {-rc}" if rc < 0 else f"exit status {rc}"
            return CellResult(cell.key, False, None, f"the worker process stopped ({why}) without a result"
                              + (": " + " | ".join(tail) if tail else ""), seconds, device, str(log), cell)
        return CellResult(cell.key, bool(out.get("ok")), out.get("value"), out.get("error", ""), seconds,
                          device, str(log), cell)

    def close(self) -> None:
        import signal

        for proc, *_ in self._running.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 10
        for proc, *_ in self._running.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
        self._running.clear()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise KudaInputError(
            "--executor ray needs Ray, which is not installed: pip install -e '.[ray]' (or use --devices "
            "0,1 / cpu:N for parallel cells on this machine).") from None
    return ray


def ray_cell(fn_name: str, kwargs: Dict[str, Any], cpus: int) -> Dict[str, Any]:
    """A Ray task: one cell in the task's worker process (which Ray ends afterwards)."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    on_gpu = bool(visible) and torch.cuda.is_available()
    out = call_cell(fn_name, dict(kwargs, gpu_ids=[0] if on_gpu else []))
    out["where"] = f"{socket.gethostname()}:{'cuda (GPU ' + visible + ')' if on_gpu else 'cpu'}"
    return out


class RayExecutor(Executor):
    """Each cell a Ray task: num_gpus=1 where the cluster has GPUs, else ``cpus_per_cell`` CPUs."""
    name = "ray"

    def __init__(self, address: Optional[str] = None, cpus_per_cell: int = 1, num_cpus: Optional[int] = None):
        ray = _import_ray()
        self.ray = ray
        self._owned = False
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
            env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
            kw = dict(log_to_driver=False, runtime_env={"env_vars": env})
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(include_dashboard=False, num_cpus=num_cpus, **kw)
            self._owned = True
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.cpus_per_cell = max(1, int(cpus_per_cell))
        self.slots = self.gpus if self.gpus else max(1, int(resources.get("CPU", 1)) // self.cpus_per_cell)
        self.address = address or "embedded"
        self._task = ray.remote(num_gpus=1 if self.gpus else 0, num_cpus=self.cpus_per_cell,
                                max_calls=1, max_retries=0)(ray_cell)
        self._refs: Dict[Any, tuple] = {}

    def describe(self) -> str:
        what = f"{self.gpus} GPU(s)" if self.gpus else f"{self.slots} x {self.cpus_per_cell} CPU"
        return f"Ray ({self.address}, {what})"

    def submit(self, cell: Cell) -> None:
        ref = self._task.remote(function_name(cell.fn), dict(cell.kwargs), self.cpus_per_cell)
        self._refs[ref] = (cell, time.time())

    def wait(self) -> List[CellResult]:
        ready, _ = self.ray.wait(list(self._refs), num_returns=1)
        out = []
        for ref in ready:
            cell, t0 = self._refs.pop(ref)
            try:
                r = self.ray.get(ref)
            except Exception as e:   # the task's worker died (killed, out of memory, node lost)
                r = {"ok": False, "error": f"Ray task failed: {_first_line(e)}", "seconds": time.time() - t0}
            out.append(CellResult(cell.key, bool(r.get("ok")), r.get("value"), r.get("error", ""),
                                  round(float(r.get("seconds", 0)), 1), r.get("where", "ray"), None, cell))
        return out

    def close(self) -> None:
        for ref in list(self._refs):
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self._refs.clear()
        if self._owned and self.ray.is_initialized():
            self.ray.shutdown()


def make_executor(devices: Optional[str] = None, executor: Optional[str] = None,
                  address: Optional[str] = None) -> Optional[Executor]:
    """The executor the command-line flags ask for; None = run the cells in this process."""
    kind = (executor or ("local" if devices else "")).lower()
    if address and kind != "ray":
        raise KudaInputError("--address names a Ray cluster: use it with --executor ray.")
    if kind == "ray":
        if devices:
            raise KudaInputError("--devices is for --executor local; with --executor ray, Ray's resources decide "
                                 "(one GPU per cell on a cluster with GPUs, else one CPU).")
        return RayExecutor(address)
    if kind == "local":
        if not devices:
            raise KudaInputError("--executor local needs --devices (e.g. --devices 0,1 or --devices cpu:2).")
        return LocalExecutor(parse_devices(devices))
    if kind:
        raise KudaInputError(f"--executor must be local or ray; got {executor!r}.")
    return None


def run_cells(executor: Executor, cells: Sequence[Cell],
              on_done: Optional[Callable[[CellResult], None]] = None) -> List[CellResult]:
    """Every cell on ``executor`` (``slots`` at a time); ``on_done`` sees each result as it
    comes, in this process. Ctrl-C stops the running cells (they resume when run again)."""
    pending, running, results = list(cells), 0, []
    try:
        while pending or running:
            while pending and running < executor.slots:
                executor.submit(pending.pop(0))
                running += 1
            for r in executor.wait():
                running -= 1
                results.append(r)
                if on_done is not None:
                    on_done(r)
    except BaseException:
        executor.close()
        raise
    return results


def describe_result(r: CellResult, metrics: Sequence[str] = ("MAE", "Corr")) -> str:
    """'done in 12.3 s on cuda:0: MAE 0.3259, Corr 0.6852' or 'FAILED ...'."""
    where = f" on {r.where}" if r.where else ""
    if r.ok:
        value = r.value if isinstance(r.value, dict) else {}
        value = value.get("results") if isinstance(value.get("results"), dict) else value   # a tuning trial
        shown = ", ".join(f"{m} {float(value[m]):.4f}" for m in metrics
                          if isinstance(value.get(m), (int, float)))
        return f"done in {r.seconds:.1f} s{where}" + (f": {shown}" if shown else "")
    return f"FAILED after {r.seconds:.1f} s{where}: {_first_line(r.error)}" + (f" (log: {r.log})" if r.log else "")


# ---------------------------------------------------------------------- tuning (optuna)
class TrialPruned(Exception):
    """Raised in a trial's process when the study prunes it (stops the training)."""


def _import_optuna():
    try:
        import optuna
    except ImportError:
        raise KudaInputError("--tuner optuna needs Optuna, which is not installed: pip install -e '.[optuna]' "
                             "(or tune with MMSA's random search: -t without --tuner).") from None
    return optuna


def _storage(optuna, url: str):
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})


def _pruner(optuna, n_startup_trials: int, n_warmup_steps: int = 1):
    # The pruner is not stored with the study: the tuner and each trial's process build the same.
    return optuna.pruners.MedianPruner(n_startup_trials=int(n_startup_trials), n_warmup_steps=int(n_warmup_steps))


class OptunaReporter:
    """In a trial's process: reports each epoch's validation value to the study and raises
    TrialPruned when the pruner says so. Storage errors switch pruning off (one notice)."""

    def __init__(self, spec: Dict[str, Any], log: Callable[[str], None] = print):
        self.spec, self.log, self._trial, self._off = dict(spec), log, None, False

    def __call__(self, epoch: int, value: float) -> None:
        if self._off:
            return
        try:
            if self._trial is None:
                optuna = _import_optuna()
                study = optuna.load_study(study_name=self.spec["study"], storage=_storage(optuna, self.spec["storage"]),
                                          pruner=_pruner(optuna, self.spec.get("n_startup_trials", 5)))
                self._trial = optuna.trial.Trial(study, int(self.spec["trial_id"]))
            self._trial.report(float(value), step=int(epoch))
            prune = self._trial.should_prune()
        except Exception as e:
            self._off = True
            self.log(f"Pruning is off for this trial: the study at {self.spec.get('storage')} could not be "
                     f"reached ({_first_line(e)}).")
            return
        if prune:
            raise TrialPruned(f"pruned by the study after epoch {epoch} (validation {value:.4f})")


class EpochMonitor:
    """The trainer's epoch callback in a trial: keeps the best validation ``key`` and reports
    each epoch's value to ``reporter`` (which may raise TrialPruned)."""

    def __init__(self, key: str, reporter: Optional[Callable[[int, float], None]] = None):
        self.key, self.reporter = key, reporter
        self.minimize = lower_is_better(key)
        self.best: Optional[float] = None
        self.epochs = 0

    def __call__(self, epoch: int, valid: Dict[str, float]) -> None:
        self.epochs = int(epoch)
        value = float(valid[self.key])
        if math.isfinite(value) and (self.best is None or (value < self.best if self.minimize else value > self.best)):
            self.best = value
        if self.reporter is not None:
            self.reporter(epoch, value)


def _choices(candidates: Sequence[Any]) -> tuple:
    """(optuna choices, back): scalars as themselves, anything else by its index."""
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in candidates):
        return list(candidates), None
    return list(range(len(candidates))), list(candidates)


class OptunaTuner:
    """A TPE study over {key: candidates} stored in SQLite at ``db_path``."""

    def __init__(self, db_path, study_name: str, direction: str, space: Dict[str, Sequence[Any]],
                 seed: Optional[int] = None, n_startup_trials: int = 5, log: Callable[[str], None] = print):
        optuna = _import_optuna()
        self.optuna, self.log = optuna, log
        self.space = {k: _choices(v) for k, v in space.items()}
        if not self.space:
            raise KudaInputError("The tune section lists no keys to search (d_paras is empty).")
        db_path = Path(db_path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{db_path.resolve()}"
        self.study_name = study_name
        storage = _storage(optuna, self.url)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            existing = optuna.load_study(study_name=study_name, storage=storage)
            n_before = len(existing.trials)
            if existing.direction.name.lower() != direction:
                raise KudaInputError(
                    f"The study '{study_name}' in {db_path} maximises/minimises otherwise "
                    f"({existing.direction.name.lower()}) than this run ({direction}: the KeyEval changed). "
                    f"Move that file away to start a new study.")
        except KeyError:
            n_before = 0
        # A fresh seed per session: a resumed study does not repeat its first random trials.
        sampler = optuna.samplers.TPESampler(seed=None if seed is None else int(seed) + n_before,
                                             n_startup_trials=n_startup_trials)
        self.n_startup_trials = int(n_startup_trials)
        pruner = _pruner(optuna, n_startup_trials)
        self.study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner,
                                         direction=direction, load_if_exists=True)
        self.db_path = db_path

    def recover(self) -> int:
        """Trials left running by a killed tuner: marked failed, their parameters queued again."""
        TrialState = self.optuna.trial.TrialState
        stale = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        for t in stale:
            self.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            self.study.enqueue_trial(t.params, skip_if_exists=False)
        return len(stale)

    def finished(self) -> int:
        TrialState = self.optuna.trial.TrialState
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _suggest(self, trial) -> Dict[str, Any]:
        params = {}
        for name, (choices, back) in self.space.items():
            v = trial.suggest_categorical(name, choices)
            params[name] = back[v] if back is not None else v
        return params

    def run(self, n_trials: int, executor: Executor, make_cell: Callable[[int, Dict[str, Any], Dict[str, Any]], Cell],
            on_done: Optional[Callable[[int, Dict[str, Any], CellResult, str], None]] = None) -> int:
        """Run trials until the study has ``n_trials`` finished (complete or pruned) ones;
        returns how many ran now. ``make_cell(number, params, reporter_spec)``;
        ``on_done(number, params, result, state)``."""
        TrialState = self.optuna.trial.TrialState
        recovered = self.recover()
        if recovered:
            self.log(f"[tune] {recovered} trial(s) of an interrupted session are run again with their parameters.")
        todo = max(0, int(n_trials) - self.finished())
        running: Dict[str, tuple] = {}
        ran = 0
        try:
            while todo > 0 or running:
                while todo > 0 and len(running) < executor.slots:
                    trial = self.study.ask()
                    params = self._suggest(trial)
                    # the trial's storage id: how its process reopens it (optuna.trial.Trial(study, id))
                    spec = {"storage": self.url, "study": self.study_name, "trial_id": trial._trial_id,
                            "n_startup_trials": self.n_startup_trials}
                    cell = make_cell(trial.number, params, spec)
                    executor.submit(cell)
                    running[cell.key] = (trial, params)
                    todo -= 1
                for r in executor.wait():
                    trial, params = running.pop(r.key)
                    ran += 1
                    value = r.value if isinstance(r.value, dict) else {}
                    if r.ok and value.get("pruned"):
                        self.study.tell(trial, state=TrialState.PRUNED)
                        state = "pruned"
                    elif r.ok and isinstance(value.get("valid"), (int, float)) and math.isfinite(value["valid"]):
                        self.study.tell(trial, float(value["valid"]))
                        state = "complete"
                    else:
                        self.study.tell(trial, state=TrialState.FAIL)
                        state = "failed"
                    if on_done is not None:
                        on_done(trial.number, params, r, state)
        except BaseException:
            executor.close()
            raise
        return ran

    def best(self) -> Optional[Dict[str, Any]]:
        try:
            t = self.study.best_trial
        except ValueError:
            return None
        params = {}
        for name, (choices, back) in self.space.items():
            v = t.params.get(name)
            params[name] = back[v] if back is not None and v is not None else v
        return {"number": t.number, "value": t.value, "params": params}


# ---------------------------------------------------------------------- worker process
def watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """End this worker, and every process it started, when the sweep that started it is gone
    (killed with -9, its machine's session closed): a worker never runs on as an orphan. A
    daemon thread compares the parent pid with the one the sweep passed; the worker leads its
    own process group (start_new_session), so the whole group is killed."""
    import signal
    import threading

    def gone() -> bool:
        return os.getppid() != parent_pid

    def loop():
        while not gone():
            time.sleep(interval)
        print(f"the sweep process {parent_pid} is gone: this cell stops (its last finished epoch is saved; "
              f"the sweep's command, run again, resumes it)", file=sys.stderr, flush=True)
        try:
            if os.getpgid(0) == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)

    if sys.platform.startswith("linux"):   # the kernel kills this process at once when its parent dies
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))     # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if gone():
        loop()
    threading.Thread(target=loop, name="kuda-mmsa-parent-watch", daemon=True).start()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m kuda_mmsa.training.sweeps CELL.json RESULT.json``: run one cell."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m kuda_mmsa.training.sweeps CELL.json RESULT.json", file=sys.stderr)
        return 2
    parent = os.environ.get(PARENT_ENV, "")
    if parent.isdigit():
        watch_parent(int(parent))
    spec = json.loads(Path(argv[0]).read_text())
    out = call_cell(spec["fn"], spec.get("kwargs") or {})
    if not out["ok"]:
        print(f"cell failed: {out['error']}", file=sys.stderr)
    atomic_write_text(argv[1], json.dumps(out, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    from kuda_mmsa.training.sweeps import main as _main   # the module itself, not a __main__ copy

    sys.exit(_main())
