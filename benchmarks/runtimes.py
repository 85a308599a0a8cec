"""Built runtimes against the torch path, in one run: throughput, forward share, start-up, qualification.

    python benchmarks/runtimes.py --model CKPT --images JPEGS --calibration CALIB [--runtime DIR] [--json]

With no --runtime, an int8 OpenVINO runtime is built from --model on --calibration first
(its build time is reported). Measured, one process, same images, best of --repeats:

- ``torch_fp32`` and ``torch_auto`` (bf16 on CPUs with native bf16) end to end (``Tagger.tag``);
- ``openvino_int8`` end to end, and its bare forward (the lanes' encoders on ready pixels);
- the lane plan of the runtime: 1 stream x all threads vs one stream per core (bare forward);
- one-image start-up, ``zstagger tag one.jpg -t TAX --model X``, warm text cache, median of 3, alternating;
- qualification of the runtime on --qualify-images images, with a cold and a warm image cache;
- optionally (--hf-labels N) the HF pipeline at N ad-hoc labels against the runtime end to end.

Random-weight checkpoints lack real CLIP's activation outliers: the agreement this prints says
nothing about a real model's; `zstagger runtime qualify` on your own images does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zstagger.bench import best_rate
from zstagger.images import expand_inputs
from zstagger.registry import resolve_taxonomy
from zstagger.settings import Settings
from zstagger.tagger import Tagger


def log(message: str) -> None:
    print(f"runtimes: {message}...", file=sys.stderr, flush=True)


def end_to_end(model: str, images: list[str], spec, repeats: int, settings: Settings, **kwargs) -> tuple[float, Tagger]:
    tagger = Tagger(model, settings=settings, image_cache=False, **kwargs)
    tagger.tag(images[: 2 * tagger.lanes * tagger.batch_size], spec)  # warm: taxonomy compiled, pools started
    return best_rate(lambda: len(tagger.tag(images, spec)), repeats), tagger


def bare_forward(encoder, lanes: int, batch: int, repeats: int) -> float:
    height, width = encoder.preprocessor.output_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(encoder.encode_images, [pixels] * lanes))
        return best_rate(lambda: len(list(pool.map(encoder.encode_images, [pixels] * (2 * lanes)))) * batch, repeats)


def startup(models: dict[str, str], image: str, taxonomy: str, cache: str, runs: int = 3) -> dict[str, float]:
    exe = shutil.which("zstagger")
    cmd = [exe] if exe else [sys.executable, "-m", "zstagger.cli"]
    env = {**os.environ, "ZSTAGGER_CACHE_DIR": cache, "ZSTAGGER_ALLOW_UNQUALIFIED_RUNTIME": "1"}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(runs + 1):  # the first round fills the text cache and OpenVINO's compiled-model cache
        for name, model in models.items():
            start = time.perf_counter()
            proc = subprocess.run([*cmd, "tag", image, "-t", taxonomy, "--model", model, "--format", "jsonl"],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"zstagger tag --model {model} failed: {proc.stderr.strip().splitlines()[-1:]}")
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def qualification(runtime: str, images: list[str], taxonomy: str, workdir: Path) -> dict:
    from zstagger.evaluation.qualify import qualify

    folder = workdir / "qualify-images"
    folder.mkdir()
    for path in images:
        os.symlink(os.path.abspath(path), folder / os.path.basename(path))
    settings = Settings(cache_dir=str(workdir / "qualify-cache"))
    out = {}
    for run in ("cold", "warm"):
        start = time.perf_counter()
        record = qualify(runtime, taxonomy, images=folder, settings=settings, write=False)
        out[f"qualify_{run}_s"] = time.perf_counter() - start
    out.update(qualify_images=record.images, qualify_passed=record.passed, qualify_verdict_agreement=record.verdict_agreement,
               qualify_min_tag_agreement=record.min_tag_agreement, qualify_max_abs_score_delta=record.max_abs_score_delta)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="The checkpoint (torch path, and the runtime's source).")
    parser.add_argument("--images", required=True, help="JPEGs to tag.")
    parser.add_argument("--runtime", help="A built int8 runtime directory (default: build one from --calibration).")
    parser.add_argument("--calibration", help="Calibration images for the build.")
    parser.add_argument("-t", "--taxonomy", default="moderation")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--qualify-images", type=int, default=128, help="Images to qualify on (0: skip).")
    parser.add_argument("--hf-labels", type=int, default=0, help="Also the HF pipeline at this many ad-hoc labels (0: skip).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    images = [str(p) for p in expand_inputs([args.images])]
    spec = resolve_taxonomy(args.taxonomy)
    workdir = Path(tempfile.mkdtemp(prefix="zstagger-runtimes-bench-"))
    report: dict = {"model": args.model, "images": len(images), "taxonomy": spec.name, "batch_size": args.batch_size,
                    "cpus": os.cpu_count()}
    try:
        runtime = args.runtime
        if runtime is None:
            if not args.calibration:
                raise SystemExit("give --runtime DIR or --calibration IMAGES to build one")
            from zstagger.runtimes.build import build_runtime

            log("building the int8 runtime")
            start = time.perf_counter()
            calibration = [str(p) for p in expand_inputs([args.calibration])]
            build_runtime(args.model, workdir / "int8", "int8", calibration, log=lambda m: None)
            report["build_s"], report["calibration_images"] = time.perf_counter() - start, len(calibration)
            runtime = str(workdir / "int8")
        settings = Settings(cache_dir=str(workdir / "cache"), allow_unqualified_runtime=True)

        log("torch fp32 end to end")
        report["torch_fp32_img_s"], tagger = end_to_end(args.model, images, spec, args.repeats, settings,
                                                        precision="fp32", batch_size=args.batch_size)
        tagger.close()
        log("torch auto precision end to end")
        report["torch_auto_img_s"], tagger = end_to_end(args.model, images, spec, args.repeats, settings, batch_size=args.batch_size)
        report["torch_auto_precision"] = str(tagger.encoder.dtype).removeprefix("torch.")
        tagger.close()

        log("OpenVINO int8 end to end and bare forward")
        report["openvino_int8_img_s"], tagger = end_to_end(runtime, images, spec, args.repeats, settings, batch_size=args.batch_size)
        report["openvino_lanes"] = tagger.lanes
        report["openvino_int8_bare_forward_img_s"] = bare_forward(tagger.encoder, tagger.lanes, args.batch_size, args.repeats)
        if args.hf_labels:
            labels = [f"object number {i}" for i in range(args.hf_labels)]
            adhoc = resolve_taxonomy(None, labels)
            tagger.tag(images[:64], adhoc)
            report[f"openvino_int8_labels{args.hf_labels}_img_s"] = best_rate(lambda: len(tagger.tag(images, adhoc)), args.repeats)
        tagger.close()

        log("OpenVINO lane plans (bare forward)")
        from zstagger.runtimes.openvino import OpenVinoEncoder, cpu_cores

        for streams in sorted({1, cpu_cores()}):
            encoder = OpenVinoEncoder.load(runtime, lanes=streams)
            report[f"openvino_int8_bare_forward_{streams}_streams_img_s"] = bare_forward(encoder, streams, args.batch_size,
                                                                                        args.repeats)
            del encoder

        if args.hf_labels:
            from zstagger.bench import _hf_pipeline

            log(f"HF pipeline at {args.hf_labels} labels")
            report[f"hf_pipeline_labels{args.hf_labels}_img_s"] = _hf_pipeline(args.model, adhoc, images[:8], 1)

        log("one-image start-up")
        started = startup({"torch": args.model, "openvino_int8": runtime}, images[0], spec.name, str(workdir / "startup-cache"))
        report["startup_torch_s"], report["startup_openvino_int8_s"] = started["torch"], started["openvino_int8"]

        if args.qualify_images:
            log(f"qualification on {args.qualify_images} images")
            report.update(qualification(runtime, images[: args.qualify_images], spec.name, workdir))

        report["ratio_int8_vs_torch_fp32"] = report["openvino_int8_img_s"] / report["torch_fp32_img_s"]
        report["ratio_int8_vs_torch_auto"] = report["openvino_int8_img_s"] / report["torch_auto_img_s"]
        report["ratio_int8_end_to_end_vs_bare_forward"] = report["openvino_int8_img_s"] / report["openvino_int8_bare_forward_img_s"]
        report["ratio_startup_torch_vs_openvino"] = report["startup_torch_s"] / report["startup_openvino_int8_s"]
        if args.hf_labels:
            report[f"ratio_int8_vs_hf_pipeline_labels{args.hf_labels}"] = (
                report[f"openvino_int8_labels{args.hf_labels}_img_s"] / report[f"hf_pipeline_labels{args.hf_labels}_img_s"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {k: round(v, 4) if isinstance(v, float) else v for k, v in report.items()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:48} {value}")


if __name__ == "__main__":
    main()
