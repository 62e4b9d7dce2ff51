"""The robustness protocols: which corrupted test sets a model is evaluated on.

- ``ours`` (default): kuda_mmsa.data.corruption: a share ``rate`` of the test *samples* has one
  modality missing, noisy or swapped, for each kind x modality x rate (evaluate_grid);
- ``tfrnet``: MMSA's TFR-Net missing option (kuda_mmsa.data.protocols): each *token or frame*
  of a modality is missing with probability ``rate``. Evaluated for each modality of
  --modality alone and, when there are several, for all of them at once (MMSA's config takes
  one rate per modality, so both are settings of it), at each rate;
- ``lnln``: LNLN's evaluation (Zhang et al., "Towards Robust Multimodal Sentiment Analysis with
  Incomplete Data", NeurIPS 2024; github.com/Haoyu-ha/LNLN, ``robust_evaluation.py`` and
  ``core/dataset.py``): the same token/frame-level missing on all three modalities at once,
  one rate for all, at rates 0, 0.1, ..., 0.9, seeds 1111, 1112, 1113; the reported figure
  is the mean over the rates (of the mean over seeds). LNLN's three seeds are the seeds of
  three trained checkpoints, each evaluated under one mask drawn with its eval config's seed
  (1111); here the seeds are the masks' seeds (``robustness``: -s, default 1111-1113 under
  lnln; ``ablate``: each cell's own seed, which is also its training seed).

Rows of tfrnet / lnln carry the protocol's name in the ``corruption`` column and the missing
modalities in ``modality`` (``TVA``: all three).
"""
from __future__ import annotations

from typing import Callable, Iterable, List, Mapping, Optional, Sequence, Tuple

from torch.utils.data import DataLoader

from ..data.kinds import KINDS, PROTOCOLS
from ..errors import KudaInputError

OURS_RATES = (0.0, 0.25, 0.5, 0.75, 1.0)
LNLN_RATES = tuple(round(0.1 * i, 1) for i in range(10))      # robust_evaluation.py's missing_rate_list
LNLN_SEEDS = (1111, 1112, 1113)
LNLN_MODALITIES = "TVA"


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise KudaInputError(f"Unknown robustness protocol '{protocol}' (--protocol); choices: "
                             f"{', '.join(PROTOCOLS)}.")
    return protocol


def default_rates(protocol: str) -> Tuple[float, ...]:
    return LNLN_RATES if check_protocol(protocol) == "lnln" else OURS_RATES


def default_seeds(protocol: str, fallback: Sequence[int]) -> List[int]:
    return list(LNLN_SEEDS) if check_protocol(protocol) == "lnln" else list(fallback)


def output_stem(protocol: str) -> str:
    """Files of ``ours`` keep their names (robustness.csv, ...); the others get their own
    (robustness-tfrnet.csv, ...), so that one folder can hold several protocols."""
    return "robustness" if check_protocol(protocol) == "ours" else f"robustness-{protocol}"


def modality_sets(protocol: str, modalities: Sequence[str]) -> List[str]:
    """tfrnet: each modality alone, then all of them together; lnln: all three together."""
    if check_protocol(protocol) == "lnln":
        return [LNLN_MODALITIES]
    mods = list(dict.fromkeys(modalities))
    return mods + (["".join(m for m in "TVA" if m in mods)] if len(mods) > 1 else [])


def check_protocol_options(protocol: str, kinds_given: Optional[Iterable[str]], modalities_given,
                           kinds_flag: str) -> None:
    """Options that mean nothing under a protocol are refused rather than silently ignored."""
    check_protocol(protocol)
    if protocol != "ours" and kinds_given:
        raise KudaInputError(f"--protocol {protocol} makes tokens and frames missing as it defines; {kinds_flag} "
                             f"chooses the corruptions of --protocol ours only; found {kinds_flag} "
                             f"{' '.join(kinds_given)}. Leave it out.")
    if protocol == "lnln" and modalities_given:
        raise KudaInputError(f"--protocol lnln always makes all three modalities missing together; found "
                             f"--modality {' '.join(modalities_given)}. Leave it out (or use --protocol tfrnet "
                             f"for one modality at a time).")


def evaluate_protocol(protocol: str, test_split, test_fn: Callable[[DataLoader], Mapping[str, float]],
                      kinds: Iterable[str], modalities: Iterable[str], rates: Sequence[float],
                      seeds: Iterable[int], batch_size: int, snr_db: float = 0.0, vocab_size=None,
                      min_length: int = 0, bert_text: bool = True, unk_id=None) -> List[dict]:
    """One row per (corruption, modality, rate, seed) and test_fn's metrics; ``ours`` is
    evaluate_grid, unchanged."""
    from ..data.protocols import RandomMissing, RandomMissingDataset
    from .robustness import evaluate_grid

    if check_protocol(protocol) == "ours":
        return evaluate_grid(test_split, test_fn, kinds, modalities, rates, seeds, batch_size, snr_db,
                             vocab_size=vocab_size, min_length=min_length, bert_text=bert_text)
    rows = []
    for seed in seeds:
        for mods in modality_sets(protocol, list(modalities)):
            for rate in rates:
                spec = RandomMissing.of({m: float(rate) for m in mods}, int(seed))
                ds = RandomMissingDataset(test_split, spec, unk_id=unk_id, bert_text=bert_text)
                loader = DataLoader(ds, batch_size=batch_size, shuffle=False)
                metrics = {k: float(v) for k, v in test_fn(loader).items() if isinstance(v, (int, float))}
                rows.append({"corruption": protocol, "modality": mods, "rate": float(rate), "seed": int(seed),
                             **metrics})
    return rows


__all__ = ["KINDS", "PROTOCOLS", "OURS_RATES", "LNLN_RATES", "LNLN_SEEDS", "check_protocol", "default_rates",
           "default_seeds", "output_stem", "modality_sets", "check_protocol_options", "evaluate_protocol"]
