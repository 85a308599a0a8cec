"""Finished jobs notify their owners: signed webhook events (at least once, stable event ids),
on-done Celery tasks, and cancellation. Real redis-server, real workers, a real receiver."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from harness import WebhookReceiver, clean_environ, wait_for, worker_starter
from zstagger import ConfigurationError, verify_webhook
from zstagger.queue import Job, enqueue
from zstagger.queue.signing import InvalidSignatureError, sign, signed_headers
from zstagger.settings import Settings
from zstagger.testing import sample_image

SECRET = "s3cret-for-tests"


@pytest.fixture
def env(redis_server, tiny_model_dir):
    return {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
            "ZSTAGGER_WEBHOOK_SECRET": SECRET, "ZSTAGGER_ALLOW_PRIVATE_URLS": "1", "ZSTAGGER_VISIBILITY_TIMEOUT": "6",
            "ZSTAGGER_METRICS_PORT": "0"}


@pytest.fixture
def settings(env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture
def workers(env, tmp_path):
    with worker_starter(env, tmp_path) as start:
        yield start


def images(directory, count):
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"w{i}.png"
        sample_image(i, (64, 48)).save(path)
        paths.append(str(path))
    return paths


# -- signing, on its own ------------------------------------------------------------------


def test_signatures_verify_and_tampering_is_refused():
    body = b'{"id":"evt_x_done"}'
    headers = signed_headers(SECRET, "evt_x_done", body, now=1_000_000)
    assert verify_webhook(SECRET, headers, body, now=1_000_010) == "evt_x_done"
    assert verify_webhook(SECRET, {k.lower(): v for k, v in headers.items()}, body, now=1_000_010) == "evt_x_done"
    for bad_secret, bad_body, now, words in [
        ("other", body, 1_000_010, "does not match"),
        (SECRET, body + b" ", 1_000_010, "does not match"),
        (SECRET, body, 1_000_000 + 3600, "replayed"),
    ]:
        with pytest.raises(InvalidSignatureError, match=words):
            verify_webhook(bad_secret, headers, bad_body, now=now)
    with pytest.raises(InvalidSignatureError, match="missing"):
        verify_webhook(SECRET, {}, body)
    with pytest.raises(InvalidSignatureError, match="whole number"):
        verify_webhook(SECRET, {**headers, "Zstagger-Timestamp": "1_000_000"}, body, now=1_000_010)
    # The scheme the README documents, computed independently: the id, the timestamp and the body.
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"evt_x_done.1000000." + body, hashlib.sha256).hexdigest()
    assert headers["Zstagger-Signature"] == f"v2={expected}" == sign(SECRET, "evt_x_done", 1_000_000, body)
    rotated = dict(headers, **{"Zstagger-Signature": "v2=" + "0" * 64 + "," + headers["Zstagger-Signature"]})
    assert verify_webhook(SECRET, rotated, body, now=1_000_010) == "evt_x_done"


def test_a_delivery_replayed_under_a_new_event_id_is_refused():
    """The id is signed: a captured delivery sent again with another Zstagger-Event-Id (to get
    past a receiver's de-duplication) fails verification, whatever else is kept."""
    body = b'{"id":"evt_abc_done","type":"job.done"}'
    captured = signed_headers(SECRET, "evt_abc_done", body, now=1_000_000)
    for forged_id in ("evt_abc_done2", "evt_other_done", "EVT_ABC_DONE"):
        replayed = {**captured, "Zstagger-Event-Id": forged_id}
        with pytest.raises(InvalidSignatureError, match="event id was changed"):
            verify_webhook(SECRET, replayed, body, now=1_000_010)
    with pytest.raises(InvalidSignatureError, match="not an event id"):
        verify_webhook(SECRET, {**captured, "Zstagger-Event-Id": "evt.1000000"}, body, now=1_000_010)
    assert verify_webhook(SECRET, captured, body, now=1_000_010) == "evt_abc_done"


def test_callback_urls_are_checked_at_enqueue(redis_server, settings, tmp_path):
    path = images(tmp_path / "i", 1)
    with pytest.raises(ConfigurationError, match="non-public address"):
        enqueue(path, labels=["a"], callback_url="http://169.254.169.254/hook",
                settings=Settings(redis_url=redis_server.url, webhook_secret=SECRET, allow_private_urls=False))
    with pytest.raises(ConfigurationError, match="ZSTAGGER_WEBHOOK_SECRET"):
        enqueue(path, labels=["a"], callback_url="http://127.0.0.1:9/hook",
                settings=Settings(redis_url=redis_server.url, allow_private_urls=True, webhook_secret=None))
    with pytest.raises(ConfigurationError, match="not an http"):
        enqueue(path, labels=["a"], callback_url="ftp://example.com/x", settings=settings)
    assert redis_server.client().dbsize() == 0  # refused before anything was written


# -- delivery through real workers -------------------------------------------------------


def test_a_finished_job_posts_one_signed_event_with_its_results(settings, workers, tmp_path):
    receiver = WebhookReceiver(SECRET, answers=(500, 503))  # two failures first: delivered on the third attempt
    try:
        workers("hooks").wait_ready()
        paths = images(tmp_path / "i", 5)
        job = enqueue(paths, labels=["a", "b"], chunk_size=2, callback_url=receiver.url, settings=settings)
        job.wait(timeout=60)
        wait_for(lambda: receiver.events, 60, "the webhook event")
        time.sleep(1.0)
        event = receiver.events[f"evt_{job.id}_done"]
        assert event["type"] == "job.done" and event["job_id"] == job.id
        assert event["status"] == {"job_id": job.id, "state": "done", "total": 5, "done": 5, "failed": 0, "pending": 0}
        assert event["results_inline"] and [r["image"] for r in event["results"]] == paths
        assert [r.to_json() for r in job.results()] == [json.dumps(r, ensure_ascii=False, separators=(",", ":"))
                                                          for r in event["results"]]
        assert [d["answer"] for d in receiver.deliveries] == [500, 503, 200] and all(d["valid"] for d in receiver.deliveries)
        assert job.status()["webhook"] == {"attempts": 3, "delivered": True, "last_error": None}
    finally:
        receiver.close()


def test_a_callback_the_workers_policy_refuses_is_not_retried(settings, env, workers, tmp_path):
    """The producer allows a loopback callback, the worker does not (ZSTAGGER_ALLOW_PRIVATE_URLS is
    read where the delivery is made): one attempt, recorded as a permanent refusal, no retries."""
    receiver = WebhookReceiver(SECRET)
    try:
        worker = workers("strict", {"ZSTAGGER_ALLOW_PRIVATE_URLS": "0"}).wait_ready()
        job = enqueue(images(tmp_path / "i", 1), labels=["a"], callback_url=receiver.url, settings=settings)
        job.wait(timeout=60)
        wait_for(lambda: job.status().get("webhook", {}).get("attempts"), 60, "the delivery attempt")
        time.sleep(5)  # a retry would come after 2 s (the backoff, capped by the visibility timeout of 6 s)
        webhook = job.status()["webhook"]
        assert webhook["attempts"] == 1 and webhook["delivered"] is False, webhook
        assert "permanent: not retried" in webhook["last_error"] and "ZSTAGGER_ALLOW_PRIVATE_URLS" in webhook["last_error"]
        assert receiver.deliveries == []
        assert "attempt 2 in" not in worker.output()
    finally:
        receiver.close()


def test_the_event_survives_the_worker_that_delivers_it_being_killed(settings, workers, tmp_path):
    """The receiver holds the first delivery while the worker is killed: the delivery task is
    redelivered to another worker, the event arrives again with the same id, and the receiver
    processes it once."""
    receiver = WebhookReceiver(SECRET, hold=4.0)
    try:
        victim = workers("victim").wait_ready()
        job = enqueue(images(tmp_path / "i", 2), labels=["a", "b"], callback_url=receiver.url, settings=settings)
        job.wait(timeout=60)
        assert receiver.first_request.wait(30), "the event was never delivered"
        victim.kill9()  # while the receiver holds its first delivery
        workers("rescuer").wait_ready()
        wait_for(lambda: len([d for d in receiver.deliveries if d["answer"] == 200]) >= 2, 90,
                 "the event to be delivered again after the kill")
        assert set(receiver.events) == {f"evt_{job.id}_done"}  # processed once
        assert all(d["event_id"] == f"evt_{job.id}_done" and d["valid"] for d in receiver.deliveries)
    finally:
        receiver.close()


def test_a_worker_killed_mid_job_still_ends_in_one_event(settings, env, workers, tmp_path):
    """The worker holding the job's last chunk is killed: the chunk is redelivered, the
    rescuer finishes the job and sends its event; the receiver sees one event id."""
    from harness import SlowImageServer

    images_server = SlowImageServer()
    receiver = WebhookReceiver(SECRET)
    try:
        victim = workers("victim", {"ZSTAGGER_LOADER_THREADS": "1", "ZSTAGGER_VISIBILITY_TIMEOUT": "14"}).wait_ready()
        refs = [f"{images_server.url}/slow/1.0/m{i}.png" for i in range(3)]
        job = enqueue(refs, labels=["a", "b"], chunk_size=3, callback_url=receiver.url, settings=settings)
        wait_for(lambda: job.status()["state"] == "running", 30, "the victim to start the chunk")
        time.sleep(0.5)
        victim.kill9()
        workers("rescuer", {"ZSTAGGER_VISIBILITY_TIMEOUT": "14"}).wait_ready()
        assert job.wait(timeout=90)["done"] == 3
        wait_for(lambda: receiver.events, 60, "the event")
        time.sleep(2.0)  # room for a duplicate delivery, if any
        assert set(receiver.events) == {f"evt_{job.id}_done"}
        assert all(d["valid"] and d["event_id"] == f"evt_{job.id}_done" for d in receiver.deliveries)
    finally:
        receiver.close()
        images_server.close()


def test_cancelling_skips_unstarted_chunks_and_notifies(settings, env, workers, tmp_path):
    receiver = WebhookReceiver(SECRET)
    try:
        paths = images(tmp_path / "i", 6)
        job = enqueue(paths, labels=["a", "b"], chunk_size=2, callback_url=receiver.url, settings=settings)
        exe = shutil.which("zstagger")
        cmd = [exe] if exe else [sys.executable, "-m", "zstagger.cli"]
        clean = clean_environ()
        cancelled = subprocess.run([*cmd, "cancel", job.id], env={**clean, **env}, capture_output=True, text=True, timeout=60)
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["state"] == "cancelled"
        worker = workers("late").wait_ready()  # starts after the cancel: every chunk is skipped
        wait_for(lambda: worker.output().count("was cancelled; skipping") >= 3, 60, "the chunks to be skipped")
        # The event is delivered by a task of its own, which may run after the skips under load.
        wait_for(lambda: job.status().get("webhook", {}).get("delivered"), 60, "the cancelled event to be delivered")
        assert job.status() == {"job_id": job.id, "state": "cancelled", "total": 6, "done": 0, "failed": 0, "pending": 6,
                                "webhook": {"attempts": 1, "delivered": True, "last_error": None}}
        assert receiver.events[f"evt_{job.id}_cancelled"]["type"] == "job.cancelled"
        results = subprocess.run([*cmd, "results", job.id, "--wait", "--timeout", "5"], env={**clean, **env},
                                 capture_output=True, text=True, timeout=60)
        assert results.returncode == 3 and "cancelled" in results.stderr  # not finished, and says why
        assert Job(job.id, settings).cancel()["state"] == "cancelled"  # cancelling again changes nothing
    finally:
        receiver.close()


def test_a_done_job_is_not_cancelled(settings, workers, tmp_path):
    workers("w").wait_ready()
    job = enqueue(images(tmp_path / "i", 1), labels=["a"], settings=settings)
    job.wait(timeout=60)
    assert job.cancel()["state"] == "done"


def test_python_producers_get_an_on_done_celery_task(settings, env, redis_server, workers, tmp_path):
    """A producer's own Celery app, consuming its own queue, is sent (job_id, status)."""
    app_dir = tmp_path / "producer_app"
    app_dir.mkdir()
    (app_dir / "producer_tasks.py").write_text(
        "import json, os, redis\n"
        "from celery import Celery\n"
        "app = Celery('producer', broker=os.environ['BROKER'])\n"
        "app.conf.update(accept_content=['json'], task_serializer='json')\n"
        "@app.task(name='producer.job_finished')\n"
        "def job_finished(job_id, status):\n"
        "    redis.Redis.from_url(os.environ['BROKER']).rpush('finished', json.dumps([job_id, status]))\n"
    )
    clean = clean_environ()
    consumer = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "producer_tasks", "worker", "-Q", "producer-events", "--pool", "solo",
         "--loglevel", "WARNING"], cwd=app_dir, env={**clean, "BROKER": redis_server.url, "PYTHONPATH": str(app_dir)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        workers("w").wait_ready()
        job = enqueue(images(tmp_path / "i", 3), labels=["a"], on_done="producer.job_finished",
                      on_done_queue="producer-events", settings=settings)
        client = redis_server.client()
        got = wait_for(lambda: client.lpop("finished"), 60, "the on-done task to run")
        job_id, status = json.loads(got)
        assert job_id == job.id and status["state"] == "done" and status["total"] == 3
    finally:
        consumer.terminate()
        consumer.wait(20)
