"""kuda_mmsa.data.features, in-process: read_features on small MMSA-layout pickles the test
writes by hand, checked against the arrays it wrote (shapes, lengths, labels, fallbacks,
the fingerprint's parts) and the one-paragraph errors for each broken layout."""
import pickle

import numpy as np
import pytest

from kuda_mmsa.data.features import FeatureSpec, read_features
from kuda_mmsa.errors import KudaInputError

L, LA, DA, LV, DV = 5, 6, 3, 4, 2


def _split(n, seed, bert=True, lengths=True, unimodal=False):
    g = np.random.default_rng(seed)
    sd = {"raw_text": np.array([f"text {seed} {i}" for i in range(n)], dtype=object),
          "id": np.array([f"s{seed}_{i}" for i in range(n)], dtype=object),
          "audio": g.normal(size=(n, LA, DA)).astype(np.float32),
          "vision": g.normal(size=(n, LV, DV)).astype(np.float32),
          "regression_labels": g.uniform(-1, 1, size=n).astype(np.float32)}
    if bert:
        ids = g.integers(5, 50, size=(n, L)).astype(np.float32)
        sd["text_bert"] = np.stack([ids, np.ones_like(ids), np.zeros_like(ids)], axis=1)
    else:
        sd["text"] = g.normal(size=(n, L, 7)).astype(np.float32)
    if lengths:
        sd["audio_lengths"] = np.array([i % (LA + 1) for i in range(n)])
        sd["vision_lengths"] = np.array([LV - i % 2 for i in range(n)])
    if unimodal:
        for k in ("regression_labels_T", "regression_labels_A", "regression_labels_V"):
            sd[k] = g.uniform(-1, 1, size=n).astype(np.float32)
    return sd


def _data(**kw):
    return {s: _split(n, i, **kw) for i, (s, n) in enumerate((("train", 4), ("valid", 2), ("test", 3)))}


def _write(tmp_path, data, name="f.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(data))
    return path


def _err(spec):
    with pytest.raises(KudaInputError) as e:
        read_features(spec)
    return str(e.value)


def test_the_default_spec_reads_bert_text_with_lengths_as_they_are(tmp_path):
    data = _data()
    fs = read_features(FeatureSpec(_write(tmp_path, data)))
    assert fs.feature_dims == [0, DA, DV] and fs.seq_lens == [L, LA, LV]
    tr = fs["train"]
    assert tr.get_seq_len() == (L, LA, LV)
    assert tr.audio.shape == (4, LA, DA) and np.array_equal(tr.audio, data["train"]["audio"])
    assert tr.audio_lengths.tolist() == data["train"]["audio_lengths"].tolist()     # length 0 stays 0
    item = tr[2]
    assert set(item["labels"]) == {"M"} and item["labels"]["M"].shape == (1,)
    assert float(item["labels"]["M"]) == pytest.approx(float(data["train"]["regression_labels"][2]))
    assert item["audio_lengths"] == 2 and item["vision_lengths"] == LV
    assert item["raw_text"] == "text 0 2" and item["id"] == "s0_2"
    del data["valid"]["audio_lengths"]
    assert "audio_lengths" in _err(FeatureSpec(_write(tmp_path, data, "g.pkl")))


def test_unimodal_labels_are_read_per_sample_and_their_count_checked(tmp_path):
    data = _data(unimodal=True)
    data["train"]["regression_labels_A"] = data["train"]["regression_labels_A"].reshape(4, 1)
    tr = read_features(FeatureSpec(_write(tmp_path, data), require_unimodal_labels=True))["train"]
    for m, k in zip("TAV", ("regression_labels_T", "regression_labels_A", "regression_labels_V")):
        assert float(tr[3]["labels"][m]) == pytest.approx(float(data["train"][k].reshape(-1)[3]))
    data["valid"]["regression_labels_V"] = np.zeros(3, dtype=np.float32)
    msg = _err(FeatureSpec(_write(tmp_path, data, "g.pkl")))
    assert "split 'valid', key 'regression_labels_V' has 3 values; expected 2" in msg


def test_text_features_aligned_and_normalized(tmp_path):
    data = _data(bert=False, lengths=False)
    fs = read_features(FeatureSpec(_write(tmp_path, data), use_bert=False, aligned=True, normalized=True))
    assert fs.feature_dims == [7, DA, DV] and fs.seq_lens == [L, 1, 1]
    tr = fs["train"]
    assert tr.get_seq_len(use_bert=False) == (L, 1, 1)
    assert np.allclose(tr.vision[:, 0], data["train"]["vision"].mean(axis=1))
    assert np.allclose(tr.audio[:, 0], data["train"]["audio"].mean(axis=1))
    assert "audio_lengths" not in tr[0]
    data["test"]["text"] = data["test"]["text"][:, :, :, None]
    assert "key 'text' has shape" in _err(FeatureSpec(_write(tmp_path, data, "g.pkl"), use_bert=False, aligned=True))


def test_text_bert_without_three_rows_is_refused(tmp_path):
    data = _data()
    data["train"]["text_bert"] = data["train"]["text_bert"][:, :2]
    msg = _err(FeatureSpec(_write(tmp_path, data)))
    assert "key 'text_bert' has shape (4, 2, 5); expected [N, 3, L]" in msg


def test_lengths_stored_as_a_column_and_the_minimum_length(tmp_path):
    data = _data()
    for s in data.values():
        s["audio_lengths"] = s["audio_lengths"].reshape(-1, 1)
        s["vision_lengths"] = s["vision_lengths"].reshape(-1, 1)
    path = _write(tmp_path, data)
    tr = read_features(FeatureSpec(path))["train"]
    assert tr.audio_lengths.tolist() == [0, 1, 2, 3] and tr.vision_lengths.tolist() == [4, 3, 4, 3]
    tr = read_features(FeatureSpec(path, min_length=1))["train"]
    assert tr.audio_lengths.tolist() == [1, 1, 2, 3]


def test_vision_lengths_past_the_sequence_are_refused(tmp_path):
    data = _data()
    data["test"]["vision_lengths"][1] = LV + 1
    assert "key 'vision_lengths'" in _err(FeatureSpec(_write(tmp_path, data)))


def test_a_key_with_another_sample_count_is_refused(tmp_path):
    data = _data()
    data["valid"]["vision"] = data["valid"]["vision"][:1]
    assert "split 'valid': 'vision' has 1 samples but regression_labels has 2" in _err(FeatureSpec(_write(tmp_path, data)))


def test_labels_stored_as_a_column_are_read(tmp_path):
    data = _data()
    data["train"]["regression_labels"] = data["train"]["regression_labels"].reshape(4, 1)
    assert len(read_features(FeatureSpec(_write(tmp_path, data)))["train"]) == 4


def test_minus_inf_is_accepted_in_audio_only(tmp_path):
    data = _data()
    data["train"]["audio"][0, 0, 0] = -np.inf
    assert read_features(FeatureSpec(_write(tmp_path, data)))["train"].audio[0, 0, 0] == 0
    data["train"]["vision"][0, 0, 0] = -np.inf
    assert "key 'vision' contains 0 NaN and 1 infinite" in _err(FeatureSpec(_write(tmp_path, data, "g.pkl")))


def test_raw_texts_and_ids_of_another_length_fall_back(tmp_path):
    data = _data()
    data["train"]["raw_text"] = np.array(["only one"], dtype=object)
    data["train"]["id"] = np.array(["x"], dtype=object)
    tr = read_features(FeatureSpec(_write(tmp_path, data)))["train"]
    assert list(tr.raw_text) == [""] * 4 and list(tr.ids) == ["train_0", "train_1", "train_2", "train_3"]


def test_splits_with_other_padded_lengths_or_dims_are_refused_naming_the_key(tmp_path):
    data = _data()
    data["test"]["text_bert"] = data["test"]["text_bert"][:, :, :4]
    assert "'text_bert' has different [length, dim]" in _err(FeatureSpec(_write(tmp_path, data)))
    data = _data()
    data["valid"]["audio"] = data["valid"]["audio"][:, :5]
    data["valid"]["audio_lengths"] = np.array([0, 1])
    assert "'audio' has different [length, dim]" in _err(FeatureSpec(_write(tmp_path, data, "g.pkl")))
    data = _data(bert=False, lengths=False)
    data["valid"]["text"] = data["valid"]["text"][:, :, :6]
    assert "'text' has different" in _err(FeatureSpec(_write(tmp_path, data, "h.pkl"), use_bert=False, aligned=True))
    data = _data(bert=False, lengths=False)
    data["valid"]["text"] = data["valid"]["text"][:, :4]             # same dim, shorter padded length
    assert "'text' has different" in _err(FeatureSpec(_write(tmp_path, data, "k.pkl"), use_bert=False, aligned=True))


def test_a_per_modality_file_replaces_that_modality_and_its_lengths(tmp_path):
    data, other = _data(), _data()
    for s in other.values():
        s["audio"] = s["audio"] + 10
        s["audio_lengths"] = np.full(len(s["audio"]), LA)
    path, apath = _write(tmp_path, data), _write(tmp_path, other, "a.pkl")
    fs = read_features(FeatureSpec(path, overrides={"A": apath, "V": ""}))
    assert np.array_equal(fs["train"].audio, other["train"]["audio"])
    assert fs["train"].audio_lengths.tolist() == [LA] * 4
    assert np.array_equal(fs["train"].vision, data["train"]["vision"])
    assert set(fs.fingerprint["overrides"]) == {"A"}
    for m, what in (("A", "audio"), ("T", "text"), ("V", "vision")):
        msg = _err(FeatureSpec(path, overrides={m: tmp_path / "absent.pkl"}))
        assert f"{what} feature file (-F{m.lower()})" in msg
    del other["test"]
    assert "no split(s) ['test']" in _err(FeatureSpec(path, overrides={"A": _write(tmp_path, other, "b.pkl")}))
    for m, key in (("A", "audio_lengths"), ("V", "vision_lengths"), ("T", "text_bert")):
        bad = _data()
        del bad["valid"][key]
        msg = _err(FeatureSpec(path, overrides={m: _write(tmp_path, bad, f"{m}.pkl")}))
        assert f"{m}.pkl" in msg and key in msg


def test_the_fingerprint_records_the_file_and_each_splits_shapes_and_ids_labels_hash(tmp_path):
    data = _data()
    path = _write(tmp_path, data)
    fp = read_features(FeatureSpec(path)).fingerprint
    st = path.stat()
    assert fp["file"] == {"path": str(path.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    assert fp["overrides"] == {}
    tr = fp["splits"]["train"]
    assert {k: tr[k] for k in ("n", "text", "audio", "vision")} == \
        {"n": 4, "text": [3, L], "audio": [LA, DA], "vision": [LV, DV]}
    assert set(tr) == {"n", "text", "audio", "vision", "ids_labels"}
    same = read_features(FeatureSpec(_write(tmp_path, data, "copy.pkl"))).fingerprint["splits"]
    assert same == fp["splits"]
    data["train"]["regression_labels"][1] += 0.5
    assert read_features(FeatureSpec(_write(tmp_path, data, "l.pkl"))).fingerprint["splits"]["train"]["ids_labels"] \
        != tr["ids_labels"]
    data = _data()
    data["train"]["id"] = np.array(["s0_0s0_1", "", "s0_2", "s0_3"], dtype=object)      # ids joined differently
    assert read_features(FeatureSpec(_write(tmp_path, data, "i.pkl"))).fingerprint["splits"]["train"]["ids_labels"] \
        != tr["ids_labels"]
