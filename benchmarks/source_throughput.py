"""Tagging throughput from a local S3 server vs the same images from disk, in one run.

    python benchmarks/source_throughput.py --model CHECKPOINT_DIR --images JPEG_DIR [--rounds 3]

Starts moto's S3-compatible server (``moto_server``) on a free loopback port, uploads the
images to a bucket, warms one Tagger up (model loaded, labels embedded), then alternates
rounds of ``Tagger.tag(paths)`` and ``Tagger.tag(["s3://bench/images/"])`` (listed a page at
a time, each object read with one presigned, ranged GET) and reports both throughputs and
their ratio (goal: >= 0.9). moto is a Python server on the same cores, so the ratio is a
pessimistic one: a real S3 or MinIO serves from elsewhere. ``--server-core`` gives moto a
core of its own and the tagger the others, in both paths: the same tagger, with the server's
work off its cores, as a store elsewhere would be. Also reported, per image: the
server's CPU time, and the CPU time the tagging process spends on an S3 image beyond a disk
one (the reading client's cost, which is what a store elsewhere still costs the worker).
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from _common import emit, log, options, servers, workload


def main() -> None:
    parser = options(__doc__, images=True, json_flag=True, count=256, size="640x480")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each path")
    parser.add_argument("--loader-threads", type=int, default=0, help="ZSTAGGER_LOADER_THREADS for both paths (0: default)")
    parser.add_argument("--server-core", action="store_true",
                        help="give the S3 server a core of its own and the tagger the others, in both paths "
                             "(as a store on another machine would leave the worker's cores to it)")
    args = parser.parse_args()
    images = workload(args)
    harness = servers()
    s3 = harness.S3Server(Path(tempfile.mkdtemp(prefix="zstagger-bench-s3-")))
    os.environ.update(s3.env)
    try:
        s3.bucket("bench")
        s3.put_many("bench", {f"images/{Path(p).name}": Path(p).read_bytes() for p in images})
        cpus = sorted(os.sched_getaffinity(0))
        if args.server_core:  # (before the tagger starts a thread: its threads keep the cores it is given)
            if len(cpus) < 2:
                raise SystemExit("--server-core needs at least 2 CPUs")
            os.sched_setaffinity(s3.proc.pid, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
        from zstagger import Tagger

        def server_cpu() -> float:  # moto's CPU seconds: it shares this machine's cores with the tagger
            fields = Path(f"/proc/{s3.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def own_cpu() -> float:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            return usage.ru_utime + usage.ru_stime

        server_seconds, own_seconds = [], {"disk": [], "s3": []}
        with Tagger(args.model, loader_threads=args.loader_threads or None) as tagger:
            tagger.tag(images[: min(8, len(images))], labels=["a cat", "a dog"])  # warm: model, labels, threads
            disk, s3_rates = [], []
            for round_ in range(args.rounds):
                for name, refs, rates in (("disk", images, disk), ("s3", ["s3://bench/images/"], s3_rates)):
                    started, cpu, own = time.perf_counter(), server_cpu(), own_cpu()
                    results = tagger.tag(refs, labels=["a cat", "a dog"])
                    seconds = time.perf_counter() - started
                    own_seconds[name].append(own_cpu() - own)
                    if name == "s3":
                        server_seconds.append(server_cpu() - cpu)
                    assert len(results) == len(images) and not [r for r in results if r.error], name
                    rates.append(len(images) / seconds)
                    log("source_throughput", f"round {round_ + 1} {name}: {rates[-1]:.1f} images/s")
        report = {"images": len(images), "rounds": args.rounds,
                  "disk_images_per_s": round(statistics.median(disk), 2),
                  "s3_images_per_s": round(statistics.median(s3_rates), 2),
                  "s3_vs_disk": round(statistics.median(s3_rates) / statistics.median(disk), 3),
                  "s3_server_cpu_ms_per_image": round(1000 * statistics.median(server_seconds) / len(images), 2),
                  "disk_cpu_ms_per_image": round(1000 * statistics.median(own_seconds["disk"]) / len(images), 2),
                  "s3_client_extra_cpu_ms_per_image": round(1000 * (statistics.median(own_seconds["s3"])
                                                                    - statistics.median(own_seconds["disk"])) / len(images), 2),
                  "loader_threads": tagger.loader_threads, "tagger_cpus": len(os.sched_getaffinity(0)),
                  "server_cpus": len(os.sched_getaffinity(s3.proc.pid))}
    finally:
        s3.close()
    emit(report, args.json)


if __name__ == "__main__":
    main()
