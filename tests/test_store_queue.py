"""The embedding store under real `zstagger worker`s: a worker killed after recording a chunk, a
PostgreSQL restarted mid-job, a store that stays down, intake hits in job status and metrics,
and a re-tag saved as a job that `zstagger results` serves."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from harness import clean_environ, free_port, wait_for, worker_starter

from zstagger.queue import enqueue
from zstagger.store.postgres import CONNECT_WAIT
from zstagger.settings import Settings
from zstagger.store import open_store
from zstagger.testing import sample_image


@pytest.fixture
def pg_url(postgres, request):
    import psycopg

    name = re.sub(r"\W", "_", request.node.name)[:40].lower()
    with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = postgres.url.rsplit("/", 1)[0] + "/" + name
    open_store(url).migrate()
    return url


@pytest.fixture
def queue_env(redis_server, tiny_model_dir, tmp_path):
    return {
        "ZSTAGGER_REDIS_URL": redis_server.url,
        "ZSTAGGER_MODEL": str(tiny_model_dir),
        "ZSTAGGER_PRECISION": "fp32",
        "ZSTAGGER_ALLOW_PRIVATE_URLS": "1",
        "ZSTAGGER_URL_TIMEOUT": "5",
        "ZSTAGGER_VISIBILITY_TIMEOUT": "14",
        "ZSTAGGER_MAX_RETRIES": "1",
        "ZSTAGGER_METRICS_PORT": "0",
        "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"),
    }


@pytest.fixture
def workers(queue_env, tmp_path):
    with worker_starter(queue_env, tmp_path) as start:
        yield start


def settings_for(queue_env, **extra):
    return Settings(**{k.removeprefix("ZSTAGGER_").lower(): v for k, v in {**queue_env, **extra}.items()})


def job_rows(url, job_id):
    store = open_store(url)
    try:
        model = store.models()[0] if store.models() else None
        return [] if model is None else [r for b in store.iter_images(model.id, job_id=job_id) for r in b.references]
    finally:
        store.close()


def cli(*args, env, timeout=180):
    exe = shutil.which("zstagger")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]
    full_env = clean_environ()
    full_env.update(env)
    return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


def test_a_worker_killed_after_recording_its_chunk_leaves_one_row_per_image(redis_server, pg_url, queue_env, workers,
                                                                             slow_server):
    env = {"ZSTAGGER_STORE": pg_url, "ZSTAGGER_LOADER_THREADS": "1"}
    settings = settings_for(queue_env, ZSTAGGER_STORE=pg_url)
    refs = [f"{slow_server.url}/slow/0.4/kill{i}.png" for i in range(5)]
    victim = workers("victim", env).wait_ready()
    job = enqueue(refs, labels=["a", "b"], chunk_size=5, settings=settings)
    wait_for(lambda: slow_server.hits.get("/slow/0.4/kill0.png"), 30, "the victim to start fetching")
    # Redis refuses writes from now on: the victim tags the chunk and records it in the store, then
    # cannot save its results and waits for Redis. Killed then, it leaves the chunk to be redelivered.
    client = redis_server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        wait_for(lambda: len(job_rows(pg_url, job.id)) == 5, 60, "the chunk recorded in the store")
        wait_for(lambda: "Redis refused writes" in victim.output(), 30, "the victim to fail saving its results")
        victim.kill9()
    finally:
        client.config_set("maxmemory", 0)
    assert job.status()["done"] == 0  # no result reached Redis: the chunk is redelivered whole
    rescuer = workers("rescuer", env).wait_ready()
    results = job.results(wait=True, timeout=120)
    assert [r.image for r in results] == refs and all(r.error is None for r in results)
    rows = job_rows(pg_url, job.id)
    assert sorted(rows) == sorted(refs)  # the redelivered chunk rewrote the same rows: exactly one per image
    status = job.status()
    assert status["state"] == "done" and status["cache_hits"] == 5  # the rescuer found every embedding stored
    assert "not recorded" not in rescuer.output()  # its write of the same rows succeeded (an upsert, not a conflict)


def test_postgres_restarted_mid_job_loses_nothing(postgres, pg_url, queue_env, workers, slow_server):
    settings = settings_for(queue_env, ZSTAGGER_STORE=pg_url)
    worker = workers("steady", {"ZSTAGGER_STORE": pg_url}).wait_ready()
    # Enough slow images that the job is still running (and looking images up) while the server is down.
    refs = [f"{slow_server.url}/slow/0.5/restart{i}.png" for i in range(32)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=2, settings=settings)
    wait_for(lambda: len(job_rows(pg_url, job.id)) >= 4, 60, "some images recorded before the restart")
    postgres.stop()
    # Down for several times what the connection pool waits for a connection (CONNECT_WAIT): the
    # writes meanwhile fail in the pool, and only the store's own retry (ZSTAGGER_STORE_TIMEOUT,
    # 20 s) lands them. (An outage shorter than the pool's wait never reaches the retry.)
    time.sleep(4 * CONNECT_WAIT)
    postgres.start()
    results = job.results(wait=True, timeout=180)
    assert [r.image for r in results] == refs and all(r.error is None for r in results)
    assert sorted(job_rows(pg_url, job.id)) == sorted(refs)  # every image recorded, once
    log = worker.output()
    assert "answers again" in log and "not recorded" not in log  # the worker met the outage and waited it out


def test_a_store_that_stays_down_loses_no_result_and_counts_what_it_missed(postgres, pg_url, queue_env, workers,
                                                                          slow_server):
    port = free_port()
    env = {"ZSTAGGER_STORE": pg_url, "ZSTAGGER_STORE_TIMEOUT": "2", "ZSTAGGER_METRICS_PORT": str(port)}
    settings = settings_for(queue_env, ZSTAGGER_STORE=pg_url)
    worker = workers("patient", env).wait_ready()
    refs = [f"{slow_server.url}/slow/0.2/down{i}.png" for i in range(12)]
    job = enqueue(refs, labels=["a", "b"], chunk_size=2, settings=settings)
    wait_for(lambda: len(job_rows(pg_url, job.id)) >= 2, 60, "some images recorded")
    postgres.stop()
    try:
        results = job.results(wait=True, timeout=180)
        assert [r.image for r in results] == refs and all(r.error is None for r in results)  # every result saved
        log = worker.output()
        missed = sum(int(n) for n in re.findall(rf"embedding store: (\d+) images tagged but not recorded \(job {job.id}\)", log))
        assert missed >= 2
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        counted = re.search(r"^zstagger_store_unrecorded_images_total (\S+)$", metrics, re.MULTILINE)
        assert counted and float(counted.group(1)) == missed
    finally:
        postgres.start()
    assert len(job_rows(pg_url, job.id)) == len(refs) - missed


def test_job_status_and_metrics_count_intake_hits(queue_env, workers, tmp_path):
    port = free_port()
    url = f"sqlite:///{tmp_path}/store.sqlite3"  # the embedded store, shared by the worker's processes
    env = {"ZSTAGGER_STORE": url, "ZSTAGGER_METRICS_PORT": str(port)}
    settings = settings_for(queue_env, ZSTAGGER_STORE=url)
    (tmp_path / "img").mkdir()
    paths = []
    for i in range(6):
        sample_image(i, (70, 50)).save(tmp_path / "img" / f"{i}.png")
        paths.append(str(tmp_path / "img" / f"{i}.png"))
    workers("hits", env, ).wait_ready()
    first = enqueue(paths, labels=["a", "b"], chunk_size=4, settings=settings)
    first.wait(timeout=90)
    second = enqueue([*paths, paths[0]], labels=["a", "b"], chunk_size=4, settings=settings)
    second.wait(timeout=90)
    assert first.status()["cache_hits"] == 0 and second.status()["cache_hits"] == 7
    assert [r.model_dump() for r in second.results()[:6]] == [r.model_dump() for r in first.results()]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert re.search(r"^zstagger_image_cache_hits_total 7\.0$", metrics, re.MULTILINE)
    assert re.search(r"^zstagger_image_cache_misses_total 6\.0$", metrics, re.MULTILINE)

    # The second job re-tagged from the store, as a job of its own that `zstagger results` serves.
    cli_env = {**queue_env, "ZSTAGGER_STORE": url}
    retagged = cli("retag", "--labels", "a,b", "--job", second.id, "--format", "jsonl", env=cli_env)
    as_job = cli("retag", "--labels", "a,b", "--job", second.id, "--as-job", env=cli_env)
    assert retagged.returncode == as_job.returncode == 0, as_job.stderr
    new_id = as_job.stdout.strip()
    served = cli("results", new_id, env=cli_env)
    assert served.returncode == 0 and served.stdout == retagged.stdout
    # one row per (job, reference), in the order they were first recorded (chunks as they finished, each in input order)
    images = [json.loads(line)["image"] for line in served.stdout.splitlines()]
    assert sorted(images) == sorted(paths) and images == job_rows(url, second.id)
    status = json.loads(cli("status", new_id, env=cli_env).stdout)
    assert (status["state"], status["total"], status["done"]) == ("done", 6, 6)
