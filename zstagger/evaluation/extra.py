"""The optional ``zstagger[eval]`` extra (scikit-learn, matplotlib): one clear line when it is missing."""

from __future__ import annotations

from importlib import import_module

from .. import extras
from ..extras import require  # noqa: F401  (re-exported for the evaluation modules)


def check_installed(*modules: str) -> None:
    """Fail before any work when the extra is missing (not after minutes of encoding).

    Only looks the packages up: importing scikit-learn takes over a second, which a run
    whose embeddings are all cached would otherwise spend before doing anything.
    """
    extras.check_installed(*(modules or ("sklearn",)))


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
