"""Queue overhead: one worker's end-to-end throughput vs `Tagger.tag` in process, in one run.

    python benchmarks/queue_throughput.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation]

Starts a private redis-server on a free loopback port and one `zstagger worker`
(concurrency 1, all cores), warms both paths up (model loaded, taxonomy embedded), then:

- enqueue rate: images/s one producer enqueues (paths; the job is deleted unprocessed);
- in-process: `Tagger.tag` on the images;
- queue: enqueue the same images and wait for every result.

Prints one JSON object. Nothing else may be running: both paths share the same cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit, free_port, options, workload


def main() -> None:
    parser = options(__doc__, images=True, taxonomy=True)
    parser.add_argument("--enqueue-count", type=int, default=20000, help="references in the enqueue-rate job")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the images per measurement")
    args = parser.parse_args()

    images = workload(args)
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-bench-"))
    port = free_port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    env = {**os.environ, "ZSTAGGER_REDIS_URL": f"redis://127.0.0.1:{port}/0", "ZSTAGGER_MODEL": args.model}
    os.environ.update({k: v for k, v in env.items() if k.startswith("ZSTAGGER_")})
    log = open(workdir / "worker.log", "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "zstagger.cli", "worker", "--concurrency", "1", "-n", "bench@%h"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        from zstagger import Tagger
        from zstagger.queue import enqueue
        from zstagger.settings import Settings

        settings = Settings()
        while "zstagger: loaded" not in (workdir / "worker.log").read_text():
            if worker.poll() is not None:
                raise SystemExit((workdir / "worker.log").read_text())
            time.sleep(0.2)

        # Enqueue rate (paths only; the job is then deleted so no worker time is spent on it).
        refs = [images[i % len(images)] for i in range(args.enqueue_count)]
        start = time.perf_counter()
        job = enqueue(refs, taxonomy=args.taxonomy, queue="rate-probe", settings=settings)
        enqueue_seconds = time.perf_counter() - start
        job.store.redis.delete("rate-probe", *job.store.keys(job.id))

        # Warm-up of the worker: model loaded already; this computes the taxonomy embeddings.
        enqueue(images[:4], taxonomy=args.taxonomy, settings=settings).wait(timeout=600)
        work = images * args.repeat
        start = time.perf_counter()
        enqueue(work, taxonomy=args.taxonomy, settings=settings).wait(timeout=3600, poll=0.05)
        queue_seconds = time.perf_counter() - start

        # In-process, after the worker has gone idle (the worker's threads then sleep in BRPOP).
        tagger = Tagger(args.model)
        tagger.tag(images[:4], taxonomy=args.taxonomy)
        start = time.perf_counter()
        tagger.tag(work, taxonomy=args.taxonomy)
        direct_seconds = time.perf_counter() - start
        tagger.close()

        report = {
            "images": len(work),
            "enqueue_images_per_s": round(args.enqueue_count / enqueue_seconds),
            "in_process_images_per_s": round(len(work) / direct_seconds, 2),
            "queue_one_worker_images_per_s": round(len(work) / queue_seconds, 2),
            "queue_vs_in_process": round(direct_seconds / queue_seconds, 3),
            "precision": settings.precision,
            "chunk_size": settings.chunk_size,
        }
        emit(report)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(60)
        redis_proc.terminate()
        redis_proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
