"""Stage 1 -> stage 2 hand-off, checkpoints, resume, reproducibility and the real MMSA run."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kuda_mmsa.training.run_config import RunConfig
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.errors import KudaCheckpointError

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture
def tiny_config_file(tmp_path):
    return write_tiny_config(tmp_path / "tiny.yaml")


def make_kuda_args(feature_file, config_file, tmp_path, **overrides):
    """Full kuda args (config layers + data facts) for a feature file, as MMSA_run builds them."""
    from kuda_mmsa.mmsa.args import build_args
    from kuda_mmsa.mmsa.loader import MMDataLoader

    args, _ = build_args("kuda", "demo", str(config_file),
                         dict({"knowledge_dir": str(tmp_path / "knowledge"), "progress": False, "plots": False},
                              **overrides), custom_feature=str(feature_file))
    args.custom_feature = str(feature_file)
    args.device = torch.device("cpu")
    args.model_save_path = tmp_path / "kuda-demo.pth"
    args.cur_seed, args.seed = 1, 1111

    def loaders(seed=1111):
        torch.manual_seed(seed)  # MMSA seeds before building loaders
        return MMDataLoader(args, 0)  # also reads shapes from the data into args, as MMSA does

    loaders()
    return args, loaders


@pytest.fixture
def kuda_args(tiny_demo_pickle, tiny_config_file, tmp_path):
    return make_kuda_args(tiny_demo_pickle, tiny_config_file, tmp_path)


def _model(args):
    from kuda_mmsa.model import build_kuda

    torch.manual_seed(0)
    return build_kuda(args)


def _pretrain(args, loaders, **kw):
    from kuda_mmsa.training.stage1 import job_for_run, pretrain_unimodal

    job = job_for_run(RunConfig.from_args(args))
    return pretrain_unimodal(job, {s: dl.dataset for s, dl in loaders().items()}, **kw)


def test_stage1_checkpoints_are_loaded_and_frozen_in_stage2(kuda_args):
    from kuda_mmsa.training.stage1 import job_for_run
    from kuda_mmsa.training.trainer import KuDATrainer

    args, loaders = kuda_args
    paths = _pretrain(args, loaders)
    assert set(paths) == {"T", "V", "A"} and all(p.is_file() for p in paths.values())
    assert paths == job_for_run(RunConfig.from_args(args)).paths
    assert not list(paths["T"].parent.glob("*.partial")) and not list(paths["T"].parent.glob("*.tmp"))

    model = _model(args)
    KuDATrainer(args).load_knowledge(model)
    for m, path in paths.items():
        saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        branch = model.branches[m]
        for name, tensor in branch.state_dict().items():
            torch.testing.assert_close(tensor, saved[name])
        assert all(not p.requires_grad for p in branch.adapters.parameters())
        assert all(not p.requires_grad for p in branch.decoder.parameters())
    assert all(p.requires_grad for p in model.branches["T"].bert.encoder.parameters())
    assert all(p.requires_grad for p in model.branches["A"].encoder.parameters())
    assert all(p.requires_grad for p in model.blocks.parameters())


def test_stage2_without_knowledge_stops_with_the_command_to_run(kuda_args):
    from kuda_mmsa.training.trainer import KuDATrainer

    args, _ = kuda_args
    args.auto_pretrain = False
    with pytest.raises(KudaCheckpointError, match=r"python -m kuda_mmsa pretrain -d demo --feature-file"):
        KuDATrainer(args).load_knowledge(_model(args))


def test_other_stage1_settings_get_their_own_knowledge_and_a_foreign_file_is_a_clear_error(kuda_args):
    import shutil

    from kuda_mmsa.training.stage1 import job_for_run
    from kuda_mmsa.training.trainer import KuDATrainer

    args, loaders = kuda_args
    _pretrain(args, loaders)
    other = dict(args)
    other["av_hidden_size"] = 12                  # a model of another width than the checkpoints
    other["pretrain"] = dict(args["pretrain"])
    mine, theirs = job_for_run(RunConfig.from_args(args)).paths, job_for_run(RunConfig.from_args(other)).paths
    assert mine["V"].parent != theirs["V"].parent   # never mistaken for each other
    theirs["V"].parent.mkdir(parents=True)
    for m in "TVA":                                  # a user copies files into the wrong folder
        shutil.copy(mine[m], theirs[m])
    with pytest.raises(KudaCheckpointError, match="does not match this model"):
        KuDATrainer(other).load_knowledge(_model(other))


def test_truncated_checkpoint_is_a_clear_error(kuda_args):
    from kuda_mmsa.training.stage1 import job_for_run
    from kuda_mmsa.training.trainer import KuDATrainer

    args, loaders = kuda_args
    _pretrain(args, loaders)
    path = job_for_run(RunConfig.from_args(args)).paths["V"]
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(KudaCheckpointError, match="truncated"):
        KuDATrainer(args).load_knowledge(_model(args))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    from kuda_mmsa.training import checkpoints

    target = tmp_path / "w.pth"
    checkpoints.atomic_save({"a": torch.ones(2)}, target)

    def broken(obj, f, *a, **k):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints.torch, "save", broken)
    with pytest.raises(OSError):
        checkpoints.atomic_save({"a": torch.zeros(2)}, target)
    assert torch.load(target)["a"].tolist() == [1.0, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]


def _train(args, make_loaders):
    from kuda_mmsa.training.trainer import KuDATrainer

    loaders = make_loaders()
    model = _model(args)
    trainer = KuDATrainer(args)
    trainer.do_train(model, loaders)
    model.load_state_dict(torch.load(args.model_save_path))
    return trainer.do_test(model, loaders["test"], mode="TEST")


def test_interrupted_stage2_resumes_and_matches_an_uninterrupted_run(kuda_args, monkeypatch):
    from kuda_mmsa.training import trainer as trainer_mod

    args, loaders = kuda_args
    _pretrain(args, loaders)
    full = _train(args, loaders)

    calls = {"n": 0}
    real = trainer_mod.KuDATrainer.do_test

    def crash_in_second_epoch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(trainer_mod.KuDATrainer, "do_test", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        _train(args, loaders)
    assert Path(str(args.model_save_path) + ".resume").is_file()
    monkeypatch.setattr(trainer_mod.KuDATrainer, "do_test", real)
    resumed = _train(args, loaders)
    assert not Path(str(args.model_save_path) + ".resume").exists()
    assert resumed == full


def test_same_seed_gives_identical_results_on_cpu(kuda_args):
    args, loaders = kuda_args
    _pretrain(args, loaders)
    assert _train(args, loaders) == _train(args, loaders)


def test_metrics_are_mmsa_metrics(kuda_args):
    """The trainer reports exactly what MMSA's MetricsTop computes on the same predictions."""
    from MMSA.utils import MetricsTop

    from kuda_mmsa.training.trainer import KuDATrainer

    args, loaders = kuda_args
    args.use_knowledge = False
    model = _model(args).eval()
    res = KuDATrainer(args).do_test(model, loaders()["test"], mode="TEST", return_sample_results=True)
    pred = torch.tensor(res["SResults"]).view(-1, 1)
    true = torch.tensor(res["Labels"]).view(-1, 1)
    expected = MetricsTop("regression").getMetics("SIMS")(pred, true)
    for k, v in expected.items():
        assert res[k] == pytest.approx(v)
    torch.testing.assert_close(torch.tensor(res["Ratios"]).sum(-1), torch.ones(len(res["Ratios"])))


@pytest.mark.slow
def test_python_m_kuda_mmsa_runs_the_demo_job_end_to_end(tiny_demo_pickle, tiny_config_file, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               KUDA_MMSA_KNOWLEDGE_DIR=str(tmp_path / "knowledge"))
    cmd = [sys.executable, "-m", "kuda_mmsa", "-m", "kuda", "-d", "demo", "--feature-file", str(tiny_demo_pickle),
           "-c", str(tiny_config_file), "-s", "1111", "-n", "0",
           "--model-save-dir", str(tmp_path / "models"), "--res-save-dir", str(tmp_path / "results"),
           "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "running stage 1 now" in proc.stderr + proc.stdout
    with open(tmp_path / "results" / "normal" / "demo.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["Model"] == "kuda"
    for metric in ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"):
        assert metric in rows[-1] and "np.float64" not in rows[-1][metric]
    assert (tmp_path / "logs" / "kuda-demo.log").is_file()
    weights = tmp_path / "models" / "kuda-demo.pth"
    state = torch.load(weights, map_location="cpu")
    assert any(k.startswith("Model.blocks.") for k in state)
    assert all(v.device.type == "cpu" for v in state.values())
    assert (tmp_path / "knowledge" / "demo").is_dir()


def test_tune_mode_runs_kuda_and_writes_mmsa_tune_csv(tiny_demo_pickle, tiny_config_file, tmp_path, monkeypatch):
    from kuda_mmsa.mmsa import register

    monkeypatch.setenv("KUDA_MMSA_KNOWLEDGE_DIR", str(tmp_path / "knowledge"))
    register()
    import MMSA

    MMSA.MMSA_run("kuda", "demo", config_file=str(tiny_config_file), seeds=[1111], is_tune=True, tune_times=1,
                  custom_feature=str(tiny_demo_pickle), gpu_ids=[], num_workers=0,
                  model_save_dir=str(tmp_path / "m"), res_save_dir=str(tmp_path / "r"), log_dir=str(tmp_path / "l"))
    with open(tmp_path / "r" / "tune" / "demo-kuda.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    assert {"learning_rate", "ratio_agreement", "MAE", "Corr"} <= set(rows[0])
    assert not (tmp_path / "m" / "kuda-demo.pth").exists()  # MMSA deletes tune-mode weights


def test_bf16_precision_trains_and_bad_precision_is_a_clear_error(kuda_args, tiny_demo_pickle,
                                                                  tiny_config_file, tmp_path):
    from kuda_mmsa.errors import KudaInputError

    args, loaders = kuda_args
    args.use_knowledge = False
    args.epochs = 1
    args.precision = "bf16"
    res = _train(args, loaders)
    assert all(torch.isfinite(torch.tensor(float(v))) for k, v in res.items())
    with pytest.raises(KudaInputError, match="'precision'.*'auto', 'fp32', 'bf16'"):
        make_kuda_args(tiny_demo_pickle, tiny_config_file, tmp_path, precision="fp8")
