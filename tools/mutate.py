#!/usr/bin/env python3
"""Mutation testing for the modules behind the README's promises.

    python tools/mutate.py                                  # every module in tools/mutate.toml
    python tools/mutate.py kuda_mmsa/model/ratio.py         # one module (or a folder prefix)
    python tools/mutate.py kuda_mmsa/training --workers 2 --report out/mutation.json
    python tools/mutate.py kuda_mmsa/model/ratio.py --time-cap 180 --fail-under 95   # CI smoke

A *mutant* is the module with one small deliberate break (a comparison flipped, `and` for
`or`, a constant changed, a call or a transforming assignment removed, a padding/mask argument
replaced by None, a dict entry dropped, a condition negated). Each mutant runs the tests that
tools/mutate.toml maps to its module, and among those only the ones that executed the mutated
line in an unmutated coverage run (every mapped test for lines run at import). A mutant is
*killed* when a test fails or the run exceeds its timeout, *survives* when they all pass.
Score = killed / (mutants - equivalent). Mutants on lines no mapped test executes in-process
are not run and count as survivors ("no coverage"), so the score can only err low.

Why our own tool and not mutmut/cosmic-ray: each mutant must import a package with a compiled
op library (kuda_mmsa._C) from a copy of the tree, run a chosen test subset, and start fast;
here the parent imports torch, transformers and pytest once and forks one child per mutant
(saves ~5 s of imports per mutant on these 2 cores), and each worker owns a copy of the tree
(no mutant ever touches the working tree).

Equivalent mutants (no test can tell them from the original) are listed in
tools/mutants_equivalent.txt with a one-line reason; a line ending in `# pragma: no mutate`
is never mutated.
"""
import argparse
import ast
import fnmatch
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "tools" / "mutate.toml"
EQUIVALENT = ROOT / "tools" / "mutants_equivalent.txt"
PRAGMA = "pragma: no mutate"


# ---------------------------------------------------------------------------- mutants
@dataclass
class Mutant:
    path: str            # relative to ROOT
    line: int            # 1-based line of the mutated node
    col: int
    op: str              # operator name, e.g. "compare", "and-or", "remove-call"
    before: str          # the source segment replaced
    after: str           # its replacement
    start: int           # byte offsets of the segment in the file
    end: int
    source_line: str = ""

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}:{self.col}:{self.op}"

    def key(self) -> str:
        """What tools/mutants_equivalent.txt matches: stable while the line is unchanged."""
        return f"{self.path} | {self.op}@{self.col} | {self.source_line.strip()}"

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.after.encode() + source[self.end:]


_CMP_SWAP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE,
             ast.LtE: ast.Gt, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
# off-by-one boundaries: < for <=, > for >= and back
_CMP_EDGE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
_BIN_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
             ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
# a variable passed under one of these names carries padding, presence or weights: replacing
# it by None is "the mask was dropped"
_MASKY = re.compile(r"mask|pad|present|weight|length|kpm", re.I)
# calls whose removal or change only alters what is printed
_QUIET_CALLS = {"logger", "log", "logging", "warnings", "print", "echo", "bar", "tqdm"}


def _call_root(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute):
        node = node.value
    if isinstance(node, ast.Call):
        return _call_root(node.func)
    return node.id if isinstance(node, ast.Name) else ""


class _Finder(ast.NodeVisitor):
    def __init__(self, path: str, source: bytes):
        self.path, self.source = path, source
        self.lines = source.split(b"\n")
        self.offsets = [0]
        for line in self.lines:
            self.offsets.append(self.offsets[-1] + len(line) + 1)
        self.mutants: List[Mutant] = []

    # -- helpers
    def _span(self, node):
        return self.offsets[node.lineno - 1] + node.col_offset, self.offsets[node.end_lineno - 1] + node.end_col_offset

    def _add(self, node, op: str, after: str, paren: bool = True):
        line = self.lines[node.lineno - 1].decode(errors="replace")
        if PRAGMA in line:
            return
        start, end = self._span(node)
        before = self.source[start:end].decode(errors="replace")
        self.mutants.append(Mutant(self.path, node.lineno, node.col_offset, op, before,
                                   f"({after})" if paren else after, start, end, line))

    def _replace(self, node, op: str, new_node) -> None:
        self._add(node, op, ast.unparse(ast.fix_missing_locations(new_node)))

    # -- skipped subtrees: docstrings, messages, annotations, logging
    def _body(self, body):
        for i, stmt in enumerate(body):
            if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, str):
                continue  # docstring
            self.visit(stmt)

    def visit_Module(self, node):
        self._body(node.body)

    def visit_FunctionDef(self, node):
        for d in node.decorator_list:
            self.visit(d)
        for default in node.args.defaults + [d for d in node.args.kw_defaults if d is not None]:
            self.visit(default)
        self._body(node.body)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._body(node.body)

    def visit_AnnAssign(self, node):
        if node.value is not None:
            self.visit(node.value)

    def visit_JoinedStr(self, node):
        pass  # f-strings: messages

    def visit_Raise(self, node):
        self._add(node, "remove-raise", "pass", paren=False)   # its message is not mutated

    def visit_Assert(self, node):
        pass

    def visit_Assign(self, node):
        if any(isinstance(t, ast.Name) and t.id in ("__all__", "__version__") for t in node.targets):
            return
        # a transforming reassignment `x = f(x, ...)` removed: the transform is skipped
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node.value)):
                self._add(node, "remove-assign", "pass", paren=False)
        self.generic_visit(node)

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Call):
            if _call_root(node.value.func) in _QUIET_CALLS:
                return
            self._add(node, "remove-call", "pass", paren=False)
        self.generic_visit(node)

    def visit_Call(self, node):
        if _call_root(node.func) in _QUIET_CALLS:
            return
        for arg in node.args:
            if isinstance(arg, ast.Name) and _MASKY.search(arg.id):
                self._add(arg, "arg-none", "None")
        for kw in node.keywords:
            if kw.arg and isinstance(kw.value, ast.Name) and _MASKY.search(kw.value.id):
                self._add(kw.value, "arg-none", "None")
        self.generic_visit(node)

    # -- operators
    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            for table, name in ((_CMP_SWAP, "compare"), (_CMP_EDGE, "compare-edge")):
                if type(op) in table:
                    ops = list(node.ops)
                    ops[i] = table[type(op)]()
                    self._replace(node, name, ast.Compare(node.left, ops, node.comparators))
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._replace(node, "and-or", ast.BoolOp(other, node.values))
        self.generic_visit(node)

    def visit_BinOp(self, node):
        if type(node.op) in _BIN_SWAP and not (isinstance(node.op, ast.Mod) or _is_str(node.left)):
            self._replace(node, "binop", ast.BinOp(node.left, _BIN_SWAP[type(node.op)](), node.right))
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, ast.Not):
            self._add(node, "remove-not", ast.unparse(node.operand))
        elif isinstance(node.op, ast.USub) and not isinstance(node.operand, ast.Constant):
            self._add(node, "remove-minus", ast.unparse(node.operand))
        self.generic_visit(node)

    def visit_If(self, node):
        if isinstance(node.test, (ast.Name, ast.Attribute, ast.Call)):
            self._add(node.test, "negate-if", f"not {ast.unparse(node.test)}")
        self.generic_visit(node)

    visit_While = visit_If

    def visit_IfExp(self, node):
        if isinstance(node.test, (ast.Name, ast.Attribute, ast.Call)):
            self._add(node.test, "negate-if", f"not {ast.unparse(node.test)}")
        self.generic_visit(node)

    def visit_Dict(self, node):
        if len(node.keys) >= 2 and all(isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys):
            for i in range(len(node.keys)):
                keys = node.keys[:i] + node.keys[i + 1:]
                values = node.values[:i] + node.values[i + 1:]
                self._add(node, f"drop-key:{node.keys[i].value}", ast.unparse(ast.Dict(keys, values)))
        self.generic_visit(node)

    def visit_Constant(self, node):
        v = node.value
        if isinstance(v, bool):
            self._add(node, "bool", repr(not v), paren=False)
        elif isinstance(v, int):
            self._add(node, "number", repr(v + 1), paren=False)
        elif isinstance(v, float):
            self._add(node, "number", repr(v * 2 if v else 1.0), paren=False)


def _is_str(node) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def find_mutants(path: str) -> List[Mutant]:
    source = (ROOT / path).read_bytes()
    finder = _Finder(path, source)
    finder.visit(ast.parse(source))
    seen, out = set(), []
    for m in finder.mutants:          # one mutant per distinct resulting file
        if (m.start, m.end, m.after) not in seen and m.before != m.after.strip("()"):
            seen.add((m.start, m.end, m.after))
            out.append(m)
    return out


# ---------------------------------------------------------------------------- configuration
def load_config() -> dict:
    with open(CONFIG, "rb") as f:
        return tomllib.load(f)


def tests_for(module: str, config: dict) -> List[str]:
    tests: List[str] = []
    for pattern, entries in config["tests"].items():
        if fnmatch.fnmatch(module, pattern):
            tests += [t for t in entries if t not in tests]
    missing = [t for t in tests if not (ROOT / t.split("::")[0]).is_file()]
    if missing:
        print(f"mutate: warning: {CONFIG.name} maps {module} to missing test files {missing}", file=sys.stderr)
    return [t for t in tests if t not in missing]


def select_modules(selection: List[str], config: dict) -> List[str]:
    modules = []
    for pattern in config["modules"]:
        modules += sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern) if p.name != "__init__.py"
                          or p.stat().st_size > 0)
    modules = [m for i, m in enumerate(modules) if m not in modules[:i]]
    excluded = config.get("exclude", [])
    modules = [m for m in modules if not any(fnmatch.fnmatch(m, e) for e in excluded)]
    if selection:
        # a file named explicitly runs even when the default set leaves it out (it needs tests)
        extra = [s for s in selection if s.endswith(".py") and (ROOT / s).is_file() and s not in modules]
        modules = [m for m in modules if any(m == s or m.startswith(s.rstrip("/") + "/") for s in selection)]
        modules += extra
        if not modules:
            raise SystemExit(f"mutate: no configured module matches {selection} (see {CONFIG.relative_to(ROOT)})")
    return modules


def load_equivalent() -> Dict[str, str]:
    out = {}
    if EQUIVALENT.exists():
        for raw in EQUIVALENT.read_text().splitlines():
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in raw.split(" | ")]
            if len(parts) < 4:
                raise SystemExit(f"mutate: {EQUIVALENT.name}: expected 'path | op@col | line | reason': {raw}")
            # the source line may itself hold " | " (a bitwise or): path and operator are the
            # first two fields, the reason the last, the line whatever lies between
            line = " | ".join(parts[2:-1])
            out[f"{parts[0]} | {parts[1]} | {line}"] = parts[-1]
    return out


# ---------------------------------------------------------------------------- running
class Worker:
    """One copy of the tree; runs one forked pytest child at a time."""

    def __init__(self, index: int, base: Path):
        self.dir = base / f"w{index}"
        # csrc/ too: the copy is a source checkout, as the ops tests of the JIT build expect
        for name in ("kuda_mmsa", "tests", "configs", "csrc"):
            shutil.copytree(ROOT / name, self.dir / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis"))
        for name in ("pyproject.toml", "setup.py"):
            shutil.copy2(ROOT / name, self.dir / name)
        self.pid: Optional[int] = None
        self.job = None
        self.started = 0.0

    def start(self, job: dict, log: Path) -> None:
        """job: {'tests': [...], 'mutant': Mutant or None, 'coverage': [paths] or None, 'out': path}"""
        mutant = job.get("mutant")
        if mutant is not None:
            target = self.dir / mutant.path
            self.original = target.read_bytes()
            target.write_bytes(mutant.apply(self.original))
        self.job, self.started = job, time.monotonic()
        pid = os.fork()
        if pid == 0:  # child
            try:
                os.setsid()
                fd = os.open(str(log), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.chdir(self.dir)
                sys.path.insert(0, str(self.dir))
                os.environ["PYTHONPATH"] = str(self.dir) + os.pathsep + os.environ.get("PYTHONPATH", "")
                import pytest

                args = ["-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-header",
                        "-o", "addopts=", "-W", "ignore::pytest.PytestAssertRewriteWarning"] + job["tests"]
                plugins = []
                if job.get("coverage"):
                    plugins.append(_CoveragePlugin({str(self.dir / p) for p in job["coverage"]}, self.dir,
                                                   job["out"]))
                    args.remove("-x")
                rc = pytest.main(args, plugins=plugins)
                sys.stdout.flush()
                os._exit(int(rc))
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(99)
        self.pid = pid

    def poll(self, timeout: float):
        """None while running, else (status, seconds)."""
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        elapsed = time.monotonic() - self.started
        if pid == 0:
            if elapsed < timeout:
                return None
            try:
                os.killpg(self.pid, signal.SIGKILL)   # the child's own session: it and its subprocesses
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            result = "timeout"
        else:
            code = os.waitstatus_to_exitcode(status)
            result = {0: "survived", 1: "killed"}.get(code, "killed" if code > 0 else f"signal {-code}")
            if code not in (0, 1):
                result = f"error {code}"
        if self.job.get("mutant") is not None:
            (self.dir / self.job["mutant"].path).write_bytes(self.original)
        self.pid = None
        return result, elapsed


class _CoveragePlugin:
    """Lines of the target files each test executes (in this process), and each test's time."""

    def __init__(self, targets: Set[str], root: Path, out: str):
        self.targets, self.root, self.out = targets, root, out
        self.current = "<import>"
        self.lines: Dict[str, Set[str]] = {}
        self.durations: Dict[str, float] = {}
        self.outcomes: Dict[str, str] = {}
        import threading

        sys.settrace(self._global)
        threading.settrace(self._global)

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename in self.targets:
            self._record(frame)
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self._record(frame)
        return self._local

    def _record(self, frame):
        rel = os.path.relpath(frame.f_code.co_filename, self.root)
        self.lines.setdefault(f"{rel}:{frame.f_lineno}", set()).add(self.current)

    def pytest_runtest_logstart(self, nodeid, location):
        self.current = nodeid

    def pytest_runtest_logreport(self, report):
        self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration
        if report.failed:
            self.outcomes[report.nodeid] = "failed"

    def pytest_sessionfinish(self, session):
        sys.settrace(None)
        with open(self.out, "w") as f:
            json.dump({"lines": {k: sorted(v) for k, v in self.lines.items()}, "durations": self.durations,
                       "failed": sorted(self.outcomes)}, f)


def _preload():
    """Import the heavy dependencies once in the parent (never kuda_mmsa itself: each child
    imports its worker's copy)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import BertConfig, BertModel  # noqa: F401
    try:
        import hypothesis  # noqa: F401
        import pandas  # noqa: F401
        import yaml  # noqa: F401
    except ImportError:
        pass
    assert "kuda_mmsa" not in sys.modules, "the parent must not import kuda_mmsa"


def run_jobs(workers: List[Worker], jobs: List[dict], logs: Path, deadline: float, on_done) -> None:
    """Run jobs over the workers; stop starting new ones after `deadline` (time.monotonic())."""
    pending = list(jobs)
    while pending or any(w.pid for w in workers):
        for w in workers:
            if w.pid is not None:
                done = w.poll(w.job["timeout"])
                if done is not None:
                    on_done(w.job, *done)
            if w.pid is None and pending and time.monotonic() < deadline:
                job = pending.pop(0)
                w.start(job, logs / f"{job['name']}.log")
        if pending and time.monotonic() >= deadline and not any(w.pid for w in workers):
            for job in pending:
                on_done(job, "not run (time cap)", 0.0)
            return
        time.sleep(0.05)


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("modules", nargs="*", help="module paths or folder prefixes (default: all configured)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--time-cap", type=float, default=None, help="seconds; no new mutant starts after this")
    p.add_argument("--timeout-factor", type=float, default=3.0, help="mutant timeout = factor x tests' time + 30 s")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds of (unmutated) test time per mutant: only the fastest covering tests that fit "
                        "run; the score is then a lower bound")
    p.add_argument("--tests", default=None, help="comma-separated test files or ids to use instead of the mapped ones")
    p.add_argument("--ops", default=None, help="comma-separated operator names to keep (prefix match)")
    p.add_argument("--lines", default=None, help="only mutants on these lines, e.g. 100-180,200")
    p.add_argument("--report", default=None, help="write every mutant's result as JSON here")
    p.add_argument("--survivors-of", default=None, metavar="REPORT",
                   help="run only the mutants that survived (or had no coverage) in an earlier --report")
    p.add_argument("--fail-under", type=float, default=None, help="exit 1 when a module's score is below this %%")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = p.parse_args(argv)

    config = load_config()
    modules = select_modules(args.modules, config)
    if args.tests:       # the same tests for every selected module
        config = dict(config, tests={m: args.tests.split(",") for m in modules})
    equivalent = load_equivalent()
    mutants = {m: find_mutants(m) for m in modules}
    if args.ops:
        keep = args.ops.split(",")
        mutants = {m: [x for x in ms if any(x.op.startswith(k) for k in keep)] for m, ms in mutants.items()}
    if args.lines:
        wanted = set()
        for part in args.lines.split(","):
            lo, _, hi = part.partition("-")
            wanted.update(range(int(lo), int(hi or lo) + 1))
        mutants = {m: [x for x in ms if x.line in wanted] for m, ms in mutants.items()}
    import hashlib

    digests = {m: hashlib.sha1((ROOT / m).read_bytes()).hexdigest()[:12] for m in modules}
    kept: List[dict] = []       # an earlier report's results that still hold (--survivors-of)
    if args.survivors_of:
        # modules in the earlier report: only its survivors run again, its other results are
        # kept (the module must be unchanged); modules not in it run whole
        earlier = [r for r in json.loads(Path(args.survivors_of).read_text()) if r["module"] in modules]
        stale = sorted({r["module"] for r in earlier if r.get("sha", digests[r["module"]]) != digests[r["module"]]})
        if stale:
            raise SystemExit(f"mutate: {stale} changed since {args.survivors_of}: run them whole")
        if any("sha" not in r for r in earlier):
            print(f"mutate: warning: {args.survivors_of} has no source hashes: its modules are assumed unchanged",
                  file=sys.stderr)
        again = {r["id"] for r in earlier if r["status"] in ("survived", "no coverage", "equivalent")}
        kept = [r for r in earlier if r["id"] not in again]
        reported = {r["module"] for r in earlier}
        mutants = {m: [x for x in ms if m not in reported or x.id in again] for m, ms in mutants.items()}
        modules = [m for m in modules if mutants[m] or any(r["module"] == m for r in kept)]
    if args.list:
        for m, ms in mutants.items():
            for x in ms:
                print(f"{x.id}  {x.before!r} -> {x.after!r}" + ("  [equivalent]" if x.key() in equivalent else ""))
        return 0
    for m in modules:
        if not tests_for(m, config):
            raise SystemExit(f"mutate: no tests mapped to {m} in {CONFIG.relative_to(ROOT)}")

    started = time.monotonic()
    deadline = started + args.time_cap if args.time_cap else float("inf")
    _preload()
    base = Path(tempfile.mkdtemp(prefix="kuda-mutate-"))
    logs = base / "logs"
    logs.mkdir()
    results: List[dict] = list(kept)
    workers: List[Worker] = []

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        workers += [Worker(i, base) for i in range(max(1, args.workers))]
        # 1. coverage run per module: which tests execute which line, and how long each takes
        coverage: Dict[str, dict] = {}

        def coverage_done(job, status, seconds):
            data = json.loads(Path(job["out"]).read_text()) if Path(job["out"]).exists() else None
            if status != "survived" or data is None:
                log = (logs / f"{job['name']}.log").read_text()[-3000:]
                raise SystemExit(f"mutate: the unmutated tests of {job['module']} do not pass ({status}):\n{log}")
            coverage[job["module"]] = data
            print(f"[{time.monotonic() - started:6.0f}s] {job['module']}: {len(mutants[job['module']])} mutants, "
                  f"tests pass unmutated in {seconds:.0f} s", flush=True)

        cov_jobs = [{"name": f"coverage-{i}", "module": m, "tests": tests_for(m, config), "coverage": [m],
                     "out": str(base / f"coverage-{i}.json"), "timeout": 1800}
                    for i, m in enumerate(modules) if mutants[m]]
        run_jobs(workers, cov_jobs, logs, float("inf"), coverage_done)

        # 2. one job per mutant, with the tests that executed its line
        jobs = []
        for m in modules:
            if m not in coverage:
                continue
            cov = coverage[m]
            lines = cov["lines"]
            for x in mutants[m]:
                row = {"id": x.id, "module": m, "op": x.op, "line": x.line, "source": x.source_line.strip(),
                       "before": x.before, "after": x.after, "sha": digests[m]}
                if x.key() in equivalent:
                    results.append({**row, "status": "equivalent", "reason": equivalent[x.key()]})
                    continue
                seen: Set[str] = set()
                for ln in range(x.line, x.line + max(1, x.before.count("\n") + 1)):
                    seen.update(lines.get(f"{m}:{ln}", []))
                if not seen:
                    results.append({**row, "status": "no coverage"})
                    continue
                if "<import>" in seen:    # module level: every mapped test may depend on it
                    tests = tests_for(m, config)
                    cost = sum(cov["durations"].values())
                else:
                    tests = sorted(seen, key=lambda t: cov["durations"].get(t, 0.0))
                    if args.budget is not None:   # the fastest covering tests that fit (at least one)
                        kept, total = [], 0.0
                        for t in tests:
                            if kept and total + cov["durations"].get(t, 0.0) > args.budget:
                                break
                            kept.append(t)
                            total += cov["durations"].get(t, 0.0)
                        tests = kept
                    cost = sum(cov["durations"].get(t, 0.0) for t in tests)
                jobs.append({"name": f"m{len(jobs)}", "module": m, "mutant": x, "row": row, "tests": tests,
                             "timeout": args.timeout_factor * cost + 30})

        def mutant_done(job, status, seconds):
            results.append({**job["row"], "status": status, "seconds": round(seconds, 1),
                            "tests": len(job["tests"])})
            if status == "survived":
                row = job["row"]
                print(f"  survived {row['id']}: {row['before']!r} -> {row['after']!r}", flush=True)

        print(f"[{time.monotonic() - started:6.0f}s] running {len(jobs)} mutants on {len(workers)} workers", flush=True)
        try:
            run_jobs(workers, jobs, logs, deadline, mutant_done)
        except KeyboardInterrupt:       # stopped: report what ran, the rest as not run
            done = {r["id"] for r in results}
            results.extend({**j["row"], "status": "not run (stopped)"} for j in jobs if j["row"]["id"] not in done)
    finally:
        for w in workers:           # a stopped run leaves no child behind
            if w.pid is not None:
                try:
                    os.killpg(w.pid, signal.SIGKILL)
                    os.waitpid(w.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        shutil.rmtree(base, ignore_errors=True)

    # 3. report
    failed = False
    print(f"\n{'module':46} {'mutants':>7} {'killed':>6} {'surv.':>5} {'no cov':>6} {'equiv':>5} {'score':>7}")
    for m in modules:
        rows = [r for r in results if r["module"] == m]
        if not rows:
            continue
        count = lambda *s: sum(r["status"] in s or r["status"].startswith(s) for r in rows)
        killed = count("killed", "timeout", "error", "signal")
        survived, nocov, equiv = count("survived"), count("no coverage"), count("equivalent")
        notrun = count("not run")
        scored = len(rows) - equiv - notrun
        score = 100.0 * killed / scored if scored else 100.0
        failed |= args.fail_under is not None and score < args.fail_under
        extra = f"  ({notrun} not run: time cap)" if notrun else ""
        print(f"{m:46} {len(rows):7} {killed:6} {survived:5} {nocov:6} {equiv:5} {score:6.1f}%{extra}")
    left = [r for r in results if r["status"] in ("survived", "no coverage")]
    if left:
        print("\nsurvivors (add a test that fails on them, or list them in tools/mutants_equivalent.txt):")
        for r in sorted(left, key=lambda r: (r["module"], r["line"])):
            print(f"  {r['id']} [{r['status']}]  {r['source'][:90]}\n      {r['before'][:80]!r} -> {r['after'][:80]!r}")
    print(f"\nmutate: {time.monotonic() - started:.0f} s")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(sorted(results, key=lambda r: (r["module"], r["line"])), indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
