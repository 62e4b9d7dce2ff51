"""The benchmark tools (tools/bench_train.py, tools/bench_kernels.py) still run and parse:
their helpers, and one tiny end-to-end step benchmark. Benchmarks only: nothing is timed."""
import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_train = _load("bench_train")


def test_parse_ours_variants():
    assert bench_train.parse_ours("ours") == (None, None, "auto")          # the config's default
    assert bench_train.parse_ours("ours-ckpt") == (None, "all", "auto")    # configs/cpu_fast.yaml
    assert bench_train.parse_ours("ours-bf16") == ("bf16", None, "auto")
    assert bench_train.parse_ours("ours-fp32-nockpt") == ("fp32", "none", "auto")
    assert bench_train.parse_ours("ours-seqckpt") == (None, "sequences", "auto")
    assert bench_train.parse_ours("ours-eager-bf16") == ("bf16", None, "off")   # cuda_graphs: off


def test_cpu_info_reads_model_and_flags(monkeypatch):
    text = "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile sse2\n"
    monkeypatch.setattr(bench_train, "open", lambda *a, **k: io.StringIO(text), raising=False)
    model, flags = bench_train.cpu_info()
    assert model == "Test CPU"
    assert flags == ["avx2", "avx512f", "amx_tile", "amx_bf16"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_authors_tree_accepts_a_checkout_or_a_bare_git_dir(tmp_path):
    """A stand-in repository (one empty file at the authors' layout), never their code."""
    work = tmp_path / "work"
    (work / "models").mkdir(parents=True)
    (work / "models" / "OverallModal.py").write_text("# stand-in\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q", str(work)], check=True)
    subprocess.run(git + ["-C", str(work), "add", "."], check=True)
    subprocess.run(git + ["-C", str(work), "commit", "-q", "-m", "x"], check=True)
    tree, tmp = bench_train.authors_tree(str(work))  # a checkout: used in place
    assert tree == work.resolve() and tmp is None
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    tree, tmp = bench_train.authors_tree(str(bare))  # a bare git dir: HEAD exported to a temp folder
    try:
        assert tmp is not None and (tree / "models" / "OverallModal.py").is_file()
        assert ROOT not in tree.parents  # never inside this repository
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with pytest.raises(SystemExit):
        bench_train.authors_tree(str(tmp_path / "nothing"))


def test_bench_kernels_sdpa_composition_matches_reference():
    bench_kernels = _load("bench_kernels")
    q, k, v, w, mask = bench_kernels.make(2, 3, 2, 9, 16, torch.float32, "cpu", False)
    scale = 1 / math.sqrt(16)
    ref = bench_kernels.ops.ratio_cross_attention_reference(q, k, v, w, mask, scale)
    torch.testing.assert_close(bench_kernels.sdpa_composition(q, k, v, w, mask, scale), ref, atol=1e-5, rtol=1e-5)
    # "lengths" padding: a padded suffix per (b, m), never the first key
    *_, mask = bench_kernels.make(4, 2, 1, 40, 8, torch.float32, "cpu", False, padding="lengths")
    valid = (~mask).sum(-1)
    assert torch.equal(mask, torch.arange(40) >= valid[..., None]) and (valid >= 20).all()
    assert "kernel_tc" not in bench_kernels.methods_for("cpu", torch.bfloat16)
    assert "kernel_tc" in bench_kernels.methods_for("cuda", torch.bfloat16)
    assert "kernel_tc" not in bench_kernels.methods_for("cuda", torch.float32)


@pytest.mark.slow
def test_bench_train_runs_end_to_end_tiny(tmp_path):
    """Tiny shapes, one round, no baseline: the child runs the trainer's setup and the parent
    writes its table and JSON (a bert-base-sized encoder is still built: ~20 s)."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_train.py"), "-b", "2", "--text-len", "6", "--vision", "8", "5",
         "--audio", "9", "3", "--variants", "ours-fp32", "--baseline", "none", "--rounds", "1", "--steps", "1",
         "--warmup", "0", "--mem-limit-gib", "0", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "CPU flags:" in r.stdout and "torch threads" in r.stdout
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["variant"] == "ours-fp32" and row["precision"] == "fp32" and row["step_s"] > 0
    assert row["peak_rss_gib"] > 0 and "cpu_flags" in data["meta"]


@pytest.mark.slow
@pytest.mark.parametrize("modality", ["V", "T"])
def test_bench_train_stage1_runs_tiny(tmp_path, modality):
    """--stage 1: one modality's knowledge pre-training step (training.stage1.branch_training),
    tiny shapes, one round, no baseline; the parent prints and writes what it promises."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "bench_train.py"), "--stage", "1", "--modality", modality, "-b", "2",
         "--text-len", "6", "--vision", "8", "5", "--audio", "9", "3", "--baseline", "none", "--rounds", "1",
         "--steps", "1", "--warmup", "0", "--eval-steps", "1", "--mem-limit-gib", "0", "--json", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"stage-1 training step of the {modality} branch" in r.stdout
    assert "CPU flags:" in r.stdout and "s/step, peak RSS" in r.stdout
    data = json.loads(out.read_text())
    assert data["meta"]["stage"] == 1 and data["meta"]["modality"] == modality
    (row,) = data["rows"]
    assert row["variant"] == "ours" and row["precision"] == "fp32" and row["step_s"] > 0
    assert row["peak_rss_gib"] > 0 and row["eval_samples_per_s"] > 0 and row["captured"] is False


def test_bench_train_stage1_refuses_a_precision():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_train.py"), "--stage", "1", "--variants",
                        "ours-bf16", "--baseline", "none"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "stage 1 trains in fp32" in r.stderr
