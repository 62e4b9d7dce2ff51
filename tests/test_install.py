"""The installed package, not the checkout: a wheel built from the repository and installed
into an empty folder answers `-h` for every documented command, from a working directory
outside the checkout, with its package data (configs/kuda.yaml) and the start-up hook."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["-h"], ["train", "-h"], ["pretrain", "-h"], ["explain", "-h"], ["ablate", "-h"], ["config", "-h"],
    ["config", "show", "-h"], ["config", "keys"], ["evaluate", "-h"], ["robustness", "-h"], ["reproduce", "-h"],
    ["retokenize", "-h"],
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("installed")
    env = dict(os.environ, KUDA_MMSA_NO_EXT="1")   # the op's C++ build is not what this tests
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(d / "wheel"), str(REPO)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next((d / "wheel").glob("kuda_mmsa-*.whl"))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(d / "site"),
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # --target folders are not site dirs: process the installed .pth as site-packages would
    (d / "site" / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n")
    (d / "cwd").mkdir()
    return d


def _run(installed, *argv):
    env = dict(os.environ, PYTHONPATH=str(installed / "site"))
    env.pop("KUDA_MMSA_NO_HOOK", None)
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env,
                          cwd=installed / "cwd", timeout=300)


def test_the_installed_package_is_imported(installed):
    r = _run(installed, "-c", "import kuda_mmsa, kuda_mmsa.configs; print(kuda_mmsa.__file__)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(installed / "site"))
    assert (installed / "site" / "kuda_mmsa" / "configs" / "kuda.yaml").is_file()
    assert (installed / "site" / "kuda_mmsa_hook.pth").is_file()


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a))
def test_every_documented_command_answers_help(installed, argv):
    r = _run(installed, "-m", "kuda_mmsa", *argv)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    if argv[-1] == "-h":
        assert f"usage: python -m kuda_mmsa {' '.join(argv[:-1])}".rstrip() in r.stdout
    else:
        assert r.stdout.strip()


def test_console_script_and_python_m_mmsa(installed):
    script = installed / "site" / "bin" / "kuda-mmsa"
    assert script.is_file()
    env = dict(os.environ, PYTHONPATH=str(installed / "site"))
    r = subprocess.run([sys.executable, str(script), "config", "keys"], capture_output=True, text=True, env=env,
                       cwd=installed / "cwd", timeout=300)
    assert r.returncode == 0 and "ratio_source" in r.stdout, r.stderr[-2000:]
    r = _run(installed, "-m", "MMSA", "-h")
    assert r.returncode == 0 and "usage: python -m MMSA" in r.stdout and "kuda" in r.stdout, r.stderr[-2000:]
