"""Registries: the one place a kind of thing (ratio rule, fusion, command) gets its name.

An entry is registered where it is defined (``@RATIO_RULES.register``); the schema's choices,
``config keys``, ``-h`` and validation read the names from the registry, so adding a thing is
one class and one decorator. Kept free of torch so that command-line help stays fast: a
registry can name the module that fills it (``loader``), imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, Optional, Tuple, TypeVar

from .errors import KudaInputError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, loader: Optional[str] = None):
        self.kind = kind               # in errors: "ratio rule", "fusion", ...
        self._loader = loader          # module whose import registers the built-in entries
        self._entries: Dict[str, T] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register()`` (the entry's ``name`` attribute) or ``("name")``."""
        def add(entry: T) -> T:
            key = name or getattr(entry, "name")
            if key in self._entries and self._entries[key] is not entry:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._entries[key] = entry
            return entry
        return add

    def _load(self) -> None:
        if self._loader is not None:
            importlib.import_module(self._loader)

    def names(self) -> Tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def get(self, name: str) -> T:
        self._load()
        if name not in self._entries:
            raise KudaInputError(f"Unknown {self.kind} '{name}'; known: {', '.join(self._entries)}.")
        return self._entries[name]

    __getitem__ = get

    def __contains__(self, name) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


# The project's registries. Each is filled by the module named here, where its entries live.
RATIO_RULES: Registry = Registry("ratio rule (ratio_source)", loader="kuda_mmsa.model.ratio")
FUSIONS: Registry = Registry("fusion", loader="kuda_mmsa.model.fusions")
