"""The MMSA start-up hook: argv detection, the .pth line's behaviour in real
interpreters (processed by site, as an installed .pth is), and setup.py shipping the .pth
for regular (build_py) and editable (editable_wheel) installs."""
import os
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kuda_mmsa.cli import hook

REPO = Path(__file__).resolve().parents[1]
PTH = REPO / "kuda_mmsa" / "cli" / hook.PTH_NAME


@pytest.mark.parametrize("argv,expected", [
    (["python", "-m", "MMSA", "-h"], True),
    (["python", "-mMMSA"], True),
    (["python", "-u", "-X", "dev", "-W", "ignore", "-m", "MMSA"], True),
    (["python", "-m", "MMSA.run"], False),
    (["python", "-m", "kuda_mmsa", "MMSA"], False),
    (["python", "-c", "import MMSA", "-m", "MMSA"], False),
    (["python", "script.py", "-m", "MMSA"], False),
    (["python"], False),
])
def test_started_as_python_m_mmsa(argv, expected):
    assert hook.started_as_python_m_mmsa(argv) is expected


def test_pth_file_is_the_documented_line():
    assert PTH.read_text().strip() == hook.PTH_LINE
    assert "torch" not in hook.PTH_LINE and "import MMSA" not in hook.PTH_LINE


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    """A folder processed by site.addsitedir at start-up (via sitecustomize), holding the
    .pth exactly as installed."""
    d = tmp_path_factory.mktemp("site")
    (d / hook.PTH_NAME).write_text(PTH.read_text())
    (d / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n")
    return d


def _py(site_dir, *args, env_extra=None, timeout=120):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site_dir), str(REPO)]))
    env.pop("KUDA_MMSA_NO_HOOK", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=env, cwd=site_dir, timeout=timeout)


def test_pth_imports_nothing_heavy_elsewhere(site_dir):
    # The command line must not contain the word itself, hence 'MM' + 'SA'.
    code = ("import sys; print(sorted(m for m in ('torch', 'MM' + 'SA', 'kuda_mmsa') "
            "if m in sys.modules)); print(any(type(f).__name__ == 'MM' + 'SAMainFinder' "
            "for f in sys.meta_path))")
    r = _py(site_dir, "-c", code)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "False"]
    # 'MMSA' as a plain argument: the hook module may load, but installs no finder and
    # imports neither torch nor MMSA
    r = _py(site_dir, "-c", code, "MMSA")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["['kuda_mmsa']", "False"]


def test_python_m_mmsa_runs_our_cli(site_dir):
    r = _py(site_dir, "-m", "MMSA", "-h")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "usage: python -m MMSA" in out
    assert "python -m MMSA pretrain" in out and "python -m MMSA config show" in out   # the commands
    for word in ("kuda", "sims2", "simsv2", "demo", "--data-root", "--feature-file",
                 "--knowledge-dir", "--pretrained", "--no-plots"):
        assert word in out
    for flag in ("--model", "--dataset", "--config", "--tune", "--tune-times", "--seeds",
                 "--num-workers", "--verbose", "--model-save-dir", "--res-save-dir",
                 "--log-dir", "--gpu-ids", "--feature-T", "--feature-A", "--feature-V"):
        assert flag in out


def test_hook_disabled_by_env(site_dir):
    r = _py(site_dir, "-m", "MMSA", "-h", env_extra={"KUDA_MMSA_NO_HOOK": "1"})
    assert r.returncode == 0
    assert "kuda" not in r.stdout and "{sims,mosi,mosei}" in r.stdout


def test_install_only_under_python_m_mmsa(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "pytest"], raising=False)
    assert hook.install() is False
    monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "MMSA"], raising=False)
    try:
        assert hook.install() is True and hook.install() is True
        assert sum(isinstance(f, hook.MMSAMainFinder) for f in sys.meta_path) == 1
        f = hook.MMSAMainFinder()
        assert f.find_spec("MMSA.run") is None and f.find_spec("numpy") is None
        spec = f.find_spec("MMSA.__main__", [])
        assert "kuda_mmsa.cli.main" in spec.loader.get_source("MMSA.__main__")
        monkeypatch.setenv("KUDA_MMSA_NO_HOOK", "1")
        assert f.find_spec("MMSA.__main__", []) is None
    finally:
        hook.uninstall()
    assert not any(isinstance(f, hook.MMSAMainFinder) for f in sys.meta_path)


# ------------------------------------------------------------------ setup.py
@pytest.fixture(scope="module")
def setup_cmdclass():
    """The cmdclass setup.py passes to setup() (setup() itself is not run)."""
    import setuptools

    captured = {}
    orig = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    finally:
        setuptools.setup = orig
        os.chdir(cwd)
    return captured["cmdclass"]


def test_setup_keeps_build_ext_and_adds_hook_commands(setup_cmdclass):
    assert {"build_ext", "build_py", "editable_wheel"} <= set(setup_cmdclass)


def test_build_py_puts_pth_at_wheel_root(tmp_path):
    """Regular installs: the .pth lands at the root of build_lib, i.e. of the wheel."""
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                        str(tmp_path / "lib")], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, FORCE_CUDA="0"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "lib" / hook.PTH_NAME).read_text() == PTH.read_text()
    assert (tmp_path / "lib" / "kuda_mmsa" / "configs" / "kuda.yaml").is_file()
    assert (tmp_path / "lib" / "kuda_mmsa" / "cli" / "hook.py").is_file()


def test_editable_wheel_adds_pth(setup_cmdclass, tmp_path, monkeypatch):
    """Editable installs: the PEP 660 wheel is assembled from its own folder; our
    editable_wheel writes the .pth there (super()'s build is stubbed out)."""
    cls = setup_cmdclass["editable_wheel"]
    base = cls.__mro__[1]
    monkeypatch.setattr(base, "_run_build_commands", lambda self, *a, **k: ([], {}))
    out = cls._run_build_commands(object.__new__(cls), "kuda_mmsa", str(tmp_path), "lib", "tmp")
    assert out == ([], {})
    assert (tmp_path / hook.PTH_NAME).read_text() == PTH.read_text()
