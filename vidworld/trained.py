"""What a training run has produced, for the stages after it: the step of its exported weights.

Loading a run's model is ``vidworld.train.load_trained``; ``load_trained_model`` here is the
same call in the ``(model, config)`` order the evaluation code uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vidworld.train import TrainConfig, load_trained

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
    """``(model in eval mode on device, the run's TrainConfig)``; see ``vidworld.train.load_trained``."""
    cfg, _, model = load_trained(run_dir, device)
    return model, cfg
