"""Plugin-aware replacements for MMSA's ``get_config_regression`` / ``get_config_tune``.

Model 'kuda': an edict merged, later wins, from
  1. dataset facts (kuda_mmsa.mmsa.datasets) + MMSA's fixed keys for a BERT model,
  2. configs/kuda.yaml ``common``, then its ``<dataset>`` section (nested dicts merged
     deeply),
  3. ``-c FILE`` (YAML or JSON): our layout {common: ..., <dataset>: ...} or a flat dict,
  4. run settings: --pretrained, --knowledge-dir, --data-root (``configure()``).
Then ``pretrained`` is resolved ('demo-tiny-bert' -> the local tiny BERT folder, built on
first use), ``featurePath`` is made absolute under the data root, ``knowledge_dir`` set.
In tune mode the yaml's ``tune`` section (common, then per dataset) gives ``d_paras`` and
the candidate lists; one value per list is drawn, as MMSA does.

Stock MMSA models: MMSA's own JSON (``-c FILE`` when it has MMSA's layout, else MMSA's
default) merged exactly as MMSA does; for datasets MMSA lacks (simsv2, demo) the model's
'sims' datasetParams are used with our dataset facts. ``featurePath`` uses our data root
instead of MMSA's hard-coded ``dataset_root_dir``.
"""
from __future__ import annotations

import copy
import json
import os
import random
from pathlib import Path

from easydict import EasyDict as edict

from ..errors import KudaInputError
from .datasets import STOCK_DATASETS, canonical_name, get_facts

KUDA = "kuda"
_SETTINGS_KEYS = ("data_root", "knowledge_dir", "pretrained", "log_dir", "plots")
_settings: dict = {}


def configure(**kwargs) -> None:
    """Run settings from the CLI: data_root, knowledge_dir, pretrained, log_dir, plots
    (None = unset)."""
    for k, v in kwargs.items():
        if k not in _SETTINGS_KEYS:
            raise TypeError(f"unknown setting {k!r}; known: {_SETTINGS_KEYS}")
        if v is None or v == "":
            _settings.pop(k, None)
        else:
            _settings[k] = v


def reset_settings() -> None:
    _settings.clear()


def data_root() -> Path:
    """--data-root, else $MMSA_DATA_ROOT, else ~/MMSA/datasets."""
    root = _settings.get("data_root") or os.environ.get("MMSA_DATA_ROOT") or (
        Path.home() / "MMSA" / "datasets")
    return Path(root).expanduser()


def knowledge_dir() -> Path:
    """--knowledge-dir, else $KUDA_MMSA_KNOWLEDGE_DIR, else ~/MMSA/knowledge."""
    from ..files import default_knowledge_root

    return Path(_settings["knowledge_dir"]).expanduser() if _settings.get("knowledge_dir") else default_knowledge_root()


def resolve_pretrained(name):
    """'demo-tiny-bert' -> folder of the local tiny BERT (built on first use); an existing
    local path -> absolute path; anything else (a hub name) unchanged."""
    if name is None:
        return None
    from ..data.tiny_bert import DEMO_BERT_NAME

    if str(name) == DEMO_BERT_NAME:
        from ..data import ensure_demo_text_encoder

        return str(ensure_demo_text_encoder())
    p = Path(str(name)).expanduser()
    if p.exists():
        return str(p.resolve())
    return name


def text_encoder_hidden_size(pretrained):
    if not pretrained:
        return None
    try:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(str(pretrained), local_files_only=True).hidden_size)
    except Exception:
        return None


# ------------------------------------------------------------------ files
def kuda_yaml_path() -> Path:
    """configs/kuda.yaml as installed (package kuda_mmsa.configs), else the source tree."""
    try:
        from importlib.resources import files

        res = files("kuda_mmsa.configs").joinpath("kuda.yaml")
        if res.is_file():
            return Path(str(res))
    except Exception:
        pass
    src = Path(__file__).resolve().parents[2] / "configs" / "kuda.yaml"
    if src.is_file():
        return src
    raise KudaInputError(
        "configs/kuda.yaml was not found: neither as package data kuda_mmsa.configs nor at "
        f"'{src}'. Reinstall kuda_mmsa (pip install --no-build-isolation .).")


def read_config_file(path) -> dict:
    """A YAML or JSON file as a dict (KudaInputError when missing or malformed)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KudaInputError(
            f"The config file '{p}' (-c/--config) does not exist. Give a YAML or JSON file "
            f"in configs/kuda.yaml's layout ({{common: ..., <dataset>: ...}}), a flat dict "
            f"of keys, or MMSA's JSON layout for stock models; omit -c for the defaults.")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:
        raise KudaInputError(
            f"The config file '{p}' could not be parsed as "
            f"{'JSON' if p.suffix.lower() == '.json' else 'YAML'} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}).") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise KudaInputError(
            f"The config file '{p}' holds a {type(data).__name__}; expected a mapping of "
            f"keys to values (or {{common: ..., <dataset>: ...}}).")
    return data


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _mmsa_default_file(tune: bool) -> Path:
    import MMSA

    return Path(MMSA.__file__).parent / "config" / ("config_tune.json" if tune else "config_regression.json")


def _user_file(config_file, tune):
    """None when no user file was given (None, '', or MMSA's own default file)."""
    if config_file is None or str(config_file) == "":
        return None
    p = Path(config_file)
    try:
        for t in (False, True):
            if p.resolve() == _mmsa_default_file(t).resolve():
                return None
    except Exception:
        pass
    return p


def _layered(cfg: dict, dataset: str, known_sections) -> dict:
    """Our layout (common + dataset sections) flattened for one dataset; a flat dict is
    returned as is (minus other datasets' sections)."""
    if "common" in cfg or any(k in cfg for k in known_sections):
        out = deep_merge(cfg.get("common") or {}, cfg.get(dataset) or {})
        for k, v in cfg.items():
            if k != "common" and k not in known_sections:
                out = deep_merge(out, {k: v})
        return out
    return copy.deepcopy(cfg)


def _sections():
    from .datasets import ALIASES, DATASETS

    return set(DATASETS) | set(ALIASES) | {"tune"}


def _tune_section(cfg: dict, ds: str, sections) -> dict:
    """Top-level ``tune`` (minus dataset sub-sections) < ``tune.<dataset>`` <
    ``<dataset>.tune``."""
    top = cfg.get("tune") or {}
    base = {k: v for k, v in top.items() if k not in sections}
    out = deep_merge(base, top.get(ds) or {})
    return deep_merge(out, (cfg.get(ds) or {}).get("tune") or {})


def _draw(tune_cfg: dict, random_choice: bool) -> dict:
    out = copy.deepcopy(tune_cfg)
    d_paras = list(out.get("d_paras") or [])
    if random_choice:
        for item in d_paras:
            v = out.get(item)
            if isinstance(v, list):
                out[item] = random.choice(v)
            elif isinstance(v, dict):
                out[item] = {k: random.choice(x) if isinstance(x, list) else x for k, x in v.items()}
    return out


def _kuda_config(dataset_name, config_file, tune=False, random_choice=True):
    facts = get_facts(dataset_name)
    ds = facts["name"]
    args = {
        "model_name": KUDA, "dataset_name": ds,
        "featurePath": facts["featurePath"], "seq_lens": list(facts["seq_lens"]),
        "feature_dims": list(facts["feature_dims"]),
        "train_samples": (facts.get("train_samples") or facts["splits"]["train"]),
        "num_classes": facts["num_classes"], "language": facts["language"],
        "KeyEval": facts["KeyEval"], "metrics_name": facts["metrics_name"],
        "has_unimodal_labels": facts["has_unimodal_labels"],
        "label_range": list(facts["label_range"]),
        "need_data_aligned": False, "need_model_aligned": False, "need_normalized": False,
        "use_bert": True, "use_finetune": True, "transformers": "bert",
        "pretrained": facts["default_bert"],
        "missing_rate": [0.2, 0.2, 0.2], "missing_seed": [1111, 1111, 1111],
    }
    yaml_path = kuda_yaml_path()
    yaml_cfg = read_config_file(yaml_path)
    sections = _sections()
    args = deep_merge(args, _layered(yaml_cfg, ds, sections))
    tune_cfg = _tune_section(yaml_cfg, ds, sections)
    args.pop("tune", None)
    user = _user_file(config_file, tune)
    if user is not None:
        ucfg = read_config_file(user)
        tune_cfg = deep_merge(tune_cfg, _tune_section(ucfg, ds, sections))
        uflat = _layered(ucfg, ds, sections)
        uflat.pop("tune", None)
        args = deep_merge(args, uflat)
    if tune:
        if not tune_cfg.get("d_paras"):
            raise KudaInputError(
                f"Tune mode (-t) for kuda needs a 'tune' section with 'd_paras' (the keys to "
                f"search) and a list of candidates per key, in '{yaml_path}' or in your -c "
                f"file; none was found for dataset '{ds}'.")
        args = deep_merge(args, _draw(tune_cfg, random_choice))
    for k in ("pretrained",):
        if _settings.get(k):
            args[k] = _settings[k]
    for k in ("log_dir", "plots"):  # where/whether the trainer writes its training curves
        if k in _settings:
            args[k] = _settings[k]
    return args, facts


def _stock_config(model_name, dataset_name, config_file, tune=False, random_choice=True):
    facts = get_facts(dataset_name)
    ds = facts["name"]
    mmsa_file = _mmsa_default_file(tune)
    user = _user_file(config_file, tune)
    overrides = {}
    if user is not None:
        ucfg = read_config_file(user)
        if "datasetCommonParams" in ucfg:
            mmsa_file, config_all = user, ucfg
        else:
            overrides = _layered(ucfg, ds, _sections())
            overrides.pop("tune", None)
    if mmsa_file != user:
        with open(mmsa_file) as f:
            config_all = json.load(f)
    if model_name not in config_all:
        raise KudaInputError(
            f"Model '{model_name}' has no entry in the MMSA config file '{mmsa_file}'; it "
            f"has {sorted(k for k in config_all if k != 'datasetCommonParams')}.")
    entry = config_all[model_name]
    common = entry["commonParams"]
    dparams = entry.get("datasetParams", {})
    src = ds if ds in dparams else facts["mmsa_params_from"]
    model_ds = copy.deepcopy(dparams.get(src, {}))
    dcp = config_all.get("datasetCommonParams", {})
    if ds in STOCK_DATASETS and ds in dcp:
        d_args = dcp[ds]
        d_args = d_args["aligned"] if (common.get("need_data_aligned") and "aligned" in d_args) else d_args["unaligned"]
        d_args = copy.deepcopy(d_args)
    else:
        d_args = {
            "featurePath": facts["featurePath"], "seq_lens": list(facts["seq_lens"]),
            "feature_dims": list(facts["feature_dims"]),
            "train_samples": facts.get("train_samples") or facts["splits"]["train"],
            "num_classes": facts["num_classes"], "language": facts["language"],
            "KeyEval": facts["KeyEval"], "missing_rate": [0.2, 0.2, 0.2],
            "missing_seed": [1111, 1111, 1111],
        }
    args = {"model_name": model_name, "dataset_name": ds}
    args.update(d_args)
    args.update(copy.deepcopy(common))
    args.update(model_ds)
    if tune and "debugParams" in entry:
        args.update(_draw(entry["debugParams"], random_choice))
    if src != ds and "pretrained" in args:
        args["pretrained"] = facts["default_bert"]   # e.g. the demo's tiny BERT
    args["metrics_name"] = facts["metrics_name"]
    args["has_unimodal_labels"] = facts["has_unimodal_labels"]
    args["label_range"] = list(facts["label_range"])
    args = deep_merge(args, overrides)
    if _settings.get("pretrained") and args.get("use_bert"):
        args["pretrained"] = _settings["pretrained"]
    return args, facts


def _finish(args: dict, facts: dict) -> edict:
    rel = args.get("featurePath")
    root = data_root()
    if rel and not Path(str(rel)).expanduser().is_absolute():
        args["featurePath"] = str(root / rel)
    elif rel:
        args["featurePath"] = str(Path(str(rel)).expanduser())
    args["data_root"] = str(root)
    args["dataset_download"] = facts.get("download")
    args["_facts_feature_dims"] = list(args.get("feature_dims") or facts.get("feature_dims") or [])
    args["knowledge_dir"] = str(knowledge_dir())
    if args.get("pretrained") is not None:
        args["pretrained"] = resolve_pretrained(args["pretrained"])
        if args.get("use_bert"):
            hidden = text_encoder_hidden_size(args["pretrained"])
            if hidden:
                if args.get("feature_dims"):
                    args["feature_dims"][0] = hidden
                    args["_facts_feature_dims"][0] = hidden
                if "text_out" in args:
                    args["text_out"] = hidden
    return edict(args)


def _check_model(model_name):
    from .register import model_choices

    if model_name not in model_choices():
        raise KudaInputError(
            f"Unknown model '{model_name}'. Choices: {', '.join(model_choices())}.")


def get_config_regression(model_name: str, dataset_name: str, config_file: str = "") -> edict:
    """Drop-in for MMSA.config.get_config_regression (see module docstring)."""
    model_name, dataset_name = str(model_name).lower(), canonical_name(dataset_name)
    _check_model(model_name)
    if model_name == KUDA:
        args, facts = _kuda_config(dataset_name, config_file)
    else:
        args, facts = _stock_config(model_name, dataset_name, config_file)
    return _finish(args, facts)


def get_config_tune(model_name: str, dataset_name: str, config_file: str = "",
                    random_choice: bool = True) -> edict:
    """Drop-in for MMSA.config.get_config_tune (see module docstring)."""
    model_name, dataset_name = str(model_name).lower(), canonical_name(dataset_name)
    _check_model(model_name)
    if model_name == KUDA:
        args, facts = _kuda_config(dataset_name, config_file, tune=True, random_choice=random_choice)
    else:
        args, facts = _stock_config(model_name, dataset_name, config_file, tune=True,
                                    random_choice=random_choice)
    return _finish(args, facts)
