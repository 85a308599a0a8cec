"""HTTP API throughput and latency vs in-process tagging, in one run.

    python benchmarks/http_throughput.py --model CHECKPOINT_DIR --images JPEG_DIR [-t moderation]

1. In process: `Tagger.tag` on the images (best of two passes), then the Tagger is closed.
2. `zstagger serve` on a free loopback port (one process, all cores, default micro-batching);
   clients are threads that each post one JPEG per request (multipart) in a closed loop:
   - throughput at 1, 8 and 32 concurrent clients (images/s) and p50/p99 latency;
   - idle single-image latency (one request at a time, the server otherwise quiet).

Prints one JSON object. Nothing else may run: server, clients and the in-process pass share
the same cores (the clients' own CPU use is part of what the HTTP path costs here).
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

from _common import emit, options, percentile, serve, workload


def multipart(path: Path, taxonomy: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"taxonomy\"\r\n\r\n{taxonomy}\r\n".encode(),
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{path.name}\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def load(port: int, bodies: list[tuple[bytes, str]], clients: int, requests: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()
    counter = iter(range(requests))
    failures: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for i in counter:
            body, content_type = bodies[i % len(bodies)]
            started = time.perf_counter()
            conn.request("POST", "/v1/tag", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            payload = response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                failures.append(f"{response.status}: {payload[:200]!r}")
            with lock:
                latencies.append(elapsed)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return {"clients": clients, "requests": requests, "img_s": requests / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}


def main() -> None:
    parser = options(__doc__, images=True, taxonomy=True)
    parser.add_argument("--requests", type=int, default=256, help="requests per client-count measurement")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--idle", type=int, default=20, help="single requests on a quiet server, for the idle latency")
    args = parser.parse_args()
    paths = [Path(p) for p in workload(args, (".jpg", ".jpeg"))]
    report: dict = {"model": args.model, "taxonomy": args.taxonomy, "images": len(paths), "cores": os.cpu_count()}
    cache = tempfile.mkdtemp(prefix="zstagger-http-bench-")
    os.environ["ZSTAGGER_CACHE_DIR"] = cache
    try:
        from zstagger import Tagger

        tagger = Tagger(args.model)
        refs = [str(p) for p in paths]
        tagger.tag(refs[: 2 * tagger.batch_size], taxonomy=args.taxonomy)  # warm up
        best = 0.0
        for _ in range(2):
            started = time.perf_counter()
            tagger.tag(refs, taxonomy=args.taxonomy)
            best = max(best, len(refs) / (time.perf_counter() - started))
        tagger.close()
        del tagger
        report["in_process_img_s"] = best

        with serve(args.model, cache, {"ZSTAGGER_MAX_PENDING_IMAGES": "4096"}) as (server, port):
            bodies = [multipart(p, args.taxonomy) for p in paths]
            load(port, bodies, 8, min(64, args.requests))  # warm up: taxonomy compiled, threads started
            idle = []
            for body in (bodies * args.idle)[: args.idle]:
                time.sleep(0.05)
                idle.append(load(port, [body], 1, 1)["p50_ms"])
            report["idle_single_image_ms_p50"] = percentile(idle, 0.5)
            report["load"] = [load(port, bodies, int(n), args.requests) for n in args.clients.split(",")]
        top = max(row["img_s"] for row in report["load"])
        at_32 = next((row["img_s"] for row in report["load"] if row["clients"] == 32), top)
        report["http_32_clients_vs_in_process"] = at_32 / report["in_process_img_s"]
        emit({k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()})
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
