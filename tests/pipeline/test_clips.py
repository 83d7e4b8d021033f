import subprocess

import numpy as np
import pytest

from pipeline.clips import (
    ClipSplitter,
    FilterConfig,
    center_crop,
    clip_scores,
    decode_size,
    filter_reason,
    plan_clips,
    resample_actions,
    resample_rewards,
    resample_terminals,
    rotate,
)
from pipeline.probe import decode_frames, probe
from pipeline.samples import write_video


def _resampled(times, fps):
    plans, _ = plan_clips(times, [], fps, 1)
    return [int(p.indices[0]) for p in plans]


def test_resampling_30_to_15_fps_keeps_every_other_frame():
    assert _resampled(np.arange(60) / 30.0, 15.0) == list(range(0, 60, 2))


def test_resampling_10_to_15_fps_repeats_frames_and_keeps_time():
    idx = _resampled(np.arange(10) / 10.0, 15.0)
    assert len(idx) == 15  # 1 s of video at 15 fps
    # frame shown at k/15 s is the latest source frame at or before it
    assert idx == [int(np.floor(k / 15 * 10 + 1e-9)) for k in range(15)]


def test_variable_frame_rate_sources_are_resampled_by_timestamp():
    times = np.array([0.0, 0.05, 0.3, 0.31, 0.5, 0.55])  # gaps and bursts
    # shown at 0, .1, .2, .3, .4, .5 s: the latest frame at or before each time
    assert _resampled(times, 10.0) == [0, 1, 1, 2, 3, 4]


def test_streaming_split_yields_each_clips_frames_in_order():
    splitter = ClipSplitter(15.0, 4, 1 / 30)
    clips = []
    for i in range(40):
        frame = np.full((2, 2, 3), i, np.uint8)
        clips += splitter.push(i, i / 30, frame, cut=(i == 20))
    clips += splitter.finish()
    assert [p.indices.tolist() for p, _ in clips] == [
        [0, 2, 4, 6],
        [8, 10, 12, 14],
        [20, 22, 24, 26],
        [28, 30, 32, 34],
    ]
    for plan, frames in clips:
        assert frames[:, 0, 0, 0].tolist() == plan.indices.tolist()
    assert [p.next_index for p, _ in clips] == [8, 16, 28, 36]  # the next kept frame, or the cut


def test_clips_never_cross_a_cut_and_do_not_overlap():
    times = np.arange(100) / 15.0
    plans, too_short = plan_clips(times, [40, 50], 15.0, 17)
    # scenes [0,40) -> 2 clips, [40,50) -> too short, [50,100) -> 2 clips
    assert [(p.scene, int(p.indices[0]), int(p.indices[-1])) for p in plans] == [
        (0, 0, 16),
        (0, 17, 33),
        (2, 50, 66),
        (2, 67, 83),
    ]
    assert too_short == 1
    for p in plans:
        assert len(p.indices) == 17
        assert not any(p.indices[0] < c <= p.indices[-1] for c in (40, 50))


def test_rewards_resampled_to_a_lower_rate_keep_their_total_and_actions_follow_their_frames():
    times = np.arange(68) / 60.0  # 60 fps source
    plans, _ = plan_clips(times, [], 15.0, 17)
    (plan,) = plans
    actions = np.arange(68) * 10
    rewards = np.ones(68, np.float32)
    assert resample_actions(actions, plan).tolist() == (np.arange(0, 68, 4) * 10).tolist()
    r = resample_rewards(rewards, plan)
    assert r.tolist() == [4.0] * 17  # each kept frame stands for 4 source frames
    assert r.sum() == rewards[plan.indices[0] : plan.next_index].sum()


def test_upsampled_repeated_frames_get_no_reward_twice():
    times = np.arange(20) / 5.0  # 5 fps -> 15 fps repeats each frame 3 times
    plans, _ = plan_clips(times, [], 15.0, 6)
    r = resample_rewards(np.arange(20, dtype=np.float32), plans[1])
    assert plans[1].indices.tolist() == [2, 2, 2, 3, 3, 3]
    assert r.tolist() == [2, 0, 0, 3, 0, 0]


def test_a_kept_frame_is_terminal_when_a_source_frame_it_stands_for_is():
    times = np.arange(68) / 60.0  # 60 fps -> 15 fps: each kept frame stands for 4 source frames
    (plan,) = plan_clips(times, [], 15.0, 17)[0]
    terminals = np.zeros(68, bool)
    terminals[66] = True  # the action at source frame 66 ended the episode: kept frame 16 (64..67)
    t = resample_terminals(terminals, plan)
    assert t.dtype == bool and np.flatnonzero(t).tolist() == [16]
    up = plan_clips(np.arange(20) / 5.0, [], 15.0, 6)[0][1]  # repeats: indices 2, 2, 2, 3, 3, 3
    assert resample_terminals(np.arange(20) == 3, up).tolist() == [False] * 3 + [True, False, False]


def test_black_frozen_and_still_clips_are_filtered_with_their_scores():
    cfg = FilterConfig()
    black = np.zeros((17, 32, 32, 3), np.uint8)
    frozen = np.full((17, 32, 32, 3), 120, np.uint8)
    moving = frozen.copy()
    for t in range(17):
        moving[t, 10:20, t : t + 8] = 250
    assert filter_reason(clip_scores(black), cfg) == "black"
    assert filter_reason(clip_scores(frozen), cfg) == "frozen"
    scores = clip_scores(moving)
    assert filter_reason(scores, cfg) is None
    assert filter_reason(scores, FilterConfig(min_motion=0.5)) == "low_motion"
    assert set(scores) == {"brightness", "motion", "max_frame_diff"}


def test_resize_targets_keep_the_shorter_side_or_squash():
    assert decode_size(128, 96, 0, 64, "center_crop") == (85, 64)
    assert decode_size(96, 128, 0, 64, "center_crop") == (64, 85)
    assert decode_size(160, 210, 0, 64, "squash") == (64, 64)
    with pytest.raises(ValueError, match="resize mode"):
        decode_size(10, 10, 0, 8, "stretch")
    assert center_crop(np.zeros((2, 64, 85, 3), np.uint8), 64).shape == (2, 64, 64, 3)


def test_rotation_matches_what_ffmpeg_shows(tmp_path):
    frames = np.zeros((3, 32, 48, 3), np.uint8)
    frames[:, :8, :8] = 255  # a white corner at the top left of the stored frame
    path = write_video(tmp_path / "r.mp4", frames, 15, rotation=90)
    info = probe(path)
    assert info.rotation == 90 and info.display_size == (32, 48)
    ours = rotate(decode_frames(path, 48, 32)[0], info.rotation)[0].mean(axis=-1)
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-frames:v",
            "1",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "gray",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(48, 32).astype(np.float32)
    assert ours.shape == theirs.shape
    assert np.abs(ours - theirs).mean() < 6
