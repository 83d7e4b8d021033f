"""The seam between the tokenizer and everything downstream (dynamics, rollouts, evaluation).

Downstream code sees a tokenizer only through ``VideoTokenizer``; get one with
``tokenizer.load_tokenizer(path)``. Videos are float ``[B, 3, T, H, W]`` in [-1, 1] with
``T = 1 + k * temporal_compression``; latents are ``[B, latent_channels, 1 + k, H/s, W/s]``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class VideoTokenizer(Protocol):
    """What the dynamics model may use of a tokenizer, and nothing more."""

    @property
    def temporal_compression(self) -> int:
        """Video frames per latent frame after the first (1, 2, 4 or 8)."""
        ...

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent position along H and along W (8 or 16)."""
        ...

    @property
    def latent_channels(self) -> int:
        """Channels of a latent (the number of FSQ levels for a discrete tokenizer)."""
        ...

    @property
    def is_discrete(self) -> bool:
        """True for FSQ tokenizers (``indices_to_codes`` / ``codes_to_indices`` need one)."""
        ...

    @property
    def codebook_size(self) -> int | None:
        """``prod(levels)`` for FSQ; ``None`` when continuous."""
        ...

    @property
    def levels(self) -> list[int] | None:
        """FSQ levels per latent channel; ``None`` when continuous."""
        ...

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C, T', h, w)`` of the latent of one ``frames x height x width`` video."""
        ...

    def encode(self, video: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] -> ``[B, C, T', h, w]``; ``chunk_frames`` streams."""
        ...

    def decode(self, z: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """``[B, C, T', h, w]`` -> ``[B, 3, T, H, W]`` in [-1, 1]; ``chunk_frames`` streams."""
        ...

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Discrete only: FSQ indices ``[B, T', h, w]`` long -> float32 latents ``[B, C, T', h, w]``
        (what ``decode`` takes; what a latent error over indices compares)."""
        ...

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Discrete only: latents ``[B, C, T', h, w]`` on the FSQ grid -> indices ``[B, T', h, w]`` long."""
        ...
