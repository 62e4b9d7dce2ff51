"""The generated families have the properties they claim, computed here from the arrays
(kuda_mmsa/data/families.py), and adding families left the older ones' data as it was."""
import hashlib

import numpy as np
import pytest

from kuda_mmsa.data import FAMILIES, make_family
from kuda_mmsa.data import vocab as V

MODALITY_INDEX = {"text": 0, "vision": 1, "audio": 2}


def _digest(data) -> str:
    """sha1 over every split and key, numbers rounded to 4 decimals (robust to the last bit)."""
    h = hashlib.sha1()
    for split in sorted(data):
        for key in sorted(data[split]):
            a = data[split][key]
            if a.dtype == object:
                h.update("\x1f".join(map(str, a.tolist())).encode())
            else:
                h.update(np.round(a.astype(np.float64), 4).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("family,digest", [
    # computed with the generator as it was before padded and subset were added (commit 71fc351)
    ("dominant", "eeee27c20db262b17ae6b74e44911515fcb214fd"),
    ("noisy", "4f0bd5e92b64d0621d4eb9e8c18d2c2b66c625b8"),
    ("missing", "f51e79824b884a3c156945fd3f02a08d73b21996"),
])
def test_older_families_are_unchanged(family, digest):
    assert _digest(make_family(family)) == digest


@pytest.mark.parametrize("family", ["padded", "subset"])
def test_new_families_are_deterministic_and_valid(family):
    a, b = make_family(family), make_family(family)
    assert _digest(a) == _digest(b)
    assert _digest(make_family(family, seed=FAMILIES[family]["seed"] + 1)) != _digest(a)
    for split in ("train", "valid", "test"):
        d = a[split]
        n = len(d["regression_labels"])
        assert all(len(v) == n for v in d.values())
        for key in ("vision", "audio", "text", "regression_labels"):
            assert np.isfinite(d[key]).all()
        assert np.abs(d["regression_labels"]).max() <= 1.0
        assert (d["vision_lengths"] >= 1).all() and (d["vision_lengths"] <= d["vision"].shape[1]).all()
        assert (d["audio_lengths"] >= 1).all() and (d["audio_lengths"] <= d["audio"].shape[1]).all()


# ---------------------------------------------------------------------- padded
def _pad_mask(lengths, width):
    return np.arange(width)[None, :] >= lengths[:, None]


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("key", ["vision", "audio"])
def test_padded_frames_hold_one_extreme_constant_offset(split, key):
    d = make_family("padded")[split]
    x, lengths = d[key], d[key + "_lengths"]
    pad = _pad_mask(lengths, x.shape[1])
    assert pad.mean() > 0.5                       # most frames are padding
    padded = x[pad]                               # [frames, dim]
    offset = padded[0]
    assert np.array_equal(padded, np.broadcast_to(offset, padded.shape))   # one constant vector
    pad_value = FAMILIES["padded"]["pad_value"]
    assert np.allclose(np.abs(offset), pad_value)
    assert len(np.unique(np.sign(offset))) == 2   # an offset in both directions, not a scale
    valid = x[~pad]
    assert np.abs(valid).mean() * 3 < pad_value   # extreme against the real frames
    assert not (valid == offset).all(axis=1).any()
    # averaging over the whole padded length (no masking) is dominated by the offset
    plain_mean = x.mean(1)
    masked_mean = (x * ~pad[..., None]).sum(1) / lengths[:, None]
    assert np.abs(plain_mean - masked_mean).mean() > np.abs(masked_mean).mean()


@pytest.mark.parametrize("key,width", [("vision", "vision_len"), ("audio", "audio_len"), ("text", "text_len")])
def test_padded_lengths_are_very_unequal(key, width):
    d = make_family("padded")["train"]
    full = FAMILIES["padded"][width]
    lengths = d["text_bert"][:, 1].sum(1) if key == "text" else d[key + "_lengths"]
    assert lengths.max() >= 6 * lengths.min()
    assert np.std(lengths) / np.mean(lengths) > (0.3 if key == "text" else 0.5)
    assert (lengths <= full / 4).mean() > 0.3 and (lengths >= 0.75 * full).mean() > 0.05


def test_padded_text_is_bert_shaped():
    d = make_family("padded")["train"]
    ids, mask = d["text_bert"][:, 0], d["text_bert"][:, 1]
    k = mask.sum(1).astype(int)
    rows = np.arange(len(k))
    assert (ids[:, 0] == V.CLS_ID).all() and (ids[rows, k - 1] == V.SEP_ID).all()
    assert np.array_equal(mask, (~_pad_mask(k, mask.shape[1])).astype(mask.dtype))   # a prefix, no holes
    assert (ids[mask == 0] == V.PAD_ID).all() and not d["text"][mask == 0].any()
    assert [len(r.split()) for r in d["raw_text"]] == list(k - 2)


def test_padded_frames_carry_the_label_on_their_valid_part():
    """Every modality carries the label: the valid frames' mean, read out by least squares fitted
    on train, correlates with the test labels."""
    data = make_family("padded")
    for key in ("vision", "audio"):
        (xtr, ytr), (xte, yte) = (_masked_features(data[s], key) for s in ("train", "test"))
        assert np.corrcoef(_fit_predict(xtr, ytr, xte), yte)[0, 1] > 0.6


# ---------------------------------------------------------------------- subset
def _masked_features(d, key):
    x, lengths = d[key], d[key + "_lengths"]
    valid = ~_pad_mask(lengths, x.shape[1])
    return (x * valid[..., None]).sum(1) / np.maximum(lengths, 1)[:, None], d["regression_labels"]


def _fit_predict(x, y, x_new):
    w = np.linalg.lstsq(np.c_[x, np.ones(len(x))], y, rcond=None)[0]
    return np.c_[x_new, np.ones(len(x_new))] @ w


def _subset(d, informative):
    ann = d["annotations"]
    on = np.array([a == f"dominant:{informative}" for a in ann])
    off = np.array([a == f"distractor:{informative}" for a in ann])
    assert (on | off).all()
    return on, off


@pytest.mark.parametrize("informative", ["vision", "audio"])
def test_subset_modality_correlates_with_the_label_only_on_the_annotated_subset(informative):
    data = make_family("subset", informative=informative)
    other = "audio" if informative == "vision" else "vision"
    tr, te = data["train"], data["test"]
    on_tr, _ = _subset(tr, informative)
    on, off = _subset(te, informative)
    share = FAMILIES["subset"]["subset_share"]
    assert abs(on.mean() - share) < 0.1 and abs(_subset(tr, informative)[0].mean() - share) < 0.1
    # features of the informative modality, read out by a fit on the annotated train subset only
    x_tr, y_tr = _masked_features(tr, informative)
    x_te, y_te = _masked_features(te, informative)
    pred = _fit_predict(x_tr[on_tr], y_tr[on_tr], x_te)
    assert np.corrcoef(pred[on], y_te[on])[0, 1] > 0.8
    assert abs(np.corrcoef(pred[off], y_te[off])[0, 1]) < 0.2
    # ... and it is as strong off the subset (a distractor, not silence): the same spread
    assert 0.6 < pred[off].std() / pred[on].std() < 1.5
    # the other frame modality carries the label on both groups, less exactly
    x_tr, _ = _masked_features(tr, other)
    x_te, _ = _masked_features(te, other)
    pred_o = _fit_predict(x_tr, y_tr, x_te)
    r_on, r_off = np.corrcoef(pred_o[on], y_te[on])[0, 1], np.corrcoef(pred_o[off], y_te[off])[0, 1]
    assert r_on > 0.5 and r_off > 0.5 and r_on < np.corrcoef(pred[on], y_te[on])[0, 1]


def test_subset_unimodal_labels_say_the_same():
    d = make_family("subset")["test"]
    on, off = _subset(d, "vision")
    y, s_v, s_t = d["regression_labels"], d["regression_labels_V"], d["regression_labels_T"]
    assert np.array_equal(s_v[on], y[on])
    assert abs(np.corrcoef(s_v[off], y[off])[0, 1]) < 0.2
    assert np.corrcoef(s_t, y)[0, 1] > 0.7 and not np.array_equal(s_t, y)


@pytest.mark.parametrize("family,override,words", [
    ("subset", {"informative": "smell"}, "informative must be one of"),
    ("subset", {"subset_share": 1.0}, "0 < subset_share < 1"),
    ("padded", {"pad_value": 0.0}, "pad_value > 0"),
    ("nosuch", {}, "unknown family"),
])
def test_bad_parameters_are_refused_in_one_sentence(family, override, words):
    with pytest.raises(ValueError, match=words):
        make_family(family, **override)
