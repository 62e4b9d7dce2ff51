"""``config``: the configuration of KuDA runs.

    kuda-mmsa config show -d sims2 [-c FILE] [--pretrained P ...]   effective config + sources
    kuda-mmsa config keys                                            every key: type, range, default, help

``show`` prints every key with its value and where the value came from: ``default`` (the
schema; for ``pretrained``, the dataset's own text encoder), ``configs/kuda.yaml [<dataset>]``, the ``-c`` file and its section, or ``command
line``. Unknown keys, wrong types and values out of range are refused exactly as a run would.
"""
from __future__ import annotations

import argparse

from ..config import describe_keys, render
from ..mmsa.datasets import canonical_name, get_facts
from .common import add_flags, command_parser, overrides, run_command


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    sub = p.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="the effective config of a KuDA run and where each value came from")
    add_flags(show, "dataset", "config", "data_root", "knowledge_dir", "knowledge_from", "pretrained",
              "no_plots", "no_progress", dataset="sims")
    show.add_argument("--changed", action="store_true", help="only keys not at their default")
    sub.add_parser("keys", help="every key with its type, range, default and help")
    return p


def run(a) -> int:
    if a.action == "keys":
        print(describe_keys())
        return 0
    from ..mmsa.args import kuda_effective   # here: `-h` answers without loading torch

    dataset = canonical_name(a.dataset)
    eff = kuda_effective(dataset, a.config or None, overrides(a) or None, "command line")
    if eff.values.get("pretrained") is None:
        # what a run then uses (kuda_mmsa.mmsa.args): the dataset's own text encoder, not "null"
        eff.values["pretrained"] = get_facts(dataset, generate_demo=False)["default_bert"]
        eff.sources["pretrained"] = f"default (the text encoder of dataset {dataset})"
    print(f"KuDA config for dataset '{canonical_name(a.dataset)}'"
          + (f" with -c {a.config}" if a.config else "") + ":")
    print(render(eff, only_changed=a.changed))
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
