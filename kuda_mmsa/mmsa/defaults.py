"""What the command line and ``MMSA_run`` share: the model names (KuDA and MMSA's) and the
default number of data-loading workers. Importable without torch or MMSA: the parsers need
them before anything heavy is loaded."""
from __future__ import annotations

import os

from ..errors import KudaInputError

KUDA = "kuda"
STOCK_CLI_MODELS = ["lf_dnn", "ef_lstm", "tfn", "lmf", "mfn", "graph_mfn", "mult",
                    "bert_mag", "misa", "mfm", "mlf_dnn", "mtfn", "mlmf", "self_mm", "mmim"]
EXTRA_STOCK_MODELS = ["mctn", "tfr_net"]   # in MMSA's tables, not in its CLI choices


def model_choices(cli: bool = False) -> list:
    return [KUDA] + STOCK_CLI_MODELS + ([] if cli else EXTRA_STOCK_MODELS)


def check_model(model_name: str) -> None:
    if model_name not in model_choices():
        raise KudaInputError(f"Unknown model '{model_name}'. Choices: {', '.join(model_choices())}.")


def default_workers() -> int:
    """min(8, the CPUs this process may run on): torch warns (once per DataLoader) when a
    loader has more workers than that, and results do not depend on the number."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):       # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))
