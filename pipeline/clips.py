"""From a decoded source video to clips: split (at a target fps, never across a cut), score and
filter, and transform (rotate, resize the shorter side, centre-crop).

Times are seconds from the source's first frame; frames are ``uint8 [T, H, W, 3]`` RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESIZE_MODES = ("center_crop", "squash")


@dataclass
class FilterConfig:
    """Clip filters. Every score is stored in the clip's JSON whether or not it filters."""

    min_size: int = 64  # pixels: inputs whose shorter displayed side is smaller are skipped
    min_duration: float = 0.0  # seconds: inputs shorter are skipped (a clip's length is always required)
    black_max_brightness: float = 12.0  # mean luma 0..255: a clip at or below this is black
    frozen_max_diff: float = 0.25  # largest mean |luma change| between frames, 0..255: below is frozen
    min_motion: float = 0.0005  # mean fraction of pixels whose luma changes by > 8 per frame


@dataclass
class ClipPlan:
    """One clip to cut: ``indices`` are source frame indices ``int64 [clip_frames]`` sampled at the
    target fps; ``next_index`` is the source frame after the clip's last one (for reward sums)."""

    scene: int
    indices: np.ndarray
    next_index: int
    start_time: float
    end_time: float


class ClipSplitter:
    """Streaming split of a source into clips of ``clip_frames`` frames at ``fps``, never across a cut.

    ``push`` each decoded frame in order (its index, its time in seconds from the first frame, the
    frame, and whether it starts a new scene); it returns the clips completed so far as
    ``(ClipPlan, frames uint8 [clip_frames, H, W, 3])``; ``finish`` returns the rest. Only the
    frames of the clip being filled are kept, so memory does not grow with the video.

    Resampling: output frame ``k`` of a scene is shown ``k / fps`` seconds after the scene's first
    frame and is the latest source frame at or before that time (30 -> 15 fps keeps every other
    frame; 10 -> 15 fps repeats some). A scene lasts until one ``frame_interval`` (the source's
    nominal 1 / fps) after its last frame. Clips are consecutive and do not overlap.
    """

    def __init__(self, fps: float, clip_frames: int, frame_interval: float) -> None:
        self.fps, self.clip_frames, self.frame_interval = fps, clip_frames, frame_interval
        self.too_short = 0  # scenes that yielded no clip
        self._scene = -1
        self._prev: tuple[int, float, np.ndarray] | None = None
        self._start = 0.0  # time of the current scene's first frame
        self._k = 0  # next output frame of the current scene
        self._window: list[tuple[int, float, np.ndarray]] = []
        self._full: list[tuple[int, float, np.ndarray]] | None = None  # a clip waiting for next_index
        self._scene_clips = 0

    def push(
        self, index: int, time: float, frame: np.ndarray, cut: bool
    ) -> list[tuple[ClipPlan, np.ndarray]]:
        done: list[tuple[ClipPlan, np.ndarray]] = []
        if self._prev is None or cut:
            if self._prev is not None:
                done += self._end_scene(index)
            self._scene += 1
            self._start, self._k, self._scene_clips = time, 0, 0
        else:
            # The previous frame is the one shown at every output time before this frame's time.
            while self._start + self._k / self.fps + 1e-6 < time:
                done += self._emit(self._prev)
        self._prev = (index, time, frame)
        return done

    def finish(self) -> list[tuple[ClipPlan, np.ndarray]]:
        return self._end_scene(self._prev[0] + 1) if self._prev is not None else []

    def _emit(self, item: tuple[int, float, np.ndarray]) -> list[tuple[ClipPlan, np.ndarray]]:
        done = self._release(item[0]) if self._full is not None else []
        self._k += 1
        self._window.append(item)
        if len(self._window) == self.clip_frames:
            self._full, self._window = self._window, []
        return done

    def _release(self, next_index: int) -> list[tuple[ClipPlan, np.ndarray]]:
        items, self._full = self._full, None
        self._scene_clips += 1
        start = items[0][1]
        plan = ClipPlan(
            self._scene,
            np.array([i for i, _, _ in items], np.int64),
            next_index,
            start,
            start + self.clip_frames / self.fps,
        )
        return [(plan, np.stack([f for _, _, f in items]))]

    def _end_scene(self, end_index: int) -> list[tuple[ClipPlan, np.ndarray]]:
        done: list[tuple[ClipPlan, np.ndarray]] = []
        last_time = self._prev[1]
        n = int(np.floor((last_time - self._start + self.frame_interval) * self.fps + 1e-6))
        while self._k < n:
            done += self._emit(self._prev)
        if self._full is not None:
            done += self._release(end_index)
        self._window = []
        self.too_short += self._scene_clips == 0
        return done


def plan_clips(
    times: np.ndarray, cuts: list[int], fps: float, clip_frames: int, frame_interval: float | None = None
) -> tuple[list[ClipPlan], int]:
    """``ClipSplitter`` over known frame times ``float64 [T]`` (seconds) and cut indices, without
    pixels: the plans and the number of scenes too short for one clip. ``frame_interval`` defaults to
    the median interval between frames."""
    if frame_interval is None:
        frame_interval = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / fps
    splitter = ClipSplitter(fps, clip_frames, frame_interval)
    cut_set = set(cuts)
    empty = np.zeros((1, 1, 1), np.uint8)
    plans = [p for i, t in enumerate(times) for p, _ in splitter.push(i, float(t), empty, i in cut_set)]
    plans += [p for p, _ in splitter.finish()]
    return plans, splitter.too_short


def resample_actions(actions: np.ndarray, plan: ClipPlan) -> np.ndarray:
    """The action of each kept frame: the action recorded at that source frame. ``[clip_frames, ...]``."""
    return np.asarray(actions)[plan.indices]


def resample_rewards(rewards: np.ndarray, plan: ClipPlan) -> np.ndarray:
    """``float32 [clip_frames]``: each kept frame gets the rewards of the source frames it stands for
    (itself up to the next kept frame), so the clip's total reward equals the source's over that span.
    A repeated frame (upsampling) stands for nothing new and gets 0."""
    r = np.asarray(rewards, np.float32)
    ends = np.append(plan.indices[1:], plan.next_index)
    out = np.zeros(len(plan.indices), np.float32)
    for k, (a, b) in enumerate(zip(plan.indices, ends, strict=True)):
        if k > 0 and a == plan.indices[k - 1]:
            continue
        out[k] = r[a : max(b, a + 1)].sum()
    return out


def resample_terminals(terminals: np.ndarray, plan: ClipPlan) -> np.ndarray:
    """``bool [clip_frames]``: a kept frame is terminal when one of the source frames it stands for
    (itself up to the next kept frame) is, as ``resample_rewards`` sums their rewards; a repeated
    frame stands for nothing new and is not."""
    d = np.asarray(terminals).astype(bool)
    ends = np.append(plan.indices[1:], plan.next_index)
    out = np.zeros(len(plan.indices), bool)
    for k, (a, b) in enumerate(zip(plan.indices, ends, strict=True)):
        if k > 0 and a == plan.indices[k - 1]:
            continue
        out[k] = d[a : max(b, a + 1)].any()
    return out


def clip_scores(frames: np.ndarray) -> dict[str, float]:
    """Scores of ``uint8 [T, H, W, 3]`` frames: ``brightness`` (mean luma 0..255), ``motion`` (mean
    fraction of pixels whose luma changes by more than 8 from one frame to the next) and
    ``max_frame_diff`` (the largest mean |luma change| between consecutive frames, 0..255)."""
    luma = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    diff = np.abs(np.diff(luma, axis=0)) if len(frames) > 1 else np.zeros((1, *luma.shape[1:]), np.float32)
    return {
        "brightness": round(float(luma.mean()), 4),
        "motion": round(float((diff > 8).mean()), 6),
        "max_frame_diff": round(float(diff.mean(axis=(1, 2)).max()), 4),
    }


def filter_reason(scores: dict[str, float], cfg: FilterConfig) -> str | None:
    """The name of the first filter the clip fails (``black``, ``frozen``, ``low_motion``), or None."""
    if scores["brightness"] <= cfg.black_max_brightness:
        return "black"
    if scores["max_frame_diff"] < cfg.frozen_max_diff:
        return "frozen"
    if scores["motion"] < cfg.min_motion:
        return "low_motion"
    return None


def decode_size(width: int, height: int, rotation: int, size: int, mode: str) -> tuple[int, int]:
    """``(w, h)`` to decode a ``width x height`` (stored) video at so that, after ``rotation``, its shorter
    side is ``size`` (``center_crop``) or it is ``size x size`` (``squash``)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} is not one of {RESIZE_MODES}")
    if mode == "squash":
        return size, size
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise, as FFmpeg's autorotate shows it)."""
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def center_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """``[T, H, W, C]`` -> ``[T, size, size, C]``, the centre of each frame."""
    h, w = frames.shape[1:3]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(frames[:, y : y + size, x : x + size])
