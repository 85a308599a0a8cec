"""Decoding video with PyAV (FFmpeg), sampling the frames to judge.

Frames are decoded in order, streamed (one held at a time), with FFmpeg's own threads
(``thread_type="AUTO"``). Sampled: the first frame, one every ``1 / rate`` seconds, every
scene cut (a decoded frame whose thumbnail differs from the previous one's by more than
``scene_threshold``), and the last frame. Without scene cuts to look for, and when the
stream's keyframes are closer together than the sampling interval, the decoder seeks to
the keyframe before each next sample instead of decoding every frame in between.

What can go wrong becomes an :class:`~zstagger.errors.ImageLoadError`: ``invalid_media``
(no container FFmpeg can read, or nothing decodable), ``no_video_stream`` (audio only),
and the limits of :class:`~.limits.MediaLimits`, counted on the frames actually decoded.
A stream that breaks off after some frames (damaged, cut short) ends there: the frames
decoded so far are judged and the result says ``truncated``.

PyAV is an optional dependency (the ``video`` extra); it is imported on first use.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from fractions import Fraction

import numpy as np

from .. import extras
from ..errors import ImageLoadError
from .frames import THUMB, Frame, distance
from .limits import DecodeMeter, MediaLimits
from .streams import FrameStream, metered


def _av():
    try:
        import av
    except ImportError as exc:
        raise extras.missing(exc.name or "av") from None
    return av


def open_video(source: bytes | str, limits: MediaLimits, rate: float, scene_threshold: float,
               frame_side: int | None = None, start: float = 0.0, end: float | None = None,
               reference_only: bool = False) -> FrameStream:
    """The stream of a video's sampled frames; ``source`` is the encoded bytes or a local file's path.
    ``frame_side``: sampled frames whose shorter side is longer are scaled down to it (area
    averaging) as they are converted to RGB, which is cheaper than converting them whole.

    ``start``/``end``: only the frames from ``start`` up to (not including) ``end`` seconds (a
    time range of a long video, :mod:`zstagger.media.ranges`): decoding seeks to the keyframe
    before ``start`` and reads on from there, so the frames sampled are those a whole decode
    samples in the range when ``start`` is a multiple of the sampling interval. The video's last
    frame is sampled by the range that reaches the end (``end`` None).

    ``reference_only``: the decoder skips the frames no other frame refers to (H.264/HEVC's
    disposable B-frames; FFmpeg's ``skip_frame=NONREF``), which are most of the decoding work
    of a typical clip: samples and scene cuts land on the nearest decoded frame instead. A
    stream with a packet more than the sampling interval past the last decoded frame is
    decoded whole from that packet on (:func:`_decode`)."""
    av = _av()
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, mode="r",
                            metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise ImageLoadError("invalid_media", f"not a video FFmpeg can read: {_reason(exc)}") from None
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise ImageLoadError("no_video_stream", f"the file has no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if reference_only:
            stream.codec_context.skip_frame = "NONREF"
        declared = _declared_duration(container, stream)
        limits.check_duration(declared)
        codec = stream.codec_context
        if codec.width and codec.height:
            limits.check_frame_size(codec.width, codec.height, "a video frame")
    except BaseException:
        container.close()
        raise
    out = FrameStream("video", DecodeMeter(limits), duration=declared)
    out._frames = metered(out, _sampled(container, stream, out, 1.0 / rate, scene_threshold, frame_side, start, end))
    return out


def declared_duration(source: bytes | str) -> float | None:
    """The length a video's header declares, in seconds (None: it declares none, or it cannot
    be read: decoding it says why). Reads the header only."""
    av = _av()
    try:
        with av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, mode="r",
                     metadata_errors="ignore") as container:
            if not container.streams.video:
                return None
            return _declared_duration(container, container.streams.video[0])
    except av.FFmpegError:
        return None


def _declared_duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc)


#: Pixel formats whose planes are read directly for thumbnails (8-bit Y, U, V planes).
_PLANAR_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p",
                          "yuv411p", "yuv410p"})


def _thumb(frame) -> np.ndarray:
    """A 32x32 RGB thumbnail, 0-1: from the decoded Y, U and V planes directly (a 64x64 grid of
    their samples, averaged in 2x2 blocks, then converted), since asking swscale to shrink every
    decoded frame cost several times the decoding itself; other pixel formats go through swscale."""
    if frame.format.name in _PLANAR_8BIT:
        y, u, v = (_plane_grid(plane) for plane in frame.planes[:3])
        u, v = u - 0.5, v - 0.5  # to RGB (BT.601), so that distances mean what they mean for animations
        return np.clip(np.stack([y + 1.402 * v, y - 0.344 * u - 0.714 * v, y + 1.772 * u], axis=-1), 0.0, 1.0)
    small = frame.reformat(width=THUMB, height=THUMB, format="rgb24")
    return small.to_ndarray().astype(np.float32) / 255.0


def _plane_grid(plane) -> np.ndarray:
    side = 2 * THUMB
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    ys = np.arange(side) * plane.height // side
    xs = np.arange(side) * plane.width // side
    grid = rows[ys][:, xs].astype(np.float32)
    return grid.reshape(THUMB, 2, THUMB, 2).mean(axis=(1, 3)) / 255.0


def _picture(frame, side: int | None):
    short = min(frame.width, frame.height)
    if not side or short <= side:
        return frame.to_image()
    scale = side / short
    return frame.to_image(width=max(1, round(frame.width * scale)), height=max(1, round(frame.height * scale)),
                          interpolation="AREA")


def _sampled(container, stream, out: FrameStream, interval: float, scene_threshold: float,
             side: int | None, from_time: float = 0.0, until: float | None = None) -> Iterator[Frame]:
    av = _av()
    meter = out.meter
    start: float | None = None
    next_at = from_time
    previous: np.ndarray | None = None
    last = None  # (frame, thumb, time, index) of the last decoded frame, if it was not sampled
    keyframes: list[float] = []
    end = 0.0
    seek = scene_threshold <= 0
    index = -1
    with container:
        frames = _decode(container, stream, interval)
        if from_time > 0:  # a range: times count from the video's first frame, wherever decoding resumes
            start = _first_time(frames, stream, out)
            container.seek(_pts(start + from_time, stream), stream=stream, backward=True, any_frame=False)
            frames = _decode(container, stream, interval)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except av.FFmpegError as exc:
                if meter.frames == 0:
                    raise ImageLoadError("invalid_media", f"could not decode the video: {_reason(exc)}") from None
                out.truncated = True
                break
            index += 1
            when = _time(frame, stream, meter.frames)
            if start is None:
                start = when
            at = max(0.0, when - start)
            if until is not None and at >= until - 1e-6:
                break  # the next range's
            meter.frame(frame.width, frame.height, at)
            end = max(end, at)
            if frame.key_frame:
                keyframes.append(at)
            thumb = _thumb(frame)
            cut = scene_threshold > 0 and previous is not None and distance(thumb, previous) > scene_threshold
            previous = thumb
            if at < from_time - 1e-6:
                continue  # before the range: decoded for the scene-cut comparison only
            if (index == 0 and not from_time) or at >= next_at - 1e-6 or cut:
                last = None
                yield Frame(at, _picture(frame, side), thumb, index)
                next_at = (math.floor(at / interval + 1e-6) + 1) * interval
                if seek and _keyframes_closer_than(keyframes, interval) and next_at - at > 1.5 * _gop(keyframes):
                    container.seek(_pts(start + next_at, stream), stream=stream, backward=True, any_frame=False)
                    frames = _decode(container, stream, interval)
                    previous = None
            else:
                last = (frame, thumb, at, index)
        if last is not None and until is None:
            frame, thumb, at, index = last
            yield Frame(at, _picture(frame, side), thumb, index)
    declared = out.duration
    if until is not None:  # a range before the last: the video goes on after it
        return
    # Ended well before the length its header declares: cut short (what there was, was judged).
    if declared is not None and not out.truncated and end < declared - max(1.0, 2 * interval):
        out.truncated = True
    out.duration = end if out.truncated or declared is None else max(declared, end)


def _decode(container, stream, interval: float) -> Iterator:
    """``container.decode(stream)``, packet by packet: while the decoder skips disposable frames
    (``skip_frame`` NONREF), a packet more than ``interval`` past the last decoded frame (a
    stream whose frames mostly refer to none, so skipping would leave gaps) turns skipping off
    for the rest of the stream, before that packet is decoded."""
    codec = stream.codec_context
    last: float | None = None
    for packet in container.demux(stream):
        if codec.skip_frame != "DEFAULT" and last is not None and packet.pts is not None and packet.time_base is not None \
                and float(packet.pts * packet.time_base) - last > interval:
            codec.skip_frame = "DEFAULT"
        if packet.is_keyframe and packet.pts is not None and packet.time_base is not None:
            last = float(packet.pts * packet.time_base)  # decoded whatever is skipped (its frame may come out later)
        for frame in packet.decode():
            if frame.pts is not None and frame.time_base is not None:
                last = float(frame.pts * frame.time_base)
            yield frame


def _first_time(frames, stream, out: FrameStream) -> float:
    """The time of the video's first frame (what every time is counted from)."""
    av = _av()
    try:
        first = next(frames)
    except StopIteration:
        raise ImageLoadError("invalid_media", "the video has no frame to decode") from None
    except av.FFmpegError as exc:
        raise ImageLoadError("invalid_media", f"could not decode the video: {_reason(exc)}") from None
    out.meter.frame(first.width, first.height, 0.0)
    return _time(first, stream, 0)


def _time(frame, stream, decoded: int) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    rate = stream.average_rate or Fraction(30)
    return float(decoded / rate)


def _keyframes_closer_than(keyframes: list[float], interval: float) -> bool:
    return len(keyframes) >= 2 and _gop(keyframes) < interval


def _gop(keyframes: list[float]) -> float:
    return (keyframes[-1] - keyframes[0]) / (len(keyframes) - 1) if len(keyframes) >= 2 else math.inf


def _pts(seconds: float, stream) -> int:
    return int(seconds / stream.time_base)
