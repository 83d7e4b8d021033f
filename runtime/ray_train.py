"""Run the shared training runtime on a Ray cluster with Ray Train (``launcher.kind: ray``).

``vidworld train CONFIG launcher.kind=ray launcher.num_workers=N`` lands in ``launch``: it joins
the cluster at ``RAY_ADDRESS`` (or starts a local one, ``runtime.cluster.init_ray``) and starts a
``TorchTrainer`` with N workers. Ray Train creates the workers' ``torch.distributed`` group
(gloo on CPU, NCCL on GPU) and sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE``; each worker then runs
the very loop a ``torchrun`` or ``srun`` process runs (``runtime.train.train``), whose
``init_distributed()`` adopts that group. Rank 0's exit code is the command's exit code.

Failures and preemption, as under SLURM:
- A worker that dies (its node lost, an OOM kill) or raises fails the attempt; Ray Train starts the
  workers again up to ``launcher.max_failures`` times, and each attempt resumes from run_dir's newest
  checkpoint (``runtime.train``). With the default 0 the run fails at once and the error is printed.
- SIGTERM or SIGUSR1 to this driver (``ray job stop``, a scheduler's warning) writes
  ``stop_file(run_dir)``; the workers, whose loop runs in a thread that cannot take signals, see it
  at the next step boundary, save and return 75, and the command exits 75 ("rerun to resume").

Paths: a relative ``run_dir`` is made absolute against the submitting process's folder, so every
worker writes the same run folder; on a multi-node cluster it must be on storage that every node
mounts at the same path. Ray Train's own bookkeeping goes to ``run_dir/ray``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from runtime.cluster import init_ray
from runtime.config import ConfigError

RAY_STORAGE_SUBDIR = "ray"  # Ray Train's run records, inside run_dir
STOP_FILE = ".stop_requested"  # in run_dir: the driver's "save and stop" to its workers


def stop_file(run_dir: str | Path) -> Path:
    """Where the driver asks its workers to save and stop (run_dir is on storage every node shares)."""
    return Path(run_dir) / STOP_FILE


class _ForwardStop:
    """In the driver's main thread: SIGTERM/SIGUSR1 write ``stop_file`` instead of killing the driver
    (which would leave the workers training unsaved). Handlers are restored, and the file removed, on
    exit; a request left from an earlier run is removed on entry, so it never stops this one."""

    def __init__(self, path: Path) -> None:
        self.path, self._previous = path, {}

    def _handle(self, signum: int, frame: Any) -> None:
        from runtime.files import atomic_write_text

        if not self.path.exists():
            print(f"vidworld train (ray): {signal.Signals(signum).name}: asking the workers to save and stop",
                  file=sys.stderr, flush=True)
            atomic_write_text(self.path, f"{signal.Signals(signum).name}\n")

    def __enter__(self) -> _ForwardStop:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self.path.unlink(missing_ok=True)


def _worker_loop(config: dict[str, Any]) -> int:
    """One Ray Train worker: train with the resolved config; returns this rank's exit code.

    It is ``run_training`` minus the loading: the driver already resolved the file and overrides,
    and the config file need not exist on the worker's node.
    """
    from runtime.train import train

    return train(config["cfg"])


def _use_gpu(requested: bool) -> bool:
    """GPU workers only when asked for and the cluster has GPUs (CPU workers otherwise, with a note)."""
    import ray

    if not requested:
        return False
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        print("vidworld train (ray): launcher.use_gpu=true but the Ray cluster has no GPUs; "
              "training on CPU workers", file=sys.stderr, flush=True)
        return False
    return True


def _worker_errors(error: BaseException) -> str:
    """The workers' own messages from a Ray Train failure (one line per failed rank when known)."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        return "\n".join(f"  rank {rank}: {type(e).__name__}: {e}" for rank, e in sorted(failures.items()))
    return f"  {type(error).__name__}: {error}"


def launch(config_path: str, overrides: list[str], cfg: Any) -> int:
    """Train ``cfg`` (already loaded from ``config_path`` + ``overrides``, which here only name the
    source in messages) on ``cfg.launcher.num_workers`` Ray Train workers.

    Returns rank 0's exit code (0 done, 75 preempted and saved), or 1 when a worker failed (its
    error is printed to stderr). Raises ``ConfigError`` for a bad ``launcher`` section.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    num_workers = int(cfg.launcher.num_workers)
    if num_workers < 1:
        raise ConfigError(f"{config_path}: launcher.num_workers must be >= 1 (one Ray Train worker per "
                          f"training process), got {num_workers}")
    run_dir = Path(cfg.run_dir).expanduser().absolute()
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir))

    started_here = not ray.is_initialized()  # a caller's own Ray session is left connected
    init_ray()
    try:
        use_gpu = _use_gpu(bool(cfg.launcher.use_gpu))
        cpus = float(ray.cluster_resources().get("CPU", 0))
        if cpus < num_workers:
            # Ray would wait for resources that never come (unless an autoscaler adds nodes): say so.
            print(f"vidworld train (ray): launcher.num_workers={num_workers} needs {num_workers} CPUs, the "
                  f"cluster has {cpus:g} now; waiting for the cluster to grow", file=sys.stderr, flush=True)
        # DeepSpeed reads DS_ACCELERATOR at import: CPU workers must be told before they import it.
        # Ray Train's print patch would log every line of the runtime twice; plain stdout is enough.
        env_vars = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", **({} if use_gpu else {"DS_ACCELERATOR": "cpu"})}
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"cfg": cfg},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo",
                                     timeout_s=max(1, math.ceil(cfg.trainer.collective_timeout_s))),
            scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
            run_config=RunConfig(
                name=run_dir.name or "train",
                storage_path=str(run_dir / RAY_STORAGE_SUBDIR),
                failure_config=FailureConfig(max_failures=int(cfg.launcher.max_failures)),
                worker_runtime_env={"env_vars": env_vars},
            ),
        )
        print(f"vidworld train (ray): {num_workers} {'GPU' if use_gpu else 'CPU'} worker(s) on "
              f"{os.environ.get('RAY_ADDRESS') or 'a local Ray cluster'}; run_dir {run_dir}", flush=True)
        try:
            with _ForwardStop(stop_file(run_dir)):
                result = trainer.fit()
            error = result.error  # older Ray Train versions return the error instead of raising it
        except TrainingFailedError as e:
            error = e
    finally:
        # Disconnect (and stop a cluster started here) first, so Ray's forwarded worker logs are
        # out before the summary below: the summary is the last thing a user reads.
        if started_here:
            ray.shutdown()
    if error is not None:
        print(f"vidworld train (ray): training failed on the workers:\n{_worker_errors(error)}",
              file=sys.stderr, flush=True)
        return 1
    code = int(result.return_value or 0)
    print(f"vidworld train (ray): workers finished, exit code {code}", flush=True)
    return code
