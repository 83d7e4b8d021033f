"""Rank discovery for every launcher, and multi-process ZeRO training matching one process."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import run_train, start_training, stop_training, wait_for_ranks

from runtime import checkpoint as ckpt
from runtime.distributed import expand_hostlist, launcher_env
from runtime.tracking import read_metrics


def test_expand_hostlist_handles_ranges_padding_and_lists():
    assert expand_hostlist("node1") == ["node1"]
    assert expand_hostlist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_hostlist("a[9-11]-ib") == ["a9-ib", "a10-ib", "a11-ib"]
    assert expand_hostlist("x[1,3],y[08-09]") == ["x1", "x3", "y08", "y09"]


def test_plain_process_is_rank_0_of_1():
    info = launcher_env({})
    assert (info["launcher"], info["rank"], info["world_size"], info["local_rank"]) == ("single", 0, 1, 0)


def test_torchrun_variables_win_over_slurm_ones():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29400",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "4",  # torchrun started by srun: torchrun's ranks count
    }
    info = launcher_env(env)
    assert info["launcher"] == "torchrun"
    assert (info["rank"], info["world_size"], info["local_rank"], info["local_world_size"]) == (3, 8, 1, 2)
    assert (info["master_addr"], info["master_port"]) == ("10.0.0.1", 29400)


def test_srun_variables_give_ranks_and_the_first_host_as_master(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: our own host-list expansion is used
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_TASKS_PER_NODE": "4(x2)",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "4242",
    }
    info = launcher_env(env)
    assert info["launcher"] == "slurm"
    assert (info["rank"], info["world_size"], info["local_rank"], info["local_world_size"]) == (5, 8, 1, 4)
    assert info["master_addr"] == "gpu07"
    assert (
        info["master_port"] == launcher_env({**env, "SLURM_PROCID": "0"})["master_port"]
    )  # same on all tasks
    assert launcher_env({**env, "MASTER_PORT": "1234"})["master_port"] == 1234


@pytest.mark.integration
@pytest.mark.slow
def test_two_process_zero2_and_zero3_match_one_process_with_the_same_global_batch(tmp_path):
    """1 process x grad_accum 2 == 2 processes x grad_accum 1 (ZeRO-2; ZeRO-3 with activation
    checkpointing and zero.Init), same micro-batch: losses within 1e-5 relative, exported weights
    within 1e-5 (on this machine they come out equal)."""
    common = ["trainer.max_steps=6", "trainer.warmup_steps=2", "wandb.mode=disabled"]
    runs = {
        "one": (1, ["trainer.grad_accum=2"]),
        "zero2": (2, ["trainer.zero_stage=2"]),
        "zero3": (2, ["trainer.zero_stage=3", "trainer.activation_checkpointing=true"]),
    }
    losses, weights = {}, {}
    for name, (nproc, extra) in runs.items():
        res = run_train(tmp_path / name, [*common, *extra], nproc=nproc)
        assert res.returncode == 0, f"{name}:\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}"
        rows = read_metrics(tmp_path / name)
        losses[name] = [rows[s]["train/loss"] for s in range(1, 7)]
        weights[name] = load_file(tmp_path / name / "model.safetensors")
        assert len(list((tmp_path / name).glob("metrics.jsonl"))) == 1  # rank 0 alone logs
    assert losses["one"][-1] < losses["one"][0]  # it trained
    for name in ("zero2", "zero3"):
        assert losses[name] == pytest.approx(losses["one"], rel=1e-5), name
        assert sorted(weights[name]) == sorted(weights["one"]), name  # ZeRO-3 shards consolidated by name
        for key, w in weights["one"].items():
            torch.testing.assert_close(weights[name][key], w, rtol=1e-5, atol=1e-5, msg=f"{name} {key}")


@pytest.mark.integration
@pytest.mark.slow
def test_a_signal_to_one_rank_makes_every_rank_save_and_exit_75_then_resume(tmp_path):
    """SIGUSR1 reaches one torchrun worker only; the per-step all-reduce makes both ranks save one
    complete two-rank checkpoint at the same step and exit 75; the rerun resumes from it."""
    run = tmp_path / "run"
    overrides = ["trainer.max_steps=400", "trainer.zero_stage=2", "wandb.mode=disabled"]
    proc, ranks = start_training(run, overrides), None
    try:
        ranks = wait_for_ranks(proc, run)
        ranks[1].send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:  # never leave trainers behind
            stop_training(proc, ranks)
    # torchrun reports the workers' own exit code (75) in its failure summary.
    assert proc.returncode != 0 and "exitcode  : 75" in out, out[-3000:]
    assert "preempted at step" in out
    saved = ckpt.find_latest(run)
    assert saved is not None, out[-3000:]
    step = ckpt.read_meta(saved)["step"]
    assert 1 <= step < 400 and ckpt.read_meta(saved)["world_size"] == 2
    assert {p.name for p in saved.glob("runtime_rank*.pt")} == {
        "runtime_rank00000.pt",
        "runtime_rank00001.pt",
    }

    res = run_train(run, [*overrides[1:], f"trainer.max_steps={step + 2}"], nproc=2)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"resumed from {saved} (step {step})" in res.stdout
    assert max(read_metrics(run)) == step + 2
