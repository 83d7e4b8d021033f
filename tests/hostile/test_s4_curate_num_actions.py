"""Discrete actions out of the model's range are refused at curation when ``num_actions`` is set:
the input fails with a reason naming the frame, the others are curated as usual."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.curate import CurateConfig, cli, curate_input
from pipeline.inputs import list_inputs
from pipeline.manifest import read_manifest
from pipeline.samples import write_video
from runtime.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "curate.yaml")


def _moving(n: int, shade: int = 240) -> np.ndarray:
    frames = np.full((n, 72, 96, 3), 90, np.uint8)
    for t in range(n):
        frames[t, 24:48, (3 * t) % 80 : (3 * t) % 80 + 16] = shade
    return frames


def _curate(tmp_path: Path, actions: np.ndarray, num_actions: int | None) -> dict:
    path = write_video(tmp_path / "v.mp4", _moving(30), 15, actions=actions)
    (item,) = list_inputs(str(path))
    cfg = CurateConfig(input="", output="", clip_frames=9, size=32, num_actions=num_actions)
    row, clips = curate_input(item, cfg)
    assert (row["status"] == "ok") == bool(clips), row
    return row


def test_an_action_at_or_above_num_actions_is_refused_naming_the_frame(tmp_path):
    actions = np.arange(30, dtype=np.int64) % 4
    actions[9] = 4
    row = _curate(tmp_path, actions, num_actions=4)
    assert row["status"] == "failed" and "retry" not in row
    assert "discrete actions >= num_actions=4" in row["reason"] and "frame 9" in row["reason"]
    assert "0..3" in row["reason"]


def test_actions_below_num_actions_or_no_bound_pass(tmp_path):
    actions = np.arange(30, dtype=np.int64) % 4
    actions[9] = 4
    assert _curate(tmp_path, actions, num_actions=5)["status"] == "ok"
    assert _curate(tmp_path, actions, num_actions=None)["status"] == "ok"


def test_num_actions_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="num_actions"):
        load_config(CurateConfig, JOB, ["input=x", "output=y", "num_actions=0"]).validate()


def test_the_job_records_the_refused_input_and_curates_the_others(ray_session, tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    write_video(videos / "good.mp4", _moving(30), 15, actions=np.arange(30) % 4)
    write_video(videos / "bad.mp4", _moving(30, 200), 15, actions=np.full(30, 17))
    args = [f"input={videos}", f"output={out}", "clip_frames=9", "size=32", "num_cpus=1", "num_actions=4"]
    assert cli(JOB, args) == 0  # a content failure: nothing to retry
    rows = {Path(r["source"]).name: r for r in read_manifest(out / "manifest.jsonl")}
    assert rows["good.mp4"]["status"] == "ok" and rows["good.mp4"]["clips"] > 0
    assert rows["bad.mp4"]["status"] == "failed" and "num_actions=4" in rows["bad.mp4"]["reason"]
    assert rows["bad.mp4"]["clips"] == 0
