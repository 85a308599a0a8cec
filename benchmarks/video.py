"""Video: what a clip costs against its sampled frames as stills, and what early exit saves.

    python benchmarks/video.py --model CKPT/vitb32 --workdir /tmp/zs-video --json > results/video.json

Makes two 60 s 1280x720 H.264 clips at 30 frames/s with PyAV (moving synthetic scenes, a
scene change every 6 s): ``clean.mp4``, and ``late.mp4``, whose scenes from 10 s on show
what the taxonomy's block label was taught (few-shot examples and counter-examples, so
the label fires on those frames of a random-weight model too). Then, with one Tagger:

- ``clip``: ``tag(clean.mp4)`` at the default sampling (1 frame/s, scene cuts, first and
  last frame): wall time, frames decoded and scored, frames decoded+embedded per second;
- ``stills``: the same sampled frames, saved as JPEG beforehand, tagged as images; the
  ratio clip/stills is what video costs beyond its sampled frames (goal <= 1.3);
- ``early exit``: ``tag(late.mp4)`` with the default early exit (2 firing frames for video)
  against the same clip judged to its end; the ratio is the cost of a clip blocked 10 s
  into 60 (goal <= 0.3).

Passes alternate (``--rounds`` each, after a warm-up), and the ratios are of medians, so
the machine's drift hits every measurement alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from zstagger.settings import Settings
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger
from zstagger.taxonomy import Taxonomy

WIDTH, HEIGHT, FPS, SECONDS, SCENE = 1280, 720, 30, 60, 6


def scene(index: int, flagged: bool) -> np.ndarray:
    """A 1280x720 picture a little larger than the frame, so that it can pan."""
    small = labelled_image([0] if flagged else [], seed=(7000 if flagged else 8000) + index, size=(352, 208))
    return np.asarray(small.resize((WIDTH + 64, HEIGHT + 32), Image.Resampling.BILINEAR))


def write_clip(path: Path, flagged_from: float | None) -> None:
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        picture = None
        for i in range(SECONDS * FPS):
            t = i / FPS
            if i % (SCENE * FPS) == 0:
                picture = scene(i // (SCENE * FPS), flagged_from is not None and t >= flagged_from)
            dx, dy = (i % (SCENE * FPS)) * 64 // (SCENE * FPS), (i % (SCENE * FPS)) * 32 // (SCENE * FPS)  # a slow pan
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[dy:dy + HEIGHT, dx:dx + WIDTH]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def taxonomy(workdir: Path, early_exit: int | None) -> Taxonomy:
    for kind, flagged in (("banned", True), ("safe", False)):
        folder = workdir / "ex" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(6):
            labelled_image([0] if flagged else [], seed=(5000 if flagged else 6000) + i, size=(352, 208)).save(folder / f"{i}.jpg")
    spec = {"name": f"video-bench-{early_exit}", "mode": "multi", "labels": [
        {"name": "banned", "examples": ["ex/banned/"], "negative_examples": ["ex/safe/"], "action": "block", "threshold": 0.5},
        {"name": "safe", "background": True}]}
    if early_exit is not None:
        spec["media"] = {"early_exit_frames": early_exit}
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Taxonomy.from_file(path)


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    out = run()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    clips = {"clean": workdir / "clean.mp4", "late": workdir / "late.mp4"}
    for name, path in clips.items():
        if not path.exists():
            print(f"video: writing {path}...", file=sys.stderr)
            write_clip(path, 10.0 if name == "late" else None)
    settings = Settings(cache_dir=str(workdir / "cache"))
    tagger = Tagger(args.model, settings=settings)
    default, patient = taxonomy(workdir, None), taxonomy(workdir, 0)

    clip = tagger.tag(str(clips["clean"]), default, frames=True)[0]  # warm-up, and the sampled frames' times
    assert clip.ok and clip.verdict == "allow", clip.error or clip.segments
    stills_dir = workdir / "stills"
    stills_dir.mkdir(exist_ok=True)
    import av

    wanted = [f.time for f in clip.frames]
    stills = []
    with av.open(str(clips["clean"])) as container:
        for frame in container.decode(video=0):
            if wanted and abs(frame.time - wanted[0]) < 1e-6:
                path = stills_dir / f"{len(stills):04d}.jpg"
                frame.to_image().save(path, quality=90)
                stills.append(str(path))
                wanted.pop(0)
    assert len(stills) == clip.media.frames_scored, (len(stills), clip.media)
    tagger.tag(stills, default)  # warm-up
    late = tagger.tag(str(clips["late"]), default)[0]
    assert late.verdict == "block" and late.media.stopped_early, late

    times: dict[str, list[float]] = {"clip": [], "stills": [], "early_exit": [], "to_the_end": []}
    for _ in range(args.rounds):
        times["clip"].append(timed(lambda: tagger.tag(str(clips["clean"]), default))[0])
        times["stills"].append(timed(lambda: tagger.tag(stills, default))[0])
        seconds, early = timed(lambda: tagger.tag(str(clips["late"]), default)[0])
        times["early_exit"].append(seconds)
        seconds, full = timed(lambda: tagger.tag(str(clips["late"]), patient)[0])
        times["to_the_end"].append(seconds)
    median = {k: statistics.median(v) for k, v in times.items()}
    report = {
        "clip": f"{SECONDS} s {WIDTH}x{HEIGHT} H.264 at {FPS} frames/s, a scene change every {SCENE} s",
        "model": args.model,
        "frames_decoded": clip.media.frames_decoded,
        "frames_scored": clip.media.frames_scored,
        "decoded_per_second": round(clip.media.frames_decoded / median["clip"], 1),
        "scored_per_second": round(clip.media.frames_scored / median["clip"], 2),
        "clip_over_stills": round(median["clip"] / median["stills"], 3),
        "early_exit": {"stopped_at_frames_decoded": early.media.frames_decoded, "frames_scored": early.media.frames_scored,
                       "segments": [s.model_dump() for s in early.segments],
                       "full_frames_decoded": full.media.frames_decoded,
                       "cost_over_full": round(median["early_exit"] / median["to_the_end"], 3)},
        "seconds": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    tagger.close()
    print(json.dumps(report, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))


if __name__ == "__main__":
    main()
