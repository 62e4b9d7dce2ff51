"""``evaluate``: test trained KuDA weights on another dataset, without fine-tuning (the
cross-dataset generalisation check the paper does not make).

    kuda-mmsa evaluate --weights W -d DATASET [--split test] [--out DIR]
    kuda-mmsa evaluate --weights W --feature-file F [-d DATASET_FOR_METRICS]

The model is rebuilt from the config saved next to its weights (``W.json``) and run over a
split of the other data, on the device and in the precision training uses, scored with that
data's MMSA metrics. The data must have the feature
dims and padded lengths the model was trained with (text length, audio and vision length and
dim); otherwise a clear error names both sides. Its token ids must come from the model's text
encoder (checked against the encoder's tokenizer). When the two datasets' label ranges differ
(SIMS [-1, 1] vs MOSI/MOSEI [-3, 3]) the predictions are mapped affinely from the training
data's range to the test data's before scoring (--no-rescale keeps them as they are). Writes
``<out>/evaluate.json`` with --out.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ..errors import KudaCheckpointError, KudaInputError
from ..mmsa.datasets import canonical_name, get_facts
from .common import add_flags, command_parser, console_logging, overrides, run_command

# torch, MMSA and the model are imported inside the functions that use them: `-h` and
# argument errors answer without loading them.


def trained_shapes(state) -> dict:
    """What the weights were built for, read from their tensors: {modality: (length, dim)}."""
    def get(name):
        t = state.get(f"Model.{name}")
        return None if t is None else tuple(t.shape)

    out = {}
    for m in ("V", "A"):
        proj, pos = get(f"branches.{m}.proj.weight"), get(f"branches.{m}.pos")
        out[m] = (pos[1] if pos else None, proj[1] if proj else None)
    time = get("align.T.time.weight")
    out["T"] = (time[1] if time else None, None)
    return out


def data_shapes(args) -> dict:
    """{modality: (length, dim)} of the data args describe (after load_features; text: no dim)."""
    lens, dims = args["seq_lens"], args["feature_dims"]     # MMSA order T, A, V
    return {"T": (int(lens[0]), None),
            "A": (int(lens[1]), int(dims[1])), "V": (int(lens[2]), int(dims[2]))}


def _describe(shapes: dict) -> str:
    t, v, a = shapes["T"], shapes["V"], shapes["A"]
    return f"text length {t[0]}, vision length {v[0]} x dim {v[1]}, audio length {a[0]} x dim {a[1]}"


def dims_error(weights, info, trained: dict, args) -> KudaInputError:
    from ..training.run_config import RunConfig
    from ..training.stage1 import data_label

    target = data_shapes(args)
    diff = [m for m in ("T", "V", "A") if trained[m][0] != target[m][0]
            or (m != "T" and trained[m][1] != target[m][1])]
    names = {"T": "text", "V": "vision", "A": "audio"}
    return KudaInputError(
        f"The weights {weights} (trained on '{(info or {}).get('dataset', '?')}') cannot be evaluated on "
        f"{data_label(RunConfig.from_args(args))}: the {', '.join(names[m] for m in diff) or 'feature'} shapes differ. The model was "
        f"built for {_describe(trained)}; the data has {_describe(target)}. Evaluation without fine-tuning needs "
        f"the same feature extractors and padded lengths; for data of other dims, train on it (with "
        f"--knowledge-from to reuse the stage-1 knowledge).")


def label_range_of(dataset: Optional[str]):
    if not dataset:
        return None
    try:
        return list(get_facts(dataset, generate_demo=False)["label_range"])
    except KudaInputError:
        return None


def evaluate(weights, dataset: Optional[str] = None, feature_file=None, split: str = "test", config_file=None,
             config: Optional[dict] = None, rescale: bool = True, out=None, gpu_ids=None) -> dict:
    """Library entry point; returns the summary (also written to <out>/evaluate.json)."""
    from ..mmsa.args import build_args
    from ..mmsa.loader import load_features
    from ..mmsa.trained import evaluation_precision, load_trained, predict_split, read_weights, weights_info
    from ..training.metrics import metrics_for
    from ..training.run_config import RunConfig
    from ..training.stage1 import check_text_data, data_label

    info = weights_info(weights)
    trained_on = (info or {}).get("dataset")
    dataset = canonical_name(dataset or trained_on or "demo")
    try:
        args, features, model = load_trained(weights, dataset, config_file, feature_file, config, gpu_ids=gpu_ids)
    except KudaCheckpointError:
        # rebuild what was read, to name the dims on both sides (only on this failure path)
        layer = dict((info or {}).get("config") or {})
        if info and info.get("pretrained"):
            layer["pretrained"] = info["pretrained"]
        layer.update(config or {})
        args, _ = build_args("kuda", dataset, config_file, layer or None, "evaluate", custom_feature=feature_file)
        args.custom_feature = str(feature_file) if feature_file else None
        args.feature_T = args.feature_A = args.feature_V = ""
        load_features(args)
        trained, target = trained_shapes(read_weights(weights)), data_shapes(args)
        if any(trained[m] != target[m] for m in "VA") or trained["T"][0] != target["T"][0]:
            raise dims_error(weights, info, trained, args) from None
        raise
    if split not in features.splits:
        raise KudaInputError(f"Split '{split}' is not in the data; splits: {sorted(features.splits)}.")
    label = data_label(RunConfig.from_args(args))
    check_text_data({split: features[split]}, args.get("pretrained"), f"the feature file '{label}'")
    p = predict_split(args, model, features[split])
    source_range, target_range = label_range_of(trained_on), list(args.get("label_range") or [])
    pred = p.pred
    rescaled = bool(rescale and source_range and target_range and source_range != target_range)
    if rescaled:
        k = (target_range[1] - target_range[0]) / (source_range[1] - source_range[0])
        pred = target_range[0] + (pred - source_range[0]) * k
    metrics = metrics_for(args.metrics_name)(pred, p.labels)
    summary = {"weights": str(weights), "trained_on": trained_on, "trained_feature_file": (info or {}).get("feature_file"),
               "evaluated_on": dataset, "feature_file": label, "split": split, "samples": len(p.ids),
               "device": str(args.device), "precision": evaluation_precision(args)[0],
               "same_data_as_training": bool(info and info.get("data") and
                                             (info["data"].get("file") or {}).get("path") ==
                                             features.fingerprint["file"]["path"]),
               "label_range": {"trained": source_range, "evaluated": target_range},
               "predictions_rescaled": rescaled, "metrics": metrics}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluate.json").write_text(json.dumps(summary, indent=2))
        summary["json"] = str(out / "evaluate.json")
    return summary


def build_parser(prog=None) -> argparse.ArgumentParser:
    p = command_parser(prog, __doc__)
    add_flags(p, "weights", "dataset", "feature_file", "config", "data_root", "pretrained", "gpu_ids", "verbose",
              dataset=None)
    p.add_argument("--out", default=None, help="Folder to write evaluate.json into. Default: none written")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--no-rescale", action="store_true",
                   help="Score the predictions as they are when the label ranges of the two datasets differ.")
    return p


def run(a) -> int:
    console_logging(a.verbose)
    if not a.dataset and not a.feature_file:
        raise KudaInputError("evaluate needs the data to test on: -d DATASET (its file under the data root) or "
                             "--feature-file F (with -d naming the dataset whose metrics and label range apply).")
    s = evaluate(a.weights, a.dataset, a.feature_file, a.split, a.config or None, overrides(a) or None,
                 rescale=not a.no_rescale, out=a.out, gpu_ids=a.gpu_ids)
    print(f"{s['samples']} {s['split']} samples of {s['evaluated_on']} ({s['feature_file']}), model trained on "
          f"{s['trained_on']} ({s['precision']} on {s['device']}, as in training):")
    print("  " + ", ".join(f"{k} {v:.4f}" for k, v in s["metrics"].items()))
    if s["predictions_rescaled"]:
        print(f"  predictions mapped from {s['label_range']['trained']} to {s['label_range']['evaluated']} "
              f"(--no-rescale to keep them)")
    if s["same_data_as_training"]:
        print("  note: this is the file the model was trained on")
    if s.get("json"):
        print(f"wrote {s['json']}")
    return 0


def main(argv=None, prog=None) -> int:
    return run_command(build_parser, run, argv, prog)
