"""A capacity plan on paper: wall time and core- or GPU-hours of curate, tokenize and dynamics training.

    .venv/bin/python bench/capacity.py                      # 1M hours of 720p, jobs/pretrain.yaml's shapes
    .venv/bin/python bench/capacity.py --hours 5000 --cpu-nodes 4 --gpus 16 --mfu 0.45
    .venv/bin/python bench/capacity.py --dynamics 100m 1b   # a row per dynamics preset

Three stages, as the chain runs them (docs/capacity.md has the formulas and what each assumes):

- **curate** (CPU): the measured per-core rate of ``bench/curate.py``, moved to your source and
  output sizes by pixels: decoding and cut detection scale with the source's pixels, the H.264
  encode with the clips' pixels;
- **tokenize** (GPU, with one CPU core per encoder actor): each actor decodes a shard's clips at
  the measured PyAV rate, then encodes them; the encoder's FLOPs per clip are counted from the
  code (``flops_per_video(..., decoder=False)`` on the meta device) and run at an assumed MFU;
- **dynamics**, one epoch (GPU): every clip once, ``flops_per_sample`` (forward + backward, as the
  runtime's MFU counts it) of the preset at an assumed MFU.

Every model is built on the meta device, so a large preset costs nothing. The measured rates are
the named constants below, each with its BENCHMARKS.md section; everything else is an assumption
the table says it is. Replace them with your own: ``--curate-rate`` (``bench/curate.py --input
YOUR_VIDEOS``), ``--decode-rate`` (``bench/loader.py``), ``--mfu`` (``bash bench/gpu.sh``).
Prints a markdown table; never gates CI.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

if __package__ in (None, ""):
    # Run as a script, bench/ is first on sys.path and bench/tokenizer.py, bench/dynamics.py would
    # shadow the packages of the same names.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from dynamics import DynamicsConfig, build_dynamics  # noqa: E402
from tokenizer.config import TokenizerConfig  # noqa: E402
from tokenizer.model import CausalVideoTokenizer  # noqa: E402

# ---- Measured (BENCHMARKS.md). Change these only with a new measurement and its section. ----------
# "CPU figures, 2026-11-25" > "Curation (`bench/curate.py --hd 16`)": 261.5 s of source video (26
# videos), 94.1 video-s per second per core inside the Ray workers (ffmpeg alone: 89.2), of which
# the H.264 encode took 0.47 s. Measured with other jobs on the 2 cores, so low if anything.
CURATE_BENCH_VIDEO_S = 261.5
CURATE_BENCH_RATE = 94.1
CURATE_BENCH_ENCODE_S = 0.47
# Pixels of that run, from its input recipe (bench/curate.py printed them; BENCHMARKS.md did not
# keep them): 16 x 10 s of 640x360 at 30 fps (1105.9 Mpx), 6 synthetic scenes of 128x96 (615
# frames, 7.6 Mpx), the remaining 68.5 s of Breakout at 210x160, 15 fps (34.5 Mpx); out: 64x64
# clips at 15 fps (jobs/curate.yaml of that day), counted as if every source second became clips.
CURATE_BENCH_SOURCE_PX = 1148.0e6
CURATE_BENCH_OUTPUT_PX = CURATE_BENCH_VIDEO_S * 15 * 64 * 64
# "CPU figures, 2026-11-25" > "Loader (`bench/loader.py`)": plain PyAV decode
# (runtime.video.decode_mp4, which `vidworld tokenize` calls) of 17-frame 256x256 clips at crf 23 on
# one pinned core, 2,600-4,500 frames/s; the low end is taken.
DECODE_BENCH_FPS = 2600.0
DECODE_BENCH_PX = 256 * 256

# ---- Assumed. No GPU measurement exists yet (BENCHMARKS.md: "GPU: not measured yet"). ------------
ASSUMED_MFU = 0.40  # H100 goal for the ~100M dynamics model is 45% (BENCHMARKS.md)
H100_BF16_DENSE_TFLOPS = 989.0  # H100 SXM datasheet, dense; dynamics trains in bf16 (jobs/pretrain.yaml)
# `vidworld tokenize` encodes in fp32, which PyTorch lets cuDNN run as TF32 (datasheet: 989 with
# sparsity, half of it dense).
H100_TF32_DENSE_TFLOPS = 494.7

SOURCE_SIZES = {"360p": (640, 360), "480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


class CapacityError(ValueError):
    """An argument the plan cannot use; the message names it."""


@dataclass
class Job:
    """A user's job. Defaults: 1M hours of 720p at 30 fps through ``jobs/pretrain.yaml``'s shapes."""

    hours: float = 1.0e6  # of source video
    source: str = "720p"  # WIDTHxHEIGHT or one of SOURCE_SIZES
    source_fps: float = 30.0
    fps: float = 24.0  # curated clips: curate.fps
    size: int = 256  # curate.size (square clips)
    clip_frames: int = 33  # curate.clip_frames
    keep: float = 1.0  # share of the source that survives curation's filters into clips (assumed)
    cpu_nodes: int = 64
    cores_per_node: int = 64
    gpus: int = 256
    tokenizer: str = "cv4x8x8"
    actors_per_gpu: int = 1  # tokenize.concurrency / GPUs (jobs/pretrain.yaml: 1)
    dynamics: tuple[str, ...] = ("100m",)
    latent_frames: int | None = None  # dynamics window; None: all of a clip's latent frames
    epochs: float = 1.0
    mfu: float | None = None  # dynamics; None: ASSUMED_MFU
    peak_tflops: float | None = None  # None: H100 bf16 dense
    tokenizer_mfu: float | None = None  # None: ASSUMED_MFU
    tokenizer_peak_tflops: float | None = None  # None: H100 TF32 dense
    curate_rate: float | None = None  # video-s per core-s on your footage; None: scaled from the bench
    decode_rate: float | None = None  # frames/s per core at `size`; None: scaled from the bench


@dataclass
class Row:
    stage: str
    work: str
    rate: str
    source: str  # where the rate comes from: measured, assumed or given
    wall_s: float
    core_hours: float = 0.0
    gpu_hours: float = 0.0


@dataclass
class Plan:
    rows: list[Row]
    notes: list[str]  # derived quantities, printed above the table


def source_pixels(source: str) -> tuple[int, int]:
    """``"720p"`` or ``"1280x720"`` -> (width, height)."""
    if source in SOURCE_SIZES:
        return SOURCE_SIZES[source]
    m = re.fullmatch(r"(\d+)x(\d+)", source)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise CapacityError(
            f"--source {source!r}: give WIDTHxHEIGHT (1280x720) or one of {sorted(SOURCE_SIZES)}"
        )
    return int(m[1]), int(m[2])


def curate_core_seconds(source_px_per_s: float, output_px_per_s: float) -> float:
    """Core-seconds to curate one second of video: the benchmark's worker time split into a part
    that scales with the source's pixels (probe, decode, cut detection) and the encode, which scales
    with the clips' pixels."""
    worker_s = CURATE_BENCH_VIDEO_S / CURATE_BENCH_RATE
    per_source_px = (worker_s - CURATE_BENCH_ENCODE_S) / CURATE_BENCH_SOURCE_PX
    per_output_px = CURATE_BENCH_ENCODE_S / CURATE_BENCH_OUTPUT_PX
    return source_px_per_s * per_source_px + output_px_per_s * per_output_px


def check(job: Job) -> None:
    positive = ("hours", "keep", "source_fps", "fps", "size", "clip_frames", "cpu_nodes", "cores_per_node",
                "gpus", "actors_per_gpu", "epochs", "mfu", "peak_tflops", "tokenizer_mfu",
                "tokenizer_peak_tflops", "curate_rate", "decode_rate", "latent_frames")  # fmt: skip
    for name in positive:
        v = getattr(job, name)
        if v is not None and not v > 0:
            raise CapacityError(f"--{name.replace('_', '-')} must be > 0, got {v}")
    for name in ("keep", "mfu", "tokenizer_mfu"):
        v = getattr(job, name)
        if v is not None and v > 1:
            raise CapacityError(f"--{name.replace('_', '-')} is a fraction in (0, 1], got {v}")
    if not job.dynamics:
        raise CapacityError("--dynamics: name at least one preset")


def tokenizer_model(job: Job) -> CausalVideoTokenizer:
    try:
        cfg = TokenizerConfig.preset(job.tokenizer)
    except ValueError as e:
        raise CapacityError(f"--tokenizer: {e}") from None
    with torch.device("meta"):
        return CausalVideoTokenizer(cfg)


def dynamics_config(job: Job, name: str, tok: CausalVideoTokenizer, latent_frames: int) -> DynamicsConfig:
    """The preset's transformer over the latents the tokenizer makes of ``size`` x ``size`` clips."""
    side = job.size // tok.spatial_compression
    geometry: dict[str, object] = dict(latent_height=side, latent_width=side, max_frames=latent_frames)
    if tok.is_discrete:
        geometry.update(head="maskgit", codebook_size=tok.codebook_size)
    else:
        geometry.update(head="diffusion", latent_channels=tok.latent_channels)
    try:
        DynamicsConfig.preset(name)
    except ValueError as e:
        raise CapacityError(f"--dynamics: {e}") from None
    try:
        return DynamicsConfig.preset(name, **geometry)
    except ValueError as e:
        raise CapacityError(
            f"--dynamics {name} over {side}x{side} latents (--size {job.size} / spatial compression "
            f"{tok.spatial_compression} of --tokenizer {job.tokenizer}): {e}"
        ) from None


def gpu_rate_source(mfu: float | None, peak_tflops: float | None, default_peak: float, dtype: str) -> str:
    """``40% MFU (assumed) of 989 TFLOP/s (H100 bf16 dense)``: each figure says where it comes from."""
    m = f"{mfu:.0%} MFU (given)" if mfu else f"{ASSUMED_MFU:.0%} MFU (assumed)"
    p = (
        f"{peak_tflops:g} TFLOP/s (given)"
        if peak_tflops
        else f"{default_peak:g} TFLOP/s (H100 {dtype} dense)"
    )
    return f"{m} of {p}"


def plan(job: Job) -> Plan:
    """Rows of curate, tokenize and one epoch of each dynamics preset for ``job``."""
    check(job)
    src_w, src_h = source_pixels(job.source)
    cores = job.cpu_nodes * job.cores_per_node
    video_s = job.hours * 3600.0
    notes: list[str] = []

    # Curate: every source second is decoded, whatever survives the filters.
    out_px_per_s = job.size * job.size * job.fps
    if job.curate_rate:
        curate_rate, curate_from = job.curate_rate, "given (--curate-rate)"
    else:
        curate_rate = 1.0 / curate_core_seconds(src_w * src_h * job.source_fps, out_px_per_s)
        curate_from = (
            f"measured {CURATE_BENCH_RATE:g} at 640x360 -> 64x64 (BENCHMARKS 2026-11-25), scaled by pixels"
        )
    curate_core_s = video_s / curate_rate
    rows = [
        Row(
            "curate",
            f"{job.hours:,.0f} h of {src_w}x{src_h} @ {job.source_fps:g} fps -> {job.size}x{job.size} "
            f"@ {job.fps:g} fps",
            f"{curate_rate:.1f} video-s/s per core",
            curate_from,
            curate_core_s / cores,
            core_hours=curate_core_s / 3600,
        )
    ]

    # Tokenize: each actor decodes a shard's clips on one core, then encodes them on its GPU.
    tok = tokenizer_model(job)
    try:
        enc_flops = tok.flops_per_video(job.clip_frames, job.size, job.size, decoder=False)
    except ValueError as e:
        raise CapacityError(f"--clip-frames {job.clip_frames} / --size {job.size}: {e}") from None
    clips = video_s * job.fps * job.keep / job.clip_frames
    tok_mfu = job.tokenizer_mfu or ASSUMED_MFU
    tok_peak = (job.tokenizer_peak_tflops or H100_TF32_DENSE_TFLOPS) * 1e12
    encode_s = enc_flops / (tok_peak * tok_mfu)
    if job.decode_rate:
        decode_rate, decode_from = job.decode_rate, "decode: given (--decode-rate)"
    else:
        decode_rate = DECODE_BENCH_FPS * DECODE_BENCH_PX / (job.size * job.size)
        decode_from = f"decode: measured {DECODE_BENCH_FPS:,.0f} frames/s at 256x256 (BENCHMARKS 2026-11-25)"
    decode_s = job.clip_frames / decode_rate
    per_gpu = min(1.0 / encode_s, job.actors_per_gpu / (decode_s + encode_s))
    tok_wall = clips / (per_gpu * job.gpus)
    rows.append(
        Row(
            f"tokenize ({job.tokenizer})",
            f"{sci(clips)} clips of {job.clip_frames}x{job.size}x{job.size}, "
            f"{job.actors_per_gpu} actor(s) per GPU",
            f"{figure(per_gpu)} clips/s per GPU",
            f"{decode_from}; encode: "
            + gpu_rate_source(job.tokenizer_mfu, job.tokenizer_peak_tflops, H100_TF32_DENSE_TFLOPS, "TF32"),
            tok_wall,
            core_hours=clips * decode_s / 3600,
            gpu_hours=tok_wall * job.gpus / 3600,
        )
    )
    clip_latent = 1 + (job.clip_frames - 1) // tok.temporal_compression
    notes += [
        f"curated clips: {sci(clips)} ({job.clip_frames} frames at {job.fps:g} fps, keep {job.keep:g}), "
        f"{clip_latent} latent frames each",
        f"tokenizer {job.tokenizer}: encoder {enc_flops / 1e12:.3g} TFLOP per clip (tokenizer/model.py), "
        f"{1 / encode_s:.3g} clips/s per GPU encoding alone; decode {1 / decode_s:.3g} clips/s per core",
    ]

    # Dynamics: one epoch = every clip once, as a window of latent_frames.
    latent_frames = job.latent_frames or clip_latent
    if latent_frames > clip_latent:
        raise CapacityError(
            f"--latent-frames {latent_frames}: a {job.clip_frames}-frame clip has only {clip_latent} latent "
            f"frames with --tokenizer {job.tokenizer}; lower it or raise --clip-frames"
        )
    mfu = job.mfu or ASSUMED_MFU
    peak = (job.peak_tflops or H100_BF16_DENSE_TFLOPS) * 1e12
    for name in job.dynamics:
        cfg = dynamics_config(job, name, tok, latent_frames)
        model = build_dynamics(cfg, device=None)
        flops = model.flops_per_sample(latent_frames)
        params = sum(p.numel() for p in model.parameters())
        samples = clips * job.epochs
        tokens = samples * latent_frames * cfg.tokens_per_frame
        gpu_s = samples * flops / (peak * mfu)
        rows.append(
            Row(
                f"dynamics {name}, {job.epochs:g} epoch{'' if job.epochs == 1 else 's'}",
                f"{sci(tokens)} tokens ({latent_frames} x {cfg.tokens_per_frame} per clip)",
                f"{figure(peak * mfu / flops)} clips/s per GPU",
                gpu_rate_source(job.mfu, job.peak_tflops, H100_BF16_DENSE_TFLOPS, "bf16"),
                gpu_s / job.gpus,
                gpu_hours=gpu_s / 3600,
            )
        )
        per_token = flops / (latent_frames * cfg.tokens_per_frame)
        notes.append(
            f"dynamics {name}: {params / 1e6:.1f}M parameters, {flops / 1e12:.3g} TFLOP per clip "
            f"(forward + backward, flops_per_sample), {per_token / 1e9:.3g} GFLOP per token"
        )
    return Plan(rows, notes)


def sci(x: float) -> str:
    """3 significant figures, ``2.62e9`` rather than ``2.62e+09``."""
    return re.sub(r"e\+0*", "e", f"{x:.3g}")


def figure(x: float) -> str:
    """``12,345`` from 1,000 up, else 3 significant figures."""
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}"


def duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def hour_figure(h: float) -> str:
    return "-" if h == 0 else f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def table(job: Job, p: Plan) -> str:
    cores = job.cpu_nodes * job.cores_per_node
    lines = [
        f"{job.cpu_nodes} CPU nodes x {job.cores_per_node} cores = {cores:,} cores; {job.gpus} GPUs",
        *(f"- {n}" for n in p.notes),
        "",
        "| stage | work | rate | from | wall | core-hours | GPU-hours |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in p.rows:
        lines.append(
            f"| {r.stage} | {r.work} | {r.rate} | {r.source} | {duration(r.wall_s)} | "
            f"{hour_figure(r.core_hours)} | {hour_figure(r.gpu_hours)} |"
        )
    head = sum(r.wall_s for r in p.rows[:2])
    lines.append("")
    for r in p.rows[2:]:
        lines.append(f"curate + tokenize + {r.stage}, one after another: {duration(head + r.wall_s)}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Job()
    ap.add_argument("--hours", type=float, default=d.hours, help="hours of source video")
    ap.add_argument("--source", default=d.source, help="source frame size: WIDTHxHEIGHT, 480p, 720p, ...")
    ap.add_argument("--source-fps", type=float, default=d.source_fps)
    ap.add_argument("--fps", type=float, default=d.fps, help="curated clips' frame rate (curate.fps)")
    ap.add_argument("--size", type=int, default=d.size, help="curated clips' side in pixels (curate.size)")
    ap.add_argument("--clip-frames", type=int, default=d.clip_frames, help="frames per curated clip")
    ap.add_argument(
        "--keep", type=float, default=d.keep, help="share of the video curation keeps (assumed 1)"
    )
    ap.add_argument("--cpu-nodes", type=int, default=d.cpu_nodes)
    ap.add_argument("--cores-per-node", type=int, default=d.cores_per_node)
    ap.add_argument("--gpus", type=int, default=d.gpus, help="GPUs for tokenize and dynamics training")
    ap.add_argument("--tokenizer", default=d.tokenizer, help="TokenizerConfig preset")
    ap.add_argument(
        "--actors-per-gpu", type=int, default=d.actors_per_gpu, help="tokenize encoder actors per GPU"
    )
    ap.add_argument("--dynamics", nargs="+", default=list(d.dynamics), help="DynamicsConfig preset(s)")
    ap.add_argument("--latent-frames", type=int, help="dynamics clip length (default: all of a clip's)")
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--mfu", type=float, help=f"dynamics MFU (default: assumed {ASSUMED_MFU:g})")
    ap.add_argument(
        "--peak-tflops", type=float, help=f"per GPU (default: H100 bf16 {H100_BF16_DENSE_TFLOPS:g})"
    )
    ap.add_argument("--tokenizer-mfu", type=float, help=f"(default: assumed {ASSUMED_MFU:g})")
    ap.add_argument(
        "--tokenizer-peak-tflops", type=float, help=f"(default: H100 TF32 {H100_TF32_DENSE_TFLOPS:g})"
    )
    ap.add_argument("--curate-rate", type=float, help="video-s/s per core on your footage (bench/curate.py)")
    ap.add_argument("--decode-rate", type=float, help="frames/s per core at --size (bench/loader.py)")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = vars(ap.parse_args(argv))
    job = Job(**{**args, "dynamics": tuple(args["dynamics"])})
    try:
        p = plan(job)
    except CapacityError as e:
        ap.error(str(e))
    print(table(job, p))


if __name__ == "__main__":
    main()
