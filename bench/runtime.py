"""Training-runtime throughput: step time, tokens/s and MFU of the reference transformer.

Runs the real entry (``vidworld train``, DeepSpeed engine, single process) for a few dozen steps
per setting and reads the figures the runtime logs (``metrics.jsonl``; the first steps are
warm-up and dropped). Beside each, a plain PyTorch loop (same model, AdamW, no DeepSpeed) gives
the runtime's overhead. CPU: fp32 and bf16; CUDA (when present): bf16.

    .venv/bin/python bench/runtime.py                 # bench/out/runtime/
    .venv/bin/python bench/runtime.py --width 512 --depth 8 --seq-len 256

Never gates CI; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runtime.metrics import peak_flops  # noqa: E402
from runtime.reference_task import ReferenceModelConfig, ReferenceTask, TinyTransformer  # noqa: E402
from runtime.tracking import read_metrics  # noqa: E402


def runtime_figures(
    out: Path, device: str, precision: str, args: argparse.Namespace, flops_per_token: float, peak: float
) -> dict[str, float]:
    run_dir = out / f"{device}-{precision}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover run would resume (and train nothing)
    cmd = [
        str(Path(sys.executable).parent / "vidworld"),
        "train",
        str(REPO / "jobs" / "reference.yaml"),
        f"run_dir={run_dir}",
        f"trainer.precision={precision}",
        f"trainer.max_steps={args.steps}",
        f"trainer.micro_batch_size={args.batch}",
        f"data.batch_size={args.batch}",
        "trainer.log_every=1",
        f"model.width={args.width}",
        f"model.depth={args.depth}",
        f"model.heads={args.width // 64}",
        f"model.seq_len={args.seq_len}",
        "model.vocab_size=256",
        "wandb.mode=disabled",
        f"trainer.save_every={args.steps}",
        "trainer.export_weights=false",
        "trainer.keep_last=1",
    ]
    env = dict(os.environ)
    if device == "cpu":
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    rows = [r for s, r in sorted(read_metrics(run_dir).items()) if s > args.warmup]
    mean = lambda k: sum(r[f"train/{k}"] for r in rows) / len(rows)
    step_time = mean("step_time_s")
    figures = {"step_time_s": step_time, "tokens_per_s": args.batch * args.seq_len / step_time}
    # Against this script's peak (the run measured its own, at another moment): one peak per row.
    figures["mfu"] = figures["tokens_per_s"] * flops_per_token / peak
    return figures


def model_config(args: argparse.Namespace) -> ReferenceModelConfig:
    return ReferenceModelConfig(
        vocab_size=256, width=args.width, depth=args.depth, heads=args.width // 64, seq_len=args.seq_len
    )


def plain_torch_figures(
    device: str, precision: str, args: argparse.Namespace, peak: float
) -> dict[str, float]:
    """The same model and batch with a bare PyTorch loop: what the runtime costs on top."""
    cfg = model_config(args)
    ns = argparse.Namespace(trainer=argparse.Namespace(micro_batch_size=args.batch))
    task = ReferenceTask(cfg, ns)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model = TinyTransformer(cfg).to(device=device, dtype=dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(args.steps):
        batch = task.make_batch(0, i)
        t0 = time.perf_counter()
        loss = task.loss(model, batch)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # synchronise
        times.append(time.perf_counter() - t0)
    step = sum(times[args.warmup :]) / len(times[args.warmup :])
    samples = args.batch / step
    return {
        "step_time_s": step,
        "tokens_per_s": samples * cfg.seq_len,
        "mfu": samples * task.flops_per_sample() / peak,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "runtime")
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    settings = [("cpu", "fp32"), ("cpu", "bf16")] + ([("cuda", "bf16")] if torch.cuda.is_available() else [])
    n_params = sum(p.numel() for p in TinyTransformer(model_config(args)).parameters())
    ns = argparse.Namespace(trainer=argparse.Namespace(micro_batch_size=args.batch))
    flops_per_token = ReferenceTask(model_config(args), ns).flops_per_sample() / args.seq_len
    print(
        f"reference transformer: width {args.width}, depth {args.depth}, seq {args.seq_len}, "
        f"batch {args.batch}, {n_params / 1e6:.2f}M params; {platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}"
    )
    print(
        f"{'device':6} {'prec':5} {'peak TFLOP/s':>12} | "
        f"{'runtime: step ms':>16} {'tokens/s':>9} {'MFU':>6} | "
        f"{'plain torch: step ms':>20} {'tokens/s':>9} {'MFU':>6}"
    )
    results = []
    for device, precision in settings:
        peak, source = peak_flops(torch.device(device), precision)
        rt = runtime_figures(args.out, device, precision, args, flops_per_token, peak)
        pt = plain_torch_figures(device, precision, args, peak)
        results.append(
            {
                "device": device,
                "precision": precision,
                "peak_flops": peak,
                "peak_source": source,
                "runtime": rt,
                "plain_torch": pt,
            }
        )
        print(
            f"{device:6} {precision:5} {peak / 1e12:12.3f} | {1e3 * rt['step_time_s']:16.1f} "
            f"{rt['tokens_per_s']:9.0f} {100 * rt['mfu']:5.1f}% | {1e3 * pt['step_time_s']:20.1f} "
            f"{pt['tokens_per_s']:9.0f} {100 * pt['mfu']:5.1f}%"
        )
    (args.out / "runtime.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
