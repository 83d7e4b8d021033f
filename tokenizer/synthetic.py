"""Small synthetic videos (moving coloured shapes) for tests, benchmarks and smoke training.

Deterministic given the seed; no files, no downloads.
"""

from __future__ import annotations

import torch


def moving_shapes(
    clips: int, frames: int, size: int = 32, seed: int = 0, shapes: int = 2
) -> torch.Tensor:
    """uint8 ``[clips, frames, size, size, 3]``: a smooth colour background with ``shapes``
    squares and discs moving in straight lines (bouncing off the borders)."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.arange(size, dtype=torch.float32).view(size, 1)
    xs = torch.arange(size, dtype=torch.float32).view(1, size)
    out = torch.empty(clips, frames, size, size, 3, dtype=torch.uint8)
    for c in range(clips):
        base = torch.rand(3, generator=g) * 0.6 + 0.2
        tilt = (torch.rand(3, generator=g) - 0.5) * 0.4
        bg = base.view(3, 1, 1) + tilt.view(3, 1, 1) * (xs + ys) / (2 * size)
        props = []
        for _ in range(shapes):
            r = float(torch.rand((), generator=g)) * size / 8 + size / 10
            pos = torch.rand(2, generator=g) * (size - 2 * r) + r
            vel = (torch.rand(2, generator=g) - 0.5) * size / 8
            color = torch.rand(3, generator=g)
            disc = bool(torch.rand((), generator=g) < 0.5)
            props.append([r, pos, vel, color, disc])
        for t in range(frames):
            img = bg.clone()
            for p in props:
                r, pos, vel, color, disc = p
                y, x = float(pos[0]), float(pos[1])
                mask = ((ys - y) ** 2 + (xs - x) ** 2 <= r * r) if disc else (
                    ((ys - y).abs() <= r) & ((xs - x).abs() <= r)
                )
                img = torch.where(mask, color.view(3, 1, 1), img)
                pos += vel
                for d in range(2):
                    if pos[d] < r or pos[d] > size - r:
                        vel[d] = -vel[d]
                        pos[d] = pos[d].clamp(r, size - r)
            out[c, t] = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return out
