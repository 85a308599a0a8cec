"""Jobs over object-store prefixes and their result sinks, end to end: a real redis-server, real
`zstagger worker` processes, moto's S3 server on loopback, a worker killed mid-job."""

from __future__ import annotations

import io
import json
import threading
import time
import pytest
import redis

from harness import WebhookReceiver, wait_for, worker_starter
from zstagger.errors import ConfigurationError
from zstagger.queue import enqueue
from zstagger.settings import Settings
from zstagger.sinks import deliver_chunk
from zstagger.testing import registered_plugin, sample_image

BUCKET = "jobs"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    sample_image(seed, (40, 32)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bucket(s3_server):
    s3_server.bucket(BUCKET)
    return BUCKET


@pytest.fixture
def queue_env(redis_server, tiny_model_dir, s3_server):
    return {**s3_server.env, "ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir),
            "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_VISIBILITY_TIMEOUT": "8", "ZSTAGGER_URL_TIMEOUT": "5"}


@pytest.fixture
def settings(queue_env, monkeypatch):
    for key, value in queue_env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def sink_lines(s3_server, prefix: str) -> dict[str, list[dict]]:
    client = s3_server.client()
    files = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode()
            files[item["Key"]] = [json.loads(line) for line in body.splitlines()]
    return files


def test_a_prefix_job_survives_a_killed_worker_every_result_once_a_sink_file_per_chunk(
        s3_server, bucket, queue_env, settings, tmp_path):
    count, page = 240, 16
    s3_server.put_many(BUCKET, {f"in/{i:05d}.jpg": jpeg(i) for i in range(count)})
    keys = [f"s3://{BUCKET}/in/{i:05d}.jpg" for i in range(count)]
    with worker_starter(queue_env, tmp_path) as start:
        victim = start("victim", {"ZSTAGGER_LOADER_THREADS": "1"}).wait_ready()
        job = enqueue([f"s3://{BUCKET}/in/"], labels=["cat", "dog"], chunk_size=page, sink=f"s3://{BUCKET}/results/",
                      settings=settings)
        # Chunks carry a page's bounds, never its keys: nothing of the listing sits in Redis.
        queued = b"".join(redis.Redis.from_url(settings.redis_url).lrange("bulk", 0, -1))
        assert b"in/00005.jpg" not in queued and b"in/00015.jpg" in queued  # a page's last key is its bound
        wait_for(lambda: 0 < job.status()["done"], 60, "the victim to store a chunk")
        victim.kill9()
        assert job.status()["state"] == "running"
        start("rescuer-a").wait_ready(), start("rescuer-b").wait_ready()
        results = job.results(wait=True, timeout=240)
        # A victim killed after storing a chunk's results and before writing its sink file leaves
        # that file to the chunk's redelivery, after the visibility timeout: the status counts the
        # chunk undelivered until then (and every file is there once it counts none).
        wait_for(lambda: job.status()["sink"]["undelivered_chunks"] == 0, 90, "every chunk in the sink")
    assert [r.image for r in results] == keys and all(r.error is None for r in results)
    assert job.status() | {"job_id": ""} == {"job_id": "", "state": "done", "total": count, "done": count, "failed": 0,
                                              "pending": 0, "sink": {"undelivered_chunks": 0, "last_error": None}}
    files = sink_lines(s3_server, f"results/{job.id}/")
    assert len(files) == count // page  # one file per listed page, a redelivered one written again, not twice
    indices = [line["index"] for lines in files.values() for line in lines]
    assert sorted(indices) == list(range(count))  # every result exactly once across the sink's files
    first = files[f"results/{job.id}/00000000-00000015.jsonl"]
    assert [line["image"] for line in first] == keys[:16] and {line["job_id"] for line in first} == {job.id}


def test_objects_listed_at_enqueue_and_gone_since_are_error_records(s3_server, bucket, queue_env, settings, tmp_path):
    s3_server.put_many(BUCKET, {f"gone/{i:03d}.jpg": jpeg(i) for i in range(6)})
    s3_server.put_many(BUCKET, {f"private/{i:03d}.jpg": jpeg(i) for i in range(4)})
    job = enqueue([f"s3://{BUCKET}/gone/"], labels=["cat", "dog"], chunk_size=3, settings=settings)
    private = enqueue([f"s3://{BUCKET}/private/"], labels=["cat", "dog"], chunk_size=3, settings=settings)
    s3_server.client().delete_object(Bucket=BUCKET, Key="gone/005.jpg")
    # the worker's own allow-list decides what it reads, whatever the producer was allowed
    with worker_starter({**queue_env, "ZSTAGGER_SOURCE_ALLOW": f"s3://{BUCKET}/gone/"}, tmp_path) as start:
        start("w").wait_ready()
        results = job.results(wait=True, timeout=60)
        refused = private.results(wait=True, timeout=60)
    assert [r.error.type if r.error else None for r in results] == [None] * 5 + ["not_found"]
    assert [r.error.type for r in refused] == ["source_refused"] * 4 and private.status()["state"] == "done"
    assert "outside the locations that may be read" in refused[0].error.message


def test_enqueue_refuses_bad_sinks_and_sources_before_writing_anything(s3_server, bucket, settings, monkeypatch):
    client = redis.Redis.from_url(settings.redis_url)
    for kwargs, said in [({"sink": f"s3://KEY:SECRET@{BUCKET}/r/"}, "credentials in a URL are refused"),
                         ({"sink": "ftp://example.com/r/"}, "no result sink writes to ftp://"),
                         ({"images": ["s3://KEY:SECRET@jobs/in/"]}, "credentials in a URL are refused")]:
        with pytest.raises(ConfigurationError, match=said) as caught:
            enqueue(kwargs.pop("images", [jpeg(1)]), labels=["a"], settings=settings, **kwargs)
        assert "SECRET" not in str(caught.value)
    monkeypatch.setenv("ZSTAGGER_SINK_ALLOW", f"s3://{BUCKET}/allowed/")
    with pytest.raises(ConfigurationError, match="outside the locations that may be write"):
        enqueue([jpeg(1)], labels=["a"], sink=f"s3://{BUCKET}/elsewhere/", settings=Settings())
    with pytest.raises(ConfigurationError, match="refused over HTTP unless ZSTAGGER_SOURCE_ALLOW"):
        enqueue([f"s3://{BUCKET}/in/00001.jpg"], labels=["a"], settings=Settings(), trusted=False)
    assert client.dbsize() == 0


def test_the_webhook_sink_posts_each_chunk_signed_with_a_stable_id(monkeypatch):
    monkeypatch.setenv("ZSTAGGER_WEBHOOK_SECRET", "s3cret")
    monkeypatch.setenv("ZSTAGGER_ALLOW_PRIVATE_URLS", "1")
    receiver = WebhookReceiver("s3cret")
    try:
        lines = [(0, '{"image":"a"}'), (1, '{"image":"b"}')]
        assert deliver_chunk(receiver.url, "job1", "00000000-00000001", lines) == 2
        assert deliver_chunk(receiver.url, "job1", "00000000-00000001", lines) == 2  # delivered again
        assert [d["event_id"] for d in receiver.deliveries] == ["evt_job1_chunk_00000000-00000001"] * 2
        assert all(d["valid"] for d in receiver.deliveries)  # signed as the job webhooks are
        body = receiver.events["evt_job1_chunk_00000000-00000001"]  # one event, de-duplicated on its id
        assert body["type"] == "job.chunk" and body["job_id"] == "job1"
        assert body["results"] == [{"job_id": "job1", "index": 0, "image": "a"}, {"job_id": "job1", "index": 1, "image": "b"}]
    finally:
        receiver.close()


class ListSink:
    """A plugin sink keeping what it is given, by chunk (overwriting, as sinks must)."""

    schemes = ("listsink",)

    def __init__(self):
        self.chunks: dict[str, list[str]] = {}

    def write(self, url, job_id, chunk, lines):
        self.chunks[f"{job_id}/{chunk}"] = list(lines)


class HeldSink(ListSink):
    """A plugin sink whose first write waits, once it has set ``entered``, until ``go`` is set."""

    schemes = ("heldsink",)

    def __init__(self):
        super().__init__()
        self.writes = 0
        self.entered, self.go = threading.Event(), threading.Event()

    def write(self, url, job_id, chunk, lines):
        self.writes += 1
        if self.writes == 1:
            self.entered.set()
            assert self.go.wait(30)
        super().write(url, job_id, chunk, lines)


def registered_sink(sink, name: str):
    """``sink`` registered as a plugin's result sink, for a ``with`` block."""
    from zstagger import hookimpl

    class Plugin:
        @hookimpl
        def register_result_sinks(self, register):
            register(sink)

    return registered_plugin(Plugin(), name=name)


def test_a_plugin_sink_and_a_local_directory_sink(tmp_path):
    sink = ListSink()
    with registered_sink(sink, "list-sink"):
        deliver_chunk("listsink://x", "j", "00000003-00000004", [(4, '{"image":"b"}'), (3, '{"image":"a"}')])
    assert sink.chunks == {"j/00000003-00000004": ['{"job_id":"j","index":3,"image":"a"}', '{"job_id":"j","index":4,"image":"b"}']}
    deliver_chunk(str(tmp_path / "out"), "j", "00000000-00000000", [(0, '{"image":"a"}')])
    deliver_chunk(str(tmp_path / "out"), "j", "00000000-00000000", [(0, '{"image":"a"}')])
    assert (tmp_path / "out" / "j" / "00000000-00000000.jsonl").read_text() == '{"job_id":"j","index":0,"image":"a"}\n'
    assert [p.name for p in (tmp_path / "out" / "j").iterdir()] == ["00000000-00000000.jsonl"]  # no temporary left


def local_sink(directory) -> dict[str, list[dict]]:
    return {p.name: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(directory.glob("*.jsonl"))}


def test_an_input_retried_apart_rewrites_its_chunks_file_and_a_failing_sink_is_delivered_later(
        slow_server, queue_env, settings, tmp_path):
    # Input 0 fails transiently (HTTP 503) at every try: it is sent round again alone, then given
    # up. Its chunk is still one file, each input once, whichever delivery wrote it last.
    refs = [f"{slow_server.url}/status/503/a.png"] + [f"{slow_server.url}/p/{i}.png" for i in range(1, 6)]
    out, blocked = tmp_path / "out", tmp_path / "blocked"
    blocked.write_text("a file where the sink's directory should be")
    env = {**queue_env, "ZSTAGGER_ALLOW_PRIVATE_URLS": "1", "ZSTAGGER_MAX_RETRIES": "1"}
    with worker_starter(env, tmp_path) as start:
        worker = start("w").wait_ready()
        job = enqueue(refs, labels=["cat", "dog"], chunk_size=3, sink=str(out), settings=settings)
        failing = enqueue(refs[1:], labels=["cat", "dog"], chunk_size=5, sink=str(blocked), settings=settings)
        results = job.results(wait=True, timeout=120)
        failing.results(wait=True, timeout=120)
        wait_for(lambda: failing.status()["sink"]["last_error"], 30, "the failed sink write to be recorded")
        assert "failed for chunk 00000000-00000004" in failing.status()["sink"]["last_error"]
        assert failing.status()["sink"]["undelivered_chunks"] == 1
        assert not (blocked.is_dir() and list(blocked.iterdir()))
        blocked.unlink()  # the sink is back: the chunk is delivered by a later attempt, nothing tagged again
        wait_for(lambda: failing.status()["sink"]["undelivered_chunks"] == 0, 90, "the chunk to be delivered again",
                 interval=0.5)
        assert "zstagger.deliver_sink" in worker.output()
    assert results[0].error.type == "fetch_failed" and "gave up after 2 attempts" in results[0].error.message
    assert job.status()["sink"] == {"undelivered_chunks": 0, "last_error": None}
    files = local_sink(out / job.id)
    assert list(files) == ["00000000-00000002.jsonl", "00000003-00000005.jsonl"]
    assert [line["index"] for line in files["00000000-00000002.jsonl"]] == [0, 1, 2]
    assert files["00000000-00000002.jsonl"][0]["error"]["type"] == "fetch_failed"
    delivered = local_sink(blocked / failing.id)
    assert list(delivered) == ["00000000-00000004.jsonl"] and [line["index"] for line in delivered["00000000-00000004.jsonl"]] == [0, 1, 2, 3, 4]


def test_a_chunk_whose_sink_lock_a_dead_writer_holds_is_written_once_the_lock_is_free(queue_env, settings, tmp_path):
    """A worker killed while writing a chunk's file leaves the chunk's lock behind; the chunk's
    next writer finds it taken and must come back once it expires (a ``deliver_sink`` look),
    or the file is never written and the status says so for ever."""
    import uuid

    from zstagger.queue.jobstore import JobStore

    out, job_id = tmp_path / "out", uuid.uuid4().hex
    with worker_starter(queue_env, tmp_path) as start:
        worker = start("w").wait_ready()
        store = JobStore(redis.Redis.from_url(settings.redis_url))
        store.redis.set(f"{store.keys(job_id)[0]}:sink_lock:00000000-00000001", "a-dead-writer", px=6000)
        job = enqueue([jpeg(1), jpeg(2)], labels=["cat", "dog"], chunk_size=2, sink=str(out), job_id=job_id,
                      settings=settings)
        job.results(wait=True, timeout=60)
        assert job.status()["sink"]["undelivered_chunks"] == 1 and not (out / job_id).exists()
        wait_for(lambda: job.status()["sink"]["undelivered_chunks"] == 0, 30, "the chunk's look once the lock expired")
        assert "zstagger.deliver_sink" in worker.output()
    assert [line["index"] for line in local_sink(out / job_id)["00000000-00000001.jsonl"]] == [0, 1]


def test_a_write_under_way_never_lands_over_a_newer_one(redis_server, tmp_path):
    """Writer A is writing a chunk's file with what was stored then; meanwhile another input of
    the chunk is stored and its writer B comes: B leaves the chunk to A, which writes again,
    so the file ends with every result (a stale write of A landing after B's would lose one)."""
    from zstagger.queue.jobstore import JobStore
    from zstagger.queue.sinking import write_chunk
    from zstagger.results import TagResult

    sink = HeldSink()  # its first write waits while the other result is stored
    store = JobStore(redis_server.client())
    job = "a" * 32
    store.create(job, 3, int(time.time()) + 600, sink="heldsink://x")
    settings = Settings()
    store.save(job, [(0, TagResult.failed("a.jpg", "t", "invalid_image", "x"))], int(time.time()) + 600)
    with registered_sink(sink, "held-sink"):
        first = threading.Thread(target=write_chunk, args=(store, "heldsink://x", job, (0, 2), settings))
        first.start()
        assert sink.entered.wait(30)
        store.save(job, [(1, TagResult.failed("b.jpg", "t", "invalid_image", "x"))], int(time.time()) + 600)
        assert write_chunk(store, "heldsink://x", job, (0, 2), settings) == 0  # left to the writer under way
        sink.go.set()
        first.join(30)
    assert [json.loads(line)["index"] for line in sink.chunks[f"{job}/00000000-00000002"]] == [0, 1]
    assert sink.writes == 2


def test_results_stored_and_not_yet_in_the_sink_count_as_undelivered(redis_server, tmp_path):
    """The mark is stored with the results (a worker killed before writing the file leaves it
    set), and a write clears it only if no results of the chunk were stored after those it read;
    the writer then goes round again, even without the dirty mark of a storer killed before it."""
    from zstagger.queue.jobstore import JobStore
    from zstagger.queue.sinking import write_chunk
    from zstagger.results import TagResult

    store = JobStore(redis_server.client())
    job, expires = "b" * 32, int(time.time()) + 600
    store.create(job, 2, expires, sink="racesink://x")
    settings = Settings()

    def result(name: str) -> TagResult:
        return TagResult.failed(name, "t", "invalid_image", "x")

    late, written = [], []

    class RacingSink(ListSink):
        schemes = ("racesink",)

        def write(self, url, job_id, chunk, lines):
            super().write(url, job_id, chunk, lines)
            written.append([json.loads(line)["image"] for line in lines])
            while late:  # stored while this write was under way, by a worker killed before its own write
                store.save(job, [late.pop()], expires, sink_chunk="00000000-00000001")

    sink = RacingSink()

    store.save(job, [(0, result("a.jpg")), (1, result("b.jpg"))], expires, sink_chunk="00000000-00000001")
    assert store.status(job)["state"] == "done"
    assert store.status(job)["sink"]["undelivered_chunks"] == 1  # done, and the file not written yet
    with registered_sink(sink, "racing-sink"):
        late.append((1, result("b2.jpg")))
        write_chunk(store, "racesink://x", job, (0, 1), settings)
    assert written == [["a.jpg", "b.jpg"], ["a.jpg", "b2.jpg"]]  # b2.jpg was stored during the first write
    assert store.status(job)["sink"]["undelivered_chunks"] == 0


def test_a_write_whose_lock_expired_is_written_again_not_trusted(redis_server, tmp_path):
    """Writer A's lock expires while its write of [0] hangs; B writes [0, 1]; A's stale write lands
    last. A must not count the chunk written: it marks it again and rewrites it."""
    from zstagger.queue.jobstore import JobStore
    from zstagger.queue.sinking import write_chunk
    from zstagger.results import TagResult

    sink = HeldSink()
    store = JobStore(redis_server.client())
    job, expires = "c" * 32, int(time.time()) + 600
    store.create(job, 2, expires, sink="heldsink://x")
    settings = Settings()
    name = "00000000-00000001"
    store.save(job, [(0, TagResult.failed("a.jpg", "t", "invalid_image", "x"))], expires, sink_chunk=name)
    with registered_sink(sink, "held-sink"):
        first = threading.Thread(target=write_chunk, args=(store, "heldsink://x", job, (0, 1), settings))
        first.start()
        assert sink.entered.wait(30)
        store.redis.delete(f"{store.keys(job)[0]}:sink_lock:{name}")  # A's lock expires
        store.save(job, [(1, TagResult.failed("b.jpg", "t", "invalid_image", "x"))], expires, sink_chunk=name)
        write_chunk(store, "heldsink://x", job, (0, 1), settings)  # B: the lock is free
        assert [json.loads(line)["image"] for line in sink.chunks[f"{job}/{name}"]] == ["a.jpg", "b.jpg"]
        sink.go.set()  # A's write of what it read, [a.jpg], lands over B's
        first.join(30)
    assert [json.loads(line)["image"] for line in sink.chunks[f"{job}/{name}"]] == ["a.jpg", "b.jpg"]
    assert store.status(job)["sink"]["undelivered_chunks"] == 0 and sink.writes == 3
