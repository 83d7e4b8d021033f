"""Checkpoint folders: completeness, the latest pointer, pruning, our state files, and preempt/resume."""

from __future__ import annotations

import random
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from train_helpers import REPO, read_wandb_history, run_train, train_cmd, train_env

from runtime import checkpoint as ckpt
from runtime.tracking import read_metrics
from runtime.train import PREEMPTED_EXIT_CODE
from runtime.trained import load_trained


def _fake_checkpoint(run_dir, step: int, complete: bool, world_size: int = 1):
    d = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"\x00" * 10)
    if complete:
        ckpt.mark_complete(d, {"step": step, "world_size": world_size, "zero_stage": 0})
    return d


def test_a_cut_off_checkpoint_is_never_picked_as_latest(tmp_path):
    assert ckpt.find_latest(tmp_path) is None
    two = _fake_checkpoint(tmp_path, 2, complete=True)
    _fake_checkpoint(tmp_path, 4, complete=False)  # a write cut off before COMPLETE
    assert ckpt.find_latest(tmp_path) == two
    (ckpt.checkpoint_root(tmp_path) / "latest").write_text("step_00000004\n")  # even if pointed at
    assert ckpt.find_latest(tmp_path) == two


def test_a_complete_checkpoint_newer_than_the_pointer_wins(tmp_path):
    _fake_checkpoint(tmp_path, 2, complete=True)
    six = _fake_checkpoint(tmp_path, 6, complete=True)
    (ckpt.checkpoint_root(tmp_path) / "latest").write_text("step_00000002\n")  # crash before the move
    assert ckpt.find_latest(tmp_path) == six


def test_prune_keeps_the_last_n_complete_and_drops_old_cut_off_writes(tmp_path):
    for step in (1, 2, 3, 4):
        _fake_checkpoint(tmp_path, step, complete=True)
    _fake_checkpoint(tmp_path, 0, complete=False)
    _fake_checkpoint(
        tmp_path, 9, complete=False
    )  # newer than the newest complete: left for remove_incomplete
    ckpt.prune(tmp_path, keep_last=2)
    left = sorted(p.name for p in ckpt.checkpoint_root(tmp_path).iterdir() if p.is_dir())
    assert left == ["step_00000003", "step_00000004", "step_00000009"]
    ckpt.remove_incomplete(tmp_path)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    assert not (ckpt.checkpoint_root(tmp_path) / "step_00000009").exists()


def test_runtime_state_round_trips_with_weights_only_and_restores_rng(tmp_path):
    d = _fake_checkpoint(tmp_path, 5, complete=True)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = {"step": 5, "loader": {"next": 7, "epoch": 1}, "rng": ckpt.rng_state(), "skipped_steps": 2}
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.save_runtime_state(d, 0, state)
    loaded = ckpt.load_runtime_state(d, rank=0, world_size=1)  # torch.load(..., weights_only=True) inside
    torch.load(ckpt.runtime_state_path(d, 0), weights_only=True)
    assert (
        loaded["step"] == 5 and loaded["loader"] == {"next": 7, "epoch": 1} and loaded["skipped_steps"] == 2
    )
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def test_sigterm_saves_exits_75_and_the_resumed_run_follows_the_uninterrupted_losses(tmp_path):
    steps = 30
    common = [f"trainer.max_steps={steps}", "trainer.save_every=1000", "trainer.warmup_steps=5"]

    straight = tmp_path / "straight"
    res = run_train(straight, [*common, "wandb.mode=disabled"])
    assert res.returncode == 0, res.stdout + res.stderr
    want = {s: r["train/loss"] for s, r in read_metrics(straight).items()}
    assert sorted(want) == list(range(1, steps + 1))

    # The same run, sent SIGTERM from outside once it is training.
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(run, [*common, "wandb.mode=offline"]),
        cwd=REPO,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not read_metrics(run) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a trainer behind
            proc.kill()
            proc.wait()
    assert proc.returncode == PREEMPTED_EXIT_CODE, out
    saved = ckpt.find_latest(run)
    assert saved is not None and "preempted at step" in out
    stopped_at = ckpt.read_meta(saved)["step"]
    assert 1 <= stopped_at < steps, "the signal should land mid-run"
    assert (ckpt.checkpoint_root(run) / "latest").read_text().strip() == saved.name
    assert (saved / "config.yaml").is_file() and (saved / "runtime_rank00000.pt").is_file()
    # A stopped run has no exported weights yet: load_trained reads the checkpoint's safetensors.
    assert not (run / "model.safetensors").exists()
    _, _, model = load_trained(run)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # A cut-off write of a later step must be ignored (and cleared) by the resume.
    cut = ckpt.checkpoint_root(run) / ckpt.tag_for(stopped_at + 1)
    cut.mkdir()
    (cut / "mp_rank_00_model_states.pt").write_bytes(b"truncated")

    res = run_train(run, [*common, "wandb.mode=offline"])
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed from {saved}" in res.stdout
    got = {s: r["train/loss"] for s, r in read_metrics(run).items()}
    assert sorted(got) == list(range(1, steps + 1))
    for s in range(1, steps + 1):
        assert got[s] == pytest.approx(want[s], rel=1e-6, abs=1e-6), f"step {s} (resumed after {stopped_at})"

    # Both halves went to one W&B run; the second starts where the checkpoint was.
    run_id = (run / "wandb_run_id.txt").read_text().strip()
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2
    assert int(read_wandb_history(files[1])[0]["train/step"]) == stopped_at + 1
