"""Animations (GIF, APNG, WebP) and videos (MP4, MOV, WebM, MKV, ... through PyAV): every frame
that matters judged, flagged stretches returned with their times.

- :mod:`.sniff`: animation or video, from the bytes (never the extension);
- :mod:`.source`: the loader's question for one input (:func:`detect` -> :class:`MediaSource`);
- :mod:`.limits`: the limits every decode obeys and the meter that enforces them;
- :mod:`.animation`, :mod:`.video`: decoders that yield sampled :class:`~.frames.Frame` s one at a time;
- :mod:`.judge`: frames embedded and scored in small batches as they come, near-duplicates
  reusing scores, early exit once a block label has fired on enough frames;
- :mod:`.aggregate`: frame scores to the media's scores, and segments (pure functions);
- :mod:`.tagging`: one media input to one result;
- :mod:`.ranges`: a long video cut into time ranges judged apart (queue workers), joined again;
- :mod:`.record`: what the embedding store keeps of the frames judged, to judge them again
  under another taxonomy without decoding (:func:`rejudge_media`).

Below the tagger: this package never imports the tagger, the queue, the service or the CLI;
it is handed an ``embed`` function and a compiled taxonomy.
"""

from .aggregate import aggregate, segments
from .options import MediaOptions
from .sniff import sniff
from .ranges import judge_range, plan_ranges
from .record import MediaRecord, merge_records, record_bytes, record_from_bytes, sampling_signature
from .source import MediaSource, detect, media_digest
from .tagging import describe_aggregation, rejudge_media, score_media, tag_media, tag_media_each

__all__ = ["MediaOptions", "MediaRecord", "MediaSource", "aggregate", "describe_aggregation", "detect", "judge_range",
           "media_digest", "merge_records", "plan_ranges", "record_bytes", "record_from_bytes", "rejudge_media",
           "sampling_signature", "score_media", "segments", "sniff", "tag_media", "tag_media_each"]
