"""What the embedding store keeps of a judged animation or video, and judging it again from that alone.

A :class:`MediaRecord` holds the sampled frames as the tagger judged them: each frame's time
and number among the decoded frames, the row of its embedding (near-duplicates share the row
of the frame they repeat), the distinct embeddings (fp16, as the store keeps every
embedding), what decoding found (duration, frames decoded, truncated) and whether every
frame was judged (``complete``: not stopped early). ``sampling`` names the settings that
chose the frames (:func:`sampling_signature`).

:func:`replay` turns a record back into the stream of frames the judge reads, with the
same near-duplicate structure and no decoder behind it, so that the taxonomy's rules
(aggregation, segments, early exit) run over the stored frames exactly as they ran over the
decoded ones. :func:`merge_records` joins the records of a long video's time ranges (judged
by several workers) into one; :func:`record_bytes` carries a record through Redis. Pure data
and numpy: no store, no tagger.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .frames import Frame
from .limits import DecodeMeter, MediaLimits
from .options import MediaOptions
from .streams import FrameStream


@dataclass
class MediaRecord:
    kind: str  # animation | video
    sampling: str  # the settings that chose the frames (sampling_signature)
    times: np.ndarray  # (F,) float64: each sampled frame's time, seconds
    indices: np.ndarray  # (F,) int64: each sampled frame's number among the frames decoded
    rows: np.ndarray  # (F,) int64: the row of ``vectors`` each sampled frame has (or repeats)
    vectors: np.ndarray  # (E, dim) little-endian fp16: the distinct frames' embeddings
    duration: float | None
    frames_decoded: int
    truncated: bool
    complete: bool  # every sampled frame judged (decoding did not stop early)

    def __post_init__(self) -> None:
        frames = len(self.times)
        if not (len(self.indices) == len(self.rows) == frames) or frames == 0:
            raise ValueError("a media record has one time, frame number and row per sampled frame, and at least one frame")
        if self.rows.min() < 0 or self.rows.max() >= len(self.vectors):
            raise ValueError("a media record's frame rows point outside its embeddings")


def sampling_signature(options: MediaOptions, kind: str) -> str:
    """The settings that decide which frames of a ``kind`` are sampled and embedded once: two
    tags with the same signature (and model) judge the same frames."""
    if kind == "animation":
        chosen = f"animation;frames={options.animation_frames}"
    else:
        chosen = f"video;rate={options.video_rate:g};scene={options.scene_threshold:g};side={options.frame_side or 0}"
        if options.reference_only:
            chosen += ";decode=reference"
    return f"{chosen};dedup={options.dedup:g}"


def replay(record: MediaRecord, limits: MediaLimits) -> tuple[FrameStream, np.ndarray]:
    """The record's frames as a stream the judge reads, and the embeddings its ``embed`` returns.

    A frame's ``image`` is its embedding's row (``embed`` looks it up) and its thumbnail is that
    row, so with a near-duplicate distance below 1 a frame counts as a repeat exactly when it
    repeated the frame before it when it was decoded."""
    stream = FrameStream(record.kind, DecodeMeter(limits), duration=record.duration, truncated=record.truncated)
    stream._frames = _frames(record)
    return stream, record.vectors.astype(np.float32)


#: The near-duplicate distance a replay is judged with: rows differ by 1 or more, repeats by 0.
REPLAY_DEDUP = 0.5


def _frames(record: MediaRecord) -> Iterator[Frame]:
    for time, index, row in zip(record.times.tolist(), record.indices.tolist(), record.rows.tolist()):
        yield Frame(time, row, np.array([float(row)], dtype=np.float32), index)  # type: ignore[arg-type]


# -- a record as bytes (a range of a long video on its way through Redis) ---------------------------

_ARRAYS = ("times", "indices", "rows", "vectors")


def record_bytes(record: MediaRecord) -> bytes:
    """The record as bytes: numpy's ``.npz`` (no pickles), read back by :func:`record_from_bytes`."""
    meta = {"kind": record.kind, "sampling": record.sampling, "duration": record.duration,
            "frames_decoded": record.frames_decoded, "truncated": record.truncated, "complete": record.complete}
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **{name: getattr(record, name) for name in _ARRAYS})
    return buffer.getvalue()


def record_from_bytes(data: bytes) -> MediaRecord:
    """The record :func:`record_bytes` wrote; ValueError for anything else (never unpickles)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            meta = json.loads(str(arrays["meta"]))
            values = {name: arrays[name] for name in _ARRAYS}
        return MediaRecord(
            str(meta["kind"]), str(meta["sampling"]), values["times"].astype(np.float64), values["indices"].astype(np.int64),
            values["rows"].astype(np.int64), values["vectors"].astype("<f2"),
            None if meta["duration"] is None else float(meta["duration"]), int(meta["frames_decoded"]),
            bool(meta["truncated"]), bool(meta["complete"]))
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a media record: {exc}") from None


def merge_records(parts: list[MediaRecord]) -> MediaRecord:
    """The records of consecutive time ranges of one video as one (in time order). A frame that
    a range repeats from the one before it (its time is not after that range's last) is dropped,
    so no frame counts twice; the last range says how long the video was."""
    if not parts:
        raise ValueError("no range of the video has frames")
    times, indices, rows, vectors = [], [], [], []
    last_time, vector_base, decoded = -np.inf, 0, 0
    for part in parts:
        keep = part.times > last_time
        times.append(part.times[keep])
        indices.append(part.indices[keep] + decoded)
        rows.append(part.rows[keep] + vector_base)
        vectors.append(part.vectors)
        vector_base += len(part.vectors)
        decoded += part.frames_decoded
        if keep.any():
            last_time = float(part.times[keep][-1])
    last = parts[-1]
    return MediaRecord(last.kind, last.sampling, np.concatenate(times), np.concatenate(indices), np.concatenate(rows),
                       np.concatenate(vectors), last.duration, decoded, any(p.truncated for p in parts),
                       all(p.complete for p in parts))
