"""One animation or video in, one :class:`~zstagger.results.TagResult` out.

Opens the right decoder (:mod:`.animation`, :mod:`.video`), judges its sampled frames
(:mod:`.judge`), aggregates them per label as the taxonomy's ``media`` policy says
(:mod:`.aggregate`) and hands that one row to the taxonomy's classifier, so tags and the
verdict follow exactly as for a still. Adds ``media``, ``segments`` and, on request, the
per-frame scores. A problem with the file becomes the result's error, as for an image.

:func:`rejudge_media` gives the same result from what the embedding store kept of an
earlier judgement (:mod:`.record`), without decoding: re-tagging and diffing a catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ImageLoadError, ZstaggerError
from ..results import FrameScore, KnownImageMatch, LabelScore, MediaInfo, Provenance, Segment, TagResult
from ..taxonomy import MediaPolicy, Taxonomy
from .aggregate import aggregate, best_match_rows, matched_frames, segments
from .animation import open_animation
from .judge import Embed, FrameScores, judge_frames
from .options import MediaOptions
from .record import REPLAY_DEDUP, MediaRecord, replay, sampling_signature
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


def _early_exit(policy: MediaPolicy, options: MediaOptions, kind: str) -> int:
    early = policy.early_exit_frames
    if early is None:
        early = options.early_exit_animation if kind == "animation" else options.early_exit_video
    return max(early, policy.min_frames) if early else 0


def tag_media(
    source: MediaSource, name: str, taxonomy: Taxonomy, classifier: Any, embed: Embed, options: MediaOptions,
    provenance: Provenance | None = None, top_k: int | None = None, with_frames: bool = False,
    keep: Callable[[MediaRecord], None] | None = None,
) -> TagResult:
    """Judge one animation or video (see the module's docstring); never raises for the file's own problems.
    ``keep``: told the :class:`~.record.MediaRecord` of the frames judged (for the embedding store)."""
    policy = taxonomy.media or _DEFAULT_POLICY
    try:
        stream = open_stream(source, options)
        judged = judge_frames(stream, classifier, embed, batch_size=options.batch_size, dedup=options.dedup,
                              early_exit=_early_exit(policy, options, source.kind), keep_vectors=keep is not None)
    except ImageLoadError as exc:
        return TagResult.failed(name, taxonomy.name, exc.kind, exc.message, exc.transient, provenance)
    except ZstaggerError:
        raise  # not this file's problem (the model could not be loaded, ...)
    except Exception as exc:  # noqa: BLE001 (a decoder's surprise is this one file's error record, not the batch's end)
        return TagResult.failed(name, taxonomy.name, "invalid_media", f"could not process media: {type(exc).__name__}: {exc}",
                                provenance=provenance)
    if not judged.rows:
        return TagResult.failed(name, taxonomy.name, "invalid_media", "no frame of the media could be decoded",
                                provenance=provenance)
    info = MediaInfo(kind=source.kind, duration=stream.duration, frames_decoded=stream.frames_decoded,
                     frames_scored=len(judged.rows), stopped_early=judged.stopped_early, truncated=stream.truncated)
    if keep is not None:
        keep(MediaRecord(source.kind, sampling_signature(options, source.kind), np.asarray(judged.times, dtype=np.float64),
                         np.asarray(judged.indices, dtype=np.int64), judged.flat_rows(), np.concatenate(judged.vectors),
                         stream.duration, stream.frames_decoded, stream.truncated, complete=not judged.stopped_early))
    return _result(name, taxonomy, classifier, policy, judged, info, provenance, top_k, with_frames)


def rejudge_media(
    record: MediaRecord, name: str, taxonomy: Taxonomy, classifier: Any, options: MediaOptions,
    provenance: Provenance | None = None, top_k: int | None = None, with_frames: bool = False, early_exit: bool = True,
) -> TagResult | None:
    """The result of :func:`tag_media` for the media ``record`` was kept of, judged from the record
    alone (no decoder): the same frames, scores, early exit, aggregation and segments, under this
    taxonomy. None when this taxonomy would judge frames past the record's end (the record's
    tagging stopped early, and this taxonomy does not stop as soon): only decoding it again tells.
    ``early_exit=False``: every frame of the record judged (the ranges of a long video)."""
    policy = taxonomy.media or _DEFAULT_POLICY
    stream, vectors = replay(record, options.limits)
    judged = judge_frames(stream, classifier, lambda rows: vectors[list(rows)], batch_size=options.batch_size,
                          dedup=REPLAY_DEDUP, early_exit=_early_exit(policy, options, record.kind) if early_exit else 0,
                          read_ahead_thread=False)
    if not judged.stopped_early and not record.complete:
        return None
    last = len(judged.rows) == len(record.times)  # judged to where the recorded judgement ended
    info = MediaInfo(kind=record.kind, duration=record.duration,
                     frames_decoded=record.frames_decoded if last else int(record.indices[len(judged.rows) - 1]) + 1,
                     frames_scored=len(judged.rows), stopped_early=judged.stopped_early, truncated=record.truncated)
    return _result(name, taxonomy, classifier, policy, judged, info, provenance, top_k, with_frames)


def score_media(source: MediaSource, taxonomy: Taxonomy, classifier: Any, embed: Embed, options: MediaOptions) -> Any:
    """The media's one row of aggregated scores (the classifier's BatchScores of one row), every
    sampled frame judged (no early exit: a threshold chosen on these rows must see each label's
    aggregate over the whole media, not over the frames before some block label fired).
    Raises :class:`~zstagger.errors.ImageLoadError` for the file's own problems."""
    try:
        judged = judge_frames(open_stream(source, options), classifier, embed, batch_size=options.batch_size,
                              dedup=options.dedup)
    except (ImageLoadError, ZstaggerError):
        raise
    except Exception as exc:  # noqa: BLE001 (a decoder's surprise is this one file's problem)
        raise ImageLoadError("invalid_media", f"could not process media: {type(exc).__name__}: {exc}") from None
    if not judged.rows:
        raise ImageLoadError("invalid_media", "no frame of the media could be decoded")
    return _aggregated(judged.matrix(), taxonomy.media or _DEFAULT_POLICY)


def describe_aggregation(policy: MediaPolicy | None) -> str:
    """How frame scores become a media item's score, in words (for reports)."""
    policy = policy or _DEFAULT_POLICY
    if policy.aggregation == "mean_top_k":
        return f"per label, the mean of its {policy.top_k} highest frame scores"
    if policy.min_frames == 1:
        return "per label, its highest frame score (max)"
    return f"per label, its {policy.min_frames}th highest frame score (it must fire on at least {policy.min_frames} frames)"


def _aggregated(frames: Any, policy: MediaPolicy) -> Any:
    scores, cosines, _ = aggregate(frames.scores, frames.cosines, policy.aggregation, policy.min_frames, policy.top_k)
    rows, best = best_match_rows(frames.match_rows, frames.match_cosines)
    return replace(frames, scores=scores[None, :], cosines=cosines[None, :],
                   matched=matched_frames(frames.matched, policy.min_frames)[None, :], match_rows=rows, match_cosines=best)


def _result(name: str, taxonomy: Taxonomy, classifier: Any, policy: MediaPolicy, judged: FrameScores, info: MediaInfo,
            provenance: Provenance | None, top_k: int | None, with_frames: bool) -> TagResult:
    frames = judged.matrix()
    one = _aggregated(frames, policy)
    c = classifier.classifications(classifier.classify_scores(one, top_k))[0]
    fired = classifier.tag_mask(frames.scores, frames.matched)
    reported = [i for i in range(len(classifier.names)) if not classifier.background[i]]
    names = classifier.names
    per_frame = [FrameScore(time=t, scores={names[i]: float(row[i]) for i in reported})
                 for t, row in zip(judged.times, frames.scores)] if with_frames else None
    return TagResult(
        image=name, taxonomy=taxonomy.name,
        scores=[LabelScore(label=label, score=score, cosine=cos) for label, score, cos in c.scores],
        tags=c.tags, verdict=c.verdict, provenance=provenance,
        matches=[KnownImageMatch(label=label, image=image, cosine=cos) for label, image, cos in c.matches] if c.matches else None,
        media=info, segments=[Segment(**s) for s in segments(judged.times, fired, np.asarray(frames.scores), names, reported)],
        frames=per_frame,
    )
