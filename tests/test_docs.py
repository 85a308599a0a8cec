"""The docs are true: their snippets run, their generated pages match the code, and every
setting, hook, field, page and repository path they name exists.

Conventions (CONTRIBUTING.md, "Docs"): every ``bash`` and ``python`` block runs here unless
an HTML comment on the line before it marks it ``illustrative: why``, ``tested: TEST`` or
``file: PATH``; a page's ``<!-- snippets need: redis, worker, api -->`` starts services.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from harness import ApiServer, RedisServer, Worker

ROOT = Path(__file__).resolve().parents[1]
GENERATE = "python docs/gen/generate.py"
# The docs a user reads; benchmarks/README.md is the lab notebook behind the figures (its
# commands need a full-size checkpoint and are given with their results).
DOC_FILES = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", *(ROOT / "docs").rglob("*.md"),
                    *(ROOT / "plugins").glob("*/README.md"), ROOT / "plugins" / "README.md"])
GENERATED = {ROOT / "docs" / "index.md", ROOT / "docs" / "cli.md"}  # checked against their sources instead
RUNNABLE = {"bash", "python"}
SHELLS_AND_PYTHONS = {"sh", "shell", "console", "zsh", "shell-session", "py", "python3", "pycon", "ipython"}
SERVICES = {"redis", "worker", "api"}
PAGE_TIMEOUT = 300
# Environment variables named in the docs that are not settings: CI's and the test harness's knobs.
NOT_SETTINGS = {"ZSTAGGER_VENV", "ZSTAGGER_PRODUCER_VENV", "ZSTAGGER_TEST_MODEL", "ZSTAGGER_TEST_WORKER_PYTHON"}
DOCS_KEY = "zst_docs-test-key"


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    marker: tuple[str, str] | None  # (kind, value) of the HTML comment before the fence

    @property
    def where(self) -> str:
        return f"{rel(self.path)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)")
_MARKER = re.compile(r"^\s*<!--\s*(illustrative|tested|file|snippets need)\s*(?::\s*(.*?))?\s*-->\s*$")


def parse(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        marker_match = _MARKER.match(lines[k]) if k >= 0 else None
        marker = (marker_match.group(1), (marker_match.group(2) or "").strip()) if marker_match else None
        if marker and marker[0] == "snippets need":
            marker = None
        blocks.append(Block(path, i + 1, lang, "\n".join(body) + "\n", marker))
        i = j + 1
    return blocks


def page_services(path: Path) -> set[str]:
    needs = set()
    for line in path.read_text().splitlines():
        match = _MARKER.match(line)
        if match and match.group(1) == "snippets need":
            needs |= {name.strip() for name in (match.group(2) or "").split(",") if name.strip()}
    return needs


def steps(path: Path) -> list[Block]:
    """The blocks a page runs or writes, in order."""
    return [b for b in parse(path) if (b.lang in RUNNABLE and b.marker is None) or (b.marker and b.marker[0] == "file")]


RUN_PAGES = [p for p in DOC_FILES if p not in GENERATED and steps(p)]


# --- the conventions themselves ---


def test_every_fenced_block_names_its_language():
    unnamed = [b.where for path in DOC_FILES for b in parse(path) if not b.lang]
    assert not unnamed, f"fenced blocks without a language (write bash, python, text, json, ...): {unnamed}"


def test_every_snippet_is_run_or_marked_and_every_marker_is_understood():
    problems = []
    for path in DOC_FILES:
        unknown = page_services(path) - SERVICES
        if unknown:
            problems.append(f"{rel(path)}: unknown services {sorted(unknown)} (known: {sorted(SERVICES)})")
        for b in parse(path):
            if b.lang in SHELLS_AND_PYTHONS:
                problems.append(f"{b.where}: write shell blocks as bash and Python as python, not {b.lang!r}")
            if not b.marker:
                continue
            kind, value = b.marker
            if kind == "illustrative" and b.lang not in RUNNABLE:
                problems.append(f"{b.where}: only bash and python blocks are run; {b.lang!r} needs no marker")
            if kind == "file" and (not value or value.startswith("/") or ".." in Path(value).parts):
                problems.append(f"{b.where}: file marker needs a relative path inside the page's directory")
            if kind == "tested":
                test_file, _, test_name = value.partition("::")
                target = ROOT / test_file
                if not test_name or not target.is_file() or not re.search(
                        rf"^def {re.escape(test_name)}\(", target.read_text(), re.M):
                    problems.append(f"{b.where}: 'tested: {value}' names no test function")
    assert not problems, "\n".join(problems)


# --- running the snippets ---


def _script(path: Path, scratch: Path) -> str:
    lines = []
    for n, b in enumerate(steps(path)):
        lines.append(f"printf '%s\\n' {b.where!r} > .docs-test/at")
        if b.marker and b.marker[0] == "file":
            target = scratch / b.marker[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            stash = scratch / ".docs-test" / f"file-{n}"
            stash.write_text(b.text)
            lines.append(f"mkdir -p {str(target.parent)!r} && cp .docs-test/file-{n} {str(target)!r}")
        elif b.lang == "python":
            (scratch / ".docs-test" / f"block-{n}.py").write_text(b.text)
            lines.append(f"python .docs-test/block-{n}.py")
        else:
            lines.append(b.text)
    return "\n".join(lines) + "\n"


def _environment(scratch: Path, tiny_model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZSTAGGER_", "PYTEST_", "PIP_"))}
    pip_target = scratch / ".docs-test" / "site-packages"
    env.update({
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "PYTHONPATH": os.pathsep.join([str(pip_target), *filter(None, [env.get("PYTHONPATH")])]),
        "ZSTAGGER_MODEL": str(tiny_model_dir),
        "ZSTAGGER_CACHE_DIR": str(scratch / ".docs-test" / "cache"),
        "ZSTAGGER_HEARTBEAT_DIR": str(scratch / ".docs-test" / "heartbeats"),
        "ZSTAGGER_METRICS_PORT": "0",
        "HF_HUB_OFFLINE": "1",
        # `pip install` in a snippet: into a scratch directory, from what is already here.
        "PIP_TARGET": str(pip_target), "PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    })
    return env


def _stop_group(pgid: int) -> None:
    """The script's process group, background processes a snippet started (a worker) included:
    SIGTERM (a worker's warm shutdown), then SIGKILL for whatever is left."""
    import time

    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@pytest.mark.parametrize("page", RUN_PAGES, ids=rel)
def test_page_snippets_run(page, tmp_path, tiny_model_dir):
    needs = page_services(page)
    scratch = tmp_path / "page"
    (scratch / ".docs-test").mkdir(parents=True)
    shutil.copytree(ROOT / "examples", scratch / "examples")
    env = _environment(scratch, tiny_model_dir)
    started = []
    try:
        if needs & {"redis", "worker"}:
            (tmp_path / "redis").mkdir()
            redis = RedisServer(tmp_path / "redis").start()
            started.append(redis.stop)
            env["ZSTAGGER_REDIS_URL"] = redis.url
        if "worker" in needs:
            worker = Worker("docs", env, tmp_path, cwd=scratch).wait_ready()
            started.append(lambda: worker.terminate(timeout=20))
        if "api" in needs:
            from zstagger.service.auth import hash_key

            api = ApiServer({**env, "ZSTAGGER_API_KEYS": hash_key(DOCS_KEY)}, tmp_path).wait_ready()
            started.append(api.stop)
            env.update(API=api.url, KEY=DOCS_KEY)
        (scratch / ".docs-test" / "page.sh").write_text(_script(page, scratch))
        proc = subprocess.Popen(["bash", "-euo", "pipefail", ".docs-test/page.sh"], cwd=scratch, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=PAGE_TIMEOUT)
        except subprocess.TimeoutExpired:
            _stop_group(proc.pid)
            output = proc.communicate()[0]
            pytest.fail(f"{rel(page)}: snippets still running after {PAGE_TIMEOUT}s, at "
                        f"{(scratch / '.docs-test' / 'at').read_text().strip()}\n{output[-4000:]}")
        finally:
            _stop_group(proc.pid)
        at = (scratch / ".docs-test" / "at").read_text().strip() if (scratch / ".docs-test" / "at").exists() else "?"
        assert proc.returncode == 0, f"the snippet at {at} failed (exit {proc.returncode}):\n{output[-6000:]}"
        check = PAGE_CHECKS.get(rel(page))
        if check:
            check(output, scratch)
    finally:
        for stop in reversed(started):
            stop()


def _jsonl(output: str) -> list[dict]:
    import json

    return [json.loads(line) for line in output.splitlines() if line.startswith("{\"image\"")]


def _check_quickstart(output: str, scratch: Path) -> None:
    """`zstagger tag examples/images -t moderation` tags every sample photo."""
    photos = sorted(p.name for p in (scratch / "examples" / "images").glob("*.jpg"))
    records = _jsonl(output)
    assert len(photos) >= 4 and sorted(Path(r["image"]).name for r in records) == photos, output[-3000:]
    assert all(r["error"] is None and r["taxonomy"] == "moderation" and r["verdict"] for r in records)
    # The front page's commands print nothing a new user must wonder about (transformers' "requires torchvision,
    # falling back" warning appeared while the tiny model was built).
    assert "[transformers]" not in output and "Traceback" not in output and "Warning" not in output, output[-3000:]


def _check_http_recipes(output: str, scratch: Path) -> None:
    """The body-file recipe sends a photo whose base64 would not fit in one argument."""
    import json

    assert (scratch / "examples" / "images" / "rocket.jpg").stat().st_size > 96 * 1024
    decoder, tagged = json.JSONDecoder(), []
    for match in re.finditer(r'\{"results"', output):  # curl prints no newline after a body
        tagged += decoder.raw_decode(output, match.start())[0]["results"]
    rocket = [r for r in tagged if r["image"] == "rocket.jpg"]
    assert rocket and rocket[0]["error"] is None and len(rocket[0]["scores"]) == 1, output[-3000:]


def _check_queue_walkthrough(output: str, scratch: Path) -> None:
    """A cancelled job's results exit 3; the other job's results are all there."""
    assert "exit status 3" in output, output[-3000:]
    assert len((scratch / "tags.jsonl").read_text().splitlines()) == len(list((scratch / "examples" / "images").glob("*.jpg")))


PAGE_CHECKS = {"README.md": _check_quickstart, "docs/http-api.md": _check_http_recipes,
               "docs/queue.md": _check_queue_walkthrough}


# --- generated pages ---


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "gen" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_says_which_processes_read_it():
    from zstagger.settings import API_SERVER, CLI, PRODUCER, WORKER, Settings

    known = {CLI, WORKER, API_SERVER, PRODUCER}
    problems = [f"{name}: read_by {(field.json_schema_extra or {}).get('read_by')}"
                for name, field in Settings.model_fields.items()
                if not (field.json_schema_extra or {}).get("read_by")
                or not set(field.json_schema_extra["read_by"]) <= known]
    assert not problems, (
        "settings without a valid read_by (give the Field json_schema_extra=read_by(CLI, WORKER, API_SERVER or "
        f"PRODUCER) in zstagger/settings.py, then run `{GENERATE}`):\n" + "\n".join(problems))


def test_generated_pages_match_the_code():
    stale = [rel(path) for path, text in _generator().pages().items() if not path.exists() or path.read_text() != text]
    assert not stale, f"out of date: {', '.join(stale)}; regenerate them with `{GENERATE}` and commit the result"


def test_the_cli_reference_has_every_command():
    import click

    from zstagger.cli import cli

    reference = (ROOT / "docs" / "cli.md").read_text()

    def paths(command, prefix):
        yield prefix
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from paths(sub, f"{prefix} {name}")

    missing = [p for p in paths(cli, "zstagger") if f"## `{p}`" not in reference]
    assert not missing, f"docs/cli.md lacks {missing}; run `{GENERATE}`"


# --- names the docs use exist ---


def test_every_setting_named_in_the_docs_exists_and_every_setting_is_documented():
    from zstagger.settings import Settings

    settings = {f"ZSTAGGER_{name.upper()}" for name in Settings.model_fields}
    named = {}
    for path in DOC_FILES:
        for name in re.findall(r"\bZSTAGGER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            named.setdefault(name, rel(path))
    unknown = {name: where for name, where in named.items() if name not in settings | NOT_SETTINGS}
    assert not unknown, f"the docs name settings that do not exist (see zstagger/settings.py): {unknown}"
    table = (ROOT / "docs" / "configuration.md").read_text()
    undocumented = sorted(name for name in settings if f"`{name}`" not in table)
    assert not undocumented, f"docs/configuration.md lacks {undocumented}; run `{GENERATE}`"


def test_every_taxonomy_and_label_field_is_described():
    from zstagger.taxonomy import Label, Taxonomy

    page = (ROOT / "docs" / "taxonomies.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    missing = [f"{model.__name__}.{name}" for model in (Taxonomy, Label) for name in model.model_fields
               if not any(re.match(rf"\| [^|]*`{name}`", row) for row in rows)]
    assert not missing, f"docs/taxonomies.md's field tables lack {missing}"


def test_repository_paths_named_in_the_docs_exist():
    """`deploy/...`, `zstagger/...` and the like in prose: a file moved without its docs fails here."""
    prefixes = ("deploy/", "benchmarks/", "zstagger/", "plugins/", "examples/", "tests/", "docs/", ".ci/")
    missing = []
    for path in DOC_FILES:
        if path.name == "CONTRIBUTING.md":  # describes rooms still being built
            continue
        text = re.sub(r"^\s*(`{3,}|~{3,}).*?^\s*\1", "", path.read_text(), flags=re.M | re.S)
        for span in re.findall(r"`([^`\s]+)`", text):
            candidate = span.split("::")[0].rstrip("/")
            if candidate.startswith(prefixes) and not any(ch in candidate for ch in "<>*{}$"):
                if not (ROOT / candidate).exists():
                    missing.append(f"{rel(path)}: {span}")
    assert not missing, "the docs name files that do not exist:\n" + "\n".join(missing)


# --- the front page and the site ---


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250, "README.md is the front page: keep it near 200 lines, move detail to docs/"
    pages = sorted(rel(p) for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
    unlinked = [page for page in pages if f"]({page})" not in readme]
    assert not unlinked, f"the README's 'I want to ...' map does not link {unlinked}"
    ci = (ROOT / ".ci" / "run").read_text()
    command = "python -m pytest -n 2"
    assert f"\n{command}\n" in readme and re.search(rf"^{re.escape(command)}$", ci, re.M), \
        "the README's test command and the one .ci/run runs must be the same"


def test_every_docs_page_is_in_the_site_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            for value in (item.values() if isinstance(item, dict) else [item]):
                yield from (pages(value) if isinstance(value, list) else [value])

    listed = set(pages(config["nav"]))
    present = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert listed == present, f"mkdocs.yml nav and docs/ differ: only in nav {listed - present}, only in docs/ {present - listed}"
