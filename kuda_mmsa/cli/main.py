"""One command line: ``kuda-mmsa``, ``python -m kuda_mmsa`` and (through the start-up hook)
``python -m MMSA``; its commands are listed in USAGE."""
from __future__ import annotations

import sys

from . import ablate, config_cmd, evaluate, explain, pretrain, reproduce, retokenize, robustness, train

USAGE = """commands:
  {prog} [train] -m kuda -d demo -s 1111   train and test (MMSA's flags; the default command)
  {prog} pretrain -d sims2                 stage 1: knowledge checkpoints
  {prog} explain --weights W               per-sample ratios, predictions and plots
  {prog} ablate -d demo -s 1111            KuDA variants and MMSA peers, mean ± std over seeds
  {prog} robustness --weights W            test-time corruption (missing, noise, swap) of one modality
  {prog} evaluate --weights W -d mosei     a trained model on other data, without fine-tuning
  {prog} reproduce --dry-run               the paper's table: stage 1, stage 2, ablations, MMSA peers
  {prog} retokenize --feature-file F ...   rebuild text ids from raw text for another text encoder
  {prog} config show -d sims2              the effective config and where each value came from
  {prog} config keys                       every key: type, range, default, help
"""

COMMANDS = {
    "train": train,
    "pretrain": pretrain,
    "explain": explain,
    "ablate": ablate,
    "config": config_cmd,
    "robustness": robustness,
    "evaluate": evaluate,
    "reproduce": reproduce,
    "retokenize": retokenize,
}


def main(argv=None, prog: str = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or "kuda-mmsa"
    if argv and argv[0] in COMMANDS:
        name = argv.pop(0)
        return COMMANDS[name].main(argv, prog=f"{prog} {name}")
    if argv and not argv[0].startswith("-"):
        print(f"{prog}: error: unknown command '{argv[0]}'; commands: {', '.join(COMMANDS)} (train is the "
              f"default: {prog} -m kuda -d demo).", file=sys.stderr)
        return 2
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE.format(prog=prog))
    return train.main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
