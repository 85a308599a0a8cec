"""``zstagger bench``: how fast is tagging here, and what bounds it.

Measures, in one process and one run (so the ratios compare like with like):

- ``hf_pipeline``: transformers' zero-shot-image-classification pipeline, one image per
  call, with one candidate label per taxonomy label (what users of the pipeline do);
- ``bare_forward_*``: the vision tower alone on random tensors at batch 32 (fp32, bf16
  autocast, bf16 weights) with all of torch's threads, as in a plain script;
- ``engine_forward_lanes``: the same forward the way zstagger runs it (its lanes);
- ``decode_preprocess``: reading + decoding + resizing the images only, in the loader threads;
- ``end_to_end``: ``Tagger.tag`` (decode, preprocess, encode, score), text embeddings warm;
- ``cli``: ``zstagger tag`` as a subprocess, start-up included, with its peak memory;
- start-up with a cold and a warm text-embedding cache;
- the default precision against fp32 on the same images (top-1 agreement, max score gap).

Timed sections are repeated and the best pass is kept: on shared machines the slowest
pass measures the neighbours, not the code.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .errors import ZstaggerError
from .images import expand_inputs
from .registry import resolve_taxonomy
from .settings import Settings
from .tagger import Tagger


class BenchError(ZstaggerError):
    """A measurement could not be taken (its subprocess failed); says why in one line."""

    type = "bench_failed"


def best_rate(run: Callable[[], int], repeats: int) -> float:
    """Items per second of the fastest of ``repeats`` passes (``run`` returns its item count)."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        count = run()
        best = max(best, count / (time.perf_counter() - start))
    return best


def run_bench(
    model: str,
    images_dir: str | None,
    taxonomy: str | None,
    labels: Sequence[str] | None,
    batch_size: int = 32,
    repeats: int = 3,
    hf_images: int = 12,
    log: Callable[[str], None] = lambda msg: None,
) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    spec = resolve_taxonomy(taxonomy, labels)
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-bench-"))
    try:
        images = _images(images_dir, workdir)
        cores = torch.get_num_threads()
        report: dict = {"model": model, "taxonomy": spec.name, "labels": len(spec.labels), "images": len(images),
                        "batch_size": batch_size, "torch_threads": cores, "machine": _machine()}

        # -- start-up: cold and warm text-embedding cache (in fresh processes) --------
        log("start-up with a cold and a warm embedding cache")
        cache = workdir / "cache"
        report["startup_cold_s"] = _startup(model, spec, cache)
        report["startup_warm_s"] = _startup(model, spec, cache)

        # -- baselines with torch's default threading ---------------------------------
        log("HF pipeline baseline")
        report["hf_pipeline_img_s"] = _hf_pipeline(model, spec, images[:hf_images], min(2, repeats))
        log("bare vision forward")
        report.update(_bare_forward(model, batch_size, repeats))

        # -- zstagger ------------------------------------------------------------------
        log("zstagger end to end")
        settings_warm = Settings(cache_dir=str(cache))
        tagger = Tagger(model, batch_size=batch_size, settings=settings_warm)
        report["lanes"] = tagger.lanes
        report["precision"] = str(tagger.encoder.dtype).removeprefix("torch.")
        x = torch.randn(batch_size, 3, *tagger.encoder.preprocessor.output_size) if tagger.encoder.preprocessor else None
        if x is not None:
            report["engine_forward_lanes_img_s"] = _lanes_forward(tagger, x, repeats)
        report["decode_preprocess_img_s"] = _decode_only(tagger, images, repeats)
        tagger.tag(images[: tagger.lanes * batch_size], spec)  # warm-up: classifier built, pools started
        report["end_to_end_img_s"] = best_rate(lambda: len(tagger.tag(images, spec)), repeats)
        default_results = tagger.tag(images, spec)
        tagger.close()

        log("zstagger tag (CLI) with peak memory")
        report.update(_cli(model, spec, images, cache, batch_size))

        log("default precision against fp32")
        report.update(_precision_check(model, spec, images, default_results, settings_warm, batch_size))

        bare = max(report["bare_forward_bf16_autocast_img_s"], report["bare_forward_bf16_weights_img_s"])
        report["ratio_vs_hf_pipeline"] = report["end_to_end_img_s"] / report["hf_pipeline_img_s"]
        report["ratio_vs_bare_bf16"] = report["end_to_end_img_s"] / bare
        if "engine_forward_lanes_img_s" in report:
            report["ratio_vs_engine_forward"] = report["end_to_end_img_s"] / report["engine_forward_lanes_img_s"]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _images(images_dir: str | None, workdir: Path) -> list[str]:
    if images_dir:
        # Absolute: the `zstagger tag` measurement runs in a directory of its own.
        images = [os.path.abspath(p) for p in expand_inputs([images_dir])]
        if not images:
            raise BenchError(f"no images in {images_dir}")
        return images
    from .synthetic import sample_image

    out = workdir / "images"
    out.mkdir()
    paths = []
    for i in range(64):  # photo-sized JPEGs, as a camera or a shop upload would produce
        path = out / f"{i:03d}.jpg"
        sample_image(i, (1280, 960)).save(path, quality=90)
        paths.append(str(path))
    return paths


def _machine() -> str:
    import platform

    model_name = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model_name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    from .engine.model import cpu_has_native_bf16

    return f"{platform.machine()} {model_name} x{os.cpu_count()}, native bf16: {cpu_has_native_bf16()}, torch {torch.__version__}"


def _startup(model: str, spec, cache: Path) -> float:
    """Seconds for a fresh process to load the model and compile the taxonomy."""
    code = (
        "import time,json,sys; t=time.perf_counter()\n"
        "from zstagger import Tagger, Taxonomy\n"
        "tg=Tagger(sys.argv[1]); tg.classifier(Taxonomy.parse(json.loads(sys.argv[2])))\n"
        "print(time.perf_counter()-t)"
    )
    env = {**os.environ, "ZSTAGGER_CACHE_DIR": str(cache)}
    out = run_child([sys.executable, "-c", code, model, spec.model_dump_json()], env=env, cwd=cache.parent,
                    what="start-up measurement")
    return float(out.stdout.strip().splitlines()[-1])


def run_child(cmd: list[str], *, what: str, ok: tuple[int, ...] = (0,), **kwargs) -> subprocess.CompletedProcess:
    """Run a measuring subprocess; if it fails, raise its own last error line, not ours.

    Children run in the bench's scratch directory: a directory named ``zstagger`` in the
    caller's working directory would otherwise shadow the package for ``python -c``.
    """
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if proc.returncode not in ok:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise BenchError(f"{what} failed (exit {proc.returncode}): {lines[-1] if lines else 'no error output'}")
    return proc


def _hf_pipeline(model: str, spec, images: list[str], repeats: int) -> float:
    from PIL import Image
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    pipe = pipeline(model=model, task="zero-shot-image-classification", device="cpu")
    candidates = [label.prompt_text for label in spec.labels]
    pipe(Image.open(images[0]), candidate_labels=candidates)

    def run() -> int:
        for path in images:
            pipe(Image.open(path), candidate_labels=candidates)
        return len(images)

    return best_rate(run, repeats)


def _bare_forward(model: str, batch_size: int, repeats: int) -> dict:
    from transformers import AutoModelForZeroShotImageClassification

    hf = AutoModelForZeroShotImageClassification.from_pretrained(model).eval()
    size = hf.config.vision_config.image_size
    x = torch.randn(batch_size, 3, size, size)

    def rate(fn) -> float:
        with torch.inference_mode():
            fn()
            return best_rate(lambda: (fn(), batch_size)[1], repeats * 2)

    out = {"bare_forward_fp32_img_s": rate(lambda: hf.get_image_features(pixel_values=x))}

    def autocast():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return hf.get_image_features(pixel_values=x)

    out["bare_forward_bf16_autocast_img_s"] = rate(autocast)
    hf.to(torch.bfloat16)
    xb = x.bfloat16()
    out["bare_forward_bf16_weights_img_s"] = rate(lambda: hf.get_image_features(pixel_values=xb))
    return out


def _lanes_forward(tagger: Tagger, x: torch.Tensor, repeats: int) -> float:
    pixels = (x.clamp(-2, 2) * 60 + 128).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # uint8 NHWC, as loaders produce
    with ThreadPoolExecutor(tagger.lanes) as pool:
        list(pool.map(tagger.encoder.encode_images, [pixels] * tagger.lanes))
        return best_rate(lambda: len(list(pool.map(tagger.encoder.encode_images, [pixels] * (2 * tagger.lanes)))) * len(x), repeats)


def _decode_only(tagger: Tagger, images: list[str], repeats: int) -> float:
    return best_rate(lambda: len(tagger.preprocess(images)), repeats)


def _cli(model: str, spec, images: list[str], cache: Path, batch_size: int) -> dict:
    exe = shutil.which("zstagger")
    cmd = [exe] if exe else [sys.executable, "-m", "zstagger.cli"]
    args = ["tag", "-", "--model", model, "--format", "jsonl", "--no-progress", "--batch-size", str(batch_size)]
    args += ["--labels", ",".join(label.name for label in spec.labels)] if spec.name == "labels" else ["-t", spec.name]
    env = {**os.environ, "ZSTAGGER_CACHE_DIR": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    run_child([*cmd, *args], input="\n".join(images), env=env, cwd=cache.parent, ok=(0, 1), what="zstagger tag")
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "cli_img_s_including_startup": len(images) / seconds,
        # ru_maxrss is the largest child so far; report it only if this run set it.
        "cli_peak_rss_mib": peak / 1024 if peak > before else None,
    }


def _precision_check(model, spec, images, default_results, settings, batch_size) -> dict:
    """Default results against fp32 with the same (fast) preprocessing, and against the
    exact reference (fp32, the checkpoint's own preprocessing: the HF pipeline's numbers)."""
    out = {}
    for name, exact in (("fp32", False), ("exact_fp32", True)):
        reference = Tagger(model, precision="fp32", batch_size=batch_size, exact_preprocessing=exact, settings=settings)
        out.update(_agreement(f"default_vs_{name}", default_results, reference.tag(images, spec)))
        reference.close()
    return out


def _agreement(prefix: str, ours, reference) -> dict:
    agree, gap, compared = 0, 0.0, 0
    for a, b in zip(ours, reference):
        if a.error or b.error:
            continue
        compared += 1
        agree += a.scores[0].label == b.scores[0].label
        scores_b = {s.label: s.score for s in b.scores}
        gap = max(gap, max(abs(s.score - scores_b[s.label]) for s in a.scores))
    return {f"{prefix}_top1_agreement": agree / max(1, compared), f"{prefix}_max_score_diff": gap}


ROWS = [
    ("hf_pipeline_img_s", "HF pipeline, 1 image/call"),
    ("bare_forward_fp32_img_s", "bare vision forward, fp32"),
    ("bare_forward_bf16_autocast_img_s", "bare vision forward, bf16 autocast"),
    ("bare_forward_bf16_weights_img_s", "bare vision forward, bf16 weights"),
    ("engine_forward_lanes_img_s", "zstagger forward (lanes), default precision"),
    ("decode_preprocess_img_s", "decode + preprocess only"),
    ("end_to_end_img_s", "zstagger end to end (Tagger.tag)"),
    ("cli_img_s_including_startup", "zstagger tag CLI, incl. start-up"),
]


def format_table(report: dict) -> str:
    lines = [f"model {report['model']} | taxonomy {report['taxonomy']} ({report['labels']} labels) | "
             f"{report['images']} images | batch {report['batch_size']} | {report['machine']}",
             f"precision {report.get('precision')} | lanes {report.get('lanes')} | torch threads {report['torch_threads']}", ""]
    lines.append(f"{'measurement':48} {'img/s':>9}")
    for key, title in ROWS:
        if report.get(key) is not None:
            lines.append(f"{title:48} {report[key]:9.2f}")
    lines += [
        "",
        f"end to end / HF pipeline              {report['ratio_vs_hf_pipeline']:8.1f}x",
        f"end to end / fastest bare bf16 forward {report['ratio_vs_bare_bf16']:8.1%}",
    ]
    if "ratio_vs_engine_forward" in report:
        lines.append(f"end to end / zstagger forward         {report['ratio_vs_engine_forward']:8.1%}")
    lines += [
        f"start-up, cold embedding cache         {report['startup_cold_s']:8.2f} s",
        f"start-up, warm embedding cache         {report['startup_warm_s']:8.2f} s",
        f"default precision vs fp32: top-1 agreement {report['default_vs_fp32_top1_agreement']:.1%}, "
        f"max score difference {report['default_vs_fp32_max_score_diff']:.4f}",
        f"defaults vs exact fp32 reference: top-1 agreement {report['default_vs_exact_fp32_top1_agreement']:.1%}, "
        f"max score difference {report['default_vs_exact_fp32_max_score_diff']:.4f}",
    ]
    if report.get("cli_peak_rss_mib"):
        lines.append(f"zstagger tag peak memory (RSS)         {report['cli_peak_rss_mib']:8.0f} MiB")
    return "\n".join(lines)


def dump(report: dict) -> str:
    return json.dumps(report, indent=2)


