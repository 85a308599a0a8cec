"""The plugin manager: built-ins, registration, duplicates, misspelled hooks, blocking, files."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import clean_environ

from zstagger import Label, PluginError, Taxonomy, TaxonomyError, UnknownTaxonomyError, get_taxonomy, hookimpl
from zstagger import hookspecs, plugins
from zstagger.registry import registered_taxonomies

ROOT = Path(__file__).resolve().parents[1]


class BirdsPlugin:
    BIRDS = Taxonomy(name="birds", labels=[Label(name="owl"), Label(name="heron")])

    @hookimpl
    def register_taxonomies(self, register):
        register(self.BIRDS)


def run_cli(*args, env=None):
    full_env = clean_environ()
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "zstagger.cli", *args], capture_output=True, text=True, env=full_env, cwd=ROOT)


def test_builtins_are_registered_like_any_plugin():
    found = registered_taxonomies()
    assert {"moderation", "ecommerce", "medical"} <= set(found)
    assert found["moderation"].plugin == "zstagger.builtin.moderation"
    names = {p["name"]: p for p in plugins.plugin_hooks()}
    assert names["zstagger.builtin.moderation"]["hooks"] == ["register_taxonomies"]
    assert names["zstagger.builtin.moderation"]["builtin"]


def test_registering_a_plugin_adds_its_taxonomies_and_unregistering_removes_them(zstagger_plugin):
    with zstagger_plugin(BirdsPlugin(), name="birds-plugin"):
        assert get_taxonomy("birds") is BirdsPlugin.BIRDS
        assert registered_taxonomies()["birds"].plugin == "birds-plugin"
    with pytest.raises(UnknownTaxonomyError, match="unknown taxonomy 'birds'"):
        get_taxonomy("birds")


def test_unknown_taxonomy_suggests_a_close_name():
    with pytest.raises(UnknownTaxonomyError, match="Did you mean 'moderation'"):
        get_taxonomy("moderaton")


def test_duplicate_taxonomy_names_are_an_error_naming_both_plugins(zstagger_plugin):
    class Clash:
        @hookimpl
        def register_taxonomies(self, register):
            register(Taxonomy(name="moderation", labels=[Label(name="x")]))

    with zstagger_plugin(Clash(), name="clash-plugin"):
        with pytest.raises(TaxonomyError) as info:
            registered_taxonomies()
    message = str(info.value)
    assert "'moderation' is registered twice" in message
    assert "zstagger.builtin.moderation" in message and "clash-plugin" in message


def test_invalid_taxonomy_in_a_plugin_names_plugin_taxonomy_and_label(zstagger_plugin):
    class Broken:
        @hookimpl
        def register_taxonomies(self, register):
            register({"name": "broken", "labels": [{"name": "a", "threshold": 7}]})

    with zstagger_plugin(Broken(), name="broken-plugin"):
        with pytest.raises(TaxonomyError, match=r"plugin broken-plugin: taxonomy 'broken': label 'a': threshold 7"):
            registered_taxonomies()


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_taxonomy(self, register):  # missing "ies"
            pass

    with pytest.raises(PluginError, match="register_taxonomy") as info:
        plugins.register(Typo(), name="typo-plugin")
    assert "Did you mean 'register_taxonomies'?" in str(info.value)
    assert "Known hooks: register_commands, register_image_sources, register_result_sinks, register_taxonomies" in str(info.value)
    assert plugins.pm.get_plugin("typo-plugin") is None  # and is not left half-registered


def test_taxonomy_files_from_the_taxonomy_path(tmp_path, clean_env):
    (tmp_path / "fruit.yaml").write_text("name: fruit\ntemplates: ['a photo of {}.']\nlabels:\n  - name: apple\n  - name: pear\n")
    clean_env.setenv("ZSTAGGER_TAXONOMY_PATH", str(tmp_path))
    found = registered_taxonomies()
    assert found["fruit"].source == str(tmp_path / "fruit.yaml")
    assert [label.name for label in found["fruit"].taxonomy.labels] == ["apple", "pear"]
    (tmp_path / "zbad.yml").write_text("name: veg\nlabels:\n  - name: leek\n    parent: onion\n")
    assert "fruit" in registered_taxonomies() and "veg" not in registered_taxonomies()  # the broken file stays with itself
    with pytest.raises(TaxonomyError, match=r"zbad.yml: taxonomy 'veg': label 'leek': parent 'onion'"):
        get_taxonomy("veg")


BROKEN_FILES = {
    "veg.yml": ("name: veg\nlabels:\n  - name: leek\n    parent: onion\n",
                "veg.yml: taxonomy 'veg': label 'leek': parent 'onion' is not a label of this taxonomy"),
    "nuts.yaml": ("name: nuts\nlabels: [{name: almond\n", "nuts.yaml: cannot parse taxonomy file"),
}


def broken_taxonomy_dir(root: Path) -> Path:
    """A taxonomy directory with one good file and two broken ones (an invalid spec, bad YAML)."""
    root.mkdir()
    (root / "fruit.yaml").write_text("name: fruit\nlabels:\n  - name: apple\n  - name: pear\n")
    for name, (text, _) in BROKEN_FILES.items():
        (root / name).write_text(text)
    return root


def test_a_broken_taxonomy_file_breaks_only_its_own_taxonomy(tmp_path, tiny_model_dir):
    env = {"ZSTAGGER_TAXONOMY_PATH": str(broken_taxonomy_dir(tmp_path / "tax"))}
    listed = run_cli("taxonomies", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["fruit"]["status"] == rows["moderation"]["status"] == "ok"
    for name, (_, problem) in BROKEN_FILES.items():
        row = rows[name.split(".")[0]]
        assert row["status"] == "invalid" and problem in row["error"] and row["plugin"].endswith(f"{name})")
    warnings = listed.stderr.strip().splitlines()  # one line per broken file, naming it
    assert len(warnings) == 2 and all("Traceback" not in line for line in warnings)
    assert sorted(name for name in BROKEN_FILES if any(name in line for line in warnings)) == sorted(BROKEN_FILES)
    table = run_cli("taxonomies", env=env)
    assert table.returncode == 0 and "invalid nuts: " in table.stdout and "invalid veg: " in table.stdout

    image = tmp_path / "a.jpg"
    from zstagger.testing import sample_image

    sample_image(1).save(image)
    tagged = run_cli("tag", str(image), "-t", "moderation", "--model", str(tiny_model_dir), "--format", "jsonl", env=env)
    assert tagged.returncode == 0, tagged.stderr
    assert json.loads(tagged.stdout)["taxonomy"] == "moderation" and tagged.stderr.count("\n") == 2
    for name, (_, problem) in BROKEN_FILES.items():
        for args in (["taxonomies", "show", name.split(".")[0]], ["tag", str(image), "-t", name.split(".")[0]]):
            used = run_cli(*args, "--model", str(tiny_model_dir), env=env) if args[0] == "tag" else run_cli(*args, env=env)
            assert used.returncode == 2, used.stderr
            assert f"Error: taxonomy {name.split('.')[0]!r} cannot be used: " in used.stderr and problem in used.stderr
            assert "Traceback" not in used.stderr


def test_a_broken_taxonomy_file_stops_neither_the_http_service_nor_a_worker(tmp_path, tiny_model_dir, redis_server):
    import httpx
    from harness import ApiServer, worker_starter

    from zstagger.testing import sample_image

    env = {"ZSTAGGER_TAXONOMY_PATH": str(broken_taxonomy_dir(tmp_path / "tax")), "ZSTAGGER_MODEL": str(tiny_model_dir),
           "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_API_ALLOW_ANONYMOUS": "1", "ZSTAGGER_REDIS_URL": redis_server.url}
    image = tmp_path / "a.png"
    sample_image(2).save(image)
    server = ApiServer(env, tmp_path).wait_ready()
    try:
        with worker_starter(env, tmp_path) as start:
            worker = start("w1").wait_ready()
            for name in ("moderation", "fruit"):
                ok = httpx.post(server.url + "/v1/tag", files=[("images", ("a.png", image.read_bytes()))],
                                data={"taxonomy": name}, timeout=60)
                assert ok.status_code == 200 and ok.json()["results"][0]["error"] is None, ok.text
            refused = httpx.post(server.url + "/v1/tag", files=[("images", ("a.png", image.read_bytes()))],
                                 data={"taxonomy": "veg"}, timeout=60)
            assert refused.status_code == 400, refused.text
            message = refused.json()["error"]["message"]
            assert "taxonomy 'veg' cannot be used" in message and BROKEN_FILES["veg.yml"][1] in message
            job = run_cli("enqueue", str(image), "-t", "fruit", env=env)
            assert job.returncode == 0, job.stderr
            done = run_cli("results", job.stdout.strip(), "--wait", "--timeout", "60", env=env)
            assert done.returncode == 0 and json.loads(done.stdout)["error"] is None, done.stderr
            bad = run_cli("enqueue", str(image), "-t", "veg", env=env)
            assert bad.returncode == 2 and "taxonomy 'veg' cannot be used" in bad.stderr
            assert worker.alive() and "Traceback" not in worker.output()
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_blocking_a_plugin_by_name():
    result = run_cli("taxonomies", "--json", env={"ZSTAGGER_BLOCK_PLUGINS": "zstagger.builtin.medical, nothing"})
    assert result.returncode == 0, result.stderr
    assert {row["name"] for row in json.loads(result.stdout)} >= {"moderation", "ecommerce"}
    assert "medical" not in {row["name"] for row in json.loads(result.stdout)}


def test_plugins_dir_loads_one_off_plugin_files(tmp_path):
    (tmp_path / "tools.py").write_text(
        "from zstagger import Label, Taxonomy, hookimpl\n"
        "@hookimpl\n"
        "def register_taxonomies(register):\n"
        "    register(Taxonomy(name='tools', labels=[Label(name='hammer'), Label(name='saw')]))\n"
    )
    result = run_cli("taxonomies", "--json", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["tools"]["plugin"] == f"{tmp_path.name}/tools.py"
    listed = run_cli("plugins", "--json", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert f"{tmp_path.name}/tools.py" in {p["name"] for p in json.loads(listed.stdout)}


def test_a_broken_plugin_file_is_a_clear_cli_error(tmp_path):
    (tmp_path / "bad.py").write_text("import does_not_exist\n")
    result = run_cli("taxonomies", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert result.returncode == 2
    assert "bad.py failed to import" in result.stderr and "Traceback" not in result.stderr


def test_register_commands_hook_adds_cli_commands(tmp_path):
    (tmp_path / "hello.py").write_text(
        "import click\nfrom zstagger import hookimpl\n"
        "@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command()\n    def hello():\n        click.echo('hello from a plugin')\n"
    )
    result = run_cli("hello", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert result.returncode == 0 and result.stdout.strip() == "hello from a plugin"


GUIDE = ROOT / "docs" / "plugins.md"


def guide_files(guide: str) -> dict[str, str]:
    """The files of the guide's example plugin: every code block marked ``<!-- file: PATH -->``."""
    return {path: text for path, text in re.findall(r"^<!-- file: (\S+) -->\n```\w*\n(.*?)^```", guide, re.M | re.S)}


def write_guide_plugin(files: dict[str, str], plugin: Path, tests: bool = True) -> None:
    """The package the guide builds: its pyproject.toml, the plugin file as the package's module, its tests."""
    (plugin / "zstagger_packaging").mkdir(parents=True)
    (plugin / "pyproject.toml").write_text(files["zstagger-packaging/pyproject.toml"])
    (plugin / "zstagger_packaging" / "__init__.py").write_text(files["my-plugins/packaging.py"])
    if tests:
        (plugin / "tests").mkdir()
        for name in ("conftest.py", "test_packaging.py"):
            (plugin / "tests" / name).write_text(files[f"zstagger-packaging/tests/{name}"])


def installed_plugin_env(site: Path, **settings: str) -> dict[str, str]:
    """The environment of a user who installed the plugin into ``site``: no ZSTAGGER_* setting but ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return {**env, **settings}


def test_the_plugin_guides_example_installs_and_is_found(tmp_path):
    """The guide's own files, as written there, make a package pip installs (offline, into a
    directory of its own) whose taxonomy zstagger finds through its entry point; its tests pass."""
    files = guide_files(GUIDE.read_text())
    assert {"my-plugins/packaging.py", "zstagger-packaging/pyproject.toml", "zstagger-packaging/tests/conftest.py",
            "zstagger-packaging/tests/test_packaging.py"} <= set(files)
    plugin = tmp_path / "zstagger-packaging"
    write_guide_plugin(files, plugin)
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--target", str(site), str(plugin)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert list(site.glob("zstagger_packaging-0.1.0.dist-info/entry_points.txt"))

    def names(command, **settings):
        done = subprocess.run([sys.executable, "-m", "zstagger.cli", command, "--json"], capture_output=True, text=True,
                              env=installed_plugin_env(site, **settings), cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        return {row["name"]: row for row in json.loads(done.stdout)}

    taxonomies = names("taxonomies")
    assert taxonomies["packaging"]["plugin"] == "packaging" and taxonomies["packaging"]["labels"] == 3
    assert "packaging" in names("plugins")
    assert "packaging" not in names("taxonomies", ZSTAGGER_BLOCK_PLUGINS="packaging")
    assert "packaging" not in names("taxonomies", ZSTAGGER_LOAD_PLUGINS="")
    only = names("plugins", ZSTAGGER_LOAD_PLUGINS="packaging")
    assert "packaging" in only and not {"wildlife", "zstagger_wildlife"} & set(only)
    # and the guide's own tests of it, with zstagger's pytest fixtures
    tested = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin)],
                            capture_output=True, text=True, env=installed_plugin_env(site), cwd=plugin, timeout=300)
    assert tested.returncode == 0 and "1 passed" in tested.stdout, tested.stdout + tested.stderr


def test_the_test_run_keeps_installed_plugins_out_of_the_processes_it_starts(tmp_path):
    """An installed entry-point plugin (the guide's, installed for real) is not loaded by a
    `zstagger` the suite starts with its usual environment, nor in this process."""
    files = guide_files(GUIDE.read_text())
    plugin, site = tmp_path / "plugin", tmp_path / "site"
    write_guide_plugin(files, plugin, tests=False)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(site), str(plugin)], check=True, capture_output=True, timeout=300)
    env = clean_environ({"PYTHONPATH": os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])})
    assert env["ZSTAGGER_LOAD_PLUGINS"] == ""  # what tests/conftest.py gives every process the suite starts
    for command in ("taxonomies", "plugins"):
        done = subprocess.run([sys.executable, "-m", "zstagger.cli", command, "--json"], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "packaging" not in {row["name"] for row in json.loads(done.stdout)}
    found = subprocess.run([sys.executable, "-m", "zstagger.cli", "plugins", "--json"], capture_output=True, text=True,
                           env={k: v for k, v in env.items() if k != "ZSTAGGER_LOAD_PLUGINS"}, timeout=120)
    assert "packaging" in {row["name"] for row in json.loads(found.stdout)}  # it is installed: the setting is what keeps it out
    assert not [p for p in plugins.plugin_hooks() if not p["builtin"] and "/" not in p["name"]]  # nor loaded in this process


def test_two_plugins_adding_the_same_command_is_an_error_naming_both(tmp_path):
    hello = ("import click\nfrom zstagger import hookimpl\n@hookimpl\ndef register_commands(cli):\n"
             "    @cli.command(name={name!r})\n    def command():\n        click.echo('from {who}')\n")
    (tmp_path / "first.py").write_text(hello.format(name="hello", who="first"))
    (tmp_path / "second.py").write_text(hello.format(name="hello", who="second"))
    result = run_cli("taxonomies", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"Error: command 'hello' is added twice: by {tmp_path.name}/first.py and by {tmp_path.name}/second.py; "
        "rename one, or block a plugin with ZSTAGGER_BLOCK_PLUGINS")
    ok = run_cli("hello", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path), "ZSTAGGER_BLOCK_PLUGINS": "second"})
    assert ok.returncode == 0 and ok.stdout.strip() == "from first"
    (tmp_path / "second.py").write_text(hello.format(name="tag", who="second"))  # one of zstagger's own
    taken = run_cli("taxonomies", env={"ZSTAGGER_PLUGINS_DIR": str(tmp_path)})
    assert taken.returncode == 2
    assert f"command 'tag' is added twice: by zstagger and by {tmp_path.name}/second.py" in taken.stderr


def test_every_hook_is_documented_in_the_plugin_guide():
    guide = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("register_")]
    assert hooks
    for hook in hooks:
        assert re.search(rf"^### `?{hook}\(", guide, re.M), f"hook {hook} is not documented in docs/plugins.md"
        assert getattr(hookspecs, hook).__doc__, f"hook {hook} has no docstring"


def test_the_plugin_guides_source_and_sink_run_as_written(tmp_path, tiny_model_dir):
    """The guide's zip source tags a whole archive prefix through `zstagger tag`, refuses a member
    over the size cap for itself, and its SQLite sink keeps a chunk delivered twice once."""
    import importlib.util
    import sqlite3
    import zipfile

    from zstagger.sinks import deliver_chunk
    from zstagger.testing import registered_plugin, sample_image

    files = guide_files(GUIDE.read_text())
    plugin_dir = tmp_path / "my-plugins"
    plugin_dir.mkdir()
    for name in ("zipsource.py", "sqlitesink.py"):
        (plugin_dir / name).write_text(files[f"my-plugins/{name}"])
    archives = tmp_path / "archives"
    archives.mkdir()
    with zipfile.ZipFile(archives / "shop.zip", "w") as archive:
        for i in range(5):
            path = tmp_path / f"{i}.png"
            sample_image(i, (40 + i * 30, 40)).save(path)
            archive.write(path, f"items/{i}.png")
    env = {"ZSTAGGER_PLUGINS_DIR": str(plugin_dir), "ZIP_SOURCE_DIR": str(archives), "ZSTAGGER_MODEL": str(tiny_model_dir),
           "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_SOURCE_PAGE_SIZE": "2"}
    sizes = sorted((info.file_size for info in zipfile.ZipFile(archives / "shop.zip").infolist()))
    done = run_cli("tag", "zip://shop/", "zip://shop/items/9.png", "--labels", "box,bottle", "--format", "jsonl",
                   env={**env, "ZSTAGGER_MAX_IMAGE_BYTES": str(sizes[-1] - 1)})
    assert done.returncode == 1, done.stderr  # some inputs failed, each for itself
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row["image"] for row in rows] == [f"zip://shop/items/{i}.png" for i in range(5)] + ["zip://shop/items/9.png"]
    assert [row["error"]["type"] if row["error"] else None for row in rows] == [None] * 4 + ["too_large", "not_found"]

    spec = importlib.util.spec_from_file_location("guide_sqlitesink", plugin_dir / "sqlitesink.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    os.environ["RESULTS_DB_DIR"] = str(tmp_path)
    try:
        with registered_plugin(module, name="guide-sqlitesink"):
            for _ in range(2):  # a chunk delivered again
                deliver_chunk("results-db://shop", "job1", "00000000-00000001", [(0, '{"image":"a"}'), (1, '{"image":"b"}')])
    finally:
        del os.environ["RESULTS_DB_DIR"]
    with sqlite3.connect(tmp_path / "shop.sqlite") as db:
        assert db.execute("SELECT line FROM results ORDER BY line").fetchall() == [
            ('{"job_id":"job1","index":0,"image":"a"}',), ('{"job_id":"job1","index":1,"image":"b"}',)]
