"""Large JSON bodies against `zstagger serve`: how long other clients wait meanwhile, in one run.

    python benchmarks/large_bodies.py --model CHECKPOINT_DIR [--megabytes 40] [--json]

`zstagger serve` on a free loopback port. For each body kind, a separate process POSTs it
to /v1/tag while this one sends `GET /healthz` every 50 ms on a kept-alive connection:

- ``objects``: ``--megabytes`` MB of image objects ({url, name}, ~200 bytes each), answered
  413 once parsed (more images than ZSTAGGER_MAX_REQUEST_IMAGES): the cost is validation;
- ``base64``: one image of ``--megabytes`` MB as base64 (random bytes: an invalid_image
  record): the cost is one long string and its decoding.

Reports the /healthz latency before any body (p50) and while each body is read and parsed
(p50, p90, max), and each body's own time. Nothing else may run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import percentile, serve

SENDER = (
    "import http.client, sys, time\n"
    "conn = http.client.HTTPConnection('127.0.0.1', int(sys.argv[1]), timeout=600)\n"
    "body = open(sys.argv[2], 'rb').read()\n"
    "started = time.perf_counter()\n"
    "conn.request('POST', '/v1/tag', body=body, headers={'Content-Type': 'application/json'})\n"
    "response = conn.getresponse(); response.read()\n"
    "print(response.status, time.perf_counter() - started)\n"
)


def probe_while(port: int, running) -> list[float]:
    latencies = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    while running():
        started = time.perf_counter()
        conn.request("GET", "/healthz")
        conn.getresponse().read()
        latencies.append(time.perf_counter() - started)
        time.sleep(0.05)
    conn.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--megabytes", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zstagger-bodies-bench-"))
    size = args.megabytes * 1_000_000
    count = size // 200
    objects = [{"url": f"http://example.com/{i:08d}.jpg", "name": f"{i:08d}-" + "n" * 150} for i in range(count)]
    (work / "objects.json").write_bytes(json.dumps({"images": objects, "labels": ["a", "b"]}).encode())
    del objects
    payload = base64.b64encode(os.urandom(size * 3 // 4)).decode()
    (work / "base64.json").write_bytes(json.dumps({"images": [{"base64": payload}], "labels": ["a", "b"]}).encode())
    del payload
    settings = {"ZSTAGGER_CACHE_DIR": str(work), "ZSTAGGER_MAX_IMAGE_BYTES": str(size),
                "ZSTAGGER_MAX_REQUEST_BYTES": str(2 * size)}
    report: dict = {"megabytes": args.megabytes, "cores": os.cpu_count()}
    try:
        with serve(args.model, work, settings) as (server, port):
            quiet_until = time.monotonic() + 3
            quiet = probe_while(port, lambda: time.monotonic() < quiet_until)
            report["healthz_quiet_p50_ms"] = round(1000 * percentile(quiet, 0.5), 1)
            for kind in ("objects", "base64"):
                body = work / f"{kind}.json"
                sender = subprocess.Popen([sys.executable, "-c", SENDER, str(port), str(body)], stdout=subprocess.PIPE, text=True)
                latencies = probe_while(port, lambda: sender.poll() is None)
                status, seconds = sender.stdout.read().split()
                report[kind] = {"body_mb": round(body.stat().st_size / 1e6, 1), "status": int(status),
                                "body_seconds": round(float(seconds), 2), "healthz_probes": len(latencies),
                                "healthz_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
                                "healthz_p90_ms": round(1000 * percentile(latencies, 0.9), 1),
                                "healthz_max_ms": round(1000 * max(latencies), 1)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
