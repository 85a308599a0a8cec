"""Animations and video: media found by their bytes, judged over their sampled frames on the real
tiny model, flagged stretches returned with their times, early exit, and hostile files as
error records within their limits.

Every file is made here: Pillow writes GIF, APNG and WebP; PyAV encodes H.264, VP9 and AV1
into MP4, WebM, MKV and MOV. A taxonomy whose block label has example images of one
synthetic pattern (and counter-examples of clutter) makes that label fire on known frames.
"""

import io
import json
import struct
import time

import numpy as np
import pytest
import yaml
from harness import run_cli
from PIL import Image

from zstagger import Taxonomy
from zstagger.errors import TaxonomyError
from zstagger.media import MediaOptions, aggregate, segments, sniff
from zstagger.media.limits import MediaLimits
from zstagger.settings import Settings
from zstagger.synthetic import labelled_image
from zstagger.tagger import Tagger

av = pytest.importorskip("av")

SIZE = (64, 48)


def pattern(seed):
    """A frame showing what the block label was taught (class 0 of the synthetic images)."""
    return labelled_image([0], seed=3000 + seed, size=SIZE)


def clutter(seed):
    return labelled_image([], seed=4000 + seed, size=SIZE)


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("media-spec")
    for kind, make in (("banned", lambda i: labelled_image([0], seed=1000 + i, size=SIZE)),
                       ("safe", lambda i: labelled_image([], seed=2000 + i, size=SIZE))):
        (root / "ex" / kind).mkdir(parents=True)
        for i in range(6):
            make(i).save(root / "ex" / kind / f"{i}.png")
    return root


def write_spec(root, name, **extra):
    spec = {"name": name, "mode": "multi", "labels": [
        {"name": "banned", "examples": ["ex/banned/"], "negative_examples": ["ex/safe/"], "action": "block", "threshold": 0.35},
        {"name": "safe", "background": True}], **extra}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return Taxonomy.from_file(path)


@pytest.fixture(scope="module")
def moderation(spec_dir):
    return write_spec(spec_dir, "media-mod")


@pytest.fixture(scope="module")
def patient(spec_dir):
    """The same taxonomy, never stopping early: every frame is judged."""
    return write_spec(spec_dir, "media-mod-all", media={"early_exit_frames": 0})


@pytest.fixture(scope="module")
def tagger(tiny_model_dir, tmp_path_factory):
    settings = Settings(cache_dir=str(tmp_path_factory.mktemp("cache")))
    with Tagger(str(tiny_model_dir), device="cpu", precision="fp32", batch_size=8, settings=settings) as tagger:
        yield tagger


def with_options(tagger, **changes):
    """The tagger's media options with some settings changed (restore with the returned old ones)."""
    old = tagger.media_options
    limits = {k: v for k, v in changes.items() if k in MediaLimits.__dataclass_fields__}
    rest = {k: v for k, v in changes.items() if k not in limits}
    tagger.media_options = MediaOptions(**{**old.__dict__, "limits": MediaLimits(**{**old.limits.__dict__, **limits}), **rest})
    return old


# -- making media --------------------------------------------------------------------------------


def animation(frames, fmt="GIF", duration=100):
    buf = io.BytesIO()
    kwargs = {"loop": 0} if fmt != "PNG" else {}
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=duration, **kwargs)
    return buf.getvalue()


def still_bytes(image, fmt):
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def video(path, seconds=10, fps=10, flagged=(), codec="libx264", fmt=None, size=SIZE, audio=False):
    """A clip whose frames show the pattern during the ``flagged`` (start, end) seconds and
    clutter elsewhere (a new clutter scene every half second).

    AV1 is encoded in a child process: SVT-AV1, run as root, gives the thread that opens it
    real-time scheduling (SCHED_FIFO 99), which every thread and process started from it later
    inherits; two such threads spinning on a 2-core machine starve everything else for good."""
    if codec == "libsvtav1":
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            return child.submit(_encode, path, seconds, fps, tuple(flagged), codec, fmt, size).result(timeout=300)
    return _encode(path, seconds, fps, flagged, codec, fmt, size)


def _encode(path, seconds, fps, flagged, codec, fmt, size):
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        if codec == "libsvtav1":
            stream.options = {"preset": "12"}
        for i in range(int(seconds * fps)):
            t = i / fps
            hit = any(a <= t < b for a, b in flagged)
            picture = labelled_image([0] if hit else [], seed=(3000 if hit else 4000) + int(t * 2), size=size)
            for packet in stream.encode(av.VideoFrame.from_image(picture)):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def banned(result):
    return next(s.score for s in result.scores if s.label == "banned")


# -- finding media by their bytes ------------------------------------------------------------------


def test_media_are_told_from_stills_by_their_bytes(tmp_path):
    frames = [clutter(i) for i in range(3)]
    assert sniff(animation(frames)) == "animation"
    assert sniff(animation(frames, "PNG")) == "animation"
    assert sniff(animation(frames, "WEBP")) == "animation"
    for fmt in ("GIF", "PNG", "WEBP", "JPEG"):
        assert sniff(still_bytes(frames[0], fmt)) is None, fmt
    assert sniff(animation([frames[0]])) is None  # a one-frame GIF is a still
    for name, codec, fmt in (("a.mp4", "libx264", None), ("a.webm", "libvpx-vp9", None), ("a.mkv", "libx264", None),
                             ("a.mov", "libx264", None)):
        assert sniff(video(tmp_path / name, seconds=1, codec=codec, fmt=fmt).read_bytes()) == "video", name
    assert sniff(b"\x00\x00\x00\x1cftypavif" + bytes(32)) is None  # AVIF: an ISO BMFF still


def test_extensions_are_not_trusted_and_directories_include_videos(tmp_path, tagger, moderation):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    video(tmp_path / "d" / "sub" / "clip.webm", seconds=2, codec="libvpx-vp9")
    (tmp_path / "d" / "really-a-video.jpg").write_bytes(video(tmp_path / "v.mp4", seconds=2).read_bytes())
    (tmp_path / "d" / "moving.png").write_bytes(animation([clutter(i) for i in range(4)], "GIF"))
    clutter(9).save(tmp_path / "d" / "still.gif")
    results = {r.image.rsplit("/", 1)[-1]: r for r in tagger.tag(str(tmp_path / "d"), moderation)}
    assert sorted(results) == ["clip.webm", "moving.png", "really-a-video.jpg", "still.gif"]
    assert results["clip.webm"].media.kind == results["really-a-video.jpg"].media.kind == "video"
    assert results["moving.png"].media.kind == "animation"
    still = results["still.gif"]
    assert still.ok and still.media is None and still.segments is None
    # stills read as before: no media fields (the decision trail, on by default, is every result's)
    fields = {"image", "taxonomy", "scores", "tags", "verdict", "error", "provenance", "explanation"}
    assert set(json.loads(still.to_json())) == set(still.model_dump(mode="json")) == fields
    assert {"media", "segments"} <= set(json.loads(results["clip.webm"].to_json())) & set(results["clip.webm"].model_dump())


# -- animations ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_an_animation_flagged_only_in_frame_6_is_blocked_as_that_frame_would_be(tmp_path, tagger, moderation, fmt):
    frames = [clutter(i) for i in range(10)]
    frames[6] = pattern(1)
    data = animation(frames, fmt)
    result = tagger.tag(data, moderation)[0]
    assert result.verdict == "block" and "banned" in result.tags, result
    assert result.media.kind == "animation" and result.media.stopped_early  # one firing frame is enough for an animation
    assert result.segments[0].label == "banned" and result.segments[0].start == result.segments[0].peak_time == 0.6
    # Exactly as the still: frame 6 as Pillow composites it, tagged as an image.
    with Image.open(io.BytesIO(data)) as im:
        im.seek(6)
        frame6 = im.convert("RGB")
    still = tagger.tag(frame6, moderation)[0]
    assert still.verdict == result.verdict and still.tags == result.tags
    assert banned(still) == pytest.approx(banned(result), abs=1e-6)
    first = tagger.tag(frames[0], moderation)[0]
    assert first.verdict == "allow"  # the first frame alone would have passed


def test_a_clean_animation_stays_clean_and_every_frame_is_judged(tagger, moderation):
    result = tagger.tag(animation([clutter(i) for i in range(12)]), moderation, frames=True)[0]
    assert result.verdict == "allow" and result.tags == [] and result.segments == []
    assert result.media.frames_scored == result.media.frames_decoded == 12 and not result.media.stopped_early
    assert result.media.duration == pytest.approx(1.2)
    assert [f.time for f in result.frames] == pytest.approx([i / 10 for i in range(12)])
    assert banned(result) == pytest.approx(max(f.scores["banned"] for f in result.frames))


def test_long_animations_are_sampled_uniformly_up_to_the_cap(tagger, patient):
    old = with_options(tagger, animation_frames=5)
    try:
        result = tagger.tag(animation([clutter(i % 7) for i in range(40)]), patient, frames=True)[0]
    finally:
        tagger.media_options = old
    assert result.media.frames_decoded == 40 and result.media.frames_scored == 5
    assert [f.time for f in result.frames] == pytest.approx([0.0, 1.0, 2.0, 2.9, 3.9])  # frames 0, 10, 20, 29, 39


def test_near_identical_frames_are_embedded_once(tagger, patient):
    from zstagger.media.source import MediaSource
    from zstagger.media.tagging import tag_media

    embedded = []

    def embed(pictures):
        embedded.append(len(pictures))
        return tagger.embed_frames(pictures)

    def nudged(image, i):  # the same picture but for one pixel (identical frames, GIF writers merge)
        image = image.copy()
        image.putpixel((i, 0), (255, 0, 0))
        return image

    frames = [nudged(clutter(0), i) for i in range(5)] + [nudged(clutter(1), i) for i in range(5)]
    data = animation(frames)
    result = tag_media(MediaSource("animation", data=data), "x", patient, tagger.classifier(patient), embed, tagger.media_options)
    assert result.media.frames_scored == 10 and sum(embedded) == 2
    assert tag_media(MediaSource("animation", data=data), "x", patient, tagger.classifier(patient), embed,
                     MediaOptions(dedup=0.0)).media.frames_scored == 10 and sum(embedded) == 12


# -- video -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx-vp9"), ("clip.mkv", "libx264"),
                                        ("clip.mov", "libx264"), ("clip-av1.mkv", "libsvtav1")])
def test_a_flagged_stretch_comes_back_with_its_times(tmp_path, tagger, patient, name, codec):
    path = video(tmp_path / name, seconds=10, flagged=[(4.0, 6.0)], codec=codec)
    result = tagger.tag(str(path), patient, frames=True)[0]
    assert result.ok, result.error
    assert result.verdict == "block" and result.media.kind == "video" and not result.media.stopped_early
    # (the decoder skips disposable B-frames: at most every frame decoded)
    assert 10 < result.media.frames_decoded <= 100 and result.media.duration == pytest.approx(10.0, abs=0.15)
    flagged = [s for s in result.segments if s.label == "banned"]
    assert len(flagged) == 1, result.segments
    interval = 1.0  # the default sampling rate
    assert abs(flagged[0].start - 4.0) <= interval and abs(flagged[0].end - 5.9) <= interval
    assert 4.0 <= flagged[0].peak_time < 6.0
    times = [f.time for f in result.frames]
    assert times[0] == 0.0 and times[-1] == pytest.approx(9.9) and all(b > a for a, b in zip(times, times[1:]))
    for whole in range(10):  # at least one frame a second
        assert any(whole <= t < whole + 1 for t in times)


def test_a_clean_video_stays_clean(tmp_path, tagger, moderation):
    result = tagger.tag(str(video(tmp_path / "clean.mp4", seconds=6)), moderation)[0]
    assert result.verdict == "allow" and result.segments == [] and not result.media.stopped_early
    assert 6 < result.media.frames_decoded <= 60


def test_early_exit_stops_decoding(tmp_path, tagger, moderation, patient):
    path = video(tmp_path / "late.mp4", seconds=30, flagged=[(2.0, 30.0)])
    early = tagger.tag(str(path), moderation)[0]
    full = tagger.tag(str(path), patient)[0]
    assert early.verdict == full.verdict == "block"
    assert early.media.stopped_early and not full.media.stopped_early
    assert 30 < full.media.frames_decoded <= 300
    # Two firing frames are needed, scored a batch (4 frames) at a time; decoding runs at most a
    # batch ahead of scoring: the first 11-12 s at most.
    assert early.media.frames_decoded <= 125, early.media
    assert early.media.frames_scored < full.media.frames_scored


def test_scene_cuts_are_sampled_between_the_regular_samples(tmp_path, tagger, patient):
    # A flash of the pattern from 2.3 to 2.7 s: between the 1 s samples, found as two scene cuts.
    path = video(tmp_path / "flash.mp4", seconds=5, flagged=[(2.3, 2.7)])
    result = tagger.tag(str(path), patient, frames=True)[0]
    assert result.verdict == "block", result
    assert any(2.2 < f.time < 2.8 for f in result.frames)
    old = with_options(tagger, scene_threshold=0.0)
    try:
        blind = tagger.tag(str(path), patient, frames=True)[0]
    finally:
        tagger.media_options = old
    assert not any(2.2 < f.time < 2.8 for f in blind.frames) and blind.verdict == "allow"


def test_only_reference_frames_are_decoded_and_the_judgement_stays(tmp_path, tagger, patient):
    # x264's default stream: most frames are disposable B-frames, which are skipped; samples and
    # scene cuts land on the nearest decoded frame, so verdict and segments stay.
    path = video(tmp_path / "b.mp4", seconds=10, flagged=[(4.0, 6.0)])
    skipping = tagger.tag(str(path), patient, frames=True)[0]
    old = with_options(tagger, reference_only=False)
    try:
        every = tagger.tag(str(path), patient, frames=True)[0]
    finally:
        tagger.media_options = old
    assert every.media.frames_decoded == 100 and skipping.media.frames_decoded < 0.7 * 100
    assert skipping.verdict == every.verdict == "block" and skipping.tags == every.tags
    assert [s.label for s in skipping.segments] == [s.label for s in every.segments]
    for a, b in zip(skipping.segments, every.segments):
        assert abs(a.start - b.start) <= 0.3 and abs(a.end - b.end) <= 0.3
    for whole in range(10):  # still at least one frame a second
        assert any(whole <= f.time < whole + 1 for f in skipping.frames)


def _encoded(path, frames, options):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = options
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_image(clutter(i // 5))):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_a_stream_without_disposable_frames_or_with_long_runs_of_them_is_decoded_whole(tmp_path):
    from zstagger.media.video import open_video

    no_b = _encoded(tmp_path / "p.mp4", 60, {"bf": "0"})
    stream = open_video(str(no_b), MediaLimits(), 1.0, 0.12, reference_only=True)
    assert len(list(stream)) > 6 and stream.frames_decoded == 60  # every frame is a reference
    # 16 B-frames in a row (1.7 s at 10 frames/s) would leave a gap longer than the 1 s sampling
    # interval: the first packet that far past the last decoded frame turns skipping off, before
    # the frames in the gap are decoded, so no sample is lost, from the very first second on.
    runs = _encoded(tmp_path / "b16.mp4", 120, {"x264-params": "bframes=16:b-adapt=0:b-pyramid=none:scenecut=0"})
    stream = open_video(str(runs), MediaLimits(), 1.0, 0.0, reference_only=True)
    times = [f.time for f in stream]
    assert stream.frames_decoded > 110
    assert times[:3] == pytest.approx([0.0, 1.0, 2.0]) and all(b - a <= 1.0 + 1e-6 for a, b in zip(times, times[1:])), times


def test_sparse_sampling_seeks_from_keyframe_to_keyframe(tmp_path):
    from zstagger.media.video import open_video

    path = tmp_path / "gop5.mp4"
    with av.open(str(path), "w") as out:  # a keyframe every 0.5 s, sampled once a second
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        stream.options = {"g": "5", "keyint_min": "5", "sc_threshold": "0"}
        for i in range(200):
            for packet in stream.encode(av.VideoFrame.from_image(clutter(i // 5))):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    every = open_video(str(path), MediaLimits(), 1.0, 0.12)
    assert len(list(every)) >= 21 and every.frames_decoded == 200  # looking for scene cuts: every frame decoded
    seeking = open_video(str(path), MediaLimits(), 1.0, 0.0)
    times = [f.time for f in seeking]
    assert times == pytest.approx([*range(20), 19.9]) and not seeking.truncated
    assert seeking.frames_decoded < 0.7 * 200, seeking.frames_decoded


def test_video_frames_are_converted_at_the_size_the_model_keeps(tmp_path, tagger):
    from zstagger.media.video import open_video

    path = str(video(tmp_path / "v.mp4", seconds=2))
    assert {f.image.size for f in open_video(path, MediaLimits(), 1.0, 0.12, frame_side=24)} == {(32, 24)}
    assert {f.image.size for f in open_video(path, MediaLimits(), 1.0, 0.12)} == {SIZE}
    assert tagger.media_options.frame_side == tagger.decode_size  # twice the model's input side, as for JPEGs


def test_mean_of_top_k_and_min_frames_policies(tmp_path, tagger, spec_dir):
    path = str(video(tmp_path / "short-hit.mp4", seconds=8, flagged=[(3.0, 4.0)]))
    two = write_spec(spec_dir, "need-two", media={"min_frames": 3, "early_exit_frames": 0})
    mean = write_spec(spec_dir, "mean-of-4", media={"aggregation": "mean_top_k", "top_k": 4, "early_exit_frames": 0})
    one = tagger.tag(path, write_spec(spec_dir, "one-is-enough", media={"early_exit_frames": 0}), frames=True)[0]
    fired = sum(f.scores["banned"] >= 0.35 for f in one.frames)
    assert one.verdict == "block" and 1 <= fired < 3
    per_frame = sorted((f.scores["banned"] for f in one.frames), reverse=True)
    needs_two = tagger.tag(path, two)[0]
    assert needs_two.verdict == "allow" and banned(needs_two) == pytest.approx(per_frame[2], abs=1e-6)
    averaged = tagger.tag(path, mean)[0]
    assert banned(averaged) == pytest.approx(np.mean(per_frame[:4]), abs=1e-6)


def test_video_through_the_cli_with_frames(tmp_path, tiny_model_dir, spec_dir, moderation):
    path = video(tmp_path / "cli.mp4", seconds=4, flagged=[(1.0, 2.0)])
    env = {"ZSTAGGER_TAXONOMY_PATH": str(spec_dir), "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"),
           "ZSTAGGER_VIDEO_EARLY_EXIT": "0"}
    done = run_cli("tag", str(path), "-t", "media-mod", "--model", str(tiny_model_dir), "--device", "cpu",
                   "--precision", "fp32", "--frames", "--format", "jsonl", env=env)
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert line["verdict"] == "block" and line["media"]["kind"] == "video" and 4 < line["media"]["frames_decoded"] <= 40
    assert line["segments"][0]["label"] == "banned" and abs(line["segments"][0]["start"] - 1.0) <= 1.0
    assert len(line["frames"]) == line["media"]["frames_scored"] and "banned" in line["frames"][0]["scores"]
    plain = run_cli("tag", str(path), "-t", "media-mod", "--model", str(tiny_model_dir), "--device", "cpu",
                    "--precision", "fp32", "--format", "jsonl", env=env)
    assert "frames" not in json.loads(plain.stdout)  # per-frame scores only on request


# -- hostile files: error records within their limits ----------------------------------------------


def gif_of_many_frames(count, screen=(1, 1)):
    """A GIF of ``count`` one-pixel frames on a logical screen of ``screen`` size, written by hand."""
    head = b"GIF89a" + struct.pack("<HH", *screen) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff"
    one = (b"\x21\xf9\x04\x00\x01\x00\x00\x00"  # graphic control: 10 ms
           + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00")
    return head + one * count + b"\x3b"


def timed_tag(tagger, ref, taxonomy):
    start = time.monotonic()
    result = tagger.tag(ref, taxonomy)[0]
    return result, time.monotonic() - start


def test_a_gif_of_50000_frames_is_refused_before_decoding(tagger, moderation):
    result, took = timed_tag(tagger, gif_of_many_frames(50_000), moderation)
    assert result.error.type == "too_many_frames" and "ZSTAGGER_MEDIA_MAX_FRAMES" in result.error.message
    assert took < 5
    old = with_options(tagger, max_frames=100_000, max_total_pixels=10_000)
    try:
        result, took = timed_tag(tagger, gif_of_many_frames(50_000), moderation)
    finally:
        tagger.media_options = old
    assert result.error.type == "too_many_pixels" and took < 5


def test_many_small_frames_within_the_limits_cost_a_bounded_number_of_embeddings(tagger, moderation):
    result = tagger.tag(gif_of_many_frames(2_000, screen=(8, 8)), moderation)[0]
    assert result.ok and result.media.frames_decoded == 2_000 and result.media.frames_scored <= 64


def test_a_logical_screen_far_larger_than_its_frames_is_refused_before_compositing(tagger, moderation):
    for screen in ((8_000, 8_000), (30_000, 30_000)):  # over our limit; over Pillow's decompression-bomb limit too
        result, took = timed_tag(tagger, gif_of_many_frames(3, screen=screen), moderation)
        assert result.error.type == "too_many_pixels" and "logical screen" in result.error.message and took < 5


def lie_about_length(data, seconds=1):
    """An MP4 whose movie, track and media headers all declare ``seconds`` (its frames run on)."""
    out = bytearray(data)
    for box, offset in ((b"mvhd", 16), (b"tkhd", 20), (b"mdhd", 16)):
        at = out.find(box)
        assert at > 0 and out[at + 4] == 0  # version 0: 32-bit fields
        timescale = struct.unpack(">I", out[at + 16:at + 20])[0] if box != b"tkhd" else 1000
        duration_at = at + 4 + offset
        out[duration_at:duration_at + 4] = struct.pack(">I", seconds * timescale)
    return bytes(out)


def test_a_video_that_lies_about_its_length_stops_at_the_limit(tmp_path, tagger, moderation):
    liar = lie_about_length(video(tmp_path / "long.mp4", seconds=8).read_bytes())
    old = with_options(tagger, max_duration=3.0)
    try:
        result = tagger.tag(liar, moderation)[0]
        honest = tagger.tag(str(tmp_path / "long.mp4"), moderation)[0]
    finally:
        tagger.media_options = old
    assert result.error.type == "too_long" and "by the frames decoded" in result.error.message, result.error
    assert honest.error.type == "too_long" and "declared" in honest.error.message


@pytest.mark.parametrize("limit,value,kind", [("max_frames", 25, "too_many_frames"), ("max_frame_pixels", 1000, "too_many_pixels"),
                                              ("max_total_pixels", 64 * 48 * 15, "too_many_pixels"),
                                              ("timeout", 1e-6, "media_timeout")])
def test_each_limit_is_an_error_record(tmp_path, tagger, moderation, limit, value, kind):
    path = video(tmp_path / "v.mp4", seconds=5)
    old = with_options(tagger, **{limit: value})
    try:
        result = tagger.tag([str(path), clutter(0)], moderation)
    finally:
        tagger.media_options = old
    assert result[0].error.type == kind and result[0].error.message.count("\n") == 0
    assert result[1].ok  # the rest of the batch goes on


def test_damaged_and_audio_only_files(tmp_path, tagger, moderation, patient):
    clip = video(tmp_path / "v.webm", seconds=6, codec="libvpx-vp9").read_bytes()
    with av.open(str(tmp_path / "audio.m4a"), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    mp4 = video(tmp_path / "v.mp4", seconds=2).read_bytes()
    inputs = [clip[: len(clip) // 2], str(tmp_path / "audio.m4a"), b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 8,
              mp4[: len(mp4) // 2], clutter(1)]
    frames = [clutter(i) for i in range(8)]
    frames[2] = pattern(3)
    gif = animation(frames)
    cut_gif = tagger.tag(gif[: len(gif) * 6 // 10], patient)[0]  # a GIF cut off in its fifth frame or so
    assert cut_gif.ok and cut_gif.media.truncated and cut_gif.verdict == "block" and 2 < cut_gif.media.frames_decoded < 8
    cut, audio, garbage, headless, fine = tagger.tag(inputs, moderation)
    assert cut.ok and cut.media.truncated and 0 < cut.media.frames_decoded < 60  # the frames before the cut are judged
    assert audio.error.type == "no_video_stream" and "audio" in audio.error.message
    assert garbage.error.type == "invalid_media" and headless.error.type == "invalid_media"
    assert fine.ok


# -- the pure pieces -------------------------------------------------------------------------------


def test_aggregation_and_segments_against_hand_computation():
    scores = np.array([[0.1, 0.9], [0.7, 0.2], [0.8, 0.3], [0.2, 0.95], [0.75, 0.1]])
    cosines = scores / 10
    top, cos, _ = aggregate(scores, cosines)
    assert top.tolist() == [0.8, 0.95] and cos.tolist() == [0.08, 0.095]
    second, _, _ = aggregate(scores, cosines, "max", min_frames=2)
    assert second.tolist() == [0.75, 0.9]
    mean, _, _ = aggregate(scores, cosines, "mean_top_k", top_k=3)
    assert mean == pytest.approx([(0.8 + 0.75 + 0.7) / 3, (0.95 + 0.9 + 0.3) / 3])
    fired = scores >= 0.5
    got = segments([0.0, 1.0, 2.0, 3.0, 4.0], fired, scores, ["a", "b"])
    assert got == [
        {"label": "b", "start": 0.0, "end": 0.0, "peak_score": 0.9, "peak_time": 0.0},
        {"label": "a", "start": 1.0, "end": 2.0, "peak_score": 0.8, "peak_time": 2.0},
        {"label": "b", "start": 3.0, "end": 3.0, "peak_score": 0.95, "peak_time": 3.0},
        {"label": "a", "start": 4.0, "end": 4.0, "peak_score": 0.75, "peak_time": 4.0},
    ]


def test_the_taxonomy_media_block_is_validated():
    base = {"name": "m", "labels": [{"name": "a"}, {"name": "b"}]}
    assert Taxonomy(**base).fingerprint == Taxonomy(**base, media=None).fingerprint  # absent: hashes as before
    for media, message in (({"min_frames": 0}, "min_frames"), ({"aggregation": "median"}, "aggregation"),
                           ({"aggregation": "mean_top_k", "min_frames": 2}, "min_frames applies to aggregation 'max'"),
                           ({"top_k": 2}, "top_k applies to aggregation 'mean_top_k'"), ({"early_exit_frames": -1}, "early_exit"),
                           ({"surprise": 1}, "surprise")):
        with pytest.raises(TaxonomyError, match=message):
            Taxonomy(**base, media=media)


# -- the same result through a real worker and the HTTP service ------------------------------------


def test_a_video_and_a_gif_through_a_worker_and_the_http_service_equal_the_cli(tmp_path, tiny_model_dir, spec_dir, moderation):
    import base64
    import functools
    import http.server
    import threading

    import httpx
    from harness import ApiServer, RedisServer, Worker

    from zstagger.service.auth import hash_key

    media = tmp_path / "media"
    media.mkdir()
    video(media / "clip.mp4", seconds=4, flagged=[(1.0, 2.0)])
    frames = [clutter(i) for i in range(8)]
    frames[5] = pattern(2)
    (media / "moving.gif").write_bytes(animation(frames))
    files = [str(media / "clip.mp4"), str(media / "moving.gif")]
    env = {"ZSTAGGER_MODEL": str(tiny_model_dir), "ZSTAGGER_PRECISION": "fp32", "ZSTAGGER_TAXONOMY_PATH": str(spec_dir),
           "ZSTAGGER_CACHE_DIR": str(tmp_path / "cache"), "ZSTAGGER_METRICS_PORT": "0"}
    direct = run_cli("tag", *files, "-t", "media-mod", "--format", "jsonl", env=env)
    assert direct.returncode == 0, direct.stderr
    expected = [json.loads(line) for line in direct.stdout.splitlines()]
    assert [r["verdict"] for r in expected] == ["block", "block"] and all("media" in r for r in expected)

    def same(got, want):
        assert got["verdict"] == want["verdict"] and got["tags"] == want["tags"] and got["media"] == want["media"]
        assert [s["label"] for s in got["segments"]] == [s["label"] for s in want["segments"]]
        np.testing.assert_allclose([s["score"] for s in got["scores"]], [s["score"] for s in want["scores"]], atol=1e-6)

    redis_server = RedisServer(tmp_path).start()
    worker = None
    try:
        queue_env = {**env, "ZSTAGGER_REDIS_URL": redis_server.url}
        worker = Worker("media", queue_env, tmp_path, args=("--queues", "bulk")).wait_ready()
        job = run_cli("enqueue", *files, "-t", "media-mod", "--upload", env=queue_env)  # the bytes travel: a remote worker
        assert job.returncode == 0, job.stderr
        got = run_cli("results", job.stdout.strip(), "--wait", "--timeout", "120", env=queue_env)
        assert got.returncode == 0, got.stderr + worker.output()[-3000:]
        for line, want in zip(got.stdout.splitlines(), expected):
            same(json.loads(line), want)
    finally:
        if worker is not None:
            worker.terminate(timeout=20)
        redis_server.stop()

    files_server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(media)))
    threading.Thread(target=files_server.serve_forever, daemon=True).start()
    key = "zst_media-test-key"
    api = ApiServer({**env, "ZSTAGGER_API_KEYS": hash_key(key), "ZSTAGGER_ALLOW_PRIVATE_URLS": "1"}, tmp_path).wait_ready()
    try:
        base = f"http://127.0.0.1:{files_server.server_address[1]}"
        clip = "data:video/mp4;base64," + base64.b64encode((media / "clip.mp4").read_bytes()).decode()
        answer = httpx.post(api.url + "/v1/tag", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                            json={"images": [clip, f"{base}/moving.gif"], "taxonomy": "media-mod"})
        assert answer.status_code == 200, answer.text
        for got, want in zip(answer.json()["results"], expected):
            same(got, want)
            assert "frames" not in got
        with_frames = httpx.post(api.url + "/v1/tag", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                 json={"images": [f"{base}/moving.gif"], "taxonomy": "media-mod", "frames": True})
        assert len(with_frames.json()["results"][0]["frames"]) == expected[1]["media"]["frames_scored"]
        moderation = httpx.post(api.url + "/v1/moderations", headers={"Authorization": f"Bearer {key}"}, timeout=120,
                                json={"model": "media-mod", "input": [{"type": "image_url", "image_url": {"url": f"{base}/moving.gif"}}]})
        assert moderation.status_code == 200, moderation.text
        assert moderation.json()["results"][0]["flagged"] is True
    finally:
        assert api.stop() in (0, -15)
        files_server.shutdown()
    assert "Traceback" not in api.log_path.read_text()
