"""Result records: one per input image, the same in the CLI, the Python API and the queue.

One serializer for all of them (:func:`format_result`, behind :meth:`TagResult.to_json`;
:meth:`TagResult.from_json` reads it): image names are file names, which on POSIX are bytes
and need not be UTF-8. Python holds such a name with surrogate escapes (``os.fsdecode``);
they are written as JSON ``\\udcXX`` escapes, so ``json.loads`` gives the same string back
and ``os.fsencode`` the original bytes. :func:`format_result` also takes plain values, so
re-tagging millions of stored embeddings writes the same lines without building objects.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
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
    # A built runtime (``zstagger runtime build``): which, in which precision, and whether it
    # was used without a passing qualification for this taxonomy. Left out for the torch
    # path (a checkpoint), so those results read as before.
    runtime: str | None = None
    precision: str | None = None
    unqualified: bool | None = None

    @model_serializer(mode="wrap")
    def _leave_out_torch_path(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict):
            for key in ("runtime", "precision", "unqualified"):
                if data.get(key, 0) is None:
                    del data[key]
        return data


class KnownImageMatch(BaseModel):
    """A label fired because the image is a near copy of one of its known images."""

    model_config = ConfigDict(frozen=True)

    label: str
    image: str  # the known image, as the taxonomy names it
    cosine: float  # how close: at or above the label's match_threshold


class MediaInfo(BaseModel):
    """What an animation or video was: its kind, length, and how much of it was judged.

    ``frames_decoded`` counts every frame decoded, ``frames_scored`` the sampled frames whose
    scores were aggregated; ``stopped_early``: decoding stopped once a block label had fired on
    enough frames; ``truncated``: the stream broke off, and the frames before it were judged."""

    model_config = ConfigDict(frozen=True)

    kind: str  # animation | video
    duration: float | None = None  # seconds (as far as decoded, when stopped early)
    frames_decoded: int = 0
    frames_scored: int = 0
    stopped_early: bool = False
    truncated: bool = False


class Segment(BaseModel):
    """A contiguous stretch of sampled frames on which a label fired (times in seconds)."""

    model_config = ConfigDict(frozen=True)

    label: str
    start: float
    end: float
    peak_score: float
    peak_time: float


class FrameScore(BaseModel):
    """One sampled frame's scores (asked for with ``frames=True`` / ``--frames``)."""

    model_config = ConfigDict(frozen=True)

    time: float
    scores: dict[str, float]


_MEDIA_FIELDS = ("media", "segments", "frames")


class KnownImageTrail(BaseModel):
    """A label's closest known image in a decision trail."""

    model_config = ConfigDict(frozen=True)

    image: str
    cosine: float
    matched: bool


class LabelExplanation(BaseModel):
    """One entry of a result's decision trail (see :mod:`zstagger.trail`): a label that fired,
    or the strongest one that did not. Fields that do not apply are left out of the JSON."""

    model_config = ConfigDict(frozen=True)

    label: str
    fired: bool
    score: float
    threshold: float
    threshold_from: str  # label, default, calibration or match_threshold
    threshold_source: str  # the taxonomy version (and calibration run) that set it
    prompt: str | None = None  # the prompt of the label's ensemble closest to the image
    prompt_cosine: float | None = None
    rival: str | None = None  # what the label was weighed against: its strongest competitor
    rival_kind: str | None = None  # negative, background, counter_examples or label
    rival_cosine: float | None = None
    margin: float | None = None  # (label logit - rival logit) / logit scale
    text_score: float | None = None  # the score from text alone (taxonomies with example images)
    known_image: KnownImageTrail | None = None

    @model_serializer(mode="wrap")
    def _leave_out_what_does_not_apply(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class FacetValue(BaseModel):
    """A facet's outcome for one image: its value (None when the "not visible" outcome won, the
    best value is below the facet's threshold, or the facet does not apply) and the best value's
    score (None when the facet does not apply to the image's category)."""

    model_config = ConfigDict(frozen=True)

    value: str | None = None
    score: float | None = None


class TagResult(BaseModel):
    """Tags for one input. ``error`` is set (and scores empty) when the input could not be read.

    ``matches`` lists the known images the input matched (taxonomies with known images);
    it is left out of the output when there are none, so results without it read as before.
    ``explanation`` is the decision trail (:mod:`zstagger.trail`): on by default, left out
    when it was not asked for (``ZSTAGGER_EXPLAIN=0``, ``Tagger(explain=False)``).
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
    # Taxonomies with facets: facet name -> its value and score (left out for those without).
    facets: dict[str, FacetValue] | None = None
    # Taxonomies with metadata: the deepest tag, its path and its metadata (Shopify and Google IDs...).
    category: dict[str, Any] | None = None
    # Animations and videos only (left out of the output for stills, which read as before).
    media: MediaInfo | None = None
    segments: list[Segment] | None = None
    frames: list[FrameScore] | None = None
    explanation: list[LabelExplanation] | None = None
    # Inputs that carried text (a product title): whether the taxonomy fused it with the image
    # (its ``text_fusion``). Left out for inputs without text, which read as before.
    text_used: bool | None = None

    @model_serializer(mode="wrap")
    def _leave_out_no_matches(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        if isinstance(data, dict):
            for key in ("matches", "facets", "category", "explanation", "text_used", *_MEDIA_FIELDS):
                if key in data and data[key] is None:
                    del data[key]
        return data

    def to_json(self) -> str:
        """One line of JSON (the schema of ``zstagger tag`` and ``zstagger results``), always valid UTF-8."""
        line = format_result(
            self.image, self.taxonomy, ((s.label, s.score, s.cosine) for s in self.scores), self.tags, self.verdict,
            self.error.model_dump(mode="json") if self.error is not None else None,
            self.provenance, None if self.matches is None else [(m.label, m.image, m.cosine) for m in self.matches],
            None if self.explanation is None else [e.model_dump(mode="json") for e in self.explanation],
            None if self.facets is None else {k: v.model_dump(mode="json") for k, v in self.facets.items()},
            self.category,
        )
        media = self._media_json()
        line = line if not media else line[:-1] + "," + media
        return line if self.text_used is None else line[:-1] + (',"text_used":true}' if self.text_used else ',"text_used":false}')

    def _media_json(self) -> str:
        """The media fields that are set, as the inside of a JSON object (empty for a still)."""
        if self.media is None and self.segments is None and self.frames is None:
            return ""
        fields = {key: getattr(self, key) for key in _MEDIA_FIELDS if getattr(self, key) is not None}
        extra = _dumps({key: (value.model_dump(mode="json") if isinstance(value, BaseModel) else
                              [v.model_dump(mode="json") for v in value]) for key, value in fields.items()})
        return extra[1:]  # '"media":...}': replaces the closing brace of the line


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


class MultiTagResult(BaseModel):
    """One input tagged with several taxonomies in one pass (``taxonomies=[...]``, ``-t a -t b``):
    each taxonomy's :class:`TagResult` under its name, in the order they were asked for. Each
    one is exactly the record a run with that taxonomy alone writes (its JSON line included), so
    a tool that reads today's records reads ``line["taxonomies"][name]`` unchanged.

    JSON: ``{"image": NAME, "taxonomies": {TAXONOMY: RESULT, ...}}``.
    """

    model_config = ConfigDict(frozen=True)

    image: str
    taxonomies: dict[str, TagResult]

    def __getitem__(self, taxonomy: str) -> TagResult:
        return self.taxonomies[taxonomy]

    @property
    def error(self) -> ErrorInfo | None:
        """The input's own error (it could not be read: every taxonomy's result carries it), else None."""
        errors = [result.error for result in self.taxonomies.values()]
        first = errors[0] if errors else None
        return first if first is not None and all(e == first for e in errors) else None

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.taxonomies.values())

    def to_json(self) -> str:
        """One line of JSON: each taxonomy's result as :meth:`TagResult.to_json` writes it."""
        inner = ",".join(_label(name) + ":" + result.to_json() for name, result in self.taxonomies.items())
        return '{"image":' + _string(self.image) + ',"taxonomies":{' + inner + "}}"

    @classmethod
    def from_json(cls, line: str | bytes) -> MultiTagResult:
        return cls.model_validate(json.loads(line))


def read_result(line: str | bytes) -> TagResult | MultiTagResult:
    """A result line of either shape (one taxonomy, or several: ``"taxonomies"``)."""
    data = json.loads(line)
    return MultiTagResult.model_validate(data) if "taxonomies" in data else TagResult.model_validate(data)


_ENTRY = '{"label":%s,"score":%s,"cosine":%s}'
_LINE = '{"image":%s,"taxonomy":%s,"scores":[%s],"tags":[%s],"verdict":%s,"error":%s%s}'


def format_result(
    image: str,
    taxonomy: str,
    scores: Iterable[tuple[str, float, float]],
    tags: Iterable[str],
    verdict: str | None,
    error: dict | None = None,
    provenance: Provenance | None = None,
    matches: Sequence[tuple[str, str, float]] | None = None,
    explanation: Sequence[dict] | None = None,
    facets: dict[str, dict] | None = None,
    category: dict | None = None,
) -> str:
    """The JSON line of one result: what ``json.dumps`` writes for the result's fields (no
    spaces, non-ASCII kept, NaN and infinities as null), lone surrogates as ``\\udcXX``;
    ``matches`` (label, known image, cosine) and ``explanation`` (decision trail entries, as
    :class:`LabelExplanation` dumps them), ``facets`` and ``category`` left out when None, as
    :class:`TagResult` leaves them out."""
    entries = ",".join([_ENTRY % (_label(label), _number(score), _number(cosine)) for label, score, cosine in scores])
    return _LINE % (_string(image), _label(taxonomy), entries, ",".join(map(_label, tags)), _verdict(verdict),
                    "null" if error is None else _dumps(error), _provenance(provenance) + _matches(matches)
                    + _facets(facets, category) + _explanation(explanation))


def format_results(
    images: Sequence[str],
    taxonomy: str,
    names: Sequence[str],
    ranked: np.ndarray,
    scores: np.ndarray,
    cosines: np.ndarray,
    tags: Sequence[Sequence[int]],
    verdicts: Sequence[str | None],
    provenance: Provenance | None = None,
    matches: Sequence[Sequence[tuple[str, str, float]] | None] | None = None,
    explanations: Sequence[Sequence[dict] | None] | None = None,
    facets: Sequence[dict[str, dict] | None] | None = None,
    categories: Sequence[dict | None] | None = None,
) -> list[str]:
    """:func:`format_result` for a page of results of one taxonomy, none of them an error,
    from arrays: ``ranked`` (N, K) label indices into ``names``, best first; ``scores`` and
    ``cosines`` (N, K) in the same order; ``tags`` label indices; one provenance for the page,
    ``matches`` and ``explanations`` per image. The floats of the whole page are printed in one pass and each line
    is one ``%`` formatting, which is what makes a million lines affordable."""
    rows, width = np.shape(ranked)
    quoted = np.array([_label(name) for name in names], dtype=object)
    args = np.empty((rows, 3 * width), dtype=object)
    args[:, 0::3] = quoted[ranked]
    args[:, 1::3] = _number_array(scores)
    args[:, 2::3] = _number_array(cosines)
    entries, taxonomy_json, tail, tag_json = ",".join([_ENTRY] * width), _label(taxonomy), _provenance(provenance), quoted.tolist()
    found = matches if matches is not None else [None] * rows
    trails = explanations if explanations is not None else [None] * rows
    facet_rows = facets if facets is not None else [None] * rows
    category_rows = categories if categories is not None else [None] * rows
    return [
        _LINE % (_string(image), taxonomy_json, entries % tuple(row), ",".join([tag_json[i] for i in row_tags]),
                 _verdict(verdict), "null", (tail + _matches(hits) if hits else tail) + _facets(facet_row, category)
                 + _explanation(trail))
        for image, row, row_tags, verdict, hits, trail, facet_row, category in zip(
            images, args.tolist(), tags, verdicts, found, trails, facet_rows, category_rows)
    ]


def _string(text: str) -> str:
    return _escaped(json.dumps(text, ensure_ascii=False))


_label = lru_cache(maxsize=4096)(_string)  # label and taxonomy names repeat on every line


def _verdict(verdict: str | None) -> str:
    return "null" if verdict is None else _label(verdict)


def _provenance(provenance: Provenance | None) -> str:
    return ',"provenance":' + ("null" if provenance is None else _dumps(provenance.model_dump(mode="json")))


def _matches(matches: Sequence[tuple[str, str, float]] | None) -> str:
    if matches is None:
        return ""
    return ',"matches":' + _dumps([{"label": label, "image": image, "cosine": cosine} for label, image, cosine in matches])


def _facets(facets: dict[str, dict] | None, category: dict | None) -> str:
    return (("" if facets is None else ',"facets":' + _dumps(facets))
            + ("" if category is None else ',"category":' + _dumps(category)))


def _explanation(trail: Sequence[dict] | None) -> str:
    return "" if trail is None else ',"explanation":[' + ",".join([_trail_entry(entry) for entry in trail]) + "]"


_KEYS: dict[str, str] = {}


def _trail_entry(entry: dict) -> str:
    """One decision-trail entry as json.dumps writes it: its strings repeat from line to line
    (labels, prompts, where thresholds came from), so they are quoted once (:func:`_label`)."""
    parts = []
    for key, value in entry.items():
        quoted = _KEYS.get(key)
        if quoted is None:
            quoted = _KEYS.setdefault(key, _string(key) + ":")
        if value.__class__ is float:
            parts.append(quoted + _number(value))
        elif value.__class__ is str:
            parts.append(quoted + _label(value))
        elif value.__class__ is bool:
            parts.append(quoted + ("true" if value else "false"))
        else:
            parts.append(quoted + _dumps(value))
    return "{" + ",".join(parts) + "}"


def _number_array(values: np.ndarray) -> np.ndarray:
    """:func:`_number` of every float of an array, as an object array of the same shape."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    printed = list(map(float.__repr__, flat.tolist())) if np.isfinite(flat).all() else list(map(_number, flat.tolist()))
    return np.array(printed, dtype=object).reshape(np.shape(values))


def _number(value: float) -> str:
    """A float as ``json.dumps`` writes it (``float.__repr__``), null when it is not finite."""
    return float.__repr__(value) if math.isfinite(value) else "null"


def _dumps(value: Any) -> str:
    return _escaped(json.dumps(_finite(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False))


def _escaped(json_text: str) -> str:
    """Lone surrogates (names that are not UTF-8) as \\udcXX escapes: valid UTF-8 that json.loads reads back."""
    if not _LONE_SURROGATE.search(json_text):
        return json_text
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def _finite(value):
    """NaN and infinities become null, as in pydantic's own JSON (they are not JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
