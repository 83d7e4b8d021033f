"""Curation under faults: inputs that fail for reasons other than their content are retried, bad
action data is refused, a second writer of the output folder stops at once, edited inputs are seen."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate import EXIT_RETRY, CurateConfig, cli, curate_input, is_complete, iter_shard
from pipeline.inputs import InputItem, list_inputs
from pipeline.manifest import read_manifest
from pipeline.samples import write_video
from runtime.config import load_config

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "curate.yaml")


def _moving(n: int, shade: int = 240, height: int = 72, width: int = 96) -> np.ndarray:
    frames = np.full((n, height, width, 3), 90, np.uint8)
    for t in range(n):
        x = (3 * t) % (width - 16)
        frames[t, 24:48, x : x + 16] = shade
    return frames


def _args(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [f"input={inputs}", f"output={out}", "clip_frames=9", "size=32", "num_cpus=1", *extra]


def _keys(out: Path) -> list[str]:
    return sorted(k for p in sorted((out / "shards").glob("shard-*.tar")) for k, _ in iter_shard(p))


# --- non-content failures are retried, content failures stay -------------------------------------


def test_an_input_missing_at_read_time_fails_loudly_and_only_it_is_retried(ray_session, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", _moving(30, 200), 15)
    write_video(videos / "b.mp4", _moving(30, 250), 15)
    (videos / "garbage.mp4").write_text("this is not a video\n" * 20)  # a content failure: permanent
    listing = tmp_path / "list.txt"
    listing.write_text("videos/a.mp4\nvideos/b.mp4\nvideos/c.mp4\nvideos/garbage.mp4\n")  # c: not there yet
    out = tmp_path / "out"

    assert cli(JOB, _args(listing, out)) == EXIT_RETRY
    err = capsys.readouterr().err
    assert "1 input(s) failed for a reason other than their content" in err and "c.mp4" in err
    rows = {Path(r["source"]).name: r for r in read_manifest(out / "manifest.jsonl")}
    assert rows["c.mp4"]["status"] == "failed" and rows["c.mp4"]["retry"] is True
    assert rows["garbage.mp4"]["status"] == "failed" and "retry" not in rows["garbage.mp4"]
    assert rows["a.mp4"]["status"] == rows["b.mp4"]["status"] == "ok"
    cfg = load_config(CurateConfig, JOB, _args(listing, out))
    assert not is_complete(cfg)
    first_keys = _keys(out)
    staged = {p: p.stat().st_mtime_ns for p in out.glob("staging/*/*.tar")}
    assert len(staged) == 3  # a, b and the garbage file's (permanent) row; none for c

    write_video(videos / "c.mp4", _moving(30, 150), 15)
    assert cli(JOB, _args(listing, out)) == 0
    err = capsys.readouterr().err
    assert "3 already staged, 1 to do" in err
    assert {p: p.stat().st_mtime_ns for p in staged} == staged  # the good ones were not redone
    rows = {Path(r["source"]).name: r for r in read_manifest(out / "manifest.jsonl")}
    assert rows["c.mp4"]["status"] == "ok" and rows["garbage.mp4"]["status"] == "failed"
    assert not list(out.glob("staging/*/*.retry.json"))
    assert set(first_keys) < set(_keys(out))
    assert is_complete(cfg)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_input_is_a_failure_to_retry_not_a_bad_video(tmp_path):
    path = tmp_path / "locked.mp4"
    write_video(path, _moving(30), 15)
    path.chmod(0)
    try:
        row, clips = curate_input(InputItem(str(path)), CurateConfig(input="", output=""))
    finally:
        path.chmod(0o644)
    assert row["status"] == "failed" and row.get("retry") is True and not clips, row


def test_an_edited_input_makes_curation_incomplete(ray_session, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", _moving(30), 15)
    out = tmp_path / "out"
    assert cli(JOB, _args(videos, out)) == 0
    cfg = load_config(CurateConfig, JOB, _args(videos, out))
    assert is_complete(cfg)
    time.sleep(0.01)
    write_video(videos / "a.mp4", _moving(45, 120), 15)  # same path, new content
    assert not is_complete(cfg)


# --- one writer per output folder -----------------------------------------------------------------


def test_a_second_curate_on_a_folder_being_written_stops_at_once_naming_the_holder(tmp_path):
    out = tmp_path / "out"
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", _moving(30), 15)
    holder = subprocess.Popen(
        [
            sys.executable, "-c",
            "import sys, time\nfrom runtime.files import folder_lock\n"
            "with folder_lock(sys.argv[1], 'vidworld curate'):\n    print('held', flush=True)\n"
            "    time.sleep(120)\n",
            str(out),
        ],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        (out / "shards").mkdir()
        (out / "shards" / ".shard-000000.tar.abc.tmp").write_bytes(b"the other run's write in flight")
        t0 = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "vidworld.cli", "curate", JOB, *_args(videos, out)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        assert f"pid {holder.pid}" in second.stderr and "vidworld curate" in second.stderr
        assert time.monotonic() - t0 < 30
        assert (out / "shards" / ".shard-000000.tar.abc.tmp").exists()  # nothing of the holder's touched
        assert not (out / "staging").exists()
    finally:
        holder.kill()
        holder.wait()


def test_cleanup_removes_only_this_jobs_temporaries(tmp_path):
    from pipeline.curate import _clean_temporaries

    mine = tmp_path / ".shard-000001.tar.x1y2.tmp"
    other = tmp_path / ".notes.txt.q.tmp"
    for p in (mine, other):
        p.write_bytes(b"x")
    _clean_temporaries(tmp_path, ["shard-*.tar"])
    assert not mine.exists() and other.exists()


# --- bad action data is refused at curation --------------------------------------------------------


def _curate_with(tmp_path: Path, actions=None, rewards=None, frames: int = 30) -> dict:
    path = write_video(tmp_path / "v.mp4", _moving(frames), 15)
    if actions is not None:
        np.save(tmp_path / "v.actions.npy", actions)
    if rewards is not None:
        np.save(tmp_path / "v.rewards.npy", rewards)
    (item,) = list_inputs(str(path))
    row, clips = curate_input(item, CurateConfig(input="", output="", clip_frames=9, size=32))
    assert not clips, row
    assert row["status"] == "failed" and "retry" not in row
    json.dumps(row)
    return row


def test_nan_actions_are_refused(tmp_path):
    actions = np.zeros((30, 2), np.float32)
    actions[5, 1] = np.nan
    row = _curate_with(tmp_path, actions=actions)
    assert "v.actions.npy" in row["reason"] and "non-finite" in row["reason"] and "frame 5" in row["reason"]


def test_infinite_rewards_are_refused(tmp_path):
    rewards = np.zeros(30, np.float32)
    rewards[12] = np.inf
    row = _curate_with(tmp_path, actions=np.zeros(30, np.int64), rewards=rewards)
    assert "v.rewards.npy" in row["reason"] and "non-finite" in row["reason"] and "frame 12" in row["reason"]


def test_a_negative_discrete_action_is_refused(tmp_path):
    actions = np.arange(30, dtype=np.int64) % 4
    actions[7] = -7
    row = _curate_with(tmp_path, actions=actions)
    assert "negative discrete actions" in row["reason"] and "-7" in row["reason"]


def test_actions_whose_length_is_not_the_frame_count_are_refused(tmp_path):
    row = _curate_with(tmp_path, actions=np.zeros(29, np.int64))
    assert "29 entries but the video decoded to 30 frames" in row["reason"]


def test_good_actions_and_rewards_reach_the_clips(tmp_path):
    path = write_video(
        tmp_path / "v.mp4", _moving(30), 15, actions=np.arange(30) % 4, rewards=np.ones(30, np.float32)
    )
    (item,) = list_inputs(str(path))
    row, clips = curate_input(item, CurateConfig(input="", output="", clip_frames=9, size=32))
    assert row["status"] == "ok" and clips and all("actions.npy" in m for _, m in clips)
