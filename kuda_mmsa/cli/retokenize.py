"""``retokenize``: rebuild a feature file's text ids (``text_bert``) from its raw text with
another text encoder's tokenizer.

    kuda-mmsa retokenize --feature-file unaligned.pkl --pretrained /models/roberta-base --out roberta.pkl

MMSA's ``text_bert`` triple (ids, attention mask, segment ids) ties a feature file to the BERT
that tokenised it (bert-base-chinese for the SIMS sets, bert-base-uncased for MOSI/MOSEI). To
train with another encoder (RoBERTa, XLM-R, DeBERTa-v2/v3, ELECTRA, another BERT), the ids must
come from that encoder's tokenizer: this command tokenises each sample's ``raw_text`` with the
tokenizer found next to --pretrained (offline), pads and truncates to the file's text length
(or --max-length), and writes a copy of the file with the new ``text_bert``; every other key
is unchanged. A sample without raw text but with text ids cannot be rebuilt: that is an error
naming the split and sample. Empty texts (a missing text modality) stay empty.
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Optional

from ..errors import KudaInputError
from ..files import atomic_path
from .common import add_flags, command_parser, run_command


def encode_texts(tokenizer, texts, max_length: int) -> np.ndarray:
    """[N, 3, max_length] float32: ids, attention mask, segment ids (zeros where the tokenizer
    gives none); an empty text is all padding with mask 0."""
    import numpy as np

    n = len(texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.zeros((n, 3, max_length), dtype=np.float32)
    out[:, 0, :] = pad
    for i, raw in enumerate(texts):
        if not isinstance(raw, str) or not raw.strip():
            continue
        enc = tokenizer(raw, truncation=True, max_length=max_length, padding="max_length",
                        return_token_type_ids=True)
        out[i, 0] = enc["input_ids"]
        out[i, 1] = enc["attention_mask"]
        tt = enc.get("token_type_ids")
        if tt is not None:
            out[i, 2] = tt
    return out


def retokenize_data(data: dict, tokenizer, max_length: Optional[int] = None, path="the feature file") -> dict:
    """A copy of MMSA-format ``data`` with text_bert rebuilt from raw_text (module docstring)."""
    import numpy as np

    from ..data.validate import SPLITS, check_splits, require_keys

    check_splits(data, path, [s for s in SPLITS if s in data] or SPLITS)
    out = {}
    for split, sd in data.items():
        if not isinstance(sd, dict):
            out[split] = sd
            continue
        require_keys(sd, ["raw_text"], path, split)
        raw = list(sd["raw_text"])
        old = np.asarray(sd["text_bert"]) if "text_bert" in sd else None
        length = int(max_length or (old.shape[2] if old is not None and old.ndim == 3 else 50))
        if old is not None and old.ndim == 3 and old.shape[1] == 3:
            for i, r in enumerate(raw):
                if (not isinstance(r, str) or not r.strip()) and old[i, 1].sum() > 0:
                    ids = sd.get("id")
                    sid = ids[i] if ids is not None and i < len(ids) else i
                    raise KudaInputError(
                        f"{path}, split '{split}': sample {sid} has text ids but no raw text, so its ids cannot be "
                        f"rebuilt for another tokenizer. Retokenize from a file that keeps raw_text for every "
                        f"sample (MMSA's pickles do).")
        new = dict(sd)
        text_bert = encode_texts(tokenizer, raw, length)
        if old is not None:
            text_bert = text_bert.astype(old.dtype, copy=False)
        new["text_bert"] = text_bert
        out[split] = new
    return out


def retokenize_file(feature_file, pretrained, out, max_length: Optional[int] = None) -> Path:
    # imported here, not at the top: `-h` and argument errors answer without loading torch
    from ..data.validate import read_pickle
    from ..mmsa.args import resolve_pretrained
    from ..data.tokenization import load_tokenizer

    # the names training accepts ('demo-tiny-bert': the local demo BERT) mean the same here
    tokenizer = load_tokenizer(resolve_pretrained(pretrained))
    if tokenizer is None:
        raise KudaInputError(
            f"No tokenizer was found for --pretrained {pretrained!r} (offline): the folder needs the tokenizer "
            f"files next to the weights (tokenizer.json or vocab.txt / vocab.json + merges.txt / a SentencePiece "
            f"model, and tokenizer_config.json), as `save_pretrained` of a tokenizer writes them.")
    data = read_pickle(feature_file)
    new = retokenize_data(data, tokenizer, max_length, path=f"The feature file '{feature_file}'")
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        pickle.dump(new, f, protocol=4)
    return out


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "feature_file", "pretrained", feature_file="required", pretrained="required")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="The feature file to write (a new .pkl; the input file is never changed).")
    p.add_argument("--max-length", type=int, default=None,
                   help="Padded text length. Default: the file's (its text_bert length)")
    return p


def run(a) -> int:
    path = retokenize_file(a.feature_file, a.pretrained, a.out, a.max_length)
    print(f"wrote {path} (text_bert from raw_text with the tokenizer of {a.pretrained}); train with "
          f"--feature-file {path} --pretrained {a.pretrained}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
