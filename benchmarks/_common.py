"""What every benchmark script shares: its options, its workload, its output.

    from _common import emit, log, options, workload

- :func:`options`: an argparse parser with the standard options: ``--model`` (a checkpoint
  directory or Hub id), ``--images`` (a directory of JPEGs, e.g. from
  make_jpeg_workload.py; without it ``--count`` photo-like JPEGs of ``--size`` are
  generated under ``--workdir``), ``--workdir``, ``--json`` and ``-t/--taxonomy``, each where
  the script takes it;
- :func:`workload`: the image paths of a run (listed, or generated once and reused);
- :func:`emit`: the report on stdout, as JSON or as ``key: value`` lines; :func:`log`:
  progress on stderr;
- :func:`free_port`, :func:`clean_env`, :func:`servers`: a loopback port, an environment
  without ZSTAGGER_* settings, and the test harness's real servers (Redis, PostgreSQL, workers);
- :func:`serve`: ``zstagger serve`` on a free loopback port, ready, stopped afterwards;
  :func:`percentile`: a nearest-rank quantile of latencies.

Every script runs at its smallest size in the test suite (tests/test_benchmarks.py) on a
tiny checkpoint, so a script that no longer runs fails CI; the sizes that give the figures
in benchmarks/README.md are the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def options(doc: str, *, images: bool = False, workdir: bool = False, json_flag: bool = False,
            taxonomy: bool = False, count: int = 64, size: str = "1280x960") -> argparse.ArgumentParser:
    """The script's parser with the standard options (``doc``: its module docstring).

    ``workdir``: the script needs ``--workdir`` (else it is optional: a temporary directory
    holds what it generates); ``images``: it reads a workload (``--images``, or ``--count``
    generated JPEGs of ``--size``, whose defaults are ``count`` and ``size``)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Checkpoint directory or Hub id.")
    if images:
        parser.add_argument("--images", help="Directory of JPEGs (default: --count generated ones, under --workdir).")
        parser.add_argument("--count", type=int, default=count, help="Images generated when --images is not given.")
        parser.add_argument("--size", default=size, help="WIDTHxHEIGHT of generated images.")
    parser.add_argument("--workdir", required=workdir, help="Where generated data and caches go."
                        + ("" if workdir else " Default: a temporary directory."))
    if json_flag:
        parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    if taxonomy:
        parser.add_argument("-t", "--taxonomy", default="moderation")
    return parser


def workload(args: argparse.Namespace, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[str]:
    """The run's images, sorted: the files of ``--images``, or ``--count`` JPEGs of ``--size``
    generated under ``--workdir`` (once: a later run with the same numbers reuses them)."""
    if args.images:
        paths = sorted(str(p) for p in Path(args.images).iterdir() if p.suffix.lower() in suffixes)
        if not paths:
            raise SystemExit(f"no {'/'.join(suffixes)} files in {args.images}")
        return paths
    if not args.workdir:
        import tempfile

        args.workdir = tempfile.mkdtemp(prefix="zstagger-bench-")
    from zstagger.synthetic import sample_image

    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(args.workdir) / f"images-{args.count}-{width}x{height}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.count):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            sample_image(i, (width, height)).save(path, quality=90)
        paths.append(str(path))
    return paths


def emit(report: dict[str, Any], as_json: bool = True) -> None:
    """The report on stdout: JSON (machine-readable) or one ``key: value`` line per figure."""
    print(json.dumps(report, indent=2, default=str) if as_json else "\n".join(f"{k}: {v}" for k, v in report.items()))


def log(script: str, message: str) -> None:
    print(f"{script}: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any ZSTAGGER_* setting, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env.update(settings)
    return env


def servers():
    """tests/harness.py: real redis-server, PostgreSQL and worker processes, as the tests start them."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import harness

    return harness


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def zstagger_exe() -> str:
    """This environment's ``zstagger`` command."""
    import shutil

    return shutil.which("zstagger") or str(Path(sys.executable).parent / "zstagger")


@contextlib.contextmanager
def serve(model: str, cwd: str | Path, settings: dict[str, str] | None = None, *, log: Path | None = None,
          nofile: int | None = None, ready_within: float = 180):
    """``zstagger serve`` on a free loopback port, open to anonymous clients, ready (``/readyz``
    answers 200) when the block starts and stopped when it ends; yields ``(process, port)``.

    ``settings``: ZSTAGGER_* variables for the server; ``log``: a file taking its stdout and
    stderr (else stderr is kept for the error when it does not get ready); ``nofile``: its
    open-file limit."""
    import http.client
    import subprocess
    import time

    port = free_port()
    env = {**os.environ, "ZSTAGGER_MODEL": model, "ZSTAGGER_PORT": str(port), "ZSTAGGER_API_ALLOW_ANONYMOUS": "1",
           **(settings or {})}
    sink = open(log, "wb") if log else None
    limit = None
    if nofile is not None:
        import resource

        limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))  # noqa: E731
    server = subprocess.Popen([zstagger_exe(), "serve", "--log-level", "warning"], env=env, cwd=str(cwd),
                              stdout=sink or subprocess.DEVNULL, stderr=sink or subprocess.PIPE, preexec_fn=limit)
    try:
        deadline = time.monotonic() + ready_within
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                said = Path(log).read_bytes() if log else server.stderr.read()
                raise SystemExit(f"zstagger serve did not get ready: {said[-2000:].decode(errors='replace')}")
            time.sleep(0.3)
        yield server, port
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if sink:
            sink.close()
