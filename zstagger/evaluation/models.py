"""The reports ``zstagger eval`` and ``zstagger calibrate`` print: pydantic models.

The Python API returns them, the CLI prints them as a table, ``--json`` dumps them. Every
precision, recall and accuracy is an :class:`Estimate`: the value on the dataset and a
95% bootstrap interval (resampling images), with the count it was computed on, so a
figure from 40 positives says how little it proves.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ..taxonomy import Calibration, Taxonomy


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class Estimate(_Model):
    value: float | None  # None: undefined here (e.g. precision of a label that never fired)
    low: float | None = None
    high: float | None = None
    n: int = 0  # the denominator: predictions for precision, positives for recall, images for accuracy

    def __str__(self) -> str:
        if self.value is None:
            return "-"
        if self.low is None or self.high is None:
            return f"{self.value:.3f}"
        small = f" (n={self.n})" if self.n < 30 else ""  # a bootstrap interval on a handful of images says little
        return f"{self.value:.3f} [{self.low:.2f}-{self.high:.2f}]{small}"


class LabelMetrics(_Model):
    label: str
    threshold: float
    support: int  # images that show the label
    predicted: int  # images the label was given to
    precision: Estimate
    recall: Estimate
    f1: Estimate
    average_precision: float | None = None  # threshold-free; None without positives
    roc_auc: float | None = None  # None without both positives and negatives


class ConfusedPair(_Model):
    true: str
    predicted: str
    count: int


class LevelMetrics(_Model):
    """Single-label metrics at one depth of the hierarchy (depth 0: the top level)."""

    depth: int
    images: int
    top1: Estimate
    top5: Estimate
    top_k: int  # 5, or fewer when the level has fewer labels
    accuracy: Estimate  # tag at this level (thresholds applied, "(none)" included) equals the truth
    labels: list[LabelMetrics]
    confusion_labels: list[str]  # rows: truth, columns: prediction; last one "(none)"
    confusion: list[list[int]]
    most_confused: list[ConfusedPair]


class Averages(_Model):
    """Multi-label averages: micro (pooled over labels) and macro (mean over labels with positives)."""

    micro_precision: Estimate
    micro_recall: Estimate
    micro_f1: Estimate
    macro_precision: Estimate
    macro_recall: Estimate
    macro_f1: Estimate
    micro_average_precision: float | None
    macro_average_precision: float | None
    macro_roc_auc: float | None


class VerdictMetrics(_Model):
    """Moderation: the verdict against the strictest action among an image's true labels."""

    actions: list[str]  # allow, review, block
    table: list[list[int]]  # table[true][verdict], in the order of actions
    accuracy: Estimate
    misses: Estimate  # block-worthy images that got allow
    review_misses: Estimate  # review-worthy images that got allow
    false_alarms: Estimate  # clean images (true action allow) that got block or review


class UnreadableImage(_Model):
    image: str
    type: str
    message: str


class FewShotUse(_Model):
    """Which labels of an evaluated taxonomy use images, and how they are combined with the text."""

    method: str
    settings: dict[str, float]
    images_from: str  # "embedded vectors" (the spec's, for this model) or "image files"
    labels: dict[str, dict[str, int]]  # label -> images per kind (examples, negative_examples, known_images)


class SignalRow(_Model):
    """One row of eval's image-only against image+text comparison: the headline figures of one
    way of scoring the same images (the images with text scored with it fused, the rest alone)."""

    signal: str  # "image" or "image+text"
    images_with_text: int  # of the evaluated images, those whose text was fused (0 for "image")
    text_fusion: str | None = None  # "logit_mean, weight 0.3" (the taxonomy's, or the default when it has none)
    top1: Estimate | None = None  # single-label: the top level
    accuracy: Estimate | None = None  # single-label: tag accuracy at the top level
    micro_f1: Estimate | None = None  # multi-label
    macro_f1: Estimate | None = None
    macro_average_precision: float | None = None
    verdict_accuracy: Estimate | None = None  # taxonomies with actions


class FacetMetrics(_Model):
    """One facet on the images whose rows give it a true value (see :mod:`.facets`)."""

    facet: str
    threshold: float
    judged: int  # images whose row gives the facet (a value, or null)
    applies: int  # of those, images whose category the facet applies to
    accuracy: Estimate  # the value given (or null) is the true one (or null)
    precision: Estimate  # of the values given, the true ones
    recall: Estimate  # of the true values, those given
    coverage: float  # share of the judged images given a value


class FacetCalibrationResult(_Model):
    facet: str
    status: str  # calibrated | unreachable | not_judged
    target: str  # "precision>=0.9" or "max accuracy"
    previous_threshold: float
    threshold: float  # the one written (previous when not calibrated)
    judged: int
    figures: FacetMetrics  # in-sample, at the threshold written


class MediaItems(_Model):
    """Animations and videos among a dataset's items. Each is one item with one label set: its
    score per label is its sampled frames' scores aggregated as its taxonomy's ``media`` policy
    says (every frame judged, no early exit), the score its tags and verdict come from when it is
    tagged. Every figure, and every threshold calibrate chooses, is per media item, not per frame."""

    items: int
    kinds: dict[str, int]  # animation | video -> items
    aggregation: str  # how a label's frame scores become the item's score, in words
    unit: str = "per media item (aggregated over its frames), not per frame"


class EvalReport(_Model):
    taxonomy: str
    taxonomy_version: str
    mode: str
    model: str
    model_fingerprint: str | None
    preprocessing: str
    dataset: str
    dataset_fingerprint: str
    images: int  # in the dataset
    evaluated: int  # readable, in every figure below
    unreadable_count: int
    unreadable: list[UnreadableImage]  # the first few, with their error records
    cache_hits: int
    cache_misses: int
    bootstrap_rounds: int
    levels: list[LevelMetrics] = []  # single-label taxonomies
    labels: list[LabelMetrics] = []  # multi-label taxonomies
    averages: Averages | None = None  # multi-label taxonomies
    verdicts: VerdictMetrics | None = None  # taxonomies with actions
    calibration: Calibration | None = None  # the taxonomy's own calibration record, shown again
    few_shot: FewShotUse | None = None  # labels that use example, counter-example or known images
    facets: list[FacetMetrics] = []  # taxonomies with facets, on images whose rows give them
    media: MediaItems | None = None  # animations and videos among the items (None: stills only)
    warnings: list[str] = []  # labels that fire on nearly every image (see evaluation.api.ALWAYS_FIRES)
    report_dir: str | None = None
    seconds: float = 0.0
    # A manifest whose rows bring text: image-only against image+text on the same images (both
    # rows), and the full figures with text. Left out otherwise.
    signals: list[SignalRow] | None = None
    with_text: EvalReport | None = None


class LabelCalibrationResult(_Model):
    label: str
    action: str | None
    target: str  # "precision>=0.9", "recall>=0.8", "max f1"
    status: str  # calibrated | unreachable | too_few_positives
    positives: int
    previous_threshold: float
    threshold: float  # the one written (previous when not calibrated)
    in_sample_precision: Estimate
    in_sample_recall: Estimate
    held_out_precision: Estimate  # k-fold cross-validation: thresholds chosen without the fold they are tested on
    held_out_recall: Estimate
    fold_thresholds: list[float | None]
    # the fitted estimator (weighted calibrations): P(true | score) fitted on the images, averaged over
    # every image at or above the threshold (each by its weight); None when counted
    estimated_precision: float | None = None
    note: str = ""


class ExamplesComparison(_Model):
    """``calibrate --examples K``: held-out figures with the picked examples and without them."""

    per_label: int  # K asked for
    labels: dict[str, int]  # examples written per label (fewer where the data has fewer)
    metric: str  # "top-1 accuracy" (single-label) or "macro average precision" (multi-label)
    without_examples: Estimate  # the taxonomy as given (text alone, or its own examples); nothing fitted, every image counts
    with_examples: Estimate  # held out: each fold scored with examples picked from the other folds
    labels_without_examples: list[LabelCalibrationResult]  # the calibration the taxonomy gets without examples


class TextUse(_Model):
    """Calibrated on inputs with text: thresholds chosen on the scores with each text fused, as
    tagging those inputs gives them (the calibrated taxonomy keeps the fusion it was chosen with)."""

    images_with_text: int
    text_fusion: str | None = None  # "logit_mean, weight 0.3"


class CalibrationReport(_Model):
    taxonomy: Taxonomy  # the calibrated taxonomy, ready to write
    source_taxonomy: str
    model: str
    dataset: str
    images: int
    evaluated: int
    unreadable_count: int
    unreadable: list[UnreadableImage]
    folds: int
    labels: list[LabelCalibrationResult]
    warnings: list[str]
    examples: ExamplesComparison | None = None  # calibrate --examples K
    facets: list[FacetCalibrationResult] = []  # taxonomies with facets: each facet's threshold
    media: MediaItems | None = None  # animations and videos among the items: thresholds chosen per item
    text: TextUse | None = None  # inputs with text (a manifest's "text"): thresholds chosen on the fused scores
    seconds: float = 0.0
