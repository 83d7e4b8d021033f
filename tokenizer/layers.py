"""Causal 3D building blocks: every op sees frame t and the frames before it, never t+1.

Tensors are video feature maps ``[B, C, T, H, W]``. Temporal padding comes only from the past
(the first frame repeated), and norms are per frame, so a clip can be processed whole or chunk
by chunk with the same result.

Streaming: every temporal op takes an optional ``cache`` dict (one per stream, created empty by
the caller). On the first chunk an op pads from the past as for a whole clip; it then keeps in
``cache[self]`` only the input frames its next output still needs (``kernel - stride`` frames,
a constant), so memory stays flat however long the video grows. ``cache=None`` means "this is
the whole clip".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

StreamCache = dict  # module -> tensor (or flag) carried from one chunk to the next


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


class CausalConv3d(nn.Module):
    """3D convolution padded only from the past in time, "same" zero padding in space.

    Input ``[B, C_in, T, H, W]`` -> output ``[B, C_out, T', H / s_h, W / s_w]`` with
    ``T' = (T - 1) // s_t + 1`` for a whole clip: with time stride 2, ``1 + 2m`` frames give
    ``1 + m`` outputs, and output ``j`` sees input frames ``2j - k_t + 1 .. 2j`` only.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
    ) -> None:
        super().__init__()
        kt, kh, kw = _triple(kernel_size)
        st, sh, sw = _triple(stride)
        self.kernel_t, self.stride_t = kt, st
        if st > kt:
            raise ValueError(f"CausalConv3d: time stride {st} larger than time kernel {kt} would skip frames")
        self.conv = nn.Conv3d(
            in_channels, out_channels, (kt, kh, kw), stride=(st, sh, sw), padding=(0, kh // 2, kw // 2)
        )

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        kt, st = self.kernel_t, self.stride_t
        if kt == 1 and st == 1:
            return self.conv(x)
        prev = cache.get(self) if cache is not None else None
        if prev is None:
            # Replicate the first frame into the past: an image (T=1) is coded as a still video.
            past = x[:, :, :1].expand(-1, -1, kt - 1, -1, -1)
            x = torch.cat([past, x], dim=2)
        else:
            x = torch.cat([prev, x], dim=2)
        n_out = (x.shape[2] - kt) // st + 1 if x.shape[2] >= kt else 0
        if cache is not None:
            # clone(): a view would keep the whole chunk alive and memory would grow.
            cache[self] = x[:, :, n_out * st :].detach().clone()
        if n_out == 0:
            raise ValueError(
                f"CausalConv3d: a chunk of {x.shape[2]} frames (with cache) yields no output; "
                "stream chunks of whole multiples of the temporal compression"
            )
        return self.conv(x[:, :, : (n_out - 1) * st + kt])


class FrameGroupNorm(nn.Module):
    """GroupNorm over (channels in group, H, W) of each frame separately, so frames never mix.

    ``[B, C, T, H, W]`` -> same shape. Groups hold at least 4 channels (32 groups from 128
    channels up): a group of one channel would remove each channel's per-frame mean, and with it
    the colour and brightness of the frame, before the bottleneck.
    """

    def __init__(self, channels: int, max_groups: int = 32, eps: float = 1e-6) -> None:
        super().__init__()
        limit = max(1, min(max_groups, channels // 4))
        groups = max(g for g in range(1, limit + 1) if channels % g == 0)
        self.norm = nn.GroupNorm(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        y = self.norm(x.transpose(1, 2).reshape(b * t, c, h, w))
        return y.reshape(b, t, c, h, w).transpose(1, 2)


class ResBlock3d(nn.Module):
    """Pre-norm residual block of two causal ``kt x 3 x 3`` convs: ``[B, C_in, T, H, W]`` ->
    ``[B, C_out, T, H, W]``.

    ``temporal_kernel`` 1 makes the block per-frame (a 2D block applied to each frame).
    """

    def __init__(self, in_channels: int, out_channels: int, temporal_kernel: int = 3) -> None:
        super().__init__()
        k = (temporal_kernel, 3, 3)
        self.norm1 = FrameGroupNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, k)
        self.norm2 = FrameGroupNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels, k)
        self.skip = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return self.skip(x) + h


class Downsample3d(nn.Module):
    """Strided causal conv: ``[B, C, 1 + 2m, H, W] -> [B, C, 1 + m, H/2, W/2]`` (each halving optional)."""

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        s = 2 if spatial else 1
        kt, st = (3, 2) if temporal else (1, 1)
        self.conv = CausalConv3d(channels, channels, (kt, 3, 3), (st, s, s))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        return self.conv(x, cache)


class Upsample3d(nn.Module):
    """Nearest upsampling then a causal conv: ``[B, C, 1 + m, H, W] -> [B, C, 1 + 2m, 2H, 2W]``.

    In time each frame is repeated twice and the very first output frame dropped, so the first
    latent frame (the image) stays one frame: the mirror of ``Downsample3d``.
    """

    def __init__(self, channels: int, spatial: bool, temporal: bool, temporal_kernel: int = 3) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        self.conv = CausalConv3d(channels, channels, (temporal_kernel, 3, 3))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        if self.spatial:
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        if self.temporal:
            x = x.repeat_interleave(2, dim=2)
            first_chunk = cache is None or self not in cache
            if first_chunk:
                x = x[:, :, 1:]
            if cache is not None:
                cache[self] = True
        return self.conv(x, cache)
