"""The scoring engine: model loading, preprocessing and the zero-shot math.

Nothing here knows about taxonomies, plugins, queues or the command line. Names are
imported on first use: the scoring maths (:mod:`.scoring`) and checkpoint lookup
(:mod:`.locate`) must stay usable without importing torch or transformers.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ClipEncoder": ".model", "resolve_device": ".model", "resolve_precision": ".model",
    "Preprocessor": ".preprocess",
    "ScoringPlan": ".scoring", "ensemble": ".scoring", "hierarchical_softmax": ".scoring",
    "model_fingerprint": ".locate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ClipEncoder", "Preprocessor", "ScoringPlan", "ensemble", "hierarchical_softmax", "model_fingerprint", "resolve_device", "resolve_precision"]
