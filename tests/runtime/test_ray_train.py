"""``vidworld train ... launcher.kind=ray`` on a real Ray cluster (a head on loopback, RAY_ADDRESS).

Ray Train's two workers run the same loop as two torchrun processes; with the same global batch
they must produce the same losses and the same weights, and a worker's exception must reach the
command's stderr with a nonzero exit code.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runtime import checkpoint as ckpt
from runtime.ray_train import stop_file
from tests.cluster_services import LAUNCHER_VARIABLES, REPO, RayCluster

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
# Steps are milliseconds here: a run is dominated by start-up, so a few dozen steps cost little.
RUN = ["wandb.mode=disabled", "trainer.max_steps=12", "trainer.save_every=6", "trainer.log_every=3"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update({"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})})
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {int(r["train/step"]): float(r["train/loss"]) for r in rows}


def _ray_train(ray_cluster: RayCluster, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "vidworld"), "train", "jobs/reference.yaml", f"run_dir={run_dir}", "launcher.kind=ray",
           "launcher.num_workers=2", *RUN, *overrides]
    return _run(cmd, _env({"RAY_ADDRESS": ray_cluster.address, **ray_cluster.auth_env}))


@pytest.mark.slow
def test_ray_train_two_workers_match_torchrun_losses_and_weights(ray_cluster, tmp_path):
    ray_dir, torchrun_dir = tmp_path / "ray", tmp_path / "torchrun"
    res = _ray_train(ray_cluster, ray_dir)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert f"on {ray_cluster.address}" in res.stdout  # joined the running cluster, did not start its own

    latest = ckpt.find_latest(ray_dir)
    assert latest is not None and ckpt.read_meta(latest)["step"] == 12
    assert ckpt.read_meta(latest)["world_size"] == 2  # both Ray workers were ranks of one group
    assert ckpt.runtime_state_path(latest, 1).exists()
    assert (ray_dir / "ray").is_dir()  # Ray Train's records stay inside the run folder

    base = _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(BIN / "vidworld"), "train",
                 "jobs/reference.yaml", f"run_dir={torchrun_dir}", *RUN], _env())
    assert base.returncode == 0, base.stdout[-4000:] + base.stderr[-4000:]

    ray_losses, torchrun_losses = _losses(ray_dir), _losses(torchrun_dir)
    assert sorted(ray_losses) == [3, 6, 9, 12]
    assert ray_losses == pytest.approx(torchrun_losses, rel=1e-4)
    # Not merely similar curves: the same global batch gives the same trained weights.
    ray_w = load_file(ray_dir / "model.safetensors")
    torchrun_w = load_file(torchrun_dir / "model.safetensors")
    assert ray_w.keys() == torchrun_w.keys()
    for name in ray_w:
        torch.testing.assert_close(ray_w[name], torchrun_w[name], rtol=1e-4, atol=1e-5, msg=name)


def test_ray_worker_error_reaches_stderr_with_nonzero_exit(ray_cluster, tmp_path):
    # The config loads in the driver; the model is built inside each worker, where this raises.
    res = _ray_train(ray_cluster, tmp_path / "run", "model.heads=3")
    assert res.returncode == 1, res.stdout[-4000:] + res.stderr[-4000:]
    assert "training failed on the workers" in res.stderr, res.stderr[-4000:]
    # Whichever rank failed first is named, with the worker's own exception and message.
    assert re.search(r"rank [01]: ValueError: model.width=64 must be divisible by model.heads=3", res.stderr)
    assert ckpt.find_latest(tmp_path / "run") is None


def _lines(proc: subprocess.Popen) -> list[str]:
    """The driver's output so far, read by a thread as it comes (the test acts on what it says)."""
    out: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            out.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _train_workers() -> list:
    """Ray Train's worker processes on this machine (their titles name the worker actor)."""
    import psutil

    return [p for p in psutil.process_iter(["cmdline"]) if "TrainWorker" in " ".join(p.info["cmdline"] or [])]


def _wait_for(what, timeout: float, proc: subprocess.Popen, out: list[str]):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        got = what()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out; driver exit {proc.poll()}:\n{''.join(out)[-4000:]}")


@pytest.mark.slow
def test_a_killed_worker_restarts_and_resumes_and_sigusr1_to_the_driver_saves_and_exits_75(
    ray_cluster, tmp_path
):
    run_dir = tmp_path / "run"
    cmd = [str(BIN / "vidworld"), "train", "jobs/reference.yaml", f"run_dir={run_dir}", "launcher.kind=ray",
           "launcher.num_workers=2", "launcher.max_failures=1", "wandb.mode=disabled",
           "trainer.max_steps=10000000", "trainer.save_every=50", "trainer.log_every=50"]
    env = _env({"RAY_ADDRESS": ray_cluster.address, **ray_cluster.auth_env})
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out = _lines(proc)
    try:
        first = _wait_for(lambda: ckpt.find_latest(run_dir), 180, proc, out)
        _wait_for(_train_workers, 30, proc, out)[0].kill()  # a lost worker: Ray Train starts the group again
        resumed = _wait_for(lambda: re.search(r"train: resumed from \S+ \(step (\d+)\)", "".join(out)), 180,
                            proc, out)
        assert int(resumed.group(1)) >= ckpt.read_meta(first)["step"]
        after = len("".join(out)[: resumed.end()])
        _wait_for(lambda: "train: saved" in "".join(out)[after:], 120, proc, out)  # training again
        proc.send_signal(signal.SIGUSR1)
        code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(out)
    assert code == 75, text[-4000:]
    assert "SIGUSR1: asking the workers to save and stop" in text and "preempted at step" in text
    latest = ckpt.find_latest(run_dir)
    assert ckpt.read_meta(latest)["step"] > int(resumed.group(1))
    assert not stop_file(run_dir).exists()  # a rerun is not stopped by this run's request
