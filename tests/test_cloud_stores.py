"""gs:// and az:// as image sources and result sinks, against real emulators on loopback:
gcp-storage-emulator (Google Cloud Storage's JSON API, from PyPI) and Azurite (Microsoft's Azure
Storage emulator, from npm; .ci/run installs it and sets ZSTAGGER_REQUIRE_AZURITE=1, so there a
missing Azurite fails rather than skips). Listing a prefix a page at a time and resuming after
a key, tagging a prefix from the CLI, an object's version the same from a listing and from a
HEAD, and a prefix job through a real worker into a JSON Lines sink in the same store."""

from __future__ import annotations

import io
import json
import os
import threading

import pytest

from harness import AzuriteServer, GCSServer, azurite_executable, run_cli, wait_for, worker_starter
from zstagger.errors import ImageLoadError
from zstagger.images import ImagePolicy
from zstagger.queue import enqueue
from zstagger.settings import Settings
from zstagger.sources import expand_prefixes, list_prefix, object_version, read_bytes
from zstagger.testing import sample_image

BUCKET = "photos"


def jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    sample_image(seed, (40, 32)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@pytest.fixture(scope="module", params=["gs", "az"])
def store(request, tmp_path_factory, monkeypatch_module):
    """One emulator per scheme, with a bucket (container) holding 12 JPEGs under in/ (two nested)
    and a "folder" marker; this process reaches it through ZSTAGGER_SOURCE_OPTIONS."""
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "gs":
        server = GCSServer(directory)
    else:
        exe = azurite_executable()
        if exe is None:
            if os.environ.get("ZSTAGGER_REQUIRE_AZURITE") == "1":
                pytest.fail("Azurite is not installed and ZSTAGGER_REQUIRE_AZURITE=1 (npm install azurite)")
            pytest.skip("Azurite is not installed (npm install azurite; AZURITE_BLOB=.../azurite-blob)")
        server = AzuriteServer(directory, exe)
    for key, value in server.env.items():
        monkeypatch_module.setenv(key, value)
    server.bucket(BUCKET)
    items = {f"in/{i:03d}.jpg": jpeg(i) for i in range(10)}
    items.update({"in/nested/a.jpg": jpeg(20), "in/nested/b.jpg": jpeg(21), "in/folder/": b""})
    server.put_many(BUCKET, items)
    server.photos = sorted(f"{server.scheme}://{BUCKET}/{key}" for key in items if not key.endswith("/"))
    yield server
    server.close()


def test_a_prefix_is_listed_a_page_at_a_time_and_resumes_after_a_key(store):
    prefix = f"{store.scheme}://{BUCKET}/in/"
    before = store.proxy.list_requests if store.scheme == "gs" else 0
    pages = list(list_prefix(prefix, ImagePolicy(), page_size=5))
    assert [len(page) for page in pages] == [5, 5, 2]
    if store.scheme == "gs":  # three pages asked of the store, each following the last one's token
        assert store.proxy.list_requests - before == 3
    assert [item.url for page in pages for item in page] == store.photos  # the folder marker left out
    assert all(item.size == len(store.read(BUCKET, item.url.split(f"{BUCKET}/", 1)[1]))
               for page in pages for item in page)
    after = list(list_prefix(prefix, ImagePolicy(), page_size=100, start_after=pages[0][-1].url))
    assert [item.url for page in after for item in page] == store.photos[5:]
    last = list(list_prefix(prefix, ImagePolicy(), page_size=100, start_after=store.photos[-1]))
    assert last == []


def test_a_listed_objects_version_is_the_one_a_head_gives(store):
    """The image cache skips an unchanged object by its version: a listing and a HEAD must say
    the same (Azure quotes its ETag in one and not the other)."""
    listed = [item for page in list_prefix(f"{store.scheme}://{BUCKET}/in/", ImagePolicy(), page_size=50)
              for item in page]
    assert all(item.version for item in listed)
    assert [object_version(item.url) for item in listed[:3]] == [item.version for item in listed[:3]]
    store.put_many(BUCKET, {"in/000.jpg": jpeg(99)})
    changed = object_version(listed[0].url)
    assert changed != listed[0].version
    store.put_many(BUCKET, {"in/000.jpg": jpeg(0)})


def test_the_cli_tags_a_prefix(store, tiny_model_dir):
    env = {**store.env, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32",
           "ZSTAGGER_SOURCE_PAGE_SIZE": "4"}
    done = run_cli("tag", f"{store.scheme}://{BUCKET}/in/", "--labels", "cat,dog", "--format", "jsonl", env=env,
                   timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["image"] for line in lines] == store.photos
    assert all("error" not in line or line["error"] is None for line in lines), lines


def test_a_prefix_job_through_a_worker_into_a_sink_in_the_same_store(store, redis_server, tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    count, page = 30, 8
    store.put_many(BUCKET, {f"job/{i:03d}.jpg": jpeg(i) for i in range(count)})
    keys = [f"{store.scheme}://{BUCKET}/job/{i:03d}.jpg" for i in range(count)]
    env = {**store.env, "ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir),
           "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_URL_TIMEOUT": "10"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sink = f"{store.scheme}://{BUCKET}/results/"
    with worker_starter(env, tmp_path) as start:
        start("w").wait_ready()
        job = enqueue([f"{store.scheme}://{BUCKET}/job/"], labels=["cat", "dog"], chunk_size=page, sink=sink,
                      settings=Settings())
        results = job.results(wait=True, timeout=180)
        wait_for(lambda: job.status()["sink"]["undelivered_chunks"] == 0, 60, "the last chunk's sink file")
    assert [r.image for r in results] == keys and all(r.error is None for r in results)
    assert job.status()["sink"] == {"undelivered_chunks": 0, "last_error": None}
    files = store.keys(BUCKET, f"results/{job.id}/")
    assert len(files) == -(-count // page)  # one file per listed page
    lines = [json.loads(line) for name in files for line in store.read(BUCKET, name).decode().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(count))
    assert {line["image"] for line in lines} == set(keys)


def test_directories_and_objects_over_the_cap_are_errors_for_that_input(store):
    for ref in (f"{store.scheme}://{BUCKET}/in/folder", f"{store.scheme}://{BUCKET}/in/nested"):
        with pytest.raises(ImageLoadError) as caught:
            read_bytes(ref, ImagePolicy())
        assert caught.value.kind == "not_a_file" and "is a directory" in caught.value.message, caught.value.message
    store.put_many(BUCKET, {"big/huge.jpg": b"\xff\xd8" + bytes(300_000)})
    for ref in (f"{store.scheme}://{BUCKET}/big/huge.jpg",
                *expand_prefixes(iter([f"{store.scheme}://{BUCKET}/big/"]), ImagePolicy())):
        with pytest.raises(ImageLoadError) as caught:
            read_bytes(ref, ImagePolicy(max_bytes=100_000))
        assert caught.value.kind == "too_large" and "300,002 bytes" in caught.value.message
    assert len(read_bytes(f"{store.scheme}://{BUCKET}/big/huge.jpg", ImagePolicy(max_bytes=400_000))) == 300_002
    outside = ImagePolicy(source_allow=(f"{store.scheme}://{BUCKET}/in/",))
    with pytest.raises(ImageLoadError) as caught:
        read_bytes(f"{store.scheme}://{BUCKET}/big/huge.jpg", outside)
    assert caught.value.kind == "source_refused"


def test_names_in_the_stores_own_order_are_resumed_without_loss(store, redis_server, tiny_model_dir, tmp_path,
                                                                 monkeypatch):
    """Azure lists in UTF-16 order (a\U0001F600 before a\uff01, unlike Python's strings): a
    worker re-listing a page after a key must follow the store's order, or it loses objects and
    calls them gone. Pages of 3 put those two names on either side of a page boundary."""
    names = ["o/a.jpg", "o/a\u00e9.jpg", "o/a\U0001F600.jpg", "o/a\uff01.jpg", "o/b.jpg", "o/z.jpg"]
    store.put_many(BUCKET, {name: jpeg(i) for i, name in enumerate(names)})
    listed = [item.url for page in list_prefix(f"{store.scheme}://{BUCKET}/o/", ImagePolicy(), page_size=2)
              for item in page]
    assert sorted(listed) == sorted(f"{store.scheme}://{BUCKET}/{name}" for name in names)
    for cut in range(1, len(listed)):  # resuming after each key gives exactly the rest, in the store's order
        rest = [item.url for page in list_prefix(f"{store.scheme}://{BUCKET}/o/", ImagePolicy(), page_size=2,
                                                 start_after=listed[cut - 1]) for item in page]
        assert rest == listed[cut:], cut
    env = {**store.env, "ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir),
           "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_URL_TIMEOUT": "10"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with worker_starter(env, tmp_path) as start:
        start("w").wait_ready()
        job = enqueue([f"{store.scheme}://{BUCKET}/o/"], labels=["cat", "dog"], chunk_size=2, settings=Settings())
        results = job.results(wait=True, timeout=180)
    assert [r.image for r in results] == listed and all(r.error is None for r in results), \
        [(r.image, r.error) for r in results]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A GCS emulator of its own, whose paging proxy can be told to misbehave."""
    server = GCSServer(tmp_path_factory.mktemp("hostile"))
    server.bucket(BUCKET)
    server.put_many(BUCKET, {f"in/{i:03d}.jpg": jpeg(i) for i in range(12)})
    yield server
    server.close()


@pytest.fixture
def misbehaving(hostile, monkeypatch):
    for key, value in hostile.env.items():
        monkeypatch.setenv(key, value)
    yield hostile.proxy
    hostile.proxy.misbehave = None


@pytest.mark.parametrize("misbehave, said", [("same_token", "gave a continuation token it had given before"),
                                             ("same_page", "answered with the same page again"),
                                             ("empty_pages", "gave only empty pages for 1s")])
def test_a_store_that_pages_without_end_is_stopped(misbehaving, misbehave, said):
    assert [len(page) for page in list_prefix(f"gs://{BUCKET}/in/", ImagePolicy(), page_size=5)] == [5, 5, 2]
    misbehaving.misbehave = misbehave
    outcome: list = []

    def listing() -> None:  # in a thread: a listing without end must fail this test, not hang it
        try:
            outcome.append(sum(len(page) for page in list_prefix(f"gs://{BUCKET}/in/", ImagePolicy(url_timeout=1),
                                                                  page_size=5)))
        except ImageLoadError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=listing, daemon=True)
    thread.start()
    thread.join(30)
    assert outcome, f"still listing after 30 s ({misbehaving.list_requests} listing requests)"
    error = outcome[0]
    assert isinstance(error, ImageLoadError) and error.kind == "source_failed" and said in error.message, error


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_listing_is_one_line_and_not_retried(hostile, misbehaving, status, tiny_model_dir):
    misbehaving.misbehave = status
    with pytest.raises(ImageLoadError) as caught:
        next(iter(list_prefix(f"gs://{BUCKET}/in/", ImagePolicy(), page_size=5)))
    assert caught.value.kind == "unreadable" and not caught.value.transient, caught.value
    env = {**hostile.env, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32"}
    done = run_cli("tag", f"gs://{BUCKET}/in/", "--labels", "cat,dog", env=env, timeout=120)
    assert done.returncode == 2 and f"Error: cannot list a prefix: access denied ({status})" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and all(len(line) < 600 for line in done.stderr.splitlines()), done.stderr
