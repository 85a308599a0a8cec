"""One animation or video in, one :class:`~zstagger.results.TagResult` out.

Opens the right decoder (:mod:`.animation`, :mod:`.video`), judges its sampled frames
(:mod:`.judge`), aggregates them per label as the taxonomy's ``media`` policy says
(:mod:`.aggregate`) and hands that one row to the taxonomy's classifier, so tags and the
verdict follow exactly as for a still. Adds ``media``, ``segments`` and, on request, the
per-frame scores. A problem with the file becomes the result's error, as for an image.
Several taxonomies judge one media in one pass (:func:`tag_media_each`): decoded and embedded once.

:func:`rejudge_media` gives the same result from what the embedding store kept of an
earlier judgement (:mod:`.record`), without decoding: re-tagging and diffing a catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..errors import ImageLoadError, ZstaggerError
from ..results import FrameScore, KnownImageMatch, LabelScore, MediaInfo, Provenance, Segment, TagResult
from ..taxonomy import MediaPolicy, Taxonomy
from .aggregate import aggregate, best_match_rows, matched_frames, segments
from .animation import open_animation
from .judge import Embed, FrameScores, judge_frames, judge_frames_each
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
    return open_video(source.source, options.limits, options.video_rate, options.scene_threshold, options.frame_side,
                      reference_only=options.reference_only)


def _early_exit(policy: MediaPolicy, options: MediaOptions, kind: str) -> int:
    early = policy.early_exit_frames
    if early is None:
        early = options.early_exit_animation if kind == "animation" else options.early_exit_video
    return max(early, policy.min_frames) if early else 0


def tag_media(
    source: MediaSource, name: str, taxonomy: Taxonomy, classifier: Any, embed: Embed, options: MediaOptions,
    provenance: Provenance | None = None, top_k: int | None = None, with_frames: bool = False,
    text: np.ndarray | None = None, keep: Callable[[MediaRecord], None] | None = None,
) -> TagResult:
    """Judge one animation or video (see the module's docstring); never raises for the file's own problems.
    ``text``: the unit embedding of the text it came with (None: none), fused with every frame.
    ``keep``: told the :class:`~.record.MediaRecord` of the frames judged (for the embedding store)."""
    return tag_media_each(source, name, [(taxonomy, classifier, provenance)], embed, options, top_k, with_frames, text,
                          keep)[0]


def tag_media_each(
    source: MediaSource, name: str, judged_by: Sequence[tuple[Taxonomy, Any, Provenance | None]], embed: Embed,
    options: MediaOptions, top_k: int | None = None, with_frames: bool = False, text: np.ndarray | None = None,
    keep: Callable[[MediaRecord], None] | None = None,
) -> list[TagResult]:
    """:func:`tag_media` with several taxonomies (each with its classifier and provenance) in one
    pass: the media is decoded and its frames embedded once; each result is the one it gets alone.
    ``keep`` is told the record of every frame any of them judged."""
    policies = [taxonomy.media or _DEFAULT_POLICY for taxonomy, _, _ in judged_by]
    early_exits = [_early_exit(policy, options, source.kind) for policy in policies]
    try:
        stream = open_stream(source, options)
        judged_each = judge_frames_each(stream, [classifier for _, classifier, _ in judged_by], embed,
                                        batch_size=options.batch_size, dedup=options.dedup, early_exit=early_exits, text=text,
                                        keep_vectors=keep is not None)
    except ImageLoadError as exc:
        return [TagResult.failed(name, taxonomy.name, exc.kind, exc.message, exc.transient, provenance)
                for taxonomy, _, provenance in judged_by]
    except ZstaggerError:
        raise  # not this file's problem (the model could not be loaded, ...)
    except Exception as exc:  # noqa: BLE001 (a decoder's surprise is this one file's error record, not the batch's end)
        return [TagResult.failed(name, taxonomy.name, "invalid_media", f"could not process media: {type(exc).__name__}: {exc}",
                                 provenance=provenance) for taxonomy, _, provenance in judged_by]
    longest = max(judged_each, key=lambda judged: len(judged.rows))
    if keep is not None and longest.rows:
        keep(MediaRecord(source.kind, sampling_signature(options, source.kind), np.asarray(longest.times, dtype=np.float64),
                         np.asarray(longest.indices, dtype=np.int64), longest.flat_rows(), np.concatenate(longest.vectors),
                         stream.duration, stream.frames_decoded, stream.truncated, complete=not longest.stopped_early))
    results = []
    for (taxonomy, classifier, provenance), policy, judged in zip(judged_by, policies, judged_each):
        if not judged.rows:
            results.append(TagResult.failed(name, taxonomy.name, "invalid_media", "no frame of the media could be decoded",
                                            provenance=provenance))
            continue
        duration, decoded, truncated = judged.decoded or (stream.duration, stream.frames_decoded, stream.truncated)
        info = MediaInfo(kind=source.kind, duration=duration, frames_decoded=decoded,
                         frames_scored=len(judged.rows), stopped_early=judged.stopped_early, truncated=truncated)
        results.append(_result(name, taxonomy, classifier, policy, judged, info, provenance, top_k, with_frames,
                               None if text is None else taxonomy.text_fusion is not None))
    return results


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
            provenance: Provenance | None, top_k: int | None, with_frames: bool, text_used: bool | None = None) -> TagResult:
    """One taxonomy's result from its judged frames."""
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
        frames=per_frame, text_used=text_used,
    )
