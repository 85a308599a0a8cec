"""zstagger: zero-shot image tagging with CLIP-family models, taxonomies as plugins.

    from zstagger import Tagger
    results = Tagger().tag(["photo.jpg"], taxonomy="moderation")

Heavy parts (torch, transformers) are imported on first use, so ``import zstagger`` and
plugin modules stay cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigurationError,
    ImageLoadError,
    ModelLoadError,
    ModelNotFoundError,
    PluginError,
    TaxonomyError,
    UnknownTaxonomyError,
    ZstaggerError,
)
from .hookspecs import hookimpl
from .results import (ErrorInfo, FacetValue, FrameScore, LabelExplanation, LabelScore, MediaInfo, MultiTagResult, Segment,
                      TagResult)
from .taxonomy import Descent, Facet, Label, MediaPolicy, Taxonomy, TextFusion

__version__ = "0.1.0"

_LAZY = {
    "Tagger": "zstagger.tagger",
    "ClipEncoder": "zstagger.engine.model",
    "ImagePolicy": "zstagger.images",
    "ImageWithText": "zstagger.images",
    "Settings": "zstagger.settings",
    "get_taxonomy": "zstagger.registry",
    "registered_taxonomies": "zstagger.registry",
    "invalid_taxonomies": "zstagger.registry",
    "resolve_taxonomy": "zstagger.registry",
    "load_plugins": "zstagger.plugins",
    "enqueue": "zstagger.queue.client",
    "evaluate": "zstagger.evaluation",
    "calibrate": "zstagger.evaluation",
    "Job": "zstagger.queue.client",
    "verify_webhook": "zstagger.net.signing",
    "MediaOptions": "zstagger.media",
}

if TYPE_CHECKING:
    from .engine.model import ClipEncoder
    from .evaluation import calibrate, evaluate
    from .images import ImagePolicy, ImageWithText
    from .media import MediaOptions
    from .plugins import load_plugins
    from .registry import get_taxonomy, invalid_taxonomies, registered_taxonomies, resolve_taxonomy
    from .queue.client import Job, enqueue
    from .net.signing import verify_webhook
    from .settings import Settings
    from .tagger import Tagger


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'zstagger' has no attribute {name!r}")


__all__ = [
    "ClipEncoder", "ConfigurationError", "Descent", "ErrorInfo", "Facet", "FacetValue", "FrameScore", "ImageWithText", "MultiTagResult", "TextFusion", "Job", "MediaInfo", "MediaOptions", "MediaPolicy", "Segment", "calibrate", "enqueue", "evaluate", "ImageLoadError", "ImagePolicy", "Label", "LabelExplanation", "LabelScore",
    "ModelLoadError", "ModelNotFoundError", "PluginError", "Settings", "TagResult", "Tagger", "Taxonomy",
    "TaxonomyError", "UnknownTaxonomyError", "ZstaggerError", "get_taxonomy", "hookimpl", "invalid_taxonomies",
    "load_plugins", "registered_taxonomies", "resolve_taxonomy", "verify_webhook", "__version__",
]
