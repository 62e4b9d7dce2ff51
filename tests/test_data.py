"""Demo data generator, tiny BERT, validated loader, config merge, and every bad-input
error (one paragraph naming file and key)."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from kuda_mmsa.errors import KudaInputError

LAYOUT = {"raw_text", "id", "text", "text_bert", "audio", "vision", "audio_lengths",
          "vision_lengths", "regression_labels", "classification_labels", "annotations",
          "regression_labels_T", "regression_labels_A", "regression_labels_V"}


def one_paragraph(msg):
    assert "\n" not in msg and "Traceback" not in msg
    return msg


# ----------------------------------------------------------------- generator
def test_layout_shapes_and_padding(tiny_demo_data):
    from tests.conftest import TINY_DEMO as P

    assert set(tiny_demo_data) == {"train", "valid", "test"}
    for split, n in (("train", P["n_train"]), ("valid", P["n_valid"]), ("test", P["n_test"])):
        d = tiny_demo_data[split]
        assert set(d) == LAYOUT
        assert d["text_bert"].shape == (n, 3, P["text_len"])
        assert d["text"].shape == (n, P["text_len"], P["text_dim"])
        assert d["audio"].shape == (n, P["audio_len"], P["audio_dim"])
        assert d["vision"].shape == (n, P["vision_len"], P["vision_dim"])
        for key in ("text", "text_bert", "audio", "vision"):
            assert np.isfinite(d[key]).all()
        for m, L in (("audio", P["audio_len"]), ("vision", P["vision_len"])):
            lens = d[f"{m}_lengths"]
            assert lens.shape == (n,) and (lens >= 1).all() and (lens <= L).all()
            for i in range(n):
                assert not d[m][i, lens[i]:].any()          # zero padding
                assert np.abs(d[m][i, : lens[i]]).sum() > 0
        ids, mask = d["text_bert"][:, 0], d["text_bert"][:, 1]
        assert (ids[mask == 0] == 0).all() and (ids[:, 0] == 2).all()   # [CLS]
        assert len(set(np.unique(mask).tolist()) - {0.0, 1.0}) == 0


def test_semantics_dominant_modality(tiny_demo_data):
    from kuda_mmsa.data.demo import make_demo_splits

    d = make_demo_splits(n_train=300, n_valid=3, n_test=3, text_dim=4, seed=5)["train"]
    y = d["regression_labels"]
    assert y.min() >= -1 and y.max() <= 1
    dom = np.array([a.split(":")[1] for a in d["annotations"]])
    counts = {m: int((dom == m).sum()) for m in ("text", "vision", "audio")}
    assert max(counts.values()) - min(counts.values()) <= 1           # balanced
    for m, key in (("text", "T"), ("vision", "V"), ("audio", "A")):
        np.testing.assert_allclose(d[f"regression_labels_{key}"][dom == m], y[dom == m])
    # features encode their own unimodal score
    from kuda_mmsa.data import vocab as V

    ids = d["text_bert"][:, 0].astype(int)
    pos = np.isin(ids, [V.TOKEN_TO_ID[w] for w in V.POSITIVE]).sum(1)
    neg = np.isin(ids, [V.TOKEN_TO_ID[w] for w in V.NEGATIVE]).sum(1)
    assert np.corrcoef(pos - neg, d["regression_labels_T"])[0, 1] > 0.5
    for m, key in (("vision", "V"), ("audio", "A")):
        means = d[m].sum(1) / d[f"{m}_lengths"][:, None]
        r = max(abs(np.corrcoef(means[:, j], d[f"regression_labels_{key}"])[0, 1])
                for j in range(means.shape[1]))
        assert r > 0.5


def test_generator_is_deterministic():
    from kuda_mmsa.data.demo import make_demo_splits

    a = make_demo_splits(n_train=9, n_valid=3, n_test=3, text_dim=4, seed=1)
    b = make_demo_splits(n_train=9, n_valid=3, n_test=3, text_dim=4, seed=1)
    c = make_demo_splits(n_train=9, n_valid=3, n_test=3, text_dim=4, seed=2)
    for k in ("audio", "vision", "text_bert", "regression_labels"):
        np.testing.assert_array_equal(a["train"][k], b["train"][k])
    assert not np.array_equal(a["train"]["audio"], c["train"]["audio"])


def test_ensure_demo_data_caches_atomically(tmp_path):
    from kuda_mmsa.data import demo_facts, ensure_demo_data, facts_of

    kw = dict(n_train=6, n_valid=3, n_test=3, text_dim=4)
    p1 = ensure_demo_data(tmp_path, **kw)
    mtime = p1.stat().st_mtime_ns
    p2 = ensure_demo_data(tmp_path, **kw)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime
    assert p1.parent == tmp_path / "demo"
    assert not [f for f in os.listdir(p1.parent) if f.endswith(".tmp")]
    with open(p1, "rb") as f:
        facts = facts_of(pickle.load(f))
    assert demo_facts(p1) == {k: facts[k] for k in ("seq_lens", "feature_dims", "splits", "train_samples")}
    assert demo_facts(p1)["splits"] == {"train": 6, "valid": 3, "test": 3}
    assert ensure_demo_data(tmp_path, **dict(kw, seed=9)) != p1
    with pytest.raises(TypeError):
        ensure_demo_data(tmp_path, n_trian=3)


def test_cache_env_var(tmp_path, monkeypatch):
    from kuda_mmsa.data import cache_root

    monkeypatch.setenv("KUDA_MMSA_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(tmp_path) == tmp_path


def test_tiny_bert_offline(tiny_bert_dir, monkeypatch):
    from transformers import AutoConfig, BertModel, BertTokenizer

    from kuda_mmsa.data import vocab as V

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = AutoConfig.from_pretrained(str(tiny_bert_dir), local_files_only=True)
    assert cfg.vocab_size == V.VOCAB_SIZE and cfg.num_hidden_layers == 4
    assert (tiny_bert_dir / "vocab.txt").read_text().split("\n")[: V.VOCAB_SIZE] == V.TOKENS
    tok = BertTokenizer.from_pretrained(str(tiny_bert_dir))
    assert tok("pos001 neg002")["input_ids"] == [V.CLS_ID, V.TOKEN_TO_ID["pos001"],
                                                 V.TOKEN_TO_ID["neg002"], V.SEP_ID]
    ids = torch.tensor([[2, 10, 200, 3]])
    outputs = []
    for seed in (0, 1):      # the weights come from the files, not from the random stream
        torch.manual_seed(seed)
        outputs.append(BertModel.from_pretrained(str(tiny_bert_dir)).eval()(ids).last_hidden_state)
    assert outputs[0].shape == (1, 4, 64)
    assert torch.equal(outputs[0], outputs[1])


def test_tiny_bert_deterministic_and_keeps_rng(tmp_path):
    from kuda_mmsa.data import ensure_demo_text_encoder

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = ensure_demo_text_encoder(tmp_path / "a")
    assert torch.equal(before, torch.get_rng_state())      # caller's RNG untouched
    b = ensure_demo_text_encoder(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


# ----------------------------------------------------------------- loader
def test_loader_batches_like_mmsa(loader_args):
    from kuda_mmsa.mmsa.loader import MMDataLoader

    torch.manual_seed(1)
    loaders = MMDataLoader(loader_args, num_workers=0)
    assert set(loaders) == {"train", "valid", "test"}
    batch = next(iter(loaders["train"]))
    assert set(batch) == {"raw_text", "text", "audio", "vision", "index", "id", "labels",
                          "audio_lengths", "vision_lengths"}
    assert batch["text"].shape == (8, 3, 12) and batch["text"].dtype == torch.float32
    assert batch["audio"].shape == (8, 10, 5) and batch["vision"].shape == (8, 8, 6)
    assert set(batch["labels"]) == {"M", "T", "A", "V"}     # dataset name is not 'sims'
    assert batch["labels"]["M"].shape == (8, 1)
    assert batch["audio_lengths"].dtype == torch.int64
    assert loader_args["seq_lens"] == [12, 10, 8] and loader_args["feature_dims"] == [64, 5, 6]
    assert loader_args["train_samples"] == 30


def test_loader_shuffle_is_deterministic(loader_args):
    from kuda_mmsa.mmsa.loader import MMDataLoader

    def order(seed, draws=0):
        torch.manual_seed(seed)
        loaders = MMDataLoader(loader_args, 0)
        torch.rand(draws)    # what model initialisation draws in between
        return [int(i) for b in loaders["train"] for i in b["index"]]

    assert order(1111) == order(1111)
    assert order(1111) != order(1112)
    # the model's random numbers never change the data order: each loader has its own
    # generator, seeded when the loaders are built
    assert order(1111, draws=100) == order(1111) == order(1111, draws=12345)
    first_epoch = order(1111)
    assert sorted(first_epoch) == list(range(30)) and first_epoch != list(range(30))
    torch.manual_seed(5)
    valid = MMDataLoader(loader_args, 0)["valid"]
    assert [int(i) for b in valid for i in b["index"]] == list(range(12))


def test_load_splits_for_stage1(loader_args):
    from kuda_mmsa.mmsa.loader import load_features

    ds = load_features(loader_args, require_unimodal_labels=True).splits
    assert len(ds["train"]) == 30 and ds["test"].annotations[0].startswith("dominant:")


def test_need_normalized_averages_time(loader_args):
    from kuda_mmsa.mmsa.loader import load_features

    loader_args["need_normalized"] = True
    ds = load_features(loader_args).splits
    assert ds["train"].audio.shape == (30, 1, 5) and loader_args["seq_lens"][1] == 1


def test_audio_neg_inf_becomes_zero(loader_args, write_variant):
    from kuda_mmsa.mmsa.loader import load_features

    def mutate(d):
        d["train"]["audio"][0, 0, 0] = -np.inf
    loader_args["custom_feature"] = str(write_variant(mutate))
    assert load_features(loader_args)["train"].audio[0, 0, 0] == 0


# ----------------------------------------------------------------- bad input
def _err(loader_args, path, **extra):
    from kuda_mmsa.mmsa.loader import load_features

    loader_args["custom_feature"] = str(path)
    loader_args.update(extra)
    with pytest.raises(KudaInputError) as e:
        load_features(loader_args)
    return one_paragraph(str(e.value))


def test_missing_feature_file_names_path_and_sources(loader_args, tmp_path):
    msg = _err(loader_args, tmp_path / "nope.pkl")
    assert str(tmp_path / "nope.pkl") in msg
    for hint in ("--data-root", "$MMSA_DATA_ROOT", "--feature-file"):
        assert hint in msg


def test_corrupt_and_truncated_pickles(loader_args, tmp_path, tiny_demo_pickle):
    bad = tmp_path / "garbage.pkl"
    bad.write_bytes(b"this is not a pickle at all")
    assert "corrupt or truncated" in _err(loader_args, bad)
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(tiny_demo_pickle.read_bytes()[:5000])
    assert "corrupt or truncated" in _err(loader_args, cut)
    lst = tmp_path / "list.pkl"
    lst.write_bytes(pickle.dumps([1, 2]))
    assert "list" in _err(loader_args, lst)


def test_missing_split_and_key(loader_args, write_variant):
    msg = _err(loader_args, write_variant(lambda d: d.pop("valid")))
    assert "'valid'" in msg or "['valid']" in msg
    msg = _err(loader_args, write_variant(lambda d: d["test"].pop("vision_lengths")))
    assert "vision_lengths" in msg and "'test'" in msg


def test_missing_unimodal_labels_for_stage1(loader_args, write_variant):
    from kuda_mmsa.mmsa.loader import load_features

    def drop(d):
        for s in d.values():
            s.pop("regression_labels_T")
    loader_args["custom_feature"] = str(write_variant(drop))
    assert set(load_features(loader_args)["train"].labels) == {"M"}
    with pytest.raises(KudaInputError, match="regression_labels_T"):
        load_features(loader_args, require_unimodal_labels=True)


def test_wrong_rank(loader_args, write_variant):
    def flat(d):
        d["train"]["vision"] = d["train"]["vision"].reshape(30, -1)
    msg = _err(loader_args, write_variant(flat))
    assert "'vision'" in msg and "2-D" in msg and "[N, L_V, d_V]" in msg


def test_feature_dims_are_read_from_the_data(loader_args, write_variant):
    """Shapes come from the file (as MMSA does), whatever the dataset table says."""
    from kuda_mmsa.mmsa.loader import load_features

    loader_args["custom_feature"] = str(write_variant())
    loader_args.update(feature_dims=[64, 33, 709], seq_lens=[39, 400, 55])
    load_features(loader_args)
    assert loader_args["feature_dims"] == [64, 5, 6] and loader_args["seq_lens"] == [12, 10, 8]


def test_lengths_longer_than_sequence(loader_args, write_variant):
    def longer(d):
        d["valid"]["audio_lengths"][3] = 99
    msg = _err(loader_args, write_variant(longer))
    assert "audio_lengths" in msg and "'valid'" in msg and "99" in msg and "10" in msg


def test_nan_features_name_split_key_count(loader_args, write_variant):
    def nan(d):
        d["test"]["vision"][1, 0, :2] = np.nan
    msg = _err(loader_args, write_variant(nan))
    assert "'test'" in msg and "'vision'" in msg and "2 NaN" in msg
    def posinf(d):
        d["train"]["audio"][0, 0, 0] = np.inf
    assert "infinite" in _err(loader_args, write_variant(posinf))


def test_token_ids_outside_vocabulary(loader_args, write_variant):
    def chinese(d):
        d["train"]["text_bert"][0, 0, 1] = 8000.0
    msg = _err(loader_args, write_variant(chinese))
    assert "8000" in msg and "vocabulary of 517" in msg and "--pretrained" in msg


def test_sample_count_mismatch(loader_args, write_variant):
    def short(d):
        d["train"]["audio"] = d["train"]["audio"][:-1]
        d["train"]["audio_lengths"] = d["train"]["audio_lengths"][:-1]
    msg = _err(loader_args, write_variant(short))
    assert "'train'" in msg and "29" in msg and "30" in msg


# ----------------------------------------------------------------- datasets + config
def test_dataset_table_and_aliases():
    from kuda_mmsa.mmsa.datasets import DATASETS, canonical_name, get_facts, metrics_family

    assert canonical_name("SIMS2") == "simsv2"
    assert get_facts("sims2")["featurePath"] == "SIMSv2/Processed/unaligned.pkl"
    assert metrics_family("mosei") == "MOSEI" and metrics_family("demo") == "SIMS"
    assert DATASETS["sims"]["seq_lens"] == [39, 400, 55]          # [T, A, V]
    assert DATASETS["sims"]["feature_dims"] == [768, 33, 709]
    with pytest.raises(KudaInputError, match="simsv2") as e:
        get_facts("iemocap")
    one_paragraph(str(e.value))


