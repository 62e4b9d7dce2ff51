"""The extended MMSA command line: stock flags kept, new models/datasets/options, bad
input exits 2 with one paragraph, end-to-end runs of stock baselines on tiny demo data."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kuda_mmsa.cli.main import main
from kuda_mmsa.cli.train import build_parser

REPO = Path(__file__).resolve().parents[1]


def _stock_parser():
    """MMSA 2.2.1's own parser (MMSA.__main__.parse_args builds and parses in one go)."""
    import importlib

    mm = importlib.import_module("MMSA.__main__")
    captured = {}
    orig = argparse.ArgumentParser.parse_args

    def grab(self, *a, **k):
        captured["p"] = self
        return orig(self, [])
    argparse.ArgumentParser.parse_args = grab
    try:
        mm.parse_args()
    finally:
        argparse.ArgumentParser.parse_args = orig
    return captured["p"]


def test_every_stock_flag_with_its_default():
    stock = _stock_parser()
    ours = build_parser()
    ours_actions = {a.dest: a for a in ours._actions}
    for a in stock._actions:
        assert a.dest in ours_actions, a.dest
        b = ours_actions[a.dest]
        assert set(a.option_strings) <= set(b.option_strings), a.dest
        if a.dest not in ("num_workers", "help"):
            assert a.default == b.default, a.dest
        if a.choices:
            assert set(a.choices) <= set(b.choices), a.dest
    assert ours_actions["num_workers"].default == min(8, os.cpu_count() or 1)
    assert {"kuda"} <= set(ours_actions["model"].choices)
    assert {"sims2", "simsv2", "demo"} <= set(ours_actions["dataset"].choices)
    for flag in ("--data-root", "--feature-file", "--knowledge-dir", "--knowledge-from", "--pretrained",
                 "--no-plots", "--no-progress"):
        assert flag in ours._option_string_actions


def test_unknown_model_or_dataset_lists_choices(capsys):
    for argv in (["-m", "nomodel"], ["-d", "nodata"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "invalid choice" in err and ("kuda" in err or "sims2" in err)


def test_missing_feature_file_exits_2_one_paragraph(tmp_path, capsys, kuda_cache):
    rc = main(["-m", "lf_dnn", "-d", "sims2", "-s", "1", "-n", "0", "-v", "0",
               "--data-root", str(tmp_path / "root"), "--log-dir", str(tmp_path / "l"),
               "--res-save-dir", str(tmp_path / "r"), "--model-save-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "Traceback" not in err[0]
    assert str(tmp_path / "root" / "SIMSv2/Processed/unaligned.pkl") in err[0]
    assert "CH-SIMS v2" in err[0] and "--feature-file" in err[0]


def test_subprocess_bad_pickle_no_traceback(tmp_path, kuda_cache):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04garbage")
    env = dict(os.environ, PYTHONPATH=str(REPO), KUDA_MMSA_CACHE=str(kuda_cache))
    r = subprocess.run(
        [sys.executable, "-m", "kuda_mmsa", "-m", "tfn", "-d", "demo", "-s", "1", "-n", "0",
         "-v", "0", "--feature-file", str(bad), "--log-dir", str(tmp_path / "l"),
         "--res-save-dir", str(tmp_path / "r"), "--model-save-dir", str(tmp_path / "m")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and str(bad) in r.stderr
    assert "corrupt or truncated" in r.stderr


def _run_cli(tmp_path, *argv):
    base = ["-s", "1", "-n", "0", "-v", "0", "--log-dir", str(tmp_path / "l"),
            "--res-save-dir", str(tmp_path / "r"), "--model-save-dir", str(tmp_path / "m")]
    return main(list(argv) + base)


@pytest.mark.slow
def test_stock_lf_dnn_on_demo_writes_clean_csv(tmp_path, tiny_demo_pickle):
    rc = _run_cli(tmp_path, "-m", "lf_dnn", "-d", "demo", "--feature-file", str(tiny_demo_pickle))
    assert rc == 0
    csv = tmp_path / "r" / "normal" / "demo.csv"
    text = csv.read_text()
    assert "np.float64" not in text                        # numpy-2 CSV cells fixed
    df = pd.read_csv(csv)
    assert list(df["Model"]) == ["lf_dnn"] and "Mult_acc_2" in df.columns
    mean, std = eval(df.loc[0, "Mult_acc_2"])
    assert 0 <= mean <= 100 and std == 0.0
    assert (tmp_path / "m" / "lf_dnn-demo.pth").is_file()


@pytest.mark.slow
def test_stock_self_mm_with_local_tiny_bert_and_tune_mode(tmp_path, tiny_demo_pickle):
    cfg = tmp_path / "fast.json"
    cfg.write_text('{"early_stop": 1, "update_epochs": 1}')
    rc = _run_cli(tmp_path, "-m", "self_mm", "-d", "demo", "-c", str(cfg),
                  "--feature-file", str(tiny_demo_pickle))
    assert rc == 0
    assert "self_mm" in (tmp_path / "r" / "normal" / "demo.csv").read_text()
    # update_epochs is a Self-MM key: LF-DNN refuses it, naming the file and the key
    rc = _run_cli(tmp_path, "-m", "lf_dnn", "-d", "sims2", "-t", "-tt", "1", "-c", str(cfg),
                  "--feature-file", str(tiny_demo_pickle))
    assert rc == 2
    lf_cfg = tmp_path / "lf.json"
    lf_cfg.write_text('{"early_stop": 1}')
    rc = _run_cli(tmp_path, "-m", "lf_dnn", "-d", "sims2", "-t", "-tt", "1", "-c", str(lf_cfg),
                  "--feature-file", str(tiny_demo_pickle))
    assert rc == 0
    df = pd.read_csv(tmp_path / "r" / "tune" / "simsv2-lf_dnn.csv")
    assert len(df) == 1 and "Mult_acc_2" in df.columns    # SIMS metrics for simsv2


@pytest.mark.slow
def test_kuda_on_tiny_demo_end_to_end(tmp_path, tiny_demo_pickle):
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("common:\n  epochs: 1\n  batch_size: 16\n  progress: false\n"
                   "  pretrain:\n    epochs: {T: 1, V: 1, A: 1}\n    batch_size: 16\n")
    rc = _run_cli(tmp_path, "-m", "kuda", "-d", "demo", "-c", str(cfg),
                  "--feature-file", str(tiny_demo_pickle),
                  "--knowledge-dir", str(tmp_path / "k"))
    assert rc == 0
    df = pd.read_csv(tmp_path / "r" / "normal" / "demo.csv")
    assert list(df["Model"]) == ["kuda"]
    assert (tmp_path / "m" / "kuda-demo.pth").is_file()


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["evaluat", "--weights", "w.pth"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'evaluat'" in err and "pretrain" in err and "Traceback" not in err


def test_every_registered_command_is_in_the_usage_and_runs_its_own_help(capsys):
    from kuda_mmsa.cli.main import COMMANDS, main

    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            main([name, "-h"])
        assert e.value.code == 0, name
        assert capsys.readouterr().out.startswith(f"usage: kuda-mmsa {name}"), name
    from kuda_mmsa.cli.main import usage

    text = usage("kuda-mmsa")
    assert all(f"kuda-mmsa {n} " in text or f"kuda-mmsa [{n}] " in text for n in COMMANDS)


def test_a_registered_command_is_dispatched(monkeypatch, capsys):
    from kuda_mmsa.cli.main import COMMANDS, Command, main, usage

    class Hello(Command):
        def main(self, argv, prog):
            print(f"{prog}: hello {' '.join(argv)}")
            return 0

    monkeypatch.setitem(COMMANDS._entries, "hello", Hello("hello", "NAME", "say hello"))
    assert main(["hello", "world"]) == 0
    assert capsys.readouterr().out == "kuda-mmsa hello: hello world\n"
    assert "kuda-mmsa hello NAME" in usage("kuda-mmsa") and "say hello" in usage("kuda-mmsa")
