"""``register()``: make MMSA plugin-aware (idempotent).

- ``MMSA.MMSA_run`` and ``MMSA.run.MMSA_run`` become kuda_mmsa's (kuda_mmsa.mmsa.run: same
  signature and outputs, checks before training, model 'kuda', datasets simsv2/demo);
- ``MMSA.config.get_config_regression`` / ``get_config_tune`` (and their aliases in ``MMSA``
  and ``MMSA.run``) become kuda_mmsa's (kuda_mmsa.mmsa.args);
- ``MMSA.run``'s ``AMIO``, ``ATIO``, ``MMDataLoader``, ``assign_gpu`` (looked up at call time
  by MMSA's own ``_run``) become the plugin-aware ones of kuda_mmsa.mmsa.patches;
- MetricsTop knows every dataset of the table; MULT / MMIM / TFR-Net get a
  ReduceLROnPlateau without ``verbose``; MMSA's pickle readers get the restricted unpickler.

Importing this module is cheap (no torch, no MMSA): the start-up hook imports its package.
"""
from __future__ import annotations

import importlib

_state = {"done": False}
_REDUCE_LR_MODULES = ("MMSA.trains.singleTask.MULT", "MMSA.trains.singleTask.MMIM",
                      "MMSA.trains.missingTask.TFR_NET")


def register() -> None:
    """Make MMSA plugin-aware (see module docstring). Idempotent; cheap after the first call."""
    if _state["done"]:
        return
    import MMSA

    # Under `python -m MMSA` the start-up hook defers MMSA's __init__ to the first read of a
    # name it defines (kuda_mmsa/cli/hook.py): read one now, so that the patches below apply to
    # the package as a plain `import MMSA` leaves it (a later first read would otherwise run
    # __init__ in the middle of a run).
    MMSA.MMSA_run  # noqa: B018
    import MMSA.config as mconfig
    import MMSA.data_loader as mloader
    import MMSA.run as mrun
    from MMSA.utils.metricsTop import MetricsTop

    from . import args, patches, run

    for mod in (MMSA, mconfig, mrun):
        mod.get_config_regression = args.get_config_regression
        mod.get_config_tune = args.get_config_tune
    MMSA.MMSA_run = mrun.MMSA_run = run.MMSA_run
    mrun.AMIO, mrun.ATIO = patches.AMIO, patches.ATIO
    mrun.MMDataLoader, mrun.assign_gpu = patches.MMDataLoader, patches.assign_gpu
    mrun.pickle = mloader.pickle = patches.SafePickleModule
    MetricsTop.getMetics = patches.get_metrics
    for name in _REDUCE_LR_MODULES:
        try:
            importlib.import_module(name).ReduceLROnPlateau = patches.ReduceLROnPlateau
        except ImportError:
            pass
    _state["done"] = True


def is_registered() -> bool:
    return _state["done"]
