"""Loader throughput against plain PyAV decoding of the same clips, in frames per second per core.

    .venv/bin/python bench/loader.py                       # 17-frame clips at 128x128 and 256x256
    taskset -c 0 .venv/bin/python bench/loader.py          # pin to one core for a true per-core figure
    .venv/bin/python bench/loader.py --workers 0 2 4       # also DataLoader worker processes

Synthetic clips (moving sinusoidal texture plus grain, so H.264 has real work at crf 23) are
written with ``ShardWriter`` into a temporary folder. "plain" decodes every clip's mp4 bytes from
memory with ``runtime.video.decode_mp4`` (PyAV) and nothing else; "loader" is one finite pass of
``make_loader`` over the shards (tar reading, shuffle buffer, decoding, collation into tensors).
Each figure is the best of ``--repeats`` passes, plain and loader passes interleaved. "frames/s" is
wall-clock; "frames/CPU-s" divides by the CPU time of every process involved (the training process
and its workers, including worker start-up), so it is the per-core figure and holds on a busy
machine where wall-clock rates do not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from pipeline.loader import LoaderConfig, make_loader
from pipeline.shards import ShardWriter
from runtime.video import decode_mp4, encode_mp4


def synthetic_clip(rng: np.random.Generator, frames: int, size: int) -> np.ndarray:
    """``uint8 [frames, size, size, 3]``: a drifting texture with per-frame grain."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    fx, fy, vx, vy = rng.uniform(2, 8, 4)
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        for c in range(3):
            wave = np.sin(2 * np.pi * (fx * (x + 0.02 * vx * t) + fy * (y + 0.02 * vy * t)) + phase[c])
            img = 128 + 90 * wave + rng.normal(0, 6, (size, size))
            out[t, :, :, c] = np.clip(img, 0, 255)
    return out


def run(size: int, clips: int, frames: int, workers: list[int], repeats: int, folder: Path) -> None:
    rng = np.random.default_rng(size)
    mp4s = [encode_mp4(synthetic_clip(rng, frames, size), fps=15, crf=23) for _ in range(clips)]
    root = folder / f"s{size}"
    with ShardWriter(root / "shards", samples_per_shard=16) as writer:
        for i, data in enumerate(mp4s):
            meta = {"key": f"c{i:05d}", "num_frames": frames, "fps": 15, "width": size, "height": size}
            writer.write(
                f"c{i:05d}",
                {
                    "mp4": data,
                    "json": meta,
                    "actions.npy": np.zeros(frames, np.int64),
                    "rewards.npy": np.zeros(frames, np.float32),
                },
            )
    kb = sum(len(m) for m in mp4s) / clips / 1e3

    def plain() -> int:
        return sum(len(decode_mp4(m)) for m in mp4s)

    def loader_pass(loader) -> int:
        return sum(int(b["frames"].shape[0] * b["frames"].shape[1]) for b in loader)

    loaders = {
        n: make_loader(
            LoaderConfig(shards=str(root), batch_size=4, num_workers=n, shuffle_buffer=64, resampled=False)
        )
        for n in workers
    }
    # Passes interleave so that load from other processes on the machine hits both sides alike.
    best_wall = {"plain": float("inf"), **{n: float("inf") for n in workers}}
    best_cpu = dict(best_wall)
    total = 0
    for _ in range(repeats):
        wall, cpu = timed(plain)
        total = plain_frames = wall[1]
        best_wall["plain"], best_cpu["plain"] = min(best_wall["plain"], wall[0]), min(best_cpu["plain"], cpu)
        for n, loader in loaders.items():
            (sec, got), cpu = timed(lambda loader=loader: loader_pass(loader))
            assert got == plain_frames, (got, plain_frames)
            best_wall[n], best_cpu[n] = min(best_wall[n], sec), min(best_cpu[n], cpu)
    plain_core = total / best_cpu["plain"]
    print(f"{size}x{size}, {clips} clips x {frames} frames, {kb:.1f} kB/clip")
    print(f"  {'':24s} {'frames/s':>9s} {'frames/CPU-s':>13s} {'vs plain':>9s}")
    print(f"  {'plain PyAV decode':24s} {total / best_wall['plain']:9.0f} {plain_core:13.0f} {1:9.2f}")
    for n in workers:
        core = total / best_cpu[n]
        name = f"loader, num_workers={n}"
        print(f"  {name:24s} {total / best_wall[n]:9.0f} {core:13.0f} {core / plain_core:9.2f}")
    # Where the rest goes: the same pass with decoding replaced by a dictionary lookup is everything
    # the loader adds (tar reading, JSON/npy parsing, shuffling, collation copies). CPU time only, so
    # this holds on a busy machine.
    decoded = {m: decode_mp4(m) for m in mp4s}
    no_decode = make_loader(LoaderConfig(shards=str(root), batch_size=4, shuffle_buffer=64, resampled=False))
    with mock.patch("pipeline.loader.decode_mp4", decoded.__getitem__):
        rest = min(timed(lambda: loader_pass(no_decode))[1] for _ in range(repeats))
    decode_us = best_cpu["plain"] / clips * 1e6
    print(
        f"  loader work besides decoding: {rest / clips * 1e6:.0f} us/clip against {decode_us:.0f} us/clip "
        f"decoding: a ceiling of {best_cpu['plain'] / (best_cpu['plain'] + rest):.2f}x plain per core"
    )


def timed(fn) -> tuple[tuple[float, int], float]:
    """``((wall seconds, result), CPU seconds)``; CPU time includes worker processes that ended."""
    t0, c0 = time.perf_counter(), os.times()
    result = fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system", "children_user", "children_system"))
    return (t1 - t0, result), cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--frames", type=int, default=17)
    p.add_argument("--workers", type=int, nargs="+", default=[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"cores visible: {len(os.sched_getaffinity(0))}, torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            run(size, args.clips, args.frames, args.workers, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
