"""Runs that share a machine, a folder or a results file (issue 20): each run writes under its
own name and holds a lock, appends to shared CSVs lose no row, a killed multi-seed run resumes,
ablation cells are matched by everything that defines them, stage 1 of `train` follows
`pretrain`'s label rule, NaN/inf settings are refused, workers die with their sweep, and the
listed failures are one paragraph instead of a traceback."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _argv(d: Path, cfg, feature_file, *extra):
    return ["-m", "kuda", "-d", "demo", "-n", "0", "--feature-file", str(feature_file), "-c", str(cfg),
            "--model-save-dir", str(d / "m"), "--res-save-dir", str(d / "r"), "--log-dir", str(d / "l"),
            "--knowledge-dir", str(d / "k"), "--no-progress", "--no-plots", *extra]


def _rows(path: Path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _one_paragraph(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.fixture
def fast_cfg(tmp_path):
    """Tiny, fp32 (so that an independent evaluation reproduces the run's own numbers), no
    stage 1 (use_knowledge false) unless a test asks for it."""
    return write_tiny_config(tmp_path / "fast.yaml", precision="fp32", use_knowledge=False)


@pytest.fixture
def no_training(monkeypatch):
    from kuda_mmsa.training import stage1, trainer

    def boom(*a, **k):
        raise AssertionError("training started although the run cannot keep its result")

    monkeypatch.setattr(trainer.KuDATrainer, "do_train", boom)
    monkeypatch.setattr(stage1, "train_branch", boom)


# ---------------------------------------------------------------------- 1. run identity and lock
PAUSED_RUN = r"""
import os, sys, time
from pathlib import Path
from kuda_mmsa.training import trainer

gate, paused = Path(sys.argv[1]), Path(sys.argv[2])
real, calls = trainer.KuDATrainer.do_test, [0]

def do_test(self, *a, **k):
    calls[0] += 1
    if calls[0] == 2:          # epoch 2's validation: the run is alive, its epoch-1 state saved
        paused.write_text(str(os.getpid()))
        while not gate.exists():
            time.sleep(0.1)
    return real(self, *a, **k)

trainer.KuDATrainer.do_test = do_test
from kuda_mmsa.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_runs_at_once_in_the_same_folders_each_test_their_own_weights(tmp_path, fast_cfg, tiny_demo_pickle):
    from kuda_mmsa.experiments.explanation import collect

    script, gate, paused = tmp_path / "paused_run.py", tmp_path / "go", tmp_path / "paused"
    script.write_text(PAUSED_RUN)
    argv = _argv(tmp_path, fast_cfg, tiny_demo_pickle)
    first = subprocess.Popen([sys.executable, str(script), str(gate), str(paused), *argv, "-s", "1111"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not paused.exists():
            assert first.poll() is None, first.communicate()[0][-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        # the same run again while the first is alive: refused, the live state is not called interrupted
        same = subprocess.run([sys.executable, "-m", "kuda_mmsa", *argv, "-s", "1111"], env=_env(),
                              capture_output=True, text=True, timeout=300)
        line = _one_paragraph(same.stderr)
        assert same.returncode == 2 and "being trained right now" in line and f"process {paused.read_text()}" in line
        assert "interrupted" not in line.replace("not interrupted", "") and "Delete" not in line
        # another seed in the same folders, started and finished while the first is half way
        other = subprocess.run([sys.executable, "-m", "kuda_mmsa", *argv, "-s", "1112"], env=_env(),
                               capture_output=True, text=True, timeout=300)
        assert other.returncode == 0, other.stderr[-3000:]
    finally:
        gate.write_text("go")
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]

    rows = _rows(tmp_path / "r" / "normal" / "demo-seeds.csv")
    assert sorted(int(r["seed"]) for r in rows) == [1111, 1112]
    for r in rows:
        weights = Path(r["weights"])
        assert json.loads(Path(str(weights) + ".json").read_text())["seed"] == int(r["seed"])
        # reference: an independent evaluation of that run's own weights gives the run's numbers
        _, metrics = collect(weights, "test", "demo", None, tiny_demo_pickle)
        for m in METRICS:
            assert float(r[m]) == pytest.approx(metrics[m], abs=1e-6), (r["seed"], m)
    assert len(_rows(tmp_path / "r" / "normal" / "demo.csv")) == 2
    # MMSA's name holds the run that finished last (seed 1111), byte for byte
    last = next(Path(r["weights"]) for r in rows if r["seed"] == "1111")
    assert (tmp_path / "m" / "kuda-demo.pth").read_bytes() == last.read_bytes()


# ---------------------------------------------------------------------- 2. ablation cells
def test_ablate_runs_a_cell_again_when_its_config_or_data_changed(tmp_path, fast_cfg, tiny_demo_pickle,
                                                                   tiny_demo_data, write_variant):
    from kuda_mmsa.experiments import ablation as ablate

    cfg = write_tiny_config(tmp_path / "one.yaml", precision="fp32", use_knowledge=False, epochs=1)
    out, said = tmp_path / "abl", []

    def run(config_file, feature_file):
        return ablate.run_ablation("demo", [7], ["kuda"], out, feature_file=str(feature_file),
                                   config_file=str(config_file), verbose_level=0, echo=said.append,
                                   config={"plots": False, "progress": False})

    assert run(cfg, tiny_demo_pickle)["ran"] == [("kuda", 7)]
    first = _rows(out / "ablation.csv")
    assert run(cfg, tiny_demo_pickle)["ran"] == []                      # same settings: kept
    changed = write_tiny_config(tmp_path / "two.yaml", precision="fp32", use_knowledge=False, epochs=1,
                                learning_rate=3e-3)
    said.clear()
    assert run(changed, tiny_demo_pickle)["ran"] == [("kuda", 7)]       # another -c: run again, and why
    assert any("runs again" in s and "learning_rate: 0.001 -> 0.003" in s for s in said), said
    second = _rows(out / "ablation.csv")
    assert len(second) == 1 and second[0]["MAE"] != first[0]["MAE"]     # the row is the new run's

    def other_labels(d):
        d["test"]["regression_labels"] = -d["test"]["regression_labels"]

    other = write_variant(other_labels)                                 # another file: other content
    said.clear()
    assert run(changed, other)["ran"] == [("kuda", 7)]
    assert any("runs again" in s and "data" in s for s in said), said
    assert len(_rows(out / "ablation.csv")) == 1


# ---------------------------------------------------------------------- 3. stage 1's label rule
def test_train_stage1_refuses_a_missing_unimodal_label_as_pretrain_does(tmp_path, tiny_demo_pickle, tiny_demo_data,
                                                                         write_variant, capsys):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")

    def drop_text_label(d):
        for split in d.values():
            split.pop("regression_labels_T")

    pkl = write_variant(drop_text_label)
    rc = main(_argv(tmp_path, cfg, pkl, "-s", "1111", "-v", "0"))
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "regression_labels_T" in line and "regression_labels_V" in line and str(pkl) in line
    assert not (tmp_path / "k").exists() or not list((tmp_path / "k").rglob("*.pth"))   # no knowledge made
    assert not (tmp_path / "m" / "kuda-demo.pth").exists()
    rc = main(["pretrain", "-d", "demo", "--feature-file", str(pkl), "-c", str(cfg), "--knowledge-dir",
               str(tmp_path / "k2"), "-v", "0", "--no-progress"])
    same = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and same.split("error: ", 1)[1] == line.split("error: ", 1)[1]     # one rule, one message


# ---------------------------------------------------------------------- 4. numbers that are not numbers
@pytest.mark.parametrize("key,value", [("grad_clip", ".nan"), ("warmup_ratio", ".nan"), ("fusion_dropout", ".nan"),
                                       ("learning_rate", ".nan"), ("weight_decay", ".inf"),
                                       ("pretrain.learning_rate", "-.inf")])
def test_nan_or_inf_in_the_config_is_refused_naming_the_key(key, value, tmp_path, tiny_demo_pickle, capsys,
                                                            no_training):
    cfg = yaml.safe_load(write_tiny_config(tmp_path / "tiny.yaml").read_text())
    section, _, name = key.rpartition(".")
    (cfg[section] if section else cfg)[name] = yaml.safe_load(value)          # YAML's own spelling
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    rc = main(_argv(tmp_path, bad, tiny_demo_pickle, "-s", "1", "-v", "0"))
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and f"'{key}'" in line and "finite" in line and str(bad) in line


# ---------------------------------------------------------------------- 5. a results file that cannot take the row
@pytest.mark.parametrize("case", ["normal is a file", "other columns", "read-only"])
def test_a_results_csv_that_cannot_take_the_row_is_refused_before_training(case, tmp_path, fast_cfg,
                                                                          tiny_demo_pickle, capsys, no_training):
    normal = tmp_path / "r" / "normal"
    normal.parent.mkdir(parents=True)
    if case == "normal is a file":
        normal.write_text("not a folder")
        words = [str(normal), "is a file"]
    else:
        normal.mkdir()
        target = normal / "demo.csv"
        if case == "other columns":
            target.write_text("a,b\n1,2\n")
            words = [str(target), "['a', 'b']"]
        else:
            target.write_text("Model,Mult_acc_2,Mult_acc_3,Mult_acc_5,F1_score,MAE,Corr,Loss\n")
            target.chmod(0o444)
            words = [str(target), "read-only"]
    rc = main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, "-s", "1", "-v", "0"))
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2, line
    for w in words:
        assert w in line, (w, line)


def test_an_empty_results_csv_gets_the_header_and_the_row(tmp_path, fast_cfg, tiny_demo_pickle):
    normal = tmp_path / "r" / "normal"
    normal.mkdir(parents=True)
    (normal / "demo.csv").write_text("")
    assert main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, "-s", "1", "-v", "0")) == 0
    rows = _rows(normal / "demo.csv")
    assert len(rows) == 1 and rows[0]["Model"] == "kuda" and set(METRICS) <= set(rows[0])


# ---------------------------------------------------------------------- 6. concurrent appends
APPENDER = r"""
import sys
from kuda_mmsa.experiments import ablation as ablate
from kuda_mmsa.mmsa import run

csv_file, table, tag, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for i in range(n):
    run._append_csv(__import__("pathlib").Path(csv_file), f"{tag}{i}", [{"MAE": 0.5, "Corr": 0.25}])
    if i % 3 == 0:
        ablate.write_rows([{"variant": tag, "model": "kuda", "seed": i, "MAE": 0.5}], table)
"""


@pytest.mark.slow
def test_two_processes_appending_to_one_results_csv_and_ablation_csv_lose_no_row(tmp_path):
    script = tmp_path / "appender.py"
    script.write_text(APPENDER)
    results, table = tmp_path / "normal" / "demo.csv", tmp_path / "ablation.csv"
    procs = [subprocess.Popen([sys.executable, str(script), str(results), str(table), tag, "100"], env=_env(),
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    rows = _rows(results)
    assert len(rows) == 200 and {r["Model"] for r in rows} == {f"{t}{i}" for t in "ab" for i in range(100)}
    assert all(r["MAE"] == "(50.0, 0.0)" and r["Corr"] == "(25.0, 0.0)" for r in rows)
    cells = _rows(table)
    assert sorted((r["variant"], int(r["seed"])) for r in cells) == sorted(
        (t, i) for t in "ab" for i in range(0, 100, 3))


# ---------------------------------------------------------------------- 7. a killed multi-seed run resumes
def test_a_killed_multi_seed_run_keeps_finished_seeds_and_resumes_the_interrupted_one(
        tmp_path, fast_cfg, tiny_demo_pickle, monkeypatch):
    from kuda_mmsa.training import trainer

    seeds = ["-s", "1111", "-s", "1112", "-v", "0"]
    assert main(_argv(tmp_path / "reference", fast_cfg, tiny_demo_pickle, *seeds)) == 0   # never interrupted

    real_test, real_train = trainer.KuDATrainer.do_test, trainer.KuDATrainer.do_train
    calls = {"test": 0, "train": []}

    def killed_in_seed_1112(self, *a, **k):
        calls["test"] += 1
        if calls["test"] == 5:     # seed 1111: VAL, VAL, TEST; seed 1112: VAL, then this (epoch 2)
            raise KeyboardInterrupt
        return real_test(self, *a, **k)

    monkeypatch.setattr(trainer.KuDATrainer, "do_test", killed_in_seed_1112)
    assert main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, *seeds)) == 130
    seed_rows = _rows(tmp_path / "r" / "normal" / "demo-seeds.csv")
    assert [r["seed"] for r in seed_rows] == ["1111"]                  # written as seed 1111 ended
    assert not (tmp_path / "r" / "normal" / "demo.csv").exists()

    def counting_train(self, *a, **k):
        calls["train"].append(self.run.seed)
        return real_train(self, *a, **k)

    monkeypatch.setattr(trainer.KuDATrainer, "do_test", real_test)
    monkeypatch.setattr(trainer.KuDATrainer, "do_train", counting_train)
    assert main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, *seeds)) == 0   # the same command again
    assert calls["train"] == [1112]                                     # seed 1111 is not trained again
    log = (tmp_path / "l" / "kuda-demo.log").read_text()
    assert "Resuming stage 2 after epoch 1" in log and "not trained again" in log
    ref = tmp_path / "reference" / "r" / "normal"
    assert _rows(tmp_path / "r" / "normal" / "demo.csv") == _rows(ref / "demo.csv")    # bit for bit
    strip = lambda rows: [{k: v for k, v in r.items() if k != "weights"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "r" / "normal" / "demo-seeds.csv")) == strip(_rows(ref / "demo-seeds.csv"))
    assert not list((tmp_path / "m" / "runs").glob("*.resume"))


def test_a_repeated_seed_runs_once(tmp_path, fast_cfg, tiny_demo_pickle, monkeypatch):
    from kuda_mmsa.training import trainer

    real, seen = trainer.KuDATrainer.do_train, []

    def counting(self, *a, **k):
        seen.append(self.run.seed)
        return real(self, *a, **k)

    monkeypatch.setattr(trainer.KuDATrainer, "do_train", counting)
    assert main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, "-s", "1111", "-s", "1111", "-v", "0")) == 0
    assert seen == [1111]
    assert len(_rows(tmp_path / "r" / "normal" / "demo-seeds.csv")) == 1
    assert "given more than once" in (tmp_path / "l" / "kuda-demo.log").read_text()


# ---------------------------------------------------------------------- 8. workers die with their sweep
def _workers(marker: str):
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "kuda_mmsa.sweeps.executors" in cmd and marker in cmd:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc to find the workers")
def test_killing_an_ablation_sweep_ends_its_workers(tmp_path, tiny_demo_pickle):
    cfg = write_tiny_config(tmp_path / "long.yaml", use_knowledge=False, epochs=500, early_stop=500)
    out = tmp_path / "sweep"
    sweep = subprocess.Popen([sys.executable, "-m", "kuda_mmsa", "ablate", "-d", "demo", "-s", "1", "-s", "2",
                              "--variants", "kuda", "--devices", "cpu:2", "--out", str(out), "-c", str(cfg),
                              "--feature-file", str(tiny_demo_pickle), "-n", "0", "--no-plots", "--no-progress"],
                             env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline:
            time.sleep(0.3)
            workers = _workers(str(out))
        assert len(workers) == 2 and sweep.poll() is None
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(timeout=30)
        deadline = time.time() + 20
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() and
                                             "Z" not in _state(pid) for pid in workers):
            time.sleep(0.2)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
        assert not alive, f"workers {alive} outlived their sweep"
    finally:
        for pid in _workers(str(out)):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if sweep.poll() is None:
            sweep.kill()


def _state(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


# ---------------------------------------------------------------------- failures that were tracebacks
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_demo_pickle):
    d = tmp_path_factory.mktemp("shared_trained")
    cfg = write_tiny_config(d / "fast.yaml", precision="fp32", use_knowledge=False, epochs=1)
    assert main(_argv(d, cfg, tiny_demo_pickle, "-s", "1111", "-v", "0")) == 0
    return d


def test_nan_weights_are_refused_by_evaluate_robustness_and_explain(trained_run, tmp_path, tiny_demo_pickle,
                                                                    capsys):
    weights = trained_run / "m" / "kuda-demo.pth"
    state = torch.load(weights, weights_only=True)
    name = next(k for k in state if k.startswith("Model.head"))
    state[name] = state[name] * float("nan")                 # what a diverged run leaves
    bad = tmp_path / "kuda-demo.pth"
    torch.save(state, bad)
    (tmp_path / "kuda-demo.pth.json").write_text(Path(str(weights) + ".json").read_text())
    for argv in (["evaluate", "--weights", str(bad), "-d", "demo"],
                 ["robustness", "--weights", str(bad), "--corrupt", "missing", "--rate", "0.5", "--out",
                  str(tmp_path / "rob")],
                 ["explain", "--weights", str(bad), "--out", str(tmp_path / "exp"), "--no-plots"]):
        rc = main(argv + ["--feature-file", str(tiny_demo_pickle), "-v", "0"])
        line = _one_paragraph(capsys.readouterr().err)
        assert rc == 2 and "NaN" in line and name in line and str(bad) in line, (argv[0], line)


def test_evaluate_with_another_models_weights_names_what_it_found(tmp_path, tiny_demo_pickle, capsys):
    other = tmp_path / "lf_dnn-demo.pth"
    torch.save({"Model.text_subnet.linear_1.weight": torch.zeros(4, 4),
                "Model.post_fusion_layer_1.weight": torch.zeros(4, 4)}, other)
    rc = main(["evaluate", "--weights", str(other), "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-v", "0"])
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "no KuDA model" in line and "Model.text_subnet.linear_1.weight" in line
    assert "None" not in line


def test_robustness_refuses_a_snr_that_is_not_a_number(trained_run, tmp_path, tiny_demo_pickle, capsys):
    with pytest.raises(SystemExit) as e:
        main(["robustness", "--weights", str(trained_run / "m" / "kuda-demo.pth"), "--feature-file",
              str(tiny_demo_pickle), "--snr-db", "nan", "--corrupt", "noise", "--out", str(tmp_path / "rob")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--snr-db" in err and "finite" in err and "Traceback" not in err
    assert not (tmp_path / "rob").exists()


@pytest.mark.parametrize("how", ["a file where the folder goes", "read-only"])
def test_a_knowledge_folder_that_cannot_be_written_is_refused_before_stage1(how, tmp_path, tiny_demo_pickle,
                                                                            capsys):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    if how == "read-only":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        knowledge = tmp_path / "k"
        knowledge.mkdir()
        knowledge.chmod(0o555)
    else:
        (tmp_path / "blocker").write_text("a file")
        knowledge = tmp_path / "blocker" / "k"
    argv = _argv(tmp_path, cfg, tiny_demo_pickle, "-s", "1", "-v", "0")
    argv[argv.index("--knowledge-dir") + 1] = str(knowledge)
    rc = main(argv)
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and "stage-1 knowledge folder" in line and str(knowledge) in line
    assert "epoch" not in (tmp_path / "l" / "kuda-demo.log").read_text().lower().split("running with args")[0]


FULL_DISK = r"""
import resource, signal, sys
from kuda_mmsa.training import stage1

real, calls = stage1._evaluate, [0]

def evaluate(*a, **k):
    calls[0] += 1
    if calls[0] == 2:                    # epoch 2: from now on no file may grow past 1 kB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
    return real(*a, **k)

stage1._evaluate = evaluate
from kuda_mmsa.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_a_write_that_fails_in_stage1_is_one_paragraph_and_the_last_state_stays(tmp_path, tiny_demo_pickle):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    argv = ["pretrain", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-c", str(cfg), "--knowledge-dir",
            str(tmp_path / "k"), "--modalities", "V", "--epochs", "3", "-n", "0", "-v", "1", "--no-progress"]
    proc = subprocess.run([sys.executable, str(script), *argv], env=_env(), capture_output=True, text=True,
                          timeout=300)
    line = _one_paragraph(proc.stderr)
    [partial] = (tmp_path / "k").rglob("vision.pth.partial")
    assert proc.returncode == 2 and str(partial.name) in line and "previous version" in line, line
    assert torch.load(partial, weights_only=True)["epoch"] == 1       # the last good state stays
    assert not list((tmp_path / "k").rglob("*.tmp"))
    again = subprocess.run([sys.executable, "-m", "kuda_mmsa", *argv], env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and "resuming after epoch 1" in again.stderr, again.stderr[-3000:]


def test_a_run_diverging_in_its_first_epoch_names_no_resume_file(tmp_path, fast_cfg, tiny_demo_pickle, monkeypatch,
                                                                 capsys):
    from kuda_mmsa.model import kuda

    real = kuda.KuDA.forward

    def nan(self, *a, **k):
        out = real(self, *a, **k)
        if self.training:
            out["M"] = out["M"] * float("nan")
        return out

    monkeypatch.setattr(kuda.KuDA, "forward", nan)
    rc = main(_argv(tmp_path, fast_cfg, tiny_demo_pickle, "-s", "1", "-v", "0"))
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 3 and "epoch 1" in line and "no training state was saved" in line
    assert ".resume" not in line and not list(tmp_path.rglob("*.resume"))


def test_retokenize_takes_the_demo_encoder_alias_that_training_takes(tmp_path, tiny_demo_pickle, tiny_bert_dir):
    import pickle

    assert main(["retokenize", "--feature-file", str(tiny_demo_pickle), "--pretrained", "demo-tiny-bert",
                 "--out", str(tmp_path / "alias.pkl")]) == 0
    assert main(["retokenize", "--feature-file", str(tiny_demo_pickle), "--pretrained", str(tiny_bert_dir),
                 "--out", str(tmp_path / "path.pkl")]) == 0
    a, b = (pickle.loads((tmp_path / f"{n}.pkl").read_bytes()) for n in ("alias", "path"))
    for split in ("train", "valid", "test"):
        assert (a[split]["text_bert"] == b[split]["text_bert"]).all()


def test_an_ablation_csv_that_cannot_take_rows_is_refused_before_any_cell_runs(tmp_path, fast_cfg, tiny_demo_pickle,
                                                                               capsys, no_training):
    out = tmp_path / "abl"
    out.mkdir()
    (out / "ablation.csv").write_text("name,score\nx,1\n")
    rc = main(["ablate", "-d", "demo", "-s", "7", "--variants", "kuda", "--out", str(out), "-c", str(fast_cfg),
               "--feature-file", str(tiny_demo_pickle), "-n", "0", "--no-plots", "--no-progress", "-v", "0"])
    line = _one_paragraph(capsys.readouterr().err)
    assert rc == 2 and str(out / "ablation.csv") in line and "['name', 'score']" in line
