"""Hostile inputs, with the real thing: a FIFO from os.mkfifo, a loopback server that drips its
headers, a many-scan progressive JPEG, non-UTF-8 file names, peak RSS measured in a subprocess.

Each test bounds itself in time (a call that hangs fails the test instead of hanging it).
"""

import io
import json
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from harness import clean_environ

from zstagger import ConfigurationError, ImageLoadError, Taxonomy, TaxonomyError
from zstagger.images import ImagePolicy, fetch_url, load_image
from zstagger.testing import sample_image

ROOT = Path(__file__).resolve().parents[1]


def within(seconds, func, *args):
    """Run ``func`` in a thread: its result or exception, and how long it took. A call still
    running after ``seconds`` fails the test (instead of hanging it)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    elapsed = time.monotonic() - start
    if thread.is_alive():
        raise AssertionError(f"{getattr(func, '__name__', func)} still running after {seconds}s")
    return outcome.get("error", outcome.get("value")), elapsed


def zstagger(*args, env=None, stdin=None, timeout=180, memory_cap=None):
    """The real `zstagger` command; bytes in, bytes out (file names need not be UTF-8).

    ``memory_cap`` (bytes of address space) turns an unbounded read into a quick
    MemoryError in the child instead of a machine that swaps.
    """
    exe = shutil.which("zstagger")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]
    full_env = clean_environ()
    full_env.update(env or {})
    cap = (lambda: resource.setrlimit(resource.RLIMIT_AS, (memory_cap, memory_cap))) if memory_cap else None
    return subprocess.run(cmd, env=full_env, input=stdin, capture_output=True, timeout=timeout, cwd=ROOT, preexec_fn=cap,
                          check=False)


def records(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "photo.jpg"
    os.mkfifo(path)
    yield path
    try:  # release a reader that an unfixed build left blocked in open()
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


@pytest.fixture
def unix_socket(tmp_path):
    path = tmp_path / "sock.png"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    yield path
    server.close()


# --- 1. non-regular files: FIFOs, devices, sockets --------------------------------------


def test_fifo_device_and_socket_paths_are_error_records_at_once(fifo, unix_socket, tmp_path):
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero, unix_socket):
        error, elapsed = within(10, load_image, path)
        assert isinstance(error, ImageLoadError), (path, error)
        assert error.kind == "not_a_file" and str(path) in error.message
        assert elapsed < 2


def test_a_fifo_in_a_directory_is_one_error_record_and_the_rest_is_tagged(fifo, tiny_model_dir):
    sample_image(1, (50, 40)).save(fifo.parent / "a.png")
    result = zstagger("tag", str(fifo.parent), "--labels", "a,b", "--model", str(tiny_model_dir), timeout=120)
    assert result.returncode == 1, result.stderr
    by_name = {Path(r["image"]).name: r for r in records(result.stdout)}
    assert by_name["a.png"]["error"] is None
    assert by_name["photo.jpg"]["error"]["type"] == "not_a_file"


def test_upload_refuses_non_regular_files_without_blocking(fifo):
    from zstagger.queue.client import load_refs_for_upload

    error, elapsed = within(10, lambda: list(load_refs_for_upload([str(fifo)], 1000)))
    assert isinstance(error, ConfigurationError) and str(fifo) in str(error) and "not a regular file" in str(error)
    assert elapsed < 2


def test_taxonomy_files_that_are_fifos_or_huge_are_clear_errors(tmp_path):
    pipe = tmp_path / "pipe.yaml"
    os.mkfifo(pipe)
    try:
        error, _ = within(10, Taxonomy.from_file, pipe)
    finally:
        try:
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert isinstance(error, TaxonomyError) and str(pipe) in str(error) and "not a regular file" in str(error)
    huge = tmp_path / "huge.yaml"
    with open(huge, "wb") as fh:
        fh.truncate(17 * 1024 * 1024)  # sparse: costs no disk
    error, _ = within(10, Taxonomy.from_file, huge)
    assert isinstance(error, TaxonomyError) and str(huge) in str(error) and "16 MiB" in str(error)


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_bad_file_on_the_taxonomy_path_is_a_clear_error_of_its_own(tmp_path, kind):
    """Never read (no hang on a FIFO, no endless /dev/zero): reported, named, and only that taxonomy
    is unusable; the others, built-ins included, work."""
    directory = tmp_path / "taxonomies"
    directory.mkdir()
    (directory / "good.yaml").write_text("name: birds\nlabels:\n  - name: owl\n")
    bad = directory / "bad.yaml"
    os.mkfifo(bad) if kind == "fifo" else bad.symlink_to("/dev/zero")
    env = {"ZSTAGGER_TAXONOMY_PATH": str(directory)}
    result = zstagger("taxonomies", env=env, timeout=60, memory_cap=6 << 30)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert str(bad) in stderr and "not a regular file" in stderr and "Traceback" not in stderr
    listed = result.stdout.decode()
    assert "birds" in listed and "moderation" in listed and f"invalid bad: cannot read taxonomy file: {bad}" in listed
    used = zstagger("taxonomies", "show", "bad", env=env, timeout=60, memory_cap=6 << 30)
    assert used.returncode == 2 and "not a regular file" in used.stderr.decode() and str(bad) in used.stderr.decode()


# --- 2. URL deadline over the whole exchange ---------------------------------------------


DRIPS = {
    # A status line and headers, one byte every 0.2 s: http.client reads them with one recv per
    # fragment, each within its own timeout.
    "http": b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4\r\nX-Pad: " + b"x" * 200,
    # A TLS record header announcing 16 KB of handshake, then its body a byte at a time.
    "https": b"\x16\x03\x03\x40\x00" + b"\x00" * 300,
}


@pytest.fixture(params=sorted(DRIPS))
def dripping_server(request):
    """Accepts, reads the request (or ClientHello), then drips its answer one byte every 0.2 s."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.recv(4096)
                for byte in DRIPS[request.param]:
                    if stop.wait(0.2):
                        break
                    try:
                        conn.sendall(bytes([byte]))
                    except OSError:
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"{request.param}://127.0.0.1:{listener.getsockname()[1]}/img.png"
    stop.set()
    thread.join(5)
    listener.close()


def test_the_url_timeout_bounds_headers_and_tls_handshake(dripping_server):
    policy = ImagePolicy(allow_private_urls=True, url_timeout=1.0)
    error, elapsed = within(15, fetch_url, dripping_server, policy)
    assert isinstance(error, ImageLoadError) and error.kind == "fetch_timeout" and error.transient, error
    assert elapsed < 1.0 + 1.0, elapsed


# --- 3. progressive JPEG scan bombs --------------------------------------------------------


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment, entropy-coded data included in its SOS segment."""
    pos, found = 2, []
    while True:
        marker = data[pos + 1]
        if marker == 0xD9:
            found.append((marker, pos, pos + 2))
            return found
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        end = pos + 2 + length
        if marker == 0xDA:
            while data[end] != 0xFF or data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
        found.append((marker, pos, end))
        pos = end


def scan_bomb(scans: int, side: int = 2048) -> bytes:
    """A flat progressive JPEG whose last refinement scan is repeated: each copy is 16 bytes,
    and each makes the decoder walk every block of the image again."""
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 130, 140)).save(buf, format="JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    segments = jpeg_segments(data)
    marker, start, end = segments[-2]
    assert marker == 0xDA
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * scans + data[eoi:]


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_before_decoding(tmp_path):
    bomb = scan_bomb(5000)
    assert len(bomb) < 150_000
    error, elapsed = within(120, load_image, bomb)
    assert isinstance(error, ImageLoadError) and error.kind == "too_many_scans", error
    assert "ZSTAGGER_MAX_JPEG_SCANS" in error.message and elapsed < 2
    path = tmp_path / "bomb.jpg"
    path.write_bytes(bomb)
    error, _ = within(120, load_image, path)
    assert isinstance(error, ImageLoadError) and error.kind == "too_many_scans"


def test_ordinary_jpegs_pass_the_scan_walk():
    from zstagger.images.jpeg import count_scans

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8))
    cases = {
        "baseline": ({}, 1),
        "progressive": ({"progressive": True}, 10),  # libjpeg's default progression script
        "restart markers": ({"restart_marker_blocks": 1}, 1),  # RSTn inside the entropy-coded data
        "grayscale progressive": ({"progressive": True, "mode": "L"}, 6),
    }
    for name, (options, scans) in cases.items():
        options = dict(options)
        image = noise.convert(options.pop("mode", "RGB"))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=95, **options)
        data = buf.getvalue()
        assert data.count(b"\xff\x00") > 10, name  # stuffed 0xFF bytes are data, not markers
        assert count_scans(data, limit=100) == scans, name
        assert load_image(data).size == image.size
    assert count_scans(scan_bomb(500, side=64), limit=100) == 101  # stops counting past the limit


def progressive_photo(width: int, height: int) -> bytes:
    """A photo-like progressive JPEG (smooth gradients and sensor noise), libjpeg's 10 scans."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 8, (height, width, 3)).astype(np.float32)
    planes = np.stack([np.sin(x / 200) * 90 + 128, np.cos(y / 150) * 90 + 128, (x + y) / (width + height) * 255], axis=-1)
    buf = io.BytesIO()
    Image.fromarray((planes + noise).clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90, progressive=True)
    return buf.getvalue()


def test_decode_work_is_bounded_by_scans_times_pixels_not_scans_alone():
    """99 scans (inside the 100-scan cap) of a 16-megapixel image: each refinement scan is a few
    bytes yet a full pass over the image; an ordinary progressive 12-megapixel photo passes."""
    from zstagger.images.jpeg import count_scans

    bomb = scan_bomb(89, side=4096)  # libjpeg's 10 scans and 89 copies of the last one
    assert count_scans(bomb, limit=100) == 99 and len(bomb) < 200_000
    error, _ = within(120, load_image, bomb)
    assert isinstance(error, ImageLoadError) and error.kind == "too_many_scans", error
    assert "99 scans of 4096x4096 pixels" in error.message and "ZSTAGGER_MAX_JPEG_SCAN_PIXELS" in error.message
    photo = progressive_photo(4000, 3000)
    assert count_scans(photo, limit=100) == 10
    assert load_image(photo).size == (4000, 3000)
    # the limit is a setting: below this photo's 10 x 12 million scan-pixels it is refused too
    with pytest.raises(ImageLoadError, match="10 scans of 4000x3000 pixels = 120,000,000 scan-pixels"):
        load_image(photo, ImagePolicy(max_jpeg_scan_pixels=100_000_000))


# --- 4. memory: strip-wise conversion and a budget for bytes in flight ---------------------

PEAK_RSS = textwrap.dedent(
    """
    import json, sys
    from zstagger.images import ImagePolicy
    from zstagger.tagger import Tagger
    from zstagger.testing import sample_image

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # MiB

    model, runs = sys.argv[1], json.loads(sys.argv[2])
    for run in runs:
        policy = ImagePolicy(max_decode_bytes=run["budget"]) if run["budget"] else None
        with Tagger(model, precision="fp32", loader_threads=run["threads"], lanes=1, image_policy=policy) as tagger:
            tagger.tag([sample_image(0, (300, 200))], labels=["a", "b"])  # warm up: thread pools, kernels
            before = status("VmRSS")
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the high-water mark (VmHWM) to the current RSS
            results = tagger.tag(run["paths"], labels=["a", "b"])
            peak = status("VmHWM")
        errors = [r.error and r.error.model_dump() for r in results]
        print(json.dumps({"peak_mib": peak - before, "errors": errors}), flush=True)
    """
)


def peak_rss(model_dir, runs: list[dict]) -> list[dict]:
    """For each run (paths, loader threads, decode budget), tagged in one fresh process:
    how far above the RSS before it tagging peaked (MiB, from VmHWM), and the errors."""
    env = clean_environ()
    runs = [{"threads": 1, "budget": None, **run, "paths": [str(p) for p in run["paths"]]} for run in runs]
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, str(model_dir), json.dumps(runs)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT / "tests", check=False)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.strip().splitlines()]


def gradient(side: int) -> np.ndarray:
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    return ramp[None, :] * 0.6 + ramp[:, None] * 0.4


def test_large_images_peak_at_about_source_plus_rgb_output(tmp_path, tiny_model_dir):
    """8000x8000 (64 MP, the default pixel limit): a 16-bit grey PNG, a float TIFF, an RGBA PNG."""
    side = 8000
    g = gradient(side)
    Image.fromarray((g * 65535).astype(np.uint16)).save(tmp_path / "grey16.png", compress_level=1)
    Image.fromarray(np.round(g * 64) / 64 * 3.5, "F").save(tmp_path / "float.tif", compression="tiff_deflate")
    rgba = np.empty((side, side, 4), dtype=np.uint8)
    rgba[..., 0] = (g * 255).astype(np.uint8)
    rgba[..., 1] = 255 - rgba[..., 0]
    rgba[..., 2] = 90
    rgba[..., 3] = (g.T * 255).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png", compress_level=1)
    del g, rgba
    sources = {"grey16.png": 122, "float.tif": 244, "rgba.png": 244}  # MiB decoded, as Pillow holds them
    reports = peak_rss(tiny_model_dir, [{"paths": [tmp_path / name]} for name in sources])
    for (name, source_mib), report in zip(sources.items(), reports):
        assert report["errors"] == [None], name
        # Converting holds the source and the RGB output (Pillow: 4 bytes a pixel, 244 MiB); then the
        # source is freed and the resize reads a uint8 array (183 MiB). The old code peaked near 2 GiB.
        bound = max(source_mib + 244, 244 + 183) + 120
        print(f"{name}: peak RSS +{report['peak_mib']:.0f} MiB (bound {bound})")
        assert report["peak_mib"] < bound, name


def test_decode_budget_bounds_bytes_in_flight_across_loader_threads(tmp_path, tiny_model_dir):
    side = 4000
    g = gradient(side)
    rgba = np.dstack([(g * 255).astype(np.uint8)] * 3 + [(g.T * 255).astype(np.uint8)])
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"big{i}.png")
        Image.fromarray(np.roll(rgba, i * 7, axis=1), "RGBA").save(paths[-1], compress_level=1)
    del g, rgba
    free, tight, refused = peak_rss(tiny_model_dir, [
        {"paths": paths, "threads": 4, "budget": 64 << 30},
        {"paths": paths, "threads": 4, "budget": 250 << 20},  # room for one of them at a time
        {"paths": paths[:1], "budget": 100 << 20},
    ])
    print(f"4 loader threads, 4 images of {side}x{side} RGBA: peak +{free['peak_mib']:.0f} MiB unbounded, "
          f"+{tight['peak_mib']:.0f} MiB with a 250 MiB budget")
    assert free["errors"] == tight["errors"] == [None] * 4
    assert tight["peak_mib"] < 0.6 * free["peak_mib"]
    error = refused["errors"][0]
    assert error["type"] == "too_large" and "ZSTAGGER_MAX_DECODE_BYTES" in error["message"]


# --- 5. file names that are not UTF-8 ------------------------------------------------------


@pytest.fixture
def latin1_dir(tmp_path):
    """b"caf\\xe9.png" (Latin-1, invalid UTF-8) and a later image, in a directory."""
    directory = os.fsencode(tmp_path / "names")
    os.mkdir(directory)
    for name, seed in ((b"caf\xe9.png", 1), (b"z.png", 2)):
        with open(os.path.join(directory, name), "wb") as fh:
            sample_image(seed, (40, 30)).save(fh, format="PNG")
    return directory


def test_results_round_trip_names_that_are_not_utf8():
    from zstagger.results import TagResult

    name = os.fsdecode(b"/photos/caf\xe9.png")
    line = TagResult.failed(name, "labels", "not_found", f"no such file: {name}").to_json()
    line.encode("utf-8")  # printable, storable
    assert "\\udce9" in line
    back = TagResult.from_json(line)
    assert os.fsencode(back.image) == b"/photos/caf\xe9.png" and back.error.message.endswith(name)
    assert json.loads(line)["image"] == name
    unicode_name = TagResult(image="/photos/\u732b.png", taxonomy="t").to_json()
    assert "\u732b" in unicode_name  # valid text stays readable


@pytest.mark.parametrize("via", ["directory", "stdin"])
def test_tag_keeps_non_utf8_names_and_every_later_input(latin1_dir, tiny_model_dir, via):
    args = [latin1_dir] if via == "directory" else ["-"]
    stdin = None if via == "directory" else b"".join(os.path.join(latin1_dir, n) + b"\n" for n in (b"caf\xe9.png", b"z.png"))
    result = zstagger("tag", *args, "--labels", "a,b", "--model", str(tiny_model_dir), "--format", "jsonl", stdin=stdin)
    assert result.returncode == 0, result.stderr
    found = records(result.stdout)
    assert [os.fsencode(r["image"]) for r in found] == [os.path.join(latin1_dir, n) for n in (b"caf\xe9.png", b"z.png")]
    assert all(r["error"] is None for r in found)


# --- 6. templates ------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["{:>300000000}", "{{}}"])
def test_tag_and_enqueue_refuse_bad_templates_before_any_work(template):
    for command in ("tag", "enqueue"):
        result = zstagger(command, "missing.png", "--labels", "a,b", "--template", template,
                          env={"ZSTAGGER_REDIS_URL": "redis://127.0.0.1:1/0"}, timeout=60)
        stderr = result.stderr.decode()
        assert result.returncode == 2, (command, stderr)
        assert "only a bare '{}'" in stderr and "Traceback" not in stderr


# --- 13. address policy -------------------------------------------------------------------------

BLOCKED = [
    "::169.254.169.254",  # IPv4-compatible (deprecated)
    "::127.0.0.1",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:a9fe:a9fe::",  # 6to4 embedding 169.254.169.254
    "2002:808:808::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "fec0::1",  # site-local (deprecated)
    "::ffff:169.254.169.254",  # IPv4-mapped: the embedded IPv4 is checked
    "::ffff:10.0.0.1",
    "::ffff:0:10.0.0.1",  # IPv4-translated
    "ff0e::1",  # global-scope multicast
    "224.0.0.1",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254", "127.0.0.1", "10.1.2.3", "0.0.0.0", "::1", "fe80::1", "fd00::1",
]


@pytest.mark.parametrize("address", BLOCKED)
def test_translated_and_deprecated_addresses_are_refused_before_any_connect(address):
    import ipaddress

    host = f"[{address}]" if ":" in address else address
    error, _ = within(10, fetch_url, f"http://{host}:9/x.png")
    assert isinstance(error, ImageLoadError) and error.kind == "url_blocked", error
    assert "ZSTAGGER_ALLOW_PRIVATE_URLS" in error.message

    from zstagger.errors import UrlBlockedError
    from zstagger.net.addresses import check_address

    with pytest.raises(UrlBlockedError):
        check_address(ipaddress.ip_address(address), allow_private=False)
    check_address(ipaddress.ip_address(address), allow_private=True)


# NAT64's well-known prefix carries the IPv4 address it reaches in its last 32 bits: on an
# IPv6-only network with DNS64 every IPv4-only site resolves to one, so it is judged by that.
@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_pass_the_check(address):
    import ipaddress

    from zstagger.net.addresses import check_address

    check_address(ipaddress.ip_address(address), allow_private=False)


# --- the same inputs through a real worker ---------------------------------------------------------


def test_a_worker_records_fifos_and_odd_names_and_refuses_bad_specs(tmp_path, tiny_model_dir, latin1_dir, fifo):
    from harness import RedisServer, Worker, wait_for

    from zstagger.queue.celery_app import TASK_NAME, app_for
    from zstagger.queue.jobstore import JobStore
    from zstagger.settings import Settings

    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    env = {"ZSTAGGER_REDIS_URL": server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
           "ZSTAGGER_VISIBILITY_TIMEOUT": "30", "ZSTAGGER_METRICS_PORT": "0"}
    worker = Worker("hostile", env, tmp_path)
    try:
        worker.wait_ready()
        cafe, later = (os.path.join(latin1_dir, name) for name in (b"caf\xe9.png", b"z.png"))
        enqueued = zstagger("enqueue", str(fifo).encode(), cafe, later, "--labels", "a,b", env=env, timeout=60)
        assert enqueued.returncode == 0, enqueued.stderr
        job_id = enqueued.stdout.decode().strip()
        done = zstagger("results", job_id, "--wait", "--timeout", "60", env=env, timeout=90)
        assert done.returncode == 1, done.stderr  # one input failed, the job finished
        found = records(done.stdout)
        assert found[0]["error"]["type"] == "not_a_file"
        assert [os.fsencode(r["image"]) for r in found[1:]] == [cafe, later]
        assert [r["error"] for r in found[1:]] == [None, None]

        # A producer that skips validation pushes a spec whose template would render gigabytes.
        settings = Settings(redis_url=server.url)
        store = JobStore(server.client())
        job_id = uuid.uuid4().hex
        store.create(job_id, 1, int(time.time()) + 600, chunks=1, queue="bulk", taxonomy="x", fingerprint="x")
        spec = {"name": "x", "templates": ["{:>300000000}"], "labels": [{"name": "a"}, {"name": "b"}]}
        app_for(settings).send_task(TASK_NAME, args=(job_id, [[0, os.fsdecode(cafe)]], spec), queue="bulk")
        wait_for(lambda: "only a bare '{}'" in worker.output(), 60, "the worker to refuse the spec")
        refused = zstagger("results", job_id, "--wait", "--timeout", "60", env=env, timeout=90)
        assert refused.returncode == 1  # the job finished: its input is an error record saying why
        record = records(refused.stdout)[0]
        assert record["error"]["type"] == "invalid_taxonomy" and "only a bare '{}'" in record["error"]["message"]
        again = zstagger("enqueue", later, "--labels", "a,b", env=env, timeout=60)
        job_id = again.stdout.decode().strip()
        done = zstagger("results", job_id, "--wait", "--timeout", "60", env=env, timeout=90)
        assert done.returncode == 0 and records(done.stdout)[0]["error"] is None  # still serving
    finally:
        worker.terminate(timeout=20)
        server.stop()
