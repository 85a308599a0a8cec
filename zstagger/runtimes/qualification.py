"""Qualification records of a built runtime, and the gate that refuses an unqualified int8 build.

``zstagger runtime qualify`` (:mod:`zstagger.evaluation.qualify`) compares a runtime with its
source model on the user's images for one taxonomy and writes a record here:
``DIR/qualifications/<taxonomy fingerprint>.json``, bound to the runtime's fingerprint (a
rebuilt or edited runtime needs qualifying again). :class:`RuntimeGate` is what the tagger
asks before compiling a taxonomy: an int8 build is used only with a passing record for that
taxonomy, unless ``ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME`` is set, which is logged once per
taxonomy and recorded in every result's provenance. fp16 and fp32 builds are not gated.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigurationError
from ..settings import Settings
from .manifest import is_runtime_dir, read_manifest, runtime_fingerprint

log = logging.getLogger(__name__)

RECORDS_DIR = "qualifications"
GATED_PRECISIONS = frozenset({"int8"})
_MAX_RECORD_BYTES = 4 * 1024 * 1024


class LabelAgreement(BaseModel):
    model_config = ConfigDict(frozen=True)

    label: str
    tag_agreement: float  # share of images tagged (or not) alike by runtime and source
    mean_abs_score_delta: float
    max_abs_score_delta: float


class AccuracyChange(BaseModel):
    """With labelled data: the figure, on the source model and on the runtime, and the change
    (runtime - source) with a paired bootstrap interval."""

    model_config = ConfigDict(frozen=True)

    figure: str  # verdict_accuracy, top1_accuracy or label_accuracy
    source: float
    runtime: float
    change: float
    change_low: float | None = None
    change_high: float | None = None


class QualificationRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    runtime: str
    precision: str
    runtime_fingerprint: str
    source_model: str
    source_fingerprint: str | None
    taxonomy: str
    taxonomy_version: str
    taxonomy_fingerprint: str
    images: int  # compared (readable by both)
    unreadable: int
    images_fingerprint: str
    labelled: bool
    verdict_agreement: float  # same verdict (same top label without actions)
    decision: str  # "verdict" or "top label": what verdict_agreement compares
    min_tag_agreement: float
    mean_abs_score_delta: float
    max_abs_score_delta: float
    labels: list[LabelAgreement]
    accuracy: AccuracyChange | None = None
    limits: dict[str, float]
    passed: bool
    failures: list[str]
    seconds: float = 0.0
    created: str = ""


def record_path(directory: str | Path, taxonomy_fingerprint: str) -> Path:
    return Path(directory).expanduser() / RECORDS_DIR / f"{taxonomy_fingerprint}.json"


def write_record(directory: str | Path, record: QualificationRecord) -> Path:
    path = record_path(directory, record.taxonomy_fingerprint)
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(path)
    return path


def read_record(directory: str | Path, taxonomy_fingerprint: str) -> QualificationRecord | None:
    """The record for a taxonomy, or None when there is none or it cannot be read (never raises)."""
    path = record_path(directory, taxonomy_fingerprint)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_MAX_RECORD_BYTES + 1)
        if len(data) > _MAX_RECORD_BYTES:
            return None
        return QualificationRecord.model_validate_json(data)
    except (OSError, ValidationError):
        return None


class RuntimeGate:
    """Asked by the tagger before a taxonomy is compiled; says what provenance records."""

    def __init__(self, model: str, settings: Settings):
        self.model = model
        self.allow_unqualified = settings.allow_unqualified_runtime
        self.qualifying = False  # set by `zstagger runtime qualify`, which runs the runtime to qualify it
        self._identity = None
        if is_runtime_dir(model):
            manifest = read_manifest(model)
            self._identity = {"runtime": manifest.runtime, "precision": manifest.precision}
        self._passed: set[str] = set()
        self._unqualified: set[str] = set()
        self._lock = threading.Lock()

    @property
    def gated(self) -> bool:
        return self._identity is not None and self._identity["precision"] in GATED_PRECISIONS

    def check(self, taxonomy) -> None:
        """Return when ``taxonomy`` may be used with this model; else a one-line ConfigurationError."""
        if not self.gated or self.qualifying:
            return
        key = taxonomy.fingerprint
        with self._lock:
            if key in self._passed or key in self._unqualified:
                return
        record = read_record(self.model, key)
        fingerprint = runtime_fingerprint(self.model)
        if record is not None and record.passed and record.runtime_fingerprint == fingerprint:
            with self._lock:
                self._passed.add(key)
            return
        why = ("it failed qualification" if record is not None and record.runtime_fingerprint == fingerprint
               else "it changed after it was qualified" if record is not None else "it has not been qualified")
        if self.allow_unqualified:
            with self._lock:
                self._unqualified.add(key)
            log.warning("using the %s runtime %s with taxonomy %s although %s (ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME); "
                        "results record unqualified=true", self._identity["precision"], self.model, taxonomy.name, why)  # type: ignore[index]
            return
        precision = self._identity["precision"]  # type: ignore[index]
        if record is not None and record.runtime_fingerprint == fingerprint:  # qualified, and failed
            raise ConfigurationError(
                f"{self.model} is an {precision} runtime that failed `zstagger runtime qualify` for taxonomy "
                f"{taxonomy.name!r} ({'; '.join(record.failures) or 'see its record'}): rebuild it (other calibration "
                "images, or --precision fp16), or set ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME=1 to use it anyway"
            )
        raise ConfigurationError(
            f"{self.model} is an {precision} runtime and {why} for taxonomy {taxonomy.name!r}: run "
            f"`zstagger runtime qualify {self.model} -t {taxonomy.name} --data LABELLED` (or --images DIR) first, "
            "or set ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME=1 to use it anyway"
        )

    def provenance(self, taxonomy) -> dict:
        """The runtime fields of a result's provenance (none for the torch path)."""
        if self._identity is None:
            return {}
        fields = dict(self._identity)
        with self._lock:
            if taxonomy.fingerprint in self._unqualified:
                fields["unqualified"] = True
        return fields
