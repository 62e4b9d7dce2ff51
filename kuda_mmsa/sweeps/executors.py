"""Where cells run: in this process, in local worker processes (one per device), or as Ray
tasks; and the worker process itself (``python -m kuda_mmsa.sweeps.executors CELL RESULT``)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..errors import KudaInputError
from ..files import atomic_write_text
from .cells import Cell, CellResult, _first_line, call_cell, function_name

PACKAGE_PARENT = Path(__file__).resolve().parents[2]
PARENT_ENV = "KUDA_MMSA_SWEEP_PARENT"      # pid of the sweep that started a worker process
PASSED_ENV_PREFIXES = ("KUDA_MMSA_", "MMSA_", "HF_", "TRANSFORMERS_", "OMP_NUM_THREADS")


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
            proc = subprocess.Popen([self.python, "-m", "kuda_mmsa.sweeps.executors", str(spec), str(result)],
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
    """``python -m kuda_mmsa.sweeps.executors CELL.json RESULT.json``: run one cell."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print("usage: python -m kuda_mmsa.sweeps.executors CELL.json RESULT.json", file=sys.stderr)
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
    from kuda_mmsa.sweeps.executors import main as _main   # the module itself, not a __main__ copy

    sys.exit(_main())

