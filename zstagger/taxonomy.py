"""Taxonomies: labels, prompt templates, thresholds and moderation actions, as validated data.

A taxonomy is plain data (it can live in a YAML file) validated by pydantic. Every
problem in a spec is reported at once, each naming the taxonomy and the label, e.g.
``taxonomy 'shop': label 'shoes': parent 'apparel' is not a label of this taxonomy``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import TaxonomyError

DEFAULT_TEMPLATE = "This is a photo of {}."  # the Hugging Face pipeline's hypothesis_template
ADHOC_TAXONOMY = "labels"

Action = Literal["allow", "review", "block"]
ACTION_SEVERITY: dict[str, int] = {"allow": 0, "review": 1, "block": 2}


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

    @property
    def prompt_text(self) -> str:
        return self.text if self.text is not None else self.name.rsplit("/", 1)[-1].replace("_", " ")


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
    default_threshold: float = 0.0
    negatives: list[str] = Field(default_factory=list, description="Negatives for labels that list none of their own.")
    labels: list[Label]
    calibration: Calibration | None = Field(None, description="Set by `zstagger calibrate`: how the thresholds were chosen.")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise TaxonomyError(_describe(exc, data)) from None

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
            text = path.read_text(encoding="utf-8")
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                # libyaml's safe loader when PyYAML has it: 10x faster on the built-in taxonomies
                data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (a safe loader)
        except (OSError, ValueError) as exc:  # yaml.YAMLError and JSONDecodeError are ValueErrors
            raise TaxonomyError(f"{path}: cannot read taxonomy file: {exc}") from None
        except Exception as exc:  # yaml's errors do not all derive from ValueError
            raise TaxonomyError(f"{path}: cannot parse taxonomy file: {exc}") from None
        return cls.parse(data, source=str(path))

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

    @model_validator(mode="after")
    def _check(self) -> Taxonomy:
        problems = list(self._problems())
        if problems:
            raise ValueError("\n".join(f"taxonomy {self.name!r}: {p}" for p in problems))
        return self

    def _problems(self) -> Iterable[str]:
        if not self.labels:
            yield "has no labels"
        if not self.templates:
            yield "has no templates (use ['{}'] to use label texts as they are)"
        for template in self.templates:
            try:
                template.format("x")
                ok = "{}" in template
            except (IndexError, KeyError, ValueError):
                ok = False
            if not ok:
                yield f"template {template!r} must contain exactly one '{{}}' where the label goes"
        if not 0.0 <= self.default_threshold <= 1.0:
            yield f"default_threshold {self.default_threshold} is outside [0, 1]"
        names: dict[str, int] = {}
        for label in self.labels:
            names[label.name] = names.get(label.name, 0) + 1
        for name, count in names.items():
            if count > 1:
                yield f"label {name!r}: duplicate label name ({count} labels are called that)"
        by_name = {label.name: label for label in self.labels}
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
            if self.mode == "multi" and not label.background and not (
                label.negatives or self.negatives or any(other.background for other in self.labels)
            ):
                yield (
                    f"{where}: multi-label scoring needs something to compare against: give the label "
                    "negatives, give the taxonomy negatives, or add a background label"
                )
        for name in (self.calibration.labels if self.calibration else {}):
            if name not in by_name:
                yield f"calibration: label {name!r} is not a label of this taxonomy"
        for name in self._cycle_members(by_name):
            yield f"label {name!r}: parent chain loops back to itself"
        if self.labels and all(label.background for label in self.labels):
            yield "every label is a background label, so nothing could ever be tagged"

    @staticmethod
    def _cycle_members(by_name: dict[str, Label]) -> list[str]:
        looping = []
        for start in by_name:
            seen, node = set(), start
            while node is not None and node in by_name and node not in seen:
                seen.add(node)
                node = by_name[node].parent
            if node == start:
                looping.append(start)
        return looping

    # -- derived data -----------------------------------------------------------------

    @cached_property
    def fingerprint(self) -> str:
        """Stable hash of the spec; keys cached text embeddings."""
        # Without a calibration block the hash is what it was before the block existed.
        spec = self.model_dump(mode="json", exclude={"calibration"} if self.calibration is None else None)
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def has_actions(self) -> bool:
        """Moderation taxonomies (any label with an action) produce a verdict."""
        return any(label.action is not None for label in self.labels)

    def label(self, name: str) -> Label:
        for label in self.labels:
            if label.name == name:
                return label
        raise KeyError(name)

    def threshold_of(self, label: Label) -> float:
        return label.threshold if label.threshold is not None else self.default_threshold

    def path_of(self, name: str) -> list[str]:
        """Label names from the root down to ``name``."""
        by_name = {label.name: label for label in self.labels}
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


def _describe(exc: ValidationError, data: dict) -> str:
    """Turn pydantic's error list into lines that name the taxonomy and the label."""
    name = data.get("name", "<unnamed>") if isinstance(data, dict) else "<unnamed>"
    labels = data.get("labels") if isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        msg = err["msg"].removeprefix("Value error, ")
        loc = list(err["loc"])
        if err["type"] == "value_error" and not loc:
            lines.append(msg)  # our own validator: already fully worded
            continue
        where = f"taxonomy {name!r}"
        if loc[:1] == ["labels"] and len(loc) > 1 and isinstance(loc[1], int):
            label_name = None
            if isinstance(labels, list) and loc[1] < len(labels):
                item = labels[loc[1]]
                label_name = item.get("name") if isinstance(item, dict) else getattr(item, "name", None)
            where += f": label {label_name!r}" if label_name else f": labels[{loc[1]}]"
            loc = loc[2:]
        field = ".".join(str(part) for part in loc)
        lines.append(f"{where}: {field + ': ' if field else ''}{msg}")
    return "\n".join(lines)
