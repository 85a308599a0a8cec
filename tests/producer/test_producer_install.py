"""A producer-only install (`pip install zstagger`, no extras): enqueue, status, results,
cancel and webhook verification work without torch or transformers.

`.ci/run` runs this file in a virtualenv of its own that has only the core install (and
pytest); the main test run leaves it out (see tests/conftest.py). With
ZSTAGGER_TEST_WORKER_PYTHON pointing at a full install's interpreter, a real worker from
that install tags the job, so results are checked too.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

from harness import RedisServer, clean_environ
from zstagger.synthetic import sample_image

WORKER_PYTHON = os.environ.get("ZSTAGGER_TEST_WORKER_PYTHON")


def cli(*args, env):
    # The producer venv's own command: CI runs this file with the full install's venv still
    # activated, so the first `zstagger` on PATH would be the one that has torch.
    exe = os.path.join(os.path.dirname(sys.executable), "zstagger")
    if not os.path.exists(exe):
        exe = shutil.which("zstagger")
    return subprocess.run([exe, *args], env=clean_environ(env), capture_output=True, text=True, timeout=120)


def test_no_torch_and_no_transformers_here():
    for heavy in ("torch", "transformers", "fastapi", "sklearn"):
        assert importlib.util.find_spec(heavy) is None, f"{heavy} is installed: this is not a producer-only install"


def test_producing_and_following_a_job_without_torch(tmp_path):
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis").start()
    env = {"ZSTAGGER_REDIS_URL": server.url}
    worker = None
    try:
        images = []
        for i in range(3):
            path = tmp_path / f"p{i}.png"
            sample_image(i, (60, 40)).save(path)
            images.append(str(path))
        job = cli("enqueue", *images, "--labels", "cat,dog", "--queue", "interactive", env=env)
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip()
        status = json.loads(cli("status", job_id, env=env).stdout)
        assert status == {"job_id": job_id, "state": "pending", "total": 3, "done": 0, "failed": 0, "pending": 3}
        uploaded = cli("enqueue", "--upload", images[0], "-t", "moderation", env=env)
        assert uploaded.returncode == 0, uploaded.stderr
        cancelled = json.loads(cli("cancel", uploaded.stdout.strip(), env=env).stdout)
        assert cancelled["state"] == "cancelled"
        tagging = cli("tag", images[0], "--labels", "a,b", env=env)
        assert tagging.returncode == 2 and 'pip install "zstagger[model]"' in tagging.stderr
        assert "Traceback" not in tagging.stderr
        if WORKER_PYTHON:  # a worker from a full install does the tagging
            worker = subprocess.Popen(
                [WORKER_PYTHON, "-m", "zstagger.cli", "worker", "-n", "full@%h", "--pool", "solo"],
                env={**os.environ, **env, "ZSTAGGER_MODEL": os.environ["ZSTAGGER_TEST_MODEL"],
                     "ZSTAGGER_METRICS_PORT": "0"},
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / "worker.log", "w"), start_new_session=True)
            got = cli("results", job_id, "--wait", "--timeout", "100", env=env)
            assert got.returncode == 0, got.stderr + (tmp_path / "worker.log").read_text()[-3000:]
            assert [json.loads(line)["image"] for line in got.stdout.splitlines()] == images
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        server.stop()


def test_webhook_verification_without_torch():
    from zstagger import verify_webhook
    from zstagger.queue.signing import signed_headers

    body = b'{"id":"evt_1_done"}'
    assert verify_webhook("k", signed_headers("k", "evt_1_done", body, now=time.time()), body) == "evt_1_done"
    assert "torch" not in sys.modules and "transformers" not in sys.modules


def test_the_worker_command_names_the_extra():
    result = cli("worker", env={"ZSTAGGER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2 and 'pip install "zstagger[model]"' in result.stderr

