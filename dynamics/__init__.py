"""Dynamics: the action-conditioned world model over tokenizer latents.

Two heads on one frame-causal transformer backbone, both ``DynamicsHead`` subclasses:
``DiffusionDynamics`` (continuous latents ``[B, C, T, h, w]``, diffusion forcing) and
``MaskGITDynamics`` (discrete FSQ indices ``[B, T, h, w]``); a new head is one more subclass.
``build_dynamics(cfg)`` builds either one on the meta device and initialises it where it is placed
(the training runtime does the same itself, ``runtime.parallelize``).
"""

from __future__ import annotations

import torch

from dynamics.config import DynamicsConfig
from dynamics.diffusion import DiffusionDynamics
from dynamics.head import DynamicsHead
from dynamics.maskgit import MaskGITDynamics
from dynamics.transformer import DynamicsTransformer, KVCache

__all__ = [
    "DiffusionDynamics",
    "DynamicsConfig",
    "DynamicsHead",
    "DynamicsTransformer",
    "KVCache",
    "MaskGITDynamics",
    "build_dynamics",
    "dynamics_class",
]


def dynamics_class(cfg: DynamicsConfig) -> type[DynamicsHead]:
    """The head class ``cfg.head`` names."""
    return DiffusionDynamics if cfg.head == "diffusion" else MaskGITDynamics


def build_dynamics(cfg: DynamicsConfig, device: torch.device | str | None = "cpu") -> DynamicsHead:
    """Build the model on the meta device, then materialise it on ``device`` and ``init_weights()``.

    ``device=None`` leaves it on meta (for counting parameters or planning a layout).
    """
    with torch.device("meta"):
        model = dynamics_class(cfg)(cfg)
    if device is not None:
        model.to_empty(device=device)
        model.init_weights()
    return model
