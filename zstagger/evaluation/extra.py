"""The optional ``zstagger[eval]`` extra (scikit-learn, matplotlib): one clear line when it is missing."""

from __future__ import annotations

import importlib.util
from importlib import import_module
from types import ModuleType

from ..errors import MissingExtraError

_PACKAGES = {"sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def require(module: str) -> ModuleType:
    """Import ``module`` from the eval extra, or say how to install it."""
    try:
        return import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingExtraError(
            f"{_PACKAGES.get(top, top)} is not installed; evaluation needs the eval extra: pip install \"zstagger[eval]\""
        ) from None


def check_installed(*modules: str) -> None:
    """Fail before any work when the extra is missing (not after minutes of encoding).

    Only looks the packages up: importing scikit-learn takes over a second, which a run
    whose embeddings are all cached would otherwise spend before doing anything.
    """
    for module in modules or ("sklearn",):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module blocked with sys.modules[name] = None
            found = False
        if not found:
            require(module)  # raises the one-line error


def import_in_background(*modules: str) -> None:
    """Start importing ``modules`` in a thread (scikit-learn takes over a second), so that
    the import overlaps with reading images instead of adding to it."""
    import threading

    def load() -> None:
        for module in modules:
            try:
                import_module(module)
            except ImportError:
                return  # require() reports it, in the caller's thread

    threading.Thread(target=load, name="zstagger-import", daemon=True).start()
