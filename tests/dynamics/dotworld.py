"""A tiny controllable world for dynamics tests: one bright latent "dot" moved by the action.

With ``cross=True`` the dot's whole row and column are lit (a cross-hair cursor): the same
dynamics, but about half the cells carry the signal, so a few hundred steps are enough for a
model to learn it reliably (a lone dot on a 4x4 grid first collapses to "all background").

Latents are ``[B, 1, T, S, S]`` (1 at the dot, 0 elsewhere; or long indices ``[B, T, S, S]``
with codebook ``{0, 1}``). Action ``a`` in ``0..3`` moves the dot up/down/left/right by one
cell; at an edge it stays put (no wrap-around, which rotary
positions could only learn as a second, distant offset). ``actions[:, t]`` is the move that led to frame ``t``
(``actions[:, 0]`` is random and ignored by the world), the convention of the dynamics model.
"""

from __future__ import annotations

import torch
from torch import Tensor

MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])


def dot_world(
    batch: int, frames: int, size: int = 8, generator: torch.Generator | None = None, cross: bool = False
) -> tuple[Tensor, Tensor]:
    """(indices ``[B, T, S, S]`` long in {0, 1}, actions ``[B, T]`` long in 0..3)."""
    actions = torch.randint(0, 4, (batch, frames), generator=generator)
    pos = torch.randint(0, size, (batch, 2), generator=generator)
    grid = torch.zeros(batch, frames, size, size, dtype=torch.long)
    rows = torch.arange(batch)
    for t in range(frames):
        if t > 0:
            pos = (pos + MOVES[actions[:, t]]).clamp(0, size - 1)
        grid[rows, t, pos[:, 0], pos[:, 1]] = 1
        if cross:
            grid[rows, t, pos[:, 0], :] = 1
            grid[rows, t, :, pos[:, 1]] = 1
    return grid, actions


def as_latents(indices: Tensor) -> Tensor:
    """Indices ``[B, T, S, S]`` -> continuous latents ``[B, 1, T, S, S]`` (dot +1, background -1)."""
    return (indices.float() * 2 - 1).unsqueeze(1)
