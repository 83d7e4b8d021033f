"""What a training run has produced, for the stages after it: the step of its exported weights,
whether the run is finished on the data as it is now (``is_complete``), what an evaluation of it is
of (``run_identity``), and the one way to load its model (``load_trained``).

Loading a run builds the model of the task its ``config.yaml`` names. A run folder may come from
anyone, and a task named ``module:Class`` would import (run) that module: only the tasks of
``runtime.task.TASKS`` are loaded unless the caller passes ``trust=True``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime import checkpoint as ckpt
from runtime.checkpoint import WEIGHTS
from runtime.config import load_yaml
from runtime.parallelize import apply_attention_backend, build_on_meta, materialize
from runtime.task import TASKS
from runtime.train import TrainConfig, load_train_config, resolve_task_class


class UntrustedTask(ValueError):
    """A run folder names a task outside ``runtime.task.TASKS``; loading it would import its module."""


def trained_step(run_dir: str | os.PathLike) -> int | None:
    """The training step of a run folder's exported weights, or ``None`` when there are none."""
    from safetensors import safe_open

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


def is_complete(cfg: TrainConfig) -> bool:
    """Whether the run of the training config ``cfg`` is finished on the data ``cfg`` names as it is
    now: its exported weights are of step ``trainer.max_steps``, and the fingerprint of the data it
    learnt from (``runtime.checkpoint.DATA_RECORD``) is that of ``data.shards`` now (their content:
    shards curated or tokenized again make it stale, and the next ``vidworld train`` starts over).
    A run of an older version, which recorded no data, is judged by its step alone."""
    if trained_step(cfg.run_dir) != cfg.trainer.max_steps:
        return False
    record = ckpt.read_data_record(cfg.run_dir)
    if record is None:
        return True
    try:
        return record.get("fingerprint") == ckpt.data_fingerprint(cfg.data)
    except OSError:  # the data is gone: nothing says the model is of it
        return False


def run_identity(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """What an evaluation of the run ``run_dir`` is of, for the evaluation's own completeness check:
    the step of its exported weights and its data record's fingerprint and start time (a run trained
    again, on new data or from scratch, has another). ``None`` without exported weights."""
    step = trained_step(run_dir)
    if step is None:
        return None
    record = ckpt.read_data_record(run_dir) or {}
    return {"step": step, "data": record.get("fingerprint"), "started": record.get("started")}


def check_task_trusted(run_dir: str | os.PathLike, trust: bool = False) -> None:
    """Raise ``UntrustedTask`` when ``run_dir/config.yaml`` names a task that is not one of
    ``runtime.task.TASKS`` (by name or by its ``module:Class``) and ``trust`` is false."""
    path = Path(run_dir) / "config.yaml"
    task = str(load_yaml(path).get("task", ""))
    if trust or task in TASKS or task in TASKS.values():
        return
    raise UntrustedTask(
        f"{path} names task {task!r}, which is not one of vidworld's tasks {sorted(TASKS)}: loading the "
        f"run would import and run the module {task.split(':')[0]!r}. If you trust that code, load it from "
        "Python with runtime.trained.load_trained(run_dir, trust=True), or add the task to runtime.task.TASKS"
    )


def load_trained(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False
) -> tuple[Any, Any, nn.Module]:
    """A finished (or stopped) run as ``(config, task, model)``, the model in eval mode on ``device``.

    Weights come from ``run_dir/model.safetensors``, or, when the run has none yet (preempted,
    still training), from its newest complete checkpoint's ``model.safetensors``. Never from
    DeepSpeed's pickled files: a checkpoint without safetensors fails with
    ``checkpoint.WeightsNotExported``, naming ``vidworld convert-checkpoint``. For inference and
    evaluation code (rollouts, the tokenizer in the dynamics stage); no DeepSpeed needed.

    Only a run of a task of ``runtime.task.TASKS`` is loaded; another (``module:Class``) raises
    ``UntrustedTask`` before anything is imported, unless ``trust=True``.
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    # Weights first: a run without loadable safetensors fails before anything is built.
    exported = run_dir / WEIGHTS
    if exported.is_file():
        weights = load_file(exported, device=str(device))
    else:
        latest = ckpt.find_latest(run_dir)
        if latest is None:
            raise FileNotFoundError(
                f"{run_dir} has neither model.safetensors nor a complete checkpoint; train it first"
            )
        weights = ckpt.load_checkpoint_weights(latest, device=str(device))
    check_task_trusted(run_dir, trust)  # before load_train_config, which imports the task's module
    cfg = load_train_config(run_dir / "config.yaml")
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    # The path training takes: built on meta, given memory and initialised on the device (which
    # also sets the buffers a state dict does not hold), attention resolved for the device.
    model = materialize(build_on_meta(task), device)
    apply_attention_backend(model, device)
    model.load_state_dict(weights, strict=True)
    return cfg, task, model.eval()
