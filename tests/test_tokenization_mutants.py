"""kuda_mmsa.data.tokenization, in-process: the tokenizer is read from local files only and
quietly, and check_tokenization refuses ids made with another vocabulary with the numbers
its docstring gives (90 % start tokens, agreement on at least min_agreement of the compared
positions of up to max_samples raw texts) while passing ids the tokenizer did make. The
tokenizer here is a word-level stand-in whose ids the test writes out by hand, so every
share and count below is computed from the rows the test builds."""
import shutil

import numpy as np
import pytest
from torch import nn

from kuda_mmsa.data import tokenization
from kuda_mmsa.data.tokenization import check_tokenization, load_tokenizer, start_token_id
from kuda_mmsa.errors import KudaInputError

CLS, SEP = 101, 102
WORDS = {"good": 7, "bad": 8, "film": 9, "very": 10, "plot": 11, "dull": 12}


class WordTokenizer:
    """[CLS] word ids [SEP], truncated to max_length like a BERT tokenizer."""

    name_or_path = "word-tok"

    def __call__(self, text, truncation=False, max_length=None):
        ids = [CLS] + [WORDS.get(w, 1) for w in text.split()] + [SEP]
        if truncation and max_length is not None and len(ids) > max_length:
            ids = ids[:max_length - 1] + [SEP]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, i):
        return {CLS: "[CLS]", SEP: "[SEP]"}.get(i, "?")


class NoStartTokenizer(WordTokenizer):
    def __call__(self, text, **kw):
        return {"input_ids": [WORDS.get(w, 1) for w in text.split()]}


def _rows(texts, length=8, tok=WordTokenizer()):
    """ids and mask [N, length] as a feature file holds them (float32, as text_bert is)."""
    ids = np.zeros((len(texts), length), dtype=np.float32)
    mask = np.zeros((len(texts), length), dtype=np.float32)
    for i, t in enumerate(texts):
        if t is None:
            continue
        got = tok(t, truncation=True, max_length=length)["input_ids"]
        ids[i, :len(got)] = got
        mask[i, :len(got)] = 1
    return ids, mask


# ------------------------------------------------------------------------- load_tokenizer
def test_the_tokenizer_of_a_local_bert_folder_is_loaded(tiny_bert_dir):
    tok = load_tokenizer(tiny_bert_dir)
    assert tok is not None and tok("")["input_ids"] == [tok.cls_token_id, tok.sep_token_id]
    assert load_tokenizer(str(tiny_bert_dir)) is not None


def test_no_encoder_or_a_module_has_no_tokenizer_even_beside_a_folder_named_like_it(tiny_bert_dir, tmp_path,
                                                                                    monkeypatch):
    """pretrained=None means 'no text encoder', never a relative folder called 'None'."""
    shutil.copytree(tiny_bert_dir, tmp_path / "None")
    monkeypatch.chdir(tmp_path)
    assert load_tokenizer("None") is not None           # the folder itself is readable
    assert load_tokenizer(None) is None
    assert load_tokenizer(nn.Linear(2, 2)) is None


def test_a_folder_without_tokenizer_files_has_no_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert load_tokenizer(tmp_path) is None


def test_the_tokenizer_is_read_offline_and_quietly_and_the_log_level_restored(monkeypatch):
    """Reading must not reach the network (local_files_only) nor print transformers' chatter
    about missing files (errors only while it reads); the user's log level comes back."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    seen = {}

    def from_pretrained(name, **kw):
        seen.update(kw, name=name, level=hf_logging.get_verbosity())
        return "tok"

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", from_pretrained)
    before = hf_logging.get_verbosity()
    try:
        hf_logging.set_verbosity_info()
        assert load_tokenizer("some/folder") == "tok"
        assert hf_logging.get_verbosity() == hf_logging.INFO
    finally:
        hf_logging.set_verbosity(before)
    assert seen == {"name": "some/folder", "local_files_only": True, "level": hf_logging.ERROR}


def test_the_start_token_is_the_first_id_of_an_empty_text_or_none():
    assert start_token_id(WordTokenizer()) == CLS
    assert start_token_id(NoStartTokenizer()) is None

    def broken(text):
        raise RuntimeError("no")

    assert start_token_id(broken) is None


# ----------------------------------------------------------------- check_tokenization: passes
def test_ids_the_tokenizer_made_pass_and_the_report_says_what_was_compared():
    texts = ["good film", "very bad plot", None, "dull"]          # one text is empty (mask 0)
    ids, mask = _rows(texts)
    report = check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "the file")
    assert report == {"texts": 3, "start": 1.0, "compared": 3, "agreement": 1.0}


def test_lists_are_accepted_like_arrays():
    texts = ["good film", "bad plot"]
    ids, mask = _rows(texts)
    report = check_tokenization(ids.tolist(), mask.tolist(), texts, WordTokenizer(), "enc", "the file")
    assert report == {"texts": 2, "start": 1.0, "compared": 2, "agreement": 1.0}


def test_a_text_of_one_valid_token_counts_and_only_fully_masked_rows_are_skipped():
    ids = np.array([[CLS, 0, 0], [0, 0, 0], [CLS, 7, SEP]], dtype=np.float32)
    mask = np.array([[1, 0, 0], [0, 0, 0], [1, 1, 1]], dtype=np.float32)
    report = check_tokenization(ids, mask, None, WordTokenizer(), "enc", "the file")
    assert report == {"texts": 2, "start": 1.0, "compared": 0, "agreement": None}


def test_a_file_without_any_text_is_not_checked():
    ids = np.full((3, 4), 999, dtype=np.float32)
    mask = np.zeros((3, 4), dtype=np.float32)
    assert check_tokenization(ids, mask, ["a", "b", "c"], WordTokenizer(), "enc", "f") == \
        {"texts": 0, "start": None, "compared": 0, "agreement": None}


def test_without_a_start_token_only_the_raw_texts_are_compared():
    tok = NoStartTokenizer()
    texts = ["good film", "bad"]
    ids, mask = _rows(texts, tok=tok)
    report = check_tokenization(ids, mask, texts, tok, "enc", "f")
    assert report == {"texts": 2, "start": None, "compared": 2, "agreement": 1.0}


def test_exactly_ninety_percent_of_texts_with_the_start_token_pass_and_fewer_fail():
    texts = ["good"] * 10
    ids, mask = _rows(texts)
    ids[0, 0] = 55                                                  # 9 of 10 start with [CLS]
    assert check_tokenization(ids, mask, None, WordTokenizer(), "enc", "f")["start"] == 0.9
    ids[1, 0] = 55
    ids[2, 0] = 56                                                  # 7 of 10; 55 twice, 56 once
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, None, WordTokenizer(), "bert-x", "the train split")
    msg = str(e.value)
    assert "'bert-x'" in msg and "the train split" in msg and f"id {CLS} ('[CLS]')" in msg
    assert "only 70% of the file's 10 texts" in msg and "(most start with id 101, 7 texts)" in msg


def test_the_start_error_names_the_most_common_wrong_first_id():
    ids, mask = _rows(["good"] * 5)
    ids[:, 0] = [3, 3, 3, 4, CLS]
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, None, WordTokenizer(), "enc", "f")
    assert "only 20% of the file's 5 texts start with it (most start with id 3, 3 texts)" in str(e.value)


# ------------------------------------------------------------- check_tokenization: agreement
def _half_wrong(n_texts):
    """Texts of 2 words: 4 positions each, of which the test makes 2 wrong in every text."""
    texts = ["good film"] * n_texts
    ids, mask = _rows(texts)
    ids[:, 1:3] = 500                                               # both words: another vocabulary
    return texts, ids, mask


def test_agreement_is_the_share_of_compared_positions_and_half_passes_by_default():
    texts, ids, mask = _half_wrong(4)
    report = check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f")
    assert report["agreement"] == (4 * 2) / (4 * 4) and report["compared"] == 4


def test_below_the_minimum_agreement_the_error_shows_the_first_mismatching_sample():
    texts = ["good film", "very dull plot", "bad"]
    ids, mask = _rows(texts)
    ids[1, 1:4] = [500, 501, 502]                                  # sample 1: 3 of 5 positions wrong
    ids[2, 1] = 503                                                 # sample 2: 1 of 3 wrong
    agree, total = (4 + 2 + 2), (4 + 5 + 3)
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "the file", sample_ids=["a", "b", "c"],
                           min_agreement=0.7)
    msg = str(e.value)
    assert f"only {agree / total:.0%} of {total} positions of 3 raw texts" in msg
    assert "sample b ('very dull plot')" in msg
    assert f"the file has ids [{CLS}, 500, 501, 502, {SEP}], the tokenizer gives [{CLS}, 10, 12, 11, {SEP}]" in msg
    assert "its tokenizer (word-tok)" in msg


def test_the_agreement_error_names_the_encoder_when_the_tokenizer_has_no_name_and_adds_the_hint():
    texts, ids, mask = _half_wrong(2)

    class Nameless(WordTokenizer):
        name_or_path = ""

    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, texts, Nameless(), "my-bert", "f", min_agreement=0.6)
    msg = str(e.value)
    assert "its tokenizer (my-bert)" in msg and "sample 0 " in msg       # no sample ids: the row index
    assert msg.endswith("--pretrained my-bert --out NEW.pkl.")
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, texts, Nameless(), "my-bert", "f", min_agreement=0.6,
                           hint="The SIMS sets use bert-base-chinese.")
    assert str(e.value).endswith("--out NEW.pkl. The SIMS sets use bert-base-chinese.")


def test_at_most_max_samples_texts_are_compared():
    texts = ["good film"] * 40
    ids, mask = _rows(texts)
    assert check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f")["compared"] == 32
    assert check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f", max_samples=5)["compared"] == 5
    assert check_tokenization(ids[:3], mask[:3], texts[:3], WordTokenizer(), "enc", "f")["compared"] == 3


def test_rows_without_a_usable_raw_text_are_not_compared():
    texts = ["good film", "bad", "very dull", "plot"]
    ids, mask = _rows(texts)
    raw = ["good film", 7, "   "]                   # a non-string, a blank text, and the last row has none
    report = check_tokenization(ids, mask, raw, WordTokenizer(), "enc", "f")
    assert report == {"texts": 4, "start": 1.0, "compared": 1, "agreement": 1.0}


def test_positions_past_the_valid_length_or_past_the_tokenizers_output_are_not_compared():
    texts = ["good film very bad plot dull"]                          # 8 ids: truncated to 6
    ids, mask = _rows(texts, length=6)
    mask[0, 4:] = 0                                                   # the file keeps 4 valid tokens
    ids[0, 4:] = 999                                                  # garbage after them
    report = check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f")
    assert report["agreement"] == 1.0
    ids2, mask2 = _rows(["good"], length=6)                           # tokenizer gives 3 ids
    mask2[0, :] = 1
    report = check_tokenization(ids2, mask2, ["good"], WordTokenizer(), "enc", "f")
    assert report["agreement"] == 1.0


def test_a_long_example_is_cut_to_sixty_characters_and_eight_ids():
    text = " ".join(["good"] * 30)                                    # 149 characters
    ids, mask = _rows([text], length=12)
    ids[0, 1:11] = 500
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, [text], WordTokenizer(), "enc", "f")
    msg = str(e.value)
    assert f"({text[:60]!r})" in msg
    assert f"the file has ids [{CLS}, " + ", ".join(["500"] * 7) + "]" in msg
    assert f"the tokenizer gives [{CLS}, " + ", ".join(["7"] * 7) + "]" in msg


def test_a_text_longer_than_the_padded_length_is_compared_as_the_tokenizer_truncates_it():
    """The file's row ends in [SEP] at the last position: the tokenizer's ids, truncated to the
    padded length, agree everywhere."""
    texts = ["good film very bad plot dull good film"]                # 10 ids, padded length 6
    ids, mask = _rows(texts, length=6)
    assert ids[0].tolist() == [CLS, 7, 9, 10, 8, SEP]
    report = check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f")
    assert report["agreement"] == 1.0


def test_a_sample_without_an_id_is_named_by_its_row():
    texts = ["good film", "bad plot"]
    ids, mask = _rows(texts)
    ids[1, 1:3] = 500
    with pytest.raises(KudaInputError) as e:
        check_tokenization(ids, mask, texts, WordTokenizer(), "enc", "f", sample_ids=["a"], min_agreement=0.9)
    assert "sample 1 ('bad plot')" in str(e.value)
