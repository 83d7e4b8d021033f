"""Dynamics: the action-conditioned world model over tokenizer latents.

Two heads on one frame-causal transformer backbone: ``DiffusionDynamics`` (continuous
latents ``[B, C, T, h, w]``, diffusion forcing) and ``MaskGITDynamics`` (discrete FSQ
indices ``[B, T, h, w]``). ``build_dynamics(cfg)`` builds either one on the meta device
and initialises it where it is placed.
"""

from __future__ import annotations

import torch
from torch import nn

from dynamics.config import DynamicsConfig
from dynamics.diffusion import DiffusionDynamics
from dynamics.maskgit import MaskGITDynamics
from dynamics.transformer import DynamicsTransformer, KVCache

__all__ = [
    "DiffusionDynamics",
    "DynamicsConfig",
    "DynamicsTransformer",
    "KVCache",
    "MaskGITDynamics",
    "build_dynamics",
    "dynamics_class",
]


def dynamics_class(cfg: DynamicsConfig) -> type[nn.Module]:
    """The head class ``cfg.head`` names."""
    return DiffusionDynamics if cfg.head == "diffusion" else MaskGITDynamics


def build_dynamics(cfg: DynamicsConfig, device: torch.device | str | None = "cpu") -> nn.Module:
    """Build the model on the meta device, then materialise it on ``device`` and ``init_weights()``.

    ``device=None`` leaves it on meta (for counting parameters or planning a layout).
    """
    with torch.device("meta"):
        model = dynamics_class(cfg)(cfg)
    if device is not None:
        model.to_empty(device=device)
        model.init_weights()
    return model
