"""deploy/: manifests parse, use only real commands and settings; health, metrics and the
systemd unit work for real (Docker and Kubernetes themselves are not available here)."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import Worker, clean_environ, free_port, wait_for
from zstagger.cli import cli
from zstagger.settings import Settings
from zstagger.testing import sample_image

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def yaml_docs(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def test_every_manifest_parses():
    compose = yaml_docs(DEPLOY / "compose.yaml")[0]
    assert {"redis", "worker-interactive", "worker-bulk", "flower", "api"} <= set(compose["services"])
    kinds = [doc["kind"] for path in (DEPLOY / "k8s").glob("*.yaml") for doc in yaml_docs(path)]
    for kind in ("Deployment", "StatefulSet", "Service", "ConfigMap", "ScaledObject", "TriggerAuthentication", "Kustomization"):
        assert kind in kinds
    listed = yaml_docs(DEPLOY / "k8s" / "kustomization.yaml")[0]["resources"]
    assert sorted(listed) == sorted(p.name for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


# --- every command line in deploy/ against the real CLI ---


def command_lines():
    """(file, argv) for every command the deploy files run."""
    found = []

    def add(source, value):
        if isinstance(value, list):
            if value[:1] in (["CMD-SHELL"], ["sh"], ["/bin/sh"]) or value[:2] == ["sh", "-c"]:
                value = value[-1]
            elif value[:1] == ["CMD"]:
                value = value[1:]
        if isinstance(value, str):
            for part in re.split(r"\|\||&&|;|\|", value):
                found.append((source, shlex.split(part.replace("$$", "$"))))
        else:
            found.append((source, [str(v) for v in value]))

    compose = yaml_docs(DEPLOY / "compose.yaml")[0]
    for name, service in compose["services"].items():
        if "command" in service:
            add(f"compose:{name}", service["command"])
        if "healthcheck" in service:
            add(f"compose:{name}:healthcheck", service["healthcheck"]["test"])
    for path in (DEPLOY / "k8s").glob("*.yaml"):
        for doc in yaml_docs(path):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for container in spec.get("containers", []):
                if "command" in container:
                    add(f"{path.name}:{container['name']}", container["command"] + container.get("args", []))
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    if "exec" in container.get(probe, {}):
                        add(f"{path.name}:{probe}", container[probe]["exec"]["command"])
    dockerfile = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    for line in dockerfile.splitlines():
        if line.startswith("CMD "):
            add("Dockerfile:CMD", json.loads(line[4:]))
        if line.startswith("HEALTHCHECK"):
            add("Dockerfile:HEALTHCHECK", line.split(" CMD ", 1)[1])
    for path in (DEPLOY / "systemd").glob("*.service"):
        for line in path.read_text().splitlines():
            if line.startswith("ExecStart="):
                command = line.split("=", 1)[1]
                if command.startswith("/bin/sh -c "):
                    command = shlex.split(command)[2]
                add(f"{path.name}:ExecStart", command)
    return found


def test_deploy_commands_exist_in_the_cli():
    checked = 0
    for source, argv in command_lines():
        if not argv:
            continue
        program = os.path.basename(argv[0])
        if program == "zstagger":
            command = cli.commands.get(argv[1])
            assert command is not None, f"{source}: no `zstagger {argv[1]}` command"
            known = {opt for param in command.params for opt in param.opts + param.secondary_opts}
            for token in argv[2:]:
                if token.startswith("-"):
                    assert token.split("=", 1)[0] in known, f"{source}: `zstagger {argv[1]}` has no option {token}"
            checked += 1
        elif program == "celery":
            module = argv[argv.index("-A") + 1]
            assert module == "zstagger.queue.celery_app"
            from zstagger.queue import celery_app

            assert celery_app.app.main == "zstagger"
            checked += 1
    assert checked >= 12  # compose, k8s, Dockerfile and systemd all run zstagger


def _seconds(value) -> float:
    """A compose duration ("3m", "45s", "1m30s") or a number of seconds (systemd's plain "180")."""
    if isinstance(value, (int, float)) or str(value).strip().isdigit():
        return float(value)
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|m|s|ms)", str(value))
    assert parts, value
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit] for n, unit in parts)


def test_workers_are_given_a_grace_period_to_hand_back_their_chunk():
    """Stopped (scale-in, rollout, systemctl stop), a worker needs about one image's time and a
    store write to store what it tagged and hand the rest back; every deployment of workers
    sends SIGTERM to the worker's main process and waits at least that long (with room to spare)
    before killing it, which would leave the chunk waiting out the visibility timeout."""
    defaults = Settings()
    needed = 2 * (defaults.url_timeout + defaults.store_timeout)
    compose = yaml_docs(DEPLOY / "compose.yaml")[0]
    workers = {name: service for name, service in compose["services"].items() if "worker" in str(service.get("command"))}
    assert workers, "no worker services in compose.yaml?"
    for name, service in workers.items():
        assert _seconds(service.get("stop_grace_period", 10)) >= needed, name
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM", name
    deployments = [doc for path in (DEPLOY / "k8s").glob("worker-*.yaml") for doc in yaml_docs(path)
                   if doc["kind"] == "Deployment"]
    assert len(deployments) >= 2
    for doc in deployments:
        assert doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30) >= needed, doc["metadata"]["name"]
    unit = (DEPLOY / "systemd" / "zstagger-worker@.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    assert _seconds(settings["TimeoutStopSec"]) >= needed
    assert settings["KillSignal"] == "SIGTERM" and settings["KillMode"] == "mixed"  # the main process decides
    assert "STOPSIGNAL SIGTERM" in (DEPLOY / "Dockerfile").read_text()


def test_the_api_is_scraped_where_metrics_need_no_key():
    """/metrics on the API port needs a key; the API pods' scrape annotation names the port of
    ZSTAGGER_API_METRICS_PORT, which the container exposes."""
    doc = next(d for d in yaml_docs(DEPLOY / "k8s" / "api.yaml") if d["kind"] == "Deployment")
    template = doc["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    port = template["metadata"]["annotations"]["prometheus.io/port"]
    assert env.get("ZSTAGGER_API_METRICS_PORT") == port
    assert int(port) in [p["containerPort"] for p in container["ports"]]
    config = yaml_docs(DEPLOY / "k8s" / "config.yaml")[0]["data"]
    assert config["ZSTAGGER_METRICS_ADDRESS"] == "0.0.0.0"  # reachable by the scraper from outside the pod
    compose = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["api"]["environment"]
    assert compose["ZSTAGGER_API_METRICS_PORT"] and compose["ZSTAGGER_METRICS_ADDRESS"] == "0.0.0.0"


def test_deploy_environment_variables_are_real_settings():
    fields = {f"ZSTAGGER_{name.upper()}" for name in Settings.model_fields}
    used = set()
    for path in DEPLOY_FILES:
        used |= set(re.findall(r"\bZSTAGGER_[A-Z_]+\b", path.read_text()))
    assert used, "deploy files set no ZSTAGGER_ variables?"
    unknown = used - fields
    assert not unknown, f"deploy files use settings that do not exist: {sorted(unknown)}"


def test_every_setting_is_documented_on_the_configuration_page():
    page = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"ZSTAGGER_{name.upper()}" for name in Settings.model_fields if f"ZSTAGGER_{name.upper()}" not in page]
    assert not missing, f"docs/configuration.md does not document {missing} (python docs/gen/generate.py)"


# --- health, metrics and the systemd unit, for real ---


def run(*args, env, timeout=120):
    full = clean_environ()
    full.update(env)
    return subprocess.run(["zstagger", *args], env=full, capture_output=True, text=True, timeout=timeout)


def test_health_is_not_ready_without_redis_or_workers(redis_server):
    down = run("health", env={"ZSTAGGER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert down.returncode == 1
    assert down.stderr.startswith("not ready: cannot reach Redis at redis://127.0.0.1:1/0")
    assert len(down.stderr.strip().splitlines()) == 1 and "Traceback" not in down.stderr
    idle = run("health", env={"ZSTAGGER_REDIS_URL": redis_server.url})
    assert idle.returncode == 1 and "no worker has reported a loaded model" in idle.stderr


def test_a_missing_model_is_reported_not_served(redis_server, tmp_path):
    env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tmp_path / "no-model"), "ZSTAGGER_METRICS_PORT": "0"}
    refused = run("worker", env=env)
    assert refused.returncode == 2 and "model directory" in refused.stderr and "does not exist" in refused.stderr
    # Plain `celery -A ... worker` has no pre-flight check: the pool process reports why and stops the worker.
    full = clean_environ(env)
    proc = subprocess.Popen(["celery", "-A", "zstagger.queue.celery_app", "worker", "-n", "broken@%h", "-l", "INFO"],
                            env=full, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        name = f"broken@{socket.gethostname()}"
        wait_for(lambda: "could not load its model" in run("health", "--worker", name, env=env).stderr, 60,
                 "health to report the model failure")
        result = run("health", "--worker", name, env=env)
        assert result.returncode == 1 and "ModelNotFoundError: model directory" in result.stderr
        proc.wait(60)  # the worker stopped itself rather than take chunks it cannot tag
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def test_ready_worker_health_and_metrics_after_a_real_job(redis_server, tiny_model_dir, tmp_path):
    port = free_port()
    env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_METRICS_PORT": str(port),
           "ZSTAGGER_HEARTBEAT_DIR": str(tmp_path / "beats"), "ZSTAGGER_HEARTBEAT_INTERVAL": "2"}
    worker = Worker("observed", env, tmp_path).wait_ready()
    name = f"observed@{socket.gethostname()}"
    try:
        ok = run("health", "--worker", name, env=env)
        assert ok.returncode == 0 and ok.stdout.startswith(f"ok: worker {name} ready: {tiny_model_dir}")
        assert run("health", env=env).returncode == 0
        assert run("health", "--worker", name, "--local", env=env).returncode == 0
        wrong = run("health", "--worker", "nobody@nowhere", env=env)
        assert wrong.returncode == 1 and "worker nobody@nowhere has not reported" in wrong.stderr

        for i in range(5):
            sample_image(i).save(tmp_path / f"{i}.png")
        (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
        job = run("enqueue", *[str(tmp_path / f"{i}.png") for i in range(5)], str(tmp_path / "broken.png"),
                  "-t", "moderation", "--chunk-size", "4", env=env).stdout.strip()
        assert run("results", job, "--wait", "--timeout", "60", env=env).returncode == 1  # one image is broken

        metrics = scrape(port)
        assert metrics['zstagger_images_total{outcome="tagged",taxonomy="moderation"}'] == 5
        assert metrics['zstagger_images_total{outcome="error",taxonomy="moderation"}'] == 1
        assert metrics['zstagger_image_errors_total{type="invalid_image"}'] == 1
        assert sum(v for k, v in metrics.items() if k.startswith("zstagger_verdicts_total")) == 5
        assert metrics["zstagger_chunk_seconds_count"] == 2 and metrics["zstagger_image_seconds_count"] == 6
        assert metrics['zstagger_chunks_total{outcome="done"}'] == 2
        assert metrics["zstagger_model_load_seconds"] > 0
        assert metrics["zstagger_redis_up"] == 1
        assert metrics['zstagger_queue_depth{queue="bulk"}'] == 0 and 'zstagger_queue_depth{queue="interactive"}' in metrics

        stats = json.loads(run("queue-stats", env=env).stdout)
        assert stats["queues"] == {"interactive": 0, "bulk": 0} and stats["workers"] == [name]
    finally:
        assert worker.terminate() == 0
    gone = run("health", "--worker", name, env=env)
    assert gone.returncode == 1  # a stopped worker is not ready at once (heartbeat removed)


def test_the_api_unit_and_manifests_serve_for_real(tiny_model_dir, tmp_path):
    """deploy/systemd/zstagger-api.service's ExecStart with api.env.example's settings becomes
    ready, tags with a key, and stops on SIGTERM as the unit expects; the Kubernetes and
    Compose probes name routes that exist."""
    import httpx

    from zstagger.service.auth import hash_key, new_key

    unit = (DEPLOY / "systemd" / "zstagger-api.service").read_text()
    directives = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    argv = shlex.split(directives["ExecStart"])
    assert argv[0] == "/opt/zstagger/bin/zstagger"
    import shutil
    import sys

    exe = shutil.which("zstagger")  # installed here in the test environment instead of /opt/zstagger
    argv = [*([exe] if exe else [sys.executable, "-m", "zstagger.cli"]), *argv[1:]]
    env = clean_environ()
    for line in (DEPLOY / "systemd" / "api.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    key = new_key()
    port = free_port()
    env.update({"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_API_KEYS": hash_key(key), "ZSTAGGER_PORT": str(port)})
    del env["ZSTAGGER_REDIS_URL"]  # sync tagging needs no Redis
    log = open(tmp_path / "api.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return httpx.get(base + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 120, "the API unit to be ready")
        sample_image(1).save(tmp_path / "one.png")
        tagged = httpx.post(base + "/v1/tag", headers={"Authorization": f"Bearer {key}"}, data={"labels": "a,b"},
                            files={"images": ("one.png", (tmp_path / "one.png").read_bytes())}, timeout=60)
        assert tagged.status_code == 200 and tagged.json()["results"][0]["error"] is None
        probes = set()
        for doc in yaml_docs(DEPLOY / "k8s" / "api.yaml"):
            for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                probes |= {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        compose_check = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["api"]["healthcheck"]["test"][-1]
        probes.add(re.search(r"127\.0\.0\.1:8000(/\w+)", compose_check).group(1))
        for path in probes:
            assert httpx.get(base + path, timeout=5).status_code == 200, path
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(int(directives["TimeoutStopSec"]))
        assert code == 0 or (code == -signal.SIGTERM and directives["SuccessExitStatus"] == "SIGTERM"), code
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_systemd_unit_starts_serves_and_stops_cleanly(redis_server, tiny_model_dir, tmp_path):
    unit = (DEPLOY / "systemd" / "zstagger-worker@.service").read_text()
    directives = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
    host = socket.gethostname()
    exec_start = directives["ExecStart"].replace("%i", "bulk").replace("%H", host)
    argv = shlex.split(exec_start)
    assert argv[0] == "/opt/zstagger/bin/zstagger"
    argv[0] = "zstagger"  # installed here in the test environment instead of /opt/zstagger
    env = clean_environ()
    for line in (DEPLOY / "systemd" / "worker.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    env.update({"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir),
                "ZSTAGGER_METRICS_PORT": str(free_port()), "ZSTAGGER_HEARTBEAT_DIR": str(tmp_path / "run")})
    log = open(tmp_path / "unit.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    name = f"zstagger-bulk@{host}"
    try:
        wait_for(lambda: run("health", "--worker", name, env=env).returncode == 0, 120, "the unit's worker to be ready")
        sample_image(1).save(tmp_path / "one.png")
        job = run("enqueue", str(tmp_path / "one.png"), "--labels", "a,b", "--queue", "bulk", env=env).stdout.strip()
        assert run("results", job, "--wait", "--timeout", "60", env=env).returncode == 0
        proc.send_signal(signal.SIGTERM if directives["KillSignal"] == "SIGTERM" else signal.SIGKILL)
        assert proc.wait(int(directives["TimeoutStopSec"])) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


# --- secrets, bind addresses, files (issue 8, items 14 and 16) ---


def test_settings_never_print_secrets():
    url = "rediss://worker:pa55-w0rd@redis.example.com:6380/2?password=other-secret&ssl_cert_reqs=required"
    shown = run("settings", env={"ZSTAGGER_REDIS_URL": url})
    assert shown.returncode == 0, shown.stderr
    assert "pa55-w0rd" not in shown.stdout and "other-secret" not in shown.stdout
    assert json.loads(shown.stdout)["redis_url"] == (
        "rediss://worker:****@redis.example.com:6380/2?password=****&ssl_cert_reqs=required")
    assert json.loads(run("settings", env={"ZSTAGGER_REDIS_URL": "redis://:pw@h:1/0"}).stdout)["redis_url"] == "redis://:****@h:1/0"
    assert "pa55" not in repr(Settings(redis_url=url)) and Settings(redis_url=url).redis_url == url  # still usable

    from pydantic import SecretStr

    class WithSecret(Settings):  # how a future secret is declared
        another_secret: SecretStr = SecretStr("do-not-print")

    assert "do-not-print" not in WithSecret().model_dump_json() and "do-not-print" not in repr(WithSecret())
    hooked = run("settings", env={"ZSTAGGER_WEBHOOK_SECRET": "hook-secret-value"})
    assert hooked.returncode == 0 and "hook-secret-value" not in hooked.stdout
    assert json.loads(hooked.stdout)["webhook_secret"] == "**********"


def listening_addresses(port):
    """Local addresses with a socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


def test_metrics_listen_on_loopback_unless_told_otherwise(redis_server, tiny_model_dir, tmp_path):
    base = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir)}
    for name, extra, expected in (("quiet", {}, {"127.0.0.1"}), ("scraped", {"ZSTAGGER_METRICS_ADDRESS": "0.0.0.0"}, {"0.0.0.0"})):
        port = free_port()
        worker = Worker(name, {**base, **extra, "ZSTAGGER_METRICS_PORT": str(port)}, tmp_path).wait_ready()
        try:
            assert listening_addresses(port) == expected
            assert scrape(port)["zstagger_redis_up"] == 1
        finally:
            worker.terminate()
    # The deploy files that are scraped from outside the pod/container say so explicitly.
    config = yaml_docs(DEPLOY / "k8s" / "config.yaml")[0]["data"]
    assert config["ZSTAGGER_METRICS_ADDRESS"] == "0.0.0.0"
    compose = yaml_docs(DEPLOY / "compose.yaml")[0]
    assert compose["x-worker"]["environment"]["ZSTAGGER_METRICS_ADDRESS"] == "0.0.0.0"


def test_flower_asks_for_a_password_as_deployed(redis_server, tmp_path):
    pytest.importorskip("flower")
    flower = next(doc for doc in yaml_docs(DEPLOY / "k8s" / "flower.yaml") if doc["kind"] == "Deployment")
    container = flower["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "zstagger-flower"
    assert not any("basic-auth" in part or "auth" in part for part in container["command"])  # not in `ps` output
    compose = yaml_docs(DEPLOY / "compose.yaml")[0]["services"]["flower"]
    assert "FLOWER_BASIC_AUTH" in compose["environment"] and "basic-auth" not in " ".join(compose["command"])

    port = free_port()
    command = [part.replace("--port=5555", f"--port={port}") for part in container["command"]]
    full = {**clean_environ(),
            "ZSTAGGER_REDIS_URL": redis_server.url, "FLOWER_BASIC_AUTH": "admin:flower-pw", "FLOWER_ADDRESS": "127.0.0.1"}
    with open(tmp_path / "flower.log", "w") as log:
        proc = subprocess.Popen(command, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def status(path, auth=None):
        request = urllib.request.Request(base + path)
        if auth:
            import base64

            request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
        try:
            return urllib.request.urlopen(request, timeout=5).status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    try:
        wait_for(lambda: status("/healthcheck") == 200, 60, "flower to serve its health check (the readiness probe)")
        assert status("/") == 401
        assert status("/", "admin:wrong") == 401
        assert status("/", "admin:flower-pw") == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def test_a_worker_creates_no_directory_named_zstagger(redis_server, tiny_model_dir, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_MODEL": str(tiny_model_dir), "TMPDIR": str(tmpdir),
           "ZSTAGGER_METRICS_PORT": str(free_port()), "ZSTAGGER_HEARTBEAT_INTERVAL": "2"}
    worker = Worker("tidy", env, tmp_path).wait_ready()
    try:
        name = f"tidy@{socket.gethostname()}"
        wait_for(lambda: run("health", "--worker", name, "--local", env=env).returncode == 0, 30, "a local heartbeat")
        made = sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*"))
        assert not [p for p in made if Path(p).name == "zstagger"], made  # `import zstagger` run from here stays safe
    finally:
        worker.terminate()
    assert os.path.basename(Settings().heartbeat_dir) != "zstagger"
