"""Tokenizer configuration: architecture, bottleneck and loss weights. Defaults are the small CPU case.

``PRESETS`` holds Cosmos-like sizes (by name) for clusters; pick one with
``TokenizerConfig.preset("cv4x8x8")`` or copy its values into a YAML under ``jobs/``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TokenizerLossConfig:
    """Weights of the training loss terms (see ``tokenizer.losses``)."""

    reconstruction: str = "l1"  # "l1" or "charbonnier"
    kl_weight: float = 1e-4  # continuous bottleneck only; KL is a mean per latent element
    # A torch.export program (.pt2) mapping images [N, 3, H, W] in [-1, 1] to a feature tensor or
    # a tuple of them. Empty: no perceptual term. Nothing is ever downloaded.
    perceptual_path: str = ""
    perceptual_weight: float = 0.1
    discriminator: bool = False
    disc_start_step: int = 2000  # adversarial terms are off before this optimizer step
    disc_weight: float = 0.5
    disc_channels: int = 32
    disc_layers: int = 3


@dataclass
class TokenizerConfig:
    """Causal video tokenizer: ``[B, 3, 1 + k*t, H, W]`` -> ``[B, C_lat, 1 + k, H/s, W/s]``.

    ``temporal_compression`` t is 1, 2, 4 or 8; ``spatial_compression`` s is 8 or 16 (any power
    of two >= 2 works). Stage ``i`` of the encoder has ``base_channels * channel_multipliers[i]``
    channels (the last multiplier repeats when there are more stages than multipliers).
    """

    temporal_compression: int = 4
    spatial_compression: int = 8
    # Pixels per side folded into channels before the first conv (space-to-depth, like Cosmos's
    # Haar wavelet stage): the conv stack then runs at H/patch_size, which is what makes small
    # frames cheap. Part of spatial_compression, not on top of it.
    patch_size: int = 1
    # Frames each conv looks back over (causal). 1 = every conv is per-frame, 3x cheaper; frames
    # then mix only where time is downsampled (temporal_compression > 1).
    temporal_kernel: int = 3
    base_channels: int = 32
    channel_multipliers: list[int] = field(default_factory=lambda: [1, 2, 2, 4])
    num_res_blocks: int = 1
    bottleneck: str = "gaussian"  # "gaussian" (continuous) or "fsq" (discrete)
    latent_channels: int = 8  # gaussian only; FSQ has len(fsq_levels) channels
    fsq_levels: list[int] = field(default_factory=lambda: [8, 5, 5, 5])
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad field and the valid values."""
        for name in ("temporal_compression", "spatial_compression"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"TokenizerConfig.{name}={v}: must be a power of two (1, 2, 4, 8, 16)")
        if self.spatial_compression < 2:
            raise ValueError("TokenizerConfig.spatial_compression must be >= 2 (8 or 16 are usual)")
        if self.temporal_kernel < 1:
            raise ValueError(f"TokenizerConfig.temporal_kernel={self.temporal_kernel}: must be >= 1 (1 or 3)")
        p = self.patch_size
        if p < 1 or p & (p - 1) or p > self.spatial_compression:
            raise ValueError(
                f"TokenizerConfig.patch_size={p}: must be a power of two no larger than "
                f"spatial_compression={self.spatial_compression} (1, 2, 4, ...)"
            )
        if self.bottleneck not in ("gaussian", "fsq"):
            raise ValueError(f"TokenizerConfig.bottleneck={self.bottleneck!r}: use 'gaussian' or 'fsq'")
        if self.base_channels < 1 or not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ValueError("TokenizerConfig: base_channels and each channel_multipliers entry must be >= 1")
        if self.loss.reconstruction not in ("l1", "charbonnier"):
            raise ValueError(
                f"TokenizerConfig.loss.reconstruction={self.loss.reconstruction!r}: use 'l1' or 'charbonnier'"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerConfig:
        d = dict(d)
        loss = TokenizerLossConfig(**d.pop("loss", {}))
        return cls(**d, loss=loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> TokenizerConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown tokenizer preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})


# Cosmos-like sizes (Cosmos uses 128 base channels, multipliers 2,4,4 and 16 latent channels
# for its continuous tokenizers, 6 FSQ levels 8,8,8,5,5,5 = 64K codes for the discrete ones).
# The patch-1 sizes run their first stage at full resolution: ~0.8 TFLOP per frame forward at
# 256 px and ~3.1 at 512 px. cv8x16x16-p4 is the one for 256-512 px video: like Cosmos's CV8x16x16
# it folds 4x4 pixel blocks into channels first (Cosmos with a 2-level Haar wavelet) and has three
# stages (multipliers 2,4,4) behind them. 200M parameters, ~0.11 TFLOP per frame forward at 256 px
# and ~0.44 at 512 px (7x less than cv8x16x16). Latent grid: 16x16 at 256 px, 32x32 at 512 px
# (the dynamics presets' grid; 121 frames at 512 px are their 16 latent frames). Train it on
# 17- or 33-frame clips (3 or 5 latent frames).
# fmt: off
PRESETS: dict[str, dict[str, Any]] = {
    "debug": {"base_channels": 8, "channel_multipliers": [1, 2], "latent_channels": 4},
    "cv4x8x8": {"temporal_compression": 4, "spatial_compression": 8, "base_channels": 128,
                "channel_multipliers": [1, 2, 4, 4], "num_res_blocks": 2, "latent_channels": 16},
    "cv8x8x8": {"temporal_compression": 8, "spatial_compression": 8, "base_channels": 128,
                "channel_multipliers": [1, 2, 4, 4], "num_res_blocks": 2, "latent_channels": 16},
    "cv8x16x16": {"temporal_compression": 8, "spatial_compression": 16, "base_channels": 128,
                  "channel_multipliers": [1, 2, 4, 4, 4], "num_res_blocks": 2, "latent_channels": 16},
    "dv4x8x8": {"temporal_compression": 4, "spatial_compression": 8, "base_channels": 128,
                "channel_multipliers": [1, 2, 4, 4], "num_res_blocks": 2, "bottleneck": "fsq",
                "fsq_levels": [8, 8, 8, 5, 5, 5]},
    "dv8x8x8": {"temporal_compression": 8, "spatial_compression": 8, "base_channels": 128,
                "channel_multipliers": [1, 2, 4, 4], "num_res_blocks": 2, "bottleneck": "fsq",
                "fsq_levels": [8, 8, 8, 5, 5, 5]},
    "dv8x16x16": {"temporal_compression": 8, "spatial_compression": 16, "base_channels": 128,
                  "channel_multipliers": [1, 2, 4, 4, 4], "num_res_blocks": 2, "bottleneck": "fsq",
                  "fsq_levels": [8, 8, 8, 5, 5, 5]},
    "cv8x16x16-p4": {"temporal_compression": 8, "spatial_compression": 16, "patch_size": 4,
                     "base_channels": 128, "channel_multipliers": [2, 4, 4], "num_res_blocks": 2,
                     "latent_channels": 16},
}
# fmt: on
