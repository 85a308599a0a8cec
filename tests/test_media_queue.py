"""Long videos through the queue: cut into time ranges judged by several real workers, joined
into one result; a worker killed mid-range loses nothing and nothing counts twice.

Real H.264 clips (PyAV), the tiny model with few-shot examples, a real redis-server and real
`zstagger worker` processes.
"""

import json
import time

import pytest
import redis
from harness import run_cli, wait_for, worker_starter
from test_media import SIZE, video, write_spec

from zstagger.media import MediaSource, merge_records, plan_ranges
from zstagger.settings import Settings
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger

pytest.importorskip("av")


@pytest.fixture(scope="module")
def spec_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("media-queue-spec")
    for kind, make in (("banned", lambda i: labelled_image([0], seed=1000 + i, size=SIZE)),
                       ("safe", lambda i: labelled_image([], seed=2000 + i, size=SIZE))):
        (root / "ex" / kind).mkdir(parents=True)
        for i in range(6):
            make(i).save(root / "ex" / kind / f"{i}.png")
    write_spec(root, "split-all", media={"early_exit_frames": 0})
    write_spec(root, "split-early")  # the default early exit: 2 firing frames
    return root


def test_plan_ranges_cut_on_the_sampling_grid():
    assert plan_ranges(100.0, 300.0, 1.0) == [(0.0, None)]  # short enough: whole
    assert plan_ranges(None, 10.0, 1.0) == [(0.0, None)]  # no declared length: whole
    assert plan_ranges(10.0, 3.0, 1.0) == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0), (9.0, None)]
    assert plan_ranges(10.0, 2.3, 0.5) == [(0.0, 2.5), (2.5, 5.0), (5.0, 7.5), (7.5, None)]  # multiples of the interval


def test_ranges_joined_give_the_whole_video_frame_for_frame(tmp_path, tiny_model_dir, spec_root):
    from zstagger import Taxonomy

    spec = Taxonomy.from_file(spec_root / "split-all.yaml")
    path = video(tmp_path / "long.mp4", seconds=12, flagged=[(2.0, 5.0), (8.5, 9.5)])  # the first crosses 3 s
    settings = Settings(store=f"sqlite:///{tmp_path}/store.db", cache_dir=str(tmp_path / "cache"), precision="fp32")
    with Tagger(str(tiny_model_dir), device="cpu", settings=settings) as tagger:
        whole = tagger.tag(str(path), spec, frames=True)[0]  # fp16 frame embeddings, as ranges keep them
        source = MediaSource("video", path=str(path))
        parts = [tagger.judge_range(source, spec, start, end) for start, end in plan_ranges(12.0, 3.0, 1.0)]
        joined = tagger.rejudge_media(merge_records(parts), str(path), spec, frames=True, early_exit=False)
    assert len(parts) == 4 and all(p.times.min() >= start for p, (start, _) in zip(parts, plan_ranges(12.0, 3.0, 1.0)))
    # No frame lost, none twice: the ranges sample exactly the frames one decode samples.
    assert [f.time for f in joined.frames] == [f.time for f in whole.frames]
    assert joined.model_dump(exclude={"media", "provenance"}) == whole.model_dump(exclude={"media", "provenance"})
    banned = [s for s in joined.segments if s.label == "banned"]
    assert len(banned) == 2 and banned[0].start < 3.0 < banned[0].end  # one segment across the boundary
    assert joined.media.frames_scored == whole.media.frames_scored and joined.media.duration == whole.media.duration


def split_env(tmp_path, tiny_model_dir, spec_root, redis_server):
    """Settings that split a 24 s clip into 8 ranges of 3 s, 8 frames a second, one frame a batch."""
    return {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(spec_root),
            "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"), "ZSTAGGER_METRICS_PORT": "0",
            "ZSTAGGER_REDIS_URL": redis_server.url, "ZSTAGGER_VISIBILITY_TIMEOUT": "8",
            "ZSTAGGER_VIDEO_SPLIT_SECONDS": "3", "ZSTAGGER_VIDEO_SAMPLE_RATE": "8", "ZSTAGGER_MEDIA_BATCH_SIZE": "1"}


def test_a_long_video_is_split_across_workers_and_a_killed_worker_loses_nothing(tmp_path, tiny_model_dir, spec_root,
                                                                              redis_server):
    path = video(tmp_path / "long.mp4", seconds=24, fps=25, flagged=[(5.0, 7.0), (17.5, 19.0)], size=(320, 240))
    env = split_env(tmp_path, tiny_model_dir, spec_root, redis_server)
    direct = run_cli("tag", str(path), "-t", "split-all", "--format", "jsonl", env=env)
    assert direct.returncode == 0, direct.stderr
    want = json.loads(direct.stdout)
    client = redis.Redis.from_url(redis_server.url)
    with worker_starter(env, tmp_path) as workers:
        victim = workers("victim").wait_ready()
        job = run_cli("enqueue", str(path), "-t", "split-all", "--sink", str(tmp_path / "sink"), env=env)
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip()
        ranges = f"zstagger:job:{job_id}:ranges:0"
        wait_for(lambda: client.hlen(ranges) >= 2, 60, "the victim to judge its first ranges")
        # In the middle of its next range (a range takes ~0.25 s): not in the millisecond just
        # after a range, when the worker takes the next one off Redis before it is recorded as
        # unacknowledged (a kill there loses that range: the transport's known gap, docs/queue.md).
        time.sleep(0.1)
        victim.kill9()
        left = client.hlen(ranges)
        assert 2 <= left < 8, left
        rescuer = workers("rescuer").wait_ready()
        got = run_cli("results", job_id, "--wait", "--timeout", "90", env=env)
        assert got.returncode == 0, got.stderr + rescuer.output()[-3000:]
        assert "zstagger.tag_range" in rescuer.output() and "zstagger.tag_range" in victim.output()
    result = json.loads(got.stdout)
    assert client.hlen(f"zstagger:job:{job_id}:results") == 1 and not client.exists(ranges)
    # The joined result goes to the job's sink too, under the chunk the video came in.
    sunk = [json.loads(line) for line in (tmp_path / "sink" / job_id / "00000000-00000000.jsonl").read_text().splitlines()]
    assert [(line.pop("job_id"), line.pop("index")) for line in sunk] == [(job_id, 0)] and sunk == [result]
    # One result, as the whole decode gives it: every sampled frame once, segments joined across ranges.
    assert result["media"]["frames_scored"] == want["media"]["frames_scored"]
    assert result["verdict"] == want["verdict"] == "block" and result["tags"] == want["tags"]
    assert [(s["label"], s["start"], s["end"]) for s in result["segments"]] == \
        [(s["label"], s["start"], s["end"]) for s in want["segments"]]
    assert [s for s in result["segments"] if s["label"] == "banned"][0]["start"] < 6.0 < \
        [s for s in result["segments"] if s["label"] == "banned"][0]["end"]  # across the 6 s boundary
    for a, b in zip(result["scores"], want["scores"]):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=5e-3)  # fp16 frame embeddings


def test_a_split_video_decided_early_skips_the_later_ranges_and_equals_one_decode(tmp_path, tiny_model_dir, spec_root,
                                                                                  redis_server):
    path = video(tmp_path / "late.mp4", seconds=24, fps=25, flagged=[(2.0, 24.0)], size=(320, 240))
    env = split_env(tmp_path, tiny_model_dir, spec_root, redis_server)
    direct = run_cli("tag", str(path), "-t", "split-early", "--format", "jsonl", env=env)
    assert direct.returncode == 0, direct.stderr
    want = json.loads(direct.stdout)
    assert want["media"]["stopped_early"] and want["verdict"] == "block"
    with worker_starter(env, tmp_path) as workers:
        worker = workers("one").wait_ready()
        job = run_cli("enqueue", str(path), "-t", "split-early", env=env)
        assert job.returncode == 0, job.stderr
        got = run_cli("results", job.stdout.strip(), "--wait", "--timeout", "90", env=env)
        assert got.returncode == 0, got.stderr + worker.output()[-3000:]
        log = worker.output()
    result = json.loads(got.stdout)
    # One worker takes the ranges in order: the first decides the video, the other seven are not decoded.
    assert log.count("not decoded: the video was decided") == 7, log[-3000:]
    assert result["media"]["stopped_early"] and result["verdict"] == want["verdict"] and result["tags"] == want["tags"]
    assert result["media"]["frames_scored"] == want["media"]["frames_scored"]
    assert [(s["label"], s["start"], s["end"]) for s in result["segments"]] == \
        [(s["label"], s["start"], s["end"]) for s in want["segments"]]
    for a, b in zip(result["scores"], want["scores"]):
        assert a["label"] == b["label"] and a["score"] == pytest.approx(b["score"], abs=5e-3)  # fp16 frame embeddings
