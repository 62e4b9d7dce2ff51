"""Everything that touches MMSA: ``register()``, the CLI, the dataset table, config and
data loading. Importing this package is cheap (no torch, no MMSA): the start-up hook
imports it."""
from .register import is_registered, model_choices, register  # noqa: F401

__all__ = ["register", "is_registered", "model_choices"]
