"""Registries: the one place a kind of thing (ratio rule, fusion, command, tuner) gets its name.

A new entry is registered where it is defined (``@RATIO_RULES.register()`` on a class with a
``name`` and a ``help``); the schema's choices, ``config keys``, ``-h`` and validation read the
names and help from the registry, so adding a thing is one class and one decorator. The
built-in entries are declared here by name, help and "module:Class", so that listing and
validating them imports no torch (command-line help stays fast); their module is imported
when one of them is first used.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, Optional, Tuple, TypeVar

from .errors import KudaInputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind               # in errors: "ratio rule", "fusion", ...
        self._entries: Dict[str, object] = {}   # name -> entry, or "module:attr" until first used
        self._help: Dict[str, str] = {}

    def declare(self, name: str, target: str, help: str) -> None:
        """A built-in entry, imported from ``target`` ("module:attr") when first used."""
        self._entries[name], self._help[name] = target, help

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register()`` (the entry's ``name`` attribute) or ``("name")``."""
        def add(entry: T) -> T:
            key = name or getattr(entry, "name")
            known = self._entries.get(key)
            if known is not None and known is not entry and not isinstance(known, str):
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = entry
            if getattr(entry, "help", "") or key not in self._help:
                self._help[key] = getattr(entry, "help", "")
            return entry
        return add

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)

    def help(self, name: str) -> str:
        return self._help.get(name, "")

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KudaInputError(f"Unknown {self.kind} '{name}'; known: {', '.join(self._entries)}.")
        entry = self._entries[name]
        if isinstance(entry, str):       # a declared built-in: its module registers it on import
            module, attr = entry.split(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attr)
        return entry

    __getitem__ = get

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# The project's registries and their built-in entries (the classes live in the named modules).
RATIO_RULES: Registry = Registry("ratio rule (ratio_source)")
for _name, _cls, _help in (
    ("reliability", "Reliability", "ours: each modality's learned, scale-free reliability (inverse predicted "
                                   "error, lowered on disagreement)"),
    ("consensus", "Consensus", "agreement with the mean score of the present modalities (label-free)"),
    ("estimate", "Estimate", "agreement with a small learned estimate of the overall score from the unimodal scores"),
    ("prediction", "Prediction", "agreement with the network's own static-fusion prediction (a second fusion pass)"),
    ("label", "Label", "agreement with the label, the authors' choice (training only; consensus at evaluation)"),
):
    RATIO_RULES.declare(_name, f"kuda_mmsa.model.ratio:{_cls}", _help)

FUSIONS: Registry = Registry("fusion")
for _name, _cls, _help in (
    ("daf", "DAF", "the paper's dynamic attention fusion blocks (fusion_layers of them)"),
    ("concat", "Concat", "ablation: the weighted sequences concatenated, projected to D, one Transformer layer"),
    ("add", "Add", "ablation: the weighted mean of the sequences, one Transformer layer"),
    ("late", "Late", "ablation: the output head on each modality; the weighted mean of their scores"),
):
    FUSIONS.declare(_name, f"kuda_mmsa.model.fusions:{_cls}", _help)

TUNERS: Registry = Registry("tuner")
for _name, _fn, _help in (
    ("random", "tune_random", "MMSA's random search over the tune lists"),
    ("optuna", "tune_optuna", "TPE over the same lists, pruning on the validation metric per epoch, the study in "
                              "SQLite next to the tune CSV (a killed study resumes; -tt = the trials it should have)"),
):
    TUNERS.declare(_name, f"kuda_mmsa.experiments.tuning:{_fn}", _help)
