"""A cheap hard-cut detector from frame differences.

A hard cut changes both the pixels and the colour distribution from one frame to the next. A
camera pan or a moving object changes pixels but keeps the colour histogram; a flash or a fade
in a static scene changes little of either. So a frame starts a new scene when both its mean
absolute luma difference and its colour-histogram distance to the previous frame are large.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CutConfig:
    """Thresholds of ``detect_cuts``; both in 0..1."""

    pixel_threshold: float = 0.05  # mean |luma difference| / 255
    hist_threshold: float = 0.25  # half the L1 distance of 8-bin per-channel histograms, mean over channels


_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _features(frame: np.ndarray, bins: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Luma ``float32 [H, W]`` and per-channel histograms ``float32 [3, bins]`` (fractions) of a frame."""
    luma = frame.astype(np.float32) @ _LUMA
    q = (frame // (256 // bins)).reshape(-1, 3).astype(np.int64) + bins * np.arange(3)
    hist = np.bincount(q.ravel(), minlength=3 * bins).reshape(3, bins).astype(np.float32) / len(q)
    return luma, hist


class CutDetector:
    """Streaming hard-cut detection: ``push`` each frame in order; it says whether that frame starts
    a new scene (never the first frame). Keeps only the previous frame's features."""

    def __init__(self, cfg: CutConfig | None = None) -> None:
        self.cfg = cfg or CutConfig()
        self._prev: tuple[np.ndarray, np.ndarray] | None = None
        self.last_differences = (0.0, 0.0)

    def push(self, frame: np.ndarray) -> bool:
        """``frame``: ``uint8 [H, W, 3]``. True when it starts a new scene."""
        luma, hist = _features(frame)
        prev, self._prev = self._prev, (luma, hist)
        if prev is None:
            self.last_differences = (0.0, 0.0)
            return False
        pix = float(np.abs(luma - prev[0]).mean()) / 255.0
        hd = float(0.5 * np.abs(hist - prev[1]).sum(axis=1).mean())
        self.last_differences = (pix, hd)
        return pix > self.cfg.pixel_threshold and hd > self.cfg.hist_threshold


def frame_differences(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ``uint8 [T, H, W, 3]`` frames, the pixel and histogram differences of each frame to the one
    before, each ``float32 [T]`` in 0..1 (entry 0 is 0)."""
    detector = CutDetector()
    pix, hist = np.zeros(len(frames), np.float32), np.zeros(len(frames), np.float32)
    for i, frame in enumerate(frames):
        detector.push(frame)
        pix[i], hist[i] = detector.last_differences
    return pix, hist


def detect_cuts(frames: np.ndarray, cfg: CutConfig | None = None) -> list[int]:
    """Indices of frames that start a new scene (never 0), ascending, for ``uint8 [T, H, W, 3]`` frames."""
    detector = CutDetector(cfg)
    return [i for i, frame in enumerate(frames) if detector.push(frame)]
