"""``zstagger.evaluate(...)`` and ``zstagger.calibrate(...)``: what the CLI commands call.

Both check the optional extra and the dataset (labels against the taxonomy) before any
image is read or any model loaded, score the dataset once (image embeddings from the
cache when present), and return the pydantic reports of :mod:`.models`. Animations and
videos are items like images, each judged as a whole (:mod:`.scored`); the reports say how
many there were and how their frames were aggregated (:class:`.models.MediaItems`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ..classifier import TaxonomyClassifier
from ..errors import ConfigurationError, DatasetError
from ..media import describe_aggregation
from ..registry import resolve_taxonomy
from ..settings import Settings
from ..tagger import Tagger
from ..taxonomy import ACTION_SEVERITY, FewShot, Taxonomy
from .calibrate import ESTIMATORS, MIN_POSITIVES, Target, calibrate_scored, calibrated_taxonomy
from .datasets import LabelledDataset, load_dataset
from .extra import check_installed, import_in_background
from .facets import calibrate_facet, facet_figures
from .metrics import Bootstrap, multi_label_figures, single_label_figures, verdict_figures
from .models import (CalibrationReport, EvalReport, FewShotUse, LabelMetrics, LevelMetrics, MediaItems, SignalRow,
                     TextUse)
from .scored import UNREADABLE_SHOWN, ScoredDataset, rescore, score_dataset, with_text

Progress = Callable[[int], None]
ALWAYS_FIRES = 0.9  # a label tagged on more than this share of the images is reported: its threshold is suspect


def evaluate(
    data: str | Path,
    taxonomy: str | Taxonomy | None = None,
    *,
    labels: Sequence[str] | None = None,
    template: str | None = None,
    model: str | None = None,
    tagger: Tagger | None = None,
    report_dir: str | Path | None = None,
    cache: bool = True,
    bootstrap_rounds: int = 1000,
    settings: Settings | None = None,
    progress: Callable[[LabelledDataset], Progress] | None = None,
) -> EvalReport:
    """Measure a taxonomy (or ad-hoc labels) on a labelled dataset; see :class:`EvalReport`.

    ``report_dir`` also writes an HTML report with plots. ``cache=False`` neither reads
    nor writes the image-embedding cache. ``progress(dataset)`` may return a callback
    that receives the number of images done per batch.
    """
    started = time.perf_counter()
    if report_dir is not None:  # the figures need numpy only; the report's plots need the eval extra
        check_installed("sklearn", "matplotlib")
    spec = resolve_taxonomy(taxonomy, labels, template)
    dataset = load_dataset(data, spec)
    has_text = any(item.text is not None for item in dataset.items)
    if has_text:
        _check_texts(dataset, (tagger.settings if tagger is not None else settings or Settings()).max_text_chars)
    with _tagger(tagger, model, cache, settings) as active:
        scored = _score(dataset, spec, active, progress, for_text=has_text)
        report = build_eval_report(scored, dataset, active, bootstrap_rounds)
        if has_text:  # the same images again, their text fused: both rows in the report
            fused, count = with_text(scored, spec.with_text_fusion(), active)
            text_report = build_eval_report(fused, dataset, active, bootstrap_rounds)
            described = describe_fusion(fused.taxonomy.text_fusion)
            report = report.model_copy(update={"with_text": text_report, "signals": [
                signal_row(report, "image", 0), signal_row(text_report, "image+text", count, described)]})
    if report_dir is not None:
        from .report import write_report

        report = report.model_copy(update={"report_dir": str(write_report(report, scored, Path(report_dir)))})
    return report.model_copy(update={"seconds": round(time.perf_counter() - started, 3)})


def build_eval_report(scored: ScoredDataset, dataset: LabelledDataset, tagger: Tagger, rounds: int = 1000) -> EvalReport:
    spec = scored.taxonomy
    boot = Bootstrap(len(scored.items), rounds)
    fields: dict = {}
    # every figure registered first, so that one pass over the resamples gives all their intervals
    figures = single_label_figures(scored, boot) if spec.mode == "single" else multi_label_figures(scored, boot)
    verdicts = verdict_figures(scored, boot) if spec.has_actions else None
    if spec.mode == "single":
        fields["levels"] = figures()
    else:
        fields["labels"], fields["averages"] = figures()
    if verdicts is not None:
        fields["verdicts"] = verdicts()
    fields["warnings"] = always_firing(fields.get("labels") or [], fields.get("levels") or [], len(scored.items))
    fields["facets"] = [facet_figures(facet, boot) for facet in scored.facets]
    return EvalReport(
        few_shot=few_shot_use(scored.classifier),
        taxonomy=spec.name, taxonomy_version=spec.version, mode=spec.mode, model=tagger.model_name,
        model_fingerprint=tagger.fingerprint, preprocessing=tagger.preprocessing, dataset=dataset.source,
        dataset_fingerprint=dataset.fingerprint, images=len(dataset.items), evaluated=len(scored.items),
        unreadable_count=len(scored.unreadable), unreadable=scored.unreadable[:UNREADABLE_SHOWN],
        cache_hits=scored.cache_hits, cache_misses=scored.cache_misses, bootstrap_rounds=rounds,
        calibration=spec.calibration, media=media_items(scored), **fields,
    )


def describe_fusion(fusion) -> str | None:
    """How an input's text is fused, in a few words: ``logit_mean, weight 0.3``."""
    return f"{fusion.method}, weight {fusion.weight:g}" if fusion is not None else None


def signal_row(report: EvalReport, signal: str, with_text: int, fusion: str | None = None) -> SignalRow:
    """The headline figures of one report, as a row of the image-only / image+text comparison."""
    top = report.levels[0] if report.levels else None
    averages = report.averages
    return SignalRow(
        signal=signal, images_with_text=with_text, text_fusion=fusion,
        top1=top.top1 if top else None, accuracy=top.accuracy if top else None,
        micro_f1=averages.micro_f1 if averages else None, macro_f1=averages.macro_f1 if averages else None,
        macro_average_precision=averages.macro_average_precision if averages else None,
        verdict_accuracy=report.verdicts.accuracy if report.verdicts else None,
    )


def _check_texts(dataset: LabelledDataset, max_chars: int) -> None:
    """Every manifest text within ZSTAGGER_MAX_TEXT_CHARS, before any image is read."""
    long = [item.ref for item in dataset.items if item.text is not None and len(item.text) > max_chars]
    if long:
        raise DatasetError(f"{dataset.source}: {len(long)} rows have a text over {max_chars:,} characters "
                           f"(ZSTAGGER_MAX_TEXT_CHARS; first: {long[0]}): shorten them, or raise the limit")


def media_items(scored: ScoredDataset) -> MediaItems | None:
    """What a report says of the animations and videos it judged (None: none)."""
    if not scored.media:
        return None
    return MediaItems(items=sum(scored.media.values()), kinds=dict(sorted(scored.media.items())),
                      aggregation=describe_aggregation(scored.taxonomy.media))


def always_firing(labels: list[LabelMetrics], levels: list[LevelMetrics], images: int) -> list[str]:
    """One warning per label that fires on more than ALWAYS_FIRES of the images it was judged on."""
    judged = [(m, images) for m in labels] + [(m, level.images) for level in levels for m in level.labels]
    return [
        f"label {m.label!r} fires on {m.predicted / n:.0%} of the images ({m.predicted} of {n}; it is true of "
        f"{m.support}) at threshold {m.threshold:g}: a label that fires on nearly everything tells nothing apart; "
        "check its threshold (`zstagger calibrate`) and what it is scored against (negatives, background labels)"
        for m, n in judged if n and m.predicted > ALWAYS_FIRES * n
    ]


def few_shot_use(compiled: TaxonomyClassifier) -> FewShotUse | None:
    """Which labels use images, from a compiled taxonomy (None when none does)."""
    if compiled.images_from is None:
        return None
    settings = compiled.taxonomy.few_shot or FewShot()
    return FewShotUse(method=settings.method, settings=settings.knobs(), images_from=compiled.images_from,
                      labels=compiled.image_counts)


def calibrate(
    data: str | Path,
    taxonomy: str | Taxonomy,
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
    objective: str | None = None,
    per_action: dict[str, float] | None = None,
    folds: int = 5,
    min_positives: int = MIN_POSITIVES,
    name: str | None = None,
    model: str | None = None,
    tagger: Tagger | None = None,
    cache: bool = True,
    bootstrap_rounds: int = 1000,
    settings: Settings | None = None,
    progress: Callable[[LabelledDataset], Progress] | None = None,
    examples: int = 0,
    estimator: str | None = None,
) -> CalibrationReport:
    """Choose per-label thresholds on a labelled dataset; ``report.taxonomy`` is the calibrated taxonomy.

    Exactly one of ``target_precision``, ``target_recall`` or ``objective="f1"``;
    ``per_action`` (e.g. ``{"block": 0.99, "review": 0.9}``) sets a precision target for
    the labels with that action. ``examples=K`` also picks K example images per label
    from the data and writes them into the taxonomy (:mod:`.examples`); ``report.examples``
    compares held-out figures with and without them. ``estimator``: ``counted`` or ``fitted``
    (default: fitted when the manifest has weights, e.g. from ``zstagger review export``; see
    :mod:`.fitted`). Write the result with :func:`write_taxonomy`.
    """
    started = time.perf_counter()
    target = parse_target(target_precision, target_recall, objective)
    per_action = check_per_action(per_action or {})
    if not 2 <= folds <= 20:
        raise ConfigurationError(f"folds must be between 2 and 20, got {folds}")
    if examples < 0:
        raise ConfigurationError(f"examples must be a number of images per label (0 for none), got {examples}")
    if estimator is not None and estimator not in ESTIMATORS:
        raise ConfigurationError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {estimator!r}")
    check_installed("sklearn")
    spec = resolve_taxonomy(taxonomy)
    dataset = load_dataset(data, spec)
    import_in_background("sklearn.model_selection")
    has_text = any(item.text is not None for item in dataset.items)
    with _tagger(tagger, model, cache, settings) as active:
        if has_text:
            _check_texts(dataset, active.settings.max_text_chars)
        scored = _score(dataset, spec, active, progress, keep_embeddings=examples > 0, for_text=has_text)
        texts = 0
        if has_text:  # thresholds for the scores tagging gives these inputs: their text fused
            scored, texts = with_text(scored, spec.with_text_fusion(), active)
        if len(scored.items) < 2 * folds:
            raise DatasetError(f"{dataset.source}: {len(scored.items)} readable images are too few for {folds}-fold cross-validation")
        boot = Bootstrap(len(scored.items), bootstrap_rounds)
        results, warnings = calibrate_scored(scored, target, per_action, folds=folds, min_positives=min_positives, boot=boot,
                                             estimator=estimator)
        comparison, final = None, scored
        if examples:
            comparison, final, results, warnings = _with_examples(
                scored, scored.taxonomy, active, examples, target, per_action, folds, min_positives, boot, results, estimator)
        calibrated = calibrated_taxonomy(
            final, results, target=target, per_action=per_action, folds=folds, model=active.model_name,
            model_fingerprint=active.fingerprint, preprocessing=active.preprocessing, dataset=dataset.source,
            dataset_fingerprint=dataset.fingerprint, name=name,
        )
        facet_results = [calibrate_facet(facet, target.kind, target.value, boot) for facet in final.facets]
        calibrated = with_facet_thresholds(calibrated, facet_results)
    if scored.unreadable:
        warnings.append(f"{len(scored.unreadable)} unreadable images left out (first: {scored.unreadable[0].image}: "
                        f"{scored.unreadable[0].message})")
    return CalibrationReport(
        taxonomy=calibrated, source_taxonomy=f"{spec.name}@{spec.version}", model=active.model_name, dataset=dataset.source,
        images=len(dataset.items), evaluated=len(scored.items), unreadable_count=len(scored.unreadable),
        unreadable=scored.unreadable[:UNREADABLE_SHOWN], folds=folds, labels=results, warnings=warnings,
        examples=comparison, facets=facet_results, media=media_items(scored),
        text=TextUse(images_with_text=texts, text_fusion=describe_fusion(scored.taxonomy.text_fusion)) if texts else None,
        seconds=round(time.perf_counter() - started, 3),
    )


def with_facet_thresholds(taxonomy: Taxonomy, results: list) -> Taxonomy:
    """The taxonomy with each calibrated facet's threshold written in."""
    chosen = {r.facet: r.threshold for r in results if r.status == "calibrated"}
    if not chosen:
        return taxonomy
    spec = taxonomy.model_dump(mode="json")
    for facet in spec["facets"]:
        facet["threshold"] = chosen.get(facet["name"], facet["threshold"])
    located = Taxonomy.parse(spec)
    located._source_dir = taxonomy.source_dir
    return located


def _with_examples(scored: ScoredDataset, spec: Taxonomy, tagger: Tagger, k: int, target: Target, per_action: dict,
                   folds: int, min_positives: int, boot: Bootstrap, without: list, estimator: str | None = None) -> tuple:
    """Thresholds and held-out figures for ``spec`` with K examples per label picked from the data."""
    from .examples import ExampleFolds, compare, pick_examples, with_examples

    fingerprint = tagger.fingerprint or tagger.encoder.fingerprint
    source_sets = tagger.image_sets(spec)

    def scored_with(picks):
        taxonomy = with_examples(scored, spec, picks, source_sets, fingerprint=fingerprint, model=tagger.model_name,
                                 preprocessing=tagger.preprocessing)
        return rescore(scored, tagger.classifier(taxonomy))

    fold_scores = ExampleFolds(scored, k, scored_with)
    picks = pick_examples(scored, np.arange(len(scored.items)), k)
    final = scored_with(picks)
    learnt = np.zeros(len(scored.items), dtype=bool)
    for rows in picks.values():
        learnt[rows] = True
    results, warnings = calibrate_scored(final, target, per_action, folds=folds, min_positives=min_positives, boot=boot,
                                         fold_scorer=fold_scores, fitted=~learnt, estimator=estimator)
    return compare(scored, final, fold_scores, picks, without, boot), final, results, warnings


CALIBRATED = "Written by `zstagger calibrate`: thresholds chosen on labelled data (see calibration below)."


def write_taxonomy(taxonomy: Taxonomy, path: str | Path, header: str = CALIBRATED, files: dict[str, bytes] | None = None) -> Path:
    """Write a complete taxonomy file (YAML) that ``ZSTAGGER_TAXONOMY_PATH`` loads as it is,
    and ``files`` (name -> bytes: vector packs) beside it, first."""
    import yaml

    path = Path(path)
    body = yaml.safe_dump(taxonomy.spec_dict(), sort_keys=False, allow_unicode=True, width=100)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for name, data in (files or {}).items():
            (path.parent / name).write_bytes(data)
        path.write_text(f"# {header}\n" + body, encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc.strerror or exc}") from None
    Taxonomy.from_file(path)  # what was written loads and validates
    return path


def parse_target(precision: float | None, recall: float | None, objective: str | None) -> Target:
    """The one owner of "exactly one of --target-precision, --target-recall, --objective f1"."""
    given = [(k, v) for k, v in (("precision", precision), ("recall", recall), ("f1", objective)) if v is not None]
    if len(given) != 1:
        raise ConfigurationError("give exactly one of --target-precision P, --target-recall R or --objective f1")
    kind, value = given[0]
    if kind == "f1":
        if value != "f1":
            raise ConfigurationError(f"unknown objective {value!r}: the objective can be f1")
        return Target("f1")
    if not 0 < float(value) <= 1:  # type: ignore[arg-type]
        raise ConfigurationError(f"target {kind} must be in (0, 1], got {value}")
    return Target(kind, float(value))  # type: ignore[arg-type]


def check_per_action(per_action: dict[str, float]) -> dict[str, float]:
    for action, value in per_action.items():
        if action not in ACTION_SEVERITY:
            raise ConfigurationError(f"--per-action: unknown action {action!r} (actions: {', '.join(ACTION_SEVERITY)})")
        if not 0 < value <= 1:
            raise ConfigurationError(f"--per-action: target precision for {action} must be in (0, 1], got {value}")
    return dict(per_action)


def _score(dataset: LabelledDataset, spec: Taxonomy, tagger: Tagger, progress,
           keep_embeddings: bool = False, for_text: bool = False) -> ScoredDataset:
    scored = score_dataset(dataset, spec, tagger, progress(dataset) if progress else None,
                           keep_embeddings=keep_embeddings, for_text=for_text)
    if not scored.items:
        first = "; ".join(f"{u.image}: {u.message}" for u in scored.unreadable[:3])
        raise DatasetError(f"{dataset.source}: none of the {len(dataset.items)} images could be read ({first})")
    if not scored.truth.any():
        raise DatasetError(f"{dataset.source}: every readable image is labelled as showing none of the labels")
    return scored


@contextlib.contextmanager
def _tagger(tagger: Tagger | None, model: str | None, cache: bool, settings: Settings | None) -> Iterator[Tagger]:
    if tagger is not None:
        yield tagger
        return
    with Tagger(model, settings=settings, image_cache=cache) as owned:
        yield owned


__all__ = ["build_eval_report", "calibrate", "evaluate", "write_taxonomy"]
