"""Resume on another number of processes, ZeRO stage or precision (runtime.portable), and the clear
line when a checkpoint cannot."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import run_train

from runtime import checkpoint as ckpt
from runtime import portable
from runtime.tracking import read_metrics
from runtime.train import layout_change

# A constant LR: the saved run may stop at max_steps=4 and its resume go on to 8 on the same schedule.
# The reference task's data position is global, so at a fixed global batch every layout reads the
# same micro-batches at each step (grad_accum=2 on 1 process = 2 processes x 1).
FLAT = ["trainer.warmup_steps=0", "trainer.min_lr_ratio=1.0", "trainer.save_every=4", "wandb.mode=disabled"]


def _losses(run_dir, steps):
    return {s: r["train/loss"] for s, r in read_metrics(run_dir).items() if s in steps}


def _max_weight_diff(a, b):
    wa, wb = load_file(a / ckpt.WEIGHTS), load_file(b / ckpt.WEIGHTS)
    assert wa.keys() == wb.keys()
    return max(float((wa[k] - wb[k]).abs().max()) for k in wa)


def _train(run_dir, overrides, nproc=1):
    res = run_train(run_dir, [*FLAT, *overrides], nproc=nproc)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_zero2_on_two_processes_resumes_on_one_process_at_zero0_and_at_zero3_on_the_same_curve(tmp_path):
    straight, saved = tmp_path / "straight", tmp_path / "to_zero0"
    _train(straight, ["trainer.zero_stage=2", "trainer.max_steps=8"], nproc=2)
    _train(saved, ["trainer.zero_stage=2", "trainer.max_steps=4"], nproc=2)
    step4 = ckpt.find_latest(saved)
    assert portable.optimizer_path(step4).is_file()
    moments = load_file(portable.optimizer_path(step4))
    assert any(k.startswith("exp_avg_sq/") for k in moments) and all(
        v.dtype == torch.float32 for v in moments.values()
    )
    to_zero3 = tmp_path / "to_zero3"
    shutil.copytree(saved, to_zero3)

    out0 = _train(saved, ["trainer.zero_stage=0", "trainer.grad_accum=2", "trainer.max_steps=8"])
    assert "in another layout (world_size 2 -> 1, zero_stage 2 -> 0)" in out0
    out3 = _train(to_zero3, ["trainer.zero_stage=3", "trainer.max_steps=8"], nproc=2)
    assert "in another layout (zero_stage 2 -> 3)" in out3

    want = _losses(straight, range(5, 9))
    assert sorted(want) == [5, 6, 7, 8]
    # Discriminating: dropping the AdamW moments moves these losses by 3e-3 to 4e-2 (BENCHMARKS.md).
    for run in (saved, to_zero3):
        got = _losses(run, range(5, 9))
        assert got.keys() == want.keys()
        for s in want:  # fp32: the same data and state give the same steps, up to summation order
            assert got[s] == pytest.approx(want[s], rel=1e-5), (run.name, s, got[s], want[s])
        assert _max_weight_diff(run, straight) < 1e-5, run.name


def test_bf16_zero0_resumes_at_zero1_from_fp32_masters_on_the_same_curve(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    bf16 = ["trainer.precision=bf16"]
    _train(straight, [*bf16, "trainer.max_steps=8"])
    _train(run, [*bf16, "trainer.max_steps=4"])
    weights = load_file(ckpt.find_latest(run) / ckpt.WEIGHTS)
    # ZeRO-0 in bf16 keeps fp32 masters beside the bf16 parameters: the checkpoint holds the masters.
    assert any((w != w.to(torch.bfloat16).float()).any() for w in weights.values())
    out = _train(run, [*bf16, "trainer.max_steps=8", "trainer.zero_stage=1"])
    assert "in another layout (zero_stage 0 -> 1)" in out
    want, got = _losses(straight, range(5, 9)), _losses(run, range(5, 9))
    assert got.keys() == want.keys() == {5, 6, 7, 8}
    for s in want:
        assert got[s] == pytest.approx(want[s], rel=1e-3), (s, got[s], want[s])


def test_a_checkpoint_saved_without_portable_state_names_the_layout_it_resumes_in(tmp_path):
    run = tmp_path / "run"
    _train(run, ["trainer.max_steps=2", "trainer.save_every=2", "trainer.portable_checkpoints=false"])
    latest = ckpt.find_latest(run)
    assert not portable.optimizer_path(latest).exists()
    res = run_train(run, [*FLAT, "trainer.max_steps=4", "trainer.zero_stage=1"])
    out = res.stdout + res.stderr
    assert res.returncode != 0
    line = next(x for x in out.splitlines() if "cannot resume in another layout" in x)
    assert "(zero_stage 0 -> 1)" in line and "trainer.zero_stage=0" in line
    assert "trainer.portable_checkpoints=true" in line and "Traceback" not in out
    assert ckpt.find_latest(run) == latest  # nothing trained, nothing deleted


def test_layout_change_names_what_differs_and_ignores_keys_an_older_checkpoint_lacks():
    now = {"world_size": 1, "zero_stage": 3, "precision": "bf16", "offload_optimizer": False}
    assert layout_change(dict(now), now) is None
    assert layout_change({"world_size": 2, "zero_stage": 3, "precision": "bf16"}, now) == "world_size 2 -> 1"
    assert layout_change({**now, "zero_stage": 0, "precision": "fp32"}, now) == (
        "zero_stage 0 -> 3, precision fp32 -> bf16"
    )


def _saved(tmp_path, world_size, loaders):
    d = ckpt.checkpoint_root(tmp_path) / ckpt.tag_for(6)
    d.mkdir(parents=True)
    ckpt.mark_complete(d, {"step": 6, "world_size": world_size, "zero_stage": 0})
    for rank, loader in enumerate(loaders):
        torch.manual_seed(rank)
        ckpt.save_runtime_state(
            d, rank, {"step": 6, "loader": loader, "rng": ckpt.rng_state(), "skipped_steps": 1}
        )
    return d


def test_runtime_state_at_another_world_size_merges_loader_positions_and_keeps_known_ranks_rng(tmp_path):
    loaders = [{"epoch": 2, "seed": 0, "samples_seen": 40}, {"epoch": 3, "seed": 0, "samples_seen": 44}]
    d = _saved(tmp_path, 2, loaders)
    own = ckpt.load_runtime_state(d, rank=1, world_size=2)  # same world size: exactly what the rank saved
    assert own["loader"] == loaders[1]
    fewer = ckpt.load_runtime_state(d, rank=0, world_size=1)
    assert fewer["step"] == 6 and fewer["skipped_steps"] == 1
    assert fewer["loader"] == {"epoch": 3, "seed": 0, "samples_seen": 44}  # no rank starts over begun data
    rank0 = ckpt.load_runtime_state(d, rank=0, world_size=2)
    assert torch.equal(fewer["rng"]["torch"], rank0["rng"]["torch"])  # rank 0 keeps its own stream
    assert not torch.equal(fewer["rng"]["torch"], own["rng"]["torch"])
    more = [ckpt.load_runtime_state(d, rank=r, world_size=4) for r in range(4)]
    assert [m["rng"] is None for m in more] == [False, False, True, True]  # new ranks get seeded
    assert all(m["loader"] == fewer["loader"] for m in more)


def test_loader_states_that_cannot_merge_say_which_key():
    with pytest.raises(ValueError, match="disagree on loader state 'split'"):
        ckpt.merge_loader_states([{"split": "train"}, {"split": "eval"}])
