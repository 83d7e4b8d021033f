import hashlib
import subprocess

import numpy as np

from pipeline.samples import SamplesConfig, write_samples


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


def test_samples_are_byte_identical_for_the_same_seed_and_differ_for_another(tmp_path):
    cfg = SamplesConfig(synthetic=2, atari=1, atari_max_frames=60)
    write_samples(tmp_path / "a", cfg)
    write_samples(tmp_path / "b", cfg)
    write_samples(tmp_path / "c", SamplesConfig(seed=1, synthetic=2, atari=1, atari_max_frames=60))
    a, b, c = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert a == b
    assert set(a) == set(c) and a != c


def test_atari_episode_records_one_action_and_reward_per_video_frame_and_the_paddle_moves(tmp_path):
    cfg = SamplesConfig(synthetic=0, atari=1, atari_max_frames=120)
    (video,) = write_samples(tmp_path, cfg)
    actions = np.load(video.with_suffix(".actions.npy"))
    rewards = np.load(video.with_suffix(".rewards.npy"))
    info = _count_frames(video)
    assert info["frames"] == len(actions) == len(rewards) > 60
    assert (info["width"], info["height"], info["fps"]) == (160, 210, "15/1")
    assert actions.dtype == np.int64 and rewards.dtype == np.float32
    # The policy moves: LEFT and RIGHT (Breakout actions 3 and 2) are both taken, many times.
    counts = np.bincount(actions, minlength=4)
    assert counts[2] > 10 and counts[3] > 10


def test_synthetic_scenes_have_the_documented_sizes_rates_and_rotation(tmp_path):
    paths = write_samples(tmp_path, SamplesConfig(atari=0))
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
