"""The training runtime is safe by default and loud when something is wrong: weights load without
unpickling, one trainer per run_dir, repeated stop signals still exit 75, and warnings for a flat
loss, ranks whose weights differ, and a resume that does not match the checkpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from runtime import checkpoint as ckpt
from runtime.convert import cli as convert_cli
from runtime.health import FlatLoss, ThroughputDrop
from runtime.tracking import read_metrics
from runtime.train import BUSY_EXIT_CODE, PREEMPTED_EXIT_CODE
from runtime.trained import load_trained
from tests.runtime.train_helpers import REPO, run_train, train_cmd, train_env


class Payload:
    """A pickle that creates a file when unpickled: stands in for any code an attacker would run."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _foreign_run(tmp_path):
    """A run folder as an older or foreign trainer leaves it: a complete checkpoint whose weights are
    only in DeepSpeed's pickled file, which here carries a payload."""
    run = tmp_path / "foreign"
    step_dir = ckpt.checkpoint_root(run) / ckpt.tag_for(5)
    step_dir.mkdir(parents=True)
    marker = tmp_path / "payload_ran"
    torch.save({"module": Payload(str(marker))}, step_dir / "mp_rank_00_model_states.pt")
    ckpt.mark_complete(step_dir, {"step": 5, "world_size": 1, "zero_stage": 0})
    return run, step_dir, marker


def test_load_trained_refuses_pickled_weights_and_never_runs_them(tmp_path):
    run, step_dir, marker = _foreign_run(tmp_path)
    with pytest.raises(ckpt.WeightsNotExported) as err:
        load_trained(run)
    assert f"vidworld convert-checkpoint {run} trust=true" in str(err.value)
    with pytest.raises(ckpt.WeightsNotExported):
        ckpt.export_weights(step_dir, tmp_path / "out.safetensors")
    assert not marker.exists()
    # The payload is live: unpickling the file the way the old loader did runs it.
    torch.load(step_dir / "mp_rank_00_model_states.pt", weights_only=False)
    assert marker.exists()


def test_convert_checkpoint_refuses_without_trust_and_says_it_unpickles(tmp_path, capsys):
    run, _, marker = _foreign_run(tmp_path)
    assert convert_cli(str(run), []) == 2
    err = capsys.readouterr().err
    assert "trust=true" in err and "arbitrary code" in err
    assert not marker.exists()
    help_text = subprocess.run(
        [str(REPO / ".venv" / "bin" / "vidworld"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "convert-checkpoint" in help_text and "UNPICKLES" in help_text


def test_flat_loss_warns_once_per_plateau():
    watch = FlatLoss(window=3, rel_tol=1e-3)
    assert [watch.update(s, v) for s, v in enumerate([2.0, 1.5, 1.0], 1)] == [None] * 3
    assert watch.update(4, 1.0) is None and watch.update(5, 1.0) is not None  # 1.0 x3: flat
    assert watch.update(6, 1.0) is None  # still the same plateau: said once
    assert watch.update(7, 0.5) is None and watch.update(8, 0.5) is None
    assert "has not moved over the last 3 steps" in (watch.update(9, 0.5) or "")


def test_throughput_drop_warns_below_the_fraction_of_the_median():
    watch = ThroughputDrop(fraction=0.5, window=20, skip=2, min_history=5)
    warnings = [watch.update(s, 0.1) for s in range(1, 10)]
    assert warnings == [None] * 9
    assert watch.update(10, 0.15) is None  # 2/3 of the rate: fine
    assert "throughput fell" in (watch.update(11, 0.3) or "")


def _wait_training(proc, run, timeout=180):
    deadline = time.monotonic() + timeout
    while not read_metrics(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the first trainer ended before it could be tested"


def _start(run, overrides):
    return subprocess.Popen(
        train_cmd(run, overrides),
        cwd=REPO,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.integration
def test_a_second_trainer_on_the_same_run_dir_stops_at_once_naming_the_first(tmp_path):
    run = tmp_path / "run"
    first = _start(run, ["trainer.max_steps=1000000", "trainer.log_every=1", "wandb.mode=disabled"])
    try:
        _wait_training(first, run)
        t0 = time.monotonic()
        second = run_train(
            run, ["trainer.max_steps=5", "trainer.lr=0.123", "wandb.mode=disabled"], timeout=120
        )
        assert second.returncode == BUSY_EXIT_CODE, second.stdout + second.stderr
        assert f"pid {first.pid}" in second.stderr and "vidworld train" in second.stderr
        assert time.monotonic() - t0 < 90
        assert first.poll() is None, "the first trainer must be unharmed"
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == PREEMPTED_EXIT_CODE, out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [row["train/step"] for row in rows if "train/loss" in row]  # warn/* rows share a step
    assert steps == list(range(1, len(steps) + 1)), "every step logged once, by the first trainer only"
    assert "0.123" not in (run / "config.yaml").read_text()


@pytest.mark.integration
def test_signals_repeated_during_the_preemption_save_still_exit_75(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, ["trainer.max_steps=1000000", "wandb.mode=offline"])
    try:
        _wait_training(proc, run)
        sent = 0
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:  # SLURM-style: again and again
            proc.send_signal((signal.SIGTERM, signal.SIGUSR1)[sent % 2])
            sent += 1
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent >= 3
    assert proc.returncode == PREEMPTED_EXIT_CODE, out
    assert "preempted at step" in out and ckpt.find_latest(run) is not None


@pytest.mark.integration
def test_flat_loss_warns_in_the_log_and_metrics_and_a_resume_at_step_0_is_refused(tmp_path):
    run = tmp_path / "run"
    flat = ["trainer.flat_loss_window=3", "trainer.flat_loss_rel_tol=100", "wandb.mode=disabled"]
    res = run_train(run, ["trainer.max_steps=4", *flat])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING: step 3: the loss has not moved" in res.stdout
    rows = read_metrics(run)
    assert rows[3]["warn/flat_loss"] == 1.0 and "warn/flat_loss" not in rows[2]
    # The exported weights are the checkpoint's safetensors, loadable without DeepSpeed's pickles.
    latest = ckpt.find_latest(run)
    exported = load_file(run / ckpt.WEIGHTS)
    saved = load_file(latest / ckpt.WEIGHTS)
    assert exported.keys() == saved.keys() and all(torch.equal(exported[k], saved[k]) for k in saved)

    # A checkpoint whose runtime state says step 0: going on would redo steps 1.. and prune it.
    state_path = ckpt.runtime_state_path(latest, 0)
    state = torch.load(state_path, weights_only=True)
    torch.save({**state, "step": 0}, state_path)
    before = (run / "metrics.jsonl").read_text()
    res = run_train(run, ["trainer.max_steps=8", *flat])
    assert res.returncode == 1, res.stdout + res.stderr
    assert "would start at step 0 although" in res.stderr and latest.name in res.stderr
    assert (run / "metrics.jsonl").read_text() == before and ckpt.find_latest(run) == latest


@pytest.mark.integration
def test_weights_that_differ_between_two_gloo_ranks_are_reported(tmp_path):
    run = tmp_path / "run"
    res = run_train(
        run,
        [
            "trainer.max_steps=4",
            "trainer.replica_check_every=1",
            "trainer.debug_desync_steps=[3]",
            "trainer.zero_stage=0",
            "wandb.mode=disabled",
        ],
        nproc=2,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "WARNING: step 3: the weights differ between ranks" in res.stdout
    assert "rank(s) [0, 1] differ" in res.stdout  # two ranks: no majority to single one out
    rows = read_metrics(run)
    assert rows[3]["warn/replica_mismatch"] == 1.0
    assert all("warn/replica_mismatch" not in rows[s] for s in (1, 2))
