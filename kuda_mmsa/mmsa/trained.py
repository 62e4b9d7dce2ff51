"""A trained KuDA model back from its weights, for explain, evaluate and robustness.

The configuration comes from the JSON the trainer writes next to the weights
(``<weights>.json``: every model and training key, the text encoder, the dataset) when it is
there, then from ``-c`` and the command line; the data is read and validated like a run's.
Weights are loaded with ``weights_only=True``, and a file that is not stage-2 weights (an
interrupted run's ``.resume`` state, a stage-1 checkpoint, a corrupt file) is a clear error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..errors import KudaCheckpointError, KudaInputError
from ..training.checkpoints import (KNOWLEDGE_FORMAT, RESUME_FORMAT, STAGE1_PARTIAL_FORMAT, load_state_checked,
                                    read_checkpoint, weights_info_path)
from .args import build_args
from .datasets import canonical_name
from .loader import load_features
from ..data import text_encoder_vocab_size
from .patches import AMIO, ATIO
from .register import register

OTHER_FORMATS = {
    RESUME_FORMAT: "the saved state of an interrupted training run (.resume), not trained weights: "
                   "finish the run (run the same command again) and use the weights it saves",
    KNOWLEDGE_FORMAT: "a stage-1 knowledge checkpoint (one modality's branch), not a whole trained "
                      "model: pass the weights stage 2 saved (e.g. ~/MMSA/saved_models/kuda-<dataset>.pth)",
    STAGE1_PARTIAL_FORMAT: "an interrupted stage-1 state, not a trained model",
}


def weights_info(weights) -> Optional[dict]:
    path = weights_info_path(weights)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise KudaInputError(f"The weights' config file {path} could not be read ({e}); delete it and "
                             f"pass the training config with -c.") from None


def read_weights(weights) -> dict:
    """MMSA's saved state dict of a KuDA model (keys ``Model.*``)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise KudaCheckpointError(f"The weights file {path} (--weights) "
                                  + ("is a folder, not a file." if path.is_dir() else "does not exist."))
    state = read_checkpoint(path, "The weights file")
    if isinstance(state, dict) and state.get("format") in OTHER_FORMATS:
        raise KudaCheckpointError(f"{path} (--weights) is {OTHER_FORMATS[state['format']]}.")
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise KudaCheckpointError(
            f"{path} (--weights) is not a state dict of tensors (it holds a {type(state).__name__}); "
            f"pass the weights a KuDA run saved.")
    if not any(k.startswith("Model.") for k in state):
        state = {f"Model.{k}": v for k, v in state.items()}
    if not any(k.startswith("Model.branches.") for k in state):
        shown = ", ".join(sorted(state)[:3])
        raise KudaCheckpointError(
            f"{path} (--weights) holds no KuDA model: KuDA's weights have the tensors of its three branches "
            f"(Model.branches.T/V/A.*), these have {len(state)} tensor(s) such as {shown}. They were saved by "
            f"another model (e.g. one of MMSA's); explain, evaluate and robustness take the weights a KuDA run "
            f"saved (e.g. ~/MMSA/saved_models/kuda-<dataset>.pth).")
    check_finite_state(state, path)
    return state


def check_finite_state(state: dict, path) -> None:
    """Weights with NaN or infinity come from a run that diverged: every prediction would be
    NaN. Refused with the tensors named."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise KudaCheckpointError(
            f"The weights {path} hold NaN or infinite values in {len(bad)} of {len(state)} tensor(s) (e.g. "
            f"{', '.join(bad[:3])}): they were saved by a run that diverged, so every prediction would be NaN. "
            f"Nothing was evaluated. Use the weights of a run that finished (train again with a lower "
            f"learning_rate, or grad_clip).")


def load_trained(weights, dataset: Optional[str] = None, config_file=None, feature_file=None,
                 overrides: Optional[dict] = None, device="cpu"):
    """(args, features, model in eval mode) for trained KuDA weights."""
    info = weights_info(weights)
    if info is not None and info.get("model") not in (None, "kuda"):
        raise KudaInputError(f"{weights} holds a '{info.get('model')}' model; these commands explain KuDA.")
    dataset = canonical_name(dataset or (info or {}).get("dataset") or "demo")
    layer = dict((info or {}).get("config") or {})
    if info and info.get("pretrained") and not (overrides or {}).get("pretrained"):
        layer["pretrained"] = info["pretrained"]
    layer.update(overrides or {})
    args, _ = build_args("kuda", dataset, config_file, layer or None,
                         f"{weights_info_path(weights).name} + command line" if info else "command line",
                         custom_feature=feature_file)
    args.custom_feature = str(feature_file) if feature_file else None
    args.feature_T = args.feature_A = args.feature_V = ""
    args.device = torch.device(device)
    args.progress = False
    features = load_features(args)
    state = read_weights(weights)
    model = AMIO(args)
    load_state_checked(model, state, weights, "The weights file",
                       "the training command with the same -c / --pretrained / data", made_with=None)
    return args, features, model.to(args.device).eval()


def tester_for(args, features=None, model=None):
    """Evaluation of a finished run's saved weights (args as MMSA_run built them, KuDA or a
    stock model; or a model already loaded): (test split, test_fn(loader) -> MMSA metrics,
    corruption options)."""
    register()     # MMSA's trainers look their metrics up by dataset name
    features = features or load_features(args)
    if model is None:
        model = AMIO(args)
        state = read_checkpoint(args["model_save_path"], "The weights file")
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            check_finite_state(state, args["model_save_path"])
        model.load_state_dict(state)
    model.to(args["device"]).eval()
    trainer = ATIO().getTrain(args)

    def test_fn(loader):
        return trainer.do_test(model, loader, mode="TEST")

    options = {"vocab_size": text_encoder_vocab_size(args.get("pretrained")) if args.get("use_bert") else None,
               "min_length": 0 if args["model_name"] == "kuda" else 1, "bert_text": bool(args.get("use_bert"))}
    return features["test"], test_fn, options
