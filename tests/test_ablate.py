"""tools/ablate.py and kuda_mmsa.ablation on the tiny demo data: one seed, two variants,
metrics equal to MMSA's own result CSV, Markdown table, and a resumed invocation that runs
nothing."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")


@pytest.fixture
def tiny_cfg(tmp_path):
    return write_tiny_config(tmp_path / "tiny.yaml", epochs=1)


def _mmsa_csv_mean(run_dir: Path, metric: str) -> float:
    """MMSA's own result CSV cell '(mean*100, std*100)' for the run's single seed."""
    with open(run_dir / "normal" / "demo.csv") as f:
        row = list(csv.DictReader(f))[-1]
    return float(row[metric].strip("()").split(",")[0])


def test_ablation_runs_variants_writes_csv_table_and_resumes(tiny_demo_pickle, tiny_cfg, tmp_path, monkeypatch):
    from kuda_mmsa.experiments import ablation

    out = tmp_path / "abl"
    res = ablation.run_ablation("demo", [7], ["kuda", "kuda_static"], out,
                                feature_file=str(tiny_demo_pickle), config_file=str(tiny_cfg),
                                verbose_level=0, echo=lambda *a: None,
                                config={"knowledge_dir": str(tmp_path / "knowledge"), "plots": False})
    assert res["ran"] == [("kuda", 7), ("kuda_static", 7)]
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [("kuda", "7"), ("kuda_static", "7")]
    for r in rows:
        run_dir = out / "runs" / r["variant"] / "seed7"
        for m in METRICS:  # the same numbers MMSA itself wrote for that run
            assert round(float(r[m]) * 100, 2) == pytest.approx(_mmsa_csv_mean(run_dir, m), abs=0.011)
        assert not list(run_dir.glob("*curves.png"))   # plots=False reached the trainer
    assert 0.0 <= float(rows[0]["DomFrac"]) <= 1.0
    assert rows[1]["DomFrac"] == ""                   # static fusion: uniform ratios, the share does not apply
    # The variant's config reached the model: static fusion has no ratio-dependent weights,
    # so its args say use_ratio false; the log of MMSA records the args.
    assert "'use_ratio': False" in (out / "runs" / "kuda_static" / "seed7" / "kuda-demo.log").read_text()
    assert "'use_ratio': True" in (out / "runs" / "kuda" / "seed7" / "kuda-demo.log").read_text()
    md = (out / "ablation.md").read_text()
    mae = float(rows[0]["MAE"])
    assert f"| kuda | 1 | " in md and f"{mae:.4f} ± 0.0000" in md
    assert "| kuda_static | 1 |" in md and next(x for x in md.splitlines() if "| kuda_static |" in x).endswith("| n/a |")
    # what the README's Python example prints and names
    assert res["csv"] == out / "ablation.csv" and res["markdown"] == out / "ablation.md"
    assert f"{mae:.4f} ± 0.0000" in res["table"] and "kuda_static" in res["table"]

    # Second invocation through the command line: nothing runs again.
    from kuda_mmsa.mmsa import run as run_mod

    def boom(*a, **k):
        raise AssertionError("a finished (variant, seed) was run again")

    monkeypatch.setattr(run_mod, "run_seed", boom)
    from kuda_mmsa.cli.main import main

    assert main(["ablate", "-d", "demo", "-s", "7", "--variants", "kuda", "kuda_static", "--out", str(out),
                 "--feature-file", str(tiny_demo_pickle), "-c", str(tiny_cfg),
                 "--knowledge-dir", str(tmp_path / "knowledge"), "--no-plots"]) == 0
    with open(out / "ablation.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_unknown_variant_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "ablate.py"), "-d", "demo",
                           "--variants", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "invalid choice: 'nope'" in proc.stderr


def test_variant_registry_covers_the_issue():
    from kuda_mmsa.experiments.variants import VARIANTS

    assert VARIANTS["kuda_reference"].config == {"fusion_mode": "reference"}
    assert VARIANTS["kuda_static"].config == {"use_ratio": False}
    assert VARIANTS["kuda_no_knowledge"].config == {"use_knowledge": False}
    assert VARIANTS["kuda_no_ce"].config == {"ce_weight": 0.0}
    assert VARIANTS["kuda_estimate"].config == {"ratio_source": "estimate"}
    assert {"lf_dnn", "tfn", "self_mm"} <= {v.model for v in VARIANTS.values()}


def test_pretrained_reaches_every_variant_that_has_a_text_encoder(tiny_demo_pickle, kuda_cache):
    """ablate --pretrained: KuDA and the MMSA peers with a text encoder (Self-MM) get the named
    encoder, a peer without one (LF-DNN) is not given the key (MMSA would refuse it)."""
    from kuda_mmsa.experiments.ablation import cell_config, cell_fingerprint
    from kuda_mmsa.experiments.variants import VARIANTS
    from kuda_mmsa.data.tiny_encoders import ensure_tiny_encoder

    other = ensure_tiny_encoder("roberta", kuda_cache)       # not the demo's default encoder
    config = {"pretrained": str(other)}
    assert cell_config(VARIANTS["self_mm"], config, "demo")["pretrained"] == str(other)
    assert "pretrained" not in cell_config(VARIANTS["lf_dnn"], config, "demo")
    for name in ("self_mm", "kuda"):
        encoder = cell_fingerprint(VARIANTS[name], "demo", str(tiny_demo_pickle), config=config)["encoder"]
        assert encoder["name"] == other.name and encoder["model_type"] == "roberta", (name, encoder)
    default = cell_fingerprint(VARIANTS["self_mm"], "demo", str(tiny_demo_pickle))["encoder"]
    assert default["name"] != other.name
