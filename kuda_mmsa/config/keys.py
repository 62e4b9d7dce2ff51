"""One configuration key: its type, range, default and help, and the check of a value.

A value that does not fit is a KudaInputError naming the key, where the value came from
(``source``: a file and section, the command line, ...), what was expected and what was
found. Integers are accepted where floats are expected (YAML reads ``1`` as an int); a
bool is never taken for a number, nor a number for a bool.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Tuple

from ..errors import KudaInputError

KINDS = ("int", "float", "bool", "str", "int_list", "per_modality_int")
MODALITY_KEYS = ("T", "V", "A")


@dataclass(frozen=True)
class Key:
    name: str                  # dotted for nested sections: "pretrain.learning_rate"
    kind: str                  # one of KINDS
    default: Any
    help: str
    section: str               # model | train | pretrain | run
    choices: Tuple = ()
    low: Optional[float] = None
    low_open: bool = False     # True: value > low; False: value >= low
    high: Optional[float] = None
    high_open: bool = False
    optional: bool = False     # None is allowed (its meaning is in the help)
    tunable: bool = True       # may appear in the tune section's d_paras
    aliases: Tuple = ()        # (old value, its current spelling): values of earlier versions

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"key {self.name}: unknown kind {self.kind!r}")

    # ------------------------------------------------------------------ describing
    def expected(self) -> str:
        """What a valid value looks like, in words (used by errors and `config show`)."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "per_modality_int":
            text = "an integer or a mapping {T: int, V: int, A: int}"
        else:
            text = {"int": "an integer", "float": "a number", "bool": "true or false",
                    "str": "a string", "int_list": "a list of integers"}[self.kind]
        bounds = self._bounds()
        if bounds:
            text += f" {bounds}"
        if self.optional:
            text += " (or null)"
        return text

    def _bounds(self) -> str:
        if self.low is None and self.high is None:
            return ""
        lo = "" if self.low is None else ("(" if self.low_open else "[") + f"{self.low:g}"
        hi = "" if self.high is None else f"{self.high:g}" + (")" if self.high_open else "]")
        if self.low is not None and self.high is not None:
            return f"in {lo}, {hi}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"

    # ------------------------------------------------------------------ checking
    def check(self, value: Any, source: str) -> Any:
        """The value, normalised (ints to floats for float keys, mappings for per-modality
        keys); KudaInputError when it does not fit."""
        if value is None:
            if self.optional:
                return None
            self._fail(value, source)
        for old, current in self.aliases:
            if value is old or (type(value) is type(old) and value == old):
                value = current
                break
        out = self._typed(value, source)
        if self.choices and out not in self.choices:
            self._fail(value, source)
        for number in self._numbers(out):
            if not self._in_range(number):
                self._fail(value, source)
        return out

    def _typed(self, value, source):
        k = self.kind
        if k == "bool":
            if isinstance(value, bool):
                return value
        elif k == "int":
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif k == "float":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if not math.isfinite(value):
                    raise KudaInputError(
                        f"Config key '{self.name}' ({source}) must be a finite number {self._bounds()}".rstrip()
                        + f"; found {value!r} (YAML's .nan / .inf, or NaN / Infinity in JSON). "
                        f"{self.help}")
                return float(value)
        elif k == "str":
            if isinstance(value, str):
                return value
        elif k == "int_list":
            if isinstance(value, (list, tuple)) and all(_is_int(v) for v in value):
                return [int(v) for v in value]
        elif k == "per_modality_int":
            if _is_int(value):
                return {m: int(value) for m in MODALITY_KEYS}
            if isinstance(value, dict):
                upper = {str(m).upper(): v for m, v in value.items()}
                if set(upper) <= set(MODALITY_KEYS) and all(_is_int(v) for v in upper.values()):
                    return {m: int(v) for m, v in upper.items()}
        self._fail(value, source)

    def _numbers(self, value) -> Iterable[float]:
        if self.kind in ("int", "float"):
            return [value]
        if self.kind == "int_list":
            return list(value)
        if self.kind == "per_modality_int":
            return list(value.values())
        return []

    def _in_range(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.high_open else x > self.high):
            return False
        return True

    def _fail(self, value, source):
        raise KudaInputError(
            f"Config key '{self.name}' ({source}) must be {self.expected()}; found "
            f"{value!r} ({type(value).__name__}). {self.help}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def closest(name: str, known: Iterable[str]) -> Optional[str]:
    """The known key most like ``name`` (a typo's likely intent), or None."""
    known = list(known)
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if match:
        return match[0]
    lowered = {k.lower(): k for k in known}
    return lowered.get(name.lower())


def unknown_key_error(name: str, source: str, known: Iterable[str], what: str = "config key",
                      where: str = "Every key, its type, range and default: `python -m kuda_mmsa config keys`."
                      ) -> KudaInputError:
    guess = closest(name, known)
    hint = f" Did you mean '{guess}'?" if guess else ""
    return KudaInputError(f"Unknown {what} '{name}' ({source}).{hint} {where}")
