import os
import tempfile

import pytest

# Keep whatever third-party plugins happen to be installed out of the test run: in this process
# and in every process a test starts (tests/harness.py's clean_environ keeps this setting when
# it drops the developer's other ZSTAGGER_* settings).
os.environ["ZSTAGGER_LOAD_PLUGINS"] = ""
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["zstagger.testing"]

# tests/producer checks a producer-only install (no torch) in a virtualenv that holds nothing
# else: .ci/run builds it and names its interpreter in ZSTAGGER_PRODUCER_PYTHON; the tests run
# from this environment and drive that one's commands.
collect_ignore_glob = [] if os.environ.get("ZSTAGGER_PRODUCER_PYTHON") else ["producer/*"]

# Text-embedding caches and the like go to a throwaway directory (worker subprocesses too).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="zstagger-test-cache-")


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory):
    from zstagger.testing import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-siglip"), kind="siglip")


@pytest.fixture
def clean_env(monkeypatch):
    """No ZSTAGGER_* settings from the developer's shell leak into a test (the suite's own stay)."""
    from harness import SUITE_SETTINGS

    for key in list(os.environ):
        if key.startswith("ZSTAGGER_") and key not in SUITE_SETTINGS:
            monkeypatch.delenv(key)
    return monkeypatch


@pytest.fixture
def image_dir(tmp_path):
    """A directory of small varied images (RGB JPEG, PNG with alpha, grayscale)."""
    from zstagger.testing import sample_image

    sample_image(1, (120, 90)).save(tmp_path / "a.jpg", quality=92)
    sample_image(2, (64, 100), mode="RGBA").save(tmp_path / "b.png")
    sub = tmp_path / "sub"
    sub.mkdir()
    sample_image(3, (80, 80), mode="L").save(sub / "c.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


# Servers the queue, service, webhook and store tests share (each test module gets its own
# PostgreSQL and slow image server; each test its own redis-server).


@pytest.fixture
def redis_server(tmp_path):
    from harness import RedisServer

    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_server():
    from harness import SlowImageServer

    server = SlowImageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def postgres():
    from harness import PostgresServer

    server = PostgresServer().start()
    yield server
    server.remove()


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory, monkeypatch_module):
    """moto's S3 server on loopback; this process (and what it starts with ``s3.env``) reaches it."""
    from harness import S3Server

    server = S3Server(tmp_path_factory.mktemp("s3"))
    for key, value in server.env.items():
        monkeypatch_module.setenv(key, value)
    yield server
    server.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(autouse=True)
def _ordinary_scheduling():
    """No test may leave this process with real-time scheduling: a library that sets it (SVT-AV1's
    encoder does, for root) passes it to every thread and process started afterwards, and two
    real-time threads spinning on a 2-core machine starve everything else (a `zstagger tag` that
    never returned, with postgres and workers beside it, was this)."""
    yield
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        pytest.fail("this test left the test process with real-time scheduling (reset now); start what sets it in a "
                    "child process")
