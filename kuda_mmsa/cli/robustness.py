"""``robustness``: trained KuDA models under test-time corruption of one modality at a time.

    kuda-mmsa robustness --weights W [W ...] [-d DATASET | --feature-file F] [--protocol ours|tfrnet|lnln]
                         [--corrupt missing noise swap] [--modality T V A] [--rate 0 0.25 0.5 0.75 1]
                         [-s SEED ...] [--out DIR]

Each model is rebuilt from the config saved next to its weights and evaluated on the test
split (on the device and in the precision training uses) with a share ``rate`` of the samples corrupted in one modality (kuda_mmsa.data.corruption:
missing, Gaussian noise at --snr-db, or swapped with another sample's), for each seed; the
corrupted samples depend only on the seed, so every model sees the same corruption. Writes,
into --out (default: ``~/MMSA/results/robustness/<labels joined by +>/``, under
--res-save-dir if given)

- ``robustness.csv``: model, corruption, modality, rate, seed and MMSA's metrics;
- ``robustness_summary.csv`` and ``robustness.md``: per model, corruption and modality, the
  relative robustness (mean of MAE / Corr along the rate curve) and the effective robustness
  against --reference (how much less it degrades; positive = more robust), MultiBench's two
  summary figures (kuda_mmsa.training.robustness), mean ± std over seeds;
- ``robustness-<corruption>.png``: MAE and Corr against rate, one line per model, seed bands.

``--protocol`` (kuda_mmsa.training.protocols) chooses the corruption: ``ours`` (default, the
above); ``tfrnet``, MMSA's TFR-Net missing option (each token / frame of a modality missing with
probability ``rate``: text tokens become [UNK], [CLS]/[SEP] kept; audio / vision frames zeroed),
for each --modality alone and all of them together; ``lnln``, LNLN's evaluation (the same on all
three modalities at once, rates 0, 0.1, ..., 0.9 and seeds 1111-1113 by default, plus the mean
over the rates). Their files are ``robustness-<protocol>.csv``, ``robustness-<protocol>_summary.csv``,
``robustness-<protocol>.md`` and ``robustness-<protocol>.png``.

``kuda-mmsa ablate --robustness ...`` does the same for KuDA variants and MMSA peers.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.kinds import KINDS, PROTOCOLS
from ..errors import KudaInputError
from ..experiments.robustness import LNLN_RATES_HELP, PROTOCOL_HELP, protocol_options, resolve_grid, write_outputs
from .common import (add_flags, add_output_flags, command_parser, console_logging, finite_float, output_folder,
                     overrides, run_command)


def add_grid_flags(p, prefix: str = "") -> None:
    """The corruption grid's flags (also used by `ablate --robustness`). --corrupt, --modality
    and --rate default to None so that a protocol can tell a given option from its default
    (resolve_grid)."""
    p.add_argument("--protocol", default="ours", choices=PROTOCOLS,
                   help="; ".join(f"{k}: {v}" for k, v in PROTOCOL_HELP.items()) + ". Default: ours")
    if not prefix:
        p.add_argument("--corrupt", nargs="+", default=None, choices=KINDS, metavar="KIND",
                       help=f"Corruptions of --protocol ours: {', '.join(KINDS)}. Default: all")
    p.add_argument("--modality", nargs="+", default=None, type=str.upper, choices=["T", "V", "A"],
                   help="Modalities corrupted (one at a time; tfrnet: also all together; not with lnln). "
                        "Default: T V A")
    p.add_argument("--rate", nargs="+", type=finite_float, default=None,
                   help=f"Shares of test samples corrupted (tfrnet, lnln: of tokens / frames missing). Default: "
                        f"0 0.25 0.5 0.75 1 (lnln: {LNLN_RATES_HELP})")
    p.add_argument("--snr-db", type=finite_float, default=0.0,
                   help="Signal-to-noise ratio of 'noise', in dB. Default: 0")


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    p.add_argument("--weights", nargs="+", required=True, help="Trained KuDA weights (one or more models).")
    p.add_argument("--labels", nargs="+", default=None, help="A name per weights file (default: the file names).")
    add_flags(p, "dataset", "feature_file", "config", "data_root", "pretrained", "seeds", "gpu_ids", "verbose",
              dataset=None)
    add_output_flags(p, "robustness", "<labels joined by +>")
    add_grid_flags(p)
    p.add_argument("--reference", default=None, help="Model the effective robustness is measured against "
                                                     "(a --labels name). Default: the first model")
    return p


def run(a) -> int:
    from ..mmsa.trained import load_trained, tester_for
    from ..training.protocols import default_seeds, evaluate_protocol, output_stem

    console_logging(2 if a.verbose == 2 else 0)      # one test log line per evaluation is too many
    labels = a.labels or [Path(w).stem for w in a.weights]
    if len(labels) != len(a.weights) or len(set(labels)) != len(labels):
        raise KudaInputError(f"--labels needs one distinct name per --weights file; found {labels} for "
                             f"{len(a.weights)} file(s).")
    reference = a.reference or labels[0]
    if reference not in labels:
        raise KudaInputError(f"--reference '{reference}' is not one of the models: {labels}.")
    grid = resolve_grid(a.protocol, a.corrupt, a.modality, a.rate)
    seeds = a.seeds or default_seeds(a.protocol, [1111])
    rows = []
    for name, weights in zip(labels, a.weights):
        args, features, model = load_trained(weights, a.dataset, a.config or None, a.feature_file,
                                             overrides(a) or None, gpu_ids=a.gpu_ids)
        args.model_save_path = str(weights)
        split, test_fn, options = tester_for(args, features, model)
        mine = evaluate_protocol(a.protocol, split, test_fn, grid["kinds"], grid["modalities"], grid["rates"], seeds,
                                 int(args.batch_size), a.snr_db, **protocol_options(a.protocol, args, options))
        rows += [{"model": name, **r} for r in mine]
        print(f"[robustness] {name}: {len(mine)} evaluations")
    out = output_folder(a.out, "robustness", "+".join(labels), a.res_save_dir or None)
    paths = write_outputs(rows, out, "model", reference, a.protocol)
    print((out / f"{output_stem(a.protocol)}.md").read_text())
    for k, v in paths.items():
        print(f"wrote {v}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
