"""Result records: one per input image, the same in the CLI, the Python API and the queue."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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


class TagResult(BaseModel):
    """Tags for one input. ``error`` is set (and scores empty) when the input could not be read."""

    model_config = ConfigDict(frozen=True)

    image: str
    taxonomy: str
    scores: list[LabelScore] = []
    tags: list[str] = []
    verdict: str | None = None
    error: ErrorInfo | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, image: str, taxonomy: str, kind: str, message: str, transient: bool = False) -> TagResult:
        return cls(image=image, taxonomy=taxonomy, error=ErrorInfo(type=kind, message=message, transient=transient))
