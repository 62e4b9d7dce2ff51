"""Sweeps across devices: the ablation runner's cells on 2 local CPU "devices" (worker
processes) and on an embedded Ray, resumable through ablation.csv; Optuna tuning with its
study in SQLite (pruning, resuming a killed study) on the same executors."""
import csv
import sys

import pytest
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.errors import KudaInputError
from kuda_mmsa.sweeps import cells, executors
from kuda_mmsa.sweeps import tuner as optuna_tuner


@pytest.fixture
def tiny_cfg(tmp_path):
    return write_tiny_config(tmp_path / "tiny.yaml", epochs=1)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_devices_and_executor_flags():
    assert executors.parse_devices("cpu:3") == ["cpu"] * 3 and executors.parse_devices("cpu") == ["cpu"]
    assert executors.parse_devices("0,2", cuda_count=4) == ["cuda:0", "cuda:2"]
    for bad in ("", "cpu:0", "gpu", "0,0", "1;2"):
        with pytest.raises(KudaInputError, match="--devices"):
            executors.parse_devices(bad, cuda_count=4)
    with pytest.raises(KudaInputError, match=r"GPU\(s\) \[5\] are not visible"):
        executors.parse_devices("0,5", cuda_count=2)
    assert executors.make_executor() is None
    assert isinstance(executors.make_executor("cpu:2"), executors.LocalExecutor)
    with pytest.raises(KudaInputError, match="--address"):
        executors.make_executor(address="auto")


def test_missing_ray_is_a_one_line_notice(monkeypatch, capsys):
    from kuda_mmsa.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    assert main(["ablate", "-d", "demo", "--executor", "ray", "--variants", "kuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install -e '.[ray]'" in err[0]


def test_ablation_on_two_local_cpu_devices_is_parallel_and_resumable(tiny_demo_pickle, tiny_cfg, tmp_path):
    from kuda_mmsa.cli.main import main

    out = tmp_path / "abl"
    argv = ["ablate", "-d", "demo", "-s", "7", "--variants", "kuda", "kuda_static", "--out", str(out),
            "--feature-file", str(tiny_demo_pickle), "-c", str(tiny_cfg), "--knowledge-dir", str(tmp_path / "k"),
            "--no-plots", "-n", "0", "--devices", "cpu:2"]
    lines = []
    from kuda_mmsa.experiments import ablation as ablate

    res = ablate.run_ablation("demo", [7], ["kuda", "kuda_static"], out, feature_file=str(tiny_demo_pickle),
                              config_file=str(tiny_cfg), verbose_level=1, echo=lines.append,
                              config={"knowledge_dir": str(tmp_path / "k"), "plots": False},
                              executor=executors.make_executor("cpu:2"))
    assert sorted(res["ran"]) == [("kuda", 7), ("kuda_static", 7)] and res["failed"] == []
    assert lines[0].startswith("[ablate] 2 cell(s) to run on cpu x2 (local processes)")
    done = [line for line in lines[1:] if " done in " in line and " on cpu: MAE " in line]
    assert len(done) == 2                                     # one progress line per cell
    rows = _rows(out / "ablation.csv")
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("kuda", "7"), ("kuda_static", "7")]
    logs = [(out / "runs" / v / "seed7" / "worker.log").read_text() for v in ("kuda", "kuda_static")]
    assert sum("running stage 1 now" in log for log in logs) == 1   # the cells share one stage 1
    assert "| kuda | 1 |" in res["table"] and "| kuda_static | 1 |" in res["table"]

    # A killed sweep keeps its finished cells: only the missing one runs again.
    kept = [r for r in rows if r["variant"] == "kuda"]
    with open(out / "ablation.csv", "w", newline="") as f:      # what a sweep killed after one cell left
        w = csv.DictWriter(f, fieldnames=list(kept[0]))
        w.writeheader()
        w.writerows(kept)
    assert main(argv) == 0
    rows = _rows(out / "ablation.csv")
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("kuda", "7"), ("kuda_static", "7")]
    assert rows[0] == kept[0]


def test_ablation_on_embedded_ray(tiny_demo_pickle, tiny_cfg, tmp_path):
    pytest.importorskip("ray")
    from kuda_mmsa.experiments import ablation as ablate

    lines = []
    with executors.RayExecutor(num_cpus=2) as ex:
        assert ex.slots == 2 and "Ray (embedded" in ex.describe()
        res = ablate.run_ablation("demo", [7, 8], ["kuda_no_knowledge"], tmp_path / "abl",
                                  feature_file=str(tiny_demo_pickle), config_file=str(tiny_cfg), verbose_level=0,
                                  echo=lines.append, config={"plots": False}, executor=ex)
    assert sorted(res["ran"]) == [("kuda_no_knowledge", 7), ("kuda_no_knowledge", 8)], lines
    assert sum(" done in " in line for line in lines) == 2
    assert len(_rows(tmp_path / "abl" / "ablation.csv")) == 2


# ---------------------------------------------------------------------- Optuna
def fake_trial(params, optuna=None, epochs=3, gpu_ids=None):
    """A trial whose validation loss is params['x'] at every epoch (module level: cells are
    called by name)."""
    monitor = optuna_tuner.EpochMonitor("Loss", optuna_tuner.OptunaReporter(optuna))
    try:
        for epoch in range(1, epochs + 1):
            monitor(epoch, {"Loss": float(params["x"])})
    except optuna_tuner.TrialPruned:
        return {"pruned": True, "valid": monitor.best, "epochs": monitor.epochs}
    return {"pruned": False, "valid": monitor.best, "epochs": monitor.epochs, "results": {"MAE": params["x"]}}


def _fake_cell(tmp_path):
    def make(number, params, spec):
        return cells.Cell(f"t{number}", fake_trial, {"params": params, "optuna": spec}, tmp_path / f"t{number}")
    return make


def test_optuna_prunes_on_the_epoch_metric_and_a_killed_study_resumes(tmp_path):
    pytest.importorskip("optuna")
    db = tmp_path / "study.db"
    tuner = optuna_tuner.OptunaTuner(db, "s", "minimize", {"x": [1.0, 5.0]}, seed=0, n_startup_trials=1)
    tuner.study.enqueue_trial({"x": 1.0})
    tuner.study.enqueue_trial({"x": 5.0})
    states = []
    ran = tuner.run(2, executors.InlineExecutor(), _fake_cell(tmp_path),
                    lambda n, p, r, state: states.append((p["x"], state)))
    assert ran == 2 and states == [(1.0, "complete"), (5.0, "pruned")]
    t0, t1 = tuner.study.trials
    assert t0.intermediate_values == {1: 1.0, 2: 1.0, 3: 1.0}       # reported from the trial, per epoch
    assert max(t1.intermediate_values) < 3                              # stopped before its last epoch
    assert tuner.best()["params"] == {"x": 1.0}

    # A tuner killed while a trial ran: that trial is failed and run again with its parameters.
    import optuna

    stale = tuner.study.ask({"x": optuna.distributions.CategoricalDistribution([1.0, 5.0])})
    again = optuna_tuner.OptunaTuner(db, "s", "minimize", {"x": [1.0, 5.0]}, seed=0, n_startup_trials=1)
    states.clear()
    assert again.run(3, executors.InlineExecutor(), _fake_cell(tmp_path),
                     lambda n, p, r, state: states.append((p["x"], state))) == 1
    assert [s[0] for s in states] == [stale.params["x"]]
    assert again.study.trials[stale.number].state == optuna.trial.TrialState.FAIL
    assert again.finished() == 3
    assert again.run(3, executors.InlineExecutor(), _fake_cell(tmp_path)) == 0     # nothing left to do


def test_tune_with_optuna_on_two_local_devices(tiny_demo_pickle, tmp_path, capsys):
    pytest.importorskip("optuna")
    import optuna

    from kuda_mmsa.cli.main import main

    cfg = write_tiny_config(tmp_path / "tune.yaml", epochs=2,
                            tune={"d_paras": ["learning_rate", "fusion_dropout"], "learning_rate": [1e-3, 3e-3],
                                  "fusion_dropout": [0.0, 0.1]})
    argv = ["-m", "kuda", "-d", "demo", "-t", "-tt", "2", "--tuner", "optuna", "--devices", "cpu:2",
            "--feature-file", str(tiny_demo_pickle), "-c", str(cfg), "-s", "1111", "-n", "0", "--no-plots",
            "--knowledge-dir", str(tmp_path / "k"), "--model-save-dir", str(tmp_path / "m"),
            "--res-save-dir", str(tmp_path / "r"), "--log-dir", str(tmp_path / "l")]
    assert main(argv) == 0
    tune = tmp_path / "r" / "tune"
    study = optuna.load_study(study_name="demo-kuda", storage=f"sqlite:///{tune / 'demo-kuda-optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)   # pruning sees every epoch
    rows = _rows(tune / "demo-kuda-optuna.csv")
    assert len(rows) == 2 and {"learning_rate", "fusion_dropout", "valid_Loss", "MAE", "Corr"} <= set(rows[0])
    assert not list(tune.rglob("*.pth"))                                          # tune mode keeps no weights
    assert "[tune] best trial" in capsys.readouterr().err
    assert main(argv) == 0                                                         # resumed: nothing left
    assert len(optuna.load_study(study_name="demo-kuda", storage=study._storage).trials) == 2
