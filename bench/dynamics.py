"""Dynamics transformer throughput: training tokens/s and MFU, and rollout speed with the KV cache.

    .venv/bin/python -m bench.dynamics                 # CPU: "small" preset, fp32 and bf16
    .venv/bin/python -m bench.dynamics --device cuda   # GPU: "100m" preset, bf16, every backend
    (``python bench/dynamics.py`` works too)

MFU = model FLOPs per second (``flops_per_sample``: forward + backward, attention counted over
the pairs the frame-causal mask allows) / the matmul peak *measured in the same run* with a
large square matmul in the same dtype, just before and after each measurement (on CUDA the
H100 datasheet dense bf16 peak, 989 TFLOP/s, is printed beside it). Prints figures; never gates CI.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):
    # Run as a script, bench/ is first on sys.path and this file would shadow the package.
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from dynamics import DynamicsConfig, build_dynamics  # noqa: E402
from runtime.parallelize import available_attention_backends  # noqa: E402

H100_BF16_PEAK = 989e12


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of a square matmul (8192 on GPU, 1024 on CPU) in ``dtype``: the best 0.2 s window."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        iters, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 0.2:
            for _ in range(10 if device.type == "cuda" else 1):
                a @ b
                iters += 1
            sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0))
    return best


def fake_batch(cfg: DynamicsConfig, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t, h, w = cfg.max_frames, cfg.latent_height, cfg.latent_width
    if cfg.head == "diffusion":
        x = torch.randn(batch, cfg.latent_channels, t, h, w, device=device)
    else:
        x = torch.randint(0, cfg.codebook_size, (batch, t, h, w), device=device)
    return x, torch.randint(0, cfg.num_actions, (batch, t), device=device)


def train_rate(
    cfg: DynamicsConfig,
    batch: int,
    steps: int,
    device: torch.device,
    dtype: torch.dtype,
    compile: bool,
) -> tuple[float, float]:
    """(samples/s, FLOP/s) of AdamW training steps under autocast to ``dtype`` (median step)."""
    model = build_dynamics(cfg, device=device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = torch.compile(model) if compile else model
    x, a = fake_batch(cfg, batch, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> None:
        with autocast:
            loss = step_model(x, a)["loss"]  # the heads' forward is their training loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    # The median step: one step slowed by another job on a shared machine does not move it.
    rate = batch / statistics.median(times)
    return rate, rate * model.flops_per_sample()


def rollout_speed(cfg: DynamicsConfig, device: torch.device, horizon: int) -> tuple[float, float]:
    """Seconds for a rollout of ``horizon`` frames after 2 context frames: (cached, uncached)."""
    model = build_dynamics(cfg, device=device).eval()
    x, a = fake_batch(cfg, 1, device)
    frames = 2 + horizon
    a = torch.randint(0, cfg.num_actions, (1, frames), device=device)
    ctx = x[:, :, :2] if cfg.head == "diffusion" else x[:, :2]
    model.rollout(ctx, a[:, :3], 1)  # first-call set-up costs out of the timing
    out = []
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(2):  # the better of two: less noise from other jobs on a shared machine
            sync(device)
            t0 = time.perf_counter()
            model.rollout(ctx, a, horizon, use_cache=use_cache)
            sync(device)
            best = min(best, time.perf_counter() - t0)
        out.append(best)
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default=None, help="small (CPU default) or 100m (CUDA default)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    preset = args.preset or ("100m" if cuda else "small")
    batch = args.batch or (8 if cuda else 4)
    steps = args.steps or (20 if cuda else 7)
    dtypes = [torch.bfloat16] if cuda else [torch.float32, torch.bfloat16]
    backends = [b for b in available_attention_backends(device) if b != "math"] if cuda else ["sdpa"]
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; preset {preset}; batch {batch}; steps {steps}")
    if not cuda:
        print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for dtype in dtypes:
        dt = str(dtype)[6:]
        for head in ("diffusion", "maskgit"):
            for backend in backends:
                cfg = DynamicsConfig.preset(preset, head=head, attention_backend=backend)
                # The peak is measured around each run (the larger of before/after counts), so a
                # machine shared with other jobs gives a consistent ratio, not a flattering one.
                peak = matmul_peak(device, dtype, seconds=1.0)
                try:
                    rate, flops = train_rate(cfg, batch, steps, device, dtype, args.compile)
                except (RuntimeError, ValueError) as e:  # e.g. out of memory: report and go on
                    print(f"  {head:9s} {backend:10s} {dt}: failed: {str(e).splitlines()[0]}")
                    continue
                peak = max(peak, matmul_peak(device, dtype, seconds=1.0))
                tokens = rate * cfg.max_frames * cfg.tokens_per_frame
                extra = f", {flops / H100_BF16_PEAK:.1%} of the H100 datasheet peak" if cuda else ""
                print(
                    f"  {head:9s} {backend:10s} {dt}: {tokens:,.0f} tokens/s {rate:.2f} samples/s "
                    f"{flops / 1e12:.4f} TFLOP/s | matmul peak {peak / 1e12:.4f} TFLOP/s | "
                    f"MFU {flops / peak:.1%}{extra}"
                )
    for head in ("diffusion", "maskgit"):
        cfg = DynamicsConfig.preset(preset, head=head, sampling_steps=4, maskgit_steps=4)
        cached, uncached = rollout_speed(cfg, device, horizon=6 if not cuda else 14)
        print(f"rollout {head}: cached {cached:.2f} s, uncached {uncached:.2f} s ({uncached / cached:.1f}x)")


if __name__ == "__main__":
    main()
