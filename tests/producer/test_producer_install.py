"""A producer-only install (`pip install .`, no extras): enqueue, status, results, cancel and
webhook verification work without torch or transformers.

The producer's virtualenv must hold nothing but that install: a test tool installed there
brings packages of its own (pytest brought `packaging`, which kombu's Redis transport needs
and the core once failed to declare). So pytest runs here, in the full install's
environment, and drives the producer's interpreter and `zstagger` command as subprocesses.
`.ci/run` builds the producer virtualenv and points ZSTAGGER_PRODUCER_PYTHON at its
interpreter; without it these tests are not collected (see tests/conftest.py). A real
worker from the full install (this interpreter) tags the producer's job.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import RedisServer, Worker
from zstagger.synthetic import sample_image

PRODUCER_PYTHON = os.environ.get("ZSTAGGER_PRODUCER_PYTHON", "")
# What a virtualenv holds before anything is installed into it.
VENV_TOOLING = {"pip", "setuptools", "wheel"}


def producer_env(**extra):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**clean, **extra}


def producer_cli(*args, env):
    """The producer venv's own `zstagger` (not the first one on PATH: that is the full install's)."""
    exe = Path(PRODUCER_PYTHON).parent / "zstagger"
    return subprocess.run([str(exe), *args], env=producer_env(**env), capture_output=True, text=True, timeout=120,
                          cwd="/")


def producer_python(code: str, **env):
    return subprocess.run([PRODUCER_PYTHON, "-c", code], env=producer_env(**env), capture_output=True, text=True,
                          timeout=120, cwd="/")


def test_the_producer_venv_holds_the_core_install_and_nothing_else():
    """Every distribution installed there is zstagger or something zstagger's core requires
    (transitively); the heavy packages of the extras are absent."""
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    listing = producer_python(
        "import json, importlib.metadata as m\n"
        "print(json.dumps({d.metadata['Name']: d.requires or [] for d in m.distributions()}))")
    assert listing.returncode == 0, listing.stderr
    installed = {canonicalize_name(name): requires for name, requires in json.loads(listing.stdout).items()}
    marker_env = json.loads(producer_python(
        "import json, platform, sys, os\n"
        "v = sys.version_info\n"
        "print(json.dumps({'python_version': f'{v.major}.{v.minor}', 'python_full_version': platform.python_version(),"
        " 'sys_platform': sys.platform, 'platform_system': platform.system(), 'platform_machine': platform.machine(),"
        " 'platform_python_implementation': platform.python_implementation(), 'implementation_name': sys.implementation.name,"
        " 'os_name': os.name}))").stdout)
    environment = {**default_environment(), **marker_env, "extra": ""}
    assert "zstagger" in installed, f"zstagger is not installed in {PRODUCER_PYTHON}"
    needed, todo = set(), ["zstagger"]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        for spec in installed.get(name, []):
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonicalize_name(requirement.name))
    extra = set(installed) - needed - VENV_TOOLING
    assert not extra, f"the producer venv holds packages the core does not require: {sorted(extra)}"
    for heavy in ("torch", "transformers", "fastapi", "scikit-learn", "pytest"):
        assert heavy not in installed, heavy
    missing = needed - set(installed)
    assert not missing, f"required but not installed: {sorted(missing)}"


def test_producing_and_following_a_job_without_torch(tmp_path, tiny_model_dir):
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
        job = producer_cli("enqueue", *images, "--labels", "cat,dog", "--queue", "interactive", env=env)
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip()
        status = json.loads(producer_cli("status", job_id, env=env).stdout)
        assert status == {"job_id": job_id, "state": "pending", "total": 3, "done": 0, "failed": 0, "pending": 3}
        uploaded = producer_cli("enqueue", "--upload", images[0], "-t", "moderation", env=env)
        assert uploaded.returncode == 0, uploaded.stderr
        cancelled = producer_cli("cancel", uploaded.stdout.strip(), env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert json.loads(cancelled.stdout)["state"] == "cancelled"
        stats = producer_cli("queue-stats", env=env)
        assert stats.returncode == 0, stats.stderr
        tagging = producer_cli("tag", images[0], "--labels", "a,b", env=env)
        assert tagging.returncode == 2 and 'pip install "zstagger[model]"' in tagging.stderr
        assert "Traceback" not in tagging.stderr
        # A worker from the full install (this interpreter) does the tagging.
        worker = Worker("full", {**env, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_METRICS_PORT": "0"}, tmp_path,
                        args=("--pool", "solo"), cmd=[sys.executable, "-m", "zstagger.cli"])
        got = producer_cli("results", job_id, "--wait", "--timeout", "100", env=env)
        assert got.returncode == 0, got.stderr + worker.output()[-3000:]
        assert [json.loads(line)["image"] for line in got.stdout.splitlines()] == images
    finally:
        if worker is not None:
            worker.terminate()
        server.stop()


def test_webhook_verification_without_torch():
    checked = producer_python(
        "import sys, time\n"
        "from zstagger import verify_webhook\n"
        "from zstagger.queue.signing import signed_headers\n"
        "body = b'{\"id\":\"evt_1_done\"}'\n"
        "print(verify_webhook('k', signed_headers('k', 'evt_1_done', body, now=time.time()), body))\n"
        "print('torch' in sys.modules or 'transformers' in sys.modules)\n")
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.split() == ["evt_1_done", "False"]


def test_the_worker_command_names_the_extra():
    result = producer_cli("worker", env={"ZSTAGGER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2 and 'pip install "zstagger[model]"' in result.stderr


@pytest.fixture(autouse=True)
def _needs_the_producer_venv():
    assert PRODUCER_PYTHON and os.path.exists(PRODUCER_PYTHON), "ZSTAGGER_PRODUCER_PYTHON names no interpreter"
