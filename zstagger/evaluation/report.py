"""The ``--report DIR`` page: one self-contained HTML file (plots embedded) plus the PNGs beside it.

Plots (matplotlib, no display needed): per-label precision-recall curves with the
current threshold marked, score histograms of positives vs negatives with the
threshold, a confusion-matrix heatmap (single-label; the verdict table for
moderation), a reliability diagram, and the worst misses with thumbnails. Every string
that came from the data (paths, label names) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ..images import load_image
from ..sources import is_source_url, read_bytes
from .calibrate import calibration_scores
from .extra import require
from .metrics import curve_area, precision_recall_curve, ranking_inputs
from .models import EvalReport, LabelMetrics
from .scored import ScoredDataset

MAX_PLOTTED_LABELS = 16
WORST_MISSES = 12
THUMB = 160


def write_report(report: EvalReport, scored: ScoredDataset, directory: Path) -> Path:
    """Write ``directory/index.html`` and its PNGs; returns the directory."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    metrics = _label_metrics(report)
    plotted = sorted((m for m in metrics if m.support), key=lambda m: -m.support)[:MAX_PLOTTED_LABELS]
    scores = calibration_scores(scored)
    index = {name: i for i, name in enumerate(scored.names)}
    figures: list[tuple[str, str, str]] = []  # (file, title, caption)

    if plotted:
        # The curves are drawn from what the table's AP is computed from (metrics.ranking_inputs),
        # and their points are written beside the plot: the plot's area is the table's AP.
        ranked = ranking_inputs(scored)
        curves = {m.label: precision_recall_curve(*ranked[m.label]) for m in plotted}
        fig = _grid(plt, len(plotted))
        for ax, m in zip(fig.axes, plotted):
            _pr_curve(ax, *curves[m.label], m)
        single = report.mode == "single"
        figures.append(_save(fig, directory / "pr_curves.png", "Precision-recall per label",
                             "Each label's precision against its recall as its score threshold falls; the area under "
                             "the steps is the AP in the table (points in pr_curves.json). Red dot: precision and recall "
                             "at the label's current threshold" + (
                                 "; a label becomes a tag only where it also beats its siblings, so the dot can sit "
                                 "below the curve of its score alone." if single else ".")))
        (directory / "pr_curves.json").write_text(json.dumps({
            label: {"average_precision": curve_area(recall, precision), "recall": recall.tolist(),
                    "precision": precision.tolist()}
            for label, (recall, precision) in curves.items()}), encoding="utf-8")
        fig = _grid(plt, len(plotted))
        for ax, m in zip(fig.axes, plotted):
            _histogram(ax, *ranked[m.label], m)
        figures.append(_save(fig, directory / "score_histograms.png", "Scores of positives and negatives",
                             "Dashed line: the current threshold. Overlap is where no threshold can be right."))
    for level in report.levels:
        fig = _heatmap(plt, np.array(level.confusion), level.confusion_labels, level.confusion_labels, "predicted", "true")
        figures.append(_save(fig, directory / f"confusion_depth{level.depth}.png", f"Confusion matrix, level {level.depth}",
                             "Rows: true label; columns: the tag given (thresholds applied)."))
    if report.verdicts is not None:
        v = report.verdicts
        fig = _heatmap(plt, np.array(v.table), v.actions, v.actions, "verdict", "strictest true action")
        figures.append(_save(fig, directory / "verdicts.png", "Verdicts", "Rows: strictest true action; columns: verdict given."))
    fig = _reliability(plt, scored, scores)
    figures.append(_save(fig, directory / "reliability.png", "Reliability",
                         "How often a label is true among images given a score in each bin (the diagonal: scores that "
                         "are probabilities). Zero-shot scores usually are not."))
    plt.close("all")
    misses = _worst_misses(scored, scores, directory)
    (directory / "index.html").write_text(_page(report, metrics, figures, misses, directory), encoding="utf-8")
    return directory


def _label_metrics(report: EvalReport) -> list[LabelMetrics]:
    return report.labels or [m for level in report.levels for m in level.labels]


def _grid(plt, count: int):
    cols = min(4, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.ravel()[count:]:
        ax.remove()
    return fig


def _pr_curve(ax, recall: np.ndarray, precision: np.ndarray, m: LabelMetrics) -> None:
    # "pre": between two points the precision is the one reached at the higher recall, as AP counts it
    ax.step(recall, precision, where="pre", color="#1f77b4")
    if m.precision.value is not None and m.recall.value is not None:
        ax.plot([m.recall.value], [m.precision.value], "o", color="#d62728")
    ax.set(xlim=(0, 1.02), ylim=(0, 1.02), xlabel="recall", ylabel="precision")
    ax.set_title(f"{m.label}\nAP {m.average_precision:.2f}, n+={m.support}" if m.average_precision is not None else m.label, fontsize=9)


def _histogram(ax, truth: np.ndarray, scores: np.ndarray, m: LabelMetrics) -> None:
    # the span of the scores and the threshold: zero-shot scores often sit in a narrow band
    low, high = min(float(scores.min()), m.threshold), max(float(scores.max()), m.threshold)
    pad = 0.03 * (high - low or 1.0)
    bins = np.linspace(low - pad, high + pad, 41)
    ax.hist(scores[~truth], bins=bins, alpha=0.6, label="negatives", color="#7f7f7f", density=True)
    ax.hist(scores[truth], bins=bins, alpha=0.6, label="positives", color="#2ca02c", density=True)
    ax.axvline(m.threshold, color="#d62728", linestyle="--")
    ax.set_title(m.label, fontsize=9)
    ax.set_xlabel("score")
    ax.legend(fontsize=7)


def _heatmap(plt, matrix: np.ndarray, columns: list[str], rows: list[str], xlabel: str, ylabel: str):
    size = max(3.5, 0.45 * len(columns) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if len(columns) <= 25:
        peak = matrix.max(initial=0)
        for (r, c), value in np.ndenumerate(matrix):
            if value:
                ax.text(c, r, str(value), ha="center", va="center", fontsize=7, color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    return fig


def _reliability(plt, scored: ScoredDataset, scores: np.ndarray):
    calibration = require("sklearn.calibration")
    reported = [i for i, label in enumerate(scored.taxonomy.labels) if not label.background]
    if scored.taxonomy.mode == "single":  # the top label's score against whether it is right
        top = np.array(reported)[scored.scores[:, reported].argmax(axis=1)]
        y_score = scored.scores[np.arange(len(top)), top]
        y_true = scored.truth[np.arange(len(top)), top]
    else:
        y_score, y_true = scores[:, reported].ravel(), scored.truth[:, reported].ravel()
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(4.5, 5), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="#7f7f7f")
    if y_true.any() and not y_true.all():
        observed, predicted = calibration.calibration_curve(y_true, np.clip(y_score, 0, 1), n_bins=10, strategy="uniform")
        ax.plot(predicted, observed, "o-", color="#1f77b4")
    ax.set(ylabel="fraction true", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("top label" if scored.taxonomy.mode == "single" else "all labels, pooled", fontsize=9)
    counts.hist(np.clip(y_score, 0, 1), bins=np.linspace(0, 1, 11), color="#1f77b4")
    counts.set(xlabel="score", ylabel="count")
    fig.tight_layout()
    return fig


def _save(fig, path: Path, title: str, caption: str) -> tuple[str, str, str]:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path.name, title, caption


def _worst_misses(scored: ScoredDataset, scores: np.ndarray, directory: Path) -> list[dict]:
    """The most confident mistakes: positives scored furthest below their threshold, negatives furthest above."""
    taxonomy = scored.taxonomy
    thresholds = np.array([taxonomy.threshold_of(label) for label in taxonomy.labels])
    reported = np.array([not label.background for label in taxonomy.labels])
    fired = scored.predicted()
    missed = scored.truth & ~fired & reported
    alarm = ~scored.truth & fired & reported
    candidates = [(float(thresholds[c] - scores[r, c]), r, c, "missed") for r, c in zip(*np.nonzero(missed))]
    candidates += [(float(scores[r, c] - thresholds[c]), r, c, "false alarm") for r, c in zip(*np.nonzero(alarm))]
    candidates.sort(key=lambda item: -item[0])
    thumbs = directory / "thumbs"
    rows = []
    for n, (_, r, c, kind) in enumerate(candidates[:WORST_MISSES]):
        item = scored.items[r]
        thumb = None
        try:
            image = load_image(read_bytes(item.ref) if is_source_url(item.ref) else item.ref)
            image.thumbnail((THUMB, THUMB))
            thumbs.mkdir(exist_ok=True)
            thumb = thumbs / f"{n:02d}.jpg"
            image.save(thumb, quality=85)
        except Exception:  # a thumbnail is a nicety: the row stays without one
            thumb = None
        rows.append({"image": item.ref, "kind": kind, "label": scored.names[c], "score": float(scored.scores[r, c]),
                     "threshold": float(thresholds[c]), "truth": ", ".join(item.labels) or "(none)",
                     "tags": ", ".join(scored.names[i] for i in scored.tagged[r]) or "(none)", "thumb": thumb})
    return rows


def _data_uri(path: Path, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _page(report: EvalReport, metrics: list[LabelMetrics], figures, misses: list[dict], directory: Path) -> str:
    e = html.escape
    out = io.StringIO()
    w = out.write
    w("<!doctype html><html><head><meta charset='utf-8'><title>zstagger eval: " + e(report.taxonomy) + "</title><style>"
      "body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:.5em 0}"
      "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
      "img.plot{max-width:100%;border:1px solid #eee}.muted{color:#666}"
      ".warning{background:#fff3cd;border-left:4px solid #e0a800;padding:.4em .8em}</style></head><body>")
    w(f"<h1>{e(report.taxonomy)} v{e(report.taxonomy_version)} on {e(report.dataset)}</h1>")
    w(f"<p>{report.evaluated} images evaluated ({report.mode}-label), {report.unreadable_count} unreadable left out. "
      f"Model <code>{e(report.model)}</code> (fingerprint {e(str(report.model_fingerprint))}, {e(report.preprocessing)} "
      f"preprocessing). Intervals: 95% bootstrap over images ({report.bootstrap_rounds} resamples).</p>")
    for warning in report.warnings:
        w(f"<p class='warning'><strong>Warning:</strong> {e(warning)}</p>")
    for level in report.levels:
        w(f"<h2>Level {level.depth} ({level.images} images)</h2><p>top-1 {e(str(level.top1))} &middot; top-{level.top_k} "
          f"{e(str(level.top5))} &middot; tag accuracy {e(str(level.accuracy))}</p>")
        if level.most_confused:
            w("<p>Most confused: " + ", ".join(f"{e(p.true)} &rarr; {e(p.predicted)} ({p.count})" for p in level.most_confused) + "</p>")
    if report.averages is not None:
        a = report.averages
        w(f"<h2>Averages</h2><p>micro precision {e(str(a.micro_precision))}, recall {e(str(a.micro_recall))}, "
          f"F1 {e(str(a.micro_f1))}; macro precision {e(str(a.macro_precision))}, recall {e(str(a.macro_recall))}, "
          f"F1 {e(str(a.macro_f1))}</p>")
    if report.verdicts is not None:
        v = report.verdicts
        w(f"<h2>Verdicts</h2><p>misses (block-worthy got allow) {e(str(v.misses))}; review-worthy got allow "
          f"{e(str(v.review_misses))}; false alarms (clean got block or review) {e(str(v.false_alarms))}</p>")
    w("<h2>Labels</h2><table><tr><th>label</th><th>threshold</th><th>support</th><th>predicted</th><th>precision</th>"
      "<th>recall</th><th>F1</th><th>AP</th><th>ROC-AUC</th></tr>")
    for m in metrics:
        cells = [m.threshold, m.support, m.predicted, m.precision, m.recall, m.f1, m.average_precision, m.roc_auc]
        w(f"<tr><td>{e(m.label)}</td>" + "".join(f"<td>{e(_cell(c))}</td>" for c in cells) + "</tr>")
    w("</table>")
    for name, title, caption in figures:
        w(f"<h2>{e(title)}</h2><p class='muted'>{e(caption)}</p><img class='plot' alt='{e(title)}' "
          f"src='{_data_uri(directory / name, 'png')}'>")
    w("<h2>Worst misses</h2><table><tr><th>image</th><th>what</th><th>label</th><th>score</th><th>threshold</th>"
      "<th>true labels</th><th>tags given</th></tr>")
    for row in misses:
        thumb = f"<img alt='' src='{_data_uri(row['thumb'], 'jpeg')}'><br>" if row["thumb"] else ""
        w(f"<tr><td>{thumb}{e(row['image'])}</td><td>{e(row['kind'])}</td><td>{e(row['label'])}</td>"
          f"<td>{row['score']:.3f}</td><td>{row['threshold']:.3f}</td><td>{e(row['truth'])}</td><td>{e(row['tags'])}</td></tr>")
    w("</table>")
    if report.unreadable:
        w(f"<h2>Unreadable images ({report.unreadable_count})</h2><table><tr><th>image</th><th>error</th></tr>")
        for u in report.unreadable:
            w(f"<tr><td>{e(u.image)}</td><td>{e(u.type)}: {e(u.message)}</td></tr>")
        w("</table>")
    w("</body></html>\n")
    return out.getvalue()


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
