"""The effective configuration of a run: schema defaults, then layers applied in order,
each value remembering where it came from.

A layer is a mapping from a file (YAML or JSON), the command line or ``MMSA_run(config=)``.
Files may be flat (``{learning_rate: 1e-4, pretrain: {epochs: 3}}``) or sectioned
(``{common: {...}, <dataset>: {...}, tune: {...}}``); within one file ``common`` < flat keys
< the section of the run's dataset. Sections of other datasets are checked but not applied.
Every key is checked against the schema: an unknown key, a wrong type or a value out of
range is a KudaInputError naming the key, its file and section, and the closest known key.
"""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import yaml

from ..errors import KudaInputError
from ..registry import Registry
from .keys import unknown_key_error
from .schema import NESTED, SCHEMA, SECTIONS, defaults, keys_of

# MMSA keys that describe the data, not the model: read from the data and the dataset table.
DATA_FACTS = ("feature_dims", "seq_lens", "featurePath", "train_samples", "num_classes",
              "language", "need_data_aligned", "need_model_aligned", "need_normalized",
              "use_bert", "use_finetune", "transformers", "model_name", "dataset_name",
              "metrics_name", "label_range", "has_unimodal_labels")


# ---------------------------------------------------------------------- files
class DuplicateKey(ValueError):
    def __init__(self, key):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key set twice in one mapping is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path) -> dict:
    """A YAML or JSON file as a dict (KudaInputError when missing, malformed or not a mapping)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise KudaInputError(
            f"The config file '{p}' (-c/--config) does not exist"
            + (" (it is a folder)" if p.is_dir() else "") + ". Give a YAML or JSON file: "
            "flat keys, or sections {common: ..., <dataset>: ...}; for stock MMSA models also "
            "MMSA's own JSON layout. Omit -c for the defaults.")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".json":
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        else:
            data = yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKey as e:
        raise KudaInputError(
            f"The config file '{p}' sets the key '{e.key}' twice in the same mapping; only one value can "
            f"hold (YAML and JSON readers would silently keep the last). Remove one.") from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise KudaInputError(
            f"The config file '{p}' could not be parsed as "
            f"{'JSON' if p.suffix.lower() == '.json' else 'YAML'} ({type(e).__name__}: {first}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise KudaInputError(
            f"The config file '{p}' holds a {type(data).__name__}; expected a mapping of keys to "
            f"values (or sections {{common: ..., <dataset>: ...}}).")
    return data


def package_config_path() -> Path:
    """configs/kuda.yaml as installed (package kuda_mmsa.configs), else in the source tree."""
    from importlib.resources import files

    try:
        res = files("kuda_mmsa.configs").joinpath("kuda.yaml")
        if res.is_file():
            return Path(str(res))
    except ModuleNotFoundError:
        pass
    src = Path(__file__).resolve().parents[2] / "configs" / "kuda.yaml"
    if src.is_file():
        return src
    raise KudaInputError(
        f"configs/kuda.yaml was not found (neither as package data kuda_mmsa.configs nor at "
        f"'{src}'). Reinstall kuda_mmsa: pip install --no-build-isolation -e .")


# ---------------------------------------------------------------------- effective config
class Effective:
    """Values of every schema key with their sources, plus the tune section."""

    def __init__(self):
        self.values: Dict[str, Any] = defaults()
        self.sources: Dict[str, str] = {k: "default" for k in self.values}
        self.tune: Dict[str, Any] = {}
        self.tune_sources: Dict[str, str] = {}

    def __getitem__(self, name):
        return self.values[name]

    def set(self, name: str, value: Any, source: str) -> None:
        key = SCHEMA.get(name)
        if key is None:
            raise unknown_key_error(name, source, SCHEMA)
        self.values[name] = key.check(value, source)
        self.sources[name] = source

    def as_args(self) -> Dict[str, Any]:
        """Flat keys, nested sections as dicts (``pretrain``): the MMSA args layout."""
        out: Dict[str, Any] = {}
        for name, value in self.values.items():
            head, _, tail = name.partition(".")
            if tail:
                out.setdefault(head, {})[tail] = copy.deepcopy(value)
            else:
                out[name] = copy.deepcopy(value)
        return out

    def section(self, section: str) -> Dict[str, Any]:
        return {k.name.split(".")[-1]: self.values[k.name] for k in keys_of(section)}

    def changed(self) -> Dict[str, Tuple[Any, str]]:
        """{key: (value, source)} for every key not at its default."""
        return {k: (v, self.sources[k]) for k, v in self.values.items() if self.sources[k] != "default"}

    # ------------------------------------------------------------------ tune
    def draw(self, rng: random.Random, source: str = "tune draw") -> Dict[str, Any]:
        """One value per d_paras key from its candidates (MMSA's random search); returns them."""
        drawn = {}
        for name in self.tune.get("d_paras", []):
            cands = self.tune.get(name)
            if not cands:
                raise KudaInputError(
                    f"Tune key '{name}' is listed in d_paras ({self.tune_sources.get('d_paras')}) "
                    f"but has no list of candidates in the tune section.")
            value = rng.choice(cands)
            self.set(name, value, source)
            drawn[name] = self.values[name]
        return drawn


def _is_sectioned(data: Mapping, dataset_sections: Iterable[str]) -> bool:
    return "common" in data or any(k in data for k in dataset_sections)


def apply_mapping(eff: Effective, data: Mapping, label: str, dataset: str,
                  dataset_sections: Iterable[str], aliases: Optional[Mapping[str, str]] = None) -> None:
    """Apply one layer (see module docstring). ``label`` names the file or origin."""
    aliases = dict(aliases or {})
    sections = set(dataset_sections) | set(aliases)
    data = dict(data)
    if "tune" in data:
        _apply_tune(eff, data.pop("tune"), f"{label} [tune]", dataset, sections, aliases)
    if not _is_sectioned(data, sections):
        _apply_flat(eff, data, label)
        return
    common = data.pop("common", None) or {}
    if not isinstance(common, dict):
        raise KudaInputError(f"Section 'common' of {label} must be a mapping of keys; found "
                             f"{type(common).__name__}.")
    mine = {}
    for name in [k for k in data if k in sections]:
        body = data.pop(name) or {}
        if not isinstance(body, dict):
            raise KudaInputError(f"Section '{name}' of {label} must be a mapping of keys; found "
                                 f"{type(body).__name__}.")
        body = dict(body)
        if "tune" in body:
            tune = body.pop("tune")
            if aliases.get(name, name) == dataset:
                _apply_tune(eff, tune, f"{label} [{name}.tune]", dataset, sections, aliases)
        scratch = Effective()
        _apply_flat(scratch, body, f"{label} [{name}]")     # checked even when not applied
        if aliases.get(name, name) == dataset:
            mine[name] = body
    _apply_flat(eff, common, f"{label} [common]")
    _apply_flat(eff, data, label)
    for name, body in mine.items():
        _apply_flat(eff, body, f"{label} [{name}]")


def _apply_flat(eff: Effective, data: Mapping, label: str) -> None:
    for name, value in data.items():
        name = str(name)
        if name in NESTED:
            if not isinstance(value, dict):
                raise KudaInputError(
                    f"Config key '{name}' ({label}) must be a mapping of {name} keys "
                    f"({', '.join(k.name.split('.')[-1] for k in keys_of(name))}); found {value!r}.")
            for sub, sv in value.items():
                dotted = f"{name}.{sub}"
                if dotted not in SCHEMA:
                    raise unknown_key_error(dotted, label, [k.name for k in keys_of(name)])
                eff.set(dotted, sv, label)
        elif name in DATA_FACTS:
            raise KudaInputError(
                f"Config key '{name}' ({label}) is not a setting: it describes the data and is read "
                f"from the feature file and the dataset table. Remove it; to use other data pass "
                f"--feature-file PATH (or -d DATASET).")
        elif name in SCHEMA:
            eff.set(name, value, label)
        else:
            raise unknown_key_error(name, label, list(SCHEMA) + list(NESTED))


def _apply_tune(eff: Effective, tune: Any, label: str, dataset: str, sections, aliases) -> None:
    if not isinstance(tune, dict):
        raise KudaInputError(f"The tune section ({label}) must be a mapping; found {type(tune).__name__}.")
    tune = dict(tune)
    mine = []   # a dataset's sub-section is applied after (over) the general lists
    for name in [k for k in tune if k in sections]:
        body = tune.pop(name)
        if aliases.get(name, name) == dataset:
            mine.append((body, f"{label[:-1]}.{name}]"))
    for name, value in tune.items():
        if name == "d_paras":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise KudaInputError(f"'d_paras' ({label}) must be a list of key names; found {value!r}.")
            for v in value:
                key = SCHEMA.get(v)
                if key is None:
                    raise unknown_key_error(v, f"{label} d_paras", SCHEMA)
                if not key.tunable:
                    raise KudaInputError(f"Key '{v}' ({label} d_paras) cannot be tuned: {key.help}")
            eff.tune["d_paras"] = list(value)
            eff.tune_sources["d_paras"] = label
            continue
        key = SCHEMA.get(name)
        if key is None:
            raise unknown_key_error(name, label, list(SCHEMA) + ["d_paras"], "tune key")
        if not isinstance(value, list) or not value:
            raise KudaInputError(f"Tune key '{name}' ({label}) must be a non-empty list of "
                                 f"candidates; found {value!r}.")
        eff.tune[name] = [key.check(v, f"{label} {name}") for v in value]
        eff.tune_sources[name] = label
    for body, sub_label in mine:
        _apply_tune(eff, body, sub_label, dataset, sections, aliases)


def resolve(dataset: str, dataset_sections: Iterable[str], layers: List[Tuple[Mapping, str]],
            aliases: Optional[Mapping[str, str]] = None) -> Effective:
    """Defaults, then each (mapping, label) layer in order."""
    eff = Effective()
    sections = list(dataset_sections)
    for data, label in layers:
        apply_mapping(eff, data or {}, label, dataset, sections, aliases)
    return eff


def render(eff: Effective, only_changed: bool = False) -> str:
    """A plain-text table: section, key, value, source."""
    rows = []
    for section in SECTIONS:
        for key in keys_of(section):
            src = eff.sources[key.name]
            if only_changed and src.startswith("default"):
                continue
            rows.append((section, key.name, _fmt(eff.values[key.name]), src))
    width = [max(len(r[i]) for r in rows + [("section", "key", "value", "source")]) for i in range(3)]
    lines = [f"{'section':<{width[0]}}  {'key':<{width[1]}}  {'value':<{width[2]}}  source"]
    lines += [f"{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}" for a, b, c, d in rows]
    if eff.tune:
        lines.append("")
        lines.append("tune (for -t): " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in eff.tune.items()))
    return "\n".join(lines)


def describe_keys() -> str:
    """Every key with its section, type and range, default and help (``config keys``)."""
    out = []
    for section in SECTIONS:
        out.append(f"[{section}]")
        for key in keys_of(section):
            out.append(f"  {key.name} = {_fmt(key.default)}    ({key.expected()})")
            out.append(f"      {key.help}")
            if isinstance(key.choices, Registry):   # each registered choice says what it is
                out.extend(f"        {name}: {key.choices.help(name)}" for name in key.choices)
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
