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
