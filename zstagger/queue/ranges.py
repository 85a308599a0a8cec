"""Long videos through the queue: cut into time ranges that several workers judge side by side,
joined into the one result of their input.

The chunk task (:mod:`.tasks`) asks :func:`fan_out` about its inputs before tagging them: a
video (a local path with a video extension, or uploaded bytes that are one) whose header
declares more than ``ZSTAGGER_VIDEO_SPLIT_SECONDS`` is not tagged there; one ``tag_range``
task per range (:func:`zstagger.media.plan_ranges`) goes on the chunk's queue instead.

Each range task judges its frames (:meth:`~zstagger.Tagger.judge_range`) and keeps what it
found under the job, by range number (``HSET``: a range redelivered after its worker died,
or sent twice by a chunk redelivered after fanning out, overwrites its own entry, so nothing
counts twice). The task that finds every range in joins them
(:func:`zstagger.media.merge_records`: in time order, no frame twice), judges the whole from
them (aggregation, tags, verdict, and segments, which run across range boundaries as if the
video had been read in one go) and stores the input's result like any other: one ``HSET``
by index, so two tasks finishing at once store the same result once. A range task killed
mid-range is redelivered (acks late) and done again. A range that cannot be read makes the
input's result that error record.

Early exit: a range whose own frames make the taxonomy stop (a block label fired on enough
frames) records the time of that frame for its video (the earliest any range found); a range
that starts after it is not decoded and keeps a ``skipped`` mark instead. The join judges the
frames with the taxonomy's early exit, so the result is what one decode with early exit gives:
it stops at the same frame and says it stopped early.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from ..errors import ImageLoadError, ZstaggerError, record_type
from ..images import VIDEO_EXTENSIONS, describe, is_url
from ..media import MediaSource, detect, merge_records, plan_ranges, record_bytes, record_from_bytes
from ..media.video import declared_duration
from ..results import TagResult
from ..settings import Settings
from .celery_app import RANGE_TASK_NAME, app
from .messages import RangeRequest, decode_ref
from .notify import job_finished
from .sinking import sink_chunk, sink_mark
from .taskrules import _refuse, _with_redis, task_taxonomy
from .worker import worker_job_store, worker_settings, worker_tagger

log = logging.getLogger(__name__)

_EMPTY = b"empty"  # a range with no frame in it (the header said longer than the video is)
_SKIPPED = b"skipped"  # a range after the point where an earlier range decided the video (early exit)
_ERROR = b"error:"  # a range that could not be read: its error record follows, as JSON


def fan_out(tagger: Any, settings: Settings, job_id: str, pending: list[tuple[int, Any]], taxonomy: dict[str, Any],
            top_k: int | None, expires_at: float, queue: str | None, origin: tuple[int, int] | None = None) -> set[int]:
    """Send the long videos among ``pending`` (index, wire reference) off in time ranges; returns their indices."""
    split = settings.video_split_seconds
    if not split:
        return set()
    sent: set[int] = set()
    for index, wire in pending:
        ref = decode_ref(wire)
        if isinstance(ref, str) and (is_url(ref) or os.path.splitext(ref)[1].lower() not in VIDEO_EXTENSIONS):
            continue  # URLs are judged whole; other paths are not worth opening twice to ask
        try:
            found = detect(ref, tagger.image_policy)
        except ImageLoadError:
            continue  # tagging it says why
        if not isinstance(found, MediaSource) or found.kind != "video":
            continue
        ranges = plan_ranges(declared_duration(found.source), split, 1.0 / settings.video_sample_rate)
        if len(ranges) < 2:
            continue
        for part, (start, end) in enumerate(ranges):
            _with_redis(lambda part=part, start=start, end=end: tag_range.apply_async(
                args=(job_id, index, wire, taxonomy),
                kwargs={"start": start, "end": end, "part": part, "parts": len(ranges), "top_k": top_k,
                        "expires_at": expires_at, **({"origin": list(origin)} if origin else {})},
                queue=queue,
            ), "sending a long video's ranges", settings)
        sent.add(index)
        log.info("zstagger: job %s input %d: a video of %d ranges of about %g s, judged side by side", job_id, index,
                 len(ranges), split)
    return sent


@app.task(bind=True, name=RANGE_TASK_NAME, typing=False)
def tag_range(self, *args: Any, **kwargs: Any) -> dict[str, int]:
    """``tag_range(job_id, index, ref, taxonomy, start=, end=, part=, parts=, top_k=, expires_at=)``:
    judge one time range of a long video; the last range in joins them (see the module's docstring)."""
    settings = worker_settings()
    store = worker_job_store()
    try:
        request = RangeRequest.from_message(args, kwargs)
        spec = task_taxonomy(request.taxonomy, store.redis, settings)
    except (ZstaggerError, ValueError, TypeError) as exc:
        return _refuse(self.request.id, exc)
    job_id, index = request.job_id, request.index
    meta = _with_redis(lambda: store.meta(job_id), "reading the job", settings)
    total = int(meta["total"]) if meta.get("total", "").isdigit() else None
    if total is None or "cancelled" in meta or (request.expires_at and time.time() > request.expires_at):
        return {"skipped": 1}
    if index >= total or request.sink_origin[1] >= total:
        return _refuse(self.request.id, ValueError(f"index {index} or its chunk {list(request.sink_origin)} is not "
                                                   f"among the inputs of job {job_id} (it has {total})"))
    if not _with_redis(lambda: store.missing(job_id, [index]), "reading the job's results", settings):
        # joined already (this range was sent again, maybe after its worker died before the sink had it)
        sink_chunk(self, store, meta, job_id, request.sink_origin, settings)
        return {"skipped": 1}
    ref = decode_ref(request.wire_ref())
    source = MediaSource("video", path=ref) if isinstance(ref, str) else MediaSource("video", data=bytes(getattr(ref, "data", ref)))
    tagger = worker_tagger()
    expires_at = int(request.expires_at) if request.expires_at else int(time.time() + settings.result_ttl)
    decided = _with_redis(lambda: store.ranges_decided(job_id, index), "reading the ranges", settings)
    try:
        # (past a batch of sampled frames beyond it: where the whole video's judging stops can
        # be up to a batch later than where the range's own did)
        options = tagger.media_options
        if decided is not None and request.start > decided + options.batch_size / options.video_rate:
            part = _SKIPPED  # an earlier range found the video decided (early exit): not decoded
            log.info("zstagger: job %s input %d: range %d of %d not decoded: the video was decided at %.2f s",
                     job_id, index, request.part, request.parts, decided)
        else:
            record = tagger.judge_range(source, spec, request.start, request.end)
            part = record_bytes(record) if record is not None else _EMPTY
            stop = _decided_at(tagger, spec, record)
            if stop is not None:
                _with_redis(lambda: store.decide_ranges(job_id, index, stop, expires_at), "storing a range", settings)
    except ImageLoadError as exc:
        part = _ERROR + json.dumps({"type": exc.kind, "message": exc.message}).encode()
    except ZstaggerError as exc:  # the taxonomy cannot be used here (its example images): the input says why
        part = _ERROR + json.dumps({"type": record_type(exc), "message": str(exc)}).encode()
    done = _with_redis(lambda: store.save_range(job_id, index, request.part, part, expires_at), "storing a range", settings)
    if done < request.parts:
        return {"range": request.part}
    parts = _with_redis(lambda: store.ranges(job_id, index), "reading the ranges", settings)
    if len(parts) < request.parts:
        return {"range": request.part}  # another task joined them meanwhile
    result = join(tagger, spec, describe(ref), [parts[i] for i in range(request.parts)], request.top_k)
    finished = _with_redis(lambda: store.save(job_id, [(index, result)], expires_at,
                                              sink_chunk=sink_mark(meta, request.sink_origin)),
                           "storing results", settings)
    _with_redis(lambda: store.drop_ranges(job_id, index), "dropping the joined ranges", settings)
    sink_chunk(self, store, meta, job_id, request.sink_origin, settings)
    if finished >= total:
        _with_redis(lambda: job_finished(store, app, job_id, "done"), "sending the job's notifications", settings)
    return {"range": request.part, "joined": request.parts}


def _decided_at(tagger: Any, spec: Any, record: Any) -> float | None:
    """The time of the frame at which the taxonomy's early exit stops judging this range's frames
    (None: it does not stop in the range, or the taxonomy never stops early)."""
    if record is None:
        return None
    alone = tagger.rejudge_media(record, "", spec, early_exit=True)
    if alone is None or alone.media is None or not alone.media.stopped_early:
        return None
    return float(record.times[alone.media.frames_scored - 1])


def join(tagger: Any, spec: Any, name: str, parts: list[bytes], top_k: int | None) -> TagResult:
    """One result from a video's ranges, in order: the first range's error, if any; else the
    frames judged as one decode judges them, early exit included (ranges skipped because an
    earlier one decided the video all lie past where judging stops)."""
    provenance = tagger.provenance(spec)
    records = []
    for data in parts:
        if data == _SKIPPED:
            continue
        if data.startswith(_ERROR):
            error = json.loads(data[len(_ERROR):])
            return TagResult.failed(name, spec.name, str(error["type"]), str(error["message"]), provenance=provenance)
        if data != _EMPTY:
            try:
                records.append(record_from_bytes(data))
            except ValueError as exc:
                return TagResult.failed(name, spec.name, "invalid_media", f"a range of the video was lost: {exc}",
                                        provenance=provenance)
    if not records:
        return TagResult.failed(name, spec.name, "invalid_media", "no frame of the media could be decoded",
                                provenance=provenance)
    merged = merge_records(records)
    result = tagger.rejudge_media(merged, name, spec, top_k=top_k, early_exit=True)
    # (None: the taxonomy would judge past a skipped range, which cannot happen as ranges are
    # skipped only past a stop; then every frame that is there is judged)
    return result if result is not None else tagger.rejudge_media(merged, name, spec, top_k=top_k, early_exit=False)


__all__ = ["fan_out", "join", "tag_range"]
