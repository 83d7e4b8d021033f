"""``curate_input`` on one file, without Ray: what each input turns into."""

import numpy as np

from pipeline.curate import CurateConfig, curate_input
from pipeline.inputs import list_inputs
from pipeline.samples import write_video
from runtime.video import decode_mp4


def _moving(n: int, height: int = 96, width: int = 128) -> np.ndarray:
    frames = np.full((n, height, width, 3), 90, np.uint8)
    for t in range(n):
        frames[t, 30:50, (3 * t) % (width - 20) : (3 * t) % (width - 20) + 20] = 240
    return frames


def test_actions_that_do_not_match_the_frame_count_refuse_the_input(tmp_path):
    write_video(tmp_path / "v.mp4", _moving(40), 15, actions=np.arange(40))
    np.save(tmp_path / "v.actions.npy", np.arange(39))  # one short
    (item,) = list_inputs(str(tmp_path / "v.mp4"))
    row, clips = curate_input(item, CurateConfig(input="", output=""))
    assert row["status"] == "failed" and row["clips"] == len(clips) == 0
    assert "has 39 entries but the video decoded to 40 frames" in row["reason"]


def test_a_rotated_video_is_turned_upright_before_cropping(tmp_path):
    frames = _moving(34)
    frames[:, :, :64] = 255  # the stored left half is white
    frames[:, :, 64:] = 0
    write_video(tmp_path / "r.mp4", frames, 15, rotation=90)
    (item,) = list_inputs(str(tmp_path / "r.mp4"))
    cfg = CurateConfig(input="", output="", resize="center_crop")
    cfg.filters.frozen_max_diff = -1.0  # a still picture: only the geometry matters here
    cfg.filters.min_motion = -1.0
    row, clips = curate_input(item, cfg)
    assert row["probe"]["rotation"] == 90 and row["clips"] == 2, row
    clip = decode_mp4(clips[0][1]["mp4"])
    assert clip.shape == (17, 64, 64, 3)
    # Turned 90 degrees counter-clockwise (as players show it), the stored left half is at the bottom.
    assert clip[:, 48:].mean() > 200 and clip[:, :16].mean() < 60


def test_a_video_shorter_than_one_clip_is_skipped_saying_how_long_a_clip_is(tmp_path):
    write_video(tmp_path / "short.mp4", _moving(10), 15)
    (item,) = list_inputs(str(tmp_path / "short.mp4"))
    row, clips = curate_input(item, CurateConfig(input="", output=""))
    assert row["status"] == "skipped" and not clips
    assert "no scene is long enough for one clip of 17 frames at 15 fps" in row["reason"]
