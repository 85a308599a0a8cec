"""Eval and calibrate on labelled animations and videos: one item per media file, its frames
aggregated as the taxonomy says, so figures and thresholds are per video, not per frame.

Real H.264 clips and GIFs made here, judged on the tiny model with few-shot examples: the block
label fires on the frames that show the taught pattern, inside otherwise clean clips.
"""

import json

import numpy as np
import pytest
from harness import run_cli
from test_media import SIZE, animation, clutter, pattern, video, write_spec

import zstagger
from zstagger.evaluation.calibrate import Target, choose_threshold
from zstagger.settings import Settings
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger

pytest.importorskip("av")
pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def spec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media-eval-spec")
    for kind, make in (("banned", lambda i: labelled_image([0], seed=1000 + i, size=SIZE)),
                       ("safe", lambda i: labelled_image([], seed=2000 + i, size=SIZE))):
        (root / "ex" / kind).mkdir(parents=True)
        for i in range(6):
            make(i).save(root / "ex" / kind / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A folder per label: clips and GIFs whose pattern shows up part-way through, and clean ones."""
    root = tmp_path_factory.mktemp("media-eval-data")
    (root / "banned").mkdir()
    (root / "_none").mkdir()
    for i in range(6):
        start = 1.0 + 0.5 * (i % 3)
        video(root / "banned" / f"clip{i}.mp4", seconds=4, fps=5, flagged=[(start, start + 1.0)])
        video(root / "_none" / f"clip{i}.mp4", seconds=4, fps=5)
    frames = [clutter(i) for i in range(8)]
    (root / "_none" / "still-moving.gif").write_bytes(animation(frames))
    frames[5] = pattern(1)
    (root / "banned" / "late-frame.gif").write_bytes(animation(frames))
    pattern(4).save(root / "banned" / "still.png")
    clutter(9).save(root / "_none" / "still.png")
    return root


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")), precision="fp32")
    with Tagger(str(tiny_model_dir), device="cpu", batch_size=8, settings=settings) as tagger:
        yield tagger


def item_scores(tagger, dataset, taxonomy):
    """What `tag` gives each item (every frame judged): its banned score, and its truth."""
    files = sorted(dataset.rglob("*.*"))
    results = tagger.tag([str(f) for f in files], taxonomy)
    assert all(r.ok for r in results)
    score = np.array([next(s.score for s in r.scores if s.label == "banned") for r in results])
    truth = np.array([f.parent.name == "banned" for f in files])
    return files, results, score, truth


@pytest.mark.parametrize("media", [{"early_exit_frames": 0}, {"early_exit_frames": 0, "min_frames": 2}],
                         ids=["max", "two-frames"])
def test_eval_and_calibrate_judge_each_media_item_by_its_aggregated_score(tagger, spec_root, dataset, media):
    spec = write_spec(spec_root, "media-eval" + ("-two" if "min_frames" in media else ""), media=media)
    files, results, score, truth = item_scores(tagger, dataset, spec)
    assert [r.verdict for r, t in zip(results, truth) if t] == ["block"] * 8 or "min_frames" in media

    report = zstagger.evaluate(str(dataset), spec, tagger=tagger, bootstrap_rounds=50)
    assert report.evaluated == len(files) == 16 and report.unreadable_count == 0
    assert report.media.items == 14 and report.media.kinds == {"animation": 2, "video": 12}
    assert "per media item" in report.media.unit
    assert ("2th highest" in report.media.aggregation) == ("min_frames" in media)
    banned = next(m for m in report.labels if m.label == "banned")
    # One row per item: support counts items, and what fires is what `tag` tags.
    assert banned.support == int(truth.sum()) == 8
    assert banned.predicted == sum("banned" in r.tags for r in results)

    calibrated = zstagger.calibrate(str(dataset), spec, target_precision=1.0, folds=3, tagger=tagger, bootstrap_rounds=50,
                                     min_positives=5)
    assert calibrated.media.items == 14
    chosen = next(r for r in calibrated.labels if r.label == "banned")
    assert chosen.status == "calibrated"
    # The threshold is chosen among the items' aggregated scores, as `tag` reports them: per video.
    assert chosen.threshold == pytest.approx(choose_threshold(score, truth, Target("precision", 1.0)), abs=1e-5)  # written to 5 places


def test_a_manifest_names_videos_and_the_cli_says_how_they_were_judged(tmp_path, tiny_model_dir, spec_root, dataset):
    write_spec(spec_root, "media-eval-cli", media={"early_exit_frames": 0})
    manifest = tmp_path / "labels.jsonl"
    rows = [{"image": str(f), "labels": ["banned"] if f.parent.name == "banned" else []} for f in sorted(dataset.rglob("*.mp4"))]
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(spec_root),
           "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache")}
    done = run_cli("eval", str(manifest), "-t", "media-eval-cli", "--bootstrap", "50", env=env)
    assert done.returncode == 0, done.stderr
    assert "media: 12 videos, each judged as one item: figures are per media item" in done.stdout
    out = tmp_path / "calibrated.yaml"
    calibrated = run_cli("calibrate", str(manifest), "-t", "media-eval-cli", "--target-precision", "1.0", "--folds", "3",
                         "-o", str(out), env=env)
    assert calibrated.returncode == 0, calibrated.stderr
    assert "thresholds are per media item" in calibrated.stdout
    refused = run_cli("calibrate", str(manifest), "-t", "media-eval-cli", "--target-precision", "1.0", "--folds", "3",
                      "--examples", "2", "-o", str(tmp_path / "x.yaml"), env=env)
    assert refused.returncode == 2 and "picked from stills" in refused.stderr and "Traceback" not in refused.stderr
