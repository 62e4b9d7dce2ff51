"""A cell: one independent run named by a module-level function and JSON-able keyword
arguments; its result; calling it in this process."""
from __future__ import annotations

import importlib
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..errors import KudaError


@dataclass
class Cell:
    key: str                        # unique within a sweep (also the name in progress lines)
    fn: Callable[..., Any]          # a module-level function: run by name in a worker process
    kwargs: Dict[str, Any]          # JSON-able
    workdir: Path                   # the cell's own folder (its worker files go there)
    label: str = ""


@dataclass
class CellResult:
    key: str
    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    where: str = ""                 # the device (and host) it ran on
    log: Optional[str] = None
    cell: Optional[Cell] = field(default=None, repr=False)


def function_name(fn: Callable) -> str:
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name or fn.__module__ == "__main__":
        raise ValueError(f"{name}: a sweep cell must be a module-level function of an importable module")
    return name


def resolve_function(name: str) -> Callable:
    module, _, qual = name.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def call_cell(fn_name: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Run one cell here; {"ok", "value" | "error", "seconds"} (errors are kept, not raised)."""
    t0 = time.time()
    try:
        value = resolve_function(fn_name)(**kwargs)
        return {"ok": True, "value": value, "seconds": round(time.time() - t0, 1)}
    except KudaError as e:
        return {"ok": False, "error": str(e), "seconds": round(time.time() - t0, 1)}
    except Exception as e:
        tb = traceback.format_exc(limit=8)
        return {"ok": False, "error": f"{type(e).__name__}: {e}\n{tb}", "seconds": round(time.time() - t0, 1)}


def _first_line(text: str) -> str:
    return (str(text).strip().splitlines() or [""])[0][:300]


