"""What recording into the embedding store costs on the queue path: one worker, with and without a store.

    python benchmarks/store_queue_overhead.py --model CKPT/vitb32 --images JPEG_DIR [--store postgresql|sqlite] [--rounds 2]

Starts a private redis-server (and, for ``--store postgresql``, a PostgreSQL cluster with its
default durability), then alternates runs of one `zstagger worker` (concurrency 1) without
a store and with a fresh, empty one: each run enqueues every JPEG of ``--images`` (paths)
against ``moderation`` and waits for the job. With an empty store every image is hashed,
looked up, missed, encoded and recorded (one write per chunk), so this is the whole price
of the store when nothing repeats. The worker is warmed up (model loaded, taxonomy
embedded) on other images before each timed job. Prints one JSON object: the best run of
each configuration (wall-clock images/s), and the CPU time the worker's processes (and the
PostgreSQL server's) spent per image, which shared cores disturb much less than wall time.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, options, servers, workload

from zstagger.queue import enqueue
from zstagger.settings import Settings
from zstagger.store import open_store
from zstagger.testing import sample_image


def cpu_seconds(group: int | None = None, user: int | None = None) -> float:
    """CPU time (user + system) of the live processes of a process group, or of a user's processes."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            owner = stat.parent.stat().st_uid
        except OSError:
            continue
        if (group is not None and int(fields[2]) == group) or (user is not None and owner == user):
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def store_work_ms(images: list[str], store_url: str, chunk: int = 32) -> dict[str, float]:
    """What the store adds per image on a worker, measured alone: reading and hashing the
    file, one lookup that misses, and a share of one write per chunk (CPU ms per image)."""
    import hashlib

    import numpy as np

    from zstagger.embedding_cache import EmbeddingKey, ImageSighting
    from zstagger.embedding_cache.images import to_fp16

    store = open_store(store_url)
    rng = np.random.default_rng(0)
    keys, started = [], time.process_time()
    for path in images:
        keys.append(EmbeddingKey(hashlib.sha256(Path(path).read_bytes()).hexdigest(), "bench", "fast"))
    hashing = time.process_time() - started
    started = time.process_time()
    for key in keys:
        assert not store.get_many([key])
    lookup = time.process_time() - started
    vectors = rng.standard_normal((len(keys), 512), dtype=np.float32)
    started = time.process_time()
    for start in range(0, len(keys), chunk):
        sightings = [ImageSighting(k, images[i], "0" * 32, vectors[i]) for i, k in enumerate(keys[start:start + chunk], start)]
        assert store.record(sightings, "bench") == 0
        normalize_like = to_fp16(vectors[start:start + chunk]).astype(np.float32)  # the rounding the tagger adds
        del normalize_like
    write = time.process_time() - started
    store.close()
    n = len(images)
    return {"read_and_hash": round(1000 * hashing / n, 3), "lookup": round(1000 * lookup / n, 3),
            "write": round(1000 * write / n, 3), "total": round(1000 * (hashing + lookup + write) / n, 3)}


def main() -> None:
    parser = options(__doc__, images=True)
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    harness = servers()

    images = workload(args, (".jpg", ".jpeg"))
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-queue-store-bench-"))
    warmup = []
    for i in range(8):
        path = workdir / f"warmup-{i}.jpg"
        sample_image(i, (640, 480)).save(path)
        warmup.append(str(path))
    redis = harness.RedisServer(workdir).start()
    postgres = harness.PostgresServer(durable=True).start() if args.store == "postgresql" else None
    env = {"ZSTAGGER_REDIS_URL": redis.url, "ZSTAGGER_MODEL": args.model, "ZSTAGGER_METRICS_PORT": "0",
           "ZSTAGGER_CACHE_DIR": str(workdir / "cache")}
    settings = Settings(redis_url=redis.url, model=args.model)
    counter = iter(range(10**6))

    def fresh_store() -> str:
        n = next(counter)
        if postgres is None:
            return f"sqlite:///{workdir}/store-{n}.sqlite3"
        import psycopg

        with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE run{n}")
        url = postgres.url.rsplit("/", 1)[0] + f"/run{n}"
        open_store(url).migrate()
        return url

    pg_user = pwd.getpwnam("nobody").pw_uid if postgres is not None and os.geteuid() == 0 else None

    def run(store_url: str) -> tuple[float, float, float]:
        worker = harness.Worker(f"bench{next(counter)}", {**env, "ZSTAGGER_STORE": store_url}, workdir)
        try:
            worker.wait_ready(300)
            enqueue(warmup, taxonomy="moderation", settings=settings).wait(timeout=600)
            cpu, pg_cpu = cpu_seconds(group=worker.proc.pid), cpu_seconds(user=pg_user) if pg_user is not None else 0.0
            started = time.perf_counter()
            job = enqueue(images, taxonomy="moderation", settings=settings)
            status = job.wait(timeout=3600, poll=0.05)
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(group=worker.proc.pid) - cpu
            pg_cpu = (cpu_seconds(user=pg_user) - pg_cpu) if pg_user is not None else 0.0
            assert status["done"] == len(images), status
            if store_url:
                assert status["cache_hits"] == 0 and "not recorded" not in worker.output()
                store = open_store(store_url)
                recorded = store.stats()["images"]
                store.close()
                assert recorded == len(images) + len(warmup), recorded
            return len(images) / seconds, 1000 * cpu / len(images), 1000 * pg_cpu / len(images)
        finally:
            worker.terminate(60)

    best = {"no store": 0.0, f"{args.store} store": 0.0}
    cpu: dict[str, list[float]] = {name: [] for name in best}
    server: list[float] = []
    load = []
    try:
        for _ in range(args.rounds):
            load.append(round(os.getloadavg()[0], 2))
            for name in list(best):
                rate, ms, pg_ms = run(fresh_store() if name != "no store" else "")
                best[name] = max(best[name], rate)
                cpu[name].append(ms)
                if name != "no store":
                    server.append(pg_ms)
                print(f"{name}: {rate:.1f} images/s, worker CPU {ms:.1f} ms/image, database {pg_ms:.2f} ms/image",
                      file=sys.stderr, flush=True)
        work = store_work_ms(images, fresh_store())
    finally:
        redis.stop()
        if postgres is not None:
            postgres.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    base = best["no store"]
    report = {
        "images": len(images), "model": args.model, "chunk_size": settings.chunk_size, "rounds": args.rounds,
        "load_average_at_each_round": load,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "store_overhead_wall": round(1 - best[f"{args.store} store"] / base, 4),
        "worker_cpu_ms_per_image": {k: round(min(v), 2) for k, v in cpu.items()},
        "store_overhead_worker_cpu": round(min(cpu[f"{args.store} store"]) / min(cpu["no store"]) - 1, 4),
        "database_cpu_ms_per_image": round(min(server), 3) if server else None,
        "store_work_cpu_ms_per_image": work,
        "store_work_vs_worker_cpu": round(work["total"] / min(cpu["no store"]), 4),
    }
    emit(report)


if __name__ == "__main__":
    main()
