"""The MMSA start-up hook: make ``python -m MMSA ...`` run kuda_mmsa's CLI.

Installed as ``kuda_mmsa_hook.pth`` in site-packages (setup.py does it for regular and
editable installs; ``pip uninstall kuda_mmsa`` removes it, it is in the wheel's RECORD).
The .pth line imports neither torch nor MMSA: it only looks at ``sys.orig_argv`` and,
when ``MMSA`` is on the command line and ``KUDA_MMSA_NO_HOOK`` is not ``1``, imports this
module (stdlib only, plus the package's light ``__init__``) and calls ``install()``.
``install()`` puts a finder on ``sys.meta_path`` that answers only when Python was started
as ``python -m MMSA``, and then only for ``MMSA.__main__`` (whose code runs
``kuda_mmsa.cli.main.main()``) and for the ``MMSA`` package itself: runpy imports the package
before its ``__main__``, and MMSA's ``__init__`` loads torch, transformers and scikit-learn
(seconds, before ``-h`` could answer). The package is created with its real path, so its
submodules import as usual, and its ``__init__`` runs at the first read of a name it defines
(``register()`` reads one before patching MMSA). Any failure leaves Python and stock MMSA
untouched.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

ENV_DISABLE = "KUDA_MMSA_NO_HOOK"
TARGET = "MMSA.__main__"
PACKAGE = "MMSA"
PTH_NAME = "kuda_mmsa_hook.pth"
# The exact line of the .pth file (setup.py installs this text; tests check it).
PTH_LINE = (
    "import os, sys; exec('try:\\n import kuda_mmsa.cli.hook as _h\\n _h.install()\\n"
    "except Exception:\\n pass') if os.environ.get('KUDA_MMSA_NO_HOOK') != '1' and "
    "'MMSA' in ' '.join(getattr(sys, 'orig_argv', None) or sys.argv) else None"
)

_OPTS_WITH_ARG = {"-W", "-X", "--check-hash-based-pycs"}


def started_as_python_m_mmsa(argv=None) -> bool:
    """True when the interpreter's command line is ``python [options] -m MMSA ...``."""
    if argv is None:
        argv = getattr(sys, "orig_argv", None)
        if argv is None:  # Python < 3.10: during start-up sys.argv[0] is '-m'
            return bool(sys.argv) and sys.argv[0] == "-m"
    argv = list(argv)
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            return i + 1 < len(argv) and argv[i + 1] == "MMSA"
        if a.startswith("-m"):
            return a[2:] == "MMSA"
        if a in ("-c", "-") or not a.startswith("-"):
            return False  # a command string, stdin or a script: not -m
        if a in _OPTS_WITH_ARG:
            i += 1
        elif a.startswith("-") and not a.startswith("--") and "c" in a[1:] and a[1:].isalpha():
            return False  # combined flags ending in -c, e.g. -Ic
        i += 1
    return False


def disabled() -> bool:
    return os.environ.get(ENV_DISABLE, "") == "1"


_CODE = (
    "import sys\n"
    "from kuda_mmsa.cli.main import main as _kuda_main\n"
    "sys.exit(_kuda_main(prog='python -m MMSA'))\n"
)


class _Loader(importlib.abc.InspectLoader):
    def __init__(self, origin):
        self._origin = origin

    def get_source(self, fullname):
        return _CODE

    def get_code(self, fullname):
        return compile(_CODE, self._origin or "<kuda_mmsa hook>", "exec")

    def is_package(self, fullname):
        return False


class _DeferredInit(importlib.abc.Loader):
    """The MMSA package with its real path; its ``__init__`` runs at the first read of a name
    the module does not have yet (PEP 562 ``__getattr__``)."""

    def __init__(self, real_spec):
        self._real = real_spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        real = self._real

        def __getattr__(name):
            if name.startswith("__") and name.endswith("__"):
                raise AttributeError(name)      # dunders are looked up, never defined, by __init__
            module.__dict__.pop("__getattr__", None)
            module.__loader__ = real.loader
            real.loader.exec_module(module)
            try:
                return module.__dict__[name]
            except KeyError:
                raise AttributeError(f"module 'MMSA' has no attribute '{name}'") from None

        module.__getattr__ = __getattr__


class MMSAMainFinder(importlib.abc.MetaPathFinder):
    """Answers only under ``python -m MMSA``: for MMSA.__main__ (our command line) and for the
    MMSA package (its ``__init__`` deferred); otherwise None."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in (TARGET, PACKAGE) or disabled() or not started_as_python_m_mmsa():
            return None
        if fullname == PACKAGE:
            try:
                real = importlib.machinery.PathFinder.find_spec(PACKAGE, path)
            except Exception:
                return None
            if real is None or real.submodule_search_locations is None or real.loader is None:
                return None
            return importlib.util.spec_from_file_location(
                PACKAGE, real.origin, loader=_DeferredInit(real),
                submodule_search_locations=list(real.submodule_search_locations))
        origin = None
        for p in path or []:
            cand = os.path.join(p, "__main__.py")
            if os.path.isfile(cand):
                origin = cand
                break
        spec = importlib.util.spec_from_loader(fullname, _Loader(origin), origin=origin)
        return spec


def install() -> bool:
    """Put the finder on sys.meta_path (first) when started as ``python -m MMSA``.
    Returns whether it is installed."""
    if disabled() or not started_as_python_m_mmsa():
        return False
    if not any(isinstance(f, MMSAMainFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, MMSAMainFinder())
    return True


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, MMSAMainFinder)]
