"""The ``zstagger diff --report DIR`` page: one self-contained HTML file (plots and thumbnails
embedded) plus the PNGs beside it.

The verdict transition matrix as a heatmap, per label the images newly tagged and no longer
tagged as bars, and the first images of each change, with thumbnails where the reference
is a local file this machine can read (URLs are not fetched for a report). Plot helpers
are the eval report's; every string from the data is HTML-escaped.
"""

from __future__ import annotations

import html
import io
import os
from pathlib import Path

import numpy as np

from ..errors import ZstaggerError
from ..evaluation.extra import require
from ..evaluation.report import THUMB, _data_uri, _heatmap, _save
from ..images import ImagePolicy, is_url, load_image
from .diff import PolicyDiff

MAX_BARS = 30


def write_diff_report(diff: PolicyDiff, directory: Path, policy: ImagePolicy | None = None) -> Path:
    """Write ``directory/index.html`` and its PNGs; returns the directory."""
    require("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    figures = []
    if diff.verdict_table is not None and diff.verdict_actions is not None:
        fig = _heatmap(plt, np.array(diff.verdict_table), diff.verdict_actions, diff.verdict_actions, f"new: {diff.new}",
                       f"old: {diff.old}")
        figures.append(_save(fig, directory / "verdicts.png", "Verdict transitions",
                             "Rows: the verdict under the old taxonomy; columns: under the new one. Off the diagonal: "
                             "images whose verdict changes."))
    changed = [c for c in diff.labels if c.newly_tagged or c.no_longer_tagged][:MAX_BARS]
    if changed:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(changed) + 1.2))
        y = np.arange(len(changed))
        ax.barh(y, [c.newly_tagged for c in changed], color="#2ca02c", label="newly tagged")
        ax.barh(y, [-c.no_longer_tagged for c in changed], color="#d62728", label="no longer tagged")
        ax.set_yticks(y, [c.label for c in changed], fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="#333", linewidth=0.8)
        ax.set_xlabel("images")
        ax.legend(fontsize=8)
        figures.append(_save(fig, directory / "labels.png", "Labels", "Per label: images it newly tags (right) and "
                             "no longer tags (left) under the new taxonomy."))
    plt.close("all")
    thumbs = _thumbnails(diff, directory / "thumbs", policy or ImagePolicy())
    (directory / "index.html").write_text(_page(diff, figures, thumbs, directory), encoding="utf-8")
    return directory


def _thumbnails(diff: PolicyDiff, directory: Path, policy: ImagePolicy) -> dict[str, Path]:
    made: dict[str, Path] = {}
    for samples in diff.samples.values():
        for sample in samples:
            ref = sample.image
            if ref in made or is_url(ref) or not os.path.isfile(ref):
                continue
            try:
                image = load_image(ref, policy)
                image.thumbnail((THUMB, THUMB))
                directory.mkdir(parents=True, exist_ok=True)
                path = directory / f"{len(made):03d}.jpg"
                image.save(path, quality=85)
                made[ref] = path
            except (ZstaggerError, OSError, ValueError):  # a thumbnail is a nicety: the row stays without one
                pass
    return made


def _page(diff: PolicyDiff, figures, thumbs: dict[str, Path], directory: Path) -> str:
    e = html.escape
    out = io.StringIO()
    w = out.write
    w("<!doctype html><html><head><meta charset='utf-8'><title>zstagger diff: " + e(diff.old) + " vs " + e(diff.new) +
      "</title><style>body{font:14px/1.4 system-ui,sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
      "margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;vertical-align:top}td:first-child,"
      "th:first-child{text-align:left}img.plot{max-width:100%;border:1px solid #eee}.muted{color:#666}</style></head><body>")
    w(f"<h1>{e(diff.old)} &rarr; {e(diff.new)}</h1>")
    w(f"<p>{diff.images} stored images re-scored (no image read): <b>{diff.changed_tags}</b> change tags, "
      f"<b>{diff.changed_verdict}</b> change verdict. Model <code>{e(diff.model)}</code> (fingerprint "
      f"{e(diff.model_fingerprint)}, {e(diff.preprocessing)} preprocessing), store <code>{e(diff.store)}</code>.</p>")
    if diff.transitions:
        w("<h2>Verdict changes</h2><table><tr><th>old</th><th>new</th><th>images</th></tr>")
        for t in diff.transitions:
            w(f"<tr><td>{e(t.old)}</td><td>{e(t.new)}</td><td>{t.count}</td></tr>")
        w("</table>")
    w("<h2>Labels</h2><table><tr><th>label</th><th>tagged before</th><th>tagged after</th><th>newly tagged</th>"
      "<th>no longer tagged</th></tr>")
    for c in diff.labels:
        where = "" if c.in_old and c.in_new else (" <span class='muted'>(new label)</span>" if c.in_new else
                                                   " <span class='muted'>(removed)</span>")
        w(f"<tr><td>{e(c.label)}{where}</td><td>{c.old_tagged}</td><td>{c.new_tagged}</td><td>{c.newly_tagged}</td>"
          f"<td>{c.no_longer_tagged}</td></tr>")
    w("</table>")
    for name, title, caption in figures:
        w(f"<h2>{e(title)}</h2><p class='muted'>{e(caption)}</p><img class='plot' alt='{e(title)}' "
          f"src='{_data_uri(directory / name, 'png')}'>")
    if diff.samples:
        w("<h2>Samples</h2><p class='muted'>The first stored images of each change (in the order they were recorded). "
          "<code>+label</code>: newly tagged with it; <code>-label</code>: no longer.</p>")
    for key, samples in diff.samples.items():
        w(f"<h3>{e(key)} <span class='muted'>({len(samples)} shown)</span></h3><table><tr><th>image</th><th>tags before</th>"
          "<th>tags after</th><th>verdict</th></tr>")
        for s in samples:
            thumb = f"<img alt='' src='{_data_uri(thumbs[s.image], 'jpeg')}'><br>" if s.image in thumbs else ""
            verdict = f"{e(str(s.old_verdict))} &rarr; {e(str(s.new_verdict))}" if s.old_verdict is not None else "-"
            w(f"<tr><td>{thumb}{e(s.image)}</td><td>{e(', '.join(s.old_tags) or '(none)')}</td>"
              f"<td>{e(', '.join(s.new_tags) or '(none)')}</td><td>{verdict}</td></tr>")
        w("</table>")
    w("</body></html>\n")
    return out.getvalue()
