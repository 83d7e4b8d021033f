"""Frame-quality and codebook metrics: the one implementation every stage imports.

Per docs/evaluation.md: PSNR and SSIM are computed on uint8 RGB frames at the clip's own
resolution with data range 255, per frame, then averaged over frames (and by the caller over
clips). Inputs are uint8 tensors ``[..., H, W, 3]`` (any leading dims: ``[T, H, W, 3]`` or
``[B, T, H, W, 3]``); float videos in [-1, 1] ``[B, 3, T, H, W]`` convert with ``to_uint8``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Float video ``[B, 3, T, H, W]`` in [-1, 1] -> uint8 frames ``[B, T, H, W, 3]`` (rounded, clamped)."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"to_uint8 expects [B, 3, T, H, W], got {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 4, 1).contiguous()


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """uint8 frames ``[B, T, H, W, 3]`` -> float video ``[B, 3, T, H, W]`` in [-1, 1]."""
    if frames.ndim != 5 or frames.shape[-1] != 3 or frames.dtype != torch.uint8:
        raise ValueError(
            f"from_uint8 expects uint8 [B, T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    return (frames.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0).contiguous()


def _check_pair(ref: torch.Tensor, test: torch.Tensor, name: str) -> None:
    if ref.shape != test.shape or ref.ndim < 3 or ref.shape[-1] != 3:
        raise ValueError(
            f"{name}: reference and test must be uint8 [..., H, W, 3] of the same shape, "
            f"got {tuple(ref.shape)} and {tuple(test.shape)}"
        )
    if ref.dtype != torch.uint8 or test.dtype != torch.uint8:
        raise TypeError(
            f"{name}: frames must be uint8 (0..255), got {ref.dtype} and {test.dtype}; see to_uint8"
        )


def psnr_per_frame(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame: uint8 ``[..., H, W, 3]`` -> float64 ``[...]``. Identical frames give +inf."""
    _check_pair(ref, test, "psnr")
    mse = (ref.double() - test.double()).pow(2).mean(dim=(-3, -2, -1))
    return 10.0 * torch.log10(255.0**2 / mse)


def psnr(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Mean over frames of the per-frame PSNR (dB, data range 255); frames ``[..., H, W, 3]`` uint8.

    An identical frame counts as 100 dB so that one perfect frame does not make the mean infinite.
    """
    return float(psnr_per_frame(ref, test).clamp(max=100.0).mean())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def ssim_per_frame(ref: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03,
    data range 255, "valid" window positions, mean over channels): uint8 ``[..., H, W, 3]`` ->
    float64 ``[...]``. Frames smaller than 11 px use a window the size of the frame."""
    _check_pair(ref, test, "ssim")
    lead = ref.shape[:-3]
    h, w = ref.shape[-3], ref.shape[-2]
    x = ref.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w).double()
    y = test.reshape(-1, h, w, 3).permute(0, 3, 1, 2).reshape(-1, 1, h, w).double()
    size = min(11, h, w)
    win = _gaussian_window(size).to(x.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = F.conv2d(x, win), F.conv2d(y, win)
    sxx = F.conv2d(x * x, win) - mx * mx
    syy = F.conv2d(y * y, win) - my * my
    sxy = F.conv2d(x * y, win) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    per_channel = s.mean(dim=(-2, -1)).view(-1, 3)
    return per_channel.mean(dim=1).view(lead)


def ssim(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Mean over frames of the per-frame SSIM; frames uint8 ``[..., H, W, 3]``."""
    return float(ssim_per_frame(ref, test).mean())


def codebook_usage(indices: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """FSQ code statistics over a batch of indices (any shape, int in ``[0, codebook_size)``).

    ``usage``: fraction of the codebook that occurs at least once; ``perplexity``: exp of the
    entropy of the code histogram (``codebook_size`` when all codes are equally frequent).
    """
    counts = torch.bincount(indices.reshape(-1).long(), minlength=codebook_size).double()
    p = counts / counts.sum().clamp(min=1)
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"usage": float((counts > 0).double().mean()), "perplexity": float(entropy.exp())}
