"""Which results go to people, and with what probability: the uncertainty band and the audit sample. Pure.

Two strata, so that what people decide can be weighted back to everything the model saw:

- the **band**: a result with a label whose score lies in that label's band, by default
  from the taxonomy's ``default_threshold`` (where ``review`` starts, in the shipped
  moderation policy) up to the label's own threshold (where its ``block`` starts), for
  labels with an action; a label whose threshold is the default gets ``[threshold - width,
  threshold)``. Bands can be set per label or for all. Included with probability ``band_rate`` (1).
- the **blocked** (only with ``blocked_rate``): a result with a label at or above its band
  (it fired; in the shipped policy, a ``block``), included with probability ``blocked_rate``.
  Without it these results are part of the audit. The precision of a block threshold is a
  fact about these results; a uniform audit lands a handful of its items there (most
  results are innocent), which leaves that precision to guesswork
  (``benchmarks/review_weighting.py``: a tenth of the reviews here halves the error).
- the **audit**: every other result, included with probability ``audit_rate`` (0.02).

Inclusion is decided by a hash of (seed, job, reference), so enqueueing the same results
again picks the same items, and each item records its inclusion probability: an export
weighs it by 1 / that probability (inverse-probability weighting).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..taxonomy import Taxonomy

DEFAULT_WIDTH = 0.1
DEFAULT_AUDIT_RATE = 0.02


@dataclass(frozen=True)
class Selection:
    """How results are chosen for review."""

    bands: dict[str, tuple[float, float]]  # label -> [low, high)
    band_rate: float = 1.0
    audit_rate: float = DEFAULT_AUDIT_RATE
    seed: str = "0"
    strata: tuple[str, ...] = field(default=("band", "blocked", "audit"))
    blocked_rate: float | None = None  # None: results above their band are part of the audit

    def __post_init__(self) -> None:
        rates = [("band rate", self.band_rate), ("audit rate", self.audit_rate)]
        for name, rate in rates + ([("blocked rate", self.blocked_rate)] if self.blocked_rate is not None else []):
            if not 0.0 < rate <= 1.0:
                raise ValueError(f"the {name} must be above 0 and at most 1, got {rate}")
        for label, (low, high) in self.bands.items():
            if not low < high:
                raise ValueError(f"label {label!r}: a band's low end must be below its high end, got [{low}, {high})")


def default_bands(taxonomy: Taxonomy, width: float = DEFAULT_WIDTH,
                  overrides: Mapping[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, float]]:
    """Every actionable label's band (see the module docstring); ``overrides`` replace single labels'."""
    bands: dict[str, tuple[float, float]] = {}
    for label in taxonomy.labels:
        if label.background or label.action not in ("review", "block"):
            continue
        high = taxonomy.threshold_of(label)
        low = taxonomy.default_threshold if taxonomy.default_threshold < high else high - width
        bands[label.name] = (low, high)
    for name, band in (overrides or {}).items():
        if name not in taxonomy.labels_by_name:
            raise ValueError(f"taxonomy {taxonomy.name!r} has no label {name!r}")
        bands[name] = band
    return bands


def uniform(seed: str, job_id: str, reference: str) -> float:
    """A number in [0, 1) fixed by (seed, job, reference)."""
    digest = hashlib.sha256(f"{seed}\x00{job_id}\x00{reference}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose(scores: Mapping[str, float], tags: list[str], selection: Selection, job_id: str,
           reference: str) -> tuple[str, float, str] | None:
    """(stratum, inclusion probability, the label in question) for one result, or None when not chosen.

    Band: the highest-scoring label inside its band. Blocked: the highest-scoring label above
    its band. Audit: the first tag, else the best label."""
    in_band = [(score, label) for label, score in scores.items()
               if label in selection.bands and selection.bands[label][0] <= score < selection.bands[label][1]]
    draw = uniform(selection.seed, job_id, reference)
    if in_band:
        if "band" not in selection.strata or draw >= selection.band_rate:
            return None
        return "band", selection.band_rate, max(in_band)[1]
    above = [(score, label) for label, score in scores.items()
             if label in selection.bands and score >= selection.bands[label][1]]
    if above and selection.blocked_rate is not None:
        if "blocked" not in selection.strata or draw >= selection.blocked_rate:
            return None
        return "blocked", selection.blocked_rate, max(above)[1]
    if "audit" not in selection.strata or draw >= selection.audit_rate or not scores:
        return None
    return "audit", selection.audit_rate, tags[0] if tags else max(scores, key=scores.get)  # type: ignore[arg-type]
