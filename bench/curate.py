"""Curation throughput: seconds of source video processed per second per CPU core, against ffmpeg.

    .venv/bin/python bench/curate.py [--input DIR] [--hd 2] [--cpus 1] [--out bench/out/curate]

Without ``--input`` it writes the built-in samples (``vidworld samples``) plus ``--hd`` synthetic
640x360 30 fps videos of 10 s each (closer to real footage than the 128x96 samples).

Three figures for vidworld (the job with ``jobs/curate.yaml``, on a local Ray cluster of
``--cpus`` CPUs):

- ``end to end``: the whole job, Ray start excluded (it is a fixed few seconds), per core;
- ``in workers``: the time its Ray tasks spent (probe, decode, split, filter, encode), per core;

and for ``ffmpeg``: one ``ffmpeg -threads 1`` process per input doing the same decode, fps
resample, resize and H.264 encode (one keyframe every clip), run one after another: its
throughput is per core by construction. The ratio vidworld/ffmpeg is the figure to watch
(goal: 0.8x or better). Never run in CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.curate import CurateConfig, run  # noqa: E402
from pipeline.inputs import list_inputs  # noqa: E402
from pipeline.probe import BadInput, probe  # noqa: E402
from pipeline.samples import SamplesConfig, synthetic_scene, write_samples, write_video  # noqa: E402
from runtime.cluster import init_ray  # noqa: E402
from runtime.config import load_config  # noqa: E402


def make_inputs(folder: Path, hd: int) -> None:
    write_samples(folder, SamplesConfig())
    for i in range(hd):
        frames = synthetic_scene(np.random.default_rng(100 + i), 300, 360, 640, pan=3.0, objects=5)
        write_video(folder / "hd" / f"hd-{i:02d}.mp4", frames, 30, crf=20)


def ffmpeg_seconds(sources: list[str], cfg: CurateConfig, tmp: Path) -> float:
    """Wall seconds of one single-threaded ffmpeg per input doing decode -> fps -> resize -> x264."""
    if cfg.resize == "squash":
        scale = f"scale={cfg.size}:{cfg.size}:flags=area"
    else:
        scale = (
            f"scale='if(gt(iw,ih),-2,{cfg.size})':'if(gt(iw,ih),{cfg.size},-2)':flags=area,"
            f"crop={cfg.size}:{cfg.size}"
        )
    total = 0.0
    for i, src in enumerate(sources):
        cmd = [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-threads",
            "1",
            "-i",
            src,
            "-an",
            "-vf",
            f"fps={cfg.fps:g},{scale}",
            "-filter_threads",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            cfg.preset,
            "-crf",
            str(cfg.crf),
            "-threads",
            "1",
            "-x264-params",
            f"keyint={cfg.clip_frames}:min-keyint={cfg.clip_frames}:bframes=0",
            "-pix_fmt",
            "yuv420p",
            str(tmp / f"{i}.mp4"),
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        total += time.perf_counter() - t0
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", help="folder of videos (default: generate samples)")
    ap.add_argument("--hd", type=int, default=2, help="640x360 30 fps 10 s synthetic videos to add")
    ap.add_argument("--cpus", type=int, default=1, help="CPUs of the local Ray cluster")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "curate"))
    ap.add_argument("--config", default=str(ROOT / "jobs" / "curate.yaml"))
    args = ap.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    inputs = Path(args.input) if args.input else out / "inputs"
    if not args.input:
        make_inputs(inputs, args.hd)
    cfg = load_config(
        CurateConfig,
        args.config,
        [f"input={inputs}", f"output={out / 'curated'}", f"num_cpus={args.cpus}", "progress_interval=30"],
    )
    sources, seconds, pixels = [], 0.0, 0.0
    for item in list_inputs(str(inputs)):
        try:
            info = probe(item.source)
        except BadInput:
            continue
        sources.append(item.source)
        seconds += info.duration
        pixels += info.width * info.height * info.duration * info.fps

    t0 = time.perf_counter()
    init_ray(args.cpus)
    ray_start = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = run(cfg)
    job = time.perf_counter() - t0
    worker = sum(stats["worker_seconds"].values())
    (out / "ffmpeg").mkdir(parents=True, exist_ok=True)
    ff = ffmpeg_seconds(sources, cfg, out / "ffmpeg")

    ours_e2e = seconds / (job * args.cpus)
    ours_worker = seconds / worker
    theirs = seconds / ff
    result = {
        "inputs": len(sources),
        "source_seconds": round(seconds, 2),
        "source_megapixels": round(pixels / 1e6, 1),
        "clips": stats["clips"],
        "cpus": args.cpus,
        "ray_start_s": round(ray_start, 2),
        "job_s": round(job, 2),
        "worker_s": round(worker, 2),
        "worker_s_by_step": stats["worker_seconds"],
        # Job time not spent in workers (Ray Data start, worker start and imports, listing, packing):
        # fixed per run, so it fades on real datasets (hours of video), unlike the per-second cost.
        "fixed_overhead_s": round(job - worker / args.cpus, 2),
        "ffmpeg_s": round(ff, 2),
        "vidworld_end_to_end_video_s_per_s_per_core": round(ours_e2e, 1),
        "vidworld_in_workers_video_s_per_s_per_core": round(ours_worker, 1),
        "ffmpeg_video_s_per_s_per_core": round(theirs, 1),
        "ratio_end_to_end": round(ours_e2e / theirs, 2),
        "ratio_in_workers": round(ours_worker / theirs, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
