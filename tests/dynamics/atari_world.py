"""Real Breakout play as dynamics-model training data, through an identity-like "tokenizer".

Frames come from ``pipeline.samples.atari_episode`` (ALE Breakout, a random policy that holds
LEFT/RIGHT for a few steps and follows the ball; minimal action set 0 NOOP, 1 FIRE, 2 RIGHT,
3 LEFT). Instead of the learned tokenizer, each frame's lower playfield (ball and paddle) is
average-pooled to a small grayscale grid and used directly as a continuous latent with
``C = 1`` and ``temporal_compression = 1`` (one latent frame per game frame, one action per
frame). That isolates the question "does the dynamics model use the actions?" from how good a
tokenizer is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dynamics.task import group_actions
from pipeline.samples import atari_episode

GAME = "ALE/Breakout-v5"
NUM_ACTIONS = 4  # Breakout's minimal action set: NOOP, FIRE, RIGHT, LEFT
# Lower playfield, inside the walls: rows 100..195 (ball and paddle; the paddle is rows 189..193),
# columns 8..151. Pooled 12 x 9 pixels per cell -> an 8 x 16 latent grid; the paddle (16 px wide,
# ~15 px moved per step by LEFT/RIGHT) spans about two cells of the last row and moves ~1.5 cells.
ROWS, COLS, POOL = slice(100, 196), slice(8, 152), (12, 9)
LATENT_HW = (8, 16)
PADDLE_ROW = LATENT_HW[0] - 1  # the latent row that holds the paddle
# Pooled paddle cells are ~0.25 and the background 0; x4 brings the paddle to ~1, the scale of the
# unit-variance diffusion noise (a fixed factor, not data statistics, so every run sees the same).
LATENT_SCALE = 4.0


def pooled(frames: np.ndarray) -> Tensor:
    """``uint8 [T, 210, 160, 3]`` frames -> float ``[T, 8, 16]``: max over RGB / 255, then the crop
    average-pooled (values in [0, 1], the paddle cells ~0.2-0.3, background 0)."""
    gray = torch.from_numpy(frames[:, ROWS, COLS].max(axis=-1)).float() / 255.0
    return torch.nn.functional.avg_pool2d(gray[:, None], POOL)[:, 0]


def breakout_episodes(seeds: list[int], max_frames: int) -> list[tuple[Tensor, Tensor]]:
    """One ``(pooled frames [T, 8, 16], actions int64 [T])`` per seed; ``actions[t]`` is taken at
    frame ``t`` and frame ``t + 1`` shows its result (``pipeline.samples`` convention)."""
    out = []
    for seed in seeds:
        frames, actions, *_ = atari_episode(GAME, seed, max_frames)
        out.append((pooled(frames), torch.from_numpy(actions)))
    return out


def windows(episodes: list[tuple[Tensor, Tensor]], length: int) -> tuple[Tensor, Tensor]:
    """Every ``length``-frame window of every episode, as model inputs.

    Returns latents ``[N, 1, length, 8, 16]`` (``pooled * LATENT_SCALE``)
    and model actions ``[N, length]`` long: ``actions[:, t]`` is the game action that led to frame
    ``t`` (``dynamics.task.group_actions``; frame 0 gets the "no action" index ``NUM_ACTIONS``).
    """
    lat, act = [], []
    for frames, actions in episodes:
        for i in range(len(frames) - length + 1):
            lat.append(frames[i : i + length])
            act.append(actions[i : i + length])
    latents = (torch.stack(lat) * LATENT_SCALE).unsqueeze(1)
    model_actions = group_actions(torch.stack(act), length, 1, no_action=NUM_ACTIONS)[..., 0]
    return latents, model_actions
