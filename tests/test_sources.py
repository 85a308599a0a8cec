"""Image sources against a real S3-compatible server (moto's server mode on loopback): listing a
prefix lazily, reading objects within the size cap and the time budget, the allow-list,
credentials in URLs, hanging sources, and skipping unchanged objects by their version."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
import tracemalloc

import pytest

from harness import run_cli, serve_loopback
from zstagger import Tagger
from zstagger.errors import ImageLoadError, SourceRefusedError
from zstagger.images import ImagePolicy
from zstagger.sources import ObjectInfo, check_reference, expand_prefixes, list_prefix, read_bytes
from zstagger.testing import registered_plugin, sample_image

BUCKET = "photos"


def jpeg(seed: int, size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    sample_image(seed, size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(s3_server):
    """A bucket: 12 JPEGs under in/ (two of them nested), a "folder" marker key, a large object."""
    s3_server.bucket(BUCKET)
    items = {f"in/{i:03d}.jpg": jpeg(i) for i in range(10)}
    items.update({"in/nested/a.jpg": jpeg(20), "in/nested/b.jpg": jpeg(21), "in/folder/": b"",
                  "big/huge.jpg": b"\xff\xd8" + bytes(300_000)})
    s3_server.put_many(BUCKET, items)
    return sorted(key for key in items if key.startswith("in/") and not key.endswith("/"))


def requests_for(s3_server, pattern: str) -> int:
    """How many requests moto's log shows whose request line matches ``pattern``."""
    s3_server.log.flush()
    text = (s3_server.log.name and open(s3_server.log.name).read()) or ""
    return len(re.findall(pattern, text))


# -- tagging a prefix -----------------------------------------------------------------------


def test_a_prefix_is_listed_and_every_object_tagged_named_by_its_url(s3_server, photos, tiny_model_dir):
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=4) as tagger:
        results = tagger.tag([f"s3://{BUCKET}/in/", f"s3://{BUCKET}/in/003.jpg"], labels=["cat", "dog"])
        local = tagger.tag([jpeg(3)], labels=["cat", "dog"])[0]
    assert [r.image for r in results] == [f"s3://{BUCKET}/{key}" for key in photos] + [f"s3://{BUCKET}/in/003.jpg"]
    assert all(r.error is None for r in results)
    # the same bytes from the store and from memory score the same
    assert [s.score for s in results[-1].scores] == pytest.approx([s.score for s in local.scores], abs=1e-6)


def test_cli_tags_a_prefix_as_a_stream(s3_server, photos, tiny_model_dir):
    env = {**s3_server.env, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
           "ZSTAGGER_SOURCE_PAGE_SIZE": "5"}
    done = run_cli("tag", f"s3://{BUCKET}/in/", "--labels", "cat,dog", "--format", "jsonl", env=env, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == [f"s3://{BUCKET}/{key}" for key in photos]
    refused = run_cli("tag", "s3://KEY:SECRET@photos/in/", "--labels", "cat", env=env, timeout=60)
    assert refused.returncode == 2 and "credentials in a URL are refused" in refused.stderr
    assert "SECRET" not in refused.stderr and "Traceback" not in refused.stderr


def test_listing_is_paged_by_the_store(s3_server, photos):
    before = requests_for(s3_server, r"GET /photos\?list-type=2&prefix=in(?:/|%2F)&max-keys=5&")
    pages = list(list_prefix(f"s3://{BUCKET}/in/", ImagePolicy(), page_size=5))
    assert [len(page) for page in pages] == [5, 5, 2]  # 13 keys, the folder marker left out of its page
    assert requests_for(s3_server, r"GET /photos\?list-type=2&prefix=in(?:/|%2F)&max-keys=5&") - before == 3
    after = list(list_prefix(f"s3://{BUCKET}/in/", ImagePolicy(), page_size=100, start_after=pages[0][-1].url))
    assert [item.url for page in after for item in page] == [item.url for page in pages[1:] for item in page]


# -- hostile references ---------------------------------------------------------------------


def test_a_key_that_is_a_directory_is_an_error_for_that_input(s3_server, photos):
    for ref in (f"s3://{BUCKET}/in/folder", f"s3://{BUCKET}/in/nested"):
        with pytest.raises(ImageLoadError) as caught:
            read_bytes(ref, ImagePolicy())
        assert caught.value.kind == "not_a_file" and "is a directory" in caught.value.message


def test_an_object_over_the_size_cap_is_refused_before_its_body_is_read(s3_server, photos):
    gets = requests_for(s3_server, r'"GET /photos/big/huge\.jpg')
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(f"s3://{BUCKET}/big/huge.jpg", ImagePolicy(max_bytes=100_000))
    assert caught.value.kind == "too_large"
    assert "300,002 bytes, over the 100,000-byte limit (ZSTAGGER_MAX_IMAGE_BYTES)" in caught.value.message
    assert requests_for(s3_server, r'"GET /photos/big/huge\.jpg') == gets  # its size came from a HEAD; no GET
    heads = requests_for(s3_server, r'"HEAD /photos/big/huge\.jpg')
    listed = list(expand_prefixes(iter([f"s3://{BUCKET}/big/"]), ImagePolicy()))
    with pytest.raises(ImageLoadError, match="300,002 bytes"):
        read_bytes(listed[0], ImagePolicy(max_bytes=100_000))
    assert requests_for(s3_server, r'"HEAD /photos/big/huge\.jpg') == heads  # listed: its size was known
    assert requests_for(s3_server, r'"GET /photos/big/huge\.jpg') == gets
    assert len(read_bytes(f"s3://{BUCKET}/big/huge.jpg", ImagePolicy(max_bytes=400_000))) == 300_002


def test_outside_the_allow_list_and_credentials_in_urls_are_refused(s3_server, photos):
    allowed = ImagePolicy(source_allow=(f"s3://{BUCKET}/in/",))
    assert read_bytes(f"s3://{BUCKET}/in/000.jpg", allowed) == jpeg(0)
    for ref, said in [(f"s3://{BUCKET}/big/huge.jpg", "outside the locations that may be read (ZSTAGGER_SOURCE_ALLOW)"),
                      (f"s3://{BUCKET}/in-other/x.jpg", "outside"),  # a prefix of the name is not a folder
                      ("s3://other-bucket/in/000.jpg", "outside"),
                      (f"s3://AKIAKEY:SECRETKEY@{BUCKET}/in/000.jpg", "credentials in a URL are refused"),
                      (f"simplecache::s3://{BUCKET}/in/000.jpg", "chained URLs are refused"),
                      (f"s3://{BUCKET}/in/../big/huge.jpg", "'..' segments are refused"),
                      (f"s3://{BUCKET}/in/000.jpg?versionId=1", "queries")]:
        with pytest.raises(ImageLoadError) as caught:
            read_bytes(ref, allowed)
        assert caught.value.kind == "source_refused" and said in caught.value.message, ref
        assert "SECRETKEY" not in caught.value.message
    # over HTTP (untrusted), an empty allow-list reads nothing from object stores
    with pytest.raises(SourceRefusedError, match="refused over HTTP unless ZSTAGGER_SOURCE_ALLOW"):
        check_reference(f"s3://{BUCKET}/in/000.jpg", (), trusted=False)
    assert check_reference(f"s3://{BUCKET}/in/000.jpg", (f"s3://{BUCKET}/in/",), trusted=False)


class HangingSource:
    """A plugin source whose reads never return (a backend that hangs)."""

    schemes = ("hang",)

    def __init__(self):
        self.release = threading.Event()

    def open(self, url, request):
        self.release.wait(60)
        return b""


def test_a_source_that_hangs_costs_the_time_budget_only(tiny_model_dir):
    source = HangingSource()

    class Plugin:
        from zstagger import hookimpl

        @hookimpl
        def register_image_sources(self, register):
            register(source)

    try:
        with registered_plugin(Plugin(), name="hanging-source"):
            started = time.monotonic()
            with pytest.raises(ImageLoadError) as caught:
                read_bytes("hang://somewhere/x.jpg", ImagePolicy(url_timeout=0.5))
            assert caught.value.kind == "fetch_timeout" and caught.value.transient
            assert time.monotonic() - started < 2.0
            with Tagger(str(tiny_model_dir), device="cpu", precision="fp32",
                        image_policy=ImagePolicy(url_timeout=0.5)) as tagger:
                started = time.monotonic()
                results = tagger.tag(["hang://a/1.jpg", jpeg(1), "hang://a/2.jpg"], labels=["cat", "dog"])
            assert [r.error.type if r.error else None for r in results] == ["fetch_timeout", None, "fetch_timeout"]
            assert time.monotonic() - started < 10
    finally:
        source.release.set()


def test_an_object_store_that_never_answers_times_out(s3_server, monkeypatch):  # (its credentials)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts connections (the kernel does) and never answers
    port = silent.getsockname()[1]
    monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"endpoint_url": f"http://127.0.0.1:{port}"}}))
    try:
        started = time.monotonic()
        with pytest.raises(ImageLoadError) as caught:
            read_bytes(f"s3://{BUCKET}/in/000.jpg", ImagePolicy(url_timeout=1.0))
        assert caught.value.kind == "fetch_timeout"
        assert time.monotonic() - started < 5
    finally:
        silent.close()


class HostileStore:
    """An "S3 endpoint" on loopback that answers every GET one way: ``endless`` (200, bytes
    without end, whatever the Range said), ``drip`` (200 for 100 kB, sent a byte every 0.1 s,
    for 10 s at most), ``short`` (200 for 100 kB, then 64 kB and the connection closed),
    ``refuse`` (403) or ``slowdown`` (503). ``gets`` lists each request's path."""

    def __init__(self, mode: str):
        import http.server

        gets: list[str] = []
        self.gets = gets

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                gets.append(self.path)
                if mode in ("refuse", "slowdown"):
                    self.send_error(403 if mode == "refuse" else 503)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(10**12) if mode == "endless" else "100000")
                self.end_headers()
                try:
                    for _ in range({"drip": 100, "short": 1}.get(mode, 10**6)):
                        self.wfile.write(b"x" if mode == "drip" else bytes(65536))
                        self.wfile.flush()
                        if mode == "drip":
                            time.sleep(0.1)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.httpd, self.url = serve_loopback(Handler)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile_store(s3_server, monkeypatch):  # (the S3 server's credentials)
    stores = []

    def start(mode: str) -> HostileStore:
        store = HostileStore(mode)
        stores.append(store)
        monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"endpoint_url": store.url}}))
        return store

    yield start
    for store in stores:
        store.close()


def test_a_listed_object_is_read_with_one_presigned_get(s3_server, photos):
    from zstagger.sources import ObjectRef

    before = requests_for(s3_server, r'"GET /photos/in/001\.jpg[? ]')
    data = read_bytes(ObjectRef(f"s3://{BUCKET}/in/001.jpg", len(jpeg(1)), None), ImagePolicy())
    assert data == jpeg(1)
    assert requests_for(s3_server, r'"(GET|HEAD) /photos/in/001\.jpg[? ]') == before + 1  # no HEAD: the listing's size
    assert requests_for(s3_server, r'"GET /photos/in/001\.jpg\?[^ ]*X-Amz-Signature=') >= 1  # presigned, SigV4


def test_a_configuration_the_presigned_path_cannot_honour_reads_through_s3fs(s3_server, photos, monkeypatch):
    from zstagger.sources import ObjectRef

    monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"requester_pays": False}}))
    before = requests_for(s3_server, r'"GET /photos/in/002\.jpg ')
    assert read_bytes(ObjectRef(f"s3://{BUCKET}/in/002.jpg", len(jpeg(2)), None), ImagePolicy()) == jpeg(2)
    assert requests_for(s3_server, r'"GET /photos/in/002\.jpg ') == before + 1  # s3fs's own signed GET, no query


def test_a_store_ignoring_the_range_is_refused_at_the_cap(hostile_store):
    from zstagger.sources import ObjectRef

    hostile_store("endless")
    started = time.monotonic()
    with pytest.raises(ImageLoadError) as caught:  # the listing said 10 bytes; the store sends without end
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 10, None), ImagePolicy(max_bytes=300_000, url_timeout=5))
    assert caught.value.kind == "too_large", caught.value
    assert time.monotonic() - started < 3


def test_a_store_dripping_an_object_times_out_at_the_budget(hostile_store):
    from zstagger.sources import ObjectRef

    hostile_store("drip")
    started = time.monotonic()
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100_000, None), ImagePolicy(url_timeout=1.0))
    assert caught.value.kind == "fetch_timeout", caught.value
    assert time.monotonic() - started < 3


def test_an_object_cut_off_by_the_store_is_a_transient_error(hostile_store):
    from zstagger.sources import ObjectRef

    hostile_store("short")
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100_000, None), ImagePolicy(url_timeout=5))
    assert caught.value.kind == "source_failed" and caught.value.transient, caught.value
    assert "65,536 of 100,000 bytes" in str(caught.value)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # (verification off, as asked)
def test_an_https_store_is_read_with_the_sdks_certificate_rules(tmp_path, monkeypatch):
    from harness import S3Server
    from zstagger.sources import ObjectRef

    server = S3Server(tmp_path, tls=True)  # a certificate no system bundle trusts
    try:
        for key, value in server.env.items():
            monkeypatch.setenv(key, value)
        server.bucket("secure")
        server.client().put_object(Bucket="secure", Key="a.jpg", Body=jpeg(5))
        ref = ObjectRef("s3://secure/a.jpg", len(jpeg(5)), None)
        presigned, plain = r'"GET /secure/a\.jpg\?[^ ]*X-Amz-Signature=', r'"GET /secure/a\.jpg '

        def read(options: dict) -> bytes:  # (each configuration its own filesystem and pool)
            monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"endpoint_url": server.url, **options}}))
            return read_bytes(ref, ImagePolicy(url_timeout=10))

        assert read({"client_kwargs": {"verify": False}}) == jpeg(5)  # verification off, as asked
        assert requests_for(server, presigned) == 1
        config = tmp_path / "aws-config"  # the CA named in the AWS configuration, as the SDK reads it
        config.write_text(f"[default]\nca_bundle = {server.ca}\n")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # (it would come first)
        assert read({"client_kwargs": {"region_name": "us-east-1"}}) == jpeg(5)
        assert requests_for(server, presigned) == 2 and requests_for(server, plain) == 0  # not through s3fs
        monkeypatch.delenv("AWS_CONFIG_FILE")  # verified against the default bundle: refused, as the SDK refuses it
        with pytest.raises(ImageLoadError) as caught:
            read({})
        assert "certificate" in str(caught.value).lower(), caught.value
    finally:
        server.close()


def test_a_store_name_that_resolves_slowly_costs_the_budget_only(s3_server, monkeypatch):
    import socket as sockets

    resolve = sockets.getaddrinfo

    def slow(host, *args, **kwargs):
        if host == "slow-dns.example":
            time.sleep(4)  # a resolver that hangs (glibc's waits 10-30 s on a dead DNS server)
            return resolve("127.0.0.1", *args, **kwargs)
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(sockets, "getaddrinfo", slow)
    monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"endpoint_url": "http://slow-dns.example:9"}}))
    from zstagger.sources import ObjectRef

    started = time.monotonic()
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100, None), ImagePolicy(url_timeout=1.0))
    assert caught.value.kind == "fetch_timeout", caught.value
    assert time.monotonic() - started < 2.5


def test_a_store_refusing_connections_is_not_called_a_timeout(s3_server, monkeypatch):
    from zstagger.sources import ObjectRef

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connections are refused at once
    monkeypatch.setenv("ZSTAGGER_SOURCE_OPTIONS", json.dumps({"s3": {"endpoint_url": f"http://127.0.0.1:{port}"}}))
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100, None), ImagePolicy(url_timeout=5))
    assert caught.value.kind == "source_failed" and "connect" in str(caught.value).lower(), caught.value


def test_presigned_gets_that_keep_failing_rest_and_say_so_once(hostile_store, caplog):
    from zstagger.sources import ObjectRef, s3get

    store = hostile_store("refuse")
    for _ in range(s3get.RESTING_AFTER + 3):
        with pytest.raises(ImageLoadError):
            read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100, None), ImagePolicy(url_timeout=5))
    presigned = [path for path in store.gets if "X-Amz-Signature=" in path]
    assert len(presigned) == s3get.RESTING_AFTER and len(store.gets) - len(presigned) == s3get.RESTING_AFTER + 3
    said = [r.getMessage() for r in caplog.records if "presigned" in r.getMessage()]
    assert len(said) == 1 and "HTTP 403" in said[0], said


def test_a_store_answering_slow_down_is_a_transient_error_at_once(hostile_store):
    from zstagger.sources import ObjectRef

    store = hostile_store("slowdown")
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100, None), ImagePolicy(url_timeout=5))
    assert caught.value.kind == "source_failed" and caught.value.transient and "503" in str(caught.value)
    assert len(store.gets) == 1  # the worker hands the chunk back; no second GET now


def test_a_presigned_get_the_store_refuses_is_asked_again_through_s3fs(hostile_store):
    from zstagger.sources import ObjectRef

    store = hostile_store("refuse")
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(ObjectRef(f"s3://{BUCKET}/in/x.jpg", 100, None), ImagePolicy(url_timeout=5))
    assert caught.value.kind == "unreadable", caught.value  # s3fs's answer: access denied
    assert "X-Amz-Signature=" in store.gets[0] and "?" not in store.gets[-1] and len(store.gets) >= 2


class ManyKeys:
    """A plugin source listing a million synthetic keys, a page at a time."""

    schemes = ("many",)

    def __init__(self, count):
        self.count = count

    def open(self, url, request):
        return b""

    def list(self, prefix, page_size, start_after=None):
        for first in range(0, self.count, page_size):
            yield [ObjectInfo(f"{prefix}{i:07d}.jpg", 1000, f"etag{i}") for i in range(first, min(self.count, first + page_size))]


def test_a_listing_of_a_million_keys_runs_in_constant_memory():
    class Plugin:
        from zstagger import hookimpl

        @hookimpl
        def register_image_sources(self, register):
            register(ManyKeys(1_000_000))

    with registered_plugin(Plugin(), name="many-keys"):
        tracemalloc.start()
        try:
            count = last = 0
            for ref in expand_prefixes(iter(["many://bucket/all/"]), ImagePolicy(), page_size=1000):
                count += 1
                last = ref
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert count == 1_000_000 and last == "many://bucket/all/0999999.jpg"
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while listing"  # a million URLs held at once: ~100 MiB


# -- the image cache keys objects by their version -----------------------------------------------


def test_unchanged_objects_are_not_read_again_and_a_changed_one_is(s3_server, photos, tiny_model_dir, tmp_path,
                                                                monkeypatch):
    monkeypatch.setenv("ZSTAGGER_CACHE_DIR", str(tmp_path / "cache"))
    prefix = f"s3://{BUCKET}/in/"
    pattern = r'"GET /photos/in/[^ ?]+\.jpg[? ]'  # (a presigned GET has a query)
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", image_cache=True) as tagger:
        first = tagger.tag([prefix], labels=["cat", "dog"])
        reads = requests_for(s3_server, pattern)
        assert reads >= len(first)
        again = tagger.tag([prefix], labels=["cat", "dog"])
        assert requests_for(s3_server, pattern) == reads  # every object's version was hashed before: none read
        assert [r.scores for r in again] == [r.scores for r in first]
        s3_server.client().put_object(Bucket=BUCKET, Key="in/004.jpg", Body=jpeg(99))
        try:
            changed = tagger.tag([prefix], labels=["cat", "dog"])
            assert requests_for(s3_server, pattern) == reads + 1  # only the changed object is read
            assert changed[4].scores != first[4].scores and changed[5].scores == first[5].scores
        finally:
            s3_server.client().put_object(Bucket=BUCKET, Key="in/004.jpg", Body=jpeg(4))


def test_manifests_may_name_object_urls(s3_server, photos, tmp_path):
    from zstagger import Taxonomy
    from zstagger.evaluation.datasets import load_dataset

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"s3://{BUCKET}/{key}", "labels": ["cat"]}) + "\n" for key in photos[:3]))
    dataset = load_dataset(str(manifest), Taxonomy.from_labels(["cat", "dog"]))
    assert [item.ref for item in dataset.items] == [f"s3://{BUCKET}/{key}" for key in photos[:3]]


# -- over HTTP: source URLs only where the server's allow-list says ------------------------------


def test_the_http_api_reads_object_urls_only_inside_its_allow_list(s3_server, photos, tiny_model_dir, tmp_path):
    import httpx

    from harness import ApiServer
    from zstagger.service.auth import hash_key

    key = "zst_sources-test-key"
    env = {**s3_server.env, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
           "ZSTAGGER_API_KEYS": hash_key(key), "ZSTAGGER_SOURCE_ALLOW": f"s3://{BUCKET}/in/"}
    headers = {"Authorization": f"Bearer {key}"}
    server = ApiServer(env, tmp_path).wait_ready()
    try:
        ok = httpx.post(server.url + "/v1/tag", headers=headers, timeout=60,
                        json={"images": [f"s3://{BUCKET}/in/001.jpg"], "labels": ["cat", "dog"]})
        assert ok.status_code == 200, ok.text
        assert ok.json()["results"][0]["image"] == f"s3://{BUCKET}/in/001.jpg" and ok.json()["results"][0]["error"] is None
        for url, said in [(f"s3://{BUCKET}/big/huge.jpg", "outside the locations that may be read"),
                          (f"s3://KEY:SECRET@{BUCKET}/in/001.jpg", "credentials in a URL are refused"),
                          ("nope://x/y.jpg", "outside the locations")]:
            refused = httpx.post(server.url + "/v1/tag", headers=headers, timeout=60, json={"images": [url], "labels": ["a"]})
            assert refused.status_code == 400 and said in refused.json()["error"]["message"], refused.text
            assert "SECRET" not in refused.text
    finally:
        server.stop()
    # the same server without an allow-list reads no object store at all
    server = ApiServer({k: v for k, v in env.items() if k != "ZSTAGGER_SOURCE_ALLOW"}, tmp_path).wait_ready()
    try:
        refused = httpx.post(server.url + "/v1/tag", headers=headers, timeout=60,
                             json={"images": [f"s3://{BUCKET}/in/001.jpg"], "labels": ["a"]})
        assert refused.status_code == 400 and "refused over HTTP unless ZSTAGGER_SOURCE_ALLOW" in refused.text
    finally:
        server.stop()
