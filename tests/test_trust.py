"""Trustworthy runs: bad input is refused before any training with one paragraph naming the
file and the key (no traceback, no result row, no weights); stale state is never applied
silently; no code runs from data or checkpoint files; results do not depend on -n; a
diverging run stops with the epoch named and the best checkpoint kept."""
import copy
import pickle
from pathlib import Path

import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.cli.main import main
from kuda_mmsa.errors import KudaInputError


OPEN = f"{open.__module__}.{open.__qualname__}"      # the global a crafted file names


class Payload:
    """Unpickling this creates `marker`: the side effect a crafted file would have."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def tiny_cfg(tmp_path):
    return write_tiny_config(tmp_path / "tiny.yaml")


@pytest.fixture
def no_training(monkeypatch):
    """Any training (stage 1 or 2) fails the test: refusals must come before it."""
    from kuda_mmsa.training import stage1, trainer

    def boom(*a, **k):
        raise AssertionError("training started although the input is bad")

    monkeypatch.setattr(trainer.KuDATrainer, "do_train", boom)
    monkeypatch.setattr(stage1, "train_branch", boom)


def run_cli(tmp_path, *argv, feature_file=None, config=None):
    args = ["-m", "kuda", "-d", "demo", "-s", "1111", "-n", "0", "-v", "0",
            "--model-save-dir", str(tmp_path / "m"), "--res-save-dir", str(tmp_path / "r"),
            "--log-dir", str(tmp_path / "l"), "--knowledge-dir", str(tmp_path / "k")]
    if feature_file:
        args += ["--feature-file", str(feature_file)]
    if config:
        args += ["-c", str(config)]
    return main(args + list(argv))


def assert_refused(capsys, tmp_path, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert str(w) in lines[0], (w, lines[0])
    assert not (tmp_path / "r" / "normal").exists() or not any((tmp_path / "r" / "normal").iterdir())
    assert not (tmp_path / "m" / "kuda-demo.pth").exists()
    return lines[0]


def _variant(data, path, mutate):
    data = copy.deepcopy(data)
    mutate(data)
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)
    return path


# ---------------------------------------------------------------------- refused before training
BAD_CONFIGS = {
    "unknown key": ({"learning_rat": 1e-4}, ["learning_rat", "Did you mean 'learning_rate'"]),
    "string learning rate": ({"learning_rate": "fast"}, ["learning_rate", "'fast'"]),
    "negative learning rate": ({"learning_rate": -0.1}, ["learning_rate", "> 0"]),
    "dropout out of range": ({"fusion_dropout": 1.2}, ["fusion_dropout", "[0, 1)"]),
    "batch size 0": ({"batch_size": 0}, ["batch_size", ">= 1"]),
    "epochs 0": ({"epochs": 0}, ["epochs", ">= 1"]),
    "unknown stage-1 key": ({"pretrain": {"lr": 1e-3}}, ["pretrain.lr"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_refused_before_training(case, tmp_path, tiny_cfg, tiny_demo_pickle, capsys, no_training):
    import yaml

    data, words = BAD_CONFIGS[case]
    cfg = yaml.safe_load(tiny_cfg.read_text())
    cfg.update(data)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=bad)
    assert_refused(capsys, tmp_path, rc, bad, *words)


def test_missing_config_file_is_refused(tmp_path, tiny_demo_pickle, capsys, no_training):
    rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tmp_path / "missing.yaml")
    assert_refused(capsys, tmp_path, rc, tmp_path / "missing.yaml", "does not exist")


BAD_DATA = {
    "label outside the range": (lambda d: d["valid"]["regression_labels"].__setitem__(slice(0, 2), 7.0),
                                ["'valid'", "2 of 12", "[-1, 1]", "max 7"]),
    "unimodal label outside the range": (lambda d: d["train"]["regression_labels_V"].__setitem__(0, -4.0),
                                         ["regression_labels_V", "'train'", "[-1, 1]"]),
    "empty split": (lambda d: d.__setitem__("test", {k: v[:0] for k, v in d["test"].items()}),
                    ["'test'", "no samples"]),
    "dims differ between splits": (lambda d: d["test"].__setitem__("vision", d["test"]["vision"][:, :, :4]),
                                   ["'vision'", "train (8, 6)", "test (8, 4)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_training(case, tmp_path, tiny_cfg, tiny_demo_data, capsys, no_training):
    mutate, words = BAD_DATA[case]
    pkl = _variant(tiny_demo_data, tmp_path / "bad.pkl", mutate)
    rc = run_cli(tmp_path, feature_file=pkl, config=tiny_cfg)
    assert_refused(capsys, tmp_path, rc, pkl, *words)


def test_a_pickle_with_code_is_refused_and_its_code_never_runs(tmp_path, tiny_cfg, tiny_demo_data, capsys,
                                                               no_training):
    marker = tmp_path / "payload-ran"
    data = copy.deepcopy(tiny_demo_data)
    data["train"]["raw_text"] = Payload(marker)
    pkl = tmp_path / "crafted.pkl"
    pkl.write_bytes(pickle.dumps(data, protocol=4))
    rc = run_cli(tmp_path, feature_file=pkl, config=tiny_cfg)
    assert_refused(capsys, tmp_path, rc, pkl, OPEN)
    assert not marker.exists()


def test_mmsa_own_loaders_read_pickles_through_the_restricted_unpickler(tmp_path):
    from kuda_mmsa.mmsa import register

    register()
    import MMSA.data_loader
    import MMSA.run

    marker = tmp_path / "payload-ran"
    pkl = tmp_path / "crafted.pkl"
    pkl.write_bytes(pickle.dumps({"train": Payload(marker)}))
    for module in (MMSA.data_loader, MMSA.run):
        with open(pkl, "rb") as f, pytest.raises(KudaInputError, match=OPEN):
            module.pickle.load(f)
    assert not marker.exists()


def test_unwritable_output_folder_is_refused_before_training(tmp_path, tiny_cfg, tiny_demo_pickle, capsys,
                                                             no_training):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    rc = main(["-m", "kuda", "-d", "demo", "-s", "1", "-n", "0", "-v", "0", "--feature-file", str(tiny_demo_pickle),
               "-c", str(tiny_cfg), "--model-save-dir", str(blocker / "models"),
               "--res-save-dir", str(tmp_path / "r"), "--log-dir", str(tmp_path / "l")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert str(blocker / "models") in err and "--model-save-dir" in err
    assert not (tmp_path / "r" / "normal").exists()


def test_knowledge_from_other_data_is_refused(tmp_path, tiny_cfg, tiny_demo_pickle, kuda_cache, capsys):
    """Knowledge lives per feature-file name; a file of the same name with other content
    (features regenerated in place, another copy) must not reuse it."""
    import shutil

    from kuda_mmsa.data import ensure_demo_data
    from tests.conftest import TINY_DEMO

    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg) == 0   # stage 1 on this data
    capsys.readouterr()
    other = ensure_demo_data(kuda_cache, **dict(TINY_DEMO, seed=11))                 # same shapes, other data
    same_name = tmp_path / "elsewhere" / Path(tiny_demo_pickle).name
    same_name.parent.mkdir()
    shutil.copy(other, same_name)
    rc = run_cli(tmp_path / "second", "--knowledge-dir", str(tmp_path / "k"), feature_file=same_name, config=tiny_cfg)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "trained on other data" in err and "--knowledge-from" in err and str(tmp_path / "k") in err
    assert not (tmp_path / "second" / "m" / "kuda-demo.pth").exists()
    # the same content moved elsewhere is the same data: its knowledge is used
    moved = tmp_path / "moved" / Path(tiny_demo_pickle).name
    moved.parent.mkdir()
    shutil.copy(tiny_demo_pickle, moved)
    assert run_cli(tmp_path / "third", "--knowledge-dir", str(tmp_path / "k"), feature_file=moved,
                   config=tiny_cfg) == 0
    assert "running stage 1 now" not in capsys.readouterr().err
    # a file of another name gets its own knowledge (stage 1 runs for it)
    assert run_cli(tmp_path / "fourth", "--knowledge-dir", str(tmp_path / "k"), feature_file=other,
                   config=tiny_cfg) == 0


# ---------------------------------------------------------------------- stale state
def _interrupt_after_first_epoch(monkeypatch):
    from kuda_mmsa.training import trainer

    real = trainer.KuDATrainer.do_test
    calls = {"n": 0}

    def crash_in_second_epoch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(trainer.KuDATrainer, "do_test", crash_in_second_epoch)
    return real


def _resume_states(folder: Path):
    return sorted((folder / "runs").glob("*.pth.resume"))


def test_resume_with_changed_config_is_never_applied_and_unchanged_resume_is_exact(
        tmp_path, tiny_cfg, tiny_demo_pickle, monkeypatch, capsys):
    import yaml

    full = run_cli(tmp_path / "full", feature_file=tiny_demo_pickle, config=tiny_cfg)
    assert full == 0
    full_row = (tmp_path / "full" / "r" / "normal" / "demo.csv").read_text().splitlines()[-1]

    real = _interrupt_after_first_epoch(monkeypatch)
    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg) == 130
    [resume] = _resume_states(tmp_path / "m")
    before = resume.read_bytes()
    monkeypatch.setattr("kuda_mmsa.training.trainer.KuDATrainer.do_test", real)
    capsys.readouterr()

    # other settings are another run (its own name): it starts from the beginning and leaves the
    # interrupted state of the first settings untouched
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(dict(yaml.safe_load(tiny_cfg.read_text()), learning_rate=2e-3)))
    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=changed) == 0
    assert "Resuming" not in capsys.readouterr().err
    assert _resume_states(tmp_path / "m") == [resume] and resume.read_bytes() == before

    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg) == 0   # unchanged: resumes
    assert not resume.exists()
    row = (tmp_path / "r" / "normal" / "demo.csv").read_text().splitlines()[-1]
    assert row == full_row                                                          # bit for bit


def test_resume_after_the_knowledge_changed_is_refused(tmp_path, tiny_cfg, tiny_demo_pickle, monkeypatch, capsys):
    real = _interrupt_after_first_epoch(monkeypatch)
    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg) == 130
    monkeypatch.setattr("kuda_mmsa.training.trainer.KuDATrainer.do_test", real)
    assert main(["pretrain", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-c", str(tiny_cfg),
                 "--knowledge-dir", str(tmp_path / "k"), "--modalities", "V", "--overwrite", "-v", "0",
                 "--no-progress"]) == 0
    capsys.readouterr()
    rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg)
    err = capsys.readouterr().err
    assert rc == 2 and "knowledge.V" in err


def test_stale_weights_at_the_save_path_are_never_tested(tmp_path, tiny_cfg, tiny_demo_pickle):
    assert run_cli(tmp_path / "clean", feature_file=tiny_demo_pickle, config=tiny_cfg) == 0
    clean = (tmp_path / "clean" / "r" / "normal" / "demo.csv").read_text().splitlines()[-1]
    [own] = (tmp_path / "clean" / "m" / "runs").glob("*.pth")       # the run's own name: the same here
    state = torch.load(tmp_path / "clean" / "m" / "kuda-demo.pth", weights_only=True)
    for save in (tmp_path / "m" / "kuda-demo.pth", tmp_path / "m" / "runs" / own.name):
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: torch.zeros_like(v) for k, v in state.items()}, save)    # an earlier run's weights
        (save.parent / f".{save.name}.abc123.tmp").write_bytes(b"half-written")  # a killed atomic save
    assert run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg) == 0
    assert (tmp_path / "r" / "normal" / "demo.csv").read_text().splitlines()[-1] == clean
    assert not list((tmp_path / "m").rglob("*.tmp"))


def test_diverging_run_stops_at_the_first_nonfinite_loss(tmp_path, tiny_cfg, tiny_demo_pickle, monkeypatch, capsys):
    from kuda_mmsa.model import kuda

    real = kuda.KuDA.forward
    calls = {"n": 0}

    def nan_in_epoch_two(self, *a, **k):
        out = real(self, *a, **k)
        if self.training and k.get("labels") is not None:
            calls["n"] += 1
            if calls["n"] > 4:                      # tiny data: 4 training batches per epoch
                out["M"] = out["M"] * float("nan")
        return out

    monkeypatch.setattr(kuda.KuDA, "forward", nan_in_epoch_two)
    rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg)
    err = capsys.readouterr().err
    assert rc == 3 and "Traceback" not in err
    assert "non-finite" in err and "epoch 2" in err and "best checkpoint (epoch 1" in err
    [kept] = (tmp_path / "m" / "runs").glob("*.pth")
    assert str(kept) in err and torch.load(kept, weights_only=True)                 # kept
    resume = Path(str(kept) + ".resume")
    assert resume.is_file() and f"the state after epoch 1 is in {resume}" in err
    assert not list((tmp_path / "r").rglob("*.csv"))                                # no result row


# ---------------------------------------------------------------------- reproducibility
def test_results_do_not_depend_on_the_number_of_workers(tmp_path, tiny_cfg, tiny_demo_pickle):
    rows = []
    for n in ("0", "2"):
        d = tmp_path / f"n{n}"
        args = ["-m", "kuda", "-d", "demo", "-s", "1111", "-n", n, "-v", "0", "--feature-file", str(tiny_demo_pickle),
                "-c", str(tiny_cfg), "--model-save-dir", str(d / "m"), "--res-save-dir", str(d / "r"),
                "--log-dir", str(d / "l"), "--knowledge-dir", str(d / "k")]
        assert main(args) == 0
        rows.append((d / "r" / "normal" / "demo.csv").read_text().splitlines()[-1])
    assert rows[0] == rows[1]


def test_interrupted_stage1_resumes_exactly_and_skips_finished_modalities(tmp_path, tiny_cfg, tiny_demo_pickle,
                                                                          monkeypatch):
    from kuda_mmsa.training import stage1

    base = ["pretrain", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-c", str(tiny_cfg),
            "--epochs", "3", "-v", "0", "--no-progress"]
    assert main(base + ["--knowledge-dir", str(tmp_path / "full")]) == 0
    real = stage1._evaluate
    calls = {"n": 0}

    def crash(branch, loader, modality, *a, **k):
        if modality == "V":
            calls["n"] += 1
            if calls["n"] == 2:                      # vision, epoch 2: text is done, vision half way
                raise KeyboardInterrupt
        return real(branch, loader, modality, *a, **k)

    monkeypatch.setattr(stage1, "_evaluate", crash)
    assert main(base + ["--knowledge-dir", str(tmp_path / "cut")]) == 130
    folder = next((tmp_path / "cut" / "demo").glob("*/*"))       # <encoder>/<settings id>
    assert (folder / "vision.pth.partial").is_file() and (folder / "text.pth").is_file()
    text_uid = torch.load(folder / "text.pth", weights_only=True)["meta"]["uid"]
    monkeypatch.setattr(stage1, "_evaluate", real)
    assert main(base + ["--knowledge-dir", str(tmp_path / "cut")]) == 0
    assert torch.load(folder / "text.pth", weights_only=True)["meta"]["uid"] == text_uid   # not retrained
    full = next((tmp_path / "full" / "demo").glob("*/*"))
    for name in ("text.pth", "vision.pth", "audio.pth"):
        a = torch.load(full / name, weights_only=True)["state_dict"]
        b = torch.load(folder / name, weights_only=True)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


# ---------------------------------------------------------------------- files given to explain
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_demo_pickle):
    d = tmp_path_factory.mktemp("trained")
    cfg = write_tiny_config(d / "tiny.yaml")
    assert run_cli(d, feature_file=tiny_demo_pickle, config=cfg) == 0
    return d


@pytest.mark.parametrize("command", ["explain", "robustness", "evaluate"])
@pytest.mark.parametrize("kind,words", [
    ("resume", ["interrupted training run"]),
    ("stage1", ["stage-1 knowledge checkpoint"]),
    ("corrupt", ["could not be read", "truncated, corrupt"]),
    ("payload", ["could not be read"]),
    ("not tensors", ["not a state dict of tensors"]),
])
def test_commands_refuse_files_that_are_not_trained_weights(command, kind, words, trained, tmp_path, capsys,
                                                            tiny_demo_pickle):
    """README: explain/robustness/evaluate refuse a .resume state, a stage-1 checkpoint or a
    corrupt file given as weights, with one paragraph naming it, and never run its code."""
    from kuda_mmsa.training.checkpoints import RESUME_FORMAT

    weights = trained / "m" / "kuda-demo.pth"
    path = tmp_path / f"{kind}.pth"
    marker = tmp_path / "payload-ran"
    if kind == "resume":
        torch.save({"format": RESUME_FORMAT, "model": torch.load(weights, weights_only=True)}, path)
    elif kind == "stage1":
        path = next((trained / "k" / "demo").glob("*/*")) / "text.pth"
    elif kind == "corrupt":
        path.write_bytes(weights.read_bytes()[:1000])
    elif kind == "payload":
        torch.save({"w": Payload(marker)}, path)
    else:
        torch.save({"a": [1, 2]}, path)
    argv = {"explain": ["explain", "--out", str(tmp_path / "e")],
            "robustness": ["robustness", "--out", str(tmp_path / "e"), "--rate", "1", "--modality", "V"],
            "evaluate": ["evaluate", "-d", "demo"]}[command]
    rc = main(argv + ["--weights", str(path), "--feature-file", str(tiny_demo_pickle), "-v", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and str(path) in err
    for w in words:
        assert w in err, (w, err)
    assert not marker.exists()


def test_the_run_logs_the_data_it_really_uses(trained, tiny_demo_pickle):
    log = (trained / "l" / "kuda-demo.log").read_text()
    assert f"Data: {Path(tiny_demo_pickle).resolve()} (train 30, valid 12, test 12" in log
    args_line = next(line for line in log.splitlines() if "Running with args" in line)
    assert f"'featurePath': '{tiny_demo_pickle}'" in args_line
    assert "'feature_dims': [64, 5, 6]" in args_line and "'seq_lens': [12, 10, 8]" in args_line


def test_a_full_disk_at_start_is_refused_before_training(tmp_path, tiny_cfg, tiny_demo_pickle, capsys, no_training,
                                                        monkeypatch):
    """README: output folders must be writable and the disk not full at start."""
    import collections
    import shutil

    from kuda_mmsa import files

    real = shutil.disk_usage
    full = str(tmp_path / "m")

    def usage(path):
        if str(path).startswith(full):      # the weights folder's disk has 1 MiB left
            return collections.namedtuple("usage", "total used free")(10 ** 12, 10 ** 12 - 2 ** 20, 2 ** 20)
        return real(path)

    monkeypatch.setattr(files.shutil, "disk_usage", usage)
    rc = run_cli(tmp_path, feature_file=tiny_demo_pickle, config=tiny_cfg)
    line = assert_refused(capsys, tmp_path, rc, full, "1 MiB free")
    assert "--model-save-dir" in line or "model" in line


def test_pretrain_epochs_per_modality(tmp_path, tiny_cfg, tiny_demo_pickle, monkeypatch):
    """`kuda-mmsa pretrain --epochs T=..,V=..,A=..` trains each modality for its own number
    of epochs (early stop out of the way); a bad spelling is refused."""
    from kuda_mmsa.training import stage1

    epochs = {"T": 0, "V": 0, "A": 0}
    real = stage1._evaluate

    def count(branch, loader, modality, *a, **k):
        epochs[modality] += 1
        return real(branch, loader, modality, *a, **k)

    monkeypatch.setattr(stage1, "_evaluate", count)
    base = ["pretrain", "-d", "demo", "--feature-file", str(tiny_demo_pickle), "-v", "0", "--no-progress",
            "-c", str(write_tiny_config(tmp_path / "c.yaml", pretrain={"early_stop": 50, "batch_size": 8}))]
    assert main(base + ["--epochs", "T=1,V=3,A=2", "--knowledge-dir", str(tmp_path / "k")]) == 0
    assert epochs == {"T": 1, "V": 3, "A": 2}
    folder = next((tmp_path / "k" / "demo").glob("*/*"))
    for m, name in (("T", "text"), ("V", "vision"), ("A", "audio")):
        meta = torch.load(folder / f"{name}.pth", weights_only=True)["meta"]
        assert meta["settings"]["pretrain"]["epochs"] == {"T": 1, "V": 3, "A": 2}[m]
    epochs.update(T=0, V=0, A=0)
    assert main(base + ["--epochs", "2", "--knowledge-dir", str(tmp_path / "k2")]) == 0
    assert epochs == {"T": 2, "V": 2, "A": 2}
    for bad in ("T=1,V=x", "T=1;V=2", "Q=3"):
        assert main(base + ["--epochs", bad, "--knowledge-dir", str(tmp_path / "k3")]) == 2, bad
