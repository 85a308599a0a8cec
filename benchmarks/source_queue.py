"""An S3 prefix of 10,000 objects through two real workers, one killed mid-job: every result
exactly once, listing-page chunks redelivered (not duplicated), one sink file per chunk.

    python benchmarks/source_queue.py --model CHECKPOINT_DIR [--objects 10000] [--page 256]

Starts moto's S3 server and a redis-server on loopback, uploads ``--objects`` small JPEGs
under ``s3://jobs/in/``, starts a worker, enqueues the prefix with ``--sink
s3://jobs/results/``, kills the worker (SIGKILL, its process group) once some chunks are
stored, starts two more, and waits. Then checks: results in key order, each input once,
none failed; the sink holds one file per listed page and every index exactly once. Reports
the wall time of the job and of the listing, and the check's verdict. (tests/test_sinks.py
runs the same scenario with 240 objects on every test run; this is the issue's full size.)
"""

from __future__ import annotations

import io
import json
import tempfile
import time
from pathlib import Path

from _common import emit, log, options, servers


def main() -> None:
    parser = options(__doc__, json_flag=True)
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--page", type=int, default=256, help="objects per listed page = per chunk")
    args = parser.parse_args()
    harness = servers()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zstagger-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    s3 = harness.S3Server(workdir)
    redis_server = harness.RedisServer(workdir).start()
    env = {**s3.env, "ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": args.model,
           "ZSTAGGER_VISIBILITY_TIMEOUT": "20", "ZSTAGGER_LOADER_THREADS": "2"}
    import os

    os.environ.update(env)
    try:
        from zstagger.queue import enqueue
        from zstagger.settings import Settings
        from zstagger.synthetic import sample_image

        buf = io.BytesIO()
        sample_image(0, (64, 48)).save(buf, "JPEG", quality=85)
        s3.bucket("jobs")
        s3.put_many("jobs", {f"in/{i:06d}.jpg": buf.getvalue() for i in range(args.objects)}, threads=16)
        log("source_queue", f"uploaded {args.objects} objects")
        with harness.worker_starter(env, workdir) as start:
            victim = start("victim").wait_ready()
            started = time.perf_counter()
            job = enqueue(["s3://jobs/in/"], labels=["a cat", "a dog"], chunk_size=args.page,
                          sink="s3://jobs/results/", settings=Settings())
            listed = time.perf_counter() - started
            harness.wait_for(lambda: job.status()["done"] >= min(args.objects // 4, 2 * args.page), 600, "some chunks")
            victim.kill9()
            killed_at = job.status()["done"]
            log("source_queue", f"killed the victim after {killed_at} results")
            start("a").wait_ready(), start("b").wait_ready()
            results = job.results(wait=True, timeout=3600)
            wall = time.perf_counter() - started
            keys = [f"s3://jobs/in/{i:06d}.jpg" for i in range(args.objects)]
            client = s3.client()
            pages = -(-args.objects // args.page)

            def sink_files() -> list[str]:
                return [item["Key"] for page in client.get_paginator("list_objects_v2").paginate(
                        Bucket="jobs", Prefix=f"results/{job.id}/") for item in page.get("Contents", [])]

            # A victim killed after storing a chunk's results and before writing its sink file
            # leaves that file to the chunk's redelivery (after the visibility timeout): the job
            # is done before its sink is whole, and its status says so until the file is written.
            waited = time.perf_counter()
            harness.wait_for(lambda: job.status()["sink"]["undelivered_chunks"] == 0, 120, "every chunk in the sink")
            sink_wait = time.perf_counter() - waited
        files, indices = 0, []
        for key in sink_files():
            files += 1
            body = client.get_object(Bucket="jobs", Key=key)["Body"].read().decode()
            indices += [json.loads(line)["index"] for line in body.splitlines()]
        report = {
            "objects": args.objects, "page": args.page, "killed_after_results": killed_at,
            "enqueue_listing_s": round(listed, 2), "job_wall_s": round(wall, 1), "sink_wait_s": round(sink_wait, 1),
            "results_in_order_each_once": [r.image for r in results] == keys,
            "failed": sum(r.error is not None for r in results),
            "sink_files": files, "listed_pages": pages,
            "sink_every_index_once": sorted(indices) == list(range(args.objects)),
        }
        report["ok"] = (report["results_in_order_each_once"] and not report["failed"] and files == pages
                        and report["sink_every_index_once"])
    finally:
        redis_server.stop()
        s3.close()
    emit(report, args.json)
    if not report["ok"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
