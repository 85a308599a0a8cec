"""Ad-hoc `labels` over HTTP: memory after many distinct big label sets, and the latency of a
small request while a big label set is being encoded, in one run.

    python benchmarks/adhoc_labels.py --model CHECKPOINT_DIR [--sets 10] [--set-size 2000] [--json]

`zstagger serve` on a free loopback port (one process, ZSTAGGER_MAX_REQUEST_LABELS raised to
the set size), one small image per request:

1. the server's resident memory (VmRSS) after a warm-up, then after each of ``--sets``
   requests that each bring a new ``--set-size``-label set (every set is encoded by the
   text tower and kept as long as ZSTAGGER_CLASSIFIER_CACHE_BYTES allows);
2. the latency of a request with 2 new labels on a quiet server (median of 5), then of one
   sent 0.5 s after a request with ``--big`` new labels (1,500), while that set is encoded;
   the big request's own time is reported beside it.

``--cache-bytes`` sets ZSTAGGER_CLASSIFIER_CACHE_BYTES (default: the setting's default).
Prints one JSON object with --json, else a short table. Nothing else may run.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

from _common import serve


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def post(port: int, body: dict, timeout: float = 600) -> tuple[int, float]:
    data = json.dumps(body).encode()
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request("POST", "/v1/tag", body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200:
        raise SystemExit(f"HTTP {response.status}: {payload[:300]!r}")
    return response.status, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--sets", type=int, default=10, help="distinct big label sets sent one after another")
    parser.add_argument("--set-size", type=int, default=2000)
    parser.add_argument("--big", type=int, default=1500, help="labels of the set being encoded during the small request")
    parser.add_argument("--cache-bytes", type=int, help="ZSTAGGER_CLASSIFIER_CACHE_BYTES for the server")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from zstagger.synthetic import sample_image

    buf = io.BytesIO()
    sample_image(1, (320, 240)).save(buf, format="JPEG", quality=90)
    image = {"base64": base64.b64encode(buf.getvalue()).decode()}
    cache = tempfile.mkdtemp(prefix="zstagger-labels-bench-")
    extra = {"ZSTAGGER_CACHE_DIR": cache, "ZSTAGGER_MAX_REQUEST_LABELS": str(max(args.set_size, args.big))}
    if args.cache_bytes is not None:
        extra["ZSTAGGER_CLASSIFIER_CACHE_BYTES"] = str(args.cache_bytes)
    report: dict = {"model": args.model, "sets": args.sets, "set_size": args.set_size, "big": args.big,
                    "cache_bytes": args.cache_bytes, "cores": os.cpu_count()}
    try:
        with serve(args.model, cache, extra) as (server, port):
            post(port, {"images": [image], "labels": ["warm", "up"]})
            rss = [rss_mib(server.pid)]
            for n in range(args.sets):
                post(port, {"images": [image], "labels": [f"set {n} label {i}" for i in range(args.set_size)]})
                rss.append(rss_mib(server.pid))
                if not args.json:
                    print(f"after set {n + 1}: {rss[-1]:.0f} MiB", file=sys.stderr)
            report["rss_mib"] = [round(r, 1) for r in rss]
            report["rss_growth_mib"] = round(rss[-1] - rss[0], 1)
            half = len(rss) // 2
            report["rss_growth_second_half_mib"] = round(rss[-1] - rss[half], 1)

            quiet = [post(port, {"images": [image], "labels": [f"quiet {k} a", f"quiet {k} b"]})[1] for k in range(5)]
            report["small_request_quiet_s"] = round(statistics.median(quiet), 3)
            big_seconds: list[float] = []
            big = threading.Thread(target=lambda: big_seconds.append(
                post(port, {"images": [image], "labels": [f"big label {i}" for i in range(args.big)]})[1]))
            big.start()
            time.sleep(0.5)
            _, during = post(port, {"images": [image], "labels": ["during a", "during b"]})
            big_running = big.is_alive()
            big.join()
            report["small_request_during_big_compile_s"] = round(during, 3)
            report["big_request_s"] = round(big_seconds[0], 3)
            report["small_answered_before_big"] = big_running
            report["during_vs_quiet"] = round(during / report["small_request_quiet_s"], 2)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:40} {value}")


if __name__ == "__main__":
    main()
