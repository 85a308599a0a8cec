"""One animation or video in, one :class:`~zstagger.results.TagResult` out.

Opens the right decoder (:mod:`.animation`, :mod:`.video`), judges its sampled frames
(:mod:`.judge`), aggregates them per label as the taxonomy's ``media`` policy says
(:mod:`.aggregate`) and hands that one row to the taxonomy's classifier, so tags and the
verdict follow exactly as for a still. Adds ``media``, ``segments`` and, on request, the
per-frame scores. A problem with the file becomes the result's error, as for an image.
Several taxonomies judge one media in one pass (:func:`tag_media_each`): decoded and embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ImageLoadError, ZstaggerError
from ..results import FrameScore, KnownImageMatch, LabelScore, MediaInfo, Provenance, Segment, TagResult
from ..taxonomy import MediaPolicy, Taxonomy
from .aggregate import aggregate, best_match_rows, matched_frames, segments
from .animation import open_animation
from .judge import Embed, FrameScores, judge_frames_each
from .options import MediaOptions
from .source import MediaSource
from .streams import FrameStream
from .video import open_video

_DEFAULT_POLICY = MediaPolicy()


def open_stream(source: MediaSource, options: MediaOptions) -> FrameStream:
    """The decoder for ``source``, with the settings' limits and sampling."""
    if source.kind == "animation":
        assert source.data is not None  # animations are read into memory by detect()
        return open_animation(source.data, options.limits, options.animation_frames)
    return open_video(source.source, options.limits, options.video_rate, options.scene_threshold, options.frame_side)


def tag_media(
    source: MediaSource, name: str, taxonomy: Taxonomy, classifier: Any, embed: Embed, options: MediaOptions,
    provenance: Provenance | None = None, top_k: int | None = None, with_frames: bool = False,
    text: np.ndarray | None = None,
) -> TagResult:
    """Judge one animation or video (see the module's docstring); never raises for the file's own problems.
    ``text``: the unit embedding of the text it came with (None: none), fused with every frame."""
    return tag_media_each(source, name, [(taxonomy, classifier, provenance)], embed, options, top_k, with_frames, text)[0]


def tag_media_each(
    source: MediaSource, name: str, judged_by: Sequence[tuple[Taxonomy, Any, Provenance | None]], embed: Embed,
    options: MediaOptions, top_k: int | None = None, with_frames: bool = False, text: np.ndarray | None = None,
) -> list[TagResult]:
    """:func:`tag_media` with several taxonomies (each with its classifier and provenance) in one
    pass: the media is decoded and its frames embedded once; each result is the one it gets alone."""
    policies = [taxonomy.media or _DEFAULT_POLICY for taxonomy, _, _ in judged_by]
    early_exits = []
    for policy in policies:
        early = policy.early_exit_frames
        if early is None:
            early = options.early_exit_animation if source.kind == "animation" else options.early_exit_video
        early_exits.append(max(early, policy.min_frames) if early else 0)
    try:
        stream = open_stream(source, options)
        judged_each = judge_frames_each(stream, [classifier for _, classifier, _ in judged_by], embed,
                                        batch_size=options.batch_size, dedup=options.dedup, early_exit=early_exits, text=text)
    except ImageLoadError as exc:
        return [TagResult.failed(name, taxonomy.name, exc.kind, exc.message, exc.transient, provenance)
                for taxonomy, _, provenance in judged_by]
    except ZstaggerError:
        raise  # not this file's problem (the model could not be loaded, ...)
    except Exception as exc:  # noqa: BLE001 (a decoder's surprise is this one file's error record, not the batch's end)
        return [TagResult.failed(name, taxonomy.name, "invalid_media", f"could not process media: {type(exc).__name__}: {exc}",
                                 provenance=provenance) for taxonomy, _, provenance in judged_by]
    return [_result(source, name, taxonomy, classifier, provenance, policy, stream, judged, top_k, with_frames,
                    None if text is None else taxonomy.text_fusion is not None)
            for (taxonomy, classifier, provenance), policy, judged in zip(judged_by, policies, judged_each)]


def _result(source: MediaSource, name: str, taxonomy: Taxonomy, classifier: Any, provenance: Provenance | None,
            policy: MediaPolicy, stream: FrameStream, judged: FrameScores, top_k: int | None, with_frames: bool,
            text_used: bool | None) -> TagResult:
    """One taxonomy's result from its judged frames."""
    if not judged.rows:
        return TagResult.failed(name, taxonomy.name, "invalid_media", "no frame of the media could be decoded",
                                provenance=provenance)
    frames = judged.matrix()
    scores, cosines, _ = aggregate(frames.scores, frames.cosines, policy.aggregation, policy.min_frames, policy.top_k)
    rows, best = best_match_rows(frames.match_rows, frames.match_cosines)
    one = replace(frames, scores=scores[None, :], cosines=cosines[None, :],
                  matched=matched_frames(frames.matched, policy.min_frames)[None, :], match_rows=rows, match_cosines=best)
    c = classifier.classifications(classifier.classify_scores(one, top_k))[0]
    fired = classifier.tag_mask(frames.scores, frames.matched)
    reported = [i for i in range(len(classifier.names)) if not classifier.background[i]]
    names = classifier.names
    duration, decoded, truncated = judged.decoded or (stream.duration, stream.frames_decoded, stream.truncated)
    info = MediaInfo(kind=source.kind, duration=duration, frames_decoded=decoded,
                     frames_scored=len(judged.rows), stopped_early=judged.stopped_early, truncated=truncated)
    per_frame = [FrameScore(time=t, scores={names[i]: float(row[i]) for i in reported})
                 for t, row in zip(judged.times, frames.scores)] if with_frames else None
    return TagResult(
        image=name, taxonomy=taxonomy.name,
        scores=[LabelScore(label=label, score=score, cosine=cos) for label, score, cos in c.scores],
        tags=c.tags, verdict=c.verdict, provenance=provenance,
        matches=[KnownImageMatch(label=label, image=image, cosine=cos) for label, image, cos in c.matches] if c.matches else None,
        media=info, segments=[Segment(**s) for s in segments(judged.times, fired, np.asarray(frames.scores), names, reported)],
        frames=per_frame, text_used=text_used,
    )
