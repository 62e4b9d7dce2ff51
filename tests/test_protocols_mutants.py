"""kuda_mmsa.data.protocols, in-process, beside the masking tests of
tests/test_robustness_protocols.py: MMSA's default missing_seed (1111), the [0, 1] bounds of a
rate, which modalities need an [UNK] id, the base split left untouched, the split's
attributes passed through, an empty split, and the [UNK] id read offline. The reference mask
is MMSA's draw with the global numpy generator, ``np.random.seed(s); np.random.uniform``."""
import numpy as np
import pytest
import torch
from test_robustness_protocols import UNK, ListSplit, hand_split  # tests/ is on sys.path

from kuda_mmsa.data import protocols
from kuda_mmsa.data.protocols import RandomMissing, RandomMissingDataset, text_encoder_unk_id
from kuda_mmsa.errors import KudaInputError


def _mmsa_draw(seed, n, length):
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return np.random.uniform(size=(n, length))
    finally:
        np.random.set_state(state)


def test_without_a_seed_the_mask_is_mmsas_default_missing_seed():
    split = hand_split(n=4)
    for spec in (RandomMissing.of({"A": 0.5}), RandomMissing((("A", 0.5),))):
        ds = RandomMissingDataset(split, spec)
        u = _mmsa_draw(1111, 4, split[0]["audio"].shape[0])
        for i in range(4):
            L = split[i]["audio_lengths"]
            gone = (ds[i]["audio"][:L] == 0).all(-1).numpy()
            assert gone.tolist() == (u[i, :L] <= 0.5).tolist()


def test_rates_zero_and_one_are_valid_and_any_rate_outside_is_refused():
    RandomMissing.of({"T": 0.0, "A": 1.0, "V": 0.5})
    for bad in (-0.01, 1.01):
        with pytest.raises(KudaInputError, match=f"Missing rate {bad} of modality V is outside"):
            RandomMissing.of({"V": bad})


def test_only_missing_bert_text_needs_an_unk_id():
    split = hand_split(n=3)
    RandomMissingDataset(split, RandomMissing.of({"T": 0.0, "A": 0.5, "V": 0.5}), unk_id=None)
    feats = ListSplit([{"text": torch.ones(5, 4), "audio": torch.ones(3, 2), "vision": torch.ones(3, 2)}])
    RandomMissingDataset(feats, RandomMissing.of({"T": 0.5}), unk_id=None, bert_text=False)
    with pytest.raises(KudaInputError, match=r"\[UNK\].*--pretrained"):
        RandomMissingDataset(split, RandomMissing.of({"A": 0.0, "T": 0.5}), unk_id=None)


def test_the_base_split_is_left_as_it_was():
    split = hand_split(n=3)
    before = [{k: v.clone() for k, v in split[i].items() if torch.is_tensor(v)} for i in range(3)]
    ds = RandomMissingDataset(split, RandomMissing.of({"T": 1.0, "A": 1.0, "V": 1.0}, 5), unk_id=UNK)
    for i in range(3):
        ds[i]
        assert all(torch.equal(split[i][k], before[i][k]) for k in before[i])
        assert not ds[i]["audio"][:split[i]["audio_lengths"]].any()


def test_the_splits_ids_labels_annotations_and_mode_pass_through():
    split = hand_split(n=2)
    split.ids, split.labels, split.annotations, split.mode = ["a", "b"], {"M": np.zeros(2)}, ["x", "y"], "test"
    ds = RandomMissingDataset(split, RandomMissing.of({"A": 0.5}))
    assert (ds.ids, ds.annotations, ds.mode) == (["a", "b"], ["x", "y"], "test") and ds.labels is split.labels
    assert len(ds) == 2


def test_an_empty_split_stays_empty():
    ds = RandomMissingDataset(ListSplit([]), RandomMissing.of({"T": 0.5, "A": 0.5}), unk_id=UNK)
    assert len(ds) == 0 and ds.draws == {}


def test_a_rate_at_exactly_a_drawn_value_makes_that_frame_missing():
    """u <= rate, as MMSA writes it: a frame whose draw equals the rate is missing."""
    split = hand_split(n=1, audio_len=7)
    u = _mmsa_draw(3, 1, 7)[0]
    L = split[0]["audio_lengths"]
    rate = float(u[1])
    ds = RandomMissingDataset(split, RandomMissing.of({"A": rate}, 3))
    gone = (ds[0]["audio"][:L] == 0).all(-1).numpy()
    assert gone.tolist() == [bool(v <= rate) for v in u[:L]] and gone[1]


def test_the_unk_id_falls_back_to_vocab_txt_and_is_none_without_one(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    class NoUnk:
        unk_token_id = None

    seen = []

    def from_pretrained(name, **kw):
        seen.append(kw)
        return NoUnk()

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\n")
    assert text_encoder_unk_id(tmp_path) == 3                  # a tokenizer without [UNK]: the vocab's
    assert seen and all(kw == {"local_files_only": True} for kw in seen)    # never the network
    other = tmp_path / "no_unk"
    other.mkdir()
    (other / "vocab.txt").write_text("[PAD]\nhello\n")
    assert text_encoder_unk_id(other) is None
    assert text_encoder_unk_id("") is None and len(seen) == 2   # no encoder: nothing is read
    monkeypatch.setenv("HOME", str(tmp_path))
    assert text_encoder_unk_id("~") == 3                        # a '~' folder, as configs write it


def test_text_given_as_features_is_masked_over_its_padded_length():
    feats = ListSplit([{"text": torch.ones(6, 4), "audio": torch.ones(3, 2), "vision": torch.ones(3, 2)}
                       for _ in range(3)])
    rate, seed = 0.5, 8
    ds = RandomMissingDataset(feats, RandomMissing.of({"T": rate}, seed), bert_text=False)
    u = _mmsa_draw(seed, 3, 6)
    for i in range(3):
        assert (ds[i]["text"] == 0).all(-1).tolist() == (u[i] <= rate).tolist()


def test_frames_of_a_split_without_lengths_are_masked_over_the_whole_sequence():
    items = [{"text": torch.ones(3, 4), "audio": torch.ones(5, 2) + i, "vision": torch.ones(4, 2)} for i in range(2)]
    rate, seed = 0.4, 13
    ds = RandomMissingDataset(ListSplit(items), RandomMissing.of({"A": rate}, seed))
    u = _mmsa_draw(seed, 2, 5)
    for i in range(2):
        assert (ds[i]["audio"] == 0).all(-1).tolist() == (u[i] <= rate).tolist()


def test_the_tokenizers_own_unk_id_wins_over_the_vocab_file(tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    class Unk7:
        unk_token_id = 7

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda name, **kw: Unk7())
    (tmp_path / "vocab.txt").write_text("[PAD]\n[CLS]\n[SEP]\n[UNK]\n")
    assert text_encoder_unk_id(tmp_path) == 7


def test_a_rate_at_exactly_a_drawn_value_makes_that_token_unk():
    split = hand_split(n=1, text_len=10)
    u = _mmsa_draw(4, 1, 10)[0]
    t = int(split[0]["text"][1].sum())
    rate = float(u[2])
    ds = RandomMissingDataset(split, RandomMissing.of({"T": rate}, 4), unk_id=UNK)
    unk = [j for j in range(10) if ds[0]["text"][0, j] == UNK]
    assert unk == [j for j in range(1, t - 1) if u[j] <= rate] and 2 in unk
