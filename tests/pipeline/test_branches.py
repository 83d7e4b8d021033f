import dataclasses
import zipfile

import numpy as np
import pytest

from pipeline.branches import ARRAY_KEYS, Branch, read_branch, write_branch
from pipeline.curate import curation_inputs
from pipeline.samples import SamplesConfig, atari_branch, make_atari_env, replay, write_samples, write_video

C, H = 5, 4


def _branch(c: int = C, h: int = H) -> Branch:
    rng = np.random.default_rng(0)
    frames_a = rng.integers(0, 256, (c + h, 6, 8, 3), dtype=np.uint8)
    frames_b = frames_a.copy()
    frames_b[c:] = 255 - frames_b[c:]
    actions_a = rng.integers(0, 4, c + h).astype(np.int64)
    actions_b = actions_a.copy()
    actions_b[c - 1 :] = (actions_b[c - 1 :] + 1) % 4
    rewards_a = np.zeros(c + h, np.float32)
    rewards_b = rewards_a.copy()
    rewards_b[-1] = 1.0
    return Branch(frames_a, frames_b, actions_a, actions_b, rewards_a, rewards_b, 15.0, "ALE/Pong-v5", c, h)


def test_a_branch_round_trips_through_write_and_read_with_its_dtypes_and_identical_bytes(tmp_path):
    branch = _branch()
    write_branch(tmp_path / "x-b00.npz", branch)
    back = read_branch(tmp_path / "x-b00.npz")
    for key in ARRAY_KEYS:
        assert getattr(back, key).dtype == getattr(branch, key).dtype
        np.testing.assert_array_equal(getattr(back, key), getattr(branch, key))
    assert (back.fps, back.game, back.context_frames, back.horizon_frames) == (15.0, "ALE/Pong-v5", C, H)
    with np.load(tmp_path / "x-b00.npz", allow_pickle=False) as z:  # plain numpy reads it, no pickle
        assert z["game"].dtype.kind == "U" and z["frames_a"].shape == (C + H, 6, 8, 3)
    write_branch(tmp_path / "again.npz", branch)
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "x-b00.npz").read_bytes()


def _write_raw(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _arrays(branch: Branch) -> dict:
    d = dataclasses.asdict(branch)
    d["game"] = np.str_(d["game"])
    return d


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("actions_b"), r"keys \['actions_b'\] are missing"),
        (
            lambda d: d.update(frames_a=np.concatenate([d["frames_a"], d["frames_a"][:1]])),
            "frames_a has 10 entries",
        ),
        (lambda d: d.update(rewards_a=d["rewards_a"].astype(np.float64)), "rewards_a has dtype float64"),
        (
            lambda d: d.update(actions_b=np.concatenate([[9], d["actions_b"][1:]])),
            "first 4 actions of a and b differ",
        ),
        (lambda d: d["frames_b"].__setitem__(C - 1, 0), "first 5 frames of a and b differ"),
        (lambda d: d.update(context_frames=np.float32(5)), "context_frames has dtype float32"),
    ],
    ids=[
        "missing-key",
        "length-mismatch",
        "wrong-dtype",
        "context-actions",
        "context-frames",
        "context-type",
    ],
)
def test_reading_a_broken_branch_file_names_the_file_and_the_problem(tmp_path, change, message):
    arrays = _arrays(_branch())
    change(arrays)
    path = tmp_path / "broken-b00.npz"
    _write_raw(path, arrays)
    with pytest.raises(ValueError, match=message) as e:
        read_branch(path)
    assert str(path) in str(e.value)


def test_a_file_that_is_not_an_npz_is_a_value_error_naming_it(tmp_path):
    for name, data in (("garbage.npz", b"not a zip at all"), ("truncated.npz", b"PK\x03\x04" + b"\0" * 10)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name):
            read_branch(tmp_path / name)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="one.npy"):
        read_branch(tmp_path / "one.npy")


def test_write_branch_refuses_a_branch_that_breaks_the_format_and_writes_nothing(tmp_path):
    branch = dataclasses.replace(_branch(), actions_a=_branch().actions_a.astype(np.int32))
    with pytest.raises(ValueError, match="bad.npz: actions_a has dtype int32"):
        write_branch(tmp_path / "bad.npz", branch)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("game", ["ALE/Breakout-v5", "ALE/Pong-v5"])
def test_atari_futures_share_their_past_differ_after_it_and_replay_exactly_from_the_saved_state(game):
    branch, state = atari_branch(game, seed=7, context=17, horizon=16)
    c, h = branch.context_frames, branch.horizon_frames
    assert (c, h) == (17, 16) and branch.frames_a.shape == branch.frames_b.shape == (c + h, 210, 160, 3)
    branch.validate(game)
    np.testing.assert_array_equal(branch.frames_a[:c], branch.frames_b[:c])
    np.testing.assert_array_equal(branch.actions_a[: c - 1], branch.actions_b[: c - 1])
    assert branch.actions_a[c - 1] != branch.actions_b[c - 1]  # the first diverging action
    assert not np.array_equal(branch.frames_a[c:], branch.frames_b[c:])
    # The context is played, not frozen: it moves.
    assert any(not np.array_equal(branch.frames_a[i], branch.frames_a[i + 1]) for i in range(c - 1))
    # Determinism: a fresh emulator restored to the saved state plays both futures again, exactly.
    env = make_atari_env(game)
    try:
        env.reset(seed=123)
        for key in ("a", "b"):
            actions = getattr(branch, f"actions_{key}")[c - 1 :]
            frames, rewards, ended = replay(env, state, actions)
            np.testing.assert_array_equal(frames[:h], getattr(branch, f"frames_{key}")[c:])
            np.testing.assert_array_equal(rewards, getattr(branch, f"rewards_{key}")[c - 1 :])
            assert not ended
    finally:
        env.close()


def test_samples_write_readable_branch_files_per_game_from_episodes_never_written_as_videos(tmp_path):
    cfg = SamplesConfig(synthetic=0, natural=0, atari=1, atari_max_frames=400, branches=1)
    paths = write_samples(tmp_path, cfg)
    assert [p.relative_to(tmp_path).as_posix() for p in paths["branches"]] == [
        "branches/breakout-b00.npz",
        "branches/pong-b00.npz",
    ]
    for path, game in zip(paths["branches"], cfg.atari_games, strict=True):
        branch = read_branch(path)
        assert (branch.game, branch.fps, branch.context_frames, branch.horizon_frames) == (game, 15.0, 17, 16)
        assert branch.actions_a.max() < (4 if "Breakout" in game else 6)
        # Its context appears in no training video: the recorded episodes never pass through it.
        video = tmp_path / "atari" / game.split("/")[1].split("-")[0].lower()
        actions = np.load(next(video.glob("*.actions.npy")))
        context = branch.actions_a[: branch.context_frames - 1]
        windows = np.lib.stride_tricks.sliding_window_view(actions, len(context))
        assert not (windows == context).all(axis=1).any()
    with zipfile.ZipFile(paths["branches"][0]) as z:  # compressed: Atari frames are mostly flat colour
        assert sum(i.compress_size for i in z.infolist()) < 0.2 * sum(i.file_size for i in z.infolist())


def test_branch_files_beside_videos_are_not_curation_inputs(tmp_path):
    write_video(tmp_path / "v.mp4", np.zeros((4, 16, 16, 3), np.uint8), 15)
    write_branch(tmp_path / "branches" / "pong-b00.npz", _branch())
    assert [i.source for i in curation_inputs(str(tmp_path))] == [str(tmp_path / "v.mp4")]
    with pytest.raises(ValueError, match="only branch files"):
        curation_inputs(str(tmp_path / "branches"))
