"""`python -m kuda_mmsa explain` on a tiny trained model; training-curve PNGs of every kuda
run; plots skipped cleanly without matplotlib; the 'prediction' ratio source."""
import builtins
import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tiny_demo_pickle, tmp_path_factory):
    """One tiny KuDA run through MMSA_run: (folder, config file)."""
    from kuda_mmsa.mmsa.register import register

    d = tmp_path_factory.mktemp("explain_run")
    cfg = write_tiny_config(d / "tiny.yaml")
    register()
    import MMSA.run

    MMSA.run.MMSA_run("kuda", "demo", config_file=str(cfg), config={"knowledge_dir": str(d / "knowledge")},
                      seeds=[5], custom_feature=str(tiny_demo_pickle), gpu_ids=[], num_workers=0, verbose_level=0,
                      model_save_dir=str(d / "models"), res_save_dir=str(d / "results"), log_dir=str(d / "logs"))
    return d, cfg


def _mmsa_test_metric(d, metric):
    with open(d / "results" / "normal" / "demo.csv") as f:
        return float(list(csv.DictReader(f))[-1][metric].strip("()").split(",")[0])


def test_training_curves_png_next_to_the_log(trained):
    d, _ = trained
    png = d / "logs" / "kuda-demo-seed5-curves.png"
    assert png.is_file() and png.stat().st_size > 2000
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_writes_csv_and_plots_matching_mmsa(trained, tiny_demo_data, tiny_demo_pickle, tmp_path):
    d, cfg = trained
    out = tmp_path / "explain"
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "KUDA_MMSA_CACHE": os.environ["KUDA_MMSA_CACHE"]}
    proc = subprocess.run([sys.executable, "-m", "kuda_mmsa", "explain", "--weights",
                           str(d / "models" / "kuda-demo.pth"), "--feature-file", str(tiny_demo_pickle),
                           "--out", str(out), "-c", str(cfg), "-d", "demo"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "explain-test.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["id", "T", "V", "A", "R_T", "R_V", "R_A", "prediction", "label",
                             "abs_error", "annotation"]
    test = tiny_demo_data["test"]
    assert [r["id"] for r in rows] == list(test["id"])
    assert [float(r["label"]) for r in rows] == pytest.approx(test["regression_labels"].tolist(), abs=1e-6)
    assert [r["annotation"] for r in rows] == list(test["annotations"])
    for r in rows:
        assert float(r["R_T"]) + float(r["R_V"]) + float(r["R_A"]) == pytest.approx(1.0, abs=1e-5)
    # The loaded weights are the trained ones: MAE over the CSV = MMSA's test MAE of that run.
    mae = sum(abs(float(r["prediction"]) - float(r["label"])) for r in rows) / len(rows)
    assert round(mae * 100, 2) == pytest.approx(_mmsa_test_metric(d, "MAE"), abs=0.011)
    for name in ("ratio_distribution.png", "ratio_by_dominant.png", "samples.png"):
        p = out / name
        assert p.is_file() and p.stat().st_size > 2000, name
    assert "largest ratio on the annotated dominant modality" in proc.stdout


def test_explain_groups_by_error_without_annotations(trained, write_variant, tmp_path):
    from kuda_mmsa.experiments import explanation as explain

    d, cfg = trained

    def drop(data):
        for s in data.values():
            s.pop("annotations", None)

    pkl = write_variant(drop)
    # no -c: the model is rebuilt from the config saved next to the weights
    s = explain.explain(d / "models" / "kuda-demo.pth", pkl, "valid", tmp_path / "e")
    assert s["dominant_fraction"] is None and s["samples"] == 12
    assert (tmp_path / "e" / "ratio_by_error.png").stat().st_size > 2000
    assert not (tmp_path / "e" / "ratio_by_dominant.png").exists()


def test_dominant_fraction_against_hand_counts():
    from kuda_mmsa.training.evaluation import dominant_fraction

    rows = [dict(R_T=.6, R_V=.2, R_A=.2, annotation="dominant:text"),
            dict(R_T=.2, R_V=.3, R_A=.5, annotation="dominant:vision"),
            dict(R_T=.1, R_V=.1, R_A=.8, annotation="dominant:audio"),
            dict(R_T=.1, R_V=.1, R_A=.8, annotation=""),
            dict(R_T=1 / 3, R_V=1 / 3, R_A=1 / 3, annotation="dominant:text")]   # a tie picks nothing
    assert dominant_fraction(rows) == pytest.approx(2 / 4)


def test_plots_are_skipped_with_a_notice_without_matplotlib(monkeypatch, tmp_path, caplog):
    from kuda_mmsa import plots

    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    monkeypatch.setitem(plots._notice, "shown", False)
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    history = [{"epoch": 1, "train_loss": 0.5, "valid": {"Loss": 0.4}}]
    with caplog.at_level(logging.INFO, logger="MMSA"):
        assert plots.save_training_curves(history, tmp_path / "c.png") is None
        assert plots.ratio_distribution([[0.3, 0.3, 0.4]], tmp_path / "r.png") is None
    assert not list(tmp_path.iterdir())
    notices = [r for r in caplog.records if "matplotlib is not installed" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()


def test_prediction_ratio_source_targets_the_static_pass():
    from kuda_mmsa.model import build_kuda
    from kuda_mmsa.model.ratio import sentiment_ratio

    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from test_model import make_batch, make_model
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = make_model(ratio_source="prediction", ratio_k=5.0).eval()
    inputs, labels = make_batch()
    out = model(**inputs)
    # Reference: the same weights with static fusion give the first-pass prediction.
    static = make_model(ratio_source="prediction", ratio_k=5.0, use_ratio=False).eval()
    static.load_state_dict(model.state_dict())
    torch.testing.assert_close(out["estimate"], static(**inputs)["M"])
    scores = torch.cat([out[m] for m in "TVA"], -1)
    torch.testing.assert_close(out["ratio"], sentiment_ratio(scores, out["estimate"], 5.0))
    train = model.train()(**inputs, labels=labels)
    torch.testing.assert_close(train["aux"], torch.nn.functional.mse_loss(train["estimate"], labels))
