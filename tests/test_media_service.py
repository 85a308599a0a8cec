"""Animations and videos in the HTTP service's admission: each batch of a medium's frames counts
against ZSTAGGER_MAX_PENDING_IMAGES like as many images while it is embedded, so a video
costs the service its sampled frames and cannot crowd images out.

A real uvicorn server, real H.264 clips (PyAV) and the tiny model.
"""

import base64
import functools
import re
import threading
import time

import pytest
from test_media import video

from zstagger.media import MediaSource
from zstagger.pipeline import SetAside
from zstagger.service.batching import MicroBatcher
from zstagger.settings import Settings
from zstagger.tagger import Tagger

pytest.importorskip("av")


def test_a_videos_frames_are_admitted_like_images(tmp_path, tiny_model_dir):
    import httpx
    from harness import ApiServer

    from zstagger.service.auth import hash_key

    clip = video(tmp_path / "clip.mp4", seconds=6, flagged=[(2.0, 3.0)])
    key = "zst_media-admission-key"
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"),
           "ZSTAGGER_API_KEYS": hash_key(key), "ZSTAGGER_MAX_PENDING_IMAGES": "4", "ZSTAGGER_MEDIA_BATCH_SIZE": "4",
           "ZSTAGGER_MEDIA_DEDUP_DISTANCE": "0"}
    api = ApiServer(env, tmp_path).wait_ready()
    try:
        headers = {"Authorization": f"Bearer {key}"}
        body = {"images": ["data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()], "labels": ["a", "b"]}
        answer = httpx.post(api.url + "/v1/tag", headers=headers, json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        result = answer.json()["results"][0]
        assert result["error"] is None and result["media"]["frames_scored"] >= 6
        metrics = httpx.get(api.url + "/metrics", headers=headers, timeout=30).text
        admitted = float(re.search(r"^zstagger_http_media_frames_total (\S+)$", metrics, re.M).group(1))
        # Every frame embedded was admitted (no near-duplicates skipped here), in batches no larger than the limit.
        assert admitted == result["media"]["frames_scored"]
    finally:
        assert api.stop() in (0, -15)


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")), precision="fp32", media_batch_size=2)
    with Tagger(str(tiny_model_dir), device="cpu", settings=settings) as tagger:
        yield tagger


def test_frames_wait_for_room_then_a_busy_server_makes_an_error_record(tmp_path, tagger):
    batcher = MicroBatcher(tagger.stages(media=True), batch_size=4, max_wait=0.01, max_pending=2, lanes=1, loader_threads=1)
    try:
        clip = MediaSource("video", path=str(video(tmp_path / "clip.mp4", seconds=3)))
        taxonomy = tagger.resolve(None, ["a", "b"], None)

        def judged(patience):
            gate = functools.partial(batcher.frames, patience=patience)
            return tagger.results(taxonomy, ["clip.mp4"], None, [SetAside(clip)], frame_gate=gate)[0]

        batcher.admit(2)  # an image request holds every slot
        threading.Timer(0.5, batcher.release, (2,)).start()
        started = time.monotonic()
        waited = judged(patience=10)
        assert waited.ok and time.monotonic() - started >= 0.5  # it waited for room instead of going past the limit
        assert batcher.in_flight == 0  # every batch of frames gave its room back

        batcher.admit(2)
        try:
            refused = judged(patience=0.3)
        finally:
            batcher.release(2)
        assert refused.error.type == "overloaded" and refused.error.transient
        assert "ZSTAGGER_MAX_PENDING_IMAGES" in refused.error.message
    finally:
        batcher.close()
