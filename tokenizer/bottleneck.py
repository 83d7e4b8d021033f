"""The two bottlenecks behind one interface: a diagonal Gaussian (continuous) and FSQ (discrete).

Both take the encoder's output ``h`` ``[B, in_channels, T, H, W]`` and give a latent
``z`` ``[B, latent_channels, T, H, W]``:

- ``forward(h)`` (training) returns ``(z, losses)``: a sample (Gaussian) or straight-through
  quantized codes (FSQ), and the bottleneck's own loss terms (``kl`` for the Gaussian; FSQ has none).
- ``encode(h)`` (inference) returns the deterministic latent: the mean, or the quantized codes.

FSQ follows Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple" (2023): each
channel is bounded with tanh to ``levels[i]`` values and rounded; the code grid is the product of
the per-channel grids, so the codebook is implicit and has ``prod(levels)`` entries.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class DiagonalGaussian(nn.Module):
    """Continuous bottleneck: ``h = [mean, logvar]`` along channels, ``in_channels = 2 * latent_channels``."""

    is_discrete = False

    def __init__(self, latent_channels: int) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.in_channels = 2 * latent_channels

    def _split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar = h.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = self._split(h)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        # KL(q || N(0, I)) per latent element, averaged: independent of latent size.
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return z, {"kl": kl}

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self._split(h)[0]


class FSQuantizer(nn.Module):
    """Finite scalar quantization with ``levels`` (e.g. ``[8, 5, 5, 5]``): ``in_channels = len(levels)``.

    Codes are on the grid ``{(d - L // 2) / (L // 2) : d = 0 .. L - 1}`` per channel (within
    [-1, 1]); indices are ``int64`` in ``[0, prod(levels))``, mixed radix with channel 0 the
    fastest digit.
    """

    is_discrete = True

    def __init__(self, levels: list[int] | tuple[int, ...], eps: float = 1e-3) -> None:
        super().__init__()
        if not levels or any(int(level) < 2 for level in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {list(levels)}; e.g. [8, 5, 5, 5]")
        self.levels = [int(v) for v in levels]
        self.latent_channels = self.in_channels = len(self.levels)
        self.codebook_size = math.prod(self.levels)
        self.eps = eps
        for name, value in self._grid().items():
            # Buffers, not parameters: the grid is fixed. persistent=False keeps them out of
            # checkpoints (they follow from `levels`, which the config carries).
            self.register_buffer(name, value, persistent=False)

    def _grid(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        lv = torch.tensor(self.levels, dtype=torch.float64, device=device)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(lv)
        basis = torch.cumprod(torch.tensor([1, *self.levels[:-1]], dtype=torch.int64, device=device), 0)
        shape = (1, -1, 1, 1, 1)
        return {
            "_half_l": half_l.float().view(shape),
            "_offset": offset.float().view(shape),
            "_shift": torch.atanh(offset / half_l).float().view(shape),
            "_half_width": (lv // 2).float().view(shape),
            "_levels": lv.long().view(shape),
            "_basis": basis.view(shape),
        }

    def reset_buffers(self) -> None:
        """Recompute the grid in place (after a model built on ``meta`` is moved with ``to_empty``)."""
        for name, value in self._grid(self._basis.device).items():
            setattr(self, name, value)

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """``[B, len(levels), ...]`` real -> codes on the grid, with straight-through gradients."""
        bounded = torch.tanh(h + self._shift) * self._half_l - self._offset
        rounded = bounded + (torch.round(bounded) - bounded).detach()
        return rounded / self._half_width

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.quantize(h), {}

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self.quantize(h)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, len(levels), T, H, W]`` on the grid -> indices ``[B, T, H, W]`` int64."""
        digits = torch.round(codes * self._half_width + self._half_width).long()
        return (digits * self._basis).sum(dim=1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices ``[B, T, H, W]`` int in ``[0, codebook_size)`` -> codes ``[B, len(levels), T, H, W]``."""
        if indices.dtype.is_floating_point:
            raise TypeError(f"FSQ indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(
                f"FSQ indices must lie in [0, {self.codebook_size}) for levels {self.levels}; "
                f"got values in [{int(indices.min())}, {int(indices.max())}]"
            )
        digits = (indices.unsqueeze(1) // self._basis) % self._levels
        return (digits.float() - self._half_width) / self._half_width
