"""The memory plan against measured peak memory (issue 14 item 3; ``runtime/memory.py``).

For each case: ``runtime.memory.plan_memory`` (the plan's peak, without the reserve, for CPU
ranks: no block rounding) beside the peak measured over real training steps of the same config:
the runtime's own path (``runtime.parallelize`` then the DeepSpeed engine of ``runtime.train``,
``train_step``), in 1 process or 2 under torchrun (gloo), on the task's ``example_batch`` so no data
files are needed, for ``--steps`` optimizer steps.

How the peak is measured on CPU: the whole run (model placement, engine, steps) goes under
``torch.profiler`` with ``profile_memory``, which records every CPU allocation and free with the
running total of live tensor bytes; the peak is the largest total inside the training steps
(``runtime.memory.cpu_peak_bytes``). That is the CPU twin of ``torch.cuda.max_memory_allocated``:
tensor bytes only, no allocator slack, no Python heap. (``ru_maxrss`` would add the interpreter,
libraries and pages never touched or already freed; ``tracemalloc`` does not see torch tensors.)

    .venv/bin/python bench/memory.py                      # every case; a markdown table
    .venv/bin/python bench/memory.py --case tokenizer-b4  # one case (substring match)

Never gates CI. On 2 cores the whole set takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from torch.profiler import record_function  # noqa: E402

import runtime.train as rt  # noqa: E402
from runtime import memory  # noqa: E402
from runtime.distributed import init_distributed, shutdown_distributed  # noqa: E402
from runtime.memory import MiB, cpu_peak_bytes, plan_memory  # noqa: E402
from runtime.parallelize import parallelize  # noqa: E402
from runtime.train import build_engine, load_train_config, resolve_task_class, train_step  # noqa: E402

STEP = "bench.memory.train_step"
REF = ["model.width=256", "model.depth=4", "model.heads=4", "model.seq_len=128", "model.vocab_size=256"]
# The demo chain's dynamics model (jobs/demo.yaml) on 16x16x8 latents.
DEMO_DYN = [
    "model.latent_channels=8",
    "model.latent_height=16",
    "model.latent_width=16",
    "model.temporal_compression=1",
    "model.max_frames=8",
    "model.patch_size=4",
    "model.dim=128",
    "model.depth=4",
    "model.heads=4",
]
# Patch 2: 512 tokens per clip, where the math backend's [B, H, L, L] scores are a large share.
DYN_P2 = [*DEMO_DYN, "model.patch_size=2"]


@dataclasses.dataclass(frozen=True)
class Case:
    """``bucket``: DeepSpeed's ``reduce_bucket_size`` (and ``allgather_bucket_size``) in values, set
    for plan and measurement alike. The runtime sizes them to the model's trainable parameters
    (``runtime.train.bucket_values``: at most DeepSpeed's 5e8, at least 1e6)."""

    name: str
    config: str
    overrides: tuple[str, ...]
    nproc: int = 1
    bucket: int | None = None


@contextlib.contextmanager
def bucket_size(values: int | None) -> Iterator[None]:
    """Within the block, the runtime's DeepSpeed config (and so the plan's) has ``values``-value buckets."""
    if values is None:
        yield
        return
    original = rt.deepspeed_config

    def with_buckets(t: Any, world_size: int, trainable: int | None = None) -> dict[str, Any]:
        config = original(t, world_size, trainable)
        config["zero_optimization"].update(reduce_bucket_size=values, allgather_bucket_size=values)
        return config

    rt.deepspeed_config = memory.deepspeed_config = with_buckets
    try:
        yield
    finally:
        rt.deepspeed_config = memory.deepspeed_config = original


CASES = [
    Case("reference-fp32", "jobs/reference.yaml", (*REF, "trainer.micro_batch_size=8")),
    Case(
        "reference-bf16",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.precision=bf16"),
    ),
    Case(
        "reference-zero1-2ranks",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=1"),
        2,
    ),
    Case(
        "reference-zero2-2ranks",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2"),
        2,
    ),
    Case(
        "reference-zero2-bf16-2ranks",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2", "trainer.precision=bf16"),
        2,
    ),
    Case(
        "reference-zero3-2ranks",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=3"),
        2,
    ),
    Case(
        "reference-zero1-2ranks-bucket1e6",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=1"),
        2,
        10**6,
    ),
    Case(
        "reference-zero2-2ranks-bucket1e6",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2"),
        2,
        10**6,
    ),
    Case(
        "reference-zero2-bf16-2ranks-bucket1e6",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2", "trainer.precision=bf16"),
        2,
        10**6,
    ),
    Case(
        "reference-zero3-2ranks-bucket1e6",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=3"),
        2,
        10**6,
    ),
    Case(
        "reference-zero2-offload",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2", "trainer.offload_optimizer=true"),
    ),
    Case(
        "reference-zero2-offload-2ranks-bucket1e6",
        "jobs/reference.yaml",
        (*REF, "trainer.micro_batch_size=8", "trainer.zero_stage=2", "trainer.offload_optimizer=true"),
        2,
        10**6,
    ),
    Case("dynamics-demo-b4", "jobs/dynamics.yaml", (*DEMO_DYN, "trainer.micro_batch_size=4")),
    Case("dynamics-demo-b16", "jobs/dynamics.yaml", (*DEMO_DYN, "trainer.micro_batch_size=16")),
    Case(
        "dynamics-demo-b16-ckpt",
        "jobs/dynamics.yaml",
        (*DEMO_DYN, "trainer.micro_batch_size=16", "trainer.activation_checkpointing=true"),
    ),
    Case(
        "dynamics-demo-b16-bf16",
        "jobs/dynamics.yaml",
        (*DEMO_DYN, "trainer.micro_batch_size=16", "trainer.precision=bf16"),
    ),
    Case("dynamics-p2-b4-sdpa", "jobs/dynamics.yaml", (*DYN_P2, "trainer.micro_batch_size=4")),
    Case(
        "dynamics-p2-b4-math",
        "jobs/dynamics.yaml",
        (*DYN_P2, "trainer.micro_batch_size=4", "model.attention_backend=math"),
    ),
    Case(
        "dynamics-p2-b4-math-ckpt",
        "jobs/dynamics.yaml",
        (
            *DYN_P2,
            "trainer.micro_batch_size=4",
            "model.attention_backend=math",
            "trainer.activation_checkpointing=true",
        ),
    ),
    Case(
        "dynamics-demo-b16-zero2-2ranks",
        "jobs/dynamics.yaml",
        (*DEMO_DYN, "trainer.micro_batch_size=16", "trainer.zero_stage=2"),
        2,
    ),
    Case("tokenizer-b1", "jobs/tokenizer.yaml", ("trainer.micro_batch_size=1",)),
    Case("tokenizer-b2", "jobs/tokenizer.yaml", ("trainer.micro_batch_size=2",)),
    Case("tokenizer-b4", "jobs/tokenizer.yaml", ("trainer.micro_batch_size=4",)),
    Case(
        "tokenizer-b4-ckpt",
        "jobs/tokenizer.yaml",
        ("trainer.micro_batch_size=4", "trainer.activation_checkpointing=true"),
    ),
    Case("lam-b16", "jobs/lam.yaml", ("trainer.micro_batch_size=16",)),
]


def measure_here(config: str, overrides: list[str], steps: int, bucket: int | None) -> None:
    """One rank: place the model, build the engine and train ``steps`` steps under the profiler;
    print ``MEASURED {"rank": r, "peak": bytes}``."""
    cfg = load_train_config(config, overrides)
    t = cfg.trainer
    info = init_distributed()
    torch.manual_seed(t.seed)
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    batches = (task.example_batch(t.micro_batch_size) for _ in itertools.count())

    def run() -> None:
        model = parallelize(task, t, info.device, init_device="cpu" if t.zero_stage == 3 else info.device)
        engine = build_engine(model, cfg, info)
        for step in range(steps):
            with record_function(STEP):
                train_step(engine, task, batches, t, step, info, False)

    with bucket_size(bucket):
        peak = cpu_peak_bytes(run, within=STEP)
    print("MEASURED " + json.dumps({"rank": info.rank, "peak": peak}), flush=True)
    shutdown_distributed(info)


def measure(case: Case, steps: int) -> list[int]:
    """Each rank's measured peak (a subprocess per case: a fresh allocator, torchrun for 2 ranks)."""
    args = [str(Path(__file__).resolve()), "--measure", case.config, *case.overrides, f"--steps={steps}"]
    args += [f"--bucket={case.bucket}"] if case.bucket else []
    if case.nproc == 1:
        cmd = [sys.executable, *args]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={case.nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    rows = [
        json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("MEASURED ")
    ]
    if proc.returncode != 0 or len(rows) != case.nproc:
        raise RuntimeError(f"{case.name}: measuring failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return [r["peak"] for r in sorted(rows, key=lambda r: r["rank"])]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--case", default="", help="run the cases whose name contains this")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps measured per case")
    parser.add_argument("--measure", nargs="+", help=argparse.SUPPRESS)  # internal: CONFIG OVERRIDES...
    parser.add_argument("--bucket", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure_here(args.measure[0], args.measure[1:], args.steps, args.bucket)
        return
    cases = [c for c in CASES if args.case in c.name]
    print(
        f"# {platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}; {args.steps} steps per case, peak inside the steps"
    )
    columns = "case ranks ZeRO precision micro-batch act.ckpt attention planned_MiB measured_MiB error"
    print("| " + " | ".join(c.replace("_", " ") for c in columns.split()) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    errors = []
    for case in cases:
        cfg = load_train_config(case.config, list(case.overrides))
        t = cfg.trainer
        with bucket_size(case.bucket):
            plan = plan_memory(cfg, case.nproc, 1 << 40, "cpu", search=False)  # a device larger than any
        measured = max(measure(case, args.steps))
        planned = plan.peak + plan.host  # on CPU the offloaded state shares the one memory
        error = planned / measured - 1
        errors.append(abs(error))
        print(
            f"| {case.name} | {case.nproc} | {t.zero_stage} | {t.precision} | {t.micro_batch_size} | "
            f"{'on' if t.activation_checkpointing else 'off'} | {'/'.join(plan.attention_backends) or '-'} | "
            f"{planned / MiB:.1f} | {measured / MiB:.1f} | {error:+.1%} |",
            flush=True,
        )
    if errors:
        print(
            f"\nmean |error| {sum(errors) / len(errors):.1%}, max {max(errors):.1%} over {len(errors)} cases"
        )


if __name__ == "__main__":
    main()
