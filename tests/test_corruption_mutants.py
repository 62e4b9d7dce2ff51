"""kuda_mmsa.data.corruption, in-process: the numbers of its module docstring measured on the
output (the noise's SNR against the valid frames' power, the token flip probability
1 / (1 + 10^(snr/10)), random ids outside the special ids), what each kind keeps ([CLS],
[SEP], padding, lengths, the base split) and its errors."""
import numpy as np
import pytest
import torch
from test_robustness_protocols import CLS, SEP, ListSplit, hand_split  # tests/ is on sys.path

from kuda_mmsa.data.corruption import Corruption, CorruptedDataset
from kuda_mmsa.errors import KudaInputError


def test_bad_kinds_modalities_and_rates_are_clear_errors():
    with pytest.raises(KudaInputError, match="Unknown corruption 'blur'"):
        Corruption("blur", "A", 0.5)
    with pytest.raises(KudaInputError, match="Unknown modality 'X'"):
        Corruption("noise", "X", 0.5)
    for bad in (-0.1, 1.1):
        with pytest.raises(KudaInputError, match=f"rate {bad} is outside"):
            Corruption("noise", "A", bad)
    Corruption("noise", "A", 1.0)
    Corruption("noise", "A", 0.0)


def test_the_defaults_are_seed_0_and_0_db():
    split = hand_split(n=4)
    a = CorruptedDataset(split, Corruption("noise", "A", 1.0))
    b = CorruptedDataset(split, Corruption("noise", "A", 1.0, seed=0, snr_db=0.0))
    assert all(torch.equal(a[i]["audio"], b[i]["audio"]) for i in range(4))


def _frames(n, length, dim, pad_from, seed=0):
    g = np.random.default_rng(seed)
    items = []
    for i in range(n):
        audio = g.normal(size=(length, dim)) * (1 + i)
        audio[pad_from:] = 7.0                                   # non-zero padding
        items.append({"text": torch.zeros(3, 4), "audio": torch.tensor(audio, dtype=torch.float32),
                      "vision": torch.zeros(2, 2), "audio_lengths": pad_from, "vision_lengths": 1})
    return ListSplit(items)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_noise_has_the_asked_snr_against_the_valid_frames_and_spares_the_padding(snr_db):
    split = _frames(3, 400, 8, pad_from=300)
    ds = CorruptedDataset(split, Corruption("noise", "A", 1.0, seed=3, snr_db=snr_db))
    for i in range(3):
        clean, noisy = split[i]["audio"].double(), ds[i]["audio"].double()
        power = float((clean[:300] ** 2).mean())
        noise = float(((noisy - clean)[:300] ** 2).mean())
        assert abs(10 * np.log10(power / noise) - snr_db) < 0.3
        assert torch.equal(ds[i]["audio"][300:], split[i]["audio"][300:])
        assert ds[i]["audio_lengths"] == 300


def test_noise_on_a_split_without_lengths_covers_every_frame_and_silence_stays_silent():
    g = np.random.default_rng(1)
    items = [{"text": torch.zeros(3, 4), "vision": torch.tensor(g.normal(size=(500, 4)), dtype=torch.float32),
              "audio": torch.zeros(50, 3)}]
    ds = CorruptedDataset(ListSplit(items), Corruption("noise", "V", 1.0, snr_db=0.0))
    diff = (ds[0]["vision"] - items[0]["vision"]).double()
    assert abs(10 * np.log10(float((items[0]["vision"].double() ** 2).mean()) / float((diff ** 2).mean()))) < 0.3
    assert (diff != 0).all(-1).all()
    quiet = CorruptedDataset(ListSplit(items), Corruption("noise", "A", 1.0))
    assert torch.equal(quiet[0]["audio"], items[0]["audio"])        # zero power: no noise to scale


def test_a_sample_of_length_zero_gets_noise_on_its_first_frame_only():
    split = _frames(1, 20, 4, pad_from=0)
    split.items[0]["audio"][0] = 1.0
    ds = CorruptedDataset(split, Corruption("noise", "A", 1.0, snr_db=0.0))
    diff = ds[0]["audio"] - split[0]["audio"]
    assert (diff[0] != 0).all() and not diff[1:].any()


def _token_split(n, length=40, words=30):
    items = []
    for i in range(n):
        ids = np.zeros(length)
        ids[:words + 2] = [CLS] + [100 + (j % 50) for j in range(words)] + [SEP]
        mask = (np.arange(length) < words + 2).astype(float)
        items.append({"text": torch.tensor(np.stack([ids, mask, np.zeros(length)]), dtype=torch.float32),
                      "audio": torch.zeros(2, 2), "vision": torch.zeros(2, 2)})
    return ListSplit(items)


@pytest.mark.parametrize("snr_db", [0.0, 10.0])
def test_word_tokens_flip_with_the_docstrings_probability_and_specials_and_padding_stay(snr_db):
    split = _token_split(200)
    ds = CorruptedDataset(split, Corruption("noise", "T", 1.0, seed=2, snr_db=snr_db), vocab_size=1000)
    flips = 0
    for i in range(200):
        before, after = split[i]["text"], ds[i]["text"]
        assert after[0, 0] == CLS and after[0, 31] == SEP and torch.equal(after[0, 32:], before[0, 32:])
        assert torch.equal(after[1:], before[1:])
        changed = after[0, 1:31] != before[0, 1:31]
        assert ((after[0, 1:31][changed] >= 5) & (after[0, 1:31][changed] < 1000)).all()
        flips += int(changed.sum())
    p = 1.0 / (1.0 + 10 ** (snr_db / 10))
    assert abs(flips / (200 * 30) - p) < 0.03 * (1 + p)


def test_random_ids_never_include_the_five_special_ids():
    split = _token_split(50, words=30)
    ds = CorruptedDataset(split, Corruption("noise", "T", 1.0, seed=1, snr_db=-30.0), vocab_size=6)
    flipped = 0
    for i in range(50):
        changed = ds[i]["text"][0] != split[i]["text"][0]
        assert (ds[i]["text"][0][changed] == 5).all()               # the only non-special id of a vocab of 6
        flipped += int(changed.sum())
    assert flipped > 0.99 * 50 * 30                                 # p = 1 / (1 + 10^-3)


def test_a_text_of_one_token_keeps_it():
    items = [{"text": torch.tensor([[CLS, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.float32),
              "audio": torch.zeros(2, 2), "vision": torch.zeros(2, 2)} for _ in range(20)]
    ds = CorruptedDataset(ListSplit(items), Corruption("noise", "T", 1.0, snr_db=-30.0), vocab_size=100)
    assert all(torch.equal(ds[i]["text"], items[i]["text"]) for i in range(20))


def test_token_noise_needs_the_vocabulary_size():
    ds = CorruptedDataset(_token_split(2), Corruption("noise", "T", 1.0))
    with pytest.raises(KudaInputError, match="vocabulary size"):
        ds[0]


def test_text_as_features_gets_frame_noise():
    items = [{"text": torch.ones(6, 4), "audio": torch.zeros(2, 2), "vision": torch.zeros(2, 2)}]
    ds = CorruptedDataset(ListSplit(items), Corruption("noise", "T", 1.0), bert_text=False)
    assert (ds[0]["text"] != 1).all()


def test_swap_takes_the_modality_and_its_length_from_another_sample():
    for n in (2, 5, 9):
        split = hand_split(n=n)
        ds = CorruptedDataset(split, Corruption("swap", "A", 1.0, seed=4))
        partners = []
        for i in range(n):
            j = [k for k in range(n) if torch.equal(ds[i]["audio"], split[k]["audio"])]
            assert j and j[0] != i and ds[i]["audio_lengths"] == split[j[0]]["audio_lengths"]
            assert torch.equal(ds[i]["text"], split[i]["text"])
            partners.append(j[0])
        assert sorted(partners) == list(range(n))                   # every sample lends once
    one = hand_split(n=1)
    assert torch.equal(CorruptedDataset(one, Corruption("swap", "V", 1.0))[0]["vision"], one[0]["vision"])


def test_swapped_text_has_no_length_key_and_missing_text_none_either():
    split = hand_split(n=3)
    ds = CorruptedDataset(split, Corruption("swap", "T", 1.0, seed=1))
    assert set(ds[0]) == set(split[0]) and ds[0]["audio_lengths"] == split[0]["audio_lengths"]
    ds = CorruptedDataset(split, Corruption("missing", "T", 1.0))
    assert not ds[0]["text"].any() and set(ds[0]) == set(split[0])
    assert ds[0]["audio_lengths"] == split[0]["audio_lengths"]


def test_missing_zeroes_the_modality_and_sets_its_length_to_the_minimum():
    split = hand_split(n=3)
    ds = CorruptedDataset(split, Corruption("missing", "V", 1.0), min_length=1)
    for i in range(3):
        assert not ds[i]["vision"].any() and ds[i]["vision_lengths"] == 1
        assert torch.equal(ds[i]["audio"], split[i]["audio"]) and ds[i]["audio_lengths"] == split[i]["audio_lengths"]
    assert CorruptedDataset(split, Corruption("missing", "V", 1.0))[0]["vision_lengths"] == 0


def test_the_base_split_is_left_as_it_was_and_its_attributes_pass_through():
    split = hand_split(n=3)
    split.ids, split.labels, split.annotations, split.mode = ["a", "b", "c"], {"M": 1}, None, "test"
    before = [split[i]["vision_lengths"] for i in range(3)]
    ds = CorruptedDataset(split, Corruption("missing", "V", 1.0))
    [ds[i] for i in range(3)]
    assert [split[i]["vision_lengths"] for i in range(3)] == before and split[0]["vision"].any()
    assert (ds.ids, ds.labels, ds.mode) == (["a", "b", "c"], {"M": 1}, "test")


def test_noise_draws_differ_between_samples_and_from_the_swap_stream():
    split = _frames(2, 50, 3, pad_from=50)
    split.items[1]["audio"] = split.items[0]["audio"].clone()
    ds = CorruptedDataset(split, Corruption("noise", "A", 1.0, seed=5))
    d0, d1 = ds[0]["audio"] - split[0]["audio"], ds[1]["audio"] - split[1]["audio"]
    assert not torch.allclose(d0, d1)
    c = Corruption("noise", "A", 1.0, seed=5)
    rng = np.random.default_rng(c.stream() + [2, 0])
    sigma = np.sqrt(float((split[0]["audio"].double() ** 2).mean()))
    want = torch.from_numpy(rng.normal(0.0, sigma, size=(50, 3)).astype(np.float32))
    assert torch.allclose(d0, want, atol=1e-5)


def test_swap_and_missing_on_a_split_without_lengths_touch_only_the_features():
    items = [{"text": torch.zeros(3, 4), "audio": torch.full((4, 2), float(i + 1)), "vision": torch.zeros(2, 2)}
             for i in range(3)]
    for kind in ("swap", "missing"):
        ds = CorruptedDataset(ListSplit(items), Corruption(kind, "A", 1.0))
        assert set(ds[0]) == {"text", "audio", "vision"}


def test_the_power_of_a_one_frame_sample_is_that_frames():
    split = _frames(1, 3, 400, pad_from=1)
    split.items[0]["audio"][0] = 1.0
    ds = CorruptedDataset(split, Corruption("noise", "A", 1.0, snr_db=0.0))
    noise = (ds[0]["audio"][0] - 1.0).double()
    assert abs(float((noise ** 2).mean()) - 1.0) < 0.2                # power 1, not the padding's 49


def test_a_text_of_cls_and_sep_only_keeps_both():
    items = [{"text": torch.tensor([[CLS, SEP, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32),
              "audio": torch.zeros(2, 2), "vision": torch.zeros(2, 2)} for _ in range(20)]
    ds = CorruptedDataset(ListSplit(items), Corruption("noise", "T", 1.0, snr_db=-30.0), vocab_size=100)
    assert all(torch.equal(ds[i]["text"], items[i]["text"]) for i in range(20))


def test_the_flip_probability_at_10_db_is_one_in_eleven():
    split = _token_split(2000)
    ds = CorruptedDataset(split, Corruption("noise", "T", 1.0, seed=6, snr_db=10.0), vocab_size=1000)
    flips = sum(int((ds[i]["text"][0] != split[i]["text"][0]).sum()) for i in range(2000))
    assert abs(flips / (2000 * 30) - 1 / 11) < 0.003                # 2.5 standard deviations of the estimate
