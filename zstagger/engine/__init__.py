"""The scoring engine: model loading, preprocessing and the zero-shot math.

Nothing here knows about taxonomies, plugins, queues or the command line.
"""

from .model import ClipEncoder, resolve_device, resolve_precision
from .preprocess import Preprocessor
from .scoring import ScoringPlan, ensemble, hierarchical_softmax

__all__ = ["ClipEncoder", "Preprocessor", "ScoringPlan", "ensemble", "hierarchical_softmax", "resolve_device", "resolve_precision"]
