"""The package's layers point one way: every import of every module (function-level ones
included), read from the source, forms no cycle between modules, no loop between top-level
packages, and never points up the layer order

    base (errors, files, plots, registry) < config < ops < model < data < training < sweeps < mmsa < experiments < cli < __main__

so that each package is importable and testable on its own, and model/ and ops/ never
import anything above them."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kuda_mmsa"
LAYERS = {"errors": 0, "files": 0, "plots": 0, "registry": 0, "": 0, "config": 1, "ops": 2, "model": 3, "data": 4,
          "training": 5, "sweeps": 6, "mmsa": 7, "experiments": 8, "cli": 9,
          "__main__": 10}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules():
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str, path: Path, known) -> set:
    """Our modules that `name` imports anywhere in its source."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("kuda_mmsa"):
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def layer_of(name: str) -> int:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return LAYERS[top]


def package_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(graph):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_every_module_is_in_a_known_layer(graph):
    assert {package_of(n) for n in graph} <= set(LAYERS)


def test_no_cycle_between_modules(graph):
    assert _cycles(graph) == []


def test_no_loop_between_top_level_packages(graph):
    pkg_graph = {}
    for a, targets in graph.items():
        for b in targets:
            if package_of(a) != package_of(b):
                pkg_graph.setdefault(package_of(a), set()).add(package_of(b))
    assert _cycles(pkg_graph) == []


def test_imports_only_point_down_the_layers(graph):
    upward = [(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)]
    assert upward == []


def test_model_and_ops_import_nothing_above_them(graph):
    for name, targets in graph.items():
        if package_of(name) in ("model", "ops"):
            assert all(layer_of(t) <= layer_of(name) for t in targets), (name, targets)
            src = modules()[name].read_text()
            assert "import MMSA" not in src and "from MMSA" not in src, name


def test_the_checker_finds_function_level_and_relative_imports(tmp_path):
    """A checker that cannot fail is worthless: an upward import inside a function is found."""
    fake = tmp_path / "x.py"
    fake.write_text("def f():\n    from ..cli import main\n    return main\n")
    found = imports_of("kuda_mmsa.model.x", fake, modules())
    assert "kuda_mmsa.cli.main" in found
    assert [("kuda_mmsa.model.x", t) for t in found if layer_of(t) > layer_of("kuda_mmsa.model.x")]


@pytest.mark.parametrize("name", sorted(modules()))
def test_every_module_imports_on_its_own(name):
    if name.endswith(".hook"):
        pytest.skip("the start-up hook is exercised in test_hook.py")
    importlib.import_module(name)
