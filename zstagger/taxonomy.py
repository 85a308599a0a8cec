"""Taxonomies: labels, prompt templates, thresholds and moderation actions, as validated data.

A taxonomy is plain data (it can live in a YAML file) validated by pydantic. Every
problem in a spec is reported at once, each naming the taxonomy and the label, e.g.
``taxonomy 'shop': label 'shoes': parent 'apparel' is not a label of this taxonomy``.

Facets (``facets``) are attribute groups beside the labels (colour, material, sleeve length):
each facet's values compete with each other and with a "not visible / not applicable"
outcome, exactly as the labels of a single-label taxonomy do; facets are independent of each
other, and one may apply only under some labels (``applies_to``). ``descent`` says how a
hierarchy is walked: every label scored (``all``), or only the children of the label chosen
at each level (``entered``), stopping where the best child's share among its siblings is
below ``stop``.

Labels may also name images: ``examples`` and ``negative_examples`` (few-shot, combined
with the text as ``few_shot`` says) and ``known_images`` (near-copy matching). Image
references are paths (relative to ``examples_root``, else to the taxonomy file's
directory), directories or URLs; ``image_vectors`` carries their embeddings per model
(written by ``zstagger examples embed``) so that a spec can travel without its files.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import FileReadError, TaxonomyError
from .files import read_regular_file

DEFAULT_TEMPLATE = "This is a photo of {}."  # the Hugging Face pipeline's hypothesis_template
ADHOC_TAXONOMY = "labels"
MAX_FILE_BYTES = 16 * 1024 * 1024  # the largest real taxonomies (tens of thousands of labels) are a few MB

Action = Literal["allow", "review", "block"]
ACTION_SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}
# The default_threshold of a taxonomy that gives none, per mode. Multi-label: a label fires when
# it is at least as close to the image as its strongest rival (the contrastive score's 0.5;
# SigLIP's sigmoid probability 0.5). Single-label: the best label of each level is the tag
# (a background label's win, or a label's own threshold, can still leave an image untagged).
DEFAULT_THRESHOLDS: dict[str, float] = {"multi": 0.5, "single": 0.0}


class Label(BaseModel):
    """One label of a taxonomy.

    The label's text (``text``, else its name's last ``/`` segment with ``_`` read as a
    space) and each synonym are put into every template of the taxonomy; ``prompts`` are
    used as written. All of them are averaged into one embedding (prompt ensembling).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Unique within the taxonomy; reported in scores and tags.")
    text: str | None = Field(None, description="What to put into templates; defaults to a readable form of name.")
    synonyms: list[str] = Field(default_factory=list, description="More texts put into the templates.")
    prompts: list[str] = Field(default_factory=list, description="Complete prompts used as written.")
    negatives: list[str] = Field(
        default_factory=list,
        description="Look-alikes this label must be told apart from (multi-label scoring); put into the templates.",
    )
    threshold: float | None = Field(None, description="Score at or above which the label becomes a tag; overrides the default.")
    parent: str | None = Field(None, description="Name of the parent label, for hierarchies.")
    action: Action | None = Field(None, description="Moderation action when this label fires: allow, review or block.")
    background: bool = Field(False, description="Competes in scoring but is never a tag ('none of the above').")
    openai_categories: list[str] = Field(
        default_factory=list,
        description="OpenAI moderation category names (sexual, violence, ...) this label reports under in POST /v1/moderations.",
    )
    description: str | None = None
    examples: list[str] = Field(
        default_factory=list, description="Images of this label (paths, directories, URLs): few-shot, combined with the text."
    )
    negative_examples: list[str] = Field(
        default_factory=list, description="Images this label must NOT be taken for (multi-label scoring): counter-examples."
    )
    known_images: list[str] = Field(
        default_factory=list, description="Images whose near copies fire this label (with match_threshold)."
    )
    match_threshold: float | None = Field(
        None, description="Cosine at or above which an image matches one of known_images (0.9-0.97 for near copies)."
    )

    @property
    def prompt_text(self) -> str:
        return self.text if self.text is not None else self.name.rsplit("/", 1)[-1].replace("_", " ")

    @property
    def match_only(self) -> bool:
        """A label given only known images (no text, synonyms, prompts, negatives or examples)
        is matched, never scored: its score is its best cosine to a known image."""
        return bool(self.known_images) and not (
            self.text is not None or self.synonyms or self.prompts or self.negatives or self.examples or self.negative_examples
        )

    def image_refs(self) -> dict[str, list[str]]:
        """The label's image references by kind (examples, negative_examples, known_images), non-empty kinds only."""
        return {kind: refs for kind in IMAGE_KINDS if (refs := getattr(self, kind))}


IMAGE_KINDS = ("examples", "negative_examples", "known_images")


class FewShot(BaseModel):
    """How a label's example images are combined with its text (see :mod:`zstagger.engine.fewshot`).

    ``blend`` (default): the label's embedding becomes ``normalize((1 - weight) * text + weight * image centroid)``.
    ``centroid``: ``logit = scale * ((1 - weight) * cos(x, text) + weight * cos(x - mu, mean - mu))``.
    ``cache``: Tip-Adapter's cache, ``logit += scale * alpha * mean exp(-beta * (1 - cos(image, example)))``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["blend", "centroid", "cache"] = "blend"
    weight: float = Field(0.5, ge=0.0, le=1.0, description="centroid, blend: share of the images against the text.")
    alpha: float = Field(1.0, ge=0.0, description="cache: weight of the example affinities, in cosine units.")
    beta: float = Field(5.5, gt=0.0, description="cache: sharpness of the affinity exp(-beta * (1 - cos)).")

    def knobs(self) -> dict[str, float]:
        """The settings that apply to the method."""
        return {"alpha": self.alpha, "beta": self.beta} if self.method == "cache" else {"weight": self.weight}


class MediaPolicy(BaseModel):
    """How an animation's or video's sampled frames make one judgement (see :mod:`zstagger.media.aggregate`).

    A label's media score is, per ``aggregation``: ``max``, its ``min_frames``-th highest frame
    score (1: the highest), so it clears the label's threshold only when at least that many
    sampled frames do; ``mean_top_k``, the mean of its ``top_k`` highest frame scores. Tags and
    the verdict then follow from those scores exactly as for a still image.
    ``early_exit_frames``: stop decoding once a block label has fired on this many sampled
    frames (0: never; None: ZSTAGGER_MEDIA_EARLY_EXIT_ANIMATION / ZSTAGGER_VIDEO_EARLY_EXIT).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregation: Literal["max", "mean_top_k"] = "max"
    min_frames: int = Field(1, ge=1, description="max: frames a label must fire on for the media to be tagged with it.")
    top_k: int = Field(3, ge=1, description="mean_top_k: how many of a label's best frame scores are averaged.")
    early_exit_frames: int | None = Field(None, ge=0, description="Block-label firings that stop decoding (0: never).")

    @model_validator(mode="after")
    def _knobs_match_the_method(self) -> MediaPolicy:
        if self.aggregation == "mean_top_k" and self.min_frames != 1:
            raise ValueError("min_frames applies to aggregation 'max'; mean_top_k averages the top_k best frame scores")
        # A written-out policy carries every field: the default top_k is no choice of method.
        if self.aggregation == "max" and self.top_k != type(self).model_fields["top_k"].default:
            raise ValueError("top_k applies to aggregation 'mean_top_k'")
        return self


class TextFusion(BaseModel):
    """How an input's text (a product title or description) is fused with its image.

    The text is embedded by the model's text tower and scored against the same label prompts
    as the image. ``logit_mean``: the scoring rule (softmax, contrastive or sigmoid) is applied
    to ``(1 - weight) * image logits + weight * text logits``; ``prob_mean``: each side is scored
    on its own and the scores are mixed, ``(1 - weight) * image + weight * text``. Cosines stay
    the image's. An input without text is scored from its image alone, as without this block.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["logit_mean", "prob_mean"] = "logit_mean"
    weight: float = Field(0.3, ge=0.0, le=1.0, description="Share of the text against the image (0: image only).")


class ImageVectors(BaseModel):
    """The embeddings of a taxonomy's example and known images for one model (the key of
    ``image_vectors``: the model's fingerprint), written by ``zstagger examples embed``.

    The vectors are a pack (:mod:`zstagger.fewshot.pack`) identified by its SHA-256: inline
    (base64), in a file beside the taxonomy file, or, in a queued task, only named (the
    worker reads it from Redis by that hash).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = Field(description="The model they were embedded with, as it was given.")
    preprocessing: Literal["fast", "exact"] = "fast"
    dim: int = Field(ge=1, le=65536)
    count: int = Field(ge=0, description="Vectors in the pack.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0, description="Bytes in the pack.")
    inline: str | None = Field(None, description="The pack, base64.")
    file: str | None = Field(None, description="The pack's file, relative to the taxonomy file.")


class CalibratedLabel(BaseModel):
    """How one label's threshold was chosen by ``zstagger calibrate``, and what it achieved on held-out folds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["calibrated", "unreachable", "too_few_positives"]
    target: str = Field(description='e.g. "precision>=0.95", "recall>=0.9", "max f1".')
    threshold: float
    previous_threshold: float
    positives: int = Field(ge=0)
    held_out_precision: list[float | None] = Field(default_factory=list, description="[value, low, high] (95% interval).")
    held_out_recall: list[float | None] = Field(default_factory=list, description="[value, low, high] (95% interval).")


class Calibration(BaseModel):
    """Where a taxonomy's thresholds came from: written by ``zstagger calibrate``, shown by ``zstagger eval``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    model_fingerprint: str | None = None
    preprocessing: str = "fast"
    dataset: str
    dataset_fingerprint: str
    images: int = Field(ge=0)
    date: str
    target: str
    per_action: dict[str, float] = Field(default_factory=dict)
    folds: int = Field(ge=2)
    source: str = Field(description="The taxonomy it was calibrated from, as name@version.")
    labels: dict[str, CalibratedLabel] = Field(default_factory=dict)


FACET_NONE = "_none"  # the name of a facet's "not visible / not applicable" outcome


class Facet(BaseModel):
    """An attribute group (colour, material, ...): its values compete as the labels of a
    single-label taxonomy do, against a "not visible" outcome (``none``), and the best one is
    the facet's value when its score clears ``threshold``.

    ``values`` are labels (a bare string is a label of that name): text, synonyms, prompts
    and few-shot ``examples`` work as for any label. ``applies_to``: the facet is scored only
    for images tagged with one of these labels (or a label under one); empty: every image.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$", description="Reported as the key of result facets.")
    values: list[Label] = Field(description="The values that compete (a bare string: a label of that name).")
    applies_to: list[str] = Field(default_factory=list, description="Labels under which the facet applies (empty: always).")
    threshold: float = Field(0.0, description="Score at or above which the best value becomes the facet's value.")
    none: str | None = Field(
        "nothing of the kind", description="Text of the 'not visible / not applicable' outcome that competes with the "
        "values (null: none; the best value always wins unless below threshold)."
    )
    templates: list[str] | None = Field(None, description="Templates for the values (default: the taxonomy's).")
    description: str = ""

    @model_validator(mode="before")
    @classmethod
    def _bare_values_are_labels(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("values"), list):
            data = {**data, "values": [{"name": v} if isinstance(v, str) else v for v in data["values"]]}
        return data

    def image_key(self, value: str) -> str:
        """How the value's image sets are keyed among the taxonomy's (``facet=value``)."""
        return f"{self.name}={value}"


class Descent(BaseModel):
    """How a single-label hierarchy is walked (see :meth:`TaxonomyClassifier.tag_rows`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scoring: Literal["all", "entered"] = Field(
        "all", description="all: every label is scored; entered: only the children of the label chosen at each level "
        "(a 10,000-category tree scores a few dozen labels per image; the others report 0)."
    )
    stop: float = Field(
        0.0, ge=0.0, le=1.0, description="Confidence stop: descent ends where the best child's share among its "
        "siblings is below this (the image keeps the deepest level it is sure of)."
    )


class Taxonomy(BaseModel):
    """A named set of labels with templates, thresholds and a scoring mode.

    ``mode="single"``: labels compete (softmax); at most one tag per hierarchy level.
    ``mode="multi"``: every label is scored on its own against its ``negatives`` (or the
    taxonomy's ``negatives``, or its background labels) and any number can fire.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    version: str = "1"
    description: str = ""
    mode: Literal["single", "multi"] = "single"
    templates: list[str] = Field(default_factory=lambda: [DEFAULT_TEMPLATE])
    default_threshold: float = Field(
        0.0, description="Score at or above which a label becomes a tag; without one, 0.5 for multi-label taxonomies "
        "and 0.0 for single-label ones (see DEFAULT_THRESHOLDS)."
    )
    negatives: list[str] = Field(default_factory=list, description="Negatives for labels that list none of their own.")
    labels: list[Label]
    calibration: Calibration | None = Field(None, description="Set by `zstagger calibrate`: how the thresholds were chosen.")
    few_shot: FewShot | None = Field(None, description="How example images are combined with text (default: blend, weight 0.5).")
    examples_root: str | None = Field(
        None, description="Directory that relative image paths are relative to (default: the taxonomy file's directory)."
    )
    media: MediaPolicy | None = Field(None, description="How animations' and videos' frames are judged together (default: max).")
    text_fusion: TextFusion | None = Field(
        None, description="How an input's text (a product title) is fused with its image (default: image only)."
    )
    image_vectors: dict[str, ImageVectors] = Field(
        default_factory=dict, description="Embedded example/known images per model fingerprint (`zstagger examples embed`)."
    )
    facets: list[Facet] = Field(default_factory=list, description="Attribute groups scored beside the labels.")
    descent: Descent | None = Field(None, description="How a single-label hierarchy is walked (default: all labels scored).")
    metadata: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Per label name: plain strings carried into results (ids, paths), e.g. a "
        "category's Shopify ID and Google product category ID."
    )
    source: dict[str, str] = Field(
        default_factory=dict, description="Where a generated taxonomy came from (source, version, licence, attribution)."
    )

    # Where the spec was read from (Taxonomy.from_file): not part of the spec or its fingerprint.
    _source_dir: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_threshold_of_its_mode(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("default_threshold") is None:
            mode = data.get("mode", "single")
            data = {**data, "default_threshold": DEFAULT_THRESHOLDS.get(mode, 0.0) if isinstance(mode, str) else 0.0}
        return data

    def __init__(self, **data: Any) -> None:
        """Validate field types (pydantic), then the semantics (:meth:`_problems`); every problem is
        reported at once, type errors and the semantic problems of the rest of the spec alike."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TaxonomyError("\n".join(_describe(exc, data) + _problems_besides(exc, data))) from None
        problems = list(self._problems())
        if problems:
            raise TaxonomyError("\n".join(f"taxonomy {self.name!r}: {p}" for p in problems))

    @classmethod
    def parse(cls, data: Any, source: str | None = None) -> Taxonomy:
        """Build from a dict (as read from YAML/JSON), with errors naming ``source``."""
        if not isinstance(data, dict):
            raise TaxonomyError(f"{source or 'taxonomy'}: expected a mapping with name, labels, ..., got {type(data).__name__}")
        try:
            return cls(**data)
        except TaxonomyError as exc:
            raise TaxonomyError(f"{source}: {exc}" if source else str(exc)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> Taxonomy:
        path = Path(path)
        try:
            text = read_regular_file(path, MAX_FILE_BYTES).decode("utf-8")
        except FileReadError as exc:
            raise TaxonomyError(f"cannot read taxonomy file: {exc}") from None
        except UnicodeDecodeError as exc:
            raise TaxonomyError(f"{path}: cannot read taxonomy file: not UTF-8 text ({exc})") from None
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                # libyaml's safe loader when PyYAML has it: 10x faster on the built-in taxonomies
                data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
        except Exception as exc:  # JSONDecodeError is a ValueError; yaml's errors do not all derive from one
            raise TaxonomyError(f"{path}: cannot parse taxonomy file: {exc}") from None
        taxonomy = cls.parse(data, source=str(path))
        taxonomy._source_dir = str(path.resolve().parent)
        return taxonomy

    @classmethod
    def from_labels(cls, labels: Sequence[str], template: str = DEFAULT_TEMPLATE) -> Taxonomy:
        """An ad-hoc single-label taxonomy, like the HF pipeline's ``candidate_labels``."""
        clean = [label.strip() for label in labels if label.strip()]
        return cls(
            name=ADHOC_TAXONOMY,
            description="ad-hoc labels",
            templates=[template],
            labels=[Label(name=label, text=label) for label in dict.fromkeys(clean)],
        )

    # -- validation -------------------------------------------------------------------

    def _problems(self) -> Iterable[str]:
        """Every semantic problem of the spec, in one pass over the labels (linear in their number)."""
        if not self.labels:
            yield "has no labels"
        if not self.templates:
            yield "has no templates (use ['{}'] to use label texts as they are)"
        for template in self.templates:
            if not is_single_bare_placeholder(template):
                yield (
                    f"template {template!r} must contain exactly one '{{}}' where the label goes, and only a bare "
                    "'{}': no field name, index, conversion or format spec (write literal braces as '{{' and '}}')"
                )
        if not 0.0 <= self.default_threshold <= 1.0:
            yield f"default_threshold {self.default_threshold} is outside [0, 1]"
        names: dict[str, int] = {}
        for label in self.labels:
            names[label.name] = names.get(label.name, 0) + 1
        for name, count in names.items():
            if count > 1:
                yield f"label {name!r}: duplicate label name ({count} labels are called that)"
        by_name = {label.name: label for label in self.labels}
        has_background = any(label.background for label in self.labels)
        parents = {label.parent for label in self.labels if label.parent is not None}
        for label in self.labels:
            where = f"label {label.name!r}"
            if label.threshold is not None and not 0.0 <= label.threshold <= 1.0:
                yield f"{where}: threshold {label.threshold} is outside [0, 1]"
            if label.parent is not None:
                if label.parent not in by_name:
                    yield f"{where}: parent {label.parent!r} is not a label of this taxonomy"
                elif label.background or by_name[label.parent].background:
                    yield f"{where}: background labels cannot be part of a hierarchy"
            if not label.prompt_text.strip() and not label.prompts:
                yield f"{where}: has no text to build prompts from"
            yield from (f"{where}: {problem}" for problem in _image_problems(self, label, parents))
            if label.match_only:
                continue
            if self.mode == "multi" and not label.background and not (
                label.negatives or self.negatives or has_background or label.negative_examples
            ):
                yield (
                    f"{where}: multi-label scoring needs something to compare against: give the label "
                    "negatives, give the taxonomy negatives, or add a background label"
                )
        for name in (self.calibration.labels if self.calibration else {}):
            if name not in by_name:
                yield f"calibration: label {name!r} is not a label of this taxonomy"
        taught = [(label.name, kind) for label in self.labels for kind in ("examples", "negative_examples")
                  if getattr(label, kind)]
        if len(taught) == 1:
            name, kind = taught[0]
            yield (f"label {name!r}: its {kind.replace('_', ' ')} are the only image set, so there is nothing to tell them "
                   "apart from: give other labels examples (a background label's, of images that show none of the "
                   "labels, say)" + (" or give it negative_examples" if self.mode == "multi" and kind == "examples" else ""))
        for key, vectors in self.image_vectors.items():
            if not key.isalnum() or len(key) > 64:
                yield f"image_vectors: key {key!r} is not a model fingerprint"
            if vectors.inline is not None and vectors.file is not None:
                yield f"image_vectors[{key}]: give the pack inline or as a file, not both"
        yield from _facet_problems(self, by_name)
        for name in self.metadata:
            if name not in by_name:
                yield f"metadata: label {name!r} is not a label of this taxonomy"
        if self.descent is not None and self.descent.scoring == "entered":
            if self.mode != "single":
                yield "descent scoring 'entered' walks a single-label hierarchy: set mode: single"
            elif self.few_shot is not None and self.few_shot.method != "blend" and taught:
                yield "descent scoring 'entered' needs few_shot method 'blend' (centroid and cache score every label)"
            elif any(label.known_images for label in self.labels):
                yield "descent scoring 'entered' cannot be combined with known_images"
        for name in _cycle_members(by_name):
            yield f"label {name!r}: parent chain loops back to itself"
        if self.labels and all(label.background for label in self.labels):
            yield "every label is a background label, so nothing could ever be tagged"

    # -- derived data -----------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of the spec; keys cached text embeddings."""
        # Without a calibration block or images the hash is what it was before they existed.
        spec = _without_unused(self.model_dump(mode="json"))
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def spec_dict(self) -> dict[str, Any]:
        """The spec as plain data for a file: no null fields, no empty image lists."""
        return _without_unused(self.model_dump(mode="json", exclude_none=True))

    @property
    def has_images(self) -> bool:
        """Any label (or facet value) names example, counter-example or known images."""
        return any(label.examples or label.negative_examples or label.known_images for _, label in self.image_owners())

    def image_owners(self) -> list[tuple[str, Label]]:
        """Every label that may name images, with the key its image sets go under: labels by
        name, then each facet's values as ``facet=value``."""
        return [(label.name, label) for label in self.labels] + [
            (facet.image_key(value.name), value) for facet in self.facets for value in facet.values]

    def facet_taxonomy(self, facet: Facet) -> Taxonomy:
        """A facet as the single-label taxonomy it is scored as: its values, and its "not
        visible" outcome as a background label; its threshold as the default."""
        values = list(facet.values)
        if facet.none is not None:
            values.append(Label(name=FACET_NONE, text=facet.none, background=True))
        return Taxonomy(name=f"{self.name}.{facet.name}", version=self.version, mode="single",
                        templates=facet.templates or self.templates, default_threshold=facet.threshold,
                        labels=values, few_shot=self.few_shot, examples_root=self.examples_root)

    @property
    def source_dir(self) -> str | None:
        """The directory of the file the spec was read from, if it was read from a file."""
        return self._source_dir

    def images_base(self) -> str:
        """What relative image paths are relative to: ``examples_root``, else the taxonomy file's
        directory, else the current directory."""
        base = self.examples_root or self._source_dir or "."
        if self.examples_root and not os.path.isabs(self.examples_root) and self._source_dir:
            base = os.path.join(self._source_dir, self.examples_root)
        return os.path.abspath(base)

    def with_images_base(self) -> Taxonomy:
        """The same spec with ``examples_root`` set to :meth:`images_base` when it has relative
        image paths, so that it names the same files wherever it is read (a queued task)."""
        if self.examples_root is not None and os.path.isabs(self.examples_root) or not self.has_images:
            return self
        spec = self.model_dump(mode="json")
        spec["examples_root"] = self.images_base()
        located = Taxonomy.parse(spec)
        located._source_dir = self._source_dir
        return located

    def with_text_fusion(self, fusion: TextFusion | None = None) -> Taxonomy:
        """The same spec fusing an input's text: its own ``text_fusion``, else ``fusion``, else the
        default (eval compares image-only with image+text on any taxonomy)."""
        if self.text_fusion is not None:
            return self
        located = self.with_images_base()
        spec = located.model_dump(mode="json")
        spec["text_fusion"] = (fusion or TextFusion()).model_dump(mode="json")
        fused = Taxonomy.parse(spec)
        fused._source_dir = located._source_dir
        return fused

    @property
    def has_actions(self) -> bool:
        """Moderation taxonomies (any label with an action) produce a verdict."""
        return any(label.action is not None for label in self.labels)

    @cached_property
    def labels_by_name(self) -> dict[str, Label]:
        return {label.name: label for label in self.labels}

    def label(self, name: str) -> Label:
        return self.labels_by_name[name]

    def threshold_of(self, label: Label) -> float:
        if label.match_only:  # its score is its best cosine to a known image
            return label.match_threshold  # type: ignore[return-value]
        return label.threshold if label.threshold is not None else self.default_threshold

    def path_of(self, name: str) -> list[str]:
        """Label names from the root down to ``name``."""
        by_name = self.labels_by_name
        path = [name]
        while by_name[path[-1]].parent is not None:
            path.append(by_name[path[-1]].parent)  # type: ignore[arg-type]
        return path[::-1]

    def prompts_for(self, text_or_label: Label | str) -> list[str]:
        """Every prompt that describes a label (or a negative phrase)."""
        if isinstance(text_or_label, str):
            return [template.format(text_or_label) for template in self.templates]
        label = text_or_label
        texts = [label.prompt_text, *label.synonyms]
        return [template.format(text) for text in texts if text.strip() for template in self.templates] + list(label.prompts)


_LABEL_IMAGE_FIELDS = {"examples": [], "negative_examples": [], "known_images": [], "match_threshold": None}
_TAXONOMY_NEW_FIELDS = {"calibration": None, "few_shot": None, "examples_root": None, "image_vectors": {}, "media": None,
                        "text_fusion": None, "facets": [], "descent": None, "metadata": {}, "source": {}}


def _without_unused(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` without the optional blocks and image fields it does not use, so a spec that
    uses none of them dumps (and hashes) exactly as before they existed."""
    for key, empty in _TAXONOMY_NEW_FIELDS.items():
        if key in spec and spec[key] == empty:
            del spec[key]
    for label in spec.get("labels", []):
        for key, empty in _LABEL_IMAGE_FIELDS.items():
            if key in label and label[key] == empty:
                del label[key]
    return spec


def _facet_problems(taxonomy: Taxonomy, by_name: dict[str, Label]) -> Iterable[str]:
    """What is wrong with the taxonomy's facets: each is checked as the single-label taxonomy it is scored as."""
    seen: set[str] = set()
    for facet in taxonomy.facets:
        where = f"facet {facet.name!r}"
        if facet.name in seen:
            yield f"{where}: duplicate facet name"
        seen.add(facet.name)
        problems = [f"{where}: applies_to {name!r} is not a label of this taxonomy"
                    for name in facet.applies_to if name not in by_name]
        if not facet.values:
            problems.append(f"{where}: has no values")
        for value in facet.values:
            if value.name == FACET_NONE:
                problems.append(f"{where}: value name {FACET_NONE!r} is reserved for the 'not visible' outcome")
            problems += [f"{where}: value {value.name!r}: {field} does not apply to facet values"
                         for field in ("parent", "action", "known_images", "negative_examples", "negatives")
                         if getattr(value, field)]
        yield from problems
        if problems:
            continue
        try:  # the rest as the single-label taxonomy the facet is scored as
            taxonomy.facet_taxonomy(facet)
        except TaxonomyError as exc:
            prefix = f"taxonomy '{taxonomy.name}.{facet.name}': "
            for line in str(exc).splitlines():
                line = line.removeprefix(prefix).replace("default_threshold", "threshold").replace("label '", "value '")
                yield f"{where}: {'has no values' if line == 'has no labels' else line}"


def _image_problems(taxonomy: Taxonomy, label: Label, parents: set[str]) -> Iterable[str]:
    """What is wrong with one label's image fields."""
    for kind, refs in label.image_refs().items():
        for ref in refs:
            if not isinstance(ref, str) or not ref.strip() or any(c in ref for c in "\0\n\r"):
                yield f"{kind}: {ref!r} is not an image path, directory or URL"
            elif "://" in ref[:16] and not ref[:8].lower().startswith(("http://", "https://")):
                yield f"{kind}: {ref!r}: only http:// and https:// URLs can be fetched"
    if label.known_images and label.match_threshold is None:
        yield "known_images need a match_threshold (the cosine of a near copy: 0.9-0.97 for CLIP models)"
    if label.match_threshold is not None:
        if not label.known_images:
            yield "match_threshold applies to known_images, and the label has none"
        if not 0.0 < label.match_threshold <= 1.0:
            yield f"match_threshold {label.match_threshold} is outside (0, 1]"
    if label.known_images and label.background:
        yield "a background label is never a tag, so known_images cannot fire it"
    if label.negative_examples and taxonomy.mode == "single":
        yield "negative_examples apply to multi-label taxonomies (single-label ones compare labels with each other)"
    if label.match_only and label.threshold is not None:
        yield "threshold does not apply to a label matched by known_images alone: match_threshold is its threshold"
    if label.match_only and (label.parent is not None or label.name in parents):
        yield "a label matched by known_images alone cannot be part of a hierarchy (give it text to score it too)"


def is_single_bare_placeholder(template: str) -> bool:
    """True when ``template`` has exactly one replacement field and it is a bare ``{}``.

    A field name or index, a conversion (``!r``) or a format spec (``:>999999999``, which
    renders a gigabyte per prompt) is refused; ``{{`` and ``}}`` are literal braces.
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError:  # a lone '{' or '}'
        return False
    return fields == [("", "", None)]


def _cycle_members(by_name: dict[str, Label]) -> list[str]:
    """Labels on a parent cycle (not those that merely lead into one), in label order.

    Each label is walked over once: a walk stops at a label an earlier walk finished, and a
    walk that comes back onto itself has found a cycle.
    """
    finished: set[str] = set()
    looping: set[str] = set()
    for start in by_name:
        walk: dict[str, int] = {}  # label -> position on this walk
        node: str | None = start
        while node is not None and node in by_name and node not in finished and node not in walk:
            walk[node] = len(walk)
            node = by_name[node].parent
        if node is not None and node in walk:
            looping.update(name for name, at in walk.items() if at >= walk[node])
        finished.update(walk)
    return [name for name in by_name if name in looping]


def _display_name(data: Any) -> Any:
    return data.get("name", "<unnamed>") if isinstance(data, dict) else "<unnamed>"


def _describe(exc: ValidationError, data: dict) -> list[str]:
    """Turn pydantic's error list into lines that name the taxonomy and the label."""
    name = _display_name(data)
    labels = data.get("labels") if isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = list(err["loc"])
        where = f"taxonomy {name!r}"
        if loc[:1] == ["labels"] and len(loc) > 1 and isinstance(loc[1], int):
            label_name = None
            if isinstance(labels, list) and loc[1] < len(labels):
                item = labels[loc[1]]
                label_name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
            where += f": label {label_name!r}" if isinstance(label_name, str) and label_name else f": labels[{loc[1]}]"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        lines.append(f"{where}: {field + ': ' if field else ''}{msg}")
    return lines


def _problems_besides(exc: ValidationError, data: dict) -> list[str]:
    """The semantic problems a type error would otherwise hide, so that all are reported at once.

    The fields that failed are dropped (a label's invalid name becomes ``labels[i]``, an
    item that is not a label at all is left out) and what remains is validated again,
    types only, then checked.
    """
    cleaned = _without_invalid_fields(data, exc.errors())
    if cleaned is None:
        return []
    partial = Taxonomy.__new__(Taxonomy)
    try:
        BaseModel.__init__(partial, **cleaned)  # field types only: Taxonomy.__init__ adds the semantics
    except ValidationError:
        return []  # what is left is still not a taxonomy (no labels, say): nothing more to say
    return [f"taxonomy {_display_name(data)!r}: {problem}" for problem in partial._problems()]


def _without_invalid_fields(data: dict, errors: list[dict]) -> dict | None:
    cleaned = dict(data)
    labels = list(data["labels"]) if isinstance(data.get("labels"), list) else None
    dropped: set[int] = set()
    for err in errors:
        loc = err["loc"]
        if not loc:
            return None
        if loc[0] == "labels" and len(loc) > 1 and isinstance(loc[1], int) and labels is not None:
            index = loc[1]
            item = labels[index] if index < len(labels) else None
            if len(loc) == 2 or not isinstance(item, dict):
                dropped.add(index)
                continue
            item = labels[index] = dict(item)
            if loc[2] == "name":
                item["name"] = f"labels[{index}]"
            else:
                item.pop(loc[2], None)
        elif loc[0] == "name":
            cleaned["name"] = "unnamed"  # only the messages use it, and they use the name as given
        else:
            cleaned.pop(loc[0], None)
    if labels is not None:
        cleaned["labels"] = [label for i, label in enumerate(labels) if i not in dropped]
    return cleaned
