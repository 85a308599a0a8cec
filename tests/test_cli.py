"""The `zstagger` command-line contract, run as a real subprocess where exit codes matter."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from harness import clean_environ, ctrl_c_reaches

from zstagger.testing import sample_image

SCHEMA_KEYS = ["image", "taxonomy", "scores", "tags", "verdict", "error", "provenance", "explanation"]  # explanation: the decision trail, on by default


def command(*args):
    exe = shutil.which("zstagger")
    return [exe, *args] if exe else [sys.executable, "-m", "zstagger.cli", *args]


def zstagger(*args, stdin=None, env=None, cwd=None):
    return subprocess.run(command(*args), input=stdin, capture_output=True, text=True, env=clean_environ(env),
                          timeout=300, cwd=cwd)


def lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_tag_directory_with_a_taxonomy_prints_jsonl_in_input_order(image_dir, tiny_model_dir):
    result = zstagger("tag", str(image_dir), "-t", "moderation", "--model", str(tiny_model_dir), "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    records = lines(result.stdout)
    assert [r["image"] for r in records] == [str(image_dir / "a.jpg"), str(image_dir / "b.png"), str(image_dir / "sub" / "c.png")]
    for record in records:
        assert list(record) == SCHEMA_KEYS
        assert record["taxonomy"] == "moderation" and record["error"] is None
        assert record["verdict"] in ("allow", "review", "block")
        scores = [s["score"] for s in record["scores"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(set(s) == {"label", "score", "cosine"} for s in record["scores"])
        assert "safe" not in {s["label"] for s in record["scores"]}  # background: a rival, not a result
    from zstagger.engine.locate import model_fingerprint
    from zstagger.registry import get_taxonomy

    moderation = get_taxonomy("moderation")
    assert records[0]["provenance"] == {  # auditable later: exactly which weights and which spec
        "model": str(tiny_model_dir), "model_fingerprint": model_fingerprint(str(tiny_model_dir)),
        "taxonomy_version": moderation.version, "taxonomy_fingerprint": moderation.fingerprint,
        "preprocessing": "fast", "source": "image"}


def test_labels_template_top_k_and_stdin(image_dir, tiny_model_dir):
    refs = f"{image_dir / 'a.jpg'}\n\n{image_dir / 'b.png'}\n"
    result = zstagger("tag", "-", "--labels", "cat, dog,bird", "--template", "a picture of {}", "--top-k", "2",
                      "--model", str(tiny_model_dir), "--batch-size", "1", stdin=refs)
    assert result.returncode == 0, result.stderr  # not a TTY: jsonl by default
    records = lines(result.stdout)
    assert [r["image"] for r in records] == [str(image_dir / "a.jpg"), str(image_dir / "b.png")]
    for record in records:
        assert record["taxonomy"] == "labels" and record["verdict"] is None
        assert len(record["scores"]) == 2 and record["tags"] == [record["scores"][0]["label"]]
        assert {s["label"] for s in record["scores"]} <= {"cat", "dog", "bird"}


def test_failed_inputs_exit_1_and_still_print_every_line(image_dir, tiny_model_dir, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    result = zstagger("tag", str(image_dir / "a.jpg"), str(tmp_path / "broken.jpg"), str(tmp_path / "gone.png"),
                      "--labels", "a,b", "--model", str(tiny_model_dir))
    assert result.returncode == 1
    records = lines(result.stdout)
    assert [r["error"]["type"] if r["error"] else None for r in records] == [None, "invalid_image", "not_found"]
    assert "2 of 3 inputs could not be tagged" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["x.jpg", "-t", "no-such-taxonomy"], "unknown taxonomy 'no-such-taxonomy'"),
        (["x.jpg"], "exactly one of -t/--taxonomy"),
        (["x.jpg", "-t", "moderation", "--labels", "a"], "exactly one of"),
        (["x.jpg", "-t", "moderation", "--template", "{}"], "--template only applies to --labels"),
        (["x.jpg", "--labels", "a", "--batch-size", "0"], "0 is not in the range"),
        (["x.jpg", "--labels", "a", "--format", "xml"], "'xml' is not one of"),
        (["IMAGE", "--labels", "a", "--model", "/definitely/not/here"], "model directory /definitely/not/here does not exist"),
        (["IMAGE", "--labels", "a", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_usage_errors_exit_2_with_a_clear_message(args, message, image_dir):
    result = zstagger("tag", *[str(image_dir / "a.jpg") if arg == "IMAGE" else arg for arg in args])
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_uncached_hub_model_exits_2_with_instructions(tmp_path, image_dir):
    result = zstagger("tag", str(image_dir / "a.jpg"), "--labels", "a", "--model", "openai/clip-vit-base-patch32",
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "not in the local Hugging Face cache" in result.stderr and "--model /path/to/model" in result.stderr
    assert "(hf download openai/clip-vit-base-patch32)" in result.stderr  # huggingface-cli is gone from huggingface-hub
    assert "Traceback" not in result.stderr


def test_model_from_environment(image_dir, tiny_model_dir):
    result = zstagger("tag", str(image_dir / "a.jpg"), "--labels", "a,b", env={"ZSTAGGER_MODEL": str(tiny_model_dir)})
    assert result.returncode == 0, result.stderr


def test_table_format(image_dir, tiny_model_dir):
    result = zstagger("tag", str(image_dir / "a.jpg"), "-t", "ecommerce", "--format", "table", "--model", str(tiny_model_dir))
    assert result.returncode == 0
    assert str(image_dir / "a.jpg") in result.stdout and "tags=" in result.stdout


def test_progress_goes_to_stderr_only(image_dir, tiny_model_dir):
    result = zstagger("tag", str(image_dir), "--labels", "a,b", "--progress", "--model", str(tiny_model_dir))
    assert result.returncode == 0
    assert "tagging" in result.stderr and "3/3" in result.stderr
    assert len(lines(result.stdout)) == 3


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def run_batches(bar, clock, batches, *, seconds_before_each, batch=32):
    """Updates as `zstagger tag` makes them: one per image, a batch's images at once."""
    for _ in range(batches):
        clock.now += seconds_before_each
        for _ in range(batch):
            clock.now += 0.001
            bar.update(1)


def test_the_progress_estimate_leaves_out_the_warm_up(capsys):
    import re

    from zstagger.cli.progress import progress_bar

    def seconds_left():
        minutes, seconds = map(int, re.search(r"<(\d+):(\d+)", str(bar)).groups())
        return 60 * minutes + seconds

    clock = FakeClock()
    bar = progress_bar(3000, "tagging", show=True, clock=clock)
    run_batches(bar, clock, 1, seconds_before_each=20.0)  # the first batch comes after the model loaded
    assert "<?" in str(bar)  # no estimate from the warm-up alone
    run_batches(bar, clock, 1, seconds_before_each=1.0)
    # 2,936 images to go at 32 a second: about 92 s (from the start, 64 images in 21 s: 16 minutes)
    assert 85 <= seconds_left() <= 100, str(bar)
    run_batches(bar, clock, 10, seconds_before_each=1.0)
    assert 80 <= seconds_left() <= 95, str(bar)
    bar.close()
    assert "tagging" in capsys.readouterr().err


def test_the_steady_rate_counts_the_first_batch_as_warm_up():
    from zstagger.cli.progress import SteadyRate

    steady = SteadyRate(burst=0.1)
    assert steady.rate() is None
    steady.update(32, now=20.0)  # one update for the whole first batch (eval, retag)
    assert steady.rate() is None and steady.remaining(32, 1000) is None
    steady.update(64, now=22.0)
    assert steady.rate() == 16.0 and steady.remaining(64, 1000) == 58.5
    per_image = SteadyRate(burst=0.1)
    for i in range(1, 33):  # the first batch, one update per image, within a few milliseconds
        per_image.update(i, now=20.0 + i / 1000)
    assert per_image.rate() is None
    for i in range(33, 65):
        per_image.update(i, now=21.0 + i / 1000)
    assert per_image.rate() == pytest.approx(32 / (21.064 - 20.001))  # timed from the first update


def test_taxonomies_list_and_show():
    listing = zstagger("taxonomies")
    assert listing.returncode == 0
    header, *rows = listing.stdout.splitlines()
    assert header.split() == ["NAME", "MODE", "LABELS", "PLUGIN"]
    assert any(row.split()[:2] == ["moderation", "multi"] for row in rows)
    shown = zstagger("taxonomies", "show", "moderation", "--json")
    spec = json.loads(shown.stdout)
    assert spec["name"] == "moderation" and spec["mode"] == "multi" and len(spec["labels"]) >= 10
    missing = zstagger("taxonomies", "show", "nope")
    assert missing.returncode == 2 and "unknown taxonomy 'nope'" in missing.stderr


def test_plugins_lists_hooks():
    result = zstagger("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["zstagger.builtin.ecommerce"]["hooks"] == ["register_taxonomies"]


def test_python_api_matches_cli_output(image_dir, tiny_model_dir, tiny_tagger):
    cli = lines(zstagger("tag", str(image_dir), "-t", "medical", "--model", str(tiny_model_dir), "--precision", "fp32").stdout)
    api = [json.loads(r.model_dump_json()) for r in tiny_tagger.tag([str(image_dir)], taxonomy="medical")]
    assert [r["image"] for r in cli] == [r["image"] for r in api]
    for a, b in zip(cli, api):
        assert a["tags"] == b["tags"]
        assert [s["label"] for s in a["scores"]] == [s["label"] for s in b["scores"]]
        assert [s["score"] for s in a["scores"]] == pytest.approx([s["score"] for s in b["scores"]], abs=1e-5)


def test_public_api_reexports():
    import zstagger

    for name in ["Tagger", "Taxonomy", "Label", "TagResult", "hookimpl", "get_taxonomy", "ModelNotFoundError", "enqueue", "Job"]:
        assert getattr(zstagger, name) is not None
    tagged = sample_image(0)
    assert tagged.mode == "RGB"


def test_bench_runs_offline_on_a_local_checkpoint(tiny_model_dir, image_dir, tmp_path):
    # A directory called `zstagger` where the user stands must not shadow the package in
    # the measuring subprocesses (it once made `python -c "import zstagger"` find it instead).
    # --images relative to where the user stands: the `zstagger tag` measurement runs elsewhere.
    (tmp_path / "zstagger").mkdir()
    assert image_dir == tmp_path
    result = zstagger("bench", "--model", str(tiny_model_dir), "--images", ".", "--labels", "cat,dog",
                      "--repeats", "1", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("hf_pipeline_img_s", "bare_forward_bf16_weights_img_s", "bare_forward_bf16_autocast_img_s",
                "decode_preprocess_img_s", "end_to_end_img_s", "ratio_vs_hf_pipeline", "ratio_vs_bare_bf16",
                "startup_cold_s", "startup_warm_s", "default_vs_fp32_top1_agreement", "default_vs_fp32_max_score_diff"):
        assert isinstance(report[key], (int, float)) and report[key] >= 0, key
    assert report["images"] == 3 and report["labels"] == 2
    assert "bench:" in result.stderr  # progress on stderr, the report alone on stdout


def test_a_reader_that_stops_early_is_not_reported_as_failed_inputs(image_dir, tiny_model_dir):
    """`zstagger tag ... | head -1`: exit 141 (as if killed by SIGPIPE), not 1, and no traceback."""
    import subprocess as sp

    refs = "\n".join([str(image_dir / "a.jpg")] * 400)  # ~300 KB of JSON Lines: more than a pipe holds
    proc = sp.Popen(["zstagger", "tag", "-", "-t", "ecommerce", "--model", str(tiny_model_dir)],
                    stdin=sp.PIPE, stdout=sp.PIPE, stderr=sp.PIPE, text=True,
                    env=clean_environ())
    proc.stdin.write(refs)
    proc.stdin.close()
    assert json.loads(proc.stdout.readline())["image"] == str(image_dir / "a.jpg")
    proc.stdout.close()
    assert proc.wait(120) == 141
    assert "Traceback" not in proc.stderr.read()


def test_bench_shows_a_failing_measurement_s_own_error(tiny_model_dir, image_dir, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    result = zstagger("bench", "--model", str(broken), "--images", str(image_dir), "--labels", "cat,dog", "--repeats", "1")
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: start-up measurement failed (exit 1):") and "could not be loaded" in error, error
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    tagging = zstagger("tag", str(image_dir / "a.jpg"), "--labels", "a,b", "--model", str(broken))
    assert tagging.returncode == 2 and "Traceback" not in tagging.stderr
    assert f"Error: {broken} was found but could not be loaded" in tagging.stderr


def test_missing_inputs_exit_2_before_any_model_loads(tmp_path):
    # The model does not exist either: the inputs are checked first, so that is what is reported.
    result = zstagger("tag", str(tmp_path / "nope.jpg"), str(tmp_path / "gone.png"), "--labels", "a,b",
                      "--model", str(tmp_path / "no-model"))
    assert result.returncode == 2
    assert "no such file: " + str(tmp_path / "nope.jpg") + " (and 1 more); nothing to tag" in result.stderr
    assert "model" not in result.stderr.lower()


def test_some_missing_inputs_are_error_records_not_a_usage_error(image_dir, tiny_model_dir):
    result = zstagger("tag", str(image_dir / "a.jpg"), str(image_dir / "nope.jpg"), "--labels", "a,b",
                      "--model", str(tiny_model_dir))
    assert result.returncode == 1
    assert [r["error"]["type"] if r["error"] else None for r in lines(result.stdout)] == [None, "not_found"]


def test_model_loading_is_announced_on_a_terminal_only(image_dir, tiny_model_dir):
    import pty

    args = ("tag", str(image_dir / "a.jpg"), "--labels", "a,b", "--model", str(tiny_model_dir), "--format", "jsonl")
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(command(*args), stdout=subprocess.PIPE, stderr=follower, env=clean_environ(), timeout=300)
        os.close(follower)
        follower = None
        seen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if follower is not None:
            os.close(follower)
        os.close(leader)
    assert proc.returncode == 0
    assert f"loading model {tiny_model_dir} ...".encode() in seen
    piped = zstagger(*args)
    assert piped.returncode == 0 and "loading model" not in piped.stderr


def test_ctrl_c_exits_130_not_1(tiny_model_dir):
    """Exit 1 means "some inputs failed"; an interrupted run must not claim that."""
    import signal
    import time

    from harness import SlowImageServer

    server = SlowImageServer()
    try:
        refs = "\n".join(f"{server.url}/slow/0.3/i{i}.png" for i in range(400))
        proc = subprocess.Popen(command("tag", "-", "--labels", "a,b", "--model", str(tiny_model_dir), "--format", "jsonl"),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=clean_environ({"ZSTAGGER_ALLOW_PRIVATE_URLS": "1"}), preexec_fn=ctrl_c_reaches)
        proc.stdin.write(refs)
        proc.stdin.close()
        assert proc.stdout.readline()  # tagging is under way (the first image came back)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130  # pending loads are dropped, not fetched first
        stderr = proc.stderr.read()
        assert "interrupted" in stderr and "Traceback" not in stderr
    finally:
        if proc.poll() is None:
            proc.kill()
        server.close()
