"""Tokenizer I/O: a text encoder's tokenizer from local files, and the check that a feature
file's token ids are that tokenizer's (a file tokenised for another encoder trains silently
on the wrong ids)."""
from collections import Counter
from typing import Any, Optional, Sequence

from torch import nn

from ..errors import KudaInputError


def load_tokenizer(pretrained: Any):
    """The text encoder's tokenizer from local files, or None when it has none offline."""
    if pretrained is None or isinstance(pretrained, nn.Module):
        return None
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return AutoTokenizer.from_pretrained(str(pretrained), local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    except Exception:  # no tokenizer files next to the weights: nothing to compare with
        return None


def start_token_id(tokenizer) -> Optional[int]:
    """The id the tokenizer puts first ([CLS], <s>), or None when it adds none."""
    try:
        first = tokenizer("")["input_ids"]
    except Exception:
        return None
    return int(first[0]) if len(first) else None


def check_tokenization(ids, mask, raw_texts: Optional[Sequence[str]], tokenizer, encoder: str, where: str,
                       sample_ids: Optional[Sequence] = None, hint: str = "", max_samples: int = 32,
                       min_agreement: float = 0.5) -> dict:
    """Refuse token ids that the encoder's tokenizer would not have made (KudaInputError).

    ``ids``, ``mask``: [N, L] arrays of a feature file's text_bert rows. Two checks, on the texts
    that are not empty: the first id must be the tokenizer's start token ([CLS], <s>) for at
    least 90% of them; where the file has raw text, the tokenizer's ids for up to
    ``max_samples`` texts must agree with the file's on at least ``min_agreement`` of the
    compared positions (the first min(len, valid length) of each). Returns what was compared."""
    import numpy as np

    ids = np.asarray(ids).astype(np.int64)
    mask = np.asarray(mask).astype(np.int64)
    valid = mask.sum(axis=1)
    rows = np.flatnonzero(valid > 0)
    name = getattr(tokenizer, "name_or_path", "") or encoder
    fix = ("Set 'pretrained' (--pretrained) to the encoder whose tokenizer made the file, or rebuild the ids "
           f"from the raw text for this encoder: python -m kuda_mmsa retokenize --feature-file FILE "
           f"--pretrained {encoder} --out NEW.pkl." + (f" {hint}" if hint else ""))
    report = {"texts": int(len(rows)), "start": None, "compared": 0, "agreement": None}
    if not len(rows):
        return report
    start = start_token_id(tokenizer)
    if start is not None:
        firsts = ids[rows, 0]
        share = float((firsts == start).mean())
        report["start"] = share
        if share < 0.9:
            found, count = Counter(firsts.tolist()).most_common(1)[0]
            raise KudaInputError(
                f"The token ids of {where} do not come from the tokenizer of the text encoder {encoder!r}: "
                f"that tokenizer starts every text with id {start} ({tokenizer.convert_ids_to_tokens(start)!r}), "
                f"but only {share:.0%} of the file's {len(rows)} texts start with it (most start with id "
                f"{found}, {count} texts). The file was tokenised with another vocabulary. {fix}")
    if raw_texts is None:
        return report
    agree = total = 0
    example = None
    for i in rows:
        if report["compared"] >= max_samples:
            break
        raw = raw_texts[i] if i < len(raw_texts) else None
        if not isinstance(raw, str) or not raw.strip():
            continue
        mine = tokenizer(raw, truncation=True, max_length=int(ids.shape[1]))["input_ids"]
        n = min(len(mine), int(valid[i]))
        same = int((np.asarray(mine[:n]) == ids[i, :n]).sum())
        agree, total = agree + same, total + n
        report["compared"] += 1
        if example is None and same < n:
            sid = sample_ids[i] if sample_ids is not None and i < len(sample_ids) else i
            example = (sid, raw[:60], ids[i, :min(n, 8)].tolist(), list(mine[:min(n, 8)]))
    if total:
        report["agreement"] = agree / total
        if agree / total < min_agreement:
            sid, raw, theirs, mine = example
            raise KudaInputError(
                f"The token ids of {where} do not match the vocabulary of the text encoder {encoder!r}: its "
                f"tokenizer ({name}) gives the same id at only {agree / total:.0%} of {total} positions of "
                f"{report['compared']} raw texts. E.g. sample {sid} ({raw!r}): the file has ids {theirs}, the "
                f"tokenizer gives {mine}. {fix}")
    return report
