"""What a newcomer meets (issue 22): the README's quick start and Python snippet run as
written and leave each output where the README says; every command that evaluates the same
weights on the same split reports the numbers training reported; outputs go under MMSA's
result folder, never the working directory; `-h` and argument errors load nothing heavy and
answer in one paragraph; the README's aliases and defaults are the code's."""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
HEAVY = ("torch", "transformers", "numpy", "pandas", "sklearn", "matplotlib", "MMSA.run", "MMSA.config")


# ------------------------------------------------------------------ the README, read as a user would
def readme_section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end >= 0 else None]


def quickstart_command(number: int) -> str:
    block = re.search(r"```bash\n(.*?)```", readme_section("Quick start"), re.S).group(1)
    lines = [line for line in block.splitlines() if line.startswith("python3 -m venv")]
    return lines[number - 1]


def readme_snippet() -> str:
    return re.search(r"From Python:\n\n```python\n(.*?)```", README, re.S).group(1)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    """The start-up hook's .pth processed at start-up (as the install does), so that
    `python -m MMSA` reaches our command line from this checkout whatever the interpreter."""
    from kuda_mmsa.cli import hook

    d = tmp_path_factory.mktemp("site")
    (d / hook.PTH_NAME).write_text((REPO / "kuda_mmsa" / "cli" / hook.PTH_NAME).read_text())
    (d / "sitecustomize.py").write_text(
        "import os, site\nsite.addsitedir(os.path.dirname(os.path.abspath(__file__)))\n")
    return d


def _env(site_dir, home=None, cache=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site_dir), str(REPO)]), HF_HUB_OFFLINE="1")
    for k in ("KUDA_MMSA_NO_HOOK", "KUDA_MMSA_KNOWLEDGE_DIR", "MMSA_DATA_ROOT"):
        env.pop(k, None)
    if home is not None:
        env["HOME"] = str(home)
    if cache is not None:
        env["KUDA_MMSA_CACHE"] = str(cache)
    return env


# ------------------------------------------------------------------ quick start and snippet, as written
@pytest.fixture(scope="module")
def quickstart(site_dir, tmp_path_factory):
    """README command 1's run (after its install steps) in an empty HOME and an empty working
    directory, then the README's Python snippet in the same HOME."""
    d = tmp_path_factory.mktemp("newcomer")
    home, cwd, cache = d / "home", d / "cwd", d / "cache"
    for p in (home, cwd):
        p.mkdir()
    run_part = quickstart_command(1).split(" && ")[-1]
    assert run_part.startswith(".venv/bin/python -m MMSA "), run_part
    argv = [sys.executable] + run_part.split()[1:]
    env = _env(site_dir, home, cache)
    cmd1 = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)
    assert cmd1.returncode == 0, cmd1.stderr[-3000:]
    left_in_cwd = sorted(p.name for p in cwd.iterdir())
    snippet = subprocess.run([sys.executable, "-c", readme_snippet()], capture_output=True, text=True, cwd=cwd,
                             env=env, timeout=1800)
    return {"home": home, "cwd": cwd, "cache": cache, "cmd1": cmd1, "cwd_after_cmd1": left_in_cwd, "snippet": snippet}


def readme_outputs_of_command_1():
    """The files the README's quick start says command 1 writes (paths under ~)."""
    text = readme_section("Quick start")
    para = text[text.index("- Command 1 runs"):]
    para = para[:para.index("\n- ")]
    named = re.findall(r"`(~/[^`]+|[\w.-]+\.(?:csv|json|png|pth|log))`", para)
    return para, named


@pytest.mark.slow
def test_quickstart_writes_every_output_where_the_readme_says(quickstart):
    home, cmd1 = quickstart["home"], quickstart["cmd1"]
    para, named = readme_outputs_of_command_1()
    full = [n for n in named if n.startswith("~/")]
    for must in ("results/normal/demo.csv", "logs/kuda-demo.log", "saved_models/kuda-demo.pth", "curves.png"):
        assert any(n.endswith(must) for n in full), f"the README no longer names {must}"
    by_name = {}
    for n in full:
        if n == "~/.cache/kuda_mmsa":       # the generated demo data: $KUDA_MMSA_CACHE here
            assert list((quickstart["cache"] / "demo").glob("demo-*.pkl")), "no demo data generated"
            continue
        path = home / n[2:]
        if n.endswith("/"):
            assert path.is_dir(), n
            continue
        assert path.is_file(), f"README: command 1 writes {n}; not there"
        by_name[path.name] = path
    # the files named by their name only lie beside the one named before them
    assert (home / "MMSA" / "results" / "normal" / "demo-seeds.csv").is_file() and "demo-seeds.csv" in named
    assert (home / "MMSA" / "saved_models" / "kuda-demo.pth.json").is_file() and "kuda-demo.pth.json" in named
    png = by_name["kuda-demo-seed1111-curves.png"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    # ... and the end of the run names each of them
    outputs = cmd1.stderr[cmd1.stderr.index("Outputs:"):]
    for path in list(by_name.values()) + [home / "MMSA" / "results" / "normal" / "demo-seeds.csv",
                                          home / "MMSA" / "saved_models" / "kuda-demo.pth.json"]:
        assert str(path) in outputs, path
    assert quickstart["cwd_after_cmd1"] == []                 # nothing in the working directory
    assert "Traceback" not in cmd1.stderr and "matplotlib is not installed" not in cmd1.stderr


@pytest.mark.slow
def test_negative_training_loss_is_explained_once_in_the_log(quickstart):
    log = (quickstart["home"] / "MMSA" / "logs" / "kuda-demo.log").read_text()
    run1 = log[:log.index("Outputs:")]          # command 1's part (the snippet appends its own)
    assert run1.count("the training loss can be negative") == 1
    assert "negative log-likelihood" in run1


@pytest.mark.slow
def test_readme_snippet_runs_and_does_what_the_readme_says(quickstart):
    home, snip = quickstart["home"], quickstart["snippet"]
    assert snip.returncode == 0, snip.stderr[-3000:]
    assert "worker processes" not in snip.stderr         # torch's "DataLoader will create N worker processes"
    assert "requested but CUDA is not available" not in snip.stderr
    assert "seed" in snip.stdout and "MAE" in snip.stdout     # print(result.table())
    para = README[README.index("`MMSA_run` writes where command 1 writes"):]
    assert "second `kuda` row" in para and "becomes this run's weights" in para and "saved_models/runs/" in para
    with open(home / "MMSA" / "results" / "normal" / "demo.csv") as f:
        assert [r["Model"] for r in csv.DictReader(f)] == ["kuda", "kuda"]
    with open(home / "MMSA" / "results" / "normal" / "demo-seeds.csv") as f:
        runs = [r["run"] for r in csv.DictReader(f)]
    assert len(runs) == 2 and len(set(runs)) == 2             # "the run column tells the two apart"
    models = home / "MMSA" / "saved_models"
    first, second = (models / "runs" / f"{r}.pth" for r in runs)
    assert first.is_file() and second.is_file()               # command 1's weights are kept
    assert (models / "kuda-demo.pth").read_bytes() == second.read_bytes()
    assert (models / "kuda-demo.pth").read_bytes() != first.read_bytes()
    assert sorted(p.name for p in quickstart["cwd"].iterdir()) == []


def test_mmsa_run_takes_the_command_lines_defaults(monkeypatch, tmp_path, kuda_cache):
    """MMSA's own defaults (4 workers, GPU 0) made torch warn on small machines and every CPU
    machine; MMSA_run now uses min(8, usable CPUs) and the freest GPU, else the CPU."""
    from kuda_mmsa.cli.common import FLAGS
    from kuda_mmsa.mmsa import defaults, run as run_mod

    assert FLAGS["num_workers"][1]["default"] == defaults.default_workers()     # -n: the same rule
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert defaults.default_workers() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert defaults.default_workers() == 8
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    seen = {}

    class Stop(Exception):
        pass

    def capture(args, num_workers=0, **kw):
        seen.update(num_workers=num_workers, device=str(args["device"]))
        raise Stop

    monkeypatch.setattr(run_mod, "run_seed", capture)
    with pytest.raises(Stop):
        run_mod.MMSA_run("kuda", "demo", seeds=[1], model_save_dir=str(tmp_path / "m"),
                         res_save_dir=str(tmp_path / "r"), log_dir=str(tmp_path / "l"), verbose_level=0)
    assert seen["num_workers"] == 3
    import torch

    if not torch.cuda.is_available():
        assert seen["device"] == "cpu"


# ------------------------------------------------------------------ same weights, same numbers
@pytest.fixture(scope="module")
def trained_bf16(tiny_demo_pickle, tmp_path_factory):
    """A tiny KuDA run in bf16 (emulated where the CPU lacks it): evaluating it in fp32 gives
    other numbers, so a command that ignores the config's precision is caught on any machine."""
    from kuda_mmsa.mmsa.register import register
    from kuda_mmsa.mmsa.run import MMSA_run

    d = tmp_path_factory.mktemp("bf16_run")
    cfg = write_tiny_config(d / "tiny.yaml", precision="bf16")
    register()
    result = MMSA_run("kuda", "demo", config_file=str(cfg), config={"knowledge_dir": str(d / "knowledge")},
                      seeds=[5], custom_feature=str(tiny_demo_pickle), gpu_ids=[], num_workers=0, verbose_level=0,
                      model_save_dir=str(d / "models"), res_save_dir=str(d / "results"), log_dir=str(d / "logs"))
    return {"dir": d, "cfg": cfg, "weights": d / "models" / "kuda-demo.pth", "test": result.per_seed[0]}


@pytest.mark.slow
def test_every_command_reports_the_numbers_training_reported(trained_bf16, tiny_demo_pickle, tmp_path):
    from kuda_mmsa.cli.evaluate import evaluate
    from kuda_mmsa.experiments.explanation import collect
    from kuda_mmsa.cli.main import main
    from kuda_mmsa.mmsa.trained import load_trained
    from kuda_mmsa.training.evaluation import predict
    from kuda_mmsa.data import make_loaders
    from kuda_mmsa.training.metrics import metrics_for

    w, trained = trained_bf16["weights"], trained_bf16["test"]
    ff = str(tiny_demo_pickle)
    ev = evaluate(w, "demo", ff)["metrics"]
    _, ex = collect(w, "test", "demo", None, ff)
    out = tmp_path / "rob"
    assert main(["robustness", "--weights", str(w), "--feature-file", ff, "-d", "demo", "--corrupt", "missing",
                 "--modality", "T", "--rate", "0", "--out", str(out)]) == 0
    with open(out / "robustness.csv") as f:
        rob = next(r for r in csv.DictReader(f) if float(r["rate"]) == 0.0)
    for m in ("MAE", "Corr", "Mult_acc_2", "F1_score"):
        assert ev[m] == pytest.approx(trained[m], abs=1e-6), ("evaluate", m)
        assert ex[m] == pytest.approx(trained[m], abs=1e-6), ("explain", m)
        assert float(rob[m]) == pytest.approx(trained[m], abs=1e-6), ("robustness", m)
    # the check can tell: the same weights in fp32 give other numbers
    args, features, model = load_trained(w, "demo", None, ff)
    loader = make_loaders({"test": features["test"]}, int(args.batch_size), 0)["test"]
    p = predict(model, loader, args.device, "fp32")
    fp32 = metrics_for(args.metrics_name)(p.pred, p.labels)
    assert abs(fp32["MAE"] - trained["MAE"]) > 1e-6 or abs(fp32["Corr"] - trained["Corr"]) > 1e-6


# ------------------------------------------------------------------ outputs under MMSA's result folder
@pytest.mark.slow
def test_explain_and_robustness_write_under_the_result_root_not_the_cwd(trained_bf16, tiny_demo_pickle, tmp_path,
                                                                        monkeypatch, capsys):
    from kuda_mmsa.cli.main import main

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    w, ff = str(trained_bf16["weights"]), str(tiny_demo_pickle)
    assert main(["explain", "--weights", w, "--feature-file", ff, "-d", "demo"]) == 0
    explain_dir = home / "MMSA" / "results" / "explain" / "kuda-demo"
    for name in ("explain-test.csv", "summary.json", "ratio_distribution.png", "ratio_by_dominant.png"):
        assert (explain_dir / name).is_file(), name
    printed = capsys.readouterr().out
    assert f"wrote {explain_dir / 'explain-test.csv'}" in printed
    res = tmp_path / "res"
    assert main(["robustness", "--weights", w, "--feature-file", ff, "-d", "demo", "--corrupt", "swap",
                 "--modality", "V", "--rate", "0", "0.5", "--res-save-dir", str(res)]) == 0
    assert (res / "robustness" / "kuda-demo" / "robustness.csv").is_file()
    assert (res / "robustness" / "kuda-demo" / "robustness-swap.png").is_file()
    assert list(cwd.iterdir()) == []
    # --out still wins, relative to the working directory as the user typed it
    assert main(["explain", "--weights", w, "--feature-file", ff, "-d", "demo", "--no-plots", "--out", "mine"]) == 0
    assert (cwd / "mine" / "explain-test.csv").is_file()


@pytest.mark.slow
def test_ablate_writes_under_the_result_root_and_shows_na_for_static_fusion(trained_bf16, tiny_demo_pickle,
                                                                            tmp_path, monkeypatch, capsys):
    from kuda_mmsa.cli.main import main

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    assert main(["ablate", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-c", str(trained_bf16["cfg"]),
                 "-s", "5", "--variants", "kuda_static", "-n", "0", "-v", "0", "--no-plots",
                 "--knowledge-dir", str(trained_bf16["dir"] / "knowledge")]) == 0
    out = home / "MMSA" / "results" / "ablation" / f"demo-{Path(tiny_demo_pickle).stem}"
    with open(out / "ablation.csv") as f:
        row = next(csv.DictReader(f))
    assert row["variant"] == "kuda_static" and row["DomFrac"] == ""     # not 0.0: the question does not apply
    table = capsys.readouterr().out
    static = next(line for line in table.splitlines() if line.startswith("| kuda_static |"))
    assert static.rstrip().endswith("| n/a |")
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------ the dominant-modality share
def _row(scores, ratios, dominant):
    t, v, a = scores
    rt, rv, ra = ratios
    return {"T": t, "V": v, "A": a, "R_T": rt, "R_V": rv, "R_A": ra, "annotation": f"dominant:{dominant}"}


def test_ratio_placement_against_hand_counts():
    from kuda_mmsa.experiments.explanation import describe_dominant
    from kuda_mmsa.training.evaluation import dominant_fraction, ratio_placement

    rows = [
        _row((0.9, 0.3, -0.5), (0.2, 0.6, 0.2), "text"),     # median: vision (0.3); largest ratio: vision
        _row((0.1, 0.8, -0.7), (0.7, 0.2, 0.1), "vision"),   # median: text; largest: text
        _row((-0.2, 0.4, -0.9), (0.1, 0.1, 0.8), "text"),    # median: text (dominant); largest: audio
        _row((0.5, 0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), "audio"),  # all tie: uniform ratios
        {"T": 0.0, "V": 0.0, "A": 0.0, "R_T": 0.9, "R_V": 0.05, "R_A": 0.05, "annotation": ""},  # not annotated
    ]
    place = ratio_placement(rows)
    # by hand: 4 annotated; uniform 1; largest ratio on the median modality in rows 1, 2 (row 4 has none)
    assert place == {"samples": 4, "uniform": 1, "median": 0.5, "dominant_is_median": 0.5}
    assert dominant_fraction(rows) == 0.0
    text = describe_dominant({"dominant_fraction": 0.0, "ratio_placement": place})
    assert "0.0% of the 4 annotated samples" in text and "33.3%" in text and "50.0%" in text
    uniform = [_row((0.1, 0.2, 0.3), (1 / 3, 1 / 3, 1 / 3), "text")] * 3
    assert "n/a" in describe_dominant({"dominant_fraction": dominant_fraction(uniform),
                                       "ratio_placement": ratio_placement(uniform)})
    assert ratio_placement([{"annotation": "", "T": 0, "V": 0, "A": 0, "R_T": 1, "R_V": 0, "R_A": 0}]) is None


# ------------------------------------------------------------------ start-up and argument errors
@pytest.mark.parametrize("argv", [["-m", "MMSA", "-h"], ["-m", "MMSA", "-d", "dmeo"],
                                  ["-m", "kuda_mmsa", "explain", "-h"], ["-m", "kuda_mmsa", "ablate", "-h"],
                                  ["-m", "kuda_mmsa", "robustness", "--weights", "w", "--rate", "x"],
                                  ["-m", "kuda_mmsa", "reproduce", "-h"], ["-m", "kuda_mmsa", "config", "keys"]],
                         ids=" ".join)
def test_help_and_argument_errors_load_nothing_heavy(site_dir, tmp_path, argv):
    """`-h` took ~6 s (44 s on a loaded machine) because torch, transformers and MMSA were
    imported before argparse ran; the import log of the process must not show them."""
    r = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True,
                       cwd=tmp_path, env=_env(site_dir, home=tmp_path), timeout=300)
    assert r.returncode in (0, 2), r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert imported, "no import log: -X importtime had no effect"
    heavy = sorted(m for m in imported if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []


def test_a_dataset_typo_is_one_paragraph_with_the_closest_choice(site_dir, tmp_path):
    from kuda_mmsa.mmsa.datasets import dataset_choices

    r = subprocess.run([sys.executable, "-m", "MMSA", "-m", "kuda", "-d", "dmeo", "-s", "1111"], capture_output=True,
                       text=True, cwd=tmp_path, env=_env(site_dir, home=tmp_path), timeout=300)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert "\n" not in err and "usage:" not in err and "Traceback" not in err
    assert "did you mean 'demo'?" in err
    assert f"Choices: {', '.join(dataset_choices())}." in err


@pytest.mark.parametrize("argv,hint", [
    (["-m", "kdua", "-d", "demo"], "did you mean 'kuda'?"),
    (["ablate", "-d", "demo", "--variants", "kuda_statc"], "did you mean 'kuda_static'?"),
    (["config", "shw"], "did you mean 'show'?"),
    (["explain", "--weights", "w", "--no-plts"], "did you mean --no-plots?"),
    (["robustness", "--weights", "w", "--corrupt", "noize"], "did you mean 'noise'?"),
])
def test_argument_errors_name_the_closest_valid_one(argv, hint, capsys):
    from kuda_mmsa.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert hint in err and "\n" not in err and "usage:" not in err


# ------------------------------------------------------------------ the README's aliases and defaults
def readme_dataset_encoders():
    table = readme_section("Using it on real data")
    rows = re.findall(r"^\| (`[^|]+`) \| [^|]+ \| ([^|]+) \|$", table, re.M)
    out = {}
    for names, encoder in rows:
        for name in re.findall(r"`(\w+)`", names):
            out[name] = encoder.strip()
    return out


def test_config_show_names_the_encoder_the_readme_table_gives(capsys):
    from kuda_mmsa.cli.main import main

    table = readme_dataset_encoders()
    assert {"sims", "sims2", "simsv2", "mosi", "mosei", "demo"} <= set(table)
    for name, encoder in table.items():
        assert main(["config", "show", "-d", name]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if re.match(r"model\s+pretrained\s", x))
        value = line.split()[2]
        if name == "demo":
            assert encoder.startswith("a tiny BERT") and value == "demo-tiny-bert"
        else:
            assert value == encoder, (name, line)
        assert "default" in line or name == "demo"      # the demo sets it in configs/kuda.yaml
    assert main(["config", "show", "-d", "sims2", "--pretrained", "/models/x"]) == 0
    assert re.search(r"pretrained\s+/models/x\s+command line", capsys.readouterr().out)


def test_retokenize_row_alias_and_help(tiny_demo_pickle, tmp_path, capsys):
    from kuda_mmsa.cli.main import main

    row = next(line for line in readme_section("Commands").splitlines() if "kuda-mmsa retokenize" in line)
    assert "--out G.pkl" in row
    with pytest.raises(SystemExit):
        main(["retokenize", "-h"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--out FILE\s+The feature file to write", help_text)
    out = tmp_path / "retok.pkl"
    assert main(["retokenize", "--feature-file", str(tiny_demo_pickle), "--pretrained", "demo-tiny-bert",
                 "--out", str(out)]) == 0
    assert out.is_file()


# ------------------------------------------------------------------ the install: CUDA kernels only where they run
@pytest.fixture
def extensions(monkeypatch):
    """setup.py's _extensions(), with torch made to look like a CUDA build beside a toolkit."""
    import runpy

    import setuptools
    import torch
    import torch.utils.cpp_extension as ce

    monkeypatch.setattr(setuptools, "setup", lambda **kw: None)
    monkeypatch.chdir(REPO)
    fn = runpy.run_path(str(REPO / "setup.py"), run_name="not_main")["_extensions"]
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(ce, "CUDA_HOME", "/usr/local/cuda")
    monkeypatch.delenv("KUDA_MMSA_NO_EXT", raising=False)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")

    def build(gpu_visible: bool, force=None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu_visible)
        if force is None:
            monkeypatch.delenv("FORCE_CUDA", raising=False)
        else:
            monkeypatch.setenv("FORCE_CUDA", force)
        try:
            (ext,) = fn()
        except OSError as e:        # CUDAExtension looks for the toolkit's folders
            pytest.skip(f"no CUDA toolkit here to describe a CUDA extension: {e}")
        return any(s.endswith(".cu") for s in ext.sources)

    return build


def test_cuda_kernels_compile_only_where_a_gpu_is_visible_unless_forced(extensions):
    assert extensions(gpu_visible=False) is False          # a CPU machine with nvcc around: CPU kernels
    assert extensions(gpu_visible=True) is True
    assert extensions(gpu_visible=False, force="1") is True    # CI's compile check, a container build
    assert extensions(gpu_visible=True, force="0") is False


def test_ci_runs_readme_command_2_verbatim_and_compiles_the_cuda_kernels():
    ci = (REPO / ".ci" / "run").read_text()
    command2 = quickstart_command(2)
    assert command2 in ci.replace(" \\\n  ", " ")
    # both quick-start commands install the same CPU torch, so CI tests what command 1 installs
    assert quickstart_command(1).split(" && ")[1] == command2.split(" && ")[1]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in command2
    # the README's GPU install, forced, is what CI compiles the CUDA kernels with
    gpu = re.search(r"\*\*On a machine with an NVIDIA GPU\*\*.*?```bash\n\s*(.*?)\n\s*```", README, re.S).group(1)
    assert gpu.startswith("python3 -m venv .venv && .venv/bin/pip install torch \"setuptools>=70\" wheel")
    assert "FORCE_CUDA=1" in ci and "_dispatch_has_kernel_for_dispatch_key" in ci


def test_python_m_mmsa_defers_mmsas_init_and_register_keeps_its_patches(tmp_path):
    """Under `python -m MMSA` the hook creates the MMSA package without running its __init__
    (which loads torch and transformers); register() must run it before patching, or a later
    read of any MMSA name would run it and undo the patches."""
    code = (
        "import sys\n"
        "sys.orig_argv = ['python', '-m', 'MMSA']\n"
        "from kuda_mmsa.cli import hook\n"
        "assert hook.install()\n"
        "import MMSA\n"
        "assert 'torch' not in sys.modules and 'MMSA.run' not in sys.modules, sorted(sys.modules)\n"
        "from kuda_mmsa.mmsa.register import register\n"
        "register()\n"
        "import kuda_mmsa.mmsa.run as ours\n"
        "MMSA.SUPPORTED_MODELS\n"
        "assert MMSA.MMSA_run is ours.MMSA_run, MMSA.MMSA_run\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("KUDA_MMSA_NO_HOOK", None)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
