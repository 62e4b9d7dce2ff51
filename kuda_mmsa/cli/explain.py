"""``explain``: what a trained KuDA model did, sample by sample.

    kuda-mmsa explain --weights W [-d DATASET] [--feature-file F] [--split test] [--out DIR]

The model is rebuilt from the configuration saved next to the weights (``W.json``, written by
training; ``-c`` and the flags override it) and the split is run through it on the device and
in the precision training uses, so the metrics are the ones training reported. Writes, into
--out (default: ``~/MMSA/results/explain/<weights file name>/``, under --res-save-dir if given)

- ``explain-<split>.csv``: id, T, V, A (unimodal scores), R_T, R_V, R_A (ratios), prediction,
  label, abs_error and annotation (data with ``annotations``, e.g. the demo's dominant modality);
- ``ratio_distribution.png``: histogram of each modality's ratio;
- ``ratio_by_dominant.png`` (data annotated 'dominant:<modality>') or ``ratio_by_error.png``;
- ``samples.png``: panels for chosen samples (--samples ID ... or, by default, one correct and
  one wrong per annotated group / the best and worst samples);
- ``summary.json``: MMSA's metrics on the split and, with annotations, the fraction of samples
  whose largest ratio is on the annotated dominant modality.

That fraction asks whether the per-sample ratio finds the modality the data says carries the
sentiment (the demo data marks one per sample); uniform weights would do so for no sample and
a random pick for 1 in 3. The ratio never sees the label: it follows how far each modality's
own score lies from the others', so it picks the modality nearest the middle (median) of the
three scores. On the demo data that is mostly the weakly agreeing modality, not the dominant
one, and the fraction can fall below 1 in 3; the command prints both shares.
"""

from __future__ import annotations

import argparse

from ..experiments.explanation import describe_dominant, explain
from .common import add_flags, add_output_flags, command_parser, console_logging, overrides, run_command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "weights", "dataset", "feature_file", "config", "data_root", "pretrained", "gpu_ids", "no_plots",
              "verbose", dataset=None)
    add_output_flags(p, "explain", "<weights file name>")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--samples", nargs="*", default=None, help="ids for the per-sample panels")
    return p


def run(a) -> int:
    console_logging(a.verbose)
    s = explain(a.weights, a.feature_file, a.split, a.out, a.config or None, a.dataset, a.samples,
                plots=not a.no_plots, config=overrides(a) or None, res_save_dir=a.res_save_dir or None,
                gpu_ids=a.gpu_ids)
    m = s["metrics"]
    print(f"{s['samples']} {a.split} samples: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items())
          + f" ({s['precision']} on {s['device']}, as in training)")
    note = describe_dominant(s)
    if note:
        print(note)
    print(f"wrote {s['csv']}" + "".join(f"\nwrote {p}" for p in s["plots"]) + f"\nwrote {s['summary']}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
