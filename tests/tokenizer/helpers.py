"""Small builders shared by the tokenizer tests."""

from __future__ import annotations

import torch

from tokenizer import CausalVideoTokenizer, TokenizerConfig, build_tokenizer


def tiny_config(temporal: int = 4, spatial: int = 8, bottleneck: str = "gaussian") -> TokenizerConfig:
    return TokenizerConfig(
        temporal_compression=temporal,
        spatial_compression=spatial,
        base_channels=8,
        channel_multipliers=[1, 2],
        bottleneck=bottleneck,
        latent_channels=4,
        fsq_levels=[8, 5, 5, 5],
    )


def randomized(cfg: TokenizerConfig, seed: int = 0) -> CausalVideoTokenizer:
    """A tokenizer whose every weight is random (init zeroes residual branches, which would hide
    any frame mixing inside them)."""
    torch.manual_seed(seed)
    model = build_tokenizer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * (0.5 / max(1, p[0].numel()) ** 0.5) if p.ndim > 1 else p)
    return model.eval()


def random_video(frames: int, size: int = 16, batch: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, size, size, generator=g) * 2 - 1
