"""runtime.memory: the per-rank memory plan (``vidworld plan-memory``), its check before training and
the dry run, against exact parameter counts and a measured CPU step."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
import torch
from train_helpers import REFERENCE_YAML, REPO, VIDWORLD, train_env

from runtime.config import ConfigError
from runtime.distributed import DistInfo
from runtime.memory import (
    GiB,
    MemoryPlanExceeded,
    ModelCounts,
    Planner,
    check_before_launch,
    cpu_peak_bytes,
    parse_size,
    plan_memory,
    probe_activations,
    state_rows,
    zero_config,
)
from runtime.parallelize import build_on_meta, parallelize
from runtime.reference_task import TinyTransformer
from runtime.train import FiniteAdamW, load_train_config, resolve_task_class
from vidworld.cli import main

DYNAMICS_YAML = REPO / "jobs" / "dynamics.yaml"
CPU = DistInfo(0, 0, 1, 1, "gloo", torch.device("cpu"), "single")


def _reference(*overrides: str):
    return load_train_config(REFERENCE_YAML, ["model.width=32", "model.heads=2", *overrides])


def _env() -> dict[str, str]:
    return {**train_env(), "PYTHONPATH": str(REPO)}  # this checkout's code, not the installed one's


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("gpus", [1, 2, 3])
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_state_bytes_are_exact_counts_partitioned_as_zero_stage_and_world_size_say(stage, gpus, precision):
    cfg = _reference(f"trainer.zero_stage={stage}", f"trainer.precision={precision}")
    model = TinyTransformer(cfg.model)  # a real CPU build: the counts the plan must reproduce
    n = sum(p.numel() for p in model.parameters())
    small = sum(p.numel() for p in model.parameters() if p.numel() <= 100_000)
    part = -(-n // gpus) if stage else n
    w = 2 if precision == "bf16" else 4
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    zero = zero_config(cfg.trainer, gpus)
    counts = ModelCounts.of(task, build_on_meta(task), 100_000)
    rows = {(r.name, r.phase): r.bytes for r in state_rows(cfg.trainer, counts, gpus, zero)}
    assert (zero is None) == (stage == 0)

    assert counts.params == n
    params = w * n if stage < 3 else w * (small + -(-(n - small) // gpus))
    assert rows["parameters", "kept"] == params
    master = 4 * n if (stage == 0 and precision == "bf16") else 0
    assert rows["optimizer state", "kept"] == (8 * n + master if stage == 0 else 12 * part)
    grads = {0: ("backward", w * n), 1: ("backward", w * n), 2: ("backward", w * part), 3: ("kept", 4 * part)}
    assert rows["gradients", grads[stage][0]] == grads[stage][1]
    step = (w + 4) * n if stage == 0 else 12 * part
    assert rows["optimizer step", "step"] == step
    if stage in (1, 2):
        assert rows["reduce bucket", "backward"] == zero.reduce_bucket_size * w  # overlap_comm off


def test_offloaded_optimizer_state_is_planned_in_host_memory():
    cfg = _reference("trainer.zero_stage=2", "trainer.offload_optimizer=true")
    plan = plan_memory(cfg, 2, 80 * GiB, search=False)
    n = plan.counts.params
    assert plan.component("optimizer state") == 0 and plan.component("optimizer step") == 0
    assert plan.host == 16 * -(-n // 2)
    assert "host memory (offload)" in plan.table()


def test_activations_grow_linearly_with_micro_batch_and_shrink_with_checkpointing():
    cfg = load_train_config(DYNAMICS_YAML, [])
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    probe_activations(task, cfg.trainer, 1)  # warm-up (as the planner does)
    saved = {b: probe_activations(task, cfg.trainer, b).saved for b in (1, 2, 4)}
    per_sample = saved[2] - saved[1]
    assert per_sample > 0
    assert saved[4] - saved[2] == pytest.approx(2 * per_sample, rel=0.01)
    ckpt = dataclasses.replace(cfg.trainer, activation_checkpointing=True)
    assert probe_activations(task, ckpt, 4).saved < 0.5 * saved[4]


def test_math_attention_adds_its_scores_and_fused_backends_do_not():
    planner = Planner(load_train_config(DYNAMICS_YAML, ["model.attention_backend=math"]), 1)
    plan = planner.plan(4, 80 * GiB)
    calls = planner.probe(4).attention
    assert calls and all(c.batch == 4 for c in calls)
    # The fp32 [B, H, L, L] softmax of every call backward goes through, and one temporary; a no-grad
    # pass (self-forcing's one-step prediction) keeps nothing.
    kept = sum(c.scores for c in calls if c.grad)
    assert 0 < kept and plan.component("attention scores") == kept + max(c.scores for c in calls)
    fused = Planner(load_train_config(DYNAMICS_YAML, ["model.attention_backend=sdpa"]), 1).plan(4, 80 * GiB)
    assert fused.component("attention scores") == 0
    assert fused.component("activations") == plan.component("activations")  # scores are apart


@pytest.mark.parametrize(
    ("config", "overrides"),
    [
        ("tokenizer.yaml", ["model.clip_size=[32,32]", "trainer.activation_checkpointing=true"]),
        ("lam.yaml", ["trainer.precision=bf16"]),
        ("dynamics.yaml", ["model.head=maskgit", "model.residual=false", "trainer.zero_stage=3"]),
    ],
)
def test_every_task_gets_a_plan(config, overrides):
    cfg = load_train_config(REPO / "jobs" / config, ["trainer.micro_batch_size=2", *overrides])
    plan = plan_memory(cfg, 2, 80 * GiB, search=False)
    assert plan.component("activations") > 0
    assert plan.fits and plan.peak < plan.total < 80 * GiB


def test_plan_agrees_with_a_measured_cpu_step_within_15_percent():
    # ZeRO stage 0 in fp32 is the runtime's own optimizer (FiniteAdamW, grads set to None each step)
    # around the task's loss: the same step as DeepSpeed's, without the engine, in this process.
    cfg = load_train_config(DYNAMICS_YAML, ["trainer.micro_batch_size=8"])
    task = resolve_task_class(cfg.task)(cfg.model, cfg)
    batches = [task.example_batch(8) for _ in range(2)]  # step 2: optimizer state and fresh gradients

    def train() -> None:
        model = parallelize(task, cfg.trainer, "cpu")
        opt = FiniteAdamW(model.parameters(), lr=1e-3)
        for batch in batches:
            with torch.profiler.record_function("step"):
                task.loss(model, batch)["loss"].backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

    measured = cpu_peak_bytes(train, within="step")
    planned = plan_memory(cfg, 1, 80 * GiB, "cpu", search=False).peak
    assert abs(planned / measured - 1) < 0.15, (planned, measured)


def test_largest_micro_batch_fits_and_the_next_does_not():
    planner = Planner(_reference(), 1)
    device = planner.plan(1, 2 * GiB).total + 64 * 2**20  # about 64 MiB for activations
    largest = planner.largest(device)
    assert largest and largest > 1
    assert planner.plan(largest, device).total <= device < planner.plan(largest + 1, device).total


def test_a_plan_larger_than_the_device_is_refused_naming_the_override_key(capsys):
    cfg = _reference("trainer.memory_check=error")
    with pytest.raises(MemoryPlanExceeded, match="trainer.memory_check=warn") as e:
        check_before_launch(cfg, CPU, device_bytes=GiB)  # less than the reserve alone
    assert "trainer.micro_batch_size" in str(e.value)
    warn = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, memory_check="warn"))
    assert check_before_launch(warn, CPU, device_bytes=GiB) is None
    assert "WARNING: the memory plan needs" in capsys.readouterr().out
    fits = check_before_launch(cfg, CPU, device_bytes=80 * GiB)
    assert fits is None
    auto = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, memory_check="auto"))
    capsys.readouterr()
    assert check_before_launch(auto, CPU, device_bytes=GiB) is None  # auto on CPU: no plan
    assert capsys.readouterr().out == ""


def test_a_config_the_planner_cannot_run_trains_unchecked_unless_the_check_is_demanded(capsys):
    # The frozen latent action model is loaded from disk in the loss: no plan on the meta device.
    cfg = load_train_config(DYNAMICS_YAML, ["model.lam=/nonexistent/lam", "model.latent_actions=8"])
    warn = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, memory_check="warn"))
    assert check_before_launch(warn, CPU, device_bytes=80 * GiB) is None
    assert "WARNING: no memory plan, started unchecked" in capsys.readouterr().out
    error = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, memory_check="error"))
    with pytest.raises(ConfigError, match="/nonexistent/lam"):
        check_before_launch(error, CPU, device_bytes=80 * GiB)


def test_memory_check_key_is_validated():
    with pytest.raises(ConfigError, match="trainer.memory_check"):
        _reference("trainer.memory_check=maybe")


def test_sizes_parse_with_binary_and_decimal_units():
    assert parse_size("80GiB") == 80 * 2**30
    assert parse_size("40GB") == 40 * 10**9
    assert parse_size("81920MiB") == 80 * 2**30
    assert parse_size("1.5TiB") == int(1.5 * 2**40)
    for bad in ("banana", "-1GiB", "0", "80 GiBs"):
        with pytest.raises(ConfigError, match="gpu_memory"):
            parse_size(bad)


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("gpu_memory=banana", "gpu_memory='banana' is not a memory size; write it like gpu_memory=80GiB"),
        ("gpus=0", "gpus='0': the number of GPUs (ranks) must be a whole number >= 1"),
        ("gpus=two", "gpus='two'"),
    ],
)
def test_plan_memory_bad_input_exits_2_naming_it(capsys, arg, says):
    assert main(["plan-memory", str(REFERENCE_YAML), arg]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.integration
def test_vidworld_plan_memory_prints_the_table():
    proc = subprocess.run(
        [VIDWORLD, "plan-memory", str(DYNAMICS_YAML), "gpus=8", "gpu_memory=80GiB"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ZeRO stage 0 over 8 rank(s)" in out
    for row in ("parameters", "gradients", "optimizer state", "activations", "attention scores", "total"):
        assert f"\n  {row} " in out
    assert "device                          80.000" in out and "fits yes" in out
    assert int(out.split("largest micro-batch that fits: ")[1].split()[0]) > 4


@pytest.mark.integration
def test_dry_run_prints_per_rank_sizes_and_trains_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [VIDWORLD, "train", str(REFERENCE_YAML), f"run_dir={run_dir}", "trainer.dry_run=true"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for row in ("parameters", "optimizer state", "activations", "peak"):
        assert f"\n  {row} " in proc.stdout
    assert "dry run: the plan fits; nothing trained, nothing written" in proc.stdout
    assert not run_dir.exists()  # no lock, no config, no checkpoints


def test_cpu_peak_sees_tensors_made_and_freed_inside():
    def make() -> None:
        a = torch.empty(2**20, dtype=torch.uint8)
        b = torch.empty(3 * 2**20, dtype=torch.uint8)
        del a, b
        torch.empty(2**20, dtype=torch.uint8)

    assert cpu_peak_bytes(make) == 4 * 2**20
