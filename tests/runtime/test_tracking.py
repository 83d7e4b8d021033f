"""runtime.tracking: the one W&B writer (``open_run``, ``wandb_media``) and the Tracker's videos."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from runtime.tracking import Table, Tracker, WandbConfig, open_run, wandb_media, write_video
from runtime.video import VideoClip


def _frames(t: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(t, 16, 16, 3), dtype=np.uint8)


def _rate(path) -> Fraction:
    with av.open(str(path)) as container:
        return container.streams.video[0].average_rate


def test_a_video_clip_is_written_at_its_own_fps(tmp_path):
    path = write_video(VideoClip(_frames(), 24.0), tmp_path / "clip.mp4")
    assert _rate(path) == 24


def test_tracker_logs_a_video_clip_at_its_fps_and_a_bare_array_at_media_fps(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = Tracker(WandbConfig(mode="offline"), tmp_path, {}, max_steps=1, media_fps=4.0)
    try:
        tracker.log_media(1, {"rollout": VideoClip(_frames(), 24.0), "recon": _frames()})
    finally:
        tracker.close()
    assert _rate(tmp_path / "media" / "eval_rollout_step00000001.mp4") == 24
    assert _rate(tmp_path / "media" / "eval_recon_step00000001.mp4") == 4
    # The video W&B keeps is that file: it plays at the clip's rate too.
    logged = list((tmp_path / "wandb").glob("offline-run-*/files/media/videos/eval/rollout_*.mp4"))
    assert logged and all(_rate(p) == 24 for p in logged)


def test_online_without_an_api_key_falls_back_to_offline_with_one_message(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = open_run(WandbConfig(mode="online", tags=["eval"]), tmp_path, "eval", job_type="eval")
    try:
        run.log({"x": 1.0, "table": wandb_media(Table.of_rows(("a", "b"), [{"a": 1, "b": 2.0}]))})
    finally:
        run.finish()
    err = capsys.readouterr().err
    assert err.count("WANDB_API_KEY is not set; logging offline") == 1
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_disabled_opens_no_run_and_an_unknown_mode_is_refused(tmp_path):
    assert open_run(WandbConfig(mode="disabled"), tmp_path, "x") is None
    assert not (tmp_path / "wandb").exists()
    with pytest.raises(ValueError, match="online, offline or disabled"):
        open_run(WandbConfig(mode="ofline"), tmp_path, "x")


def test_media_become_the_wandb_objects_they_are(tmp_path):
    import wandb

    mp4 = write_video(VideoClip(_frames(), 15.0), tmp_path / "v.mp4")
    assert isinstance(wandb_media(mp4), wandb.Video)
    assert isinstance(wandb_media(VideoClip(_frames(), 15.0), tmp_path / "w.mp4"), wandb.Video)
    assert _rate(tmp_path / "w.mp4") == 15
    assert isinstance(wandb_media(_frames()[0]), wandb.Image)
    table = wandb_media(Table.of_rows(("h", "psnr"), [{"h": 1, "psnr": 30.0, "other": 0}]))
    assert isinstance(table, wandb.Table) and table.columns == ["h", "psnr"]
    with pytest.raises(ValueError, match="video_path"):
        wandb_media(VideoClip(_frames(), 15.0))
