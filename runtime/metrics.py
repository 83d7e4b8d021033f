"""Throughput, model FLOPs utilisation (MFU) and memory, the same way for every model.

MFU = (model FLOPs per step, forward + backward, from the task) / (step time x peak FLOP/s x
number of devices). The peak is a table value for known GPUs (dense, no sparsity). On CPU the
processes of one node share its cores, so the peak is the node's: a bf16/fp32 matmul rate measured
once, on all the cores this job may use, while no other rank computes, cached in ``run_dir``; each
process counts as ``1 / local_world_size`` of it. One process with 2 threads and two processes
with 1 thread each on the same 2 cores are then measured against the same total peak, whichever
launcher started them.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import torch

from runtime.files import atomic_write_text

# Dense peak FLOP/s per GPU (vendor datasheets, SXM parts; bf16 tensor core and fp32 TF32-off).
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989e12, "fp32": 67e12},
    "H100": {"bf16": 989e12, "fp32": 67e12},
    "A100": {"bf16": 312e12, "fp32": 19.5e12},
}


def gpu_peak_flops(device_name: str, precision: str) -> float | None:
    """Table peak for a GPU name such as ``"NVIDIA H100 80GB HBM3"``; ``None`` when unknown."""
    for key, row in GPU_PEAK_FLOPS.items():
        if key in device_name.upper():
            return row[precision]
    return None


def measure_matmul_flops(
    dtype: torch.dtype, device: torch.device, seconds: float = 1.0, n: int = 1024, repeats: int = 5
) -> float:
    """FLOP/s of repeated ``n x n`` matmuls on ``device`` in ``dtype`` (2 n^3 FLOPs each): the best of
    ``repeats`` windows of ``seconds / repeats`` (a peak: a window a neighbour slowed is not it)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 0.25:  # warm-up: thread pools (new ones start slow), kernel choice
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    best = 0.0
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while True:
            a @ b
            count += 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds / repeats:
                best = max(best, 2.0 * n**3 * count / elapsed)
                break
    return best


def node_cores() -> int:
    """The cores this process may run on (its CPU affinity: a SLURM allocation, a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def peak_flops(
    device: torch.device, precision: str, cache_dir: str | Path | None = None, local_world_size: int = 1
) -> tuple[float, str]:
    """Peak FLOP/s of one device for ``precision`` ("bf16" or "fp32") and where the figure came from.

    A known GPU gives its table value. Anything else is measured: on CPU the node's rate on all of
    ``node_cores()`` (torch's thread count raised to it for the measurement), of which each of the
    node's ``local_world_size`` processes counts as an equal share. Call it while no other process
    of the job computes (``runtime.train`` holds the other ranks at a barrier). The measurement is
    cached as ``cache_dir/peak_flops.json``, keyed by device, precision and cores, so a resumed run
    reports MFU against the same peak.
    """
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        table = gpu_peak_flops(name, precision)
        if table is not None:
            return table, f"table ({name})"
    share = max(1, local_world_size) if device.type == "cpu" else 1
    cores = node_cores() if device.type == "cpu" else torch.get_num_threads()
    key = f"{device.type}:{precision}:cores={cores}"
    where = f"on {cores} core(s), 1/{share} per process" if device.type == "cpu" else ""
    cache = Path(cache_dir) / "peak_flops.json" if cache_dir is not None else None
    cached: dict[str, float] = {}
    if cache is not None and cache.is_file():
        cached = json.loads(cache.read_text())
        if key in cached:
            return float(cached[key]) / share, f"measured matmul {where}, cached ({cache})".replace("  ", " ")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cores)
    try:
        value = measure_matmul_flops(dtype, device)
    finally:
        torch.set_num_threads(threads)
    if cache is not None:
        atomic_write_text(cache, json.dumps({**cached, key: value}, indent=1))
    return value / share, f"measured matmul {where}".strip()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if os.uname().sysname == "Darwin" else rss * 1024)


class Throughput:
    """Samples/s, tokens/s and MFU over the steps since the last ``read()``.

    ``samples_per_step`` is the global batch (micro-batch x accumulation x world size);
    ``peak`` is one device's FLOP/s and ``world_size`` the number of devices.
    """

    def __init__(
        self,
        samples_per_step: int,
        tokens_per_sample: int,
        flops_per_sample: float,
        peak: float,
        world_size: int,
    ) -> None:
        self.samples_per_step, self.tokens_per_sample = samples_per_step, tokens_per_sample
        self.flops_per_sample, self.peak, self.world_size = flops_per_sample, peak, world_size
        self._steps, self._seconds = 0, 0.0

    def add(self, seconds: float) -> None:
        """Count one step that took ``seconds`` of wall time."""
        self._steps += 1
        self._seconds += seconds

    def read(self, task: Any = None) -> dict[str, float]:
        """``{"step_time_s", "samples_per_s", "tokens_per_s", "mfu"}`` (mfu a fraction 0..1), then reset.

        With ``task``, its ``tokens_per_sample()`` and ``flops_per_sample()`` are asked again first:
        a task whose clips vary in length (short clips) reports what it really trained on."""
        if task is not None:
            self.tokens_per_sample, self.flops_per_sample = task.tokens_per_sample(), task.flops_per_sample()
        if self._steps == 0 or self._seconds <= 0:
            return {}
        step_time = self._seconds / self._steps
        samples = self.samples_per_step / step_time
        out = {
            "step_time_s": step_time,
            "samples_per_s": samples,
            "tokens_per_s": samples * self.tokens_per_sample,
            "mfu": samples * self.flops_per_sample / (self.peak * self.world_size),
        }
        self._steps, self._seconds = 0, 0.0
        return out
