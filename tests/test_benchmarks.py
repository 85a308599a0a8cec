"""Every benchmark script runs, at its smallest size, on the tiny checkpoint: a script that no
longer runs against the code (a renamed method, a changed signature) fails here, not on the
day someone wants its figures. The figures themselves mean nothing at these sizes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--count", "4", "--size", "96x72"]

# script -> (arguments beyond --model, what its stdout must show)
SCRIPTS = {
    "cpu_breakdown": ([*SMALL, "--forward-batches", "1", "-t", "moderation"], "end to end (Tagger.tag)"),
    "preprocess_accuracy": ([*SMALL, "--limit", "4"], "fast preprocessing, pixels"),
    "examples_compile": (["--per-label", "2", "--json"], "speedup"),
    "eval_cache": (["--per-label", "2", "--none", "2", "--size", "64x48", "--json"], "figures_identical_cold_vs_warm"),
    "fewshot_curve": (["--reps", "1", "--max-k", "1", "--per-class", "3", "--multi-images", "20", "--json"], "single_label"),
    "http_throughput": ([*SMALL, "--requests", "4", "--clients", "1,2", "--idle", "2"], "http_32_clients_vs_in_process"),
    "known_images": ([*SMALL, "--known", "50", "--rounds", "1", "--json"], "slowdown_median"),
    "queue_throughput": ([*SMALL, "--enqueue-count", "10", "--repeat", "1"], "queue_vs_in_process"),
    "store_intake": ([*SMALL, "--backends", "sqlite", "--rounds", "1"], "throughput_vs_no_store"),
    "store_queue_overhead": ([*SMALL, "--store", "sqlite", "--rounds", "1"], "store_overhead_wall"),
    "store_retag": (["--rows", "200", "--backends", "sqlite", "--record-chunks", "4"], "retag_images_per_s"),
    "multi_taxonomy": ([*SMALL, "--rounds", "1", "--json"], "two_taxonomies_vs_one"),
    "media_retag": (["--videos", "20", "--frames", "5"], "retag_videos_per_s"),
    "eval_memory": (["--rows", "200", "--rounds", "10", "--per-label", "2", "--none", "2", "--json"], "distinct_images"),
    "deep_taxonomy": ([*SMALL, "--categories", "300", "--attributes", "3", "--rounds", "1", "--json"],
                      "deep_vs_flat20_throughput"),
    "source_throughput": ([*SMALL, "--rounds", "1", "--server-core", "--json"], '"server_cpus": 1'),
    "source_queue": (["--objects", "40", "--page", "8", "--json"], '"ok": true'),
}
# Scripts that take other arguments than --workdir: {model}, {images} (four small JPEGs) and
# {workdir} are filled in.
OWN_ARGUMENTS = {
    "explain_speed": (["--model", "{model}", "--images", "{images}", "--count", "2", "--grid", "2"], "heat map: median"),
    "trail_cost": (["--model", "{model}", "--images", "{images}", "--rounds", "1"], "tagging (trail off)"),
    "review_weighting": (["--rounds", "2", "--population", "2000", "--reviewed", "50"], "weighted: claimed - true"),
    "adhoc_labels": (["--model", "{model}", "--sets", "2", "--set-size", "20", "--big", "50"], "small_request_quiet_s"),
    "large_bodies": (["--model", "{model}", "--megabytes", "2", "--json"], "healthz_p50_ms"),
    "slow_clients": (["--model", "{model}", "--connections", "20", "--nofile", "256", "--seconds", "3", "--json"],
                     "server_alive"),
}
# Scripts whose smallest run takes minutes here (building and quantizing a runtime; encoding a
# 60 s 720p clip): run by hand for their figures (benchmarks/README.md), not on every test run.
NOT_SMOKE_TESTED = {"runtimes", "video"}


def test_every_script_is_smoke_tested():
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SCRIPTS) | set(OWN_ARGUMENTS) | NOT_SMOKE_TESTED


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_runs_at_its_smallest_size(script, tiny_model_dir, tmp_path):
    args, expected = SCRIPTS[script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env.update(ZSTAGGER_CACHE_DIR=str(tmp_path / "cache"), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), "--model", str(tiny_model_dir),
                           "--workdir", str(tmp_path / "work"), *args],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-2000:]
    if done.stdout.lstrip().startswith("{"):
        json.loads(done.stdout)  # one JSON object, nothing else on stdout


@pytest.mark.parametrize("script", sorted(OWN_ARGUMENTS))
def test_benchmark_with_its_own_arguments_runs_at_its_smallest_size(script, tiny_model_dir, tmp_path):
    from zstagger.testing import sample_image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        sample_image(i, (96, 72)).save(images / f"{i}.jpg")
    fill = {"model": str(tiny_model_dir), "images": str(images), "workdir": str(tmp_path / "work")}
    args, expected = OWN_ARGUMENTS[script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTAGGER_")}
    env.update(ZSTAGGER_CACHE_DIR=str(tmp_path / "cache"), TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *(a.format(**fill) for a in args)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected in done.stdout, done.stdout[-2000:]
