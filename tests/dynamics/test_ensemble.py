"""Uncertainty from an ensemble of heads on one trunk (``model.ensemble``): one head is the model it
always was, the members' disagreement comes back per imagined frame, and it is larger on inputs
training never showed than on the training clips."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from dynamics import DynamicsConfig, build_dynamics
from dynamics.maskgit import jensen_shannon
from tests.dynamics.dotworld import as_latents, dot_world
from tests.dynamics.test_model import inputs


def _context(cfg: DynamicsConfig, x: torch.Tensor, frames: int) -> torch.Tensor:
    return x[:, :, :frames] if cfg.head == "diffusion" else x[:, :frames]


def test_one_head_has_the_parameters_and_checkpoint_names_it_always_had():
    one = build_dynamics(DynamicsConfig(depth=2))
    names = set(one.state_dict())
    assert len(one.blocks) == 2 and not any("ensemble" in k for k in names)
    many = build_dynamics(DynamicsConfig(depth=2, ensemble=3, ensemble_depth=1))
    # Member 0 is the one-head model's layers under their old names; each other member adds its own
    # top block (to blocks, which the runtime checkpoints and compiles) and output layers.
    assert names < set(many.state_dict())
    assert len(many.blocks) == 2 + 2 and len(many.backbone.ensemble_heads) == 2
    assert many.backbone.block_kinds == ["full"] * 4


def test_bad_ensemble_settings_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"ensemble=0 must be an integer >= 1: set model.ensemble=1"):
        DynamicsConfig(ensemble=0)
    with pytest.raises(ValueError, match=r"ensemble_depth=3 must be in \[0, depth=2\]"):
        DynamicsConfig(ensemble=2, depth=2, ensemble_depth=3)
    with pytest.raises(ValueError, match="ensemble_prior_scale=-1.0 must be >= 0"):
        DynamicsConfig(ensemble=2, ensemble_prior_scale=-1.0)


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
@pytest.mark.parametrize("factorized", [False, True])
def test_rollout_gives_each_imagined_frame_a_disagreement_zero_for_one_head(head, factorized):
    for k in (1, 3):
        cfg = DynamicsConfig(head=head, ensemble=k, max_frames=4, factorized=factorized, depth=2)
        torch.manual_seed(0)
        model = build_dynamics(cfg).eval()
        x, a = inputs(cfg, 2, 5)
        ctx = _context(cfg, x, 2)
        runs = [
            model.rollout(ctx, a, 3, torch.Generator().manual_seed(1), use_cache=c, return_disagreement=True)
            for c in (True, False)
        ]
        (frames, spread), (frames_nc, spread_nc) = runs
        assert spread.shape == (2, 3) and spread.dtype == torch.float32
        # The KV cache changes nothing, here too (context + horizon within max_frames + 1 window).
        torch.testing.assert_close(spread, spread_nc)
        torch.testing.assert_close(frames.float(), frames_nc.float())
        plain = model.rollout(ctx, a, 3, torch.Generator().manual_seed(1))
        assert torch.equal(plain, frames)  # asking for disagreement does not change the frames
        if k == 1:
            assert torch.equal(spread, torch.zeros(2, 3))
        else:
            assert (spread > 0).all()


def test_diffusion_samples_the_members_mean_and_scores_their_variance():
    cfg = DynamicsConfig(ensemble=3, sampling_steps=1)
    torch.manual_seed(0)
    model = build_dynamics(cfg).eval()
    x, a = inputs(cfg, 2, 3)
    frames = x.permute(0, 2, 3, 4, 1)
    # One step from pure noise: the frame is the members' mean clean estimate, the disagreement
    # their variance over members averaged over positions and channels.
    noise = torch.randn(2, 1, 8, 8, 4, generator=torch.Generator().manual_seed(1))
    seq = torch.cat([frames[:, :2], noise], 1)
    level = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    with torch.no_grad():
        members = model.predict(seq, level, a, prev=model.predecessors(seq), members=True)[:, :, -1:]
    new, spread = model.rollout(x[:, :, :2], a, 1, torch.Generator().manual_seed(1), return_disagreement=True)
    assert members.shape[0] == 3
    torch.testing.assert_close(new.permute(0, 2, 3, 4, 1), members.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(spread[:, 0], members.var(0, unbiased=False).mean((1, 2, 3, 4)))


def test_jensen_shannon_is_zero_for_agreeing_members_and_log_k_for_certain_different_ones():
    same = torch.randn(1, 5, 7).expand(3, 5, 7)
    assert torch.allclose(jensen_shannon(same), torch.zeros(5), atol=1e-6)
    certain = torch.full((3, 1, 3), -1e4)
    certain[0, 0, 0] = certain[1, 0, 1] = certain[2, 0, 2] = 0.0  # each member sure of its own code
    assert torch.allclose(jensen_shannon(certain), torch.tensor([math.log(3)]), atol=1e-5)


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_ensemble_disagreement_is_larger_out_of_distribution_than_on_training_inputs(head):
    """Trained briefly on the cross-hair dot world, the members agree on held-out clips of that world
    far more than on inputs it never showed: Gaussian noise latents (diffusion) or random code maps
    (maskgit). Seeds 0-2 gave ratios of 4.8-12 (diffusion) and 1.6-3.8 (maskgit); at half the steps
    maskgit's fell to 0.9-1.3, so the model must have learnt the world for the test to pass."""
    cfg = DynamicsConfig(
        head=head,
        latent_channels=1,
        codebook_size=2,
        latent_height=4,
        latent_width=4,
        patch_size=1,
        max_frames=4,
        dim=32,
        depth=2,
        heads=2,
        num_actions=4,
        prediction="x0",
        sampling_steps=2,
        maskgit_steps=2,
        ensemble=4,
        ensemble_depth=1,
    )
    as_input = as_latents if head == "diffusion" else (lambda idx: idx)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_dynamics(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            idx, actions = dot_world(16, 4, size=4, generator=g, cross=True)
            loss = model.loss(as_input(idx), actions)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        idx, actions = dot_world(32, 4, size=4, generator=torch.Generator().manual_seed(7), cross=True)
        seen = as_input(idx)
        gen = torch.Generator().manual_seed(8)
        if head == "diffusion":
            unseen = torch.randn(seen.shape, generator=gen)
        else:
            unseen = torch.randint(0, 2, seen.shape, generator=gen)

        def disagreement(x: torch.Tensor) -> float:
            _, spread = model.rollout(
                _context(cfg, x, 2), actions, 2, torch.Generator().manual_seed(1), return_disagreement=True
            )
            return float(spread.mean())

        on_data, off_data = disagreement(seen), disagreement(unseen)
    finally:
        torch.set_num_threads(threads)
    assert off_data > 1.5 * on_data, (head, on_data, off_data)


def test_an_ensemble_checkpoint_round_trips_through_safetensors(tmp_path):
    cfg = DynamicsConfig(head="maskgit", ensemble=2)
    torch.manual_seed(0)
    model = build_dynamics(cfg).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    again = build_dynamics(cfg).eval()
    again.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    x, a = inputs(cfg, 1, 3)
    ctx = _context(cfg, x, 2)
    out = [m.rollout(ctx, a, 1, temperature=0.0, return_disagreement=True) for m in (model, again)]
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_outcome_heads_of_an_ensemble_train_and_predict_from_the_members_mean_state(head):
    # Without the bootstrap: with 2 clips a member's Poisson draws are all 0 one time in e^2.
    cfg = DynamicsConfig(
        head=head, ensemble=3, reward_head=True, continue_head=True, ensemble_bootstrap=False
    )
    torch.manual_seed(0)
    model = build_dynamics(cfg)
    x, a = inputs(cfg, 2, 4)
    losses = model(x, a, rewards=torch.randn(2, 4), continues=torch.ones(2, 4))
    assert {"reward_loss", "continue_loss", "ensemble_disagreement"} <= set(losses)
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.outcome.reward.parameters())
    # Every member's own block feeds the state the outcome heads read.
    for i in model.backbone.member_blocks()[1][1]:
        assert model.blocks[i].modulation.bias.grad.abs().sum() > 0  # its adaLN-Zero gates learn
    pred = model.eval().predict_outcomes(x, a)
    assert pred["reward"].shape == (2, 4) and torch.isfinite(pred["continue_prob"]).all()


def test_bootstrap_weights_resample_the_batch_per_member_and_one_head_draws_nothing():
    model, one = build_dynamics(DynamicsConfig(ensemble=4)), build_dynamics(DynamicsConfig())
    torch.manual_seed(0)
    w = model.member_weights(64, torch.device("cpu"))
    assert w.shape == (4, 64, 1) and (w >= 0).all()
    torch.testing.assert_close(w.mean(1), torch.ones(4, 1))  # the plain loss's scale, per member
    assert (w == 0).any(1).all() and not torch.equal(w[0], w[1])  # each member its own resample
    state = torch.random.get_rng_state()
    assert one.member_weights(64, torch.device("cpu")) is None
    assert torch.equal(torch.random.get_rng_state(), state)  # one head trains as it always did
