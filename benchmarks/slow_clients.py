"""Slow clients (slowloris) against `zstagger serve`: idle and dripping connections, the latency
of a normal request meanwhile, and what the server writes to its log, in one run.

    python benchmarks/slow_clients.py --model CHECKPOINT_DIR [--connections 2000] [--nofile 1024]
                                      [--seconds 40] [--reconnect] [--json]

`zstagger serve` on a free loopback port, started with its open-file limit lowered to
``--nofile`` (so exhaustion is cheap to reach). Then ``--connections`` clients connect and each
sends an unfinished request (a request line and one header), then one more header byte every
2 s, never finishing. With ``--reconnect``, connections the server closed are opened again
every 2 s (as the slowloris tool does), so the server faces that many for the whole run. Meanwhile a
normal client sends `GET /healthz` every 0.25 s on a new connection (timeout 5 s).

Reports: latencies of the normal requests (p50, p99, max, failures), how many slow
connections the server had closed, the open connections at the end, and the bytes the
server wrote to its log (stdout and stderr) during the run. Nothing else may run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import percentile, serve


class Slowloris:
    """``count`` connections that never finish their headers (non-blocking connects: a
    connection is counted once the server's side accepted it and the partial request went out)."""

    REQUEST = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

    def __init__(self, port: int, count: int, reconnect: bool):
        self.port, self.count, self.reconnect = port, count, reconnect
        self.selector = selectors.DefaultSelector()
        self.connecting = 0
        self.established = 0
        self.closed_by_server = 0
        self.connect_failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open_one(self) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", self.port))
        self.selector.register(sock, selectors.EVENT_WRITE, "connecting")
        self.connecting += 1

    def open(self) -> int:
        return self.established

    def _drop(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()

    def run(self) -> None:
        last_drip = time.monotonic()
        opened = 0
        while not self.stop.is_set():
            if opened < self.count:  # the first connections, 500 at a time
                for _ in range(min(500, self.count - opened)):
                    self.open_one()
                    opened += 1
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                if key.data == "connecting":
                    self.connecting -= 1
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        self.connect_failures += 1
                        self._drop(sock)
                        continue
                    try:
                        sock.send(self.REQUEST)
                    except OSError:
                        self.connect_failures += 1
                        self._drop(sock)
                        continue
                    self.selector.modify(sock, selectors.EVENT_READ, "open")
                    self.established += 1
                    continue
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self.closed_by_server += 1
                    self.established -= 1
                    self._drop(sock)
            if time.monotonic() - last_drip > 2:  # a byte on each open one; with reconnect, closed ones reopened
                last_drip = time.monotonic()
                for key in list(self.selector.get_map().values()):
                    if key.data == "open":
                        try:
                            key.fileobj.send(b"x")
                        except OSError:
                            pass
                if self.reconnect and opened >= self.count:
                    for _ in range(self.count - self.established - self.connecting):
                        self.open_one()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--nofile", type=int, default=1024, help="the server's open-file limit during the run")
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--header-timeout", type=float, help="ZSTAGGER_HEADER_TIMEOUT for the server")
    parser.add_argument("--reconnect", action="store_true", help="reopen connections the server closes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < args.connections + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 256), hard))

    work = tempfile.mkdtemp(prefix="zstagger-slow-bench-")
    settings = {"ZSTAGGER_CACHE_DIR": work}
    if args.header_timeout is not None:
        settings["ZSTAGGER_HEADER_TIMEOUT"] = str(args.header_timeout)
    log_path = Path(work) / "serve.log"
    report: dict = {"connections": args.connections, "nofile": args.nofile, "seconds": args.seconds,
                    "header_timeout": args.header_timeout, "reconnect": args.reconnect}
    try:
        with serve(args.model, work, settings, log=log_path, nofile=args.nofile) as (server, port):
            log_before = log_path.stat().st_size
            flood = Slowloris(port, args.connections, args.reconnect)
            flood.thread.start()
            latencies: list[float] = []
            failures = 0
            ended = time.monotonic() + args.seconds
            while time.monotonic() < ended:
                started = time.perf_counter()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/healthz")
                    ok = conn.getresponse().status == 200
                    conn.close()
                except OSError:
                    ok = False
                elapsed = time.perf_counter() - started
                if ok:
                    latencies.append(elapsed)
                else:
                    failures += 1
                time.sleep(max(0.0, 0.25 - elapsed))
            report["slow_connections_open_at_end"] = flood.open()
            report["slow_connections_closed_by_server"] = flood.closed_by_server
            report["slow_connects_failed"] = flood.connect_failures
            flood.close()
            report["normal_requests"] = len(latencies) + failures
            report["normal_failures"] = failures
            if latencies:
                report["normal_p50_ms"] = round(1000 * percentile(latencies, 0.5), 1)
                report["normal_p99_ms"] = round(1000 * percentile(latencies, 0.99), 1)
                report["normal_max_ms"] = round(1000 * max(latencies), 1)
            report["log_bytes"] = log_path.stat().st_size - log_before
            report["server_alive"] = server.poll() is None
    finally:
        tail = log_path.read_text(errors="replace")[-1500:]
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:36} {value}")
        print("log tail:\n" + tail, file=sys.stderr)


if __name__ == "__main__":
    main()
