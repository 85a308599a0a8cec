"""Measuring and tuning accuracy on labelled data: datasets, metrics, calibration, reports.

- :mod:`.datasets`: folder-per-label and JSONL/CSV manifests, checked against the taxonomy;
- :mod:`.scored`: a dataset run through a tagger (embeddings from the image cache);
- :mod:`.metrics`: the figures, with bootstrap intervals (scikit-learn);
- :mod:`.calibrate`: per-label thresholds for a target, with k-fold held-out estimates;
- :mod:`.report`: the HTML report with plots (matplotlib);
- :mod:`.models`: the pydantic reports; :mod:`.api`: ``evaluate`` and ``calibrate``.

scikit-learn and matplotlib come with the optional extra ``zstagger[eval]``.
"""

from .api import calibrate, evaluate, write_taxonomy

__all__ = ["calibrate", "evaluate", "write_taxonomy"]
