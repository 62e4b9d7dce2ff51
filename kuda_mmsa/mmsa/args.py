"""MMSA's run arguments (``args``) for a model and a dataset, from the typed configuration.

Model 'kuda': dataset facts (kuda_mmsa.mmsa.datasets) and MMSA's fixed keys for a BERT model,
then the effective configuration (kuda_mmsa.config): schema defaults < configs/kuda.yaml
section of the dataset < ``-c FILE`` < the run's overrides (command line or
``MMSA_run(config=)``), every key checked, with its source kept for ``config show``.

Stock MMSA models: MMSA's own JSON (``-c FILE`` when it has MMSA's layout, else MMSA's
default) merged as MMSA does; for datasets MMSA lacks (simsv2, demo) the model's 'sims'
parameters are used with our dataset facts. Overrides (a flat ``-c`` file, ``config=``)
may only name keys the model's MMSA config has, or the schema's ``run`` keys.

Then paths are resolved: ``featurePath`` under the data root (``data_root`` key, else
$MMSA_DATA_ROOT, else ~/MMSA/datasets) unless a feature file is given, ``knowledge_dir``,
and ``pretrained`` ('demo-tiny-bert' -> the local tiny BERT, built on first use).
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from easydict import EasyDict as edict

from ..config import Effective, package_config_path, read_config_file, resolve
from ..config.keys import unknown_key_error
from ..config.schema import SCHEMA, keys_of
from ..data import DEMO_BERT_NAME, ensure_demo_text_encoder
from ..errors import KudaInputError
from ..files import default_data_root, default_knowledge_root
from ..model.encoders import local_encoder_config
from .datasets import ALIASES, DATASETS, STOCK_DATASETS, canonical_name, get_facts

KUDA = "kuda"
STOCK_CLI_MODELS = ["lf_dnn", "ef_lstm", "tfn", "lmf", "mfn", "graph_mfn", "mult",
                    "bert_mag", "misa", "mfm", "mlf_dnn", "mtfn", "mlmf", "self_mm", "mmim"]
EXTRA_STOCK_MODELS = ["mctn", "tfr_net"]   # in MMSA's tables, not in its CLI choices
RUN_KEYS = tuple(k.name for k in keys_of("run"))
DEFAULT_SOURCE = "MMSA_run(config=...)"


def model_choices(cli: bool = False) -> list:
    return [KUDA] + STOCK_CLI_MODELS + ([] if cli else EXTRA_STOCK_MODELS)


def check_model(model_name: str) -> None:
    if model_name not in model_choices():
        raise KudaInputError(f"Unknown model '{model_name}'. Choices: {', '.join(model_choices())}.")


def resolve_pretrained(name):
    """'demo-tiny-bert' -> folder of the local tiny BERT (built on first use); an existing
    local path -> absolute path; anything else (a hub name) unchanged."""
    if name is None:
        return None
    if str(name) == DEMO_BERT_NAME:
        return str(ensure_demo_text_encoder())
    p = Path(str(name)).expanduser()
    return str(p.resolve()) if p.exists() else name


def _mmsa_default_file(tune: bool) -> Path:
    import MMSA

    return Path(MMSA.__file__).parent / "config" / ("config_tune.json" if tune else "config_regression.json")


def user_config_file(config_file) -> Optional[Path]:
    """None when no user file was given (None, '', or MMSA's own default file)."""
    if config_file is None or str(config_file) == "":
        return None
    p = Path(config_file).expanduser()
    try:
        if any(p.resolve() == _mmsa_default_file(t).resolve() for t in (False, True)):
            return None
    except OSError:
        pass
    return p


def dataset_sections():
    return list(DATASETS)


# ---------------------------------------------------------------------- kuda
def kuda_effective(dataset: str, config_file=None, overrides: Optional[Mapping] = None,
                   overrides_source: str = DEFAULT_SOURCE) -> Effective:
    """The effective configuration of a KuDA run on ``dataset`` (canonical name)."""
    layers = [(read_config_file(package_config_path()), "configs/kuda.yaml")]
    user = user_config_file(config_file)
    if user is not None:
        data = read_config_file(user)
        if "datasetCommonParams" in data:
            raise KudaInputError(
                f"The config file '{user}' has MMSA's own layout (datasetCommonParams), which is "
                f"for stock MMSA models; KuDA's keys are listed by `python -m kuda_mmsa config keys`.")
        layers.append((data, str(user)))
    if overrides:
        layers.append((dict(overrides), overrides_source))
    return resolve(dataset, dataset_sections(), layers, aliases=ALIASES)


def _fact_args(facts: dict) -> dict:
    """The data's own args (features, shapes, size), for KuDA and for a stock model alike."""
    return {
        "featurePath": facts["featurePath"], "seq_lens": copy.deepcopy(facts["seq_lens"]),
        "feature_dims": copy.deepcopy(facts["feature_dims"]),
        "train_samples": facts.get("train_samples") or (facts["splits"] or {}).get("train"),
        "num_classes": facts["num_classes"], "language": facts["language"],
    }


def _kuda_args(facts: dict, eff: Effective) -> dict:
    args = {
        "model_name": KUDA, "dataset_name": facts["name"], **_fact_args(facts),
        "metrics_name": facts["metrics_name"], "has_unimodal_labels": facts["has_unimodal_labels"],
        "label_range": list(facts["label_range"]),
        "need_data_aligned": False, "need_model_aligned": False, "need_normalized": False,
        "use_bert": True, "use_finetune": True, "transformers": "bert",
    }
    args.update(eff.as_args())
    args["KeyEval"] = args.get("KeyEval") or facts["KeyEval"]
    if args.get("pretrained") is None:
        args["pretrained"] = facts["default_bert"]
    if args.get("knowledge_from"):
        args["knowledge_from"] = canonical_name(args["knowledge_from"])
        if args["knowledge_from"] not in DATASETS:
            raise KudaInputError(
                f"knowledge_from '{args['knowledge_from']}' ({eff.sources['knowledge_from']}) is not a "
                f"dataset; choices: {', '.join(sorted(DATASETS))}.")
    if args.get("knowledge_from") and args["knowledge_from"] != facts["name"]:
        # the source dataset's facts: training/transfer.py reads its features and labels
        src = get_facts(args["knowledge_from"], generate_demo=not args.get("knowledge_feature_file"))
        args["knowledge_source"] = {
            "dataset": src["name"], "featurePath": src["featurePath"], "label_range": list(src["label_range"]),
            "has_unimodal_labels": bool(src["has_unimodal_labels"]), "language": src["language"],
            "default_bert": src["default_bert"], "download": src.get("download")}
    elif args.get("knowledge_feature_file"):
        state = (f"'{args['knowledge_from']}', the run's own dataset" if args.get("knowledge_from") else "not set")
        raise KudaInputError(
            f"knowledge_feature_file ({eff.sources['knowledge_feature_file']}) is the feature file of the "
            f"dataset named by knowledge_from, but knowledge_from is {state}. Set knowledge_from "
            f"(--knowledge-from DATASET) to another dataset, or drop the file.")
    return args


# ---------------------------------------------------------------------- stock models
def _stock_args(model_name: str, facts: dict, config_file, overrides, overrides_source, tune: bool,
                rng: Optional[random.Random]) -> dict:
    ds = facts["name"]
    mmsa_file = _mmsa_default_file(tune)
    user = user_config_file(config_file)
    flat_layers = []
    if user is not None:
        ucfg = read_config_file(user)
        if "datasetCommonParams" in ucfg:
            mmsa_file = user
        else:
            flat_layers.append((_flat_for(ucfg, ds), str(user)))
    if overrides:
        flat_layers.append((dict(overrides), overrides_source))
    config_all = read_config_file(mmsa_file)
    if model_name not in config_all:
        raise KudaInputError(
            f"Model '{model_name}' has no entry in the MMSA config file '{mmsa_file}'; it has "
            f"{sorted(k for k in config_all if k != 'datasetCommonParams')}.")
    entry = config_all[model_name]
    common = entry["commonParams"]
    dparams = entry.get("datasetParams", {})
    src = ds if ds in dparams else facts["mmsa_params_from"]
    dcp = config_all.get("datasetCommonParams", {})
    if ds in STOCK_DATASETS and ds in dcp:
        d_args = dcp[ds]
        d_args = copy.deepcopy(d_args["aligned"] if (common.get("need_data_aligned") and "aligned" in d_args)
                               else d_args["unaligned"])
    else:
        d_args = {
            **_fact_args(facts), "KeyEval": facts["KeyEval"],
            "missing_rate": [0.2, 0.2, 0.2], "missing_seed": [1111, 1111, 1111],
        }
    args = {"model_name": model_name, "dataset_name": ds}
    args.update(d_args)
    args.update(copy.deepcopy(common))
    args.update(copy.deepcopy(dparams.get(src, {})))
    if tune and "debugParams" in entry:
        args.update(_draw_mmsa(entry["debugParams"], rng or random.Random(time.time_ns())))
    if src != ds and "pretrained" in args:
        args["pretrained"] = facts["default_bert"]   # e.g. the demo's tiny BERT
    args["metrics_name"] = facts["metrics_name"]
    args["has_unimodal_labels"] = facts["has_unimodal_labels"]
    args["label_range"] = list(facts["label_range"])
    known = set(args) | set(RUN_KEYS)
    for layer, label in flat_layers:
        for k, v in layer.items():
            if k not in known:
                raise unknown_key_error(
                    k, label, sorted(known),
                    where=f"MMSA model '{model_name}' takes the keys of its entry in MMSA's config "
                          f"({mmsa_file.name}) and {', '.join(RUN_KEYS)}.")
            if k not in RUN_KEYS:
                _check_finite(k, v, label)
            args[k] = SCHEMA[k].check(v, label) if k in RUN_KEYS else copy.deepcopy(v)
    for k in RUN_KEYS:
        args.setdefault(k, SCHEMA[k].default)
    return args


def _check_finite(key: str, value, source: str) -> None:
    """NaN and infinity are never a setting (MMSA's models would train on them silently)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise KudaInputError(f"Config key '{key}' ({source}) must be a finite number; found {value!r} (YAML's "
                             f".nan / .inf, or NaN / Infinity in JSON).")


def _flat_for(cfg: dict, ds: str) -> dict:
    """A user file for a stock model: flat keys, or {common, <dataset>} sections."""
    sections = set(DATASETS) | set(ALIASES)
    if "common" not in cfg and not any(k in cfg for k in sections):
        return dict(cfg)
    out = dict(cfg.get("common") or {})
    out.update({k: v for k, v in cfg.items() if k != "common" and k not in sections and k != "tune"})
    for name in sections:
        if canonical_name(name) == ds:
            out.update(cfg.get(name) or {})
    return out


def _draw_mmsa(debug: dict, rng: random.Random) -> dict:
    out = copy.deepcopy(debug)
    for item in out.get("d_paras") or []:
        v = out.get(item)
        if isinstance(v, list):
            out[item] = rng.choice(v)
        elif isinstance(v, dict):
            out[item] = {k: rng.choice(x) if isinstance(x, list) else x for k, x in v.items()}
    return out


# ---------------------------------------------------------------------- entry points
def build_args(model_name: str, dataset_name: str, config_file=None, config: Optional[Mapping] = None,
               config_source: str = DEFAULT_SOURCE, tune: bool = False, rng: Optional[random.Random] = None,
               custom_feature=None) -> Tuple[edict, Optional[Effective]]:
    """(args, effective config or None for stock models). ``config`` holds overrides (schema
    keys for kuda, MMSA keys for stock models, ``run`` keys for both)."""
    model_name, dataset_name = str(model_name).lower(), canonical_name(dataset_name)
    check_model(model_name)
    facts = get_facts(dataset_name, generate_demo=not custom_feature)
    eff = None
    if model_name == KUDA:
        eff = kuda_effective(facts["name"], config_file, config, config_source)
        if tune:
            if not eff.tune.get("d_paras"):
                raise KudaInputError(
                    f"Tune mode (-t) for kuda needs a 'tune' section with 'd_paras' (the keys to search) "
                    f"and a list of candidates per key, in configs/kuda.yaml or in your -c file; none "
                    f"was found for dataset '{facts['name']}'.")
            eff.draw(rng or random.Random(time.time_ns()))
        args = _kuda_args(facts, eff)
        if tune:
            args["d_paras"] = list(eff.tune["d_paras"])   # MMSA's tune CSV columns
    else:
        args = _stock_args(model_name, facts, config_file, config, config_source, tune, rng)
    return finish(args, facts, custom_feature), eff


def _under(root: Path, rel) -> str:
    """A dataset's feature file: as given when absolute, else under the data root."""
    p = Path(str(rel)).expanduser()
    return str(p if p.is_absolute() else root / p)


def finish(args: dict, facts: dict, custom_feature=None) -> edict:
    """Resolve paths and the text encoder; record the dataset's download hint."""
    root = Path(args["data_root"]).expanduser() if args.get("data_root") else default_data_root()
    if custom_feature:
        args["featurePath"] = str(Path(custom_feature).expanduser())
    elif args.get("featurePath"):
        args["featurePath"] = _under(root, args["featurePath"])
    args["data_root"] = str(root)
    args["dataset_download"] = facts.get("download")
    args["knowledge_dir"] = str(Path(args["knowledge_dir"]).expanduser() if args.get("knowledge_dir")
                                else default_knowledge_root())
    source = args.get("knowledge_source")
    if source:      # knowledge_from: where the source dataset's features are
        own = args.get("knowledge_feature_file")
        source["feature_file"] = str(Path(own).expanduser()) if own else _under(root, source.get("featurePath"))
    if args.get("pretrained") is not None:
        args["pretrained"] = resolve_pretrained(args["pretrained"])
        enc = local_encoder_config(args["pretrained"]) if args.get("use_bert") else None
        if enc is not None:
            args["feature_dims"] = [int(enc.hidden_size)] + list(args.get("feature_dims") or [0, 0, 0])[1:]
            if "text_out" in args:
                args["text_out"] = int(enc.hidden_size)
    return edict(args)


def get_config_regression(model_name: str, dataset_name: str, config_file: str = "") -> edict:
    """Drop-in for MMSA.config.get_config_regression."""
    return build_args(model_name, dataset_name, config_file)[0]


def get_config_tune(model_name: str, dataset_name: str, config_file: str = "",
                    random_choice: bool = True) -> edict:
    """Drop-in for MMSA.config.get_config_tune (``random_choice=False`` keeps the lists)."""
    if random_choice:
        return build_args(model_name, dataset_name, config_file, tune=True)[0]
    args, eff = build_args(model_name, dataset_name, config_file)
    if eff is not None:
        args.update(copy.deepcopy(eff.tune))
    else:
        entry = read_config_file(_mmsa_default_file(True)).get(str(model_name).lower(), {})
        args.update(copy.deepcopy(entry.get("debugParams", {})))
    return args


def plain_args(args: Mapping[str, Any]) -> Dict[str, Any]:
    """args for printing: paths and devices as strings, numbers as plain numbers."""
    return json.loads(json.dumps(dict(args), default=str))
