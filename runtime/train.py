"""The shared training runtime: ``vidworld train CONFIG key=value ...``.

One loop for every model. The task (``runtime.task.Task``) builds the model, gives batches and
computes the loss; this module owns the rest: distributed init, the model's placement (built on
the meta device, blocks checkpointed and compiled, materialised and initialised: runtime.parallelize),
the DeepSpeed engine (ZeRO 0-3, bf16/fp32, accumulation, clipping, AdamW, warmup + cosine),
checkpoint and resume, preemption, non-finite steps, metrics and logging.

Launchers all reach ``run_training`` (single process, ``torchrun --nproc_per_node=N $(which
vidworld) train CONFIG``, ``srun``, a Ray Train worker). Rerunning the same command with the same
``run_dir`` resumes from its newest complete checkpoint.

Run folder (``run_dir``)::

    config.yaml          the resolved config (also inside every checkpoint)
    data.json            the fingerprint of the data (data.shards) the checkpoints learnt from: when
                         it changed, the run's old outputs move to stale/STAMP/ and it starts at step 0
    checkpoints/         see runtime.checkpoint (latest, step_NNNNNNNN/, COMPLETE markers)
    metrics.jsonl        one JSON row per logged step (names in runtime.tracking)
    media/               the task's eval videos (mp4)
    peak_flops.json      the measured CPU peak behind MFU
    wandb/, wandb_run_id.txt
    model.safetensors    consolidated weights at the end (``runtime.trained.load_trained(run_dir)``)

Exit codes: 0 done; 75 (``PREEMPTED_EXIT_CODE``) saved after SIGTERM/SIGUSR1, rerun to resume
(the SLURM script requeues on it; more signals while it saves and exits change nothing); 1 stopped
after ``trainer.max_bad_steps`` non-finite steps in a row, or a resume that does not add up
(``ResumeMismatch``); 73 (``BUSY_EXIT_CODE``) another process is training into ``run_dir``.

Safety: one writer per ``run_dir`` (rank 0 holds ``runtime.files.folder_lock`` for the whole run;
every rank stops with the holder's host and pid when it cannot). Weights leave a checkpoint as
safetensors only (``model.safetensors`` in each checkpoint, gathered in memory). DeepSpeed's own
files are pickles and are read back only here, by the run resuming itself from its own locked
``run_dir`` (DeepSpeed's loader calls ``torch.load(weights_only=False)``; there is no switch).
Loud checks (``runtime.health``) print a warning and log ``warn/<name>`` = 1: a flat loss, weights
that differ between ranks, a throughput drop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from runtime import checkpoint as ckpt
from runtime import portable
from runtime.config import ConfigError, load_yaml, merge_into, parse_overrides, save_config, to_object
from runtime.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from runtime.files import FolderBusy, folder_lock, require_local_folder
from runtime.health import FlatLoss, ThroughputDrop
from runtime.metrics import Throughput, peak_flops, peak_memory_bytes
from runtime.parallelize import parallelize
from runtime.progress import Progress
from runtime.ray_train import stop_file
from runtime.task import TASKS, Task
from runtime.tracking import Tracker, WandbConfig
from runtime.watchdog import RankWatch, default_store

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; slurm/ requeues the job on it
DIVERGED_EXIT_CODE = 1
BUSY_EXIT_CODE = 73  # EX_CANTCREAT: another process is writing run_dir; not requeued


@dataclasses.dataclass
class TrainerConfig:
    """The ``trainer:`` section. Defaults are the small single-process CPU case."""

    max_steps: int = 100
    micro_batch_size: int = 4  # per rank; the one micro-batch key (fills the data section's batch_size)
    grad_accum: int = 1
    zero_stage: int = 0  # 0..3
    offload_optimizer: bool = False  # ZeRO 1-3: optimizer state in CPU memory (DeepSpeedCPUAdam)
    precision: str = "fp32"  # bf16 | fp32
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = 10
    weight_decay: float = 0.1
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # 0 disables clipping
    activation_checkpointing: bool = False
    checkpoint_blocks: list[int] = dataclasses.field(default_factory=list)  # block indices; empty = all
    compile: bool = False  # torch.compile each of the task's blocks (runtime.parallelize)
    save_every: int = 1000  # steps; a checkpoint is also written at the end and on preemption
    keep_last: int = 3  # complete checkpoints kept
    # Each checkpoint also holds AdamW's moments as optimizer.safetensors (rank 0 gathers them), so a
    # run resumes on another number of processes or ZeRO stage (runtime.portable). Off: resume only
    # as saved; saves then skip that gather and ~2x the model's fp32 size on disk.
    portable_checkpoints: bool = True
    export_weights: bool = True  # run_dir/model.safetensors at the end
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # steps between task.eval_media calls (metrics + media to W&B); 0 = never
    progress_interval: float = 30.0  # seconds between progress lines (with ETA)
    max_bad_steps: int = 5  # non-finite steps in a row that stop the run
    # No silent hangs (runtime.watchdog): a collective that waits longer than this for a hung or dead
    # rank fails, and the message names the rank; torch's own default is 10 minutes too.
    collective_timeout_s: float = 600.0
    # A preemption signal that finds this rank still inside a step this long after it arrived (blocked
    # in a collective by a hung rank) exits 75 without saving; the rerun resumes from the last
    # checkpoint. Keep it above the slowest step and below the scheduler's warning (120 s); 0 = off.
    preempt_grace_s: float = 60.0
    # Loud checks (runtime.health): a warning in the log and warn/<name> = 1 in the metrics.
    flat_loss_window: int = 200  # steps the loss must stay within flat_loss_rel_tol to warn; 0 = off
    flat_loss_rel_tol: float = 1e-4  # relative to the mean loss over the window
    replica_check_every: int = 100  # steps between comparing the replicated weights over ranks; 0 = off
    replica_check_tol: float = 1e-9  # relative spread of the ranks' weight checksums that warns
    throughput_drop: float = 0.5  # warn when a step's rate falls below this fraction of its median; 0 = off
    # The memory plan (runtime.memory) before anything is built. memory_check: error = refuse a run whose
    # plan exceeds the device, warn = print and go on, off = no plan; auto = error on a GPU, off on CPU
    # (error/warn there check the host's RAM over its ranks). dry_run: print the plan, stop (exit 0).
    memory_check: str = "auto"  # auto | error | warn | off
    dry_run: bool = False
    debug_nan_steps: list[int] = dataclasses.field(default_factory=list)  # test hook: NaN loss at these steps
    debug_desync_steps: list[int] = dataclasses.field(
        default_factory=list
    )  # test hook: last rank nudges a weight


@dataclasses.dataclass
class LauncherConfig:
    """The ``launcher:`` section: ``local`` trains in this process (or under torchrun/srun),
    ``ray`` hands the same config to Ray Train (``runtime.ray_train.launch``)."""

    kind: str = "local"  # local | ray
    num_workers: int = 2
    use_gpu: bool = False
    # ray: times Ray Train restarts the workers after one dies (a lost node, an OOM kill); each restart
    # resumes from run_dir's newest checkpoint. -1: without limit. (SLURM requeues on exit 75 instead.)
    max_failures: int = 0


@dataclasses.dataclass
class TrainConfig:
    """A whole training config. ``model`` is the task's ``config_class`` and ``data`` its
    ``data_class`` (checked once the task is known; a task without ``data_class`` takes no data section)."""

    run_dir: str = "???"
    task: str = "???"  # a key of runtime.task.TASKS or "module:Class"
    model: Any = dataclasses.field(default_factory=dict)
    data: Any = dataclasses.field(default_factory=dict)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)
    launcher: LauncherConfig = dataclasses.field(default_factory=LauncherConfig)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; the message names the step and what to try."""


class ResumeMismatch(RuntimeError):
    """The resumed state disagrees with the checkpoints on disk (e.g. step 0 beside a complete one)."""


# ---------------------------------------------------------------------------------------------------
# Config


def resolve_task_class(name: str) -> type:
    """``"reference"`` (a key of ``runtime.task.TASKS``) or ``"module:Class"`` -> the class."""
    target = TASKS.get(name, name)
    if ":" not in target:
        raise ConfigError(f"task '{name}' is not one of {sorted(TASKS)} and not of the form module:Class")
    module, cls_name = target.split(":", 1)
    try:
        cls = getattr(importlib.import_module(module), cls_name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"task '{name}' ({target}) cannot be imported: {e}") from e
    required = [m for m in dir(Task) if not m.startswith("_") and callable(getattr(Task, m))]
    missing = [m for m in required if not callable(getattr(cls, m, None))]
    if not dataclasses.is_dataclass(getattr(cls, "config_class", None)):
        missing.insert(0, "config_class (a dataclass)")
    if missing:
        raise ConfigError(f"task '{name}' ({target}) lacks {missing} of runtime.task.Task; add them")
    return cls


def load_train_config(
    config_path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()
) -> TrainConfig:
    """YAML + overrides -> ``TrainConfig`` with ``model`` as the task's config dataclass.

    Unknown keys and wrong types fail with a ``ConfigError`` naming the key (``model.width``,
    ``trainer.max_step``) and the source (the file or "command line").
    """
    layers: list[tuple[str, Any]] = []
    if config_path is not None:
        layers.append((str(config_path), load_yaml(config_path)))
    if overrides:
        layers.append(("command line", parse_overrides(overrides)))
    # First pass: everything but the model section, to learn the task.
    first = merge_into(TrainConfig, *layers)
    if OmegaConf.is_missing(first, "task"):
        raise ConfigError(
            f"{config_path or 'the defaults'}: required config key 'task' has no value; set it to one of "
            f"{sorted(TASKS)} or module:Class"
        )
    task_cls = resolve_task_class(str(first.task))
    micro = OmegaConf.select(first, "trainer.micro_batch_size")
    for source, layer in layers:
        # A resolved config (a run's config.yaml) carries the filled-in value: only another one is wrong.
        if OmegaConf.select(OmegaConf.create(layer), "data.batch_size") not in (None, micro):
            raise ConfigError(
                f"{source}: data.batch_size is not a training key; the micro-batch each rank loads is "
                "trainer.micro_batch_size (the data section's batch_size is filled from it): set that instead"
            )
    base = OmegaConf.structured(TrainConfig)
    base.model = OmegaConf.structured(task_cls.config_class)
    data_class = getattr(task_cls, "data_class", None)
    no_data = OmegaConf.create({}, flags={"struct": True})  # a task without data_class takes no data keys
    base.data = OmegaConf.structured(data_class) if data_class is not None else no_data
    if data_class is not None and "batch_size" in base.data:
        base.data.batch_size = OmegaConf.select(first, "trainer.micro_batch_size")
    cfg = merge_into(base, *layers)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"{config_path or 'the defaults'}: required config key(s) {missing} have no value; set them, "
            f"e.g. {missing[0]}=..."
        )
    out: TrainConfig = to_object(cfg, str(config_path or "the defaults"))  # oc.env values stay unwritten
    _check(out)
    return out


def _check(cfg: TrainConfig) -> None:
    try:
        require_local_folder(cfg.run_dir, "run_dir")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    t = cfg.trainer
    if t.precision not in ("bf16", "fp32"):
        raise ConfigError(f"trainer.precision must be bf16 or fp32, got {t.precision!r}")
    if t.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"trainer.zero_stage must be 0, 1, 2 or 3, got {t.zero_stage}")
    if t.offload_optimizer and t.zero_stage == 0:
        raise ConfigError("trainer.offload_optimizer needs trainer.zero_stage >= 1")
    for key in ("max_steps", "micro_batch_size", "grad_accum", "save_every", "keep_last", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(t, key)}")
    for key in ("flat_loss_window", "flat_loss_rel_tol", "replica_check_every", "replica_check_tol"):
        if getattr(t, key) < 0:
            raise ConfigError(f"trainer.{key} must be >= 0 (0 turns the check off), got {getattr(t, key)}")
    if not 0 <= t.throughput_drop < 1:
        raise ConfigError(f"trainer.throughput_drop must be in [0, 1) (0 = off), got {t.throughput_drop}")
    if cfg.launcher.kind not in ("local", "ray"):
        raise ConfigError(f"launcher.kind must be local or ray, got {cfg.launcher.kind!r}")
    if cfg.launcher.max_failures < -1:
        raise ConfigError(
            f"launcher.max_failures must be -1 (no limit), 0 or more, got {cfg.launcher.max_failures}"
        )
    if len(t.betas) != 2:
        raise ConfigError(f"trainer.betas must hold two numbers, got {t.betas}")
    if t.memory_check not in ("auto", "error", "warn", "off"):
        raise ConfigError(f"trainer.memory_check must be auto, error, warn or off, got {t.memory_check!r}")


# ---------------------------------------------------------------------------------------------------
# Engine


def lr_lambda(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier at optimizer step ``step`` (0-based): linear warmup, then cosine to ``min_lr_ratio``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def bucket_values(trainable: int) -> int:
    """DeepSpeed's gradient reduce (and stage 1-2 all-gather) bucket, in values: its default of 5e8,
    or the model's trainable size when that is smaller (at least 1e6). DeepSpeed allocates the whole
    bucket whatever the model's size (1.9 GiB per rank in bf16 with overlap_comm); a bucket as large
    as the model already reduces all gradients at once, so a larger one only costs memory."""
    return int(min(5e8, max(trainable, 1e6)))


def deepspeed_config(t: TrainerConfig, world_size: int, trainable: int | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON config for a ``trainer:`` section; ``trainable`` (the model's trainable
    parameter count) sizes the ZeRO buckets (``bucket_values``)."""
    zero: dict[str, Any] = {"stage": t.zero_stage}
    if trainable is not None and t.zero_stage >= 1:
        zero["reduce_bucket_size"] = bucket_values(trainable)
        if t.zero_stage < 3:
            zero["allgather_bucket_size"] = bucket_values(trainable)
    if t.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_batch_size": t.micro_batch_size * t.grad_accum * world_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": t.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": t.lr,
                "betas": list(t.betas),
                "eps": 1e-8,
                "weight_decay": t.weight_decay,
                # torch's AdamW unless offloaded (then DeepSpeedCPUAdam): no extra op to build.
                "torch_adam": not t.offload_optimizer,
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "steps_per_print": 2**31 - 1,  # our Tracker logs; keep DeepSpeed's own progress lines off
        "wall_clock_breakdown": False,
    }


def partition_zero3(model: nn.Module, cfg: TrainConfig, info: DistInfo, trainable: int) -> nn.Module:
    """ZeRO-3: partition a model materialised in host memory over the ranks, one parameter at a time
    (``deepspeed.zero.Init(module=...)``), so the device never holds the whole model; buffers (small)
    move to ``info.device`` whole."""
    import deepspeed

    # zero.Init reads the world size from DeepSpeed's comm layer: hand it our process group first.
    deepspeed.init_distributed(dist_backend=info.backend, auto_mpi_discovery=False, dist_init_required=False)
    for buffer in model.buffers():
        buffer.data = buffer.data.to(info.device)
    config = deepspeed_config(cfg.trainer, info.world_size, trainable)
    deepspeed.zero.Init(module=model, config_dict_or_path=config)
    return model


def build_engine(model: nn.Module, cfg: TrainConfig, info: DistInfo):
    """The DeepSpeed engine for ``model`` (from ``runtime.parallelize``: on ``info.device``, or in host
    memory under ZeRO-3) with our LR schedule."""
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel("WARNING")
    t = cfg.trainer
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before ZeRO-3 partitions
    if t.zero_stage == 3:
        model = partition_zero3(model, cfg, info, trainable)
    schedule = functools.partial(
        lr_lambda, warmup_steps=t.warmup_steps, max_steps=t.max_steps, min_lr_ratio=t.min_lr_ratio
    )
    params = [p for p in model.parameters() if p.requires_grad]
    ds_config = deepspeed_config(t, info.world_size, trainable)
    optimizer = None
    if t.zero_stage == 0 and t.precision == "fp32":
        opt = ds_config.pop("optimizer")["params"]
        optimizer = FiniteAdamW(
            params, lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"], weight_decay=opt["weight_decay"]
        )
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=params,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        dist_init_required=False,
    )
    return engine


# ---------------------------------------------------------------------------------------------------
# Preemption


class PreemptionSignal:
    """SIGTERM/SIGUSR1 set a flag; the loop saves at the next step boundary and exits 75.

    Handlers are installed only in the main thread. A Ray Train worker runs the loop in another
    thread, where no handler can be installed: there the driver, which gets the signal, writes
    ``stop_file`` (``runtime.ray_train``), and ``requested`` turns true once it exists.

    ``close`` restores the handlers, unless a stop was requested: then the signals are ignored from
    ``close`` on, so that a repeated one (SLURM and schedulers repeat
    theirs) while the process closes W&B and exits does not kill it with 143 instead of the 75
    that says "requeue me". Ignored, not handled: Python resets its own handlers to the default
    while the interpreter shuts down, an ignored signal stays ignored.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, stop_file: Path | None = None) -> None:
        self._requested = False
        self.stop_file = stop_file
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        if not self._requested and self.stop_file is not None and self.stop_file.exists():
            self._requested = True
        return self._requested

    @requested.setter
    def requested(self, value: bool) -> None:
        self._requested = value

    def _handle(self, signum: int, frame: Any) -> None:
        self._requested = True

    def close(self) -> None:
        if self.requested:  # on the way out with 75
            for sig in self._previous:
                signal.signal(sig, signal.SIG_IGN)
            return
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    engine, cfg: TrainConfig, info: DistInfo, step: int, task: Any, counters: dict[str, int]
) -> Path:
    """Every rank: DeepSpeed's state and ours; rank 0 then marks it complete and moves ``latest``."""
    root = ckpt.checkpoint_root(cfg.run_dir)
    tag = ckpt.tag_for(step)
    engine.save_checkpoint(str(root), tag=tag, save_latest=False)
    ckpt_dir = root / tag
    state = {"step": step, "loader": task.loader_state(), "rng": ckpt.rng_state(), **counters}
    ckpt.save_runtime_state(ckpt_dir, info.rank, state)
    weights = full_weights(engine, keep=info.is_main)  # collective under ZeRO: every rank takes part
    if info.is_main:
        ckpt.save_weights(
            weights, ckpt.checkpoint_weights_path(ckpt_dir), {"step": str(step), "checkpoint": tag}
        )
    del weights
    moments = portable.gather(engine, keep=info.is_main) if cfg.trainer.portable_checkpoints else None
    if moments is not None and info.is_main:
        portable.save(ckpt_dir, *moments)
    del moments
    barrier()  # every rank's files are on disk before the checkpoint is declared complete
    if info.is_main:
        save_config(cfg, ckpt_dir / "config.yaml")
        ckpt.mark_complete(
            ckpt_dir,
            {
                "step": step,
                **layout(cfg.trainer, info.world_size),
                "task": cfg.task,
                "time": time.time(),
            },
        )
        ckpt.prune(cfg.run_dir, cfg.trainer.keep_last)
    barrier()
    return ckpt_dir


def full_weights(engine, keep: bool) -> dict[str, torch.Tensor]:
    """The model's whole state dict as CPU tensors, parameters in fp32 from the optimizer's master copy
    where it keeps one (ZeRO 1-3, bf16), gathered over the ranks one parameter at a time.

    Every rank must call it (under ZeRO each parameter is assembled collectively, in the same order
    everywhere); only where ``keep`` are the tensors kept (rank 0), the others get ``{}``.
    """
    module = engine.module
    masters = portable.State(engine)
    params = dict(module.named_parameters(remove_duplicate=False))
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}  # tied weights: gathered once
    for name, value in module.state_dict(keep_vars=True).items():
        param = params.get(name)
        if param is None:  # a buffer: whole on every rank, ZeRO-3 included
            if keep:
                out[name] = value.detach().to("cpu")
            continue
        if id(param) not in done:
            full = masters.get(param) if param.requires_grad else None
            done[id(param)] = (param if full is None else full).detach().to("cpu") if keep else param
        if keep:
            out[name] = done[id(param)]
    return out


class FiniteAdamW(torch.optim.AdamW):
    """AdamW that skips an update whose gradients are not all finite, for ZeRO stage 0 in fp32.

    DeepSpeed's ZeRO and bf16 optimizers already skip such updates; with stage 0 in fp32 it calls
    the client optimizer directly. Setting ``overflow`` is DeepSpeed's protocol for "step not
    applied": the engine then counts it in ``skipped_steps`` and holds the LR schedule back.
    """

    overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self.overflow = bool(grads) and not bool(
            torch.isfinite(torch.stack([torch.linalg.vector_norm(g) for g in grads])).all()
        )
        if self.overflow:
            return None
        return super().step(closure)


def _grad_norm_stage0(model: nn.Module) -> float:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def _grad_norm(engine, fallback: float | None) -> float:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return float("nan") if fallback is None else fallback
    return float(norm)


# ---------------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig) -> int:
    """Train ``cfg`` in this process (one rank of those the launcher started); returns the exit code."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed picks its accelerator at import
    info = init_distributed(cfg.trainer.collective_timeout_s)
    watch = RankWatch(
        info.rank,
        info.world_size,
        default_store(),
        preempt_grace_s=cfg.trainer.preempt_grace_s,
        exit_code=PREEMPTED_EXIT_CODE,
    )
    try:
        from runtime.memory import check_before_launch  # here: runtime.memory builds on this module

        if check_before_launch(cfg, info) is not None:  # trainer.dry_run: plan printed, nothing written
            return 0
        with hold_run_dir(Path(cfg.run_dir), info):
            code = _train(cfg, info, watch)
        if code == PREEMPTED_EXIT_CODE:
            # Leave together: srun --kill-on-bad-exit ends every task once one exits 75, and none may
            # be stopped while it still closes W&B or its run_dir lock.
            barrier()
        return code
    except FolderBusy as e:
        print(f"train: {e}", file=sys.stderr, flush=True)
        return BUSY_EXIT_CODE
    except ResumeMismatch as e:
        if info.is_main:
            print(f"train: stopped: {e}", file=sys.stderr, flush=True)
        return 1
    except Exception as e:
        if info.world_size > 1 and is_collective_error(e):
            first = (str(e).strip().splitlines() or [""])[0][:300]
            print(
                f"train: rank {info.rank}: a collective failed ({type(e).__name__}: {first}); "
                f"{watch.diagnose()}. trainer.collective_timeout_s={cfg.trainer.collective_timeout_s:g}",
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        watch.close()
        shutdown_distributed(info)


def is_collective_error(error: BaseException) -> bool:
    """An error from a collective or the process group (a timeout, a peer gone), not from the model."""
    if isinstance(error, torch.distributed.DistError):
        return True
    text = str(error).lower()
    return any(
        word in text
        for word in ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe")
    )


@contextlib.contextmanager
def hold_run_dir(run_dir: Path, info: DistInfo):
    """Rank 0 holds ``run_dir``'s writer lock for the block; when another process holds it, every rank
    raises ``FolderBusy`` (rank 0's names the holder's host and pid), before anything is written.

    The decision is all-reduced after ``init_distributed``, so it works the same under torchrun,
    srun and Ray Train, and no rank is left waiting in a collective for one that gave up."""
    with contextlib.ExitStack() as stack:
        busy = ""
        if info.is_main:
            try:
                stack.enter_context(folder_lock(run_dir, "vidworld train"))
            except FolderBusy as e:
                busy = str(e)
        if all_reduce_sum([1.0 if busy else 0.0], info.device)[0] > 0:
            raise FolderBusy(
                busy
                or f"rank 0 could not take the writer lock of {run_dir}: another process is training into "
                "it (rank 0's message names it); wait for it, stop it, or choose another run_dir"
            )
        yield


@dataclasses.dataclass
class StepResult:
    """One optimizer step, agreed over all ranks. ``loss`` is the mean over finite micro-batches."""

    loss: float
    bad: bool  # a non-finite loss or gradient somewhere: the update was skipped
    preempt: bool  # some rank got SIGTERM/SIGUSR1
    grad_norm: float
    extras: dict[str, float]  # the task's other loss-dict entries, averaged
    seconds: float
    last_batch: Any = None  # this rank's last micro-batch, for eval media


def train_step(
    engine, task: Any, batches: Any, t: TrainerConfig, step: int, info: DistInfo, preempt: bool
) -> StepResult:
    """Forward/backward ``t.grad_accum`` micro-batches and step the optimizer (``step`` is the 0-based
    index of this step). DeepSpeed skips the update when gradients are not finite."""
    t0 = time.perf_counter()
    stage0_fp32 = t.zero_stage == 0 and t.precision == "fp32"
    loss_sum, nonfinite, extras, own_norm = 0.0, 0.0, {}, None
    for _ in range(t.grad_accum):
        batch = next(batches)
        out = task.loss(engine, batch)
        loss = out["loss"]
        if step + 1 in t.debug_nan_steps:  # steps are numbered from 1, as logged
            loss = loss * float("nan")
        engine.backward(loss)
        if stage0_fp32 and engine.is_gradient_accumulation_boundary():
            own_norm = _grad_norm_stage0(engine.module)  # before DeepSpeed clips
        engine.step()
        value = float(loss.detach())
        nonfinite += 0.0 if math.isfinite(value) else 1.0
        loss_sum += value if math.isfinite(value) else 0.0
        for k, v in out.items():
            if k != "loss":
                extras[k] = extras.get(k, 0.0) + float(v)
    keys = sorted(extras)
    # One small all-reduce per step: every rank takes the same skip/stop decisions.
    agreed = all_reduce_sum(
        [loss_sum, nonfinite, float(preempt), 0.0 if engine.was_step_applied() else 1.0]
        + [extras[k] for k in keys],
        info.device,
    )
    n_micro = t.grad_accum * info.world_size
    return StepResult(
        loss=agreed[0] / (n_micro - agreed[1]) if agreed[1] < n_micro else float("nan"),
        bad=agreed[1] > 0 or agreed[3] > 0,
        preempt=agreed[2] > 0,
        grad_norm=_grad_norm(engine, own_norm),
        extras={k: agreed[4 + i] / n_micro for i, k in enumerate(keys)},
        seconds=time.perf_counter() - t0,
        last_batch=batch,
    )


def eval_media(engine, task: Any, batch: Any) -> dict[str, Any]:
    """``task.eval_media`` on every rank (ZeRO-3 gathers parameters collectively), in eval mode. The
    task gets the plain model (``engine.module``): it may call any of its methods, not only forward."""
    engine.eval()
    try:
        with torch.no_grad():
            return task.eval_media(engine.module, batch)
    finally:
        engine.train()


def layout(t: TrainerConfig, world_size: int) -> dict[str, Any]:
    """How a run cuts its training state: DeepSpeed's checkpoint files load back only into the same
    layout; any other resumes through ``runtime.portable``. Recorded in each checkpoint's COMPLETE."""
    return {
        "world_size": world_size,
        "zero_stage": t.zero_stage,
        "precision": t.precision,
        "offload_optimizer": t.offload_optimizer,
        "portable": t.portable_checkpoints,
        "global_batch": t.micro_batch_size * t.grad_accum * world_size,
    }


LAYOUT_KEYS = ("world_size", "zero_stage", "precision", "offload_optimizer")


def layout_change(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between a checkpoint's layout and this run's (``"world_size 2 -> 1, ..."``), or None.
    A key the checkpoint did not record (an older trainer's) counts as unchanged."""
    diffs = [f"{k} {saved[k]} -> {now[k]}" for k in LAYOUT_KEYS if k in saved and saved[k] != now[k]]
    return ", ".join(diffs) or None


def portable_problem(latest: Path, saved: dict[str, Any], change: str) -> str | None:
    """Why ``latest`` cannot resume in another layout (``change``), or None."""
    if not ckpt.checkpoint_weights_path(latest).is_file() or not saved.get("portable", False):
        as_saved = " ".join(
            f"trainer.{k}={saved[k]}" for k in ("zero_stage", "precision", "offload_optimizer") if k in saved
        )
        return (
            f"{latest} cannot resume in another layout ({change}): it was saved without "
            f"{portable.OPTIMIZER} (trainer.portable_checkpoints was off, or an older trainer), so its "
            f"optimizer state is only in DeepSpeed's files for that layout. Resume it as saved "
            f"({saved.get('world_size')} processes, {as_saved}), then save once with "
            f"trainer.portable_checkpoints=true; or start a new run_dir"
        )
    return None


def _resume(engine, run_dir: Path, info: DistInfo, t: TrainerConfig) -> dict[str, Any] | None:
    """Load the newest complete checkpoint into ``engine`` and restore RNG; its runtime state, or None.

    Saved in this run's layout (world size, ZeRO stage, precision, offload): DeepSpeed's own loader,
    which unpickles its files (``weights_only=False``, not configurable), so only this run's own
    checkpoints, in the ``run_dir`` it holds the lock of, are read this way. Saved in another layout:
    the safetensors files (``runtime.portable``), into the engine as built for this run."""
    latest = ckpt.find_latest(run_dir)  # every rank reads the same folder...
    seen = int(ckpt.read_meta(latest)["step"]) if latest is not None else 0
    hi, neg_lo = all_reduce_max([seen, -seen], info.device)
    if hi != -neg_lo:
        raise ResumeMismatch(
            f"the ranks see different checkpoints in {run_dir}/checkpoints (steps {-neg_lo:.0f} to {hi:.0f}; "
            f"rank {info.rank} sees {latest or 'none'}): run_dir must be on storage every node shares"
        )
    barrier()
    if info.is_main:
        ckpt.remove_incomplete(run_dir)  # ...then rank 0 clears cut-off writes
    state = None
    if latest is not None:
        saved = ckpt.read_meta(latest)
        now = layout(t, info.world_size)
        change = layout_change(saved, now)
        state = ckpt.load_runtime_state(latest, info.rank, info.world_size)
        problem = resume_problem(run_dir, latest, int(state["step"]))
        problem = problem or (portable_problem(latest, saved, change) if change else None)
        if all_reduce_sum([1.0 if problem else 0.0], info.device)[0] > 0:
            raise ResumeMismatch(problem or f"another rank found {latest} inconsistent (rank 0 says how)")
        if change is None:
            engine.load_checkpoint(str(latest.parent), tag=latest.name)
        else:
            portable.load(engine, ckpt.load_checkpoint_weights(latest), latest, info.rank)
        if state["rng"] is None:  # a rank the saved run did not have: its own stream, still reproducible
            ckpt.seed_everything(t.seed * 1_000_003 + int(state["step"]) * 1_009 + info.rank)
        else:
            ckpt.set_rng_state(state["rng"])
        if info.is_main:
            how = f" in another layout ({change})" if change else ""
            print(f"train: resumed from {latest} (step {state['step']}){how}", flush=True)
            if saved.get("global_batch", now["global_batch"]) != now["global_batch"]:
                print(
                    f"train: WARNING: the global batch changed from {saved['global_batch']} to "
                    f"{now['global_batch']} samples (micro_batch_size x grad_accum x processes); set "
                    "trainer.grad_accum to keep it, or expect the loss curve to bend",
                    flush=True,
                )
    barrier()
    return state


def resume_problem(run_dir: Path, latest: Path, step: int) -> str | None:
    """Why resuming at ``step`` from ``latest`` would be wrong, or ``None``.

    An error, not a warning: training on from step 0 beside a complete checkpoint would log steps
    1.. again over the run's history and, after ``keep_last`` saves, prune the good checkpoints.
    """
    saved = int(ckpt.read_meta(latest)["step"])
    if step == saved:
        return None
    start = "would start at step 0" if step == 0 else f"would resume at step {step}"
    return (
        f"this run {start} although {latest} is a complete checkpoint of step {saved} (its COMPLETE "
        f"record and its runtime state disagree); nothing was trained or deleted. Move that folder out "
        f"of {run_dir}/checkpoints to resume from the one before, or use a new run_dir"
    )


def replica_checksums(engine, info: DistInfo) -> list[float]:
    """Every rank: each rank's sum of |w| over the weights every rank holds a whole copy of (ZeRO
    0-2), in rank order. Ranks fed the same all-reduced gradients hold the same weights, so the sums
    agree to the last bit; a difference means some rank computed or applied another update."""
    own = float(sum(p.detach().double().abs().sum() for p in engine.module.parameters()))
    values = [0.0] * info.world_size
    values[info.rank] = own
    return all_reduce_sum(values, info.device)


def replica_warning(step: int, sums: list[float], tol: float) -> str | None:
    """The warning for ranks whose checksums spread more than ``tol`` (relative), else ``None``."""
    ref = sorted(sums)[len(sums) // 2]
    if max(sums) - min(sums) <= tol * max(abs(ref), 1e-12):
        return None
    odd = [r for r, v in enumerate(sums) if abs(v - ref) > tol * max(abs(ref), 1e-12)]
    if len(sums) == 2:
        odd = [0, 1]  # two ranks: no majority says which one is off
    return (
        f"step {step}: the weights differ between ranks (checksums {[f'{v:.12g}' for v in sums]}; rank(s) "
        f"{odd} differ from the median): their updates were not the same. Suspect a faulty device or "
        "node, or a nondeterministic op; compare the runs of those ranks' hosts"
    )


def _warn(tracker: Tracker, step: int, name: str, message: str | None) -> None:
    if message:
        print(f"train: WARNING: {message}", flush=True)
        tracker.log(step, {f"warn/{name}": 1.0}, console=False)


def _train(cfg: TrainConfig, info: DistInfo, watch: RankWatch) -> int:
    t = cfg.trainer
    # First, so that a SIGUSR1/SIGTERM during the slow start (engine build, resume) is a request to
    # stop at the first step boundary, not the signal's default action of killing the process.
    preempt = PreemptionSignal(stop_file(cfg.run_dir) if cfg.launcher.kind == "ray" else None)
    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        note = ckpt.begin_run(run_dir, cfg.data)  # checkpoints of other data are moved aside, never resumed
        if note:
            print(f"train: {note}", flush=True)
        save_config(cfg, run_dir / "config.yaml")
    barrier()  # every rank looks for checkpoints to resume only once rank 0 has set stale ones aside

    # Same seed on every rank: identical initial weights (DeepSpeed also broadcasts rank 0's).
    torch.manual_seed(t.seed)
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    # ZeRO-3 materialises in host memory: DeepSpeed then moves only each rank's shard to the device.
    model = parallelize(task, t, info.device, init_device="cpu" if t.zero_stage == 3 else info.device)
    engine = build_engine(model, cfg, info)

    state = _resume(engine, run_dir, info, t)
    step = int(state["step"]) if state else 0
    counters = {k: int(state.get(k, 0)) if state else 0 for k in ("skipped_steps", "bad_in_a_row")}
    batches = task.batches(info.rank, info.world_size, t.seed, state["loader"] if state else None)

    tracker = progress = throughput = None
    if info.is_main:
        peak, peak_source = peak_flops(
            info.device, t.precision, cache_dir=run_dir, local_world_size=info.local_world_size
        )
        print(
            f"train: peak {peak / 1e12:.3g} TFLOP/s per device ({peak_source}); {info.world_size} process(es)"
        )
        samples_per_step = t.micro_batch_size * t.grad_accum * info.world_size
        throughput = Throughput(
            samples_per_step, task.tokens_per_sample(), task.flops_per_sample(), peak, info.world_size
        )
        resolved = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
        tracker = Tracker(cfg.wandb, run_dir, resolved, t.max_steps)  # type: ignore[arg-type]
        progress = Progress(
            "train", total=t.max_steps, unit="steps", interval=t.progress_interval, start=step
        )
    barrier()  # the others wait, idle, while rank 0 measures the node's peak (runtime.metrics)
    flat_loss = FlatLoss(t.flat_loss_window, t.flat_loss_rel_tol)
    slow = ThroughputDrop(t.throughput_drop)
    # Under ZeRO-3 each rank holds only its shard: there is no replicated copy to compare.
    check_replicas = t.replica_check_every > 0 and info.world_size > 1 and t.zero_stage < 3

    exit_code = 1  # until the loop ends one of its expected ways
    try:
        while step < t.max_steps:
            result = train_step(engine, task, batches, t, step, info, preempt.requested)
            step += 1
            counters["skipped_steps"] += result.bad
            counters["bad_in_a_row"] = counters["bad_in_a_row"] + 1 if result.bad else 0

            if step in t.debug_desync_steps and info.rank == info.world_size - 1:
                with torch.no_grad():
                    next(engine.module.parameters()).data.view(-1)[0] += 1e-2
            if check_replicas and step % t.replica_check_every == 0:
                sums = replica_checksums(engine, info)
                if info.is_main:
                    _warn(tracker, step, "replica_mismatch", replica_warning(step, sums, t.replica_check_tol))

            if info.is_main:
                if not result.bad:
                    _warn(tracker, step, "flat_loss", flat_loss.update(step, result.loss))
                _warn(tracker, step, "throughput_drop", slow.update(step, result.seconds))
                throughput.add(result.seconds)
                progress.update(1)
                if result.bad or step % t.log_every == 0 or step == t.max_steps:
                    metrics = {
                        "train/loss": result.loss,
                        "train/lr": float(engine.get_lr()[0]),
                        "train/grad_norm": result.grad_norm,
                        "train/skipped_steps": float(counters["skipped_steps"]),
                        "train/nonfinite_step": float(result.bad),
                        "train/peak_mem_gib": peak_memory_bytes(info.device) / 2**30,
                        **{f"train/{k}": v for k, v in result.extras.items()},
                        **{f"train/{k}": v for k, v in throughput.read(task).items()},
                    }
                    tracker.log(step, metrics)
                    progress.set(loss=round(result.loss, 4))

            if t.eval_every and step % t.eval_every == 0:
                media = eval_media(engine, task, result.last_batch)
                if info.is_main:
                    tracker.log_media(step, media)

            if counters["bad_in_a_row"] >= t.max_bad_steps:
                raise TrainingDiverged(
                    f"step {step}: {counters['bad_in_a_row']} steps in a row had a non-finite loss or "
                    f"gradient ({counters['skipped_steps']} skipped in all). Try a lower trainer.lr (now "
                    f"{t.lr}), trainer.precision=fp32 (now {t.precision}), a smaller trainer.grad_clip (now "
                    f"{t.grad_clip}), or check the data; the last good checkpoint is in run_dir/checkpoints"
                )
            if result.preempt:
                watch.stand_down()  # taken at a step boundary: the save below is the answer
                # Every rank stops, also those the signal did not reach: all of them then ignore the
                # SIGTERM that srun sends the others once the first exits 75 (PreemptionSignal.close).
                preempt.requested = True
            if result.preempt or step % t.save_every == 0 or step == t.max_steps:
                saved = save_checkpoint(engine, cfg, info, step, task, counters)
                if info.is_main:
                    print(f"train: saved {saved}", flush=True)
            if result.preempt:
                if info.is_main:
                    print(f"train: preempted at step {step}; rerun the same command to resume", flush=True)
                exit_code = PREEMPTED_EXIT_CODE
                break
        else:
            if t.export_weights and info.is_main:
                out = ckpt.export_weights(ckpt.find_latest(run_dir), run_dir / ckpt.WEIGHTS)
                print(f"train: exported weights to {out}", flush=True)
            barrier()
            exit_code = 0
    except TrainingDiverged as e:
        if info.is_main:
            print(f"train: stopped: {e}", flush=True)
        exit_code = DIVERGED_EXIT_CODE
    finally:
        watch.stand_down()  # the loop is over: a late signal changes nothing (see PreemptionSignal)
        if info.is_main:
            progress.close()
            tracker.close(exit_code)
        preempt.close()  # after W&B's teardown, which may install handlers of its own
    return exit_code


# ---------------------------------------------------------------------------------------------------
# Entries


def run_training(config_path: str, overrides: list[str]) -> int:
    """Load the config and train in this process; the entry an srun task or torchrun rank calls."""
    return train(load_train_config(config_path, overrides))


__all__ = [
    "PREEMPTED_EXIT_CODE",
    "LauncherConfig",
    "TrainConfig",
    "TrainerConfig",
    "TrainingDiverged",
    "load_train_config",
    "run_training",
    "train",
]
