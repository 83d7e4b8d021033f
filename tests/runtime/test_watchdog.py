"""No silent hangs: the rank that stopped answering is named, and a preemption signal is honoured
while the main thread is blocked (runtime.watchdog; trainer.collective_timeout_s, preempt_grace_s)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch.distributed as dist
from train_helpers import start_training, stop_training, wait_for_ranks

from runtime.train import is_collective_error
from runtime.watchdog import RankWatch


def test_the_rank_whose_heartbeat_stopped_is_named_and_the_others_are_not():
    store = dist.HashStore()
    watches = [RankWatch(r, 3, store, interval=0.1, preempt_grace_s=0) for r in range(3)]
    try:
        time.sleep(0.3)
        assert "every rank still answers" in watches[0].diagnose()
        watches[2].close()  # rank 2 stops beating: a hung or dead process
        text = watches[0].diagnose()
        assert "rank(s) 2 stopped answering" in text, text
        assert "rank(s) 2 " in watches[1].diagnose()
    finally:
        for w in watches:
            w.close()


def test_without_a_store_a_rank_other_than_0_blames_the_store_host():
    watch = RankWatch(1, 2, None, preempt_grace_s=0)
    assert "the rendezvous store does not answer: its host (rank 0" in watch.diagnose()
    watch.close()


def _signal_self_and_wait(watch: RankWatch, seconds: float, stand_down: bool = False) -> None:
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)  # the training loop's handler stands in
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        if stand_down:
            watch.stand_down()
        time.sleep(seconds)
    finally:
        signal.signal(signal.SIGUSR1, previous)
        watch.close()


def test_a_signal_not_taken_at_a_step_boundary_within_the_grace_exits_75():
    exits: list[int] = []
    watch = RankWatch(0, 1, None, interval=0.1, preempt_grace_s=0.3, exit_code=75, exit_fn=exits.append)
    _signal_self_and_wait(watch, 1.2)
    assert exits == [75]


def test_a_signal_the_loop_took_in_time_leaves_the_process_alone():
    exits: list[int] = []
    watch = RankWatch(0, 1, None, interval=0.1, preempt_grace_s=0.3, exit_code=75, exit_fn=exits.append)
    _signal_self_and_wait(watch, 1.2, stand_down=True)
    assert exits == []


def test_collective_errors_are_told_from_model_errors():
    gloo = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"
    assert is_collective_error(RuntimeError(gloo))
    assert is_collective_error(RuntimeError("Timed out waiting 5000ms for recv operation to complete"))
    assert not is_collective_error(ValueError("actions out of range 0..17"))


def _read_until(proc, needle: str, timeout: float) -> str:
    """The run's output up to the line holding ``needle`` (or all of it once the run ends or times out)."""
    out, deadline = [], time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            out.append(line)
            if needle in line:
                break
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    return "".join(out)


def _stop_rank_1(run, overrides: list[str], needle: str, then=None) -> tuple[str, float]:
    """Train on two ranks, SIGSTOP rank 1 once both are in the loop, call ``then(ranks)``, and read the
    output up to the line holding ``needle``; returns it and the seconds from ``then`` to that line."""
    proc, ranks = start_training(run, ["trainer.max_steps=100000", "wandb.mode=disabled", *overrides]), None
    try:
        ranks = wait_for_ranks(proc, run)
        ranks[1].send_signal(signal.SIGSTOP)
        if then is not None:
            then(ranks)
        started = time.monotonic()
        out = _read_until(proc, needle, timeout=90)
        return out, time.monotonic() - started
    finally:
        stop_training(proc, ranks)


@pytest.mark.integration
def test_a_hung_rank_ends_the_run_after_the_collective_timeout_naming_it(tmp_path):
    overrides = ["trainer.collective_timeout_s=10", "trainer.log_every=1"]
    out, waited = _stop_rank_1(tmp_path / "run", overrides, "stopped answering")
    assert "train: rank 0: a collective failed" in out, out[-3000:]
    assert "rank(s) 1 stopped answering: hung or dead" in out, out[-3000:]
    assert waited < 60, waited  # the 10 s timeout plus the diagnosis, not torch's 30 minutes


def _signal_rank_0_while_it_waits(ranks) -> None:
    time.sleep(1.0)  # rank 0 is now waiting for rank 1 inside a collective
    ranks[0].send_signal(signal.SIGUSR1)


@pytest.mark.integration
def test_a_preemption_signal_while_a_rank_hangs_still_exits_75(tmp_path):
    """Rank 1 is stopped, so rank 0 blocks in the step's all-reduce and cannot reach a step boundary;
    SIGUSR1 to rank 0 still ends it with 75 (SLURM requeues) after trainer.preempt_grace_s."""
    out, waited = _stop_rank_1(
        tmp_path / "run", ["trainer.preempt_grace_s=2"], "without saving", then=_signal_rank_0_while_it_waits
    )
    assert "train: rank 0: a preemption signal arrived 2 s ago" in out, out[-3000:]
    assert "rank(s) 1 stopped answering" in out and "Exiting 75 without saving" in out, out[-3000:]
    assert waited < 45, waited
