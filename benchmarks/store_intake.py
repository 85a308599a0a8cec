"""Intake with the embedding store: throughput with half the images seen before, and with none.

    python benchmarks/store_intake.py --model CKPT/vitb32 --images JPEG_DIR [--backends sqlite,postgresql] [--rounds 2]

In one process, one warm Tagger per configuration (model loaded, taxonomy embedded before
anything is timed), `Tagger.tag` over every JPEG of ``--images`` against ``moderation``:

- ``none``: no store (the baseline);
- ``<backend> 50% seen``: a fresh store that already holds every other image (tagged
  before the clock starts), so half the workload are repeats: hashed, looked up, not
  decoded, not encoded;
- ``<backend> 0% seen``: a fresh, empty store: every image is hashed, looked up, missed,
  encoded and recorded (what the store costs when nothing repeats).

Configurations alternate, ``--rounds`` times; the best round of each counts. Prints one
JSON object with images/s and the process's CPU time per image (which shared cores
disturb much less than wall time), each with its ratio to the baseline of the same run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, options, servers, workload

from zstagger import Tagger
from zstagger.settings import Settings
from zstagger.store import open_store
from zstagger.testing import sample_image


def main() -> None:
    parser = options(__doc__, images=True)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    images = workload(args, (".jpg", ".jpeg"))
    seen_before = images[::2]
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-intake-bench-"))
    warmup = [sample_image(i, (320, 240)) for i in range(8)]  # PIL images: never cached, never recorded
    settings = Settings(model=args.model, cache_dir=str(workdir / "cache"))
    postgres = servers().PostgresServer(durable=True).start() if "postgresql" in args.backends else None
    fresh = iter(range(10**6))

    def new_store(backend: str):
        if backend == "sqlite":
            return open_store(f"sqlite:///{workdir}/store-{next(fresh)}.sqlite3")
        import psycopg

        name = f"intake{next(fresh)}"
        with psycopg.connect(postgres.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        store = open_store(postgres.url.rsplit("/", 1)[0] + "/" + name)
        store.migrate()
        return store

    def measure(store, preload: list[str]) -> float:
        with Tagger(settings=settings, image_cache=store if store is not None else False) as tagger:
            tagger.tag(warmup, taxonomy="moderation")  # model loaded, taxonomy embedded, pools started
            if preload:
                tagger.tag(preload, taxonomy="moderation")
            started, cpu = time.perf_counter(), time.process_time()
            results = tagger.tag(images, taxonomy="moderation")
            seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert all(r.ok for r in results) and tagger.unrecorded == 0
            if store is not None:
                hits = tagger.cache_stats()["hits"]
                assert hits == len(preload), (hits, len(preload))  # the repeats, and nothing else, were found
        if store is not None:
            store.close()
        return len(images) / seconds, 1000 * cpu / len(images)

    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load = []
    try:
        for _ in range(args.rounds):
            load.append(round(os.getloadavg()[0], 2))
            runs = [("none", None, [])]
            for backend in args.backends.split(","):
                runs += [(f"{backend} 50% seen", backend, seen_before), (f"{backend} 0% seen", backend, [])]
            for name, backend, preload in runs:
                rate, ms = measure(new_store(backend) if backend else None, preload)
                best[name] = max(best.get(name, 0.0), rate)
                cpu[name] = min(cpu.get(name, float("inf")), ms)
                print(f"{name}: {rate:.1f} images/s, {ms:.1f} CPU-ms/image", file=sys.stderr, flush=True)
    finally:
        if postgres is not None:
            postgres.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    base = best["none"]
    report = {
        "images": len(images), "repeats_in_the_50%_runs": len(seen_before), "model": args.model,
        "precision": settings.precision, "rounds": args.rounds, "load_average_at_each_round": load,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "throughput_vs_no_store": {k: round(v / base, 3) for k, v in best.items() if k != "none"},
        "cpu_ms_per_image": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_vs_no_store": {k: round(v / cpu["none"], 3) for k, v in cpu.items() if k != "none"},
    }
    emit(report)


if __name__ == "__main__":
    main()
