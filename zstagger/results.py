"""Result records: one per input image, the same in the CLI, the Python API and the queue.

One serializer for all of them (:meth:`TagResult.to_json`, :meth:`TagResult.from_json`):
image names are file names, which on POSIX are bytes and need not be UTF-8. Python holds
such a name with surrogate escapes (``os.fsdecode``); they are written as JSON ``\\udcXX``
escapes, so ``json.loads`` gives the same string back and ``os.fsencode`` the original bytes.
"""

from __future__ import annotations

import json
import math
import re

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class LabelScore(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    score: float  # softmax / contrastive / sigmoid probability in [0, 1]
    cosine: float  # raw cosine similarity, for calibrating your own thresholds


class ErrorInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    type: str  # stable code: not_found, invalid_image, too_many_pixels, url_blocked, fetch_timeout, ...
    message: str
    # Worth retrying (a network timeout)? Used by queue workers; not part of the JSON output.
    transient: bool = Field(False, exclude=True)


class Provenance(BaseModel):
    """What produced a result, so a decision can be audited later: which model (and exactly
    which weights), which taxonomy (and exactly which spec), which preprocessing, and where
    the image embedding came from (``image``: encoded from the image; ``store``: re-scored
    from an embedding stored earlier)."""

    model_config = ConfigDict(frozen=True)

    model: str
    model_fingerprint: str | None = None
    taxonomy_version: str
    taxonomy_fingerprint: str
    preprocessing: str = "fast"
    source: str = "image"


class KnownImageMatch(BaseModel):
    """A label fired because the image is a near copy of one of its known images."""

    model_config = ConfigDict(frozen=True)

    label: str
    image: str  # the known image, as the taxonomy names it
    cosine: float  # how close: at or above the label's match_threshold


class TagResult(BaseModel):
    """Tags for one input. ``error`` is set (and scores empty) when the input could not be read.

    ``matches`` lists the known images the input matched (taxonomies with known images);
    it is left out of the output when there are none, so results without it read as before.
    """

    model_config = ConfigDict(frozen=True)

    image: str
    taxonomy: str
    scores: list[LabelScore] = []
    tags: list[str] = []
    verdict: str | None = None
    error: ErrorInfo | None = None
    provenance: Provenance | None = None
    matches: list[KnownImageMatch] | None = None

    @model_serializer(mode="wrap")
    def _leave_out_no_matches(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict) and data.get("matches", 0) is None:
            del data["matches"]
        return data

    def to_json(self) -> str:
        """One line of JSON (the schema of ``zstagger tag`` and ``zstagger results``), always valid UTF-8."""
        text = json.dumps(_finite(self.model_dump(mode="json")), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)

    @classmethod
    def from_json(cls, line: str | bytes) -> TagResult:
        """Read what :meth:`to_json` wrote (pydantic's own JSON parser refuses lone surrogates)."""
        return cls.model_validate(json.loads(line))

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(
        cls, image: str, taxonomy: str, kind: str, message: str, transient: bool = False,
        provenance: Provenance | None = None,
    ) -> TagResult:
        return cls(image=image, taxonomy=taxonomy, error=ErrorInfo(type=kind, message=message, transient=transient),
                   provenance=provenance)


def _finite(value):
    """NaN and infinities become null, as in pydantic's own JSON (they are not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
