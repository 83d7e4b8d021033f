"""Sample videos that vidworld makes itself (no downloads): synthetic scenes and Atari gameplay.

``vidworld samples OUT`` writes, in a few seconds::

    OUT/synthetic/scene-00.mp4 ...   moving objects, camera pans, hard scene cuts (128x96)
    OUT/atari/breakout-00.mp4 ...    ALE Breakout episodes played by a moving random policy (160x210, 15 fps)

Sidecar convention (read by ``pipeline.inputs``): a video ``NAME.mp4`` may have
``NAME.actions.npy`` (``int64 [T]``, the action taken at frame ``t``) and ``NAME.rewards.npy``
(``float32 [T]``, the reward that action earned), one entry per video frame. Frame ``t`` is what
the agent saw before acting, so frame ``t + 1`` shows the result of ``actions[t]``.

Everything is deterministic for a seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.video import encode_mp4
from vidworld.config import load_config
from vidworld.files import atomic_open, atomic_write_bytes


@dataclass
class SamplesConfig:
    """What ``vidworld samples OUT [key=value ...]`` writes. Defaults: small and fast (a few seconds)."""

    seed: int = 0
    synthetic: int = 6  # number of synthetic scenes
    width: int = 128
    height: int = 96
    atari: int = 4  # number of Atari episodes
    atari_game: str = "ALE/Breakout-v5"
    atari_max_frames: int = 400  # ALE v5 frameskip 4 -> 15 fps, so 400 frames = 26.7 s
    crf: int = 18


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    actions: np.ndarray | None = None,
    rewards: np.ndarray | None = None,
    rotation: int = 0,
    crf: int = 18,
) -> Path:
    """Write ``uint8 [T, H, W, 3]`` frames to an H.264 mp4 at ``fps``, plus action/reward sidecars.

    ``rotation`` (degrees, a multiple of 90) is stored as display-matrix metadata, as phones do:
    a player shows the frames rotated counter-clockwise by it.
    """
    path = Path(path)
    t = len(frames)
    for name, arr in (("actions", actions), ("rewards", rewards)):
        if arr is not None and len(arr) != t:
            raise ValueError(
                f"{path}: {name} has {len(arr)} entries but the video has {t} frames; one per frame"
            )
    if rotation:
        with atomic_open(path, "wb") as f, av.open(f, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=round(fps))
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.thread_count = 1  # one thread: byte-identical output for a seed
            stream.options = {"crf": str(crf), "preset": "veryfast"}
            stream.set_display_rotation(rotation)
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    else:
        atomic_write_bytes(path, encode_mp4(frames, fps, crf=crf))
    stem = path.with_suffix("")
    if actions is not None:
        with atomic_open(f"{stem}.actions.npy", "wb") as f:
            np.save(f, np.asarray(actions), allow_pickle=False)
    if rewards is not None:
        with atomic_open(f"{stem}.rewards.npy", "wb") as f:
            np.save(f, np.asarray(rewards, dtype=np.float32), allow_pickle=False)
    return path


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth colourful ``uint8 [h, w, 3]`` background: a few random sinusoids per channel."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.zeros((h, w, 3), np.float32)
    base = rng.uniform(40, 200, size=3)
    for c in range(3):
        acc = np.zeros((h, w), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(0.01, 0.08, size=2)
            acc += np.sin(fx * xx + fy * yy + rng.uniform(0, 6.3))
        out[..., c] = base[c] + 18 * acc
    return np.clip(out, 0, 255).astype(np.uint8)


def synthetic_scene(
    rng: np.random.Generator, num_frames: int, height: int, width: int, pan: float = 0.0, objects: int = 3
) -> np.ndarray:
    """One continuous shot, ``uint8 [T, H, W, 3]``: a textured background panned by ``pan`` pixels
    per frame (the camera moves) with ``objects`` coloured squares bouncing around."""
    bg_w = width + int(abs(pan) * num_frames) + 1
    bg = _texture(rng, height, bg_w)
    pos = rng.uniform([0, 0], [height - 16, width - 16], size=(objects, 2))
    vel = rng.uniform(-3, 3, size=(objects, 2))
    vel[np.abs(vel) < 1] = 1.5
    sizes = rng.integers(8, 16, size=objects)
    colors = rng.integers(0, 256, size=(objects, 3), dtype=np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        x0 = int(round(t * abs(pan)))
        x0 = bg_w - width - x0 if pan < 0 else x0
        frame = bg[:, x0 : x0 + width].copy()
        for i in range(objects):
            y, x = pos[i].astype(int)
            frame[y : y + sizes[i], x : x + sizes[i]] = colors[i]
        frames[t] = frame
        pos += vel
        for d, limit in ((0, height - 16), (1, width - 16)):
            hit = (pos[:, d] < 0) | (pos[:, d] > limit)
            vel[hit, d] *= -1
            pos[:, d] = np.clip(pos[:, d], 0, limit)
    return frames


# (seconds, fps, pan px/frame, cut at fraction of the video or None, display rotation)
_SCENES = (
    (4.0, 15, 0.0, None, 0),
    (6.0, 15, 2.0, None, 0),
    (6.0, 15, 0.0, 0.5, 0),
    (8.0, 30, -1.5, 0.4, 0),  # 30 fps source: curate resamples it
    (5.0, 15, 1.0, 0.6, 0),
    (4.0, 15, 0.0, None, 90),  # a phone-style rotated clip
)


def write_synthetic(out: str | os.PathLike, cfg: SamplesConfig) -> list[Path]:
    """Write ``cfg.synthetic`` synthetic scenes to ``out/synthetic/scene-NN.mp4``."""
    paths = []
    for i in range(cfg.synthetic):
        seconds, fps, pan, cut, rotation = _SCENES[i % len(_SCENES)]
        rng = np.random.default_rng([cfg.seed, i])
        n = int(seconds * fps)
        if cut is None:
            frames = synthetic_scene(rng, n, cfg.height, cfg.width, pan)
        else:
            k = int(n * cut)
            frames = np.concatenate(
                [
                    synthetic_scene(rng, k, cfg.height, cfg.width, pan),
                    synthetic_scene(rng, n - k, cfg.height, cfg.width),
                ]
            )
        path = Path(out) / "synthetic" / f"scene-{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(write_video(path, frames, fps, rotation=rotation, crf=cfg.crf))
    return paths


def _follow_ball(obs: np.ndarray, meanings: list[str]) -> int | None:
    """Breakout only: the action that moves the paddle towards the ball, or None if no ball is seen.
    Following the ball keeps episodes long enough to be useful (a random paddle loses in ~150 frames)."""
    field = obs[100:189, 8:152].max(axis=-1) > 0  # below the bricks, inside the walls
    paddle = obs[190:194, 8:152].max(axis=-1) > 0
    if not field.any() or not paddle.any():
        return None
    ball_x, paddle_x = np.nonzero(field)[1].mean(), np.nonzero(paddle)[1].mean()
    if abs(ball_x - paddle_x) < 6:
        return meanings.index("NOOP")
    return meanings.index("RIGHT" if ball_x > paddle_x else "LEFT")


def atari_episode(game: str, seed: int, max_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Play one episode with a random policy that holds each action a few steps (so the paddle really
    moves) and presses FIRE to serve. Returns frames ``uint8 [T, 210, 160, 3]``, actions ``int64 [T]``
    and rewards ``float32 [T]`` (see the module docstring for the alignment)."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env = gymnasium.make(game)
    try:
        obs, info = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        n_actions = int(env.action_space.n)
        meanings = env.unwrapped.get_action_meanings()
        fire = meanings.index("FIRE") if "FIRE" in meanings else 0
        frames, actions, rewards = [], [], []
        action, hold, lives = fire, 0, info.get("lives")
        for _ in range(max_frames):
            if hold <= 0:
                action = int(rng.integers(n_actions))
                hold = int(rng.integers(2, 8))
                tracked = _follow_ball(obs, meanings) if "Breakout" in game and rng.random() < 0.8 else None
                action = action if tracked is None else tracked
            if info.get("lives") != lives:  # serve again after losing a life
                action, lives = fire, info.get("lives")
            hold -= 1
            frames.append(obs)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(float(reward))
            if terminated or truncated:
                break
    finally:
        env.close()
    return np.stack(frames), np.asarray(actions, np.int64), np.asarray(rewards, np.float32)


def write_atari(out: str | os.PathLike, cfg: SamplesConfig) -> list[Path]:
    """Write ``cfg.atari`` episodes to ``out/atari/NAME-NN.mp4`` with action and reward sidecars (15 fps)."""
    name = cfg.atari_game.split("/")[-1].split("-")[0].lower()
    paths = []
    for i in range(cfg.atari):
        frames, actions, rewards = atari_episode(cfg.atari_game, cfg.seed * 1000 + i, cfg.atari_max_frames)
        path = Path(out) / "atari" / f"{name}-{i:02d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(write_video(path, frames, 15, actions=actions, rewards=rewards, crf=cfg.crf))
    return paths


def write_samples(out: str | os.PathLike, cfg: SamplesConfig | None = None) -> list[Path]:
    """Write all sample videos under ``out``; returns the video paths."""
    cfg = cfg or SamplesConfig()
    return write_synthetic(out, cfg) + write_atari(out, cfg)


def cli(out: str, overrides: list[str]) -> int:
    """``vidworld samples OUT [seed=1 atari=2 ...]``."""
    cfg = load_config(SamplesConfig, None, overrides)
    paths = write_samples(out, cfg)
    print(f"samples: wrote {len(paths)} videos under {out} (synthetic/, atari/ with actions and rewards)")
    return 0
