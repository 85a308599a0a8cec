"""Real processes for queue tests: a redis-server on a free loopback port, `zstagger worker`s,
a loopback HTTP server that serves images slowly (so a worker can be caught mid-chunk), and a
PostgreSQL server for the embedding store."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]

# Settings the test run gives itself and every process it starts (see tests/conftest.py),
# kept when a test drops the developer's ZSTAGGER_* settings from a subprocess's environment.
SUITE_SETTINGS = ("ZSTAGGER_LOAD_PLUGINS",)


def clean_environ(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the developer's ZSTAGGER_* settings (the suite's own
    kept), plus ``env``."""
    kept = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_") or k in SUITE_SETTINGS}
    return {**kept, **(env or {})}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None):
    """`zstagger ARGS` as a user runs it, with no ZSTAGGER_* setting but ``env``'s."""
    exe = shutil.which("zstagger")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=clean_environ(env), timeout=timeout, check=False, cwd=cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """redis-server on 127.0.0.1 with an append-only file, so a restart keeps the queue."""

    def __init__(self, directory: Path, password: str | None = None, args: tuple[str, ...] = ()):
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server); the queue tests need it")
        self.exe, self.dir, self.port, self.password = exe, directory, free_port(), password
        self.args = args
        self.proc: subprocess.Popen | None = None
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir), "--protected-mode", "yes",
             *(["--requirepass", self.password] if self.password else []), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for(self._ping, 10, "redis-server to accept connections")
        return self

    def _ping(self) -> bool:
        try:
            return self.client(socket_connect_timeout=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, **kwargs)


class _CommandProcess:
    """A `zstagger` command as its own process group (so kill -9 takes its children too),
    its output in a log file, stopped by SIGTERM and killed if it does not stop."""

    what = "zstagger"

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: Path = ROOT,
                 cmd: list[str] | None = None, nofile: int | None = None):
        exe = shutil.which("zstagger")
        cmd = cmd or ([exe] if exe else [sys.executable, "-m", "zstagger.cli"])
        full_env = clean_environ(env)
        self.log_path = log_path
        self.log = open(log_path, "w")
        # nofile: the process's open-file limit (soft and hard), to reach descriptor exhaustion cheaply.
        limit = None if nofile is None else (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.proc = subprocess.Popen([*cmd, *args], env=full_env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=cwd, preexec_fn=limit)

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.what} exited ({self.proc.returncode}):\n{self.output()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # Celery: warm shutdown; uvicorn: graceful
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


class Worker(_CommandProcess):
    """`zstagger worker` as its own process group (so kill -9 takes the pool children too)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, args: tuple[str, ...] = (),
                 cwd: Path = ROOT, cmd: list[str] | None = None):
        self.name, self.what = name, f"worker {name}"
        super().__init__(["worker", "-n", f"{name}@%h", "--loglevel", "INFO", *args], env, log_dir / f"{name}.log", cwd, cmd)

    def wait_ready(self, timeout: float = 120) -> Worker:
        def ready():
            self.check_alive()
            text = self.output()
            return "zstagger: loaded" in text and " ready." in text

        wait_for(ready, timeout, f"worker {self.name} to load its model")
        return self

    def wait_exit(self, timeout: float) -> int:
        """The exit status of a worker expected to stop by itself."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.name} still running after {timeout}s:\n{self.output()}") from None

    def chunks_done(self) -> int:
        return self.output().count("] succeeded in")


@contextlib.contextmanager
def worker_starter(env: dict[str, str], log_dir: Path) -> Iterator[Callable[..., Worker]]:
    """``start(name, extra_env=None, args=(), **kwargs)`` starts a Worker with ``env`` (plus
    ``extra_env``); every worker started is terminated at the end."""
    started: list[Worker] = []

    def start(name: str, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = (), **kwargs: Any) -> Worker:
        worker = Worker(name, {**env, **(extra_env or {})}, log_dir, args, **kwargs)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.terminate(timeout=20)


def serve_loopback(handler: type[http.server.BaseHTTPRequestHandler]) -> tuple[http.server.ThreadingHTTPServer, str]:
    """``handler`` served on a free 127.0.0.1 port from a daemon thread (a thread per request):
    the server (``shutdown()`` it) and its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"


class SlowImageServer:
    """Serves PNGs on 127.0.0.1; ``/slow/<seconds>/<name>.png`` waits before answering,
    ``/status/<code>/<name>.png`` answers with that HTTP status. ``hits`` counts requests per path."""

    def __init__(self):
        from zstagger.testing import sample_image

        images = {}
        hits: dict[str, int] = {}
        self.hits = hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                parts = self.path.strip("/").split("/")
                if parts[0] == "status":
                    self.send_error(int(parts[1]))
                    return
                if parts[0] == "slow":
                    time.sleep(float(parts[1]))
                    parts = parts[2:]
                if parts[0] == "missing":
                    self.send_error(404)
                    return
                seed = sum(map(ord, parts[-1])) % 50
                if seed not in images:
                    buf = io.BytesIO()
                    sample_image(seed, (90, 70)).save(buf, format="PNG")
                    images[seed] = buf.getvalue()
                body = images[seed]
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve_loopback(Handler)

    def close(self) -> None:
        self.httpd.shutdown()


class PostgresServer:
    """A throwaway PostgreSQL server from Debian's packages on a free loopback port.

    Postgres refuses to run as root, and processes run as root here: the server then runs
    as ``nobody`` (through runuser) in a directory it owns. ``stop()``/``start()`` keep the
    data directory, so a test can restart the server under running workers.
    """

    def __init__(self, directory: Path | None = None, durable: bool = False):
        self.initdb, self.pg_ctl = _postgres_tool("initdb"), _postgres_tool("pg_ctl")
        self.dir = Path(directory or tempfile.mkdtemp(prefix="zstagger-pg-"))
        self.data, self.port = self.dir / "data", free_port()
        self.url = f"postgresql://zstagger:secret-pw@127.0.0.1:{self.port}/zstagger"
        self.as_user = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            os.chown(self.dir, pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("nobody").pw_gid)
        (self.dir / "pw").write_text("secret-pw\n")
        self._run([self.initdb, "-D", str(self.data), "-U", "zstagger", "--pwfile", str(self.dir / "pw"), "-A", "scram-sha-256",
                   "-E", "UTF8", "--no-sync", "--no-instructions"])
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n")
            if not durable:  # a test server: speed over surviving a power cut (benchmarks keep the defaults)
                conf.write("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _run(self, cmd: list[str], timeout: float = 60) -> None:
        done = subprocess.run([*self.as_user, *cmd], cwd=self.dir, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def start(self) -> PostgresServer:
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start"], timeout=90)
        import psycopg

        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'zstagger'").fetchone():
                conn.execute("CREATE DATABASE zstagger")
        return self

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"], timeout=90)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_tool(name: str) -> str:
    """initdb or pg_ctl: on PATH, else where Debian keeps them (pg_config --bindir, /usr/lib/postgresql/*/bin)."""
    found = shutil.which(name)
    if found:
        return found
    try:
        bindir = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True).stdout.strip()
        if os.path.exists(os.path.join(bindir, name)):
            return os.path.join(bindir, name)
    except (OSError, subprocess.CalledProcessError):
        pass
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); the embedding store tests need it")
    return str(candidates[-1])


class ApiServer(_CommandProcess):
    """`zstagger serve` on a free loopback port, as its own process group."""

    what = "zstagger serve"

    def __init__(self, env: dict[str, str], log_dir: Path, args: tuple[str, ...] = (), nofile: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(["serve", "--log-level", "warning", *args], {**env, "ZSTAGGER_PORT": str(self.port)},
                         log_dir / f"serve-{self.port}.log", nofile=nofile)

    def wait_ready(self, timeout: float = 120) -> ApiServer:
        import httpx

        def ready():
            self.check_alive()
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, "zstagger serve to load its model", interval=0.2)
        return self

    def stop(self, timeout: float = 30) -> int:
        return self.terminate(timeout)


class WebhookReceiver:
    """A webhook endpoint on 127.0.0.1 that checks signatures and de-duplicates by event id,
    as a receiver should. ``answers`` are the status codes to give, in turn (then 200);
    ``hold`` seconds are waited before answering the first request (so a worker can be
    killed mid-delivery)."""

    def __init__(self, secret: str, answers: tuple[int, ...] = (), hold: float = 0.0):
        from zstagger import verify_webhook

        receiver = self
        self.deliveries: list[dict] = []  # every request, valid or not
        self.events: dict[str, dict] = {}  # processed once per event id
        self.answers = list(answers)
        self.hold = hold
        self.lock = threading.Lock()
        self.first_request = threading.Event()  # set as soon as a delivery arrives (before any hold)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                import json

                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    first = not receiver.deliveries
                    answer = receiver.answers.pop(0) if receiver.answers else 200
                receiver.first_request.set()
                if first and receiver.hold:
                    time.sleep(receiver.hold)
                try:
                    event_id = verify_webhook(secret, dict(self.headers), body)
                    valid = True
                except Exception as exc:  # noqa: BLE001
                    event_id, valid, answer = str(exc), False, 400
                with receiver.lock:
                    receiver.deliveries.append({"event_id": event_id, "valid": valid, "answer": answer})
                    if valid and answer == 200 and event_id not in receiver.events:
                        receiver.events[event_id] = json.loads(body)
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd, url = serve_loopback(Handler)
        self.url = url + "/hook"

    def close(self) -> None:
        self.httpd.shutdown()


def port_open(port: int) -> bool:
    """Whether something accepts connections on the loopback ``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def stop_server(proc: subprocess.Popen, log) -> None:
    """Stop a server started in its own session: SIGTERM to its group, SIGKILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    log.close()


class S3Server:
    """moto's S3-compatible server (``moto_server``) on a free loopback port, its own process,
    and ``env``: what a process needs to reach it with its own credentials (AWS_* variables)."""

    def __init__(self, directory: Path, tls: bool = False):
        exe = shutil.which("moto_server")
        if exe is None:
            raise RuntimeError("moto_server is not installed (pip install 'moto[server]'); the source tests need it")
        self.port = free_port()
        self.tls = tls  # https, with a certificate of its own; ``ca`` is the file that trusts it
        self.ca = _self_signed(directory) if tls else None
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.log = open(directory / "moto.log", "w")
        certificate = ["-c", str(self.ca), "-k", str(directory / "key.pem")] if tls else []
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port), *certificate],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.url, "AWS_EC2_METADATA_DISABLED": "true"}
        wait_for(self._up, 30, "moto_server to accept connections")

    def _up(self) -> bool:
        return port_open(self.port)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id="testing", aws_secret_access_key="testing",
                            region_name="us-east-1", verify=str(self.ca) if self.ca else None)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def put_many(self, bucket: str, items: dict[str, bytes], threads: int = 8) -> None:
        from concurrent.futures import ThreadPoolExecutor

        client = self.client()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items.items()))

    def close(self) -> None:
        stop_server(self.proc, self.log)


def _self_signed(directory: Path) -> Path:
    """A certificate for 127.0.0.1 that is its own CA (``cert.pem``, key in ``key.pem``)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zstagger-test-ca")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return directory / "cert.pem"


class _Emulator:
    """An object-store emulator in its own process on a free loopback port; ``env`` is what a
    process needs to reach it (``ZSTAGGER_SOURCE_OPTIONS``), ``fs`` an fsspec filesystem on it."""

    scheme = ""
    protocol = ""
    options: dict[str, Any] = {}

    def _start(self, command: list[str], directory: Path, what: str) -> None:
        self.log = open(directory / f"{self.protocol}.log", "w")
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=directory)
        wait_for(self._up, 60, f"{what} to accept connections")
        self.env = {"ZSTAGGER_SOURCE_OPTIONS": json.dumps({self.protocol: self.options})}

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the emulator exited: {Path(self.log.name).read_text()[-2000:]}")
        return port_open(self.port)

    def fs(self):
        from zstagger.sources.objectstore import _filesystem_class

        return _filesystem_class(self.protocol, self.options)(skip_instance_cache=True, **self.options)

    def bucket(self, name: str) -> str:
        self.fs().mkdir(name)
        return name

    def put_many(self, bucket: str, items: dict[str, bytes]) -> None:
        fs = self.fs()
        fs.pipe({f"{bucket}/{key}": body for key, body in items.items()})

    def read(self, bucket: str, key: str) -> bytes:
        return self.fs().cat_file(f"{bucket}/{key}")

    def keys(self, bucket: str, prefix: str) -> list[str]:
        return sorted(path.partition("/")[2] for path in self.fs().find(f"{bucket}/{prefix}"))

    def close(self) -> None:
        stop_server(self.proc, self.log)


class GCSServer(_Emulator):
    """gcp-storage-emulator (PyPI) speaking Google Cloud Storage's JSON API on loopback, behind a
    :class:`GCSPagingProxy` (``proxy``) that pages its listings as Google does."""

    scheme, protocol = "gs", "gcs"

    def __init__(self, directory: Path):
        exe = shutil.which("gcp-storage-emulator") or str(Path(sys.executable).with_name("gcp-storage-emulator"))
        if not Path(exe).exists():
            raise RuntimeError("gcp-storage-emulator is not installed (pip install -e '.[test]')")
        self.port = free_port()
        self.emulator_url = f"http://127.0.0.1:{self.port}"
        self.proxy = GCSPagingProxy(self.emulator_url)  # GCS's paging, which the emulator lacks
        self.url = self.proxy.url
        self.options = {"token": "anon", "project": "test", "endpoint_url": self.url}
        self._start([exe, "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory"], directory,
                    "gcp-storage-emulator")

    def close(self) -> None:
        self.proxy.close()
        super().close()


class GCSPagingProxy:
    """In front of gcp-storage-emulator on loopback: objects.list paged as Google Cloud Storage
    pages it (``maxResults``, ``pageToken``, ``startOffset``: the emulator ignores all three and
    answers everything at once), every other request passed through. ``misbehave`` turns the
    listing hostile: ``"same_token"`` (the first page again and again under one token),
    ``"same_page"`` (the first page again under new tokens), ``"empty_pages"`` (empty pages
    with new tokens forever) or an HTTP status answered to every listing."""

    def __init__(self, upstream: str):
        from http.server import BaseHTTPRequestHandler
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.misbehave: str | int | None = None
        self.list_requests = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                proxy._handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve_loopback(Handler)

    def _handle(self, h) -> None:
        import base64
        import re
        from urllib.parse import parse_qsl, urlencode, urlsplit

        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        url = urlsplit(h.path)
        if h.command == "GET" and re.fullmatch(r"/storage/v1/b/[^/]+/o", url.path):
            self.list_requests += 1
            if isinstance(self.misbehave, int):
                error = {"error": {"code": self.misbehave, "message": "Forbidden: the caller may not list this bucket"}}
                return self._send(h, self.misbehave, json.dumps(error).encode(), {"Content-Type": "application/json"})
            query = dict(parse_qsl(url.query, keep_blank_values=True))
            paging = {k: query.pop(k) for k in ("maxResults", "pageToken", "startOffset") if k in query}
            _, _, data = self._forward("GET", f"{url.path}?{urlencode(query)}", h.headers, b"")
            answer = json.loads(data)
            items = answer.pop("items", [])
            answer.pop("nextPageToken", None)
            if "startOffset" in paging:
                items = [i for i in items if i["name"] >= paging["startOffset"]]
            if "pageToken" in paging and self.misbehave is None:
                after = base64.urlsafe_b64decode(paging["pageToken"].encode()).decode()
                items = [i for i in items if i["name"] > after]
            size = int(paging.get("maxResults", 1000))
            answer["items"] = items[:size]
            if len(items) > size:
                answer["nextPageToken"] = base64.urlsafe_b64encode(items[size - 1]["name"].encode()).decode()
            if self.misbehave == "same_token":
                answer["nextPageToken"] = "again"
            elif self.misbehave == "same_page":
                answer["nextPageToken"] = f"page-{self.list_requests}"
            elif self.misbehave == "empty_pages":
                answer = {"kind": "storage#objects", "nextPageToken": f"page-{self.list_requests}"}
            return self._send(h, 200, json.dumps(answer).encode(), {"Content-Type": "application/json"})
        status, headers, data = self._forward(h.command, h.path, h.headers, body)
        self._send(h, status, data, headers)

    def _forward(self, method: str, path: str, headers, body: bytes):
        import http.client

        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            sent = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection", "content-length")}
            connection.request(method, path, body=body if method not in ("GET", "HEAD") else None, headers=sent)
            answer = connection.getresponse()
            data = answer.read()
            return answer.status, {k: v for k, v in answer.getheaders()}, data
        finally:
            connection.close()

    @staticmethod
    def _send(h, status: int, data: bytes, headers: dict[str, str]) -> None:
        h.send_response(status)
        for key, value in headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                h.send_header(key, value)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)

    def close(self) -> None:
        self.httpd.shutdown()


class AzuriteServer(_Emulator):
    """Azurite (Microsoft's Azure Storage emulator, from npm) serving blobs on loopback, with its
    well-known development account."""

    scheme, protocol = "az", "abfs"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, directory: Path, exe: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/devstoreaccount1"
        self.options = {"connection_string": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                        f"AccountKey={self.KEY};BlobEndpoint={self.url};"}
        self._start([exe, "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(directory),
                     "--skipApiVersionCheck", "--loose", "--silent"], directory, "azurite-blob")


def azurite_executable() -> str | None:
    """Azurite's blob server: ``AZURITE_BLOB`` (.ci/run installs it from npm), or on PATH."""
    found = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    return found if found and Path(found).exists() else None


def ctrl_c_reaches() -> None:
    """In the child before exec: SIGINT as a terminal gives it. A test runner started in the
    background by a shell (`cmd &`, nohup) ignores SIGINT, and an ignored signal stays ignored
    across exec, so Python would never see the Ctrl-C these tests send."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
