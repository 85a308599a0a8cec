"""What recording into the embedding store costs on the queue path: one worker, with and without a store.

    python benchmarks/store_queue_overhead.py --model CKPT/vitb32 --images JPEG_DIR [--store postgresql|sqlite] [--rounds 2]

Starts a private redis-server (and, for ``--store postgresql``, a PostgreSQL cluster with its
default durability), then alternates runs of one `zstagger worker` (concurrency 1) without
a store and with a fresh, empty one: each run enqueues every JPEG of ``--images`` (paths)
against ``moderation`` and waits for the job. With an empty store every image is hashed,
looked up, missed, encoded and recorded (one write per chunk), so this is the whole price
of the store when nothing repeats. The worker is warmed up (model loaded, taxonomy
embedded) on other images before each timed job. Prints one JSON object; the best run of
each configuration counts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness import PostgresServer, RedisServer, Worker

from zstagger.queue import enqueue
from zstagger.settings import Settings
from zstagger.store import open_store
from zstagger.testing import sample_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    images = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-queue-store-bench-"))
    warmup = []
    for i in range(8):
        path = workdir / f"warmup-{i}.jpg"
        sample_image(i, (640, 480)).save(path)
        warmup.append(str(path))
    redis = RedisServer(workdir).start()
    postgres = PostgresServer(durable=True).start() if args.store == "postgresql" else None
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

    def run(store_url: str) -> float:
        worker = Worker(f"bench{next(counter)}", {**env, "ZSTAGGER_STORE": store_url}, workdir)
        try:
            worker.wait_ready(300)
            enqueue(warmup, taxonomy="moderation", settings=settings).wait(timeout=600)
            started = time.perf_counter()
            job = enqueue(images, taxonomy="moderation", settings=settings)
            status = job.wait(timeout=3600, poll=0.05)
            seconds = time.perf_counter() - started
            assert status["done"] == len(images), status
            if store_url:
                assert status["cache_hits"] == 0 and "not recorded" not in worker.output()
                store = open_store(store_url)
                recorded = store.stats()["images"]
                store.close()
                assert recorded == len(images) + len(warmup), recorded
            return len(images) / seconds
        finally:
            worker.terminate(60)

    best = {"no store": 0.0, f"{args.store} store": 0.0}
    load = []
    try:
        for _ in range(args.rounds):
            load.append(round(os.getloadavg()[0], 2))
            for name in list(best):
                rate = run(fresh_store() if name != "no store" else "")
                best[name] = max(best[name], rate)
                print(f"{name}: {rate:.1f} images/s", file=sys.stderr, flush=True)
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
        "store_overhead": round(1 - best[f"{args.store} store"] / base, 4),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
