"""slurm/train.sbatch on a real single-node SLURM cluster (started by tests/cluster_services.py).

Two srun tasks train jobs/reference.yaml over gloo; a SIGUSR1 to the batch script (what
``--signal=B:USR1@120`` delivers before the time limit) makes the run save, exit 75 and requeue
itself, and the requeued job resumes to ``trainer.max_steps``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime import checkpoint as ckpt
from tests.cluster_services import REPO, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slurm]

SBATCH = REPO / "slurm" / "train.sbatch"


def _train_args(run_dir: Path, *extra: str) -> list[str]:
    return ["jobs/reference.yaml", f"run_dir={run_dir}", "wandb.mode=disabled", "trainer.progress_interval=5",
            *extra]


def _submit(cluster: SlurmCluster, tmp_path: Path, args: list[str]) -> tuple[int, Path]:
    log = tmp_path / "job.log"
    job_id = cluster.sbatch(SBATCH, args, options=["--ntasks-per-node=2", "--cpus-per-task=1",
                                                   f"--output={log}", f"--chdir={REPO}"])
    return job_id, log


def _explain(cluster: SlurmCluster, job_id: int, log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no job log)"
    return f"job {job_id}: {cluster.job(job_id)}\n--- job log ---\n{text[-6000:]}"


def _logged_steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [int(json.loads(line)["train/step"]) for line in path.read_text().splitlines() if line.strip()]


def test_sbatch_two_tasks_train_to_max_steps_and_save_a_two_rank_checkpoint(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id, log = _submit(slurm_cluster, tmp_path, _train_args(
        run_dir, "trainer.max_steps=20", "trainer.save_every=10", "trainer.log_every=5"))
    info = slurm_cluster.wait_for_finish(job_id, timeout_s=150)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _explain(slurm_cluster, job_id, log)

    latest = ckpt.find_latest(run_dir)
    assert latest is not None and latest.name == ckpt.tag_for(20), _explain(slurm_cluster, job_id, log)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == latest.name
    meta = ckpt.read_meta(latest)
    assert meta["step"] == 20 and meta["world_size"] == 2
    # Both srun tasks wrote their own runtime state: two ranks took part, not one rank twice.
    assert ckpt.runtime_state_path(latest, 0).exists() and ckpt.runtime_state_path(latest, 1).exists()
    assert (run_dir / "config.yaml").exists()
    text = log.read_text()
    assert "2 task(s)" in text and "accelerator cpu" in text  # the script's own setup line
    assert "2 process(es)" in text and "train: saved" in text
    assert _logged_steps(run_dir)[-1] == 20


@pytest.mark.slow
def test_sigusr1_saves_requeues_and_the_requeued_job_resumes_to_max_steps(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    max_steps = 200  # ~3 s unloaded: the signal (under 1 s after the first logged step) lands mid-run
    job_id, log = _submit(slurm_cluster, tmp_path, _train_args(
        run_dir, f"trainer.max_steps={max_steps}", "trainer.save_every=100000", "trainer.log_every=5"))

    # A logged step means every rank is inside the loop, past installing its signal handlers.
    deadline = time.monotonic() + 120
    while not _logged_steps(run_dir):
        state = slurm_cluster.job(job_id)["JobState"]
        assert time.monotonic() < deadline and state in ("PENDING", "RUNNING"), (
            "training never logged a step\n" + _explain(slurm_cluster, job_id, log))
        time.sleep(0.2)
    # What --signal=B:USR1@120 does before the time limit, now: USR1 to the batch script only.
    slurm_cluster.command("scancel", "--signal=USR1", "--batch", str(job_id))

    info = slurm_cluster.wait_for_finish(job_id, timeout_s=180)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _explain(slurm_cluster, job_id, log)
    assert info["Restarts"] == "1", _explain(slurm_cluster, job_id, log)

    text = log.read_text()  # --open-mode=append keeps both attempts
    assert "got SIGUSR1" in text and "requeueing job" in text, _explain(slurm_cluster, job_id, log)
    # Under srun --kill-on-bad-exit=1 the first rank out with 75 kills no other into a 143.
    assert "training stopped (exit 75)" in text, _explain(slurm_cluster, job_id, log)
    preempted = [line for line in text.splitlines() if "preempted at step" in line]
    assert len(preempted) == 1, _explain(slurm_cluster, job_id, log)
    stop_step = int(preempted[0].split("preempted at step")[1].split(";")[0])
    assert 0 < stop_step < max_steps
    assert f"(step {stop_step})" in text and "resumed from" in text  # the second attempt resumed there
    latest = ckpt.find_latest(run_dir)
    assert latest is not None and ckpt.read_meta(latest)["step"] == max_steps
    assert ckpt.read_meta(latest)["world_size"] == 2
    # The resumed attempt continued the step count instead of starting again from 0.
    steps = _logged_steps(run_dir)
    assert steps[-1] == max_steps and steps.count(5) == 1


@pytest.mark.slow
def test_time_limit_warning_from_sbatch_signal_option_saves_and_requeues(slurm_cluster, tmp_path):
    # The real early warning, not a hand-sent signal: a 1-minute limit with the USR1 due 45 s
    # before it (slurmctld checks time limits about every 30 s, so it comes 15-45 s in, after the
    # ~10 s start-up). Every attempt would hit its limit again, so the test stops the job once the
    # first requeue is seen.
    run_dir = tmp_path / "run"
    log = tmp_path / "job.log"
    job_id = slurm_cluster.sbatch(
        SBATCH, _train_args(run_dir, "trainer.max_steps=1000000", "trainer.save_every=1000000",
                            "trainer.log_every=50"),
        options=["--time=1", "--signal=B:USR1@45", f"--output={log}", f"--chdir={REPO}"])
    try:
        deadline = time.monotonic() + 90
        while slurm_cluster.job(job_id).get("Restarts") != "1":
            assert time.monotonic() < deadline, "no requeue before the time limit\n" + _explain(
                slurm_cluster, job_id, log)
            time.sleep(0.5)
    finally:
        slurm_cluster.command("scancel", str(job_id), check=False)
    text = log.read_text()
    assert "got SIGUSR1" in text and "requeueing job" in text, _explain(slurm_cluster, job_id, log)
    if "preempted at step" not in text:
        # slurmctld sent the warning while the processes were still starting (seen once, 1 s into
        # the job): nothing was trained to save, and the job must still have been requeued.
        assert "training stopped (exit" in text and ckpt.find_latest(run_dir) is None, _explain(
            slurm_cluster, job_id, log)
        return
    latest = ckpt.find_latest(run_dir)
    assert latest is not None and 0 < ckpt.read_meta(latest)["step"] < 1000000


def test_a_task_that_fails_ends_the_whole_step_at_once(slurm_cluster, tmp_path):
    """srun --kill-on-bad-exit=1 in vidworld_srun_requeue: when one task dies, the others (which would
    wait in a collective, or hang) are ended with it, and the step's exit code is the failure's."""
    script = tmp_path / "fail.sbatch"
    script.write_text(
        "#!/bin/bash\n"
        f"source {REPO}/slurm/common.sh\n"
        "vidworld_srun_requeue bash -c 'if [[ $SLURM_PROCID == 1 ]]; then exit 3; fi; sleep 300'\n"
        'echo "step exit $?"\n'
    )
    log = tmp_path / "job.log"
    started = time.monotonic()
    job_id = slurm_cluster.sbatch(script, options=["--ntasks-per-node=2", "--cpus-per-task=1",
                                                   f"--output={log}", f"--chdir={tmp_path}"])
    slurm_cluster.wait_for_finish(job_id, timeout_s=120)
    took = time.monotonic() - started
    text = log.read_text()
    # srun ended task 0 (SIGTERM, 143) as soon as task 1 failed, and returns the highest exit code.
    assert "task 1: Exited with exit code 3" in text and "step exit 0" not in text, _explain(
        slurm_cluster, job_id, log)
    assert took < 60, f"the other task was left running ({took:.0f} s)\n" + _explain(
        slurm_cluster, job_id, log)
