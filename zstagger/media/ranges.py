"""A long video cut into time ranges that separate workers judge, and the ranges joined again.

:func:`plan_ranges` cuts a video whose header declares more than ``split`` seconds into
consecutive ranges ``[start, end)`` of about ``split`` seconds, each boundary a multiple of the
sampling interval, so that the frames a range samples are the frames a whole decode samples
in it (:func:`zstagger.media.video.open_video` with ``start``/``end``); the last range has no end
(a video longer than its header says is read to its real end). :func:`judge_range` judges
one range's frames into a :class:`~.record.MediaRecord` (every frame: no early exit, the
ranges run side by side); :func:`zstagger.media.record.merge_records` joins the ranges' records
and :func:`~.tagging.rejudge_media` judges the whole from them, so segments that cross a
boundary come out as one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ImageLoadError
from .judge import Embed, judge_frames
from .options import MediaOptions
from .record import MediaRecord, sampling_signature
from .source import MediaSource
from .video import open_video


def plan_ranges(duration: float | None, split: float, interval: float) -> list[tuple[float, float | None]]:
    """The ranges a video of ``duration`` seconds is judged in: one (``[(0, None)]``) unless it is
    longer than ``split`` (> 0)."""
    if not split or duration is None or duration <= split:
        return [(0.0, None)]
    step = max(1, round(split / interval)) * interval
    count = max(1, math.ceil(duration / step - 1e-9))
    starts = [float(round(i * step, 9)) for i in range(count)]
    return [(start, starts[i + 1] if i + 1 < count else None) for i, start in enumerate(starts)]


def judge_range(source: MediaSource, classifier: Any, embed: Embed, options: MediaOptions, start: float,
                end: float | None) -> MediaRecord | None:
    """The record of the frames a video samples in ``[start, end)`` (None: it has none there).
    Raises :class:`~zstagger.errors.ImageLoadError` for the file's problems."""
    stream = open_video(source.source, options.limits, options.video_rate, options.scene_threshold, options.frame_side,
                        start=start, end=end, reference_only=options.reference_only)
    try:
        judged = judge_frames(stream, classifier, embed, batch_size=options.batch_size, dedup=options.dedup,
                              keep_vectors=True)
    except ImageLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 (a decoder's surprise is this one file's problem)
        raise ImageLoadError("invalid_media", f"could not process media: {type(exc).__name__}: {exc}") from None
    if not judged.rows:
        return None
    return MediaRecord("video", sampling_signature(options, "video"), np.asarray(judged.times, dtype=np.float64),
                       np.asarray(judged.indices, dtype=np.int64), judged.flat_rows(), np.concatenate(judged.vectors),
                       stream.duration, stream.frames_decoded, stream.truncated, complete=True)
