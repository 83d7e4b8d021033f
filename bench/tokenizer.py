"""Tokenizer benchmark: encode/decode speed at 256x256 and reconstruction quality after a small budget.

For each compression (4x8x8, 8x8x8, 8x16x16; time x height x width) it

1. times ``encode`` and ``decode`` of one ``1 + 2t``-frame clip at ``--size`` (frames per second,
   batch 1, median of ``--repeats`` after a warm-up; random weights: speed does not depend on them);
2. trains a fresh tokenizer for ``--steps`` Adam steps on synthetic moving shapes at
   ``--train-size`` and reports PSNR / SSIM (uint8, per frame, data range 255, mean over frames
   and clips; tokenizer.metrics) on held-out clips (another seed), plus FSQ code usage.

Prints a table; never gates CI. Examples::

    .venv/bin/python bench/tokenizer.py                        # CPU, short
    .venv/bin/python bench/tokenizer.py --device cuda --steps 2000 --base-channels 64
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Run as `python bench/tokenizer.py`, this file's folder is first on sys.path and its name would
# shadow the `tokenizer` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import torch  # noqa: E402

from runtime.progress import Progress  # noqa: E402
from tokenizer import TokenizerConfig, build_tokenizer  # noqa: E402
from tokenizer.losses import TokenizerObjective  # noqa: E402
from tokenizer.metrics import codebook_usage, from_uint8, psnr, ssim, to_uint8  # noqa: E402
from tokenizer.synthetic import moving_shapes  # noqa: E402

COMPRESSIONS = [(4, 8), (8, 8), (8, 16)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(cfg: TokenizerConfig, size: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Frames/s of encode and decode of one clip of ``1 + 2t`` frames at ``size`` x ``size``."""
    model = build_tokenizer(cfg, device=device).eval()
    frames = 1 + 2 * cfg.temporal_compression
    video = torch.rand(1, 3, frames, size, size, device=device) * 2 - 1
    times: dict[str, list[float]] = {"encode": [], "decode": []}
    with torch.no_grad():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            z = model.encode(video)
            _sync(device)
            t1 = time.perf_counter()
            model.decode(z)
            _sync(device)
            t2 = time.perf_counter()
            if i:  # the first pass warms up allocators and kernels
                times["encode"].append(t1 - t0)
                times["decode"].append(t2 - t1)
    return {
        "enc_fps": frames / statistics.median(times["encode"]),
        "dec_fps": frames / statistics.median(times["decode"]),
        "gflop_per_frame": model.flops_per_video(frames, size, size) / frames / 1e9,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def quality(cfg: TokenizerConfig, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Train ``args.steps`` steps on moving shapes, then PSNR/SSIM on held-out clips."""
    torch.manual_seed(0)
    frames = 1 + 2 * cfg.temporal_compression
    train = from_uint8(moving_shapes(args.train_clips, frames, args.train_size, seed=0)).to(device)
    held_out = moving_shapes(args.eval_clips, frames, args.train_size, seed=10_000)
    objective = TokenizerObjective(build_tokenizer(cfg, device=device), cfg.loss).train()
    opt = torch.optim.Adam(objective.parameters(), lr=args.lr)
    s = cfg.spatial_compression
    name = f"train {cfg.temporal_compression}x{s}x{s} {cfg.bottleneck}"
    progress = Progress(name, args.steps, unit="steps", interval=30.0)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        batch = train[torch.randint(0, len(train), (args.batch,), device=device)]
        out = objective(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        progress.update(1)
        progress.set(loss=round(float(out["loss"].detach()), 4))
    progress.close()
    train_s = time.perf_counter() - t0
    tok = objective.tokenizer.eval()
    with torch.no_grad():
        z = tok.encode(from_uint8(held_out).to(device))
        recon = to_uint8(tok.decode(z)).cpu()
    result = {"psnr": psnr(held_out, recon), "ssim": ssim(held_out, recon), "train_s": train_s}
    if tok.is_discrete:
        indices = tok.bottleneck.codes_to_indices(z).cpu()
        result["usage"] = codebook_usage(indices, tok.codebook_size or 1)["usage"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--size", type=int, default=256, help="speed: frame height = width")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--bottleneck", choices=["gaussian", "fsq", "both"], default="both")
    p.add_argument("--steps", type=int, default=150, help="quality: training steps per config (0: skip)")
    p.add_argument("--train-size", type=int, default=64)
    p.add_argument("--train-clips", type=int, default=64)
    p.add_argument("--eval-clips", type=int, default=16)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bottlenecks = ["gaussian", "fsq"] if args.bottleneck == "both" else [args.bottleneck]
    host = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"tokenizer bench | {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC | {device} ({host}), "
        f"{torch.get_num_threads()} threads | base_channels={args.base_channels} | speed at "
        f"{args.size}x{args.size}, quality after {args.steps} steps (batch {args.batch}) on moving shapes "
        f"at {args.train_size}x{args.train_size}, {args.eval_clips} held-out clips"
    )
    rows = []
    for t, s in COMPRESSIONS:
        for bottleneck in bottlenecks:
            cfg = TokenizerConfig(
                temporal_compression=t,
                spatial_compression=s,
                base_channels=args.base_channels,
                channel_multipliers=[1, 2, 2, 4],
                bottleneck=bottleneck,
                latent_channels=16,
                fsq_levels=[8, 8, 8, 5, 5, 5],
            )
            row = {"name": f"{t}x{s}x{s}", "bottleneck": bottleneck}
            row.update(speed(cfg, args.size, device, args.repeats))
            if args.steps:
                row.update(quality(cfg, args, device))
            rows.append(row)
            print(f"  done {row['name']} {bottleneck}", flush=True)
    header = (
        f"{'compression':<12}{'bottleneck':<10}{'params M':>9}{'GFLOP/frame':>12}"
        f"{'enc fr/s':>10}{'dec fr/s':>10}"
        f"{'PSNR dB':>9}{'SSIM':>7}{'codes':>7}{'train s':>9}"
    )
    print(header)
    for r in rows:
        q = (
            f"{r['psnr']:>9.2f}{r['ssim']:>7.3f}{r.get('usage', float('nan')):>7.3f}{r['train_s']:>9.1f}"
            if "psnr" in r
            else ""
        )
        print(
            f"{r['name']:<12}{r['bottleneck']:<10}{r['params_m']:>9.2f}{r['gflop_per_frame']:>12.2f}"
            f"{r['enc_fps']:>10.2f}{r['dec_fps']:>10.2f}{q}"
        )


if __name__ == "__main__":
    main()
