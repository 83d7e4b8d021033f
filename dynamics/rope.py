"""3D rotary position embeddings over (time, height, width).

The head dimension ``d`` is split into rotation pairs: about a third of them turn with the
frame index, the rest are shared equally between the row and the column of the patch. Angles
are computed on the fly (no buffers, so a model built on the ``meta`` device needs no
special care) in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Rotation pairs for (time, height, width); they sum to ``head_dim // 2``."""
    pairs = head_dim // 2
    hw = pairs // 3
    return pairs - 2 * hw, hw, hw


def rope_angles(
    frames: int,
    height: int,
    width: int,
    head_dim: int,
    frame_offset: int = 0,
    device: torch.device | str = "cpu",
    theta: float = 10000.0,
) -> tuple[Tensor, Tensor]:
    """``(cos, sin)``, each fp32 ``[frames, height * width, head_dim // 2]``.

    Frame ``i`` has time position ``frame_offset + i`` (the offset is the number of frames in
    a KV cache, so cached and uncached runs see the same positions).
    """
    pt, ph, pw = rope_split(head_dim)

    def time_freqs(n: int) -> Tensor:
        return theta ** (-torch.arange(n, device=device, dtype=torch.float32) / max(n, 1))

    def space_freqs(n: int) -> Tensor:
        # Octaves from a period of 4 patches up: even with the 2 pairs of a tiny head, a shift
        # by one patch turns the first pair by 90 degrees, so attention can single out exact
        # neighbours (with LLM-style theta**(-i/n) the second pair barely turns on a small grid).
        return (torch.pi / 2) * 2.0 ** -torch.arange(n, device=device, dtype=torch.float32)

    t = torch.arange(frame_offset, frame_offset + frames, device=device, dtype=torch.float32)
    y = torch.arange(height, device=device, dtype=torch.float32)
    x = torch.arange(width, device=device, dtype=torch.float32)
    at = (t[:, None] * time_freqs(pt))[:, None, None, :].expand(frames, height, width, pt)
    ay = (y[:, None] * space_freqs(ph))[None, :, None, :].expand(frames, height, width, ph)
    ax = (x[:, None] * space_freqs(pw))[None, None, :, :].expand(frames, height, width, pw)
    ang = torch.cat([at, ay, ax], dim=-1).reshape(frames, height * width, -1)
    return ang.cos(), ang.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[..., L, d]`` by angles broadcastable to ``[..., L, d // 2]`` (half-split pairs)."""
    d2 = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :d2], xf[..., d2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
