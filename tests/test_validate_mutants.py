"""kuda_mmsa.data.validate, in-process: the one-paragraph errors a user reads when a feature
file is broken (what they name and the counts they give), and the values that must pass
(zero lengths, ids 0 and vocab_size - 1, -inf audio only where asked). Counts are computed
here by plain Python over the arrays the test builds."""
import pickle

import numpy as np
import pytest

from kuda_mmsa.data import validate
from kuda_mmsa.errors import KudaInputError


def _msg(excinfo):
    return str(excinfo.value)


def test_a_path_with_a_tilde_is_read_from_the_home_folder(tmp_path, monkeypatch):
    """Config files and the CLI pass '~/...' strings; they must resolve like a shell does."""
    monkeypatch.setenv("HOME", str(tmp_path))
    data = {"train": {"x": np.arange(3)}, "valid": {}, "test": {}}
    (tmp_path / "feat.pkl").write_bytes(pickle.dumps(data))
    got = validate.read_pickle("~/feat.pkl")
    assert set(got) == {"train", "valid", "test"}
    assert got["train"]["x"].tolist() == [0, 1, 2]
    with pytest.raises(KudaInputError) as e:
        validate.read_pickle("~/absent.pkl")
    assert str(tmp_path / "absent.pkl") in _msg(e)


def test_a_pickle_that_is_not_a_dict_of_splits_is_refused_naming_its_type(tmp_path):
    path = tmp_path / "list.pkl"
    path.write_bytes(pickle.dumps([np.zeros(2), np.ones(2)]))
    with pytest.raises(KudaInputError) as e:
        validate.read_pickle(path, what="audio feature file")
    msg = _msg(e)
    assert str(path) in msg and "audio feature file" in msg and "holds a list" in msg


def test_a_split_that_is_not_a_dict_is_refused_naming_the_split():
    data = {"train": {}, "valid": [1, 2], "test": {}}
    with pytest.raises(KudaInputError) as e:
        validate.check_splits(data, "f.pkl")
    msg = _msg(e)
    assert "'f.pkl'" in msg and "split 'valid' is a list" in msg


def test_a_key_that_is_not_numeric_is_refused_naming_split_and_key():
    with pytest.raises(KudaInputError) as e:
        validate.as_array(["a", "b"], "f.pkl", "test", "audio")
    msg = _msg(e)
    assert "'f.pkl'" in msg and "split 'test'" in msg and "key 'audio'" in msg and "numeric array" in msg


def test_minus_inf_is_an_error_unless_the_caller_asks_for_the_audio_policy():
    """-inf becomes 0 only in audio (MMSA's COVAREP convention); vision and text keep the error."""
    arr = np.array([1.0, -np.inf, 2.0], dtype=np.float32)
    with pytest.raises(KudaInputError) as e:
        validate.clean_nonfinite(arr.copy(), "f.pkl", "train", "vision")
    assert "0 NaN and 1 infinite" in _msg(e)
    assert validate.clean_nonfinite(arr.copy(), "f.pkl", "train", "audio", neg_inf_to_zero=True).tolist() == [1.0, 0.0, 2.0]


def test_the_nonfinite_error_counts_nans_and_infinities_separately():
    values = [np.nan, 1.0, np.inf, np.nan, -np.inf, np.inf, 0.5]
    n_nan = sum(1 for v in values if v != v)
    n_inf = sum(1 for v in values if v in (np.inf, -np.inf))
    with pytest.raises(KudaInputError) as e:
        validate.clean_nonfinite(np.array(values, dtype=np.float32), "f.pkl", "valid", "vision")
    msg = _msg(e)
    assert f"{n_nan} NaN and {n_inf} infinite value(s) (of {len(values)})" in msg
    assert "split 'valid'" in msg and "key 'vision'" in msg


def test_lengths_of_the_wrong_shape_are_refused_naming_the_expected_shape():
    with pytest.raises(KudaInputError) as e:
        validate.check_lengths(np.zeros((3, 2), dtype=np.int64), 5, 3, "f.pkl", "train", "audio_lengths")
    msg = _msg(e)
    assert "key 'audio_lengths'" in msg and "(3, 2)" in msg and "expected (3,)" in msg


def test_a_single_sample_with_a_length_past_its_sequence_is_refused():
    with pytest.raises(KudaInputError) as e:
        validate.check_lengths(np.array([6]), 5, 1, "f.pkl", "test", "vision_lengths")
    assert "1 length(s) exceed the sequence length 5" in _msg(e)


def test_zero_and_full_lengths_are_valid_and_negative_ones_are_counted():
    """Length 0 is a sample whose modality is absent; only negative lengths are broken."""
    validate.check_lengths(np.array([0, 5, 3, 0]), 5, 4, "f.pkl", "train", "audio_lengths")
    lengths = np.array([-1, 2, 7, -3, 0])
    too_long = sum(1 for v in lengths if v > 5)
    negative = sum(1 for v in lengths if v < 0)
    with pytest.raises(KudaInputError) as e:
        validate.check_lengths(lengths, 5, 5, "f.pkl", "train", "audio_lengths")
    msg = _msg(e)
    assert f"{too_long} length(s) exceed" in msg and f"and {negative} are negative" in msg


def _text_bert(ids):
    ids = np.asarray(ids, dtype=np.float32)
    return np.stack([ids, np.ones_like(ids), np.zeros_like(ids)], axis=1)


def test_ids_from_zero_to_the_last_vocabulary_entry_pass():
    validate.check_token_ids(_text_bert([[0, 5, 9], [9, 0, 1]]), 10, "bert", "f.pkl", "train")


def test_an_id_equal_to_the_vocabulary_size_is_outside_it():
    with pytest.raises(KudaInputError) as e:
        validate.check_token_ids(_text_bert([[0, 10, 3]]), 10, "bert-x", "f.pkl", "train")
    msg = _msg(e)
    assert "1 id(s) outside [0, 10)" in msg and "'bert-x'" in msg and "up to 10" in msg


def test_the_token_id_error_counts_every_id_outside_the_vocabulary():
    rows = [[0, 12, -1, 9], [10, 3, -2, 0], [1, 1, 1, 1]]
    n_bad = sum(1 for row in rows for v in row if v < 0 or v >= 10)
    with pytest.raises(KudaInputError) as e:
        validate.check_token_ids(_text_bert(rows), 10, "bert", "f.pkl", "valid")
    assert f"({n_bad} id(s) outside [0, 10))" in _msg(e)
    # negatives alone are counted too
    with pytest.raises(KudaInputError) as e:
        validate.check_token_ids(_text_bert([[0, -4, 3, -1]]), 10, "bert", "f.pkl", "valid")
    assert "(2 id(s) outside [0, 10))" in _msg(e)


def test_an_encoder_config_without_a_vocabulary_size_checks_no_ids(monkeypatch):
    """No vocab_size (None) means 'unknown, do not check', never a vocabulary of one id."""
    class NoVocab:
        pass

    class Vocab:
        vocab_size = 21128

    monkeypatch.setattr(validate, "local_encoder_config", lambda name: NoVocab())
    assert validate.text_encoder_vocab_size("x") is None
    monkeypatch.setattr(validate, "local_encoder_config", lambda name: Vocab())
    assert validate.text_encoder_vocab_size("x") == 21128
    monkeypatch.setattr(validate, "local_encoder_config", lambda name: None)
    assert validate.text_encoder_vocab_size("x") is None
