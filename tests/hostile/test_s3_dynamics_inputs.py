"""Hostile inputs to the dynamics heads and the training tasks: bad actions and latents are refused
on every device with an error naming the values and the fix; short clips train, and are counted;
the loader's skipped samples reach the loss dict."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.task import DynamicsTask
from dynamics.transformer import value_ranges
from pipeline.loader import LoaderConfig
from pipeline.shards import ShardWriter

HEADS = ["diffusion", "maskgit"]


def model_input(cfg: DynamicsConfig, batch: int = 2, frames: int = 3) -> torch.Tensor:
    h, w = cfg.latent_height, cfg.latent_width
    if cfg.head == "diffusion":
        return torch.randn(batch, cfg.latent_channels, frames, h, w)
    return torch.randint(0, cfg.codebook_size, (batch, frames, h, w))


def task_for(cfg: DynamicsConfig, shards: str = "unused", batch_size: int = 2) -> DynamicsTask:
    return DynamicsTask(cfg, SimpleNamespace(data=LoaderConfig(shards=shards, batch_size=batch_size)))


def shard_batch(cfg: DynamicsConfig, frames: int, actions: torch.Tensor | None = None) -> dict:
    """A loader batch of 2 latent clips as the shards hold them (``[B, T', C, h, w]`` or indices)."""
    h, w = cfg.latent_height, cfg.latent_width
    if cfg.head == "diffusion":
        field = {"latents": torch.randn(2, frames, cfg.latent_channels, h, w, dtype=torch.float16)}
    else:
        field = {"indices": torch.randint(0, cfg.codebook_size, (2, frames, h, w))}
    tau = cfg.temporal_compression
    if actions is None:
        actions = torch.randint(0, cfg.num_actions, (2, (frames - 1) * tau))
    return {"key": ["clip-a", "clip-b"], **field, "actions": actions}


# -- item 1: actions and inputs are checked on every device, once per loss or rollout -------------


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("bad", [-7, 5])
def test_out_of_range_discrete_actions_name_the_values_the_allowed_range_and_num_actions(head, bad):
    cfg = DynamicsConfig(head=head, num_actions=4)
    model = build_dynamics(cfg)
    actions = torch.zeros(2, 3, dtype=torch.long)
    actions[1, 2] = bad
    lo, hi = min(bad, 0), max(bad, 0)
    with pytest.raises(ValueError, match=rf"\[{lo}, {hi}\].*\[0, 4\].*model\.num_actions=4"):
        model.loss(model_input(cfg), actions)


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_continuous_actions_are_refused(head, bad):
    cfg = DynamicsConfig(head=head, action_type="continuous", action_dim=2)
    model = build_dynamics(cfg)
    actions = torch.randn(2, 3, 2)
    actions[0, 1, 1] = bad
    with pytest.raises(ValueError, match="non-finite continuous actions.*KEY.actions.npy"):
        model.loss(model_input(cfg), actions)


@pytest.mark.parametrize("head", HEADS)
def test_nan_in_float_discrete_actions_is_refused_as_not_integers(head):
    cfg = DynamicsConfig(head=head)
    actions = torch.zeros(2, 3)
    actions[0, 0] = float("nan")
    with pytest.raises(ValueError, match="integer action indices.*NaN/inf.*action_type=continuous"):
        build_dynamics(cfg).loss(model_input(cfg), actions)


def test_non_finite_latents_and_out_of_range_indices_are_refused():
    cfg = DynamicsConfig()
    latents = model_input(cfg)
    latents[0, 0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="latents hold non-finite latents.*re-tokenize"):
        build_dynamics(cfg).loss(latents, torch.zeros(2, 3, dtype=torch.long))
    cfg = DynamicsConfig(head="maskgit", codebook_size=16)
    indices = model_input(cfg)
    indices[1, 2, 0, 0] = -3
    with pytest.raises(ValueError, match=r"indices in \[-3, 15\].*codebook_size=16"):
        build_dynamics(cfg).loss(indices, torch.zeros(2, 3, dtype=torch.long))


@pytest.mark.parametrize("head", HEADS)
def test_rollouts_refuse_bad_actions_before_generating(head):
    cfg = DynamicsConfig(head=head, sampling_steps=1, maskgit_steps=1)
    model = build_dynamics(cfg).eval()
    context = model_input(cfg, frames=2)
    actions = torch.zeros(2, 4, dtype=torch.long)
    actions[0, 3] = 9  # an action of the horizon, not of the context
    with pytest.raises(ValueError, match=r"\[0, 9\].*model\.num_actions=4"):
        model.rollout(context, actions, horizon=2)
    cont = DynamicsConfig(head=head, action_type="continuous", action_dim=2)
    moves = torch.randn(2, 4, 2)
    moves[1, 2, 0] = float("-inf")
    with pytest.raises(ValueError, match="non-finite continuous actions"):
        build_dynamics(cont).eval().rollout(model_input(cont, frames=2), moves, horizon=2)


@pytest.mark.parametrize("head", HEADS)
def test_the_task_loss_names_the_clips_of_a_batch_with_bad_actions(head):
    cfg = DynamicsConfig(head=head, max_frames=3, temporal_compression=2)
    task = task_for(cfg)
    actions = torch.randint(0, 4, (2, 4))
    actions[1, 3] = -7
    batch = task.prepare(shard_batch(cfg, 3, actions), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"\[-7, 4\].*model\.num_actions=4.*clip-a', 'clip-b"):
        task.loss(build_dynamics(cfg), batch)


def test_value_ranges_reads_every_tensor_at_once_and_shows_nan_and_inf():
    a = torch.tensor([3, -2, 7])
    b = torch.tensor([[0.5, float("inf")]])
    c = torch.tensor([1.0, float("nan")])
    spans = value_ranges(a, None, b, torch.zeros(0), c)
    assert spans[0] == (-2.0, 7.0) and spans[1] is None and spans[3] is None
    assert spans[2] == (0.5, math.inf)
    assert all(math.isnan(v) for v in spans[4])


# -- item 2: clips shorter than max_frames train on their frames and are counted ----------------


@pytest.mark.parametrize("head", HEADS)
def test_short_clips_train_on_their_frames_are_counted_and_set_flops_and_tokens(head):
    cfg = DynamicsConfig(head=head, max_frames=4, temporal_compression=2)
    task = task_for(cfg)
    nominal_flops, nominal_tokens = task.flops_per_sample(), task.tokens_per_sample()
    assert nominal_tokens == 4 * cfg.tokens_per_frame
    batch = task.prepare(shard_batch(cfg, 2), torch.Generator().manual_seed(0))
    assert batch["short_clips"] == 2
    out = task.loss(build_dynamics(cfg), batch)
    assert torch.isfinite(out["loss"])
    assert out["short_clips"] == 2.0 and out["latent_frames"] == 2.0
    two_frames = build_dynamics(cfg, device=None).flops_per_sample(2)
    assert task.flops_per_sample() == pytest.approx(two_frames) and two_frames < nominal_flops
    assert task.tokens_per_sample() == 2 * cfg.tokens_per_frame
    # A full-length batch afterwards: the figures become the mean over the clips trained.
    full = task.prepare(shard_batch(cfg, 6), torch.Generator().manual_seed(0))
    out = task.loss(build_dynamics(cfg), full)
    assert out["short_clips"] == 0.0 and out["latent_frames"] == 4.0
    assert task.flops_per_sample() == pytest.approx((two_frames + nominal_flops) / 2)
    assert task.tokens_per_sample() == 3 * cfg.tokens_per_frame


def test_a_clip_too_short_for_a_residual_model_is_refused_naming_the_clip():
    cfg = DynamicsConfig(max_frames=4, temporal_compression=2)
    with pytest.raises(ValueError, match=r"clip-a.*1 latent frame.*residual=True.*>= 2"):
        task_for(cfg).prepare(shard_batch(cfg, 1, torch.zeros(2, 0, dtype=torch.long)))


# -- item 3: the loader's skipped samples reach the loss dict ------------------------------------


def test_corrupt_samples_skipped_by_the_loader_are_in_the_dynamics_loss_dict(tmp_path: Path):
    cfg = DynamicsConfig(head="maskgit", max_frames=3, temporal_compression=2)
    with ShardWriter(tmp_path, samples_per_shard=8) as w:
        for i in range(4):
            idx = np.random.default_rng(i).integers(0, cfg.codebook_size, (3, 8, 8)).astype(np.int16)
            w.write(f"clip{i}", {"json": {}, "indices.npy": idx, "actions.npy": np.zeros(4, np.int64)})
        w.write("broken", {"json": {}, "indices.npy": b"not an npy file", "actions.npy": b"nor this"})
    task = task_for(cfg, shards=str(tmp_path / "*.tar"), batch_size=2)
    # Five samples, two ranks: each gets a contiguous run of the epoch, rank 1 the last three
    # (clip2, clip3, broken), of which two decode.
    batches = task.batches(rank=1, world_size=2, seed=0, state=None)
    model = build_dynamics(cfg)
    outs = [task.loss(model, next(batches)) for _ in range(2)]  # the second batch starts epoch 1
    # The runtime logs the mean over ranks; rank 1's one skip, times 2 ranks, is the total's share.
    # By then rank 1 has read all of epoch 0 (the broken clip skipped once), and maybe the broken clip
    # again early in epoch 1: its count, not a hidden zero, times the 2 ranks.
    skipped = task._loader.corrupt_count
    assert skipped in (1, 2) and outs[-1]["data_corrupt_skipped"] == 2.0 * skipped
    assert outs[-1]["data_short_skipped"] == 0.0
    assert all(isinstance(o["data_corrupt_skipped"], float) for o in outs)


@pytest.mark.gpu
@pytest.mark.parametrize("head", HEADS)
def test_bad_actions_are_a_clear_error_on_cuda_too_not_a_device_assert(head):
    cfg = DynamicsConfig(head=head, sampling_steps=1, maskgit_steps=1)
    model = build_dynamics(cfg).to("cuda")
    actions = torch.full((2, 3), 7, device="cuda")
    with pytest.raises(ValueError, match=r"\[7, 7\].*model\.num_actions=4"):
        model.loss(model_input(cfg).to("cuda"), actions)
    with pytest.raises(ValueError, match=r"\[7, 7\].*model\.num_actions=4"):
        model.eval().rollout(model_input(cfg, frames=2).to("cuda"), actions, horizon=1)
    good = torch.zeros(2, 3, dtype=torch.long, device="cuda")
    assert torch.isfinite(model.train().loss(model_input(cfg).to("cuda"), good)["loss"])
