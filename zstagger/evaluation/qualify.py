"""``zstagger runtime qualify``: does a built runtime tag like its source model, on the user's images?

Both the source model (from the runtime's manifest, or another checkpoint) and the runtime
embed the same images (through the image-embedding cache, so qualifying again costs little)
and are scored with the same taxonomy. Figures: per-label tag agreement, verdict agreement
(the top label's, for a taxonomy without actions), score deltas; with a labelled dataset
also the accuracy of each and its change with a paired bootstrap interval. The record
(:class:`~zstagger.runtimes.qualification.QualificationRecord`) is written into the runtime
directory, with pass/fail against the limits of the settings; the tagger's gate reads it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..errors import ConfigurationError, DatasetError
from ..images import describe, expand_inputs
from ..registry import resolve_taxonomy
from ..runtimes import read_manifest, runtime_fingerprint
from ..runtimes.qualification import AccuracyChange, LabelAgreement, QualificationRecord, write_record
from ..settings import Settings
from ..tagger import Tagger
from ..taxonomy import ACTION_SEVERITY, Taxonomy
from .datasets import load_dataset
from .metrics import Bootstrap
from .scored import truth_matrix

Progress = Callable[[str, int], None]


def qualify(
    runtime_dir: str | Path,
    taxonomy: str | Taxonomy | None = None,
    *,
    labels: Sequence[str] | None = None,
    template: str | None = None,
    data: str | Path | None = None,
    images: str | Path | None = None,
    source: str | None = None,
    settings: Settings | None = None,
    bootstrap_rounds: int = 1000,
    write: bool = True,
    progress: Progress | None = None,
) -> QualificationRecord:
    """Compare ``runtime_dir`` with its source model on ``data`` (labelled) or ``images`` (not)."""
    started = time.perf_counter()
    settings = settings or Settings()
    directory = str(runtime_dir)
    manifest = read_manifest(directory)
    if (data is None) == (images is None):
        raise ConfigurationError("give exactly one of --data LABELLED (a labelled dataset) or --images DIR")
    spec = resolve_taxonomy(taxonomy, labels, template)
    truth = None
    if data is not None:
        dataset = load_dataset(data, spec)
        refs: list = [item.ref for item in dataset.items]
        truth = truth_matrix(dataset.items, spec)
    else:
        refs = list(expand_inputs([str(images)]))
        if not refs:
            raise DatasetError(f"{images}: no images found")
    source_model = source or manifest.source.model
    # The reference is the source model at full precision: what the runtime is meant to reproduce.
    with Tagger(source_model, settings=settings, precision="fp32", image_cache=True) as reference, \
            Tagger(directory, settings=settings, image_cache=True) as candidate:
        candidate.runtime_gate.qualifying = True
        if source is None and reference.fingerprint not in (None, manifest.source.fingerprint):
            raise ConfigurationError(
                f"{source_model} has changed since {directory} was built from it (fingerprint {reference.fingerprint}, "
                f"built from {manifest.source.fingerprint}): rebuild the runtime, or pass --source MODEL to compare anyway"
            )
        ref_vectors = _embed(reference, refs, "source", progress)
        run_vectors = _embed(candidate, refs, "runtime", progress)
        readable = [i for i, (a, b) in enumerate(zip(ref_vectors, run_vectors)) if isinstance(a, np.ndarray) and isinstance(b, np.ndarray)]
        if not readable:
            raise DatasetError(f"none of the {len(refs)} images could be read by both the source model and the runtime")
        ref_c, run_c = reference.classifier(spec), candidate.classifier(spec)
        ref_batch = ref_c.score(np.stack([ref_vectors[i] for i in readable]))
        run_batch = run_c.score(np.stack([run_vectors[i] for i in readable]))
        record_source_fp = reference.fingerprint or reference.encoder.fingerprint
        ref_mask, run_mask = ref_c.tag_mask(ref_batch.scores, ref_batch.matched), run_c.tag_mask(run_batch.scores, run_batch.matched)
        if spec.has_actions:
            decision = "verdict"
            ref_decision, run_decision = ref_c.severities(ref_mask), run_c.severities(run_mask)
        else:
            decision = "top label"
            ref_decision = ref_c.classify_batch(np.stack([ref_vectors[i] for i in readable]), 1).ranked[:, 0]
            run_decision = run_c.classify_batch(np.stack([run_vectors[i] for i in readable]), 1).ranked[:, 0]
        fingerprint = candidate.fingerprint or runtime_fingerprint(directory)
    names = [label.name for label in spec.labels]
    delta = np.abs(run_batch.scores - ref_batch.scores)
    tag_agree = (ref_mask == run_mask).mean(axis=0)
    label_rows = [
        LabelAgreement(label=name, tag_agreement=float(tag_agree[j]), mean_abs_score_delta=float(delta[:, j].mean()),
                       max_abs_score_delta=float(delta[:, j].max()))
        for j, name in enumerate(names) if not spec.labels[j].background
    ]
    verdict_agreement = float((ref_decision == run_decision).mean())
    min_tag = min((row.tag_agreement for row in label_rows), default=1.0)
    limits = {"verdict_agreement": settings.qualify_min_verdict_agreement, "tag_agreement": settings.qualify_min_tag_agreement}
    failures = []
    if verdict_agreement < limits["verdict_agreement"]:
        failures.append(f"{decision} agreement {verdict_agreement:.4f} < {limits['verdict_agreement']}")
    for row in label_rows:
        if row.tag_agreement < limits["tag_agreement"]:
            failures.append(f"tag agreement of {row.label!r} {row.tag_agreement:.4f} < {limits['tag_agreement']}")
    accuracy = None
    if truth is not None:
        accuracy = _accuracy_change(spec, truth[readable], ref_mask, run_mask, ref_decision, run_decision, bootstrap_rounds)
    digests = hashlib.sha256("\n".join(sorted(describe(refs[i]) for i in readable)).encode()).hexdigest()
    record = QualificationRecord(
        runtime=manifest.runtime, precision=manifest.precision, runtime_fingerprint=fingerprint,
        source_model=source_model, source_fingerprint=record_source_fp,
        taxonomy=spec.name, taxonomy_version=spec.version, taxonomy_fingerprint=spec.fingerprint,
        images=len(readable), unreadable=len(refs) - len(readable), images_fingerprint=digests, labelled=truth is not None,
        verdict_agreement=verdict_agreement, decision=decision, min_tag_agreement=float(min_tag),
        mean_abs_score_delta=float(delta.mean()), max_abs_score_delta=float(delta.max()),
        labels=label_rows, accuracy=accuracy, limits=limits, passed=not failures, failures=failures,
        seconds=round(time.perf_counter() - started, 3), created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if write:
        write_record(directory, record)
    return record


def _embed(tagger: Tagger, refs: list, which: str, progress: Progress | None) -> list:
    report = (lambda n: progress(which, n)) if progress is not None else None
    return tagger.embed_images(refs, report)


def _accuracy_change(spec: Taxonomy, truth: np.ndarray, ref_mask: np.ndarray, run_mask: np.ndarray,
                     ref_decision: np.ndarray, run_decision: np.ndarray, rounds: int) -> AccuracyChange:
    """Per-image correctness of each, and the mean change with a paired bootstrap interval."""
    if spec.has_actions:
        figure = "verdict_accuracy"
        severity = np.array([ACTION_SEVERITY[label.action or "allow"] for label in spec.labels])
        true_action = np.where(truth, severity[None, :], 0).max(axis=1)
        ref_ok, run_ok = ref_decision == true_action, run_decision == true_action
    elif spec.mode == "single":
        figure = "top1_accuracy"
        rows = np.arange(len(truth))
        ref_ok, run_ok = truth[rows, ref_decision], truth[rows, run_decision]
    else:
        figure = "label_accuracy"
        reported = [j for j, label in enumerate(spec.labels) if not label.background]
        ref_ok = (ref_mask[:, reported] == truth[:, reported]).mean(axis=1)
        run_ok = (run_mask[:, reported] == truth[:, reported]).mean(axis=1)
    ref_ok, run_ok = np.asarray(ref_ok, np.float64), np.asarray(run_ok, np.float64)
    change, _ = Bootstrap(len(truth), rounds).ratio(run_ok - ref_ok, np.ones(len(truth)))
    return AccuracyChange(figure=figure, source=float(ref_ok.mean()), runtime=float(run_ok.mean()), change=float(change.value or 0.0),
                          change_low=change.low, change_high=change.high)


__all__ = ["qualify"]
