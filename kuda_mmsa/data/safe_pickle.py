"""Reading pickles from users without running code from them.

``pickle.load`` calls whatever global a file names, so a crafted ``.pkl`` runs arbitrary
code the moment it is opened. MMSA feature files hold only numpy arrays (numeric, or of
object dtype holding strings), Python containers, strings, bytes and numbers; this
unpickler allows exactly the globals those need and refuses every other one with a
KudaInputError that names the file and the global.

``load(f)`` / ``loads(b)`` mirror the ``pickle`` functions; ``SafePickleModule`` is a
stand-in for the ``pickle`` module that register() gives MMSA's own loader, so no path
reads a feature file with plain pickle.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

from ..errors import KudaInputError

ALLOWED_GLOBALS = {
    # numpy arrays, dtypes and scalars (numpy 1 and 2 module names)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # bytes written under protocol 2
    ("_codecs", "encode"),
    # containers
    ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, name: str = "<bytes>"):
        super().__init__(file)
        self._name = name

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise KudaInputError(
            f"The pickle '{self._name}' refers to '{module}.{name}', which an MMSA feature file "
            f"never contains (only numpy arrays, lists, dicts, strings and numbers are read). It "
            f"was not loaded, because loading it would run code taken from the file. Use a feature "
            f"file written with numpy arrays in MMSA's layout.")


def load(file, name: str = None) -> Any:
    """pickle.load with only the globals MMSA feature files need."""
    return RestrictedUnpickler(file, name or getattr(file, "name", "<stream>")).load()


def loads(blob: bytes, name: str = "<bytes>") -> Any:
    return RestrictedUnpickler(io.BytesIO(blob), name).load()


class SafePickleModule:
    """Looks like the ``pickle`` module, but ``load``/``loads`` are restricted."""

    load = staticmethod(load)
    loads = staticmethod(loads)
    dump = staticmethod(pickle.dump)
    dumps = staticmethod(pickle.dumps)
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    UnpicklingError = pickle.UnpicklingError
