"""What a training run has produced, for the stages after it: the step of its exported weights,
whether the run is finished (``is_complete``), and the one way to load its model (``load_trained``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtime import checkpoint as ckpt
from runtime.checkpoint import WEIGHTS
from runtime.parallelize import apply_attention_backend, build_on_meta, materialize
from runtime.train import TrainConfig, load_train_config, resolve_task_class


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
    """Whether the run of the training config ``cfg`` is finished: its exported weights are of step
    ``trainer.max_steps``."""
    return trained_step(cfg.run_dir) == cfg.trainer.max_steps


def load_trained(
    run_dir: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[Any, Any, nn.Module]:
    """A finished (or stopped) run as ``(config, task, model)``, the model in eval mode on ``device``.

    Weights come from ``run_dir/model.safetensors``, or, when the run has none yet (preempted,
    still training), from its newest complete checkpoint's ``model.safetensors``. Never from
    DeepSpeed's pickled files: a checkpoint without safetensors fails with
    ``checkpoint.WeightsNotExported``, naming ``vidworld convert-checkpoint``. For inference and
    evaluation code (rollouts, the tokenizer in the dynamics stage); no DeepSpeed needed.
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
    cfg = load_train_config(run_dir / "config.yaml")
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    # The path training takes: built on meta, given memory and initialised on the device (which
    # also sets the buffers a state dict does not hold), attention resolved for the device.
    model = materialize(build_on_meta(task), device)
    apply_attention_backend(model, device)
    model.load_state_dict(weights, strict=True)
    return cfg, task, model.eval()
