"""Missing modalities, the scale-free reliability ratio, test-time corruption and the
robustness command / ablation option."""
import csv
import math

import numpy as np
import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.data import Corruption, CorruptedDataset, make_family
from kuda_mmsa.data.corruption import corrupted_indices
from kuda_mmsa.model.ratio import present_median, reliability_ratio, sentiment_ratio
from test_model import make_batch, make_model


# ---------------------------------------------------------------------- the ratio
@pytest.mark.parametrize("c,b", [(2.0, 0.0), (0.5, -1.0), (3.0, 0.7), (1.0, 5.0)])
def test_reliability_ratio_is_invariant_to_scaling_and_shifting_labels(c, b):
    """Labels scaled by c and shifted by b: scores follow (c s + b), the predicted squared
    errors scale by c^2 (log_var + 2 log c); the ratio must not move."""
    g = torch.Generator().manual_seed(int(10 * c + b))
    scores = torch.rand(64, 3, generator=g) * 2 - 1
    log_var = torch.randn(64, 3, generator=g)
    present = torch.rand(64, 3, generator=g) > 0.2
    for agreement in (0.0, 1.0, 5.0):
        r = reliability_ratio(scores, log_var, present, agreement)
        r2 = reliability_ratio(c * scores + b, log_var + 2 * math.log(c), present, agreement)
        torch.testing.assert_close(r2, r, atol=1e-5, rtol=1e-5)
    # The paper's agreement rule is not: the same k means something else after scaling.
    target = scores.mean(-1, keepdim=True)
    assert (sentiment_ratio(c * scores + b, c * target + b, 1.0) - sentiment_ratio(scores, target, 1.0)).abs().max() \
        > 1e-3 or c == 1.0


def test_reliability_ratio_excludes_missing_and_lowers_disagreeing_modalities():
    scores = torch.tensor([[0.8, 0.7, -0.9], [0.5, 0.5, 0.5]])
    log_var = torch.zeros(2, 3)
    present = torch.tensor([[True, True, True], [True, False, True]])
    r = reliability_ratio(scores, log_var, present, agreement=2.0)
    assert r[1, 1] == 0 and torch.allclose(r.sum(-1), torch.ones(2))
    assert r[0, 2] < r[0, 0] and r[0, 2] < r[0, 1]          # audio disagrees with the median
    r_iv = reliability_ratio(scores, torch.tensor([[0.0, -2.0, 0.0], [0.0, 0.0, 0.0]]), None, agreement=0.0)
    expected = torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0)  # inverse-variance weighting
    torch.testing.assert_close(r_iv[0], expected)


def test_present_median():
    s = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [4.0, 0.0, 0.0]])
    p = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    torch.testing.assert_close(present_median(s, p), torch.tensor([[2.0], [2.0], [4.0]]))


# ---------------------------------------------------------------------- missing modalities in the model
def _drop(inputs, modality):
    out = {k: v.clone() for k, v in inputs.items()}
    if modality == "T":
        out["text"][:] = 0
    else:
        key, lengths = ("vision", "vision_lengths") if modality == "V" else ("audio", "audio_lengths")
        out[key][:] = torch.randn_like(out[key]) * 50      # content that must not matter
        out[lengths][:] = 0
    return out


@pytest.mark.parametrize("modality", ["T", "V", "A"])
@pytest.mark.parametrize("source", ["reliability", "consensus", "prediction"])
def test_a_missing_modality_gets_ratio_zero_and_its_content_does_not_matter(modality, source):
    model = make_model(ratio_source=source, ratio_k=5.0).eval()
    inputs, _ = make_batch()
    dropped = _drop(inputs, modality)
    out = model(**dropped)
    i = "TVA".index(modality)
    assert not out["present"][:, i].any() and out["present"].sum(-1).eq(2).all()
    assert torch.all(out["ratio"][:, i] == 0)
    torch.testing.assert_close(out["ratio"].sum(-1), torch.ones(4))
    if modality != "T":
        other = _drop(inputs, modality)           # other random content, still length 0
        torch.testing.assert_close(model(**other)["M"], out["M"])


def test_modality_dropout_drops_at_the_rate_and_never_all():
    model = make_model(modality_dropout=0.5).train()
    torch.manual_seed(0)
    b = 400
    present = torch.ones(b, 3, dtype=torch.bool)
    present[:50, 2] = False
    text = torch.ones(b, 3, 4)
    audio, vision = torch.ones(b, 5, 2), torch.ones(b, 5, 2)
    *_, al, vl, kept = model._drop_modalities(text, audio, vision, torch.full((b,), 5), torch.full((b,), 5), present)
    assert kept.any(-1).all()
    assert not (kept & ~present).any()                       # a missing modality stays missing
    share = 1 - kept[50:].float().mean().item()
    assert 0.3 < share < 0.5                                  # 0.5, less the restored ones
    assert torch.equal(vl == 0, ~kept[:, 1]) and torch.equal(al == 0, present[:, 2] & ~kept[:, 2])


# ---------------------------------------------------------------------- corruption
def _split(tiny_demo_pickle, tiny_bert_dir):
    from easydict import EasyDict

    from kuda_mmsa.mmsa.loader import load_features

    args = EasyDict(model_name="kuda", dataset_name="demo", custom_feature=str(tiny_demo_pickle), use_bert=True,
                    pretrained=str(tiny_bert_dir), feature_T="", feature_A="", feature_V="", label_range=[-1, 1])
    return load_features(args)["test"]


def test_corruption_is_deterministic_nested_and_rate_zero_is_the_data(tiny_demo_pickle, tiny_bert_dir):
    split = _split(tiny_demo_pickle, tiny_bert_dir)
    n = len(split)
    assert list(corrupted_indices(n, Corruption("noise", "V", 0.5, seed=3))) == \
        list(corrupted_indices(n, Corruption("noise", "V", 0.5, seed=3)))
    quarter = set(corrupted_indices(n, Corruption("noise", "V", 0.25, seed=3)))
    half = set(corrupted_indices(n, Corruption("noise", "V", 0.5, seed=3)))
    assert quarter < half and len(half) == 6
    assert half != set(corrupted_indices(n, Corruption("noise", "V", 0.5, seed=4)))
    for kind in ("missing", "noise", "swap"):
        clean = CorruptedDataset(split, Corruption(kind, "A", 0.0, seed=1), vocab_size=517)
        for i in range(n):
            a, b = clean[i], split[i]
            assert all(torch.equal(a[k], b[k]) for k in ("text", "audio", "vision"))
        c1 = CorruptedDataset(split, Corruption(kind, "T", 1.0, seed=1), vocab_size=517)
        c2 = CorruptedDataset(split, Corruption(kind, "T", 1.0, seed=1), vocab_size=517)
        assert all(torch.equal(c1[i]["text"], c2[i]["text"]) for i in range(n))


def test_each_corruption_does_what_it_says(tiny_demo_pickle, tiny_bert_dir):
    split = _split(tiny_demo_pickle, tiny_bert_dir)
    miss = CorruptedDataset(split, Corruption("missing", "V", 1.0), min_length=0)[0]
    assert not miss["vision"].any() and miss["vision_lengths"] == 0
    assert CorruptedDataset(split, Corruption("missing", "A", 1.0), min_length=1)[0]["audio_lengths"] == 1
    noisy = CorruptedDataset(split, Corruption("noise", "A", 1.0, snr_db=0.0))[2]
    base = split[2]
    L = int(base["audio_lengths"])
    power = (base["audio"][:L] ** 2).mean()
    noise_power = ((noisy["audio"][:L] - base["audio"][:L]) ** 2).mean()
    assert 0.5 < noise_power / power < 2.0                   # 0 dB
    assert torch.equal(noisy["audio"][L:], base["audio"][L:])  # padding stays padding
    swapped = CorruptedDataset(split, Corruption("swap", "V", 1.0))
    partner = int(swapped.partner[0])
    assert partner != 0 and torch.equal(swapped[0]["vision"], split[partner]["vision"])
    tok = CorruptedDataset(split, Corruption("noise", "T", 1.0, snr_db=0.0), vocab_size=517)[1]["text"]
    assert torch.equal(tok[1], split[1]["text"][1]) and torch.equal(tok[2], split[1]["text"][2])  # mask, types kept
    changed = (tok[0] != split[1]["text"][0]).float().sum()
    assert 0 < changed < split[1]["text"][1].sum()


def test_missing_at_rate_one_equals_inputs_without_the_modality(tiny_demo_pickle, tiny_bert_dir):
    """Through the evaluation loop: corruption 'missing' on vision at rate 1 gives the model's
    predictions for inputs in which vision is absent (other content, length 0)."""
    from torch.utils.data import DataLoader

    from kuda_mmsa.model import KuDAConfig, KuDA
    from kuda_mmsa.training.evaluation import predict

    split = _split(tiny_demo_pickle, tiny_bert_dir)
    torch.manual_seed(0)
    model = KuDA(KuDAConfig(feature_dims=[64, 5, 6], seq_lens=[12, 10, 8], pretrained=str(tiny_bert_dir),
                            hidden_size=16, fusion_heads=2, fusion_head_dim=8, fusion_ff_size=32, av_hidden_size=8,
                            av_heads=2, av_ff_size=8, av_layers=2, adapter_heads=2, ratio_source="reliability"))
    corrupted = predict(model, DataLoader(CorruptedDataset(split, Corruption("missing", "V", 1.0)), batch_size=5),
                        "cpu")

    def absent(batch):
        batch = dict(batch)
        batch["vision"] = torch.randn_like(batch["vision"])
        batch["vision_lengths"] = torch.zeros_like(batch["vision_lengths"])
        return batch

    direct = predict(model, DataLoader(split, batch_size=5), "cpu", transform=absent)
    torch.testing.assert_close(corrupted.pred, direct.pred)
    assert torch.all(corrupted.ratio[:, 1] == 0)


def test_families_have_their_own_shapes_and_structure():
    dom, noisy, miss = (make_family(f)["train"] for f in ("dominant", "noisy", "missing"))
    assert dom["vision"].shape[1:] == (40, 12) and noisy["audio"].shape[1:] == (36, 10)
    ann = noisy["annotations"]
    idx = [i for i, a in enumerate(ann) if a == "noisy:audio"]
    assert 0.05 < len(idx) / len(ann) < 0.25
    assert np.all(noisy["regression_labels_A"][idx] == 0)
    gone = [i for i, a in enumerate(miss["annotations"]) if a == "missing:vision"]
    assert np.all(miss["vision_lengths"][gone] == 0) and not miss["vision"][gone].any()
    gone_t = [i for i, a in enumerate(miss["annotations"]) if a == "missing:text"]
    assert not miss["text_bert"][gone_t].any()


# ---------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_demo_pickle):
    from kuda_mmsa.cli.main import main

    d = tmp_path_factory.mktemp("rob")
    cfg = write_tiny_config(d / "tiny.yaml", ratio_source="reliability")
    for name, extra in (("dyn", []), ("static", ["-c", str(write_tiny_config(d / "s.yaml", use_ratio=False))])):
        argv = ["-m", "kuda", "-d", "demo", "-s", "1", "-n", "0", "-v", "0", "--feature-file", str(tiny_demo_pickle),
                "-c", str(cfg), "--model-save-dir", str(d / name), "--res-save-dir", str(d / "r"),
                "--log-dir", str(d / "l"), "--knowledge-dir", str(d / "k")] + extra
        assert main(argv) == 0
    return d


def test_robustness_command_writes_csv_summary_and_plots(two_models, tiny_demo_pickle, tmp_path):
    from kuda_mmsa.cli.main import main

    out = tmp_path / "rob"
    assert main(["robustness", "--weights", str(two_models / "dyn" / "kuda-demo.pth"),
                 str(two_models / "static" / "kuda-demo.pth"), "--labels", "dynamic", "static",
                 "--feature-file", str(tiny_demo_pickle), "--rate", "0.5", "1", "-s", "1", "-s", "2",
                 "--modality", "V", "--out", str(out)]) == 0
    with open(out / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["model", "corruption", "modality", "rate", "seed"]
    assert {"MAE", "Corr", "Mult_acc_2"} <= set(rows[0])
    assert len(rows) == 2 * 3 * 3 * 2          # models x kinds x rates (0 added) x seeds
    clean = {r["model"]: r["MAE"] for r in rows if float(r["rate"]) == 0}
    assert len(set(clean.values())) == 2       # the two models really differ
    with open(out / "robustness_summary.csv") as f:
        summ = list(csv.DictReader(f))
    assert {"RR_MAE", "ER_MAE", "RR_Corr", "ER_Corr"} <= set(summ[0])
    assert len(summ) == 2 * 3 * 2                 # models x kinds x seeds

    # the summary figures from the rows, by MultiBench's definitions (module docstring of
    # kuda_mmsa/training/robustness.py): RR = mean along the curve (trapezoid over the rates),
    # ER = mean over corrupted rates of the model's drop minus the reference's ('dynamic')
    def curve(model, s, metric):
        pts = sorted((float(r["rate"]), float(r[metric])) for r in rows if (r["model"], r["corruption"],
                     r["modality"], int(float(r["seed"]))) == (model, s["corruption"], s["modality"],
                                                                int(float(s["seed"]))))
        return [x for x, _ in pts], [y for _, y in pts]

    for s in summ:
        for metric, sign in (("MAE", -1.0), ("Corr", 1.0)):
            x, y = curve(s["model"], s, metric)
            assert x == [0.0, 0.5, 1.0]
            rr = sum((y[i] + y[i + 1]) / 2 * (x[i + 1] - x[i]) for i in range(2)) / (x[-1] - x[0])
            _, ref = curve("dynamic", s, metric)
            er = sum(sign * ((y[i] - y[0]) - (ref[i] - ref[0])) for i in (1, 2)) / 2
            assert float(s[f"RR_{metric}"]) == pytest.approx(rr, abs=1e-6)
            assert float(s[f"ER_{metric}"]) == pytest.approx(er, abs=1e-6)
    for kind in ("missing", "noise", "swap"):
        png = out / f"robustness-{kind}.png"
        assert png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_ablation_runner_with_robustness(tiny_demo_pickle, tmp_path):
    from kuda_mmsa.experiments.ablation import run_ablation

    cfg = write_tiny_config(tmp_path / "tiny.yaml", epochs=1)
    res = run_ablation("demo", [7], ["kuda", "lf_dnn"], tmp_path / "abl", feature_file=str(tiny_demo_pickle),
                       config_file=str(cfg), verbose_level=0, echo=lambda *a: None,
                       config={"knowledge_dir": str(tmp_path / "k"), "plots": False, "progress": False},
                       robustness={"kinds": ["missing", "swap"], "modalities": ["A"], "rates": [0, 1], "snr_db": 0})
    with open(tmp_path / "abl" / "robustness.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["variant"], r["corruption"], r["rate"]) for r in rows} == {
        (v, k, x) for v in ("kuda", "lf_dnn") for k in ("missing", "swap") for x in ("0.0", "1.0")}
    clean = [r for r in rows if r["variant"] == "kuda" and float(r["rate"]) == 0][0]
    with open(tmp_path / "abl" / "ablation.csv") as f:
        trained = [r for r in csv.DictReader(f) if r["variant"] == "kuda"][0]
    assert float(clean["MAE"]) == pytest.approx(float(trained["MAE"]), abs=1e-4)   # rate 0 = the run's own test
    assert "ER MAE vs lf_dnn" in res["robustness"]["markdown"].read_text()
