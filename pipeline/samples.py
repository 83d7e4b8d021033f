"""Sample data that vidworld makes itself, with nothing downloaded: synthetic scenes, photographs
moved by a virtual camera, Atari play with its actions, and counterfactual branches of that play.

``vidworld samples OUT`` writes, in well under a minute on 2 cores::

    OUT/synthetic/scene-00.mp4 ...      moving squares, camera pans, hard cuts, one rotated (128x96)
    OUT/natural/astronaut.mp4 ...       one photograph each (shipped in scikit-image's wheel), filmed by
                                        a virtual camera that pans and zooms, with a nearer cut-out layer
                                        moving faster than the background (parallax) (128x96, 15 fps)
    OUT/atari/breakout/breakout-00.mp4  ALE episodes played by a policy that mixes purposeful and random
    OUT/atari/pong/pong-00.mp4 ...      held actions, with action and reward sidecars (160x210, 15 fps)
    OUT/branches/breakout-b00.npz ...   one saved game state, two futures under two action sequences,
                                        from episodes never written as videos (``pipeline.branches``)

Sidecar convention (read by ``pipeline.inputs``): a video ``NAME.mp4`` may have
``NAME.actions.npy`` (``int64 [T]``, the action taken at frame ``t``), ``NAME.rewards.npy``
(``float32 [T]``, the reward that action earned) and ``NAME.terminals.npy`` (``bool [T]``, whether
that action ended the episode: ``terminated``, never a time-limit truncation or the end of the
recording), one entry per video frame. Frame ``t`` is what the agent saw before acting, so frame
``t + 1`` shows the result of ``actions[t]``; the frame after an episode's last action is not
recorded, so only ``terminals[T - 1]`` of an Atari video can be set.

Every emulator runs with ``repeat_action_probability=0`` (ALE v5 defaults to 0.25 "sticky"
actions, which would make a recorded action wrong a quarter of the time and a restored state
non-deterministic). Everything is deterministic for a seed, down to the bytes.
"""

from __future__ import annotations

import importlib.util
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.branches import Branch, write_branch
from runtime.config import ConfigError, load_config
from runtime.files import atomic_open, atomic_write_bytes
from runtime.video import encode_mp4

ATARI_FPS = 15.0  # ALE v5 steps 4 emulator frames of 60 Hz per action
NATURAL_FPS = 15

# Photographs inside scikit-image's wheel (skimage/data/), colour ones first. Left out:
# motorcycle_right.png (the other half of a stereo pair with motorcycle_left.png: nearly the same
# picture, so a split by video would show a held-out photograph in training), the charts, text and
# drawings, and everything scikit-image fetches from the network.
NATURAL_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "ihc.png",
    "camera.png",  # greyscale from here on
    "moon.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "brick.png",
)


@dataclass
class SamplesConfig:
    """What ``vidworld samples OUT [key=value ...]`` writes. Defaults: a 2-core demo (well under a minute)."""

    seed: int = 0
    synthetic: int = 6  # synthetic scenes
    natural: int = 8  # photograph clips, one photograph each (at most len(NATURAL_PHOTOS) = 14; 8 in colour)
    natural_seconds: float = 4.0  # length of each photograph clip (15 fps)
    width: int = 128  # frame size of the synthetic and photograph clips
    height: int = 96
    atari_games: list[str] = field(default_factory=lambda: ["ALE/Breakout-v5", "ALE/Pong-v5"])
    # Episodes per game, and frames of each. More, shorter episodes rather than fewer long ones: a
    # dynamics model trained on 6 episodes lost to copy-last on the held-out ones where 12 of half
    # the length (the same frames) beat it (BENCHMARKS.md, 2026-11-28).
    atari: int = 8
    atari_max_frames: int = 200  # ALE v5 frameskip 4 -> 15 fps, so 200 frames = 13.3 s
    branches: int = 4  # counterfactual branch files per game
    branch_context: int = 17  # C: frames of shared past in a branch file
    branch_horizon: int = 16  # H: frames of each future
    crf: int = 18

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the key of a value that cannot work."""
        checks = [
            ("natural", 0 <= self.natural <= len(NATURAL_PHOTOS),
             f"must be in 0..{len(NATURAL_PHOTOS)}: one photograph per clip, never reused"),
            ("natural_seconds", self.natural_seconds > 0, "must be > 0"),
            ("width", self.width >= 16 and self.width % 2 == 0, "must be even and >= 16 (H.264 yuv420p)"),
            ("height", self.height >= 16 and self.height % 2 == 0, "must be even and >= 16 (H.264 yuv420p)"),
            ("atari_max_frames", self.atari_max_frames >= 1, "must be >= 1"),
            ("branch_context", self.branch_context >= 1, "must be >= 1"),
            ("branch_horizon", self.branch_horizon >= 1, "must be >= 1"),
        ]  # fmt: skip
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' = {getattr(self, key)!r} {what}")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    actions: np.ndarray | None = None,
    rewards: np.ndarray | None = None,
    rotation: int = 0,
    crf: int = 18,
    terminals: np.ndarray | None = None,
) -> Path:
    """Write ``uint8 [T, H, W, 3]`` frames to an H.264 mp4 at ``fps``, plus action/reward/terminal sidecars.

    ``rotation`` (degrees, a multiple of 90) is stored as display-matrix metadata, as phones do:
    a player shows the frames rotated counter-clockwise by it.
    """
    path = Path(path)
    t = len(frames)
    for name, arr in (("actions", actions), ("rewards", rewards), ("terminals", terminals)):
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
    if terminals is not None:
        with atomic_open(f"{stem}.terminals.npy", "wb") as f:
            np.save(f, np.asarray(terminals, dtype=bool), allow_pickle=False)
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


# --- photographs moved by a virtual camera ---------------------------------------------------------


def photo_folder() -> Path:
    """The folder of photographs inside the installed scikit-image wheel (no import, no download)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "scikit-image is not installed, and its wheel holds the photographs of the natural clips; "
            "pip install scikit-image, or pass natural=0"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_photo(name: str) -> np.ndarray:
    """One photograph of ``NATURAL_PHOTOS`` as ``uint8 [h, w, 3]`` RGB (greyscale ones repeated)."""
    path = photo_folder() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: this scikit-image install does not ship {name}; reinstall scikit-image "
            "or pass a smaller natural=N"
        )
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _smooth(u: float) -> float:
    """0 -> 0, 1 -> 1: half linear, half smoothstep, so the camera eases but never stops."""
    return 0.5 * u + 0.5 * u * u * (3 - 2 * u)


def _render(layer: Image.Image, centre: np.ndarray, zoom: float, width: int, height: int) -> Image.Image:
    """The ``width x height`` view of ``layer`` centred on ``centre`` (layer px) at ``zoom`` (view px per
    layer px), bicubic-resampled, so sub-pixel camera moves are smooth."""
    a = 1.0 / zoom
    data = (a, 0.0, centre[0] - a * width / 2, 0.0, a, centre[1] - a * height / 2)
    return layer.transform((width, height), Image.Transform.AFFINE, data, resample=Image.Resampling.BICUBIC)


def _fill_hole(image: Image.Image, hole: Image.Image, radius: float) -> Image.Image:
    """``image`` with the region ``hole`` (``L``, 255 = inside) filled by the colours around it (a blur
    that ignores the hole), so the background holds no second copy of the cut-out: where the nearer
    layer moves away, the camera sees a smooth backdrop, as behind a real object."""
    outside = Image.eval(hole, lambda v: 255 - v)
    blur = ImageFilter.GaussianBlur(radius)
    num = np.asarray(Image.composite(image, Image.new("RGB", image.size), outside).filter(blur), np.float32)
    den = np.asarray(outside.filter(blur), np.float32)[..., None]
    fill = num * 255.0 / np.maximum(den, 1.0)
    w = np.asarray(hole, np.float32)[..., None] / 255.0
    out = np.asarray(image, np.float32) * (1 - w) + fill * w
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def natural_clip(
    photo: np.ndarray, rng: np.random.Generator, num_frames: int, height: int, width: int
) -> np.ndarray:
    """Film one photograph ``uint8 [h, w, 3]`` with a virtual camera: ``uint8 [T, height, width, 3]``.

    Two layers of the same photograph: a sharp, soft-edged elliptical cut-out near the middle of the
    shot, as if nearer, and the rest as the background (its hole filled with the colours around it,
    slightly blurred, as if out of focus). The camera pans and zooms smoothly (never stopping) from
    one random framing to another; the cut-out moves ``k`` times as far (k in 1.5..2: parallax), and
    both layers line up exactly halfway through. Every frame is resampled bicubically from the
    photograph, so motion is sub-pixel smooth; the photograph is first resized (Lanczos) so that the
    camera only ever magnifies it (zoom 1..1.35): no aliasing.
    """
    margin = 1.4  # the photograph, reduced, is 1.4 views wide and high: room to pan
    img = Image.fromarray(photo)
    scale = max(margin * width / img.width, margin * height / img.height)
    base = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    size = np.array(base.size, np.float64)
    view = np.array([width, height], np.float64)
    lo, hi = view / 2, size - view / 2  # centres that keep the view inside at zoom 1
    c0, c1 = rng.uniform(lo, hi), rng.uniform(lo, hi)
    if np.linalg.norm(c1 - c0) < 0.3 * np.linalg.norm(hi - lo):  # too small a move: go across instead
        c1 = lo + hi - c0
    z0, z1 = 1.0, float(rng.uniform(1.15, 1.35))
    if rng.random() < 0.5:
        z0, z1 = z1, z0
    c_mid, z_mid = (c0 + c1) / 2, float(np.sqrt(z0 * z1))
    k = float(rng.uniform(1.5, 2.0))

    mask = Image.new("L", base.size, 0)
    anchor = c_mid + rng.uniform(-0.1, 0.1, size=2) * view
    radii = rng.uniform([0.18, 0.22], [0.28, 0.34]) * view
    ImageDraw.Draw(mask).ellipse([float(v) for v in (*(anchor - radii), *(anchor + radii))], fill=255)
    alpha = mask.filter(ImageFilter.GaussianBlur(3))  # a soft edge
    foreground = base.convert("RGBA")
    foreground.putalpha(alpha)
    background = _fill_hole(base, alpha, float(radii.max())).filter(ImageFilter.GaussianBlur(1.2))

    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        s = _smooth(t / max(num_frames - 1, 1))
        c, z = c0 + (c1 - c0) * s, z0 * (z1 / z0) ** s
        bg = _render(background, c, z, width, height)
        fg = _render(foreground, c_mid + k * (c - c_mid), z_mid * (z / z_mid) ** k, width, height)
        frames[t] = np.asarray(Image.alpha_composite(bg.convert("RGBA"), fg).convert("RGB"))
    return frames


def write_natural(out: str | os.PathLike, cfg: SamplesConfig) -> list[Path]:
    """Write ``cfg.natural`` photograph clips to ``out/natural/NAME.mp4`` (15 fps), one photograph each:
    a split by source video never shows a held-out photograph in training."""
    paths = []
    for name in NATURAL_PHOTOS[: cfg.natural]:
        rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
        n = round(cfg.natural_seconds * NATURAL_FPS)
        frames = natural_clip(load_photo(name), rng, n, cfg.height, cfg.width)
        path = Path(out) / "natural" / f"{name.rsplit('.', 1)[0]}.mp4"
        paths.append(write_video(path, frames, NATURAL_FPS, crf=cfg.crf))
    return paths


# --- Atari play ------------------------------------------------------------------------------------


def game_name(game: str) -> str:
    """``ALE/Breakout-v5`` -> ``breakout``: the folder and file-name stem of a game's samples."""
    return game.split("/")[-1].split("-")[0].lower()


def make_atari_env(game: str) -> Any:
    """A gymnasium ALE env with sticky actions off (each recorded action is the one the emulator ran)
    and the default, minimal action set (Breakout 4 actions, Pong 6)."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    return gymnasium.make(game, repeat_action_probability=0.0)


def _breakout_target(obs: np.ndarray, meanings: list[str]) -> int | None:
    """The action that moves Breakout's paddle towards the ball, or None if no ball is seen.
    Following the ball keeps episodes long enough to be useful (a random paddle loses in ~150 frames)."""
    field = obs[100:189, 8:152].max(axis=-1) > 0  # below the bricks, inside the walls
    paddle = obs[190:194, 8:152].max(axis=-1) > 0
    if not field.any() or not paddle.any():
        return None
    ball_x, paddle_x = np.nonzero(field)[1].mean(), np.nonzero(paddle)[1].mean()
    if abs(ball_x - paddle_x) < 6:
        return meanings.index("NOOP")
    return meanings.index("RIGHT" if ball_x > paddle_x else "LEFT")


_PONG_PLAYER = np.array([92, 186, 92], np.uint8)  # the agent's paddle: green, columns 140..143
_PONG_BALL = np.array([236, 236, 236], np.uint8)


def _pong_target(obs: np.ndarray, meanings: list[str]) -> int | None:
    """The action that moves Pong's green paddle (right side) towards the ball's row, or None if no
    ball is seen. In Pong, RIGHT moves the paddle up and LEFT down."""
    court = obs[34:194]  # between the white walls
    paddle = np.nonzero((court[:, 140:144] == _PONG_PLAYER).all(axis=-1))[0]
    ball = np.nonzero((court == _PONG_BALL).all(axis=-1))[0]
    if not len(paddle) or not len(ball):
        return None
    ball_y, paddle_y = ball.mean(), paddle.mean()
    if abs(ball_y - paddle_y) < 4:
        return meanings.index("NOOP")
    return meanings.index("RIGHT" if ball_y < paddle_y else "LEFT")


# game name -> the purposeful action for a frame (None: no ball seen). Other games play random held actions.
_PURPOSE = {"breakout": _breakout_target, "pong": _pong_target}


class MixedPolicy:
    """Purposeful and random actions, each held a few steps, so things visibly move.

    At each decision, with probability ``purposeful`` the game's purposeful action (follow the ball)
    is held for 1..2 steps (then the policy looks again); otherwise a uniformly random action is held
    for 2..7 steps. FIRE serves at the first step and after a life is lost, in games that have it.
    """

    def __init__(self, game: str, meanings: list[str], rng: np.random.Generator, purposeful: float = 0.8):
        self.meanings, self.rng, self.purposeful = meanings, rng, purposeful
        self.target = _PURPOSE.get(game_name(game))
        self.fire = meanings.index("FIRE") if "FIRE" in meanings else None
        self.action, self.hold, self.lives, self.first = 0, 0, None, True

    def __call__(self, obs: np.ndarray, info: dict[str, Any]) -> int:
        """The action to take at frame ``obs`` (``uint8 [210, 160, 3]``) given the env's ``info``."""
        if self.hold <= 0:
            self.action = int(self.rng.integers(len(self.meanings)))
            self.hold = int(self.rng.integers(2, 8))
            if self.target is not None and self.rng.random() < self.purposeful:
                aimed = self.target(obs, self.meanings)
                if aimed is not None:
                    self.action, self.hold = aimed, int(self.rng.integers(1, 3))
        self.hold -= 1
        lives = info.get("lives")
        if self.fire is not None and (self.first or lives != self.lives):  # serve; held like any action
            self.action = self.fire
        self.first, self.lives = False, lives
        return self.action


def play(
    env: Any,
    policy: MixedPolicy,
    obs: np.ndarray,
    info: dict[str, Any],
    steps: int,
    frames: list[np.ndarray],
    actions: list[int],
    rewards: list[float],
    terminals: list[bool] | None = None,
) -> tuple[np.ndarray, dict[str, Any], bool]:
    """Let ``policy`` play up to ``steps`` steps from frame ``obs``, appending each frame it acts on, its
    action and the reward that followed to ``frames``, ``actions`` and ``rewards`` (and to
    ``terminals`` whether that step terminated the episode). Returns the frame after the last step,
    its ``info``, and whether the episode ended (then fewer steps were played)."""
    for _ in range(steps):
        action = policy(obs, info)
        frames.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        if terminals is not None:
            terminals.append(bool(terminated))
        if terminated or truncated:
            return obs, info, True
    return obs, info, False


def atari_episode(
    game: str, seed: int, max_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Play one episode of at most ``max_frames`` frames with ``MixedPolicy``. Returns frames
    ``uint8 [T, 210, 160, 3]``, actions ``int64 [T]``, rewards ``float32 [T]`` and terminals ``bool
    [T]`` (see the module docstring for the alignment)."""
    env = make_atari_env(game)
    try:
        obs, info = env.reset(seed=seed)
        policy = MixedPolicy(game, env.unwrapped.get_action_meanings(), np.random.default_rng(seed))
        frames, actions, rewards, terminals = [], [], [], []
        play(env, policy, obs, info, max_frames, frames, actions, rewards, terminals)
    finally:
        env.close()
    return (
        np.stack(frames),
        np.asarray(actions, np.int64),
        np.asarray(rewards, np.float32),
        np.asarray(terminals, bool),
    )


def _seed(cfg_seed: int, kind: int, game: str, index: int) -> int:
    """The seed of one episode (kind 0: a video; kind 1: a branch, never written as a video)."""
    return int(
        np.random.SeedSequence([cfg_seed, kind, zlib.crc32(game.encode()), index]).generate_state(1)[0]
    )


def write_atari(out: str | os.PathLike, cfg: SamplesConfig) -> list[Path]:
    """Write ``cfg.atari`` episodes of each of ``cfg.atari_games`` to ``out/atari/NAME/NAME-NN.mp4``
    with action, reward and terminal sidecars (15 fps, 160x210)."""
    paths = []
    for game in cfg.atari_games:
        name = game_name(game)
        for i in range(cfg.atari):
            episode = atari_episode(game, _seed(cfg.seed, 0, game, i), cfg.atari_max_frames)
            frames, actions, rewards, terminals = episode
            path = Path(out) / "atari" / name / f"{name}-{i:02d}.mp4"
            video = write_video(
                path, frames, ATARI_FPS, actions=actions, rewards=rewards, crf=cfg.crf, terminals=terminals
            )
            paths.append(video)
    return paths


# --- counterfactual branches -----------------------------------------------------------------------


def replay(env: Any, state: Any, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Restore ``state`` (from ``env.unwrapped.ale.cloneState()``) and take ``actions`` (``[N]``).
    Returns the frames after each action ``uint8 [N, 210, 160, 3]``, the rewards ``float32 [N]``, and
    whether the episode ended on the way (then the arrays stop there)."""
    env.unwrapped.ale.restoreState(state)
    frames, rewards = [], []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(int(action))
        frames.append(obs)
        rewards.append(float(reward))
        if terminated or truncated:
            return np.stack(frames), np.asarray(rewards, np.float32), True
    return np.stack(frames), np.asarray(rewards, np.float32), False


def _movement(meaning: str) -> str:
    """What an action does to the player, FIRE aside (FIRE is NOOP once the ball is in play)."""
    return meaning.replace("FIRE", "").replace("NOOP", "")


def diverging_actions(rng: np.random.Generator, actions: np.ndarray, meanings: list[str]) -> np.ndarray:
    """Random actions held 2..7 steps, ``int64`` like ``actions``, that move the player differently from
    ``actions`` at every step: a held action that would move as ``actions[t]`` does is resampled
    (among actions that move differently) for that step."""
    moves = [_movement(m) for m in meanings]
    out = np.empty(len(actions), np.int64)
    t = 0
    while t < len(actions):
        held, hold = int(rng.integers(len(meanings))), int(rng.integers(2, 8))
        for j in range(t, min(t + hold, len(actions))):
            other = [a for a in range(len(meanings)) if moves[a] != moves[actions[j]]]
            out[j] = held if moves[held] != moves[actions[j]] else int(rng.choice(other or [held]))
        t += hold
    return out


def atari_branch(
    game: str, seed: int, context: int = 17, horizon: int = 16, max_tries: int = 20
) -> tuple[Branch, Any]:
    """One counterfactual branch of ``game`` (see ``pipeline.branches`` for the format) and the saved
    emulator state it branches from (``ale.restoreState`` it, then ``replay`` ``actions_a[context-1:]``
    or ``actions_b[context-1:]`` to play the futures again).

    ``MixedPolicy`` plays an ordinary episode (FIRE serves) for a random 40..150-step warm-up, so the
    ball is in play. Then, from the saved state, future A is the policy playing on and future B is
    ``diverging_actions``. A branch point where the futures are pixel-identical (the ball not in play,
    the paddle at a wall), or where the episode ends within the horizon, is passed over: the episode
    plays on 5..20 steps and tries again, up to ``max_tries`` times.
    """
    env = make_atari_env(game)
    try:
        rng = np.random.default_rng(seed)
        obs, info = env.reset(seed=seed)
        meanings = env.unwrapped.get_action_meanings()
        policy = MixedPolicy(game, meanings, rng)
        frames: list[np.ndarray] = []  # the ordinary episode up to (not including) the branch frame obs
        actions: list[int] = []
        rewards: list[float] = []
        steps = max(int(rng.integers(40, 151)), context - 1)
        for _ in range(max_tries):
            left = steps
            while left > 0:
                played = len(actions)
                obs, info, ended = play(env, policy, obs, info, left, frames, actions, rewards)
                left -= len(actions) - played
                if ended:  # start a new episode; the warm-up starts again
                    obs, info = env.reset()
                    frames, actions, rewards = [], [], []
            steps = int(rng.integers(5, 21))
            if len(frames) < context - 1:
                steps = context - 1 - len(frames)
                continue
            state = env.unwrapped.ale.cloneState()
            # Future A: the policy plays on from the branch frame (horizon + 1 actions: one at the
            # branch frame, one at each future frame; the last one's result is not kept).
            a_obs, a_info, a_actions, a_frames, a_rewards, ended = obs, info, [], [], [], False
            for _ in range(horizon + 1):
                a_actions.append(policy(a_obs, a_info))
                a_obs, reward, terminated, truncated, a_info = env.step(a_actions[-1])
                a_frames.append(a_obs)
                a_rewards.append(float(reward))
                ended = ended or terminated or truncated
                if ended:
                    break
            future_a = np.asarray(a_actions, np.int64)
            future_b = diverging_actions(rng, future_a, meanings)
            frames_b, rewards_b, ended_b = replay(env, state, future_b)
            frames_a, rewards_a, _ = replay(env, state, future_a) if not ended else (None, None, True)
            env.unwrapped.ale.restoreState(state)  # the episode plays on from the branch frame
            if ended or ended_b or np.array_equal(frames_a[:horizon], frames_b[:horizon]):
                continue
            if not np.array_equal(frames_a, np.stack(a_frames)):
                raise RuntimeError(
                    f"{game}: replaying the same actions from a restored state gave other frames; the "
                    "emulator must be deterministic (make_atari_env sets repeat_action_probability=0)"
                )
            past = slice(len(frames) - (context - 1), len(frames))
            ctx_frames = np.stack([*frames[past], obs])
            ctx_actions = np.asarray(actions[past], np.int64)
            ctx_rewards = np.asarray(rewards[past], np.float32)
            branch = Branch(
                frames_a=np.concatenate([ctx_frames, frames_a[:horizon]]),
                frames_b=np.concatenate([ctx_frames, frames_b[:horizon]]),
                actions_a=np.concatenate([ctx_actions, future_a]),
                actions_b=np.concatenate([ctx_actions, future_b]),
                rewards_a=np.concatenate([ctx_rewards, rewards_a]),
                rewards_b=np.concatenate([ctx_rewards, rewards_b]),
                fps=ATARI_FPS,
                game=game,
                context_frames=context,
                horizon_frames=horizon,
            )
            return branch, state
    finally:
        env.close()
    raise RuntimeError(
        f"{game} (seed {seed}): no branch point in {max_tries} tries gave two different futures; "
        "raise max_tries or use another seed"
    )


def write_branches(out: str | os.PathLike, cfg: SamplesConfig) -> list[Path]:
    """Write ``cfg.branches`` branch files per game to ``out/branches/NAME-bNN.npz`` (``pipeline.branches``),
    each from an episode of its own seed, never written as a video: held out by construction."""
    paths = []
    for game in cfg.atari_games:
        for i in range(cfg.branches):
            branch, _ = atari_branch(
                game, _seed(cfg.seed, 1, game, i), cfg.branch_context, cfg.branch_horizon
            )
            paths.append(write_branch(Path(out) / "branches" / f"{game_name(game)}-b{i:02d}.npz", branch))
    return paths


# --- the command -----------------------------------------------------------------------------------


_WRITERS = (
    ("synthetic", write_synthetic),
    ("natural", write_natural),
    ("atari", write_atari),
    ("branches", write_branches),
)


def write_samples(out: str | os.PathLike, cfg: SamplesConfig | None = None) -> dict[str, list[Path]]:
    """Write all sample data under ``out``; returns the paths written by kind (``synthetic``,
    ``natural``, ``atari``: videos; ``branches``: branch files)."""
    cfg = cfg or SamplesConfig()
    cfg.validate()
    return {kind: writer(out, cfg) for kind, writer in _WRITERS}


def cli(out: str, overrides: list[str]) -> int:
    """``vidworld samples OUT [seed=1 atari=2 natural=0 atari_games=[ALE/Pong-v5] ...]``."""
    cfg = load_config(SamplesConfig, None, overrides)
    cfg.validate()
    per_game = ", ".join(game_name(g) for g in cfg.atari_games) or "no games"
    what = {
        "synthetic": f"videos {cfg.width}x{cfg.height}: pans, cuts, one at 30 fps, one rotated",
        "natural": f"videos {cfg.width}x{cfg.height} 15 fps {cfg.natural_seconds:g} s, one photograph each",
        "atari": f"videos 160x210 15 fps with actions and rewards ({cfg.atari} per game: {per_game})",
        "branches": f"files of {cfg.branch_context} + {cfg.branch_horizon} frames x 2 action sequences "
        f"({cfg.branches} per game)",
    }
    total = time.perf_counter()
    for kind, writer in _WRITERS:
        t0 = time.perf_counter()
        paths = writer(out, cfg)
        seconds = time.perf_counter() - t0
        print(
            f"samples: {kind:9s} {len(paths):3d} {what[kind]} -> {Path(out) / kind} ({seconds:.1f} s)",
            flush=True,
        )
    print(f"samples: done in {time.perf_counter() - total:.1f} s")
    return 0
