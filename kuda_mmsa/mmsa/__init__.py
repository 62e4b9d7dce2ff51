"""The MMSA glue: ``register()`` (what kuda_mmsa puts into MMSA), ``MMSA_run`` with checks,
MMSA's run arguments from the typed configuration, the loader, and the dataset table.
Importing this package is cheap (no torch, no MMSA)."""
from .register import is_registered, register

__all__ = ["register", "is_registered"]
