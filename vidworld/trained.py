"""Load what a training run produced: its task's model with the exported weights, for inference.

A finished run folder holds ``config.yaml`` (the resolved training config) and
``model.safetensors`` (consolidated weights, written by ``vidworld.train`` at the end or by
``vidworld.checkpoint.export_weights``). Rollouts, evaluation and notebooks load models only
through ``load_trained_model``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from vidworld.train import TrainConfig, load_train_config, resolve_task_class

WEIGHTS = "model.safetensors"


def trained_step(run_dir: str | os.PathLike) -> int | None:
    """The training step of a run folder's exported weights, or ``None`` when there are none."""
    from safetensors import safe_open

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None


def load_trained_model(
    run_dir: str | os.PathLike, device: torch.device | str = "cpu"
) -> tuple[nn.Module, TrainConfig]:
    """``(model in eval mode on device, the run's TrainConfig)`` from a finished run folder."""
    run = Path(run_dir)
    weights, config = run / WEIGHTS, run / "config.yaml"
    if not config.is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{run} is not a finished training run: it needs config.yaml and {WEIGHTS} (written when "
            f"training reaches trainer.max_steps); finish it with `vidworld train {config}`"
        )
    cfg = load_train_config(config)
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    model = task.build_model()
    state = load_file(str(weights), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit the model of {config}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.to(device).eval(), cfg
