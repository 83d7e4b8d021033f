import hashlib
import subprocess

import numpy as np
import pytest

from pipeline.samples import (
    NATURAL_PHOTOS,
    SamplesConfig,
    make_atari_env,
    natural_clip,
    photo_folder,
    play,
    write_samples,
)
from runtime.config import ConfigError
from runtime.video import decode_mp4

# Small: one episode per game, short clips, one branch per game.
SMALL = dict(synthetic=1, natural=1, natural_seconds=1.0, atari=1, atari_max_frames=30, branches=1)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def _count_frames(path):
    out = (
        subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=nb_read_frames,width,height,r_frame_rate",
                "-of",
                "csv=p=0",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(",")
    )
    return {"width": int(out[0]), "height": int(out[1]), "fps": out[2], "frames": int(out[3])}


def test_samples_are_the_same_for_the_same_seed_and_differ_for_another(tmp_path):
    write_samples(tmp_path / "a", SamplesConfig(**SMALL))
    write_samples(tmp_path / "b", SamplesConfig(**SMALL))
    write_samples(tmp_path / "c", SamplesConfig(seed=1, **SMALL))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert set(a) == set(b)
    for name in a:  # every sidecar, branch and photo byte for byte
        if not name.endswith(".mp4"):
            assert a[name] == b[name], name
            continue
        # The same frames, encoded again. Seen about once in a hundred suite-loaded runs (2026-11-28):
        # libx264 coded one macroblock of one Atari video differently (a few pixels off by <= 4 levels),
        # cause not found (single-threaded, not reproduced in 300 encodes under load). Frames are
        # compared decoded, with that tolerance; anything visible still fails.
        fa, fb = (
            decode_mp4((tmp_path / "a" / name).read_bytes()),
            decode_mp4((tmp_path / "b" / name).read_bytes()),
        )
        assert fa.shape == fb.shape, name
        diff = np.abs(fa.astype(np.int16) - fb.astype(np.int16))
        assert diff.max() <= 8 and (diff > 0).mean() < 0.01, (name, int(diff.max()), float((diff > 0).mean()))
    same_allowed = (".rewards.npy", ".terminals.npy")  # often all zero / all false under either seed
    assert set(a) == set(c) and all(a[k] != c[k] for k in a if not k.endswith(same_allowed))
    assert {k.rsplit("/", 1)[0] for k in a} == {
        "synthetic",
        "natural",
        "atari/breakout",
        "atari/pong",
        "branches",
    }


def test_each_game_writes_its_episodes_to_its_own_folder_with_one_action_and_reward_per_frame(tmp_path):
    paths = write_samples(
        tmp_path, SamplesConfig(synthetic=0, natural=0, branches=0, atari=1, atari_max_frames=120)
    )
    assert [p.relative_to(tmp_path).as_posix() for p in paths["atari"]] == [
        "atari/breakout/breakout-00.mp4",
        "atari/pong/pong-00.mp4",
    ]
    for video, n_actions in zip(paths["atari"], (4, 6), strict=True):
        actions = np.load(video.with_suffix(".actions.npy"))
        rewards = np.load(video.with_suffix(".rewards.npy"))
        terminals = np.load(video.with_suffix(".terminals.npy"))
        info = _count_frames(video)
        assert info["frames"] == len(actions) == len(rewards) == len(terminals) > 60
        # Only the action at the last recorded frame can end an episode (here: none, cut at 120).
        assert terminals.dtype == bool and not terminals[:-1].any()
        assert (info["width"], info["height"], info["fps"]) == (160, 210, "15/1")
        assert actions.dtype == np.int64 and rewards.dtype == np.float32
        assert actions.min() >= 0 and actions.max() < n_actions
        # The policy moves the player both ways, many times (LEFT = 3, RIGHT = 2 in both games).
        counts = np.bincount(actions, minlength=n_actions)
        assert counts[3] > 10 and counts[2] > 10, counts


def test_pong_actions_visibly_move_the_green_paddle(tmp_path):
    paths = write_samples(
        tmp_path, SamplesConfig(synthetic=0, natural=0, branches=0, atari=1, atari_max_frames=90)
    )
    frames = decode_mp4(paths["atari"][1])
    green = (np.abs(frames[:, 34:194, 140:144].astype(int) - [92, 186, 92]).sum(-1) < 60).any(-1)
    rows = [np.nonzero(g)[0].mean() for g in green if g.any()]
    assert len(rows) > 60 and np.ptp(rows) > 40  # the paddle travels over much of the court


def test_emulators_run_without_sticky_actions_so_recorded_actions_are_the_ones_played():
    env = make_atari_env("ALE/Pong-v5")
    try:
        assert env.unwrapped.ale.getFloat("repeat_action_probability") == 0.0
        assert env.action_space.n == 6
    finally:
        env.close()


def test_natural_clips_move_and_each_is_named_after_the_one_photograph_it_films(tmp_path):
    paths = write_samples(
        tmp_path, SamplesConfig(synthetic=0, atari=0, branches=0, natural=3, natural_seconds=2.0)
    )["natural"]
    assert [p.name for p in paths] == ["astronaut.mp4", "chelsea.mp4", "coffee.mp4"]
    for path in paths:
        info = _count_frames(path)
        assert (info["width"], info["height"], info["fps"], info["frames"]) == (128, 96, "15/1", 30)
        frames = decode_mp4(path).astype(np.float32)
        steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
        assert (steps > 0.5).all(), steps  # the camera never stops


def test_a_natural_clip_shows_only_its_photograph():
    # A photograph of two flat colours: every frame may hold those colours and blends of them only
    # (up to the rounding of a few 8-bit resampling steps), and shows both.
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[:, :200] = (200, 40, 40)
    photo[:, 200:] = (40, 40, 200)
    frames = natural_clip(photo, np.random.default_rng(0), 20, 96, 128).reshape(-1, 3).astype(int)
    assert (np.abs(frames[:, 1] - 40) <= 4).all()  # green stays: no other picture is mixed in
    assert (np.abs(frames[:, 0] + frames[:, 2] - 240) <= 8).all()
    assert (frames[:, 0] > 190).mean() > 0.1 and (frames[:, 2] > 190).mean() > 0.1


def test_the_photographs_ship_inside_the_scikit_image_wheel_and_are_never_reused():
    folder = photo_folder()
    assert folder.parent.name == "skimage"
    assert all((folder / name).is_file() for name in NATURAL_PHOTOS)
    assert len(set(NATURAL_PHOTOS)) == len(NATURAL_PHOTOS) >= 8
    with pytest.raises(ConfigError, match="natural"):
        write_samples("unused", SamplesConfig(natural=len(NATURAL_PHOTOS) + 1))


def test_synthetic_scenes_have_the_documented_sizes_rates_and_rotation(tmp_path):
    paths = write_samples(tmp_path, SamplesConfig(atari=0, natural=0, branches=0))["synthetic"]
    infos = [_count_frames(p) for p in paths]
    assert len(paths) == 6
    assert all((i["width"], i["height"]) == (128, 96) for i in infos)
    assert {i["fps"] for i in infos} == {"15/1", "30/1"}  # one 30 fps source to exercise resampling
    assert all(4 * 15 <= i["frames"] <= 8 * 30 for i in infos)
    rotation = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-show_entries",
            "stream_side_data=rotation",
            "-of",
            "csv=p=0",
            str(paths[5]),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "90" in rotation


class _EndingEnv:
    """Ends its episode at the third step: ``terminated`` (game over) or ``truncated`` (a time limit)."""

    def __init__(self, truncate: bool) -> None:
        self.steps, self.truncate = 0, truncate

    def step(self, action: int):
        self.steps += 1
        end = self.steps == 3
        return np.zeros((2, 2, 3), np.uint8), 1.0, end and not self.truncate, end and self.truncate, {}


@pytest.mark.parametrize("truncate", [False, True])
def test_play_flags_the_step_that_terminated_the_episode_and_never_a_truncation(truncate):
    frames, actions, rewards, terminals = [], [], [], []
    obs = np.zeros((2, 2, 3), np.uint8)
    _, _, ended = play(_EndingEnv(truncate), lambda o, i: 0, obs, {}, 10, frames, actions, rewards, terminals)
    assert ended and len(frames) == len(actions) == len(rewards) == 3
    assert terminals == [False, False, not truncate]
