"""--protocol of `robustness` and `ablate --robustness`: ours (unchanged default), tfrnet
(MMSA's TFR-Net missing option) and lnln (LNLN's evaluation). References are written here:
MMSA's own generate_m, hand-built batches, and figures recomputed from the written rows."""
import csv
import re

import numpy as np
import pytest
import torch
from tiny_kuda import write_tiny_config  # tests/ is on sys.path

from kuda_mmsa.data.protocols import RandomMissing, RandomMissingDataset, text_encoder_unk_id
from kuda_mmsa.errors import KudaInputError

CLS, SEP, UNK = 2, 3, 1          # ids of a BERT-style vocabulary, chosen here for the hand-built batch


class ListSplit:
    """A split as the corruption wrappers see it: items with text (ids, mask, segments), audio,
    vision and their lengths."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def hand_split(n=3, text_len=10, audio_len=7, audio_dim=2, vision_len=6, vision_dim=3, seed=0):
    """n samples; sample i has 4 + i text tokens ([CLS] w.. [SEP], then padding), audio / vision
    shorter than their padded length, and non-zero padding (to see that it is left alone)."""
    g = np.random.default_rng(seed)
    items = []
    for i in range(n):
        t = 4 + (i % (text_len - 3))
        ids = np.zeros(text_len)
        ids[:t] = [CLS] + list(g.integers(10, 90, size=t - 2)) + [SEP]
        mask = (np.arange(text_len) < t).astype(float)
        seg = np.where(np.arange(text_len) < 2, 0.0, 1.0) * mask
        la, lv = 3 + i % (audio_len - 2), 2 + i % (vision_len - 1)
        items.append({"text": torch.tensor(np.stack([ids, mask, seg]), dtype=torch.float32),
                      "audio": torch.tensor(g.normal(size=(audio_len, audio_dim)) + 5, dtype=torch.float32),
                      "vision": torch.tensor(g.normal(size=(vision_len, vision_dim)) + 5, dtype=torch.float32),
                      "audio_lengths": la, "vision_lengths": lv, "index": i})
    return ListSplit(items)


def mmsa_generate_m(*args, **kwargs):
    from MMSA.data_loader import MMDataset

    return MMDataset.generate_m(None, *args, **kwargs)    # it uses nothing of self


# ---------------------------------------------------------------------- tfrnet / lnln masking
@pytest.mark.parametrize("rate,seed", [(0.3, 1111), (0.7, 5)])
def test_text_mask_is_mmsa_generate_m(rate, seed):
    """MMSA 2.2.1's own function on the same ids: the same tokens become [UNK] (MMSA writes
    100, so the test uses 100 as the [UNK] id)."""
    split = hand_split(n=10, text_len=12)          # sample 8 fills the whole length (no padding)
    ids = np.stack([split[i]["text"][0].numpy() for i in range(10)])
    mask = np.stack([split[i]["text"][1].numpy() for i in range(10)])
    assert mask[8].all()
    expected, *_ = mmsa_generate_m(ids.copy(), mask.copy(), None, rate, seed, mode="text")
    ds = RandomMissingDataset(split, RandomMissing.of({"T": rate}, seed), unk_id=100)
    got = np.stack([ds[i]["text"][0].numpy() for i in range(10)])
    np.testing.assert_array_equal(got, expected)
    assert (got == 100).any() and (got != ids).any()


def test_frame_mask_is_mmsa_generate_m_within_the_length():
    split = hand_split(n=5)
    rate, seed = 0.4, 1112
    audio = np.stack([split[i]["audio"].numpy() for i in range(5)])
    lengths = [split[i]["audio_lengths"] for i in range(5)]
    expected, *_ = mmsa_generate_m(audio.copy(), None, lengths, rate, seed, mode="audio")
    ds = RandomMissingDataset(split, RandomMissing.of({"A": rate}, seed))
    for i in range(5):
        got, L = ds[i]["audio"].numpy(), lengths[i]
        np.testing.assert_array_equal(got[:L], expected[i][:L])
        np.testing.assert_array_equal(got[L:], audio[i][L:])       # padding untouched (MMSA zeroes it)
        assert ds[i]["audio_lengths"] == L


def test_exactly_which_tokens_become_unk_by_hand():
    """The rule written out: u = np.random.seed(s); uniform(N, L); a true token other than
    [CLS] and the last one ([SEP]) is [UNK] where u <= rate."""
    split = hand_split(n=4, text_len=10)
    rate, seed = 0.5, 42
    np.random.seed(seed)
    u = np.random.uniform(size=(4, 10))
    ds = RandomMissingDataset(split, RandomMissing.of({"T": rate}, seed), unk_id=UNK)
    for i in range(4):
        before, after = split[i]["text"], ds[i]["text"]
        t = int(before[1].sum())
        want = [j for j in range(1, t - 1) if u[i, j] <= rate]
        assert [j for j in range(10) if after[0, j] != before[0, j]] == want
        assert all(after[0, j] == UNK for j in want)
        assert after[0, 0] == CLS and after[0, t - 1] == SEP
        assert torch.equal(after[1:], before[1:])                 # attention mask and segments kept
        assert torch.equal(after[0, t:], before[0, t:])           # padding kept


def test_rate_one_and_rate_zero():
    split = hand_split(n=4)
    full = RandomMissingDataset(split, RandomMissing.of({"T": 1.0, "V": 1.0, "A": 1.0}, 3), unk_id=UNK)
    for i in range(4):
        b, a = split[i], full[i]
        t = int(b["text"][1].sum())
        assert a["text"][0, 0] == CLS and a["text"][0, t - 1] == SEP and torch.all(a["text"][0, 1:t - 1] == UNK)
        for key in ("audio", "vision"):
            L = b[f"{key}_lengths"]
            assert not a[key][:L].any() and torch.equal(a[key][L:], b[key][L:])
            assert a[f"{key}_lengths"] == L
    clean = RandomMissingDataset(split, RandomMissing.of({"T": 0.0, "V": 0.0, "A": 0.0}, 3), unk_id=UNK)
    for i in range(4):
        assert all(torch.equal(clean[i][k], split[i][k]) for k in ("text", "audio", "vision"))


def test_each_modality_has_its_own_rate_and_the_others_are_untouched():
    split = hand_split(n=4)
    ds = RandomMissingDataset(split, RandomMissing.of({"A": 1.0, "V": 0.0}, 9), unk_id=UNK)
    for i in range(4):
        assert torch.equal(ds[i]["text"], split[i]["text"]) and torch.equal(ds[i]["vision"], split[i]["vision"])
        assert not ds[i]["audio"][:split[i]["audio_lengths"]].any()


def test_same_seed_same_mask_other_seed_other_mask():
    split = hand_split(n=8, text_len=16)

    def texts(seed):
        ds = RandomMissingDataset(split, RandomMissing.of({"T": 0.5, "V": 0.5}, seed), unk_id=UNK)
        return torch.stack([ds[i]["text"] for i in range(8)]), torch.stack([ds[i]["vision"] for i in range(8)])

    a, b, c = texts(1111), texts(1111), texts(1112)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.8])
def test_realised_rate_is_the_asked_rate(rate):
    split = hand_split(n=400, text_len=30, audio_len=25, vision_len=20)
    ds = RandomMissingDataset(split, RandomMissing.of({"T": rate, "A": rate}, 7), unk_id=UNK)
    unk = inner = gone = frames = 0
    for i in range(len(split)):
        t = int(split[i]["text"][1].sum())
        unk += int((ds[i]["text"][0, 1:t - 1] == UNK).sum())
        inner += t - 2
        L = split[i]["audio_lengths"]
        gone += int((ds[i]["audio"][:L] == 0).all(-1).sum())
        frames += L
    assert abs(unk / inner - rate) < 0.03 and abs(gone / frames - rate) < 0.03


def test_text_without_tokens_and_text_as_features():
    split = hand_split(n=2)
    split.items[0]["text"] = torch.zeros_like(split.items[0]["text"])     # no token at all
    ds = RandomMissingDataset(split, RandomMissing.of({"T": 1.0}, 1), unk_id=UNK)
    assert torch.equal(ds[0]["text"], split[0]["text"])
    feats = ListSplit([{"text": torch.ones(5, 4), "audio": torch.ones(3, 2), "vision": torch.ones(3, 2)}])
    ds = RandomMissingDataset(feats, RandomMissing.of({"T": 1.0}, 1), bert_text=False)
    assert not ds[0]["text"].any()                         # no text length: every token vector zeroed


def test_bad_rates_and_modalities_are_clear_errors():
    with pytest.raises(KudaInputError, match=r"1\.5.*outside \[0, 1\].*--rate"):
        RandomMissing.of({"T": 1.5})
    with pytest.raises(KudaInputError, match="'X'"):
        RandomMissing.of({"X": 0.5})
    with pytest.raises(KudaInputError, match=r"\[UNK\]"):
        RandomMissingDataset(hand_split(n=2), RandomMissing.of({"T": 0.5}), unk_id=None)


def test_unk_id_is_read_from_the_text_encoder(tiny_bert_dir, tmp_path):
    tokens = (tiny_bert_dir / "vocab.txt").read_text().splitlines()
    assert text_encoder_unk_id(tiny_bert_dir) == tokens.index("[UNK]")
    assert text_encoder_unk_id(None) is None
    only_vocab = tmp_path / "vocab_only"            # no tokenizer config: vocab.txt alone is read
    only_vocab.mkdir()
    (only_vocab / "vocab.txt").write_text("[PAD]\nhello\n[UNK]\n[CLS]\n")
    assert text_encoder_unk_id(only_vocab) == 2
    assert text_encoder_unk_id(tmp_path / "nothing_here") is None


def test_protocol_grids():
    from kuda_mmsa.training.protocols import LNLN_SEEDS, default_rates, default_seeds, modality_sets

    assert list(default_rates("lnln")) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert list(default_rates("ours")) == list(default_rates("tfrnet")) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(LNLN_SEEDS) == default_seeds("lnln", [1]) == [1111, 1112, 1113] and default_seeds("ours", [1]) == [1]
    assert modality_sets("tfrnet", ["A", "T"]) == ["A", "T", "TA"] and modality_sets("tfrnet", ["V"]) == ["V"]
    assert modality_sets("lnln", ["V"]) == ["TVA"]
    with pytest.raises(KudaInputError, match=r"'bogus' \(--protocol\)"):
        default_rates("bogus")


# ---------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_demo_pickle):
    from kuda_mmsa.cli.main import main

    d = tmp_path_factory.mktemp("protocols")
    cfg = write_tiny_config(d / "tiny.yaml", ratio_source="reliability")
    assert main(["-m", "kuda", "-d", "demo", "-s", "1", "-n", "0", "-v", "0", "--feature-file", str(tiny_demo_pickle),
                 "-c", str(cfg), "--model-save-dir", str(d / "m"), "--res-save-dir", str(d / "r"),
                 "--log-dir", str(d / "l"), "--knowledge-dir", str(d / "k")]) == 0
    return d / "m" / "kuda-demo.pth"


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _robustness(weights, pickle, out, *extra):
    from kuda_mmsa.cli.main import main

    return main(["robustness", "--weights", str(weights), str(weights), "--labels", "a", "b",
                 "--feature-file", str(pickle), "--out", str(out), *extra])


def test_default_protocol_is_ours_and_unchanged(trained, tiny_demo_pickle, tmp_path):
    args = ["--rate", "0.5", "-s", "3", "--modality", "V", "A"]
    assert _robustness(trained, tiny_demo_pickle, tmp_path / "default", *args) == 0
    assert _robustness(trained, tiny_demo_pickle, tmp_path / "ours", *args, "--protocol", "ours") == 0
    for name in ("robustness.csv", "robustness_summary.csv", "robustness.md"):
        assert (tmp_path / "default" / name).read_bytes() == (tmp_path / "ours" / name).read_bytes()
    rows = _rows(tmp_path / "default" / "robustness.csv")
    assert {r["corruption"] for r in rows} == {"missing", "noise", "swap"} and {r["modality"] for r in rows} == {"V", "A"}
    assert not list((tmp_path / "default").glob("robustness-tfrnet*")) and "mean over rates" not in \
        (tmp_path / "default" / "robustness.md").read_text()


def test_tfrnet_command(trained, tiny_demo_pickle, tmp_path):
    out = tmp_path / "tfr"
    assert _robustness(trained, tiny_demo_pickle, out, "--protocol", "tfrnet", "--rate", "0.5", "1",
                       "-s", "1", "-s", "2") == 0
    rows = _rows(out / "robustness-tfrnet.csv")
    assert {r["corruption"] for r in rows} == {"tfrnet"}
    assert {(r["modality"], float(r["rate"])) for r in rows} == {(m, x) for m in ("T", "V", "A", "TVA")
                                                                 for x in (0.0, 0.5, 1.0)}
    assert len(rows) == 2 * 4 * 3 * 2                         # models x modality sets x rates x seeds
    clean = {r["MAE"] for r in rows if float(r["rate"]) == 0}
    assert len(clean) == 1                                    # rate 0 is the clean test, for every modality
    assert any(r["MAE"] not in clean for r in rows if float(r["rate"]) == 1)     # the corruption acts
    md = (out / "robustness-tfrnet.md").read_text()
    assert "#### tfrnet, modality TVA" in md and "RR MAE" in md and "ER MAE vs a" in md and "±" in md
    assert (out / "robustness-tfrnet.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "robustness.csv").exists()


def test_lnln_command_defaults_and_mean_over_rates(trained, tiny_demo_pickle, tmp_path):
    out = tmp_path / "lnln"
    assert _robustness(trained, tiny_demo_pickle, out, "--protocol", "lnln") == 0
    rows = _rows(out / "robustness-lnln.csv")
    assert {r["corruption"] for r in rows} == {"lnln"} and {r["modality"] for r in rows} == {"TVA"}
    assert sorted({float(r["rate"]) for r in rows}) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert sorted({int(r["seed"]) for r in rows}) == [1111, 1112, 1113]
    assert len({r["MAE"] for r in rows if r["model"] == "a" and float(r["rate"]) == 0.9}) > 1   # masks differ per seed
    assert (out / "robustness-lnln.png").read_bytes()[:4] == b"\x89PNG"       # the TVA panel is drawn
    summ = _rows(out / "robustness-lnln_summary.csv")
    md = (out / "robustness-lnln.md").read_text()
    per_seed = {}
    for model in ("a", "b"):
        for seed in (1111, 1112, 1113):
            mine = [r for r in rows if r["model"] == model and int(r["seed"]) == seed]
            assert len(mine) == 10
            per_seed[(model, seed)] = {m: sum(float(r[m]) for r in mine) / 10 for m in ("MAE", "Corr")}
            s = [s for s in summ if s["model"] == model and int(float(s["seed"])) == seed][0]
            for m in ("MAE", "Corr"):
                assert float(s[f"Mean_{m}"]) == pytest.approx(per_seed[(model, seed)][m], abs=1e-9)
    header = [c.strip() for c in md.splitlines()[4].strip("|").split("|")]
    line = [c.strip() for c in [ln for ln in md.splitlines() if ln.startswith("| a |")][0].strip("|").split("|")]
    for m in ("MAE", "Corr"):
        vals = [per_seed[("a", s)][m] for s in (1111, 1112, 1113)]
        cell = line[header.index(f"{m} mean over rates")]
        assert cell == f"{np.mean(vals):.4f} ± {np.std(vals):.4f}"
    assert "RR MAE" in header and "ER MAE vs a" in header


def _error(capsys, argv):
    from kuda_mmsa.cli.main import main

    try:
        code = main(argv)
    except SystemExit as e:       # argparse's usage errors
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    return err


def test_bad_protocol_options_are_one_paragraph(capsys, tmp_path):
    w = str(tmp_path / "w.pth")           # never read: the options are refused first
    err = _error(capsys, ["robustness", "--weights", w, "--protocol", "tfrnett"])
    assert "--protocol" in err and "tfrnett" in err
    err = _error(capsys, ["robustness", "--weights", w, "--protocol", "tfrnet", "--rate", "0.5", "1.5"])
    assert err.count("\n") == 0 and "--rate" in err and "1.5" in err
    err = _error(capsys, ["robustness", "--weights", w, "--protocol", "lnln", "--modality", "T"])
    assert err.count("\n") == 0 and "--modality T" in err and "lnln" in err
    err = _error(capsys, ["robustness", "--weights", w, "--protocol", "tfrnet", "--corrupt", "noise"])
    assert err.count("\n") == 0 and "--corrupt noise" in err
    err = _error(capsys, ["ablate", "-d", "demo", "--protocol", "lnln", "--out", str(tmp_path / "a")])
    assert err.count("\n") == 0 and "--robustness" in err
    err = _error(capsys, ["ablate", "-d", "demo", "--robustness", "swap", "--protocol", "lnln",
                          "--out", str(tmp_path / "a")])
    assert err.count("\n") == 0 and "--robustness swap" in err


def test_ablation_runner_with_a_protocol(tiny_demo_pickle, tmp_path):
    from kuda_mmsa.experiments.ablation import run_ablation

    with pytest.raises(KudaInputError, match="'nope'"):          # refused before any cell trains
        run_ablation("demo", [7], ["kuda"], tmp_path / "bad", robustness={"protocol": "nope", "rates": [0]})
    assert not (tmp_path / "bad" / "ablation.csv").exists()
    cfg = write_tiny_config(tmp_path / "tiny.yaml", epochs=1)
    said = []
    kwargs = dict(feature_file=str(tiny_demo_pickle), config_file=str(cfg), verbose_level=0, echo=said.append,
                  config={"knowledge_dir": str(tmp_path / "k"), "plots": False, "progress": False})
    grid = {"protocol": "tfrnet", "kinds": ["missing"], "modalities": ["A"], "rates": [0, 1], "snr_db": 0}
    res = run_ablation("demo", [7], ["kuda"], tmp_path / "abl", robustness=grid, **kwargs)
    rows = _rows(tmp_path / "abl" / "robustness-tfrnet.csv")
    assert {(r["variant"], r["corruption"], r["modality"], r["rate"]) for r in rows} == {
        ("kuda", "tfrnet", "A", "0.0"), ("kuda", "tfrnet", "A", "1.0")}
    assert {r["seed"] for r in rows} == {"7"}                  # the cell's seed draws its mask
    assert not (tmp_path / "abl" / "robustness.csv").exists()
    assert res["robustness"]["markdown"].name == "robustness-tfrnet.md"
    said.clear()
    run_ablation("demo", [7], ["kuda"], tmp_path / "abl", robustness=grid, **kwargs)     # resumable
    assert not any("robustness of" in s for s in said)
    clean = [r for r in rows if float(r["rate"]) == 0][0]
    trained = _rows(tmp_path / "abl" / "ablation.csv")[0]
    assert float(clean["MAE"]) == pytest.approx(float(trained["MAE"]), abs=1e-4)
