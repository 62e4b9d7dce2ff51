"""One command line: ``kuda-mmsa``, ``python -m kuda_mmsa`` and (through the start-up hook)
``python -m MMSA``; its commands are the registry COMMANDS."""
from __future__ import annotations

import sys

from importlib import import_module
from typing import NamedTuple

from ..registry import Registry


class Command(NamedTuple):
    name: str
    example: str      # the arguments of a typical call
    help: str         # one line for the usage text

    def main(self, argv, prog):
        # imported on use: `-h` and every other command stay fast
        module = import_module(f".{'config_cmd' if self.name == 'config' else self.name}", __package__)
        return module.main(argv, prog=prog)


COMMANDS: Registry = Registry("command")
for _command in (
    Command("train", "-m kuda -d demo -s 1111", "train and test (MMSA's flags; the default command)"),
    Command("pretrain", "-d sims2", "stage 1: knowledge checkpoints"),
    Command("explain", "--weights W", "per-sample ratios, predictions and plots"),
    Command("ablate", "-d demo -s 1111", "KuDA variants and MMSA peers, mean ± std over seeds"),
    Command("robustness", "--weights W", "test-time corruption (missing, noise, swap) of one modality"),
    Command("evaluate", "--weights W -d mosei", "a trained model on other data, without fine-tuning"),
    Command("reproduce", "--dry-run", "the paper's table: stage 1, stage 2, ablations, MMSA peers"),
    Command("retokenize", "--feature-file F ...", "rebuild text ids from raw text for another text encoder"),
    Command("config", "show -d sims2", "the effective config and where each value came from"),
):
    COMMANDS.register(_command.name)(_command)
# `config keys` is a second line of the same command in the usage text
_EXTRA_LINES = (("config", "keys", "every key: type, range, default, help"),)


def usage(prog: str) -> str:
    """The usage text, from the command registry."""
    lines = [(c.name, c.example, c.help) for c in map(COMMANDS.get, COMMANDS)] + list(_EXTRA_LINES)
    lines[0] = ("[train]",) + lines[0][1:]
    width = max(len(f"{prog} {n} {e}") for n, e, _ in lines) + 3
    return "commands:\n" + "\n".join(f"  {f'{prog} {n} {e}':<{width}}{h}" for n, e, h in lines) + "\n"


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
        print(usage(prog))
    return COMMANDS["train"].main(argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
