"""The queue end to end: a real redis-server, real `zstagger worker` processes, no eager mode."""

import base64
import contextlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
import redis

from harness import RedisServer, Worker, clean_environ, wait_for, worker_starter
from zstagger import ConfigurationError, UnknownTaxonomyError
from zstagger.queue import Job, JobTimeout, QueueUnavailableError, UnknownJobError, enqueue
from zstagger.settings import Settings
from zstagger.testing import sample_image


@pytest.fixture
def queue_env(redis_server, tiny_model_dir):
    return {
        "ZSTAGGER_REDIS_URL": redis_server.url,
        "ZSTAGGER_MODEL": str(tiny_model_dir),
        "ZSTAGGER_PRECISION": "fp32",
        "ZSTAGGER_ALLOW_PRIVATE_URLS": "1",  # the test image server is on loopback
        "ZSTAGGER_URL_TIMEOUT": "5",
        "ZSTAGGER_VISIBILITY_TIMEOUT": "6",
        "ZSTAGGER_MAX_RETRIES": "1",
    }


@pytest.fixture
def workers(queue_env, tmp_path):
    with worker_starter(queue_env, tmp_path) as start:
        yield start


@pytest.fixture
def settings(queue_env, monkeypatch):
    for key, value in queue_env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def cli_command(*args):
    exe = shutil.which("zstagger")
    return [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]


def cli(*args, env, stdin=None, timeout=180, cwd=None):
    full_env = clean_environ()
    full_env.update(env)
    return subprocess.run(cli_command(*args), env=full_env, input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def write_images(directory, count):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"img{i:03d}.{'png' if i % 3 else 'jpg'}"
        sample_image(i, (60 + i, 48 + (i * 7) % 40)).save(path)
        paths.append(str(path))
    return paths


def test_end_to_end_two_workers_every_result_once_in_order_matching_tag(queue_env, workers, tmp_path):
    paths = write_images(tmp_path / "images", 45)
    a, b = workers("a"), workers("b")
    a.wait_ready(), b.wait_ready()
    enqueued = cli("enqueue", str(tmp_path / "images"), "-t", "ecommerce", "--chunk-size", "4", env=queue_env)
    assert enqueued.returncode == 0, enqueued.stderr
    job_id = enqueued.stdout.strip()
    assert len(enqueued.stdout.splitlines()) == 1 and len(job_id) == 32

    got = cli("results", job_id, "--wait", "--timeout", "120", env=queue_env)
    assert got.returncode == 0, got.stderr
    queued = [json.loads(line) for line in got.stdout.splitlines()]
    assert [r["image"] for r in queued] == paths  # all, in input order, each exactly once

    status = json.loads(cli("status", job_id, env=queue_env).stdout)
    assert status == {"job_id": job_id, "state": "done", "total": 45, "done": 45, "failed": 0, "pending": 0}
    assert a.chunks_done() >= 1 and b.chunks_done() >= 1 and a.chunks_done() + b.chunks_done() == 12

    direct = cli("tag", *paths, "-t", "ecommerce", "--format", "jsonl", env=queue_env)
    assert direct.returncode == 0, direct.stderr
    for q, d in zip(queued, (json.loads(line) for line in direct.stdout.splitlines())):
        assert q["image"] == d["image"] and q["tags"] == d["tags"] and q["error"] is None
        assert [s["label"] for s in q["scores"]] == [s["label"] for s in d["scores"]]
        assert [s["score"] for s in q["scores"]] == pytest.approx([s["score"] for s in d["scores"]], abs=1e-5)


def test_python_api_with_bytes_and_urls(settings, workers, slow_server):
    workers("api").wait_ready()
    png = base64.b64decode(base64.b64encode(open(__file__, "rb").read()))  # not an image: an error record
    image = sample_image(3)
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    job = enqueue([buf.getvalue(), f"{slow_server.url}/a.png", png], labels=["cat", "dog"], settings=settings)
    results = job.results(wait=True, timeout=60)
    assert [r.error.type if r.error else None for r in results] == [None, None, "invalid_image"]
    assert results[0].image.startswith("bytes:sha256:") and results[1].image == f"{slow_server.url}/a.png"
    assert results[0].tags and results[0].taxonomy == "labels"
    assert job.status()["state"] == "done"


def test_worker_killed_mid_chunk_its_chunk_is_redelivered(queue_env, workers, slow_server, settings):
    refs = [f"{slow_server.url}/slow/1.5/k{i}.png" for i in range(6)]
    # The rescuer's consumer reserves a chunk while its pool process is still loading the
    # model, and the visibility clock runs meanwhile: leave room for a slow load (model
    # load + 3 x 1.5 s) so that the one redelivery counted is the victim's chunk.
    patient = {"ZSTAGGER_VISIBILITY_TIMEOUT": "14"}
    victim = workers("victim", {"ZSTAGGER_LOADER_THREADS": "1", **patient}).wait_ready()
    job = enqueue(refs, labels=["a", "b"], chunk_size=3, settings=settings)
    wait_for(lambda: job.status()["state"] == "running", 30, "the victim to start a chunk")
    time.sleep(0.5)
    assert job.status()["done"] == 0  # it holds a chunk, nothing stored yet
    victim.kill9()

    rescuer = workers("rescuer", patient).wait_ready()
    results = job.results(wait=True, timeout=90)
    assert [r.image for r in results] == refs and all(r.error is None for r in results)
    client = redis.Redis.from_url(settings.redis_url)
    assert client.hlen(f"zstagger:job:{job.id}:results") == 6
    # Both chunks were done by the rescuer, the victim's one redelivered. On a busy machine a
    # chunk may outlive its visibility timeout and be done a second time (at least once, by
    # design): its results replace themselves, so the count of stored results above stays 6.
    assert rescuer.chunks_done() >= 2


def test_a_worker_killed_during_its_sweep_holds_up_redelivery_for_at_most_a_visibility_timeout(queue_env, workers,
                                                                                                 redis_server):
    """Every worker sweeps for abandoned chunks under a lock in Redis, about once a second; one
    killed inside its sweep leaves the lock to expire on its own, and until then no worker
    restores anything. The lock a real worker takes must expire within the visibility timeout
    (kombu's default is 300 s), read off Redis's own command stream."""
    client = redis.Redis.from_url(redis_server.url)
    seen: list[list[str]] = []

    def watch() -> None:
        with client.monitor() as monitor:
            for command in monitor.listen():
                words = command["command"].split()
                if words[:2] == ["SET", "unacked_mutex"]:
                    seen.append(words)
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    workers("sweeper").wait_ready()
    watcher.join(30)
    assert seen, "no sweep seen in 30 s"
    words = [word.upper() for word in seen[0]]
    expiry = ([int(seen[0][words.index("EX") + 1])] if "EX" in words else []) + \
             ([int(seen[0][words.index("PX") + 1]) / 1000] if "PX" in words else [])
    assert expiry and expiry[0] <= int(queue_env["ZSTAGGER_VISIBILITY_TIMEOUT"]), seen[0]


def test_redis_restart_while_workers_run(redis_server, queue_env, workers, slow_server, settings):
    workers("steady").wait_ready()
    refs = [f"{slow_server.url}/slow/0.4/r{i}.png" for i in range(12)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=2, settings=settings)
    wait_for(lambda: job.status()["done"] >= 2, 60, "some progress before the restart")
    redis_server.stop()
    time.sleep(1.5)
    redis_server.start()
    results = job.results(wait=True, timeout=120)
    assert [r.image for r in results] == refs and all(r.error is None for r in results)


def test_good_broken_and_unreachable_inputs_all_end_as_records(queue_env, workers, slow_server, tmp_path, settings):
    workers("mixed").wait_ready()
    good = write_images(tmp_path / "good", 2)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    refs = [good[0], str(tmp_path / "broken.jpg"), "http://127.0.0.1:1/unreachable.png",
            f"{slow_server.url}/missing/x.png", str(tmp_path / "gone.png"), good[1]]
    job = enqueue(refs, taxonomy="moderation", chunk_size=4, settings=settings)
    got = cli("results", job.id, "--wait", "--timeout", "90", env=queue_env)
    assert got.returncode == 1  # some inputs failed
    records = [json.loads(line) for line in got.stdout.splitlines()]
    kinds = [r["error"]["type"] if r["error"] else None for r in records]
    assert kinds == [None, "invalid_image", "fetch_failed", "fetch_failed", "not_found", None]
    assert "gave up after 2 attempts" in records[2]["error"]["message"]  # retried once (ZSTAGGER_MAX_RETRIES=1)
    assert "404" in records[3]["error"]["message"] and "gave up" not in records[3]["error"]["message"]
    assert records[0]["verdict"] in ("allow", "review", "block")
    assert job.status() == {"job_id": job.id, "state": "done", "total": 6, "done": 2, "failed": 4, "pending": 0}


def test_pickle_messages_are_refused_not_executed(queue_env, workers, settings, tmp_path):
    worker = workers("safe").wait_ready()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    from kombu import Connection

    with Connection(settings.redis_url) as conn:
        producer = conn.Producer()
        producer.publish(
            pickle.dumps(((Exploit(),), {}, {})), routing_key="bulk", exchange="",
            headers={"lang": "py", "task": "zstagger.tag_chunk", "id": "evil-1", "argsrepr": "", "kwargsrepr": ""},
            content_type="application/x-python-serialize", content_encoding="binary",
        )
    wait_for(lambda: "ContentDisallowed" in worker.output() or "Refusing to deserialize" in worker.output(),
             30, "the worker to refuse the pickle message")
    assert not marker.exists()
    job = enqueue([sample_image_path(tmp_path)], labels=["a", "b"], settings=settings)
    assert job.results(wait=True, timeout=60)[0].error is None  # the worker is still serving


def sample_image_path(tmp_path):
    path = tmp_path / "one.png"
    sample_image(1).save(path)
    return str(path)


def test_queues_keep_interactive_work_apart_from_bulk(queue_env, workers, settings, tmp_path):
    workers("fast-lane", args=("--queues", "interactive")).wait_ready()
    path = sample_image_path(tmp_path)
    bulk = enqueue([path], labels=["a", "b"], queue="bulk", settings=settings)
    interactive = enqueue([path], labels=["a", "b"], queue="interactive", settings=settings)
    assert interactive.results(wait=True, timeout=60)[0].error is None
    assert bulk.status()["state"] == "pending"  # nobody consumes bulk


def test_sigterm_stores_what_is_tagged_and_hands_back_the_rest(queue_env, workers, slow_server, settings):
    """SIGTERM mid-chunk: the images already read are tagged and stored before the worker exits
    (status 0), the others wait in the queue, not in the unacked set; the next worker tags them."""
    worker = workers("graceful", {"ZSTAGGER_LOADER_THREADS": "1"}).wait_ready()
    refs = [f"{slow_server.url}/slow/1.0/g{i}.png" for i in range(3)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=3, settings=settings)
    wait_for(lambda: job.status()["state"] == "running", 30, "the worker to start the chunk")
    time.sleep(0.5)  # the first image is being read
    assert worker.terminate(timeout=60) == 0
    client = redis.Redis.from_url(settings.redis_url)
    done = job.status()["done"]
    assert 1 <= done < 3 and client.llen("bulk") == 1 and client.hlen("unacked") == 0  # stored, and handed back
    workers("next").wait_ready()
    assert [r.image for r in job.results(wait=True, timeout=60)] == refs


def test_scale_in_sigterm_mid_job_hands_back_at_once_nothing_lost_nothing_twice(queue_env, workers, slow_server, settings):
    """Scale-in (Kubernetes/KEDA, systemd stop): SIGTERM to one of two workers' main process in
    the middle of a chunk with ~10 s of work left, then SIGKILL after a 6 s grace period, as
    Kubernetes does. The worker stops by itself within about one image's time, storing what it
    tagged and handing the rest back to the queue at once; the other worker finishes the job
    long before the visibility timeout; every input has one result and no image is tagged twice."""
    visibility = 90
    env = {"ZSTAGGER_VISIBILITY_TIMEOUT": str(visibility), "ZSTAGGER_LOADER_THREADS": "1", "ZSTAGGER_MAX_RETRIES": "0"}
    leaving = workers("leaving", env).wait_ready()
    staying = workers("staying", env).wait_ready()
    refs = [f"{slow_server.url}/slow/1.0/scale{i}.png" for i in range(24)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=12, settings=settings)
    wait_for(lambda: "tag_chunk" in leaving.output() and "received" in leaving.output(), 30, "the leaving worker to take a chunk")
    time.sleep(2.5)  # two of its twelve one-second images are done
    stopped = time.monotonic()
    exit_status = leaving.terminate(timeout=6)  # the grace period; then SIGKILL
    stop_seconds = time.monotonic() - stopped
    assert exit_status == 0, f"not stopped within the 6 s grace period (status {exit_status})"
    results = job.results(wait=True, timeout=visibility / 2)  # JobTimeout if a chunk waits out the visibility timeout
    finished_seconds = time.monotonic() - stopped
    assert [r.image for r in results] == refs and all(r.error is None for r in results)

    def tagged() -> list[int]:  # (a task's log line comes just after its results are stored: wait for it, bounded)
        return [int(n) for log in (leaving.log_path.read_text(), staying.output()) for n in re.findall(r"'tagged': (\d+)", log)]

    with contextlib.suppress(AssertionError):
        wait_for(lambda: sum(tagged()) >= 24, 10, "the workers' last task lines")
    logs = [leaving.log_path.read_text(), staying.output()]
    assert sum(tagged()) == 24, (tagged(), logs[0][-3000:])  # every image tagged once: none lost, none twice
    assert "handed" in logs[0] and stop_seconds < 4.5, (stop_seconds, logs[0][-3000:])
    assert finished_seconds < visibility / 3, finished_seconds


def test_enqueue_validates_before_writing_anything(redis_server, queue_env, settings, tmp_path):
    client = redis_server.client()
    (tmp_path / "empty").mkdir()
    for args, message in [
        (["x.png", "-t", "no-such"], "unknown taxonomy 'no-such'"),
        ([str(tmp_path / "empty"), "--labels", "a"], "nothing to enqueue"),
        (["ftp://example.com/a.png", "--labels", "a"], "unsupported URL scheme"),
        (["http:///nohost.png", "--labels", "a"], "no host"),
        (["x.png", "--labels", "a", "--queue", "bad queue"], "invalid queue name"),
        (["x.png"], "exactly one of -t/--taxonomy"),
    ]:
        result = cli("enqueue", *args, env=queue_env)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert message in result.stderr and result.stdout == ""
    with pytest.raises(ConfigurationError, match="ZSTAGGER_MAX_UPLOAD_BYTES"):
        enqueue([b"x" * 2000], labels=["a"], settings=Settings(max_upload_bytes=1000, redis_url=redis_server.url))
    with pytest.raises(UnknownTaxonomyError):
        enqueue(["x.png"], taxonomy="nope", settings=settings)
    assert client.dbsize() == 0  # nothing was enqueued by any of the failures


def test_unreachable_redis_and_unknown_jobs_are_clear_errors(queue_env, redis_server):
    down = {**queue_env, "ZSTAGGER_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = cli("enqueue", "x.png", "--labels", "a", env=down)
    assert result.returncode == 2 and "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr
    for command in (["status", "f" * 32], ["results", "f" * 32]):
        result = cli(*command, env=queue_env)
        assert result.returncode == 2 and "no job 'ffff" in result.stderr


def test_a_package_missing_from_the_install_is_named_never_taken_for_an_unreachable_redis(redis_server, queue_env,
                                                                                          settings, tmp_path):
    """kombu's Redis transport imports `packaging`: with it absent (a producer install that
    did not declare it), enqueue and cancel name the package and the pip command, write
    nothing, and never say Redis cannot be reached."""
    path = sample_image_path(tmp_path)
    job = enqueue([path], labels=["a"], settings=settings)
    keys_before = sorted(redis_server.client().keys())
    blocked = "import sys; sys.modules['packaging'] = None; from zstagger.cli import main; main()"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    for args in (["enqueue", path, "--labels", "a"], ["cancel", job.id]):
        result = subprocess.run([sys.executable, "-c", blocked, *args], env={**full_env, **queue_env},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, (args, result.stderr)
        assert "packaging is not installed" in result.stderr and "pip install packaging" in result.stderr, result.stderr
        assert "cannot reach Redis" not in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""
    assert sorted(redis_server.client().keys()) == keys_before  # nothing was written, nothing cancelled
    assert job.status()["state"] == "pending"


def test_results_wait_timeout_exits_3(queue_env, settings, tmp_path):
    job = enqueue([sample_image_path(tmp_path)], labels=["a"], settings=settings)  # no worker is running
    result = cli("results", job.id, "--wait", "--timeout", "1", env=queue_env)
    assert result.returncode == 3 and "not done after 1s" in result.stderr
    assert json.loads(cli("status", job.id, env=queue_env).stdout)["state"] == "pending"
    with pytest.raises(JobTimeout):
        job.results(wait=True, timeout=0.5)
    with pytest.raises(UnknownJobError):
        Job("nope", settings).status()


def test_results_expire_after_the_ttl(redis_server, settings, tmp_path):
    job = enqueue([sample_image_path(tmp_path)], labels=["a"], settings=Settings(redis_url=redis_server.url, result_ttl=3600))
    ttl = redis_server.client().ttl(f"zstagger:job:{job.id}")
    assert 3590 <= ttl <= 3600


def test_redeliveries_never_duplicate_results(redis_server):
    from zstagger.queue.jobstore import JobStore
    from zstagger.results import TagResult

    store = JobStore(redis_server.client())
    j = "0123456789abcdef" * 2  # job ids are 32 hex digits
    store.create(j, 3, int(time.time()) + 60)
    first = [(0, TagResult(image="a", taxonomy="t")), (1, TagResult.failed("b", "t", "not_found", "gone"))]
    store.save(j, first, int(time.time()) + 60)
    store.save(j, first, int(time.time()) + 60)  # the same chunk again
    store.save(j, [(1, TagResult(image="b", taxonomy="t"))], int(time.time()) + 60)
    assert store.status(j) == {"job_id": j, "state": "running", "total": 3, "done": 2, "failed": 0, "pending": 1}
    assert store.missing(j, [0, 1, 2]) == [2]


def test_store_reports_unreachable_redis_quickly():
    start = time.monotonic()
    with pytest.raises(QueueUnavailableError, match="cannot reach Redis"):
        Job("f" * 32, Settings(redis_url="redis://127.0.0.1:1/0")).status()
    assert time.monotonic() - start < 15


def test_password_protected_redis_end_to_end(tmp_path, tiny_model_dir):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", password="s3cret-pass").start()
    try:
        env = {"ZSTAGGER_REDIS_URL": server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_METRICS_PORT": "0"}
        worker = Worker("locked", env, tmp_path).wait_ready()
        path = sample_image_path(tmp_path)
        job = cli("enqueue", path, "--labels", "a,b", env=env)
        assert job.returncode == 0, job.stderr
        got = cli("results", job.stdout.strip(), "--wait", "--timeout", "60", env=env)
        assert got.returncode == 0 and json.loads(got.stdout)["image"] == path
        wrong = cli("status", job.stdout.strip(), env={**env, "ZSTAGGER_REDIS_URL": server.url.replace("s3cret-pass", "nope")})
        assert wrong.returncode == 2 and "cannot reach Redis" in wrong.stderr and "s3cret" not in wrong.stderr
        worker.terminate()
    finally:
        server.stop()


def test_rediss_urls_verify_certificates():
    import ssl

    from zstagger.queue.celery_app import make_app

    app = make_app(Settings(redis_url="rediss://:pw@redis.example.com:6380/0"))
    assert app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert make_app(Settings(redis_url="redis://localhost:6379/0")).conf.broker_use_ssl is None


# --- hostile queue contents (issue 8, items 8-12, 17) ---

DEAD_LETTER = "zstagger:dead-letter"
_ROUTE = '"delivery_info": {"exchange": "", "routing_key": "bulk"}'
# Bytes that are not a kombu envelope, each pushed straight onto a queue list.
MALFORMED_ITEMS = [
    b"\xff\xfe\x00 not utf-8",
    b"not json",
    b"[1, 2]",
    b"null",
    b'"a string"',
    b"{}",
    b'{"properties": {}}',
    b'{"properties": {"delivery_tag": "t1", "delivery_info": null}}',
    b'{"properties": {"delivery_tag": {"nested": 1}, ' + _ROUTE.encode() + b"}}",
    b'{"body": "!!not base64", "properties": {"delivery_tag": "t2", "body_encoding": "base64", ' + _ROUTE.encode() + b"}}",
    b'{"body": 42, "properties": {"delivery_tag": "t3", ' + _ROUTE.encode() + b"}}",
]


def test_malformed_queue_items_are_dead_lettered_and_the_worker_keeps_serving(redis_server, queue_env, workers, settings,
                                                                            tmp_path):
    worker = workers("sturdy").wait_ready()
    client = redis_server.client()
    lists = ["bulk", "interactive", "bulk\x06\x163"]  # the last one is kombu's list for priority 3
    for i, item in enumerate(MALFORMED_ITEMS):
        client.lpush(lists[i % len(lists)], item)
    # A valid envelope carrying something Celery does not know is Celery's to refuse, not the transport's.
    client.lpush("bulk", json.dumps({
        "body": base64.b64encode(b"{}").decode(), "content-type": "application/json", "content-encoding": "utf-8",
        "headers": {}, "properties": {"delivery_tag": "t4", "body_encoding": "base64",
                                      "delivery_info": {"exchange": "", "routing_key": "bulk"}}}))
    wait_for(lambda: client.llen(DEAD_LETTER) >= len(MALFORMED_ITEMS) or not worker.alive(), 30,
             "the worker to dead-letter every malformed item")
    assert worker.alive(), worker.output()
    wait_for(lambda: sum(client.llen(name) for name in lists) == 0, 30, "the queues to drain")
    assert client.llen(DEAD_LETTER) == len(MALFORMED_ITEMS)
    letters = [json.loads(entry) for entry in client.lrange(DEAD_LETTER, 0, -1)]
    assert {letter["queue"] for letter in letters} == {"bulk", "interactive"}
    assert all(letter["reason"] and ("item" in letter or "item_b64" in letter) for letter in letters)
    assert base64.b64decode(next(x["item_b64"] for x in letters if "item_b64" in x)) == MALFORMED_ITEMS[0]
    assert worker.output().count(f"moved to {DEAD_LETTER}") == len(MALFORMED_ITEMS)
    assert json.loads(cli("queue-stats", env=queue_env).stdout)["dead_letter"] == len(MALFORMED_ITEMS)

    job = enqueue([sample_image_path(tmp_path)], labels=["a", "b"], settings=settings)
    assert job.results(wait=True, timeout=60)[0].error is None  # still serving
    assert worker.alive()


def test_task_messages_with_malformed_arguments_are_refused(redis_server, workers, settings, queue_env, tmp_path):
    from zstagger.queue.celery_app import TASK_NAME, app_for
    from zstagger.registry import resolve_taxonomy

    path = sample_image_path(tmp_path)
    job = enqueue([path], labels=["a", "b"], settings=settings)  # one real chunk: index 0 of 1
    spec = resolve_taxonomy(None, ["a", "b"], None).model_dump(mode="json")
    poisoned = [
        ((job.id, [[-1, path]], spec), {}),
        ((job.id, [["0", path]], spec), {}),
        ((job.id, [[True, path]], spec), {}),
        ((job.id, [[1, path]], spec), {}),  # the job has one input: index 1 does not exist
        ((job.id, [[0.5, path]], spec), {}),
        ((job.id, [[0, path], [0, path]], spec), {}),
        ((job.id, "not a list", spec), {}),
        ((job.id, [[0]], spec), {}),
        ((job.id, [[0, 42]], spec), {}),
        ((job.id, [[0, {"b64": "!!"}]], spec), {}),
        ((job.id, [[0, path]], "nope"), {}),
        ((job.id, [[0, path]], spec), {"top_k": "many"}),
        ((job.id, [[0, path]], spec), {"expires_at": "soon"}),
        ((job.id, [[0, path]], spec), {"attempt": -1}),
        ((job.id + ":results", [[0, path]], spec), {}),
        (("../../etc/passwd", [[0, path]], spec), {}),
        ((42, [[0, path]], spec), {}),
        ((job.id,), {}),
    ]
    # A well-formed chunk whose spec no worker can use (a forged one, or from a newer
    # producer): its inputs become error records saying so, and that job finishes.
    other = enqueue([path], labels=["a", "b"], queue="nobody", settings=settings)
    bad_spec = ((other.id, [[0, path]], {"labels": "not a taxonomy"}), {})
    app = app_for(settings)
    for args, kwargs in [*poisoned, bad_spec]:
        app.send_task(TASK_NAME, args=args, kwargs=kwargs, queue="bulk")
    client = redis_server.client()
    worker = workers("wary").wait_ready()
    wait_for(lambda: client.llen("bulk") == 0 and client.hlen("unacked") == 0, 60, "every message to be consumed")
    wait_for(lambda: job.status()["state"] == "done", 30, "the real chunk to be tagged")
    assert job.status() == {"job_id": job.id, "state": "done", "total": 1, "done": 1, "failed": 0, "pending": 0}
    assert client.hkeys(f"zstagger:job:{job.id}:results") == [b"0"]
    assert worker.output().count("refused a malformed chunk") == len(poisoned)
    assert worker.output().count("refused the taxonomy spec") == 1
    refused = other.results()[0]
    assert other.status()["state"] == "done" and refused.error.type == "invalid_taxonomy"
    assert worker.alive()
    assert [r.image for r in job.results()] == [path]


def test_status_of_something_that_is_not_a_job_id_is_one_clear_line(redis_server, queue_env, settings, tmp_path):
    job = enqueue([sample_image_path(tmp_path)], labels=["a"], settings=settings)
    redis_server.client().hset(f"zstagger:job:{job.id}:results", "0", "{}")  # a results hash exists
    for bad in (f"{job.id}:results", f"{job.id}:failed", "../x", "", job.id + "0"):
        for command in ("status", "results"):
            result = cli(command, bad, env=queue_env)
            assert result.returncode == 2, (command, bad, result.stderr)
            assert "is not a job id" in result.stderr and "Traceback" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(UnknownJobError, match="is not a job id"):
        Job(f"{job.id}:results", settings).status()
    assert json.loads(cli("status", job.id.upper(), env=queue_env).stdout)["job_id"] == job.id


CRASHING_CONSUMER = """
import sys
from celery.worker.consumer.consumer import Consumer

def create_task_handler(self, *args, **kwargs):
    def on_task_received(message):
        raise RuntimeError("forced consumer failure")
    return on_task_received

Consumer.create_task_handler = create_task_handler
from zstagger.cli import main
main()
"""


def test_a_worker_that_stops_on_an_error_exits_nonzero(queue_env, workers, settings, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{this is not a checkpoint")
    for pool in ("solo", "prefork"):
        worker = workers(f"broken-{pool}", {"ZSTAGGER_MODEL": str(broken), "ZSTAGGER_METRICS_PORT": "0"},
                         args=("--pool", pool))
        assert worker.wait_exit(120) == 1, worker.output()
    # A consumer that crashes (forced: its task handler raises) ends the worker with a failure status.
    crashing = workers("crashing", {"ZSTAGGER_METRICS_PORT": "0"}, cmd=[sys.executable, "-c", CRASHING_CONSUMER])
    crashing.wait_ready()
    enqueue([sample_image_path(tmp_path)], labels=["a"], settings=settings)
    assert crashing.wait_exit(60) == 1, crashing.output()
    assert "forced consumer failure" in crashing.output()


@pytest.fixture
def full_redis(tmp_path):
    """A redis-server that refuses writes once at maxmemory (noeviction), as a full production Redis does."""
    (tmp_path / "full").mkdir()
    server = RedisServer(tmp_path / "full", args=("--maxmemory", "256mb", "--maxmemory-policy", "noeviction")).start()
    yield server
    server.stop()


def test_enqueue_into_a_full_redis_is_all_or_nothing(full_redis, queue_env, workers, tmp_path):
    env = {**queue_env, "ZSTAGGER_REDIS_URL": full_redis.url}
    client = full_redis.client()
    photos = tmp_path / "big"
    photos.mkdir()
    for i in range(12):
        (photos / f"{i:02d}.jpg").write_bytes(os.urandom(300_000))
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 3_000_000)  # room for a few chunks
    refused = cli("enqueue", "--upload", str(photos), "--labels", "a", "--chunk-size", "1", env=env)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "Redis refused writes (out of memory" in refused.stderr and "cannot reach" not in refused.stderr
    assert "Traceback" not in refused.stderr
    assert 0 < client.llen("bulk") < 12  # it failed part way...
    assert list(client.scan_iter("zstagger:job:*")) == []  # ...and the job is gone: nothing can half-finish

    client.config_set("maxmemory", 1)  # now even the job record cannot be written
    refused = cli("enqueue", "--upload", str(photos), "--labels", "a", env=env)
    assert refused.returncode == 2 and "Redis refused writes (out of memory" in refused.stderr
    assert "cannot reach" not in refused.stderr

    client.config_set("maxmemory", 0)
    worker = workers("janitor", {"ZSTAGGER_REDIS_URL": full_redis.url})
    worker.wait_ready()
    wait_for(lambda: client.llen("bulk") == 0 and client.hlen("unacked") == 0, 60, "the orphan chunks to be dropped")
    assert list(client.scan_iter("zstagger:job:*")) == []  # dropped, not tagged into a job that no longer exists
    assert "dropping" in worker.output()
    accepted = cli("enqueue", "--upload", str(photos), "--labels", "a", "--chunk-size", "4", env=env)
    assert accepted.returncode == 0, accepted.stderr
    got = cli("results", accepted.stdout.strip(), "--wait", "--timeout", "60", env=env)
    assert got.returncode == 1 and len(got.stdout.splitlines()) == 12  # random bytes: 12 invalid_image records


def test_an_enqueue_refused_part_way_tags_nothing_even_with_workers_running(full_redis, queue_env, workers, tmp_path):
    """Workers are consuming while an enqueue fills Redis part way: the message says the job was
    rolled back and nothing of it will be tagged, and that is true: no chunk of it was tagged
    (chunks are not worked on before the job is fully written)."""
    env = {**queue_env, "ZSTAGGER_REDIS_URL": full_redis.url}
    client = full_redis.client()
    worker = workers("eager", {"ZSTAGGER_REDIS_URL": full_redis.url}).wait_ready()
    photos = tmp_path / "many"
    write_images(photos, 40)
    padding = tmp_path / "padding"
    padding.mkdir()
    for i in range(10):  # incompressible bytes at the end of the job fill Redis part way through it
        (padding / f"z{i:02d}.jpg").write_bytes(os.urandom(300_000))
    client.config_set("maxmemory", client.info("memory")["used_memory"] + 1_500_000)
    refused = cli("enqueue", "--upload", str(photos), str(padding), "--labels", "a", "--chunk-size", "1", env=env)
    assert refused.returncode == 2 and "rolled back (nothing of it will be tagged)" in refused.stderr, refused.stderr
    job_id = refused.stderr.split("while enqueueing job ")[1].split(";")[0]
    client.config_set("maxmemory", 0)
    try:
        wait_for(lambda: client.llen("bulk") == 0 and client.hlen("unacked") == 0, 60, "the job's chunks to be dropped")
    except AssertionError:
        raise AssertionError(f"bulk {client.llen('bulk')}, unacked {client.hlen('unacked')}:\n{worker.output()[-4000:]}")
    assert list(client.scan_iter(f"zstagger:job:{job_id}*")) == []  # no results were stored for it...
    output = worker.output()
    assert "'tagged': 0" in output and not re.search(r"'tagged': [1-9]", output), output[-3000:]  # ...none was tagged


def test_worker_keeps_running_while_redis_refuses_writes(full_redis, queue_env, workers, slow_server):
    env = {"ZSTAGGER_REDIS_URL": full_redis.url, "ZSTAGGER_VISIBILITY_TIMEOUT": "4", "ZSTAGGER_LOADER_THREADS": "1"}
    worker = workers("squeezed", env).wait_ready()
    client = full_redis.client()
    refs = [f"{slow_server.url}/slow/1.0/oom{i}.png" for i in range(6)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=2, settings=Settings(redis_url=full_redis.url))
    wait_for(lambda: job.status()["state"] == "running", 30, "the worker to start a chunk")
    client.config_set("maxmemory", 1)
    time.sleep(14)  # over three visibility timeouts of refused writes
    assert worker.alive(), worker.output()
    assert "Redis refused writes (out of memory" in worker.output()
    assert job.status()["done"] < 6
    client.config_set("maxmemory", 0)
    results = job.results(wait=True, timeout=90)
    assert [r.image for r in results] == refs and all(r.error is None for r in results)
    assert client.hlen(f"zstagger:job:{job.id}:results") == 6
    assert worker.alive()


def test_results_wait_rides_out_a_redis_outage(redis_server, queue_env, workers, slow_server, settings):
    workers("patient").wait_ready()
    refs = [f"{slow_server.url}/slow/0.3/o{i}.png" for i in range(8)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=2, settings=settings)
    full_env = clean_environ(queue_env)
    waiter = subprocess.Popen(cli_command("results", job.id, "--wait", "--timeout", "120"), env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: job.status()["done"] >= 2, 60, "some progress before the outage")
        redis_server.stop()
        time.sleep(8)
        assert waiter.poll() is None  # still waiting, 8 s into the outage
        redis_server.start()
        out, err = waiter.communicate(timeout=150)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 0, err
    assert [json.loads(line)["image"] for line in out.splitlines()] == refs


def test_each_retry_runs_once_when_backoff_exceeds_the_visibility_timeout(queue_env, workers, slow_server, settings):
    env = {"ZSTAGGER_VISIBILITY_TIMEOUT": "3", "ZSTAGGER_MAX_RETRIES": "3"}
    workers("retrier", env).wait_ready()
    path = f"/status/503/once-{time.time_ns()}.png"
    job = enqueue([slow_server.url + path], labels=["a", "b"], settings=settings)
    result = job.results(wait=True, timeout=90)[0]
    assert result.error.type == "fetch_failed" and "gave up after 4 attempts" in result.error.message
    time.sleep(5)  # a duplicate would be redelivered by now
    assert slow_server.hits[path] == 4  # the first attempt and three retries, each exactly once


def test_relative_paths_are_enqueued_as_absolute_paths(queue_env, workers, tmp_path, settings, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    workers("elsewhere", cwd=tmp_path / "elsewhere").wait_ready()
    write_images(tmp_path / "photos", 2)
    enqueued = cli("enqueue", "photos/img000.jpg", "--labels", "a,b", env=queue_env, cwd=tmp_path)
    assert enqueued.returncode == 0, enqueued.stderr
    got = cli("results", enqueued.stdout.strip(), "--wait", "--timeout", "60", env=queue_env)
    record = json.loads(got.stdout)
    assert got.returncode == 0 and record["error"] is None, got.stdout
    assert record["image"] == str(tmp_path / "photos" / "img000.jpg")
    monkeypatch.chdir(tmp_path / "photos")
    result = enqueue(["./img001.png"], labels=["a", "b"], settings=settings).results(wait=True, timeout=60)[0]
    assert result.error is None and result.image == str(tmp_path / "photos" / "img001.png")


def test_a_worker_that_cannot_reach_redis_says_where_it_looks_and_keeps_trying(tmp_path, tiny_model_dir):
    (tmp_path / "late").mkdir()
    server = RedisServer(tmp_path / "late", password="hunter2-secret")  # not started yet
    env = {"ZSTAGGER_REDIS_URL": server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_METRICS_PORT": "0"}
    worker = Worker("early", env, tmp_path)
    try:
        wait_for(lambda: "ZSTAGGER_REDIS_URL" in worker.output() or not worker.alive(), 60, "a hint about the Redis URL")
        hints = [line for line in worker.output().splitlines() if "ZSTAGGER_REDIS_URL" in line]
        assert len(hints) == 1 and f"redis://:****@127.0.0.1:{server.port}/0" in hints[0], worker.output()
        assert "cannot reach Redis" in hints[0]
        time.sleep(3)
        assert worker.alive()
        server.start()
        worker.wait_ready(90)  # it kept retrying and connected once Redis came up
        assert "hunter2" not in worker.output()
    finally:
        worker.terminate(timeout=20)
        server.stop()


def test_a_large_taxonomy_spec_travels_once_by_hash_not_in_every_chunk(redis_server, queue_env, settings, tmp_path):
    from zstagger import Tagger
    from zstagger.taxonomy import Taxonomy

    def big(version):  # 2,000 labels: some 100 KB of JSON, over what a task message carries inline
        return Taxonomy.parse({"name": "big", "version": version, "labels": [{"name": f"category {i}"} for i in range(2000)]})

    images = write_images(tmp_path / "images", 6)
    client = redis_server.client()
    job = enqueue(images, taxonomy=big("1"), chunk_size=2, top_k=3, settings=settings)
    queued = client.lrange("bulk", 0, -1)
    stored = client.keys("zstagger:spec:*")
    assert len(queued) == 3 and len(stored) == 1 and 0 < client.ttl(stored[0])
    assert all(len(message) < 8000 and b"category 1999" not in message for message in queued)
    assert client.strlen(stored[0]) > 64 * 1024
    # A job whose stored spec is gone (expired early): its inputs say so, one record each.
    gone = enqueue(images[:2], taxonomy=big("2"), settings=settings)
    client.delete(*(set(client.keys("zstagger:spec:*")) - set(stored)))
    with worker_starter(queue_env, tmp_path) as start:
        start("w").wait_ready()
        results = job.results(wait=True, timeout=120)
        lost = gone.results(wait=True, timeout=120)
    assert all(r.error.type == "invalid_taxonomy" and "no longer in Redis" in r.error.message for r in lost), lost
    with Tagger(str(queue_env["ZSTAGGER_MODEL"]), precision="fp32", image_cache=False) as tagger:
        direct = tagger.tag(images, big("1"), top_k=3)
    assert all(r.error is None for r in results)
    assert [r.tags for r in results] == [r.tags for r in direct]
    for got, want in zip(results, direct):  # (batches of another size: float rounding apart)
        assert [s.label for s in got.scores] == [s.label for s in want.scores]
        assert [s.score for s in got.scores] == pytest.approx([s.score for s in want.scores], rel=1e-5)
