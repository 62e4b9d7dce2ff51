"""Flags shared by the commands, declared once, and what they become in a run's config.

Each command picks the flags it takes with ``add_flags(parser, "dataset", "seeds", ...)``;
names, spellings, types and help are the same everywhere. Flags that set configuration keys
(``--data-root``, ``--pretrained``, ``--no-plots``, ...) become the run's top config layer
(``overrides(ns)``), shown as "command line" by ``config show``.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import math
import os
import sys
from typing import Any, Callable, Dict

from ..config.schema import KNOWLEDGE_TEXT
from ..errors import KudaError
from ..files import output_folder  # noqa: F401  (the commands' --out rule; the experiments use it too)
from ..mmsa.defaults import default_workers, model_choices
from ..mmsa.datasets import canonical_name, dataset_choices


def bounded_int(low: int, high: int = None):
    """An argparse type: an integer in [low, high] (a clear usage error otherwise)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is outside [{low}, {high if high is not None else 'inf'}]")
        return value
    parse.__name__ = "int"
    return parse


def finite_float(text):
    """An argparse type: a finite number (nan and inf are refused with a usage error)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


finite_float.__name__ = "float"

SEED_MAX = 2 ** 32 - 1        # numpy's seeds (MMSA seeds numpy, random and torch alike)


FLAGS: Dict[str, tuple] = {
    "dataset": (("-d", "--dataset"), dict(type=str.lower, choices=dataset_choices(),
                help="Dataset (sims2 = simsv2; demo = generated, no download).")),
    "model": (("-m", "--model"), dict(type=str.lower, default="lf_dnn", choices=model_choices(),
              help="Model: kuda or a stock MMSA model. Default: lf_dnn (MMSA's default)")),
    "config": (("-c", "--config"), dict(type=str, default="",
               help="Config file (YAML or JSON) over the defaults; `config keys` lists every key.")),
    "seeds": (("-s", "--seeds"), dict(action="append", type=bounded_int(0, SEED_MAX), default=[],
              help="Random seed; repeat for several (-s 1111 -s 1112).")),
    "gpu_ids": (("-g", "--gpu-ids"), dict(action="append", type=int, default=[],
                help="GPU to use (one). Default: the GPU with the most free memory, the CPU when "
                     "there is none.")),
    "num_workers": (("-n", "--num-workers"), dict(type=bounded_int(0), default=default_workers(),
                    help=f"Data-loading worker processes (results do not depend on it). Default: "
                         f"min(8, CPUs) = {default_workers()}")),
    "verbose": (("-v", "--verbose"), dict(type=int, default=1, choices=[0, 1, 2],
                help="Verbosity: 0 errors, 1 info, 2 debug. Default: 1")),
    "feature_file": (("--feature-file",), dict(type=str, default=None,
                     help="Any MMSA-format feature pickle (all three modalities), instead of the "
                          "dataset's file.")),
    "data_root": (("--data-root",), dict(type=str, default=None,
                  help="Folder of MMSA's datasets, with MMSA's relative file names. Default: "
                       "$MMSA_DATA_ROOT, else ~/MMSA/datasets")),
    "knowledge_dir": (("--knowledge-dir",), dict(type=str, default=None,
                      help="Folder of the stage-1 (knowledge) checkpoints. Default: "
                           "$KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge")),
    "knowledge_from": (("--knowledge-from",), dict(type=str.lower, default=None, choices=dataset_choices(),
                       help="Use the stage-1 knowledge trained on this dataset (the paper's protocol "
                            "for MOSI/MOSEI: sims2).")),
    "knowledge_text": (("--knowledge-text",), dict(type=str.lower, default=None, choices=list(KNOWLEDGE_TEXT),
                       help="With --knowledge-from: the text knowledge from the source dataset (source: its text "
                            "must be tokenised for this run's encoder), this dataset's own (own) or none, trained "
                            "in stage 2 (scratch). Default: the config's knowledge_text (source)")),
    "knowledge_feature_file": (("--knowledge-feature-file",), dict(type=str, default=None,
                               help="With --knowledge-from: the source dataset's feature pickle. Default: its "
                                    "file under the data root")),
    "pretrained": (("--pretrained",), dict(type=str, default=None,
                   help="Text encoder: a local folder or a Hugging Face name in the local cache "
                        "('demo-tiny-bert' = the local demo BERT).")),
    "model_save_dir": (("--model-save-dir",), dict(type=str, default="",
                       help='Folder of trained weights. Default: "~/MMSA/saved_models"')),
    "res_save_dir": (("--res-save-dir",), dict(type=str, default="",
                     help='Folder of result CSVs. Default: "~/MMSA/results"')),
    "log_dir": (("--log-dir",), dict(type=str, default="", help='Folder of logs. Default: "~/MMSA/logs"')),
    "no_plots": (("--no-plots",), dict(action="store_true", help="Write no PNGs.")),
    "no_progress": (("--no-progress",), dict(action="store_true", help="Show no progress bars.")),
    "per_rank_batch": (("--per-rank-batch",), dict(action="store_true",
                       help="Under torchrun: batch_size per process (global batch = batch_size x "
                            "processes) instead of the global batch split over the processes.")),
    "devices": (("--devices",), dict(type=str, default=None, metavar="0,1,... | cpu:N",
                help="Run the cells (ablation runs, tuning trials) in parallel on this machine, one per "
                     "device at a time, each in its own process: GPU indices (0,1,2,3) or N CPU slots "
                     "(cpu:4).")),
    "executor": (("--executor",), dict(type=str.lower, default=None, choices=["local", "ray"],
                 help="Where cells run: local (processes on --devices) or ray (one Ray task per cell, one "
                      "GPU each where the cluster has GPUs; needs pip install -e '.[ray]'). Default: "
                      "local with --devices, else one after another in this process.")),
    "address": (("--address",), dict(type=str, default=None, metavar="ADDR",
                help="With --executor ray: the address of a running Ray cluster (e.g. auto, or "
                     "HEAD_IP:6379); default: an embedded Ray on this machine.")),
    "weights": (("--weights",), dict(type=str, required=True,
                help="Trained KuDA weights (MMSA's saved model, e.g. ~/MMSA/saved_models/kuda-demo.pth).")),
}

# flag name -> the config key it sets (and how)
CONFIG_FLAGS: Dict[str, Callable[[Any], tuple]] = {
    "data_root": lambda v: ("data_root", v),
    "knowledge_dir": lambda v: ("knowledge_dir", v),
    "knowledge_from": lambda v: ("knowledge_from", canonical_name(v)),
    "knowledge_text": lambda v: ("knowledge_text", v),
    "knowledge_feature_file": lambda v: ("knowledge_feature_file", v),
    "pretrained": lambda v: ("pretrained", v),
    "no_plots": lambda v: ("plots", False),
    "no_progress": lambda v: ("progress", False),
    "per_rank_batch": lambda v: ("per_rank_batch", True),
}


def add_flags(parser: argparse.ArgumentParser, *names: str, **defaults) -> argparse.ArgumentParser:
    """Add the shared flags ``names``; ``defaults`` changes a flag's default (or ``required``)."""
    for name in names:
        flags, kwargs = FLAGS[name]
        kwargs = dict(kwargs)
        if name in defaults:
            value = defaults[name]
            if value is argparse.SUPPRESS or value == "required":
                kwargs["required"] = True
                kwargs.pop("default", None)
            else:
                kwargs["default"] = value
        parser.add_argument(*flags, **kwargs)
    return parser


def add_output_flags(parser, kind: str, name_rule: str) -> None:
    """``--res-save-dir`` and ``--out`` of a command that writes a folder of outputs: by default
    ``<result root>/<kind>/<name>``, where MMSA users look, never the working directory."""
    add_flags(parser, "res_save_dir")
    parser.add_argument("--out", type=str, default=None,
                        help=f"Output folder. Default: <--res-save-dir, else ~/MMSA/results>/{kind}/{name_rule}")


def overrides(ns: argparse.Namespace) -> Dict[str, Any]:
    """The config keys the command line sets (only flags that were given)."""
    out = {}
    for name, to_key in CONFIG_FLAGS.items():
        value = getattr(ns, name, None)
        if value not in (None, False, ""):
            key, v = to_key(value)
            out[key] = v
    return out


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted (not when it was made)."""

    def emit(self, record):
        self.stream = sys.stderr
        super().emit(record)


def console_logging(verbose: int = 1) -> None:
    """MMSA's logger on stderr for commands that do not go through MMSA_run."""
    logger = logging.getLogger("MMSA")
    handler = next((h for h in logger.handlers if isinstance(h, _Stderr)), None)
    if handler is None:
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(name)s - %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    handler.setLevel({0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}.get(int(verbose), logging.INFO))


def closest(word: str, candidates, cutoff: float = 0.5) -> str:
    """The candidate nearest ``word`` (difflib), or '' when none is near."""
    near = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=cutoff)
    return near[0] if near else ""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one paragraph: what was wrong, the closest valid choice or
    option, and where the options are listed; no usage dump (a typo in -d used to print 15
    lines of usage before the one that mattered). Exit status 2, as argparse's."""

    def _check_value(self, action, value):
        # argparse's own check (a private method: argparse has no public hook for this
        # message) lists the choices but never says which one was probably meant
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            near = closest(value, choices)
            raise argparse.ArgumentError(
                action, f"invalid choice: '{value}'" + (f"; did you mean '{near}'?" if near else ".")
                + f" Choices: {', '.join(choices)}.")

    def error(self, message):
        prefix = "unrecognized arguments: "
        if message.startswith(prefix):
            words = message[len(prefix):].split()
            options = [w.split("=", 1)[0] for w in words if w.startswith("-")]
            near = closest(options[0], self._option_string_actions, cutoff=0.7) if options else ""
            message = (f"{prefix}{' '.join(words)}" + (f"; did you mean {near}?" if near else "."))
        elif not message.rstrip().endswith((".", "?")):
            message = message.rstrip() + "."
        self.exit(2, f"{self.prog}: error: {message} `{self.prog} -h` lists every option.\n")


def command_parser(prog, doc: str) -> argparse.ArgumentParser:
    """A command's parser: its docstring's first paragraph as the description, the rest as
    the epilog (kept as written)."""
    head, _, rest = doc.partition("\n\n")
    return Parser(prog=prog, description=head, epilog=rest or None,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def run_command(build_parser, run, argv=None, prog=None) -> int:
    """Parse ``argv`` with the command's parser and run it, guarded (see ``guarded``)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    return guarded(parser.prog, lambda: run(args))


def guarded(prog: str, fn: Callable[[], int]) -> int:
    """Run a command: a KudaError is one paragraph on stderr and its exit status, never a
    traceback; Ctrl-C exits 130."""
    try:
        return fn() or 0
    except KudaError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:         # the reader went away (`... | head`): nothing left to say
        sys.stdout = open(os.devnull, "w")
        return 0
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (the last finished epoch is saved; run the same command to resume)",
              file=sys.stderr)
        return 130
