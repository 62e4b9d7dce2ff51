"""The stage-2 trainer's bookkeeping that users read: the epoch's training loss (MMSA's
epoch results, the history behind the training curves, the TRAIN log line), early stopping at
exactly `early_stop` epochs without improvement (also when a run resumes), and what a resumed
run keeps. Each test computes its reference from what the probe network saw, never from the
trainer's own numbers.

The trainer runs tests/test_recipe.py's Probe (M = <x, w> + b, ce = mean(<x, c>²)): its loss
per batch is computable here from the inputs and parameters it recorded.
"""
import logging
import re
from pathlib import Path

import pytest
import torch
from test_recipe import Probe
from tiny_kuda import write_tiny_config

from kuda_mmsa.training.trainer import KuDATrainer


def _make(tiny_demo_pickle, tmp_path, overrides=None, **config):
    from test_training import make_kuda_args

    config = {"use_knowledge": False, "precision": "fp32", "plots": False, "progress": False, **config}
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = write_tiny_config(tmp_path / "c.yaml", **config)
    return make_kuda_args(tiny_demo_pickle, cfg, tmp_path, **(overrides or {}))


def _batch_losses(probe, ce_weight):
    """(loss, ce, batch size) of every training forward, from the probe's recorded inputs and
    parameters: MSE(M, y) + ce_weight * ce, the README's stage-2 loss."""
    out = []
    for x, y, p in probe.calls:
        m = (x @ p["w"] + p["b"])[:, None]
        ce = ((x @ p["c"]) ** 2).mean()
        out.append((float(((m - y) ** 2).mean() + ce_weight * ce), float(ce), x.shape[0]))
    return out


def test_the_epochs_training_loss_is_the_sample_weighted_mean_of_its_batch_losses(tiny_demo_pickle, tmp_path,
                                                                                   caplog):
    """MMSA's epoch results and the TRAIN log line give the epoch's mean loss over samples: each
    batch's loss weighted by its size (the last batch of the 30 training samples holds 6)."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=2, early_stop=10, ce_weight=0.25)
    probe = Probe(args["feature_dims"][1])
    with caplog.at_level(logging.INFO, logger="MMSA"):
        results = KuDATrainer(args).do_train(probe, loaders(), return_epoch_results=True)
    batches = _batch_losses(probe, 0.25)
    assert [b for _, _, b in batches] == [8, 8, 8, 6] * 2
    logged = [line for line in caplog.messages if line.startswith("TRAIN-(kuda)")]
    assert len(logged) == 2
    for epoch in range(2):
        mine = batches[4 * epoch: 4 * epoch + 4]
        n = sum(b for _, _, b in mine)
        want = sum(loss * b for loss, _, b in mine) / n
        want_ce = sum(ce * b for _, ce, b in mine) / n
        unweighted = sum(loss for loss, _, _ in mine) / len(mine)
        assert abs(want - unweighted) > 1e-3, "the batches' losses should differ enough to tell the weighting"
        assert results["train"][epoch]["Loss"] == pytest.approx(want, abs=6e-5)   # rounded to 4 places
        loss_text, ce_text = re.search(r"loss: (\S+) ce: (\S+)", logged[epoch]).groups()
        assert float(loss_text) == pytest.approx(want, abs=6e-5)
        assert float(ce_text) == pytest.approx(want_ce, abs=6e-5)


class _Stop(Exception):
    pass


def _scripted_validation(monkeypatch, script, seen):
    """Validation KeyEval (Loss, lower is better) per epoch as `script` says."""
    def scripted(self, model, dataloader, mode="VAL", return_sample_results=False):
        if mode != "VAL":
            return {"Loss": 0.0}
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"Loss": script[len(seen) - 1], "Corr": 0.0}

    monkeypatch.setattr(KuDATrainer, "do_test", scripted)


def _interrupted_after(tiny_demo_pickle, tmp_path, monkeypatch, script, stop_at, early_stop):
    """A run interrupted right after epoch `stop_at` (its state saved), then resumed: returns
    (validations of the first run, validations of the resumed run, training forwards of the
    resumed run, args)."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=10, early_stop=early_stop)
    first = []
    _scripted_validation(monkeypatch, script, first)
    trainer = KuDATrainer(args)

    def interrupt(epoch, results):
        if epoch == stop_at:
            raise _Stop

    trainer.epoch_callbacks.append(interrupt)
    with pytest.raises(_Stop):
        trainer.do_train(Probe(args["feature_dims"][1]), loaders())
    assert Path(str(args["model_save_path"]) + ".resume").is_file()
    second = []
    _scripted_validation(monkeypatch, script[stop_at:], second)
    probe = Probe(args["feature_dims"][1])
    KuDATrainer(args).do_train(probe, loaders())
    return first, second, len(probe.calls), args


def test_a_run_resumed_after_its_early_stop_epoch_trains_no_further(tiny_demo_pickle, tmp_path, monkeypatch):
    """Best at epoch 1, early_stop 2: epoch 3 is the last (3 - 1 = 2 epochs without
    improvement). Interrupted right after it, the resumed run must not train epoch 4: it only
    finishes (the best weights stay those of epoch 1)."""
    first, second, forwards, args = _interrupted_after(tiny_demo_pickle, tmp_path, monkeypatch,
                                                       [0.5, 0.6, 0.7, 0.1, 0.1], stop_at=3, early_stop=2)
    assert len(first) == 3 and second == [] and forwards == 0
    saved = torch.load(args["model_save_path"], weights_only=True)
    assert all(torch.equal(v, first[0][k]) for k, v in saved.items())
    assert not Path(str(args["model_save_path"]) + ".resume").exists()


def test_a_run_resumed_one_epoch_before_its_early_stop_trains_that_epoch(tiny_demo_pickle, tmp_path, monkeypatch):
    """Best at epoch 1, early_stop 2, interrupted after epoch 2 (one epoch without
    improvement): the resumed run trains epoch 3 (4 batches), then stops."""
    first, second, forwards, args = _interrupted_after(tiny_demo_pickle, tmp_path, monkeypatch,
                                                       [0.5, 0.6, 0.7, 0.1, 0.1], stop_at=2, early_stop=2)
    assert len(first) == 2 and len(second) == 1 and forwards == 4


def test_the_training_curves_go_to_the_log_folder_else_next_to_the_weights(tmp_path):
    """One PNG per seed, named by model and dataset, in MMSA's log folder when there is one."""
    from tiny_kuda import run_of

    from kuda_mmsa.training.trainer import curves_path

    args = {"model_name": "kuda", "dataset_name": "mosi", "seed": 3, "model_save_path": tmp_path / "w" / "k.pth"}
    assert curves_path(run_of(**args, log_dir=str(tmp_path / "logs"))) == tmp_path / "logs" / "kuda-mosi-seed3-curves.png"
    assert curves_path(run_of(**args, log_dir=None)) == tmp_path / "w" / "kuda-mosi-seed3-curves.png"
    assert curves_path(run_of(**args)) == tmp_path / "w" / "kuda-mosi-seed3-curves.png"


def test_a_run_diverging_in_its_first_epoch_says_nothing_was_saved(tiny_demo_pickle, tmp_path):
    """The error must not point at a checkpoint or state that does not exist."""
    from kuda_mmsa.errors import KudaTrainingError

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=3, early_stop=5)
    with pytest.raises(KudaTrainingError) as e:
        KuDATrainer(args).do_train(Probe(args["feature_dims"][1], nan_from_call=2), loaders())
    text = str(e.value)
    assert "in epoch 1 of seed" in text and "no checkpoint was saved" in text and "best checkpoint" not in text
    assert "diverged in its first epoch, so no training state was saved" in text
    assert text.endswith("or set grad_clip, then run again.") and "delete" not in text
    assert not Path(str(args["model_save_path"])).exists()


def test_epochs_without_a_finite_validation_value_count_towards_early_stop(tiny_demo_pickle, tmp_path,
                                                                           monkeypatch):
    """No epoch improves on nothing: with early_stop 2 and a NaN validation key every epoch,
    the run stops after epoch 2 (then says no weights were saved)."""
    from kuda_mmsa.errors import KudaTrainingError

    seen = []
    _scripted_validation(monkeypatch, [float("nan")] * 10, seen)
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=10, early_stop=2)
    with pytest.raises(KudaTrainingError, match="No epoch gave a finite validation Loss"):
        KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    assert len(seen) == 2


def test_a_fresh_run_removes_the_temp_files_a_killed_write_left(tiny_demo_pickle, tmp_path):
    """A process killed mid-write leaves `.<name>.<random>.tmp` next to the weights and the
    resume state (files.atomic_path); they are never valid and must not pile up run after run."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=1, early_stop=5)
    save = Path(str(args["model_save_path"]))
    left = [save.parent / f".{save.name}.k1ll3d.tmp", save.parent / f".{save.name}.resume.k1ll3d.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    other = save.parent / ".someone-else.pth.x.tmp"     # not ours: kept
    other.write_bytes(b"x")
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    assert [p.exists() for p in left] == [False, False] and other.exists()


def test_a_fresh_run_removes_weights_an_earlier_run_left_at_its_save_path(tiny_demo_pickle, tmp_path, monkeypatch):
    """Weights (and their sidecar) at the save path from an earlier run must never be taken
    for this run's: even when no epoch of this run gives weights, they are gone."""
    from kuda_mmsa.errors import KudaTrainingError

    _scripted_validation(monkeypatch, [float("nan")] * 3, [])
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=1, early_stop=5)
    save = Path(str(args["model_save_path"]))
    torch.save({"w": torch.zeros(1)}, save)
    sidecar = Path(str(save) + ".json")
    sidecar.write_text("{}")
    with pytest.raises(KudaTrainingError, match="no weights were saved"):
        KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    assert not save.exists() and not sidecar.exists()


def test_the_progress_bar_shows_the_running_mean_loss_every_ten_steps_and_only_when_asked(tiny_demo_pickle,
                                                                                          tmp_path, capsys):
    """With batches of 2 (15 steps an epoch) the bar's loss is the running mean after steps 0
    and 10 of each epoch; progress off prints no bar."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, overrides={"progress": True}, epochs=1, early_stop=5,
                          batch_size=2)
    probe = Probe(args["feature_dims"][1])
    capsys.readouterr()
    KuDATrainer(args).do_train(probe, loaders())
    err = capsys.readouterr().err
    batches = _batch_losses(probe, float(args["ce_weight"]))
    assert len(batches) == 15
    running = lambda k: sum(l * b for l, _, b in batches[:k + 1]) / sum(b for _, _, b in batches[:k + 1])
    shown = set(re.findall(r"loss=([0-9.]+)", err))
    assert "kuda epoch 1/1" in err
    assert shown == {f"{running(0):.4f}", f"{running(10):.4f}"}, (shown, [f"{running(k):.4f}" for k in range(15)])

    args, loaders = _make(tiny_demo_pickle, tmp_path / "quiet", overrides={"progress": False}, epochs=1,
                          early_stop=5)
    capsys.readouterr()
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    assert "kuda epoch" not in capsys.readouterr().err


def test_the_reported_losses_are_rounded_to_four_places(tiny_demo_pickle, tmp_path):
    """MMSA's results carry Loss with 4 decimals; the test split's Loss is the MSE of the
    sample results against the labels they list."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=2, early_stop=5)
    dl = loaders()
    probe = Probe(args["feature_dims"][1])
    trainer = KuDATrainer(args)
    results = trainer.do_train(probe, dl, return_epoch_results=True)
    losses = [r["Loss"] for split in results.values() for r in split]
    assert all(v == round(v, 4) for v in losses) and any(v != round(v, 3) for v in losses)
    test = trainer.do_test(probe, dl["test"], mode="TEST", return_sample_results=True)
    pred, labels = torch.tensor(test["SResults"]), torch.tensor(test["Labels"])
    assert test["Loss"] == round(float(((pred - labels) ** 2).mean()), 4)
    assert test["Loss"] != round(float(((pred - labels) ** 2).mean()), 5)


def test_sample_results_list_every_test_sample_only_when_asked(tiny_demo_pickle, tmp_path):
    """do_test(return_sample_results=True), what MMSA saves per sample: ids, predictions,
    ratios, unimodal scores and labels of the whole split, in one order; by default none."""
    import pickle

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=1, early_stop=5)
    dl = loaders()
    probe = Probe(args["feature_dims"][1]).eval()
    trainer = KuDATrainer(args)
    plain_results = trainer.do_test(probe, dl["test"], mode="TEST")
    assert not {"Ids", "SResults", "Ratios", "Unimodal", "Labels"} & set(plain_results)
    got = trainer.do_test(probe, dl["test"], mode="TEST", return_sample_results=True)
    with open(tiny_demo_pickle, "rb") as f:
        data = pickle.load(f)["test"]
    ids = list(data["id"])
    order = [ids.index(i) for i in got["Ids"]]
    assert sorted(order) == list(range(len(ids)))
    audio = torch.as_tensor(data["audio"], dtype=torch.float32)[order]
    with torch.no_grad():          # the probe's prediction, M = <mean over steps of audio, w> + b
        want = (audio.mean(1) @ probe.w + probe.b).tolist()
    assert got["SResults"] == pytest.approx(want, abs=1e-5)
    assert got["Labels"] == pytest.approx([float(v) for v in
                                           torch.as_tensor(data["regression_labels"]).view(-1)[order]], abs=1e-6)
    torch.testing.assert_close(torch.tensor(got["Ratios"]), torch.full((len(ids), 3), 1 / 3))
    torch.testing.assert_close(torch.tensor(got["Unimodal"]), torch.tensor(want)[:, None].expand(-1, 3),
                               rtol=0, atol=1e-5)


def test_the_sidecar_records_what_the_weights_were_trained_with(tiny_demo_pickle, tmp_path):
    import json

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=1, early_stop=5, ce_weight=0.25)
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    info = json.loads(Path(str(args["model_save_path"]) + ".json").read_text())
    from kuda_mmsa import __version__

    assert info["format"] == "kuda_mmsa.weights-info/1" and info["version"] == __version__
    assert (info["model"], info["dataset"], info["seed"], info["epoch"]) == ("kuda", "demo", 1111, 1)
    assert set(info["valid"]) == {"Loss"}
    assert info["config"]["ce_weight"] == 0.25 and info["config"]["epochs"] == 1
    assert info["feature_file"] == str(tiny_demo_pickle)
    assert info["pretrained"] == args["pretrained"] and info["data"] == json.loads(json.dumps(args["data_fingerprint"]))
    assert info["data"]


@pytest.mark.parametrize("key, base, step, better", [
    ("Loss", 0.5, -1e-6, True), ("Loss", 0.5, -1.5e-6, True), ("Loss", 0.5, -0.5e-6, False),
    ("Corr", 0.5, 1e-6, True), ("Corr", 0.5, 1.5e-6, True), ("Corr", 0.5, 0.5e-6, False)])
def test_an_epoch_is_better_when_it_improves_the_key_by_at_least_1e_6(tiny_demo_pickle, tmp_path, monkeypatch,
                                                                       key, base, step, better):
    """Epoch selection ignores changes below 1e-6 (noise), in both directions of KeyEval."""
    seen = []

    def scripted(self, model, dataloader, mode="VAL", return_sample_results=False):
        if mode != "VAL":
            return {"Loss": 0.0, "Corr": 0.0}
        seen.append(1)
        return {key: [base, base + step][len(seen) - 1], "Loss" if key == "Corr" else "Corr": 0.0}

    monkeypatch.setattr(KuDATrainer, "do_test", scripted)
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=2, early_stop=5, KeyEval=key)
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    import json

    info = json.loads(Path(str(args["model_save_path"]) + ".json").read_text())
    assert info["epoch"] == (2 if better else 1)


def test_curves_are_drawn_when_plots_is_on(tiny_demo_pickle, tmp_path):
    from kuda_mmsa.training.run_config import RunConfig
    from kuda_mmsa.training.trainer import curves_path

    args, loaders = _make(tiny_demo_pickle, tmp_path, overrides={"plots": True}, epochs=2, early_stop=5)
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    png = curves_path(RunConfig.from_args(args))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    args, loaders = _make(tiny_demo_pickle, tmp_path / "off", overrides={"plots": False}, epochs=1, early_stop=5)
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
    assert not curves_path(RunConfig.from_args(args)).exists()


def test_the_sidecar_names_the_datasets_feature_file_when_no_custom_one_was_given(tiny_demo_pickle, tmp_path):
    """A plain MMSA run (no custom_feature) reads the dataset's featurePath: the sidecar says so."""
    import json

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=1, early_stop=5)
    dl = loaders()
    args["custom_feature"] = None
    assert args["featurePath"] == str(tiny_demo_pickle)
    KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), dl)
    info = json.loads(Path(str(args["model_save_path"]) + ".json").read_text())
    assert info["feature_file"] == str(tiny_demo_pickle)


def test_a_run_resumed_after_a_first_epoch_that_used_up_its_patience_trains_no_further(tiny_demo_pickle, tmp_path,
                                                                                        monkeypatch):
    """early_stop 1 and no finite validation value in epoch 1: the run is over after epoch 1.
    Interrupted right after it and resumed, it must not train epoch 2 (whose value would give
    weights): it finishes with the error that no epoch gave weights."""
    from kuda_mmsa.errors import KudaTrainingError

    with pytest.raises(KudaTrainingError, match="No epoch gave a finite validation Loss"):
        _interrupted_after(tiny_demo_pickle, tmp_path, monkeypatch, [float("nan"), 0.1, 0.1], stop_at=1,
                           early_stop=1)


def test_a_run_diverging_after_its_first_epoch_names_the_state_to_delete(tiny_demo_pickle, tmp_path):
    """Diverging in epoch 2 (4 steps an epoch: the 5th forward is its first): the state after
    epoch 1 is there, and the way out is to delete it and run again."""
    from kuda_mmsa.errors import KudaTrainingError

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=3, early_stop=5)
    resume = Path(str(args["model_save_path"]) + ".resume")
    with pytest.raises(KudaTrainingError) as e:
        KuDATrainer(args).do_train(Probe(args["feature_dims"][1], nan_from_call=5), loaders())
    text = str(e.value)
    assert "in epoch 2 of seed" in text and f"the state after epoch 1 is in {resume}" in text
    assert text.endswith(f"or set grad_clip, then delete {resume} and run again.")
    assert torch.load(resume, weights_only=True)["epoch"] == 1


def test_the_saved_state_keeps_each_epochs_history_for_the_curves(tiny_demo_pickle, tmp_path, monkeypatch):
    """After every epoch the resume state holds the history the training curves are drawn from:
    per epoch its number, training loss (the sample-weighted mean, 4 places) and validation results."""
    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=5, early_stop=5)
    script = [0.5, 0.4, 0.3]
    _scripted_validation(monkeypatch, script, [])
    trainer = KuDATrainer(args)
    trainer.epoch_callbacks.append(lambda epoch, results: (_ for _ in ()).throw(_Stop) if epoch == 2 else None)
    probe = Probe(args["feature_dims"][1])
    with pytest.raises(_Stop):
        trainer.do_train(probe, loaders())
    batches = _batch_losses(probe, float(args["ce_weight"]))
    mean = lambda e: sum(l * b for l, _, b in batches[4 * e: 4 * e + 4]) / sum(b for _, _, b in batches[4 * e: 4 * e + 4])
    state = torch.load(Path(str(args["model_save_path"]) + ".resume"), weights_only=True)
    assert (state["epoch"], state["best_epoch"], state["best_valid"]) == (2, 2, 0.4)
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    assert [h["valid"] for h in state["history"]] == [{"Loss": 0.5, "Corr": 0.0}, {"Loss": 0.4, "Corr": 0.0}]
    for e, h in enumerate(state["history"]):
        assert h["train_loss"] == pytest.approx(mean(e), abs=6e-5) and h["train_loss"] == round(h["train_loss"], 4)


def test_a_resumed_run_whose_best_weights_were_deleted_fails_instead_of_finishing(tiny_demo_pickle, tmp_path,
                                                                                  monkeypatch):
    """The best epoch was found before the interruption, but its weights file is gone: the run
    must not finish as if there were weights to test."""
    from kuda_mmsa.errors import KudaTrainingError

    args, loaders = _make(tiny_demo_pickle, tmp_path, epochs=10, early_stop=2)
    _scripted_validation(monkeypatch, [0.5, 0.6, 0.7], [])
    trainer = KuDATrainer(args)
    trainer.epoch_callbacks.append(lambda epoch, results: (_ for _ in ()).throw(_Stop) if epoch == 3 else None)
    with pytest.raises(_Stop):
        trainer.do_train(Probe(args["feature_dims"][1]), loaders())
    Path(str(args["model_save_path"])).unlink()
    with pytest.raises(KudaTrainingError, match="no weights were saved"):
        KuDATrainer(args).do_train(Probe(args["feature_dims"][1]), loaders())
