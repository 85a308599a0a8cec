import json
import os
import subprocess
import sys

from zstagger.testing import sample_image

import zstagger_wildlife


def test_taxonomy_is_valid_and_has_a_background_label():
    tax = zstagger_wildlife.WILDLIFE
    assert tax.name == "wildlife" and tax.mode == "single"
    assert [label.name for label in tax.labels if label.background] == ["empty"]


def test_runs_on_a_real_model(run_taxonomy):
    result = run_taxonomy(zstagger_wildlife.WILDLIFE, sample_image(3))
    assert result.error is None
    assert len(result.scores) == len(zstagger_wildlife.WILDLIFE.labels)
    assert abs(sum(s.score for s in result.scores) - 1.0) < 1e-4  # single-label: a distribution
    assert set(result.tags) <= {label.name for label in zstagger_wildlife.WILDLIFE.labels}


def test_hook_registers_the_taxonomy():
    registered = []
    zstagger_wildlife.register_taxonomies(registered.append)
    assert registered == [zstagger_wildlife.WILDLIFE]


def test_installed_entry_point_is_discovered():
    # zstagger's own test run keeps installed plugins out (ZSTAGGER_LOAD_PLUGINS=""); this test is about one
    env = {k: v for k, v in os.environ.items() if k != "ZSTAGGER_LOAD_PLUGINS"}
    out = subprocess.run(
        [sys.executable, "-m", "zstagger.cli", "taxonomies", "--json"], capture_output=True, text=True, check=True, env=env
    ).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["wildlife"]["plugin"] == "wildlife"


def make_card(directory, name, count):
    import zipfile

    with zipfile.ZipFile(directory / f"{name}.zip", "w") as card:
        for i in range(count):
            path = directory / f"{i}.jpg"
            sample_image(i, (50 + 10 * i, 40)).save(path)
            card.write(path, f"DCIM/IMG_{i:04d}.JPG")
        card.writestr("DCIM/notes.txt", "not an image")


def test_a_card_is_tagged_image_by_image_through_the_source(tmp_path, monkeypatch, tiny_tagger, zstagger_plugin):
    monkeypatch.setenv("WILDLIFE_CARDS", str(tmp_path))
    make_card(tmp_path, "site-07", 3)
    from contextlib import nullcontext

    from zstagger import plugins

    plugins.load_plugins()  # installed and loaded already (outside zstagger's own test run), or registered here
    loaded = plugins.pm.is_registered(zstagger_wildlife)
    with nullcontext() if loaded else zstagger_plugin(zstagger_wildlife, name="wildlife-under-test"):
        results = tiny_tagger.tag(["camtrap://site-07/", "camtrap://site-07/DCIM/IMG_9999.JPG", "camtrap://nowhere/x.jpg"],
                                  taxonomy=zstagger_wildlife.WILDLIFE)
    assert [r.image for r in results] == [f"camtrap://site-07/DCIM/IMG_{i:04d}.JPG" for i in range(3)] + [
        "camtrap://site-07/DCIM/IMG_9999.JPG", "camtrap://nowhere/x.jpg"]
    assert [r.error.type if r.error else None for r in results] == [None, None, None, "not_found", "not_found"]


def test_a_member_over_the_size_cap_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from zstagger.sources.base import ReadRequest
    import pytest
    from zstagger import ImageLoadError

    monkeypatch.setenv("WILDLIFE_CARDS", str(tmp_path))
    make_card(tmp_path, "big", 1)
    with pytest.raises(ImageLoadError) as caught:
        zstagger_wildlife.CardSource().open("camtrap://big/DCIM/IMG_0000.JPG", ReadRequest(max_bytes=10, deadline=0, timeout=1))
    assert caught.value.kind == "too_large"


def test_the_sightings_log_keeps_a_redelivered_chunk_once(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.setenv("WILDLIFE_SIGHTINGS", str(tmp_path))
    line = json.dumps({"job_id": "j", "index": 0, "image": "camtrap://a/1.jpg", "scores": [{"label": "red_fox", "score": 0.7}]})
    sink = zstagger_wildlife.SightingsSink()
    for _ in range(2):
        sink.write("sightings://forest", "j", "00000000-00000000", [line])
    with sqlite3.connect(tmp_path / "forest.sqlite") as db:
        assert db.execute("SELECT job, idx, image, species FROM sightings").fetchall() == [("j", 0, "camtrap://a/1.jpg", "red_fox")]


def test_hooks_register_the_source_and_the_sink():
    sources, sinks = [], []
    zstagger_wildlife.register_image_sources(sources.append)
    zstagger_wildlife.register_result_sinks(sinks.append)
    assert [s.schemes for s in sources] == [("camtrap",)] and [s.schemes for s in sinks] == [("sightings",)]
