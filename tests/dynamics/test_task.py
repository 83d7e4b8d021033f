"""``DynamicsTask``: actions to latent frames, batch preparation, eval metrics, and a real
``vidworld train jobs/dynamics.yaml`` run on latent shards."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.task import DynamicsTask, group_actions
from pipeline.loader import LoaderConfig
from pipeline.shards import ShardWriter
from runtime.tracking import read_metrics
from runtime.train import load_train_config
from tests.dynamics.dotworld import as_latents, dot_world

REPO = Path(__file__).resolve().parents[2]
VIDWORLD = str(Path(sys.executable).parent / "vidworld")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def test_group_actions_gives_each_latent_frame_the_actions_that_produced_it():
    actions = torch.arange(10).view(1, 10)  # source frames 0..9; actions[j] leads to frame j + 1
    groups = group_actions(actions, latent_frames=3, tau=4, no_action=18)
    # Latent 1 = source 1..4 (made by actions 0..3), latent 2 = source 5..8 (actions 4..7).
    assert groups.tolist() == [[[18, 18, 18, 18], [0, 1, 2, 3], [4, 5, 6, 7]]]
    cont = group_actions(torch.ones(1, 5, 2), latent_frames=3, tau=2, no_action=None)
    assert cont.shape == (1, 3, 2, 2) and cont[:, 0].abs().sum() == 0 and cont[:, 1:].eq(1).all()


def test_group_actions_with_too_few_actions_names_temporal_compression():
    with pytest.raises(ValueError, match="temporal_compression"):
        group_actions(torch.zeros(1, 4, dtype=torch.long), latent_frames=3, tau=4, no_action=4)


def task_for(cfg: DynamicsConfig, shards: str = "unused") -> DynamicsTask:
    return DynamicsTask(cfg, SimpleNamespace(data=LoaderConfig(shards=shards, batch_size=2)))


def test_prepare_crops_to_max_frames_and_puts_channels_first():
    cfg = DynamicsConfig(max_frames=3, temporal_compression=2, latent_scale=0.5)
    task = task_for(cfg)
    latents = torch.randn(2, 5, 4, 8, 8, dtype=torch.float16)  # [B, T', C, h, w] as in the shards
    actions = torch.randint(0, 4, (2, 9))
    out = task.prepare({"latents": latents, "actions": actions}, torch.Generator().manual_seed(0))
    assert out["x"].shape == (2, 4, 3, 8, 8) and out["x"].dtype == torch.float32
    assert out["actions"].shape == (2, 3, 2)
    # The window is consistent between latents and actions.
    full = group_actions(actions, 5, 2, cfg.num_actions)
    starts = [s for s in range(3) if torch.equal(full[:, s : s + 3], out["actions"])]
    assert any(
        torch.allclose(out["x"], latents[:, s : s + 3].float().permute(0, 2, 1, 3, 4) * 0.5) for s in starts
    )
    loss = task.loss(build_dynamics(cfg), out)
    assert torch.isfinite(loss["loss"])


def test_prepare_without_the_head_s_field_says_which_shards_to_use():
    task = task_for(DynamicsConfig(head="maskgit"))
    with pytest.raises(ValueError, match="indices"):
        task.prepare({"latents": torch.zeros(1, 2, 4, 8, 8), "actions": torch.zeros(1, 5, dtype=torch.long)})


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_eval_media_reports_model_copy_last_and_shuffled_action_errors(head):
    cfg = DynamicsConfig(head=head, max_frames=4, sampling_steps=2, maskgit_steps=2)
    task = task_for(cfg)
    idx, actions = dot_world(3, 4, size=8)
    x = as_latents(idx).repeat(1, 4, 1, 1, 1) if head == "diffusion" else idx
    model = build_dynamics(cfg).train()
    out = task.eval_media(model, {"x": x, "actions": actions})
    assert set(out) == {"eval/model_error", "eval/copy_last_error", "eval/shuffled_actions_error"}
    assert all(math.isfinite(v) and v >= 0 for v in out.values())
    assert out["eval/copy_last_error"] > 0 and model.training  # eval mode was restored


def write_latent_shards(
    out: Path, head: str, clips: int = 8, latent_frames: int = 4, tau: int = 2, unlabeled_every: int = 0
) -> None:
    """Dot-world latent shards: the dot moves by the last source action of each latent frame.
    With ``unlabeled_every=k`` every k-th clip has no ``actions.npy`` (unlabelled video)."""
    g = torch.Generator().manual_seed(0)
    idx, moves = dot_world(clips, latent_frames, size=8, generator=g)
    src = torch.randint(0, 4, (clips, 1 + (latent_frames - 1) * tau), generator=g)
    src[:, tau - 1 : -1 : tau] = moves[:, 1:]  # action (i tau - 1) made latent frame i
    with ShardWriter(out, samples_per_shard=4) as w:
        for i in range(clips):
            member = (
                {"indices.npy": idx[i].numpy().astype(np.int16)}
                if head == "maskgit"
                else {
                    "latents.npy": as_latents(idx[i : i + 1])[0]
                    .permute(1, 0, 2, 3)
                    .numpy()
                    .astype(np.float16)
                }
            )
            if not (unlabeled_every and i % unlabeled_every == 0):
                member["actions.npy"] = src[i].numpy()
            w.write(f"clip{i:03d}", {"json": {"key": f"clip{i:03d}"}, **member})


@pytest.mark.integration
@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_vidworld_train_runs_the_dynamics_yaml_on_latent_shards(tmp_path, head):
    shards = tmp_path / "latents"
    write_latent_shards(shards, head)
    rows = train_dynamics_yaml(tmp_path, shards, head)
    # The data's health reaches the metrics: no clip here is short of max_frames or corrupt.
    for r in rows.values():
        assert r["train/short_clips"] == 0.0 and r["train/latent_frames"] == 4.0
        assert r["train/data_corrupt_skipped"] == 0.0 and r["train/data_short_skipped"] == 0.0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def vidworld_train(job: str, overrides: list[str], nproc: int = 1) -> None:
    """``vidworld train jobs/JOB overrides`` in a child process (under torchrun with ``nproc`` > 1), each
    on one CPU thread, no W&B keys or distributed settings from the test's environment; the config
    validates first."""
    load_train_config(REPO / "jobs" / job, overrides)  # the YAML and the overrides validate
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "LOCAL_RANK", "SLURM_"))
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    launch = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", VIDWORLD] if nproc > 1 else [VIDWORLD]
    proc = subprocess.run(
        [*launch, "train", str(REPO / "jobs" / job), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def train_dynamics_yaml(
    tmp_path: Path, shards: Path, head: str, *extra: str, nproc: int = 1, run: str = "run"
) -> dict[int, dict]:
    """``vidworld train jobs/dynamics.yaml`` for 6 steps on dot-world ``shards``: its metric rows."""
    overrides = [
        f"run_dir={tmp_path / run}",
        f"data.shards={shards}",
        f"model.head={head}",
        "model.latent_channels=1",
        "model.codebook_size=2",
        "model.temporal_compression=2",
        "model.num_actions=4",
        "data.split=null",  # the test shards carry no train/heldout split
        "trainer.micro_batch_size=2",
        "trainer.max_steps=6",
        "trainer.save_every=6",
        "trainer.log_every=2",
        "wandb.mode=disabled",
        *extra,
    ]
    vidworld_train("dynamics.yaml", overrides, nproc=nproc)
    rows = read_metrics(tmp_path / run)
    assert sorted(rows) == [2, 4, 6]
    assert all(math.isfinite(r["train/loss"]) for r in rows.values())
    return rows


@pytest.mark.integration
@pytest.mark.slow
def test_two_process_dynamics_training_is_the_same_at_zero0_zero2_and_zero3(tmp_path):
    """The real task, not only the reference one, under ZeRO: the same 2 ranks (same data, same noise)
    give the same losses and weights whether the optimizer state, the gradients or the parameters too
    are partitioned (ZeRO-3 with activation checkpointing). One process cannot match them exactly:
    each rank draws its own diffusion noise and reads its own shards."""
    from safetensors.torch import load_file

    shards = tmp_path / "latents"
    write_latent_shards(shards, "diffusion", clips=16)
    stages = {
        "zero0": ["trainer.zero_stage=0"],
        "zero2": ["trainer.zero_stage=2"],
        "zero3": ["trainer.zero_stage=3", "trainer.activation_checkpointing=true"],
    }
    losses, weights = {}, {}
    for name, extra in stages.items():
        rows = train_dynamics_yaml(tmp_path, shards, "diffusion", *extra, nproc=2, run=name)
        losses[name] = [rows[s]["train/loss"] for s in sorted(rows)]
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    for name in ("zero2", "zero3"):
        assert losses[name] == pytest.approx(losses["zero0"], rel=1e-5), name
        assert weights[name].keys() == weights["zero0"].keys(), name
        for key, w in weights["zero0"].items():
            torch.testing.assert_close(weights[name][key], w, rtol=1e-5, atol=1e-6, msg=f"{name} {key}")
