"""The diffusion head's recipe: residual x0-prediction, context noise, self-forcing, action dropout."""

from __future__ import annotations

import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from tests.dynamics.test_model import inputs, randomized


def test_an_untrained_residual_model_copies_the_last_frame():
    cfg = DynamicsConfig(max_frames=6)
    model = build_dynamics(cfg).eval()  # zero-initialised output: the correction starts at 0
    x, a = inputs(cfg, 2, 6)
    out = model.rollout(x[:, :, :2], a, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x[:, :, 1:2].expand_as(out))


def test_the_residual_loss_skips_frame_0_and_reports_copy_last():
    cfg = DynamicsConfig(max_frames=4, context_noise=0.0)
    model = build_dynamics(cfg)
    x, a = inputs(cfg, 2, 4)
    out = model.loss(x, a)
    copy = ((x[:, :, 1:] - x[:, :, :-1]) ** 2).mean()
    # Untrained, the estimate is the predecessor: the loss is exactly copying the last frame's.
    torch.testing.assert_close(out["loss"], copy)
    torch.testing.assert_close(out["copy_last_mse"], copy)
    x2 = x.clone()
    x2[:, :, 0] += 5.0  # frame 0 is context only: it changes frame 1's target error, nothing else
    assert not torch.equal(model.loss(x2, a)["loss"], out["loss"])


def test_action_dropout_blanks_whole_clips_in_training_only():
    cfg = DynamicsConfig(action_dropout=0.5)
    model = build_dynamics(cfg)
    a = torch.randint(0, cfg.num_actions, (400, 4), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    dropped = model.drop_actions(a)
    blank = (dropped == cfg.num_actions).all(dim=1)
    kept = (dropped == a).all(dim=1)
    assert (blank | kept).all() and 0.35 < blank.float().mean() < 0.65
    assert torch.equal(model.eval().drop_actions(a), a)


def test_self_forcing_gives_frames_the_models_own_prediction_of_their_predecessor():
    cfg = DynamicsConfig(max_frames=5)
    model = randomized(cfg)
    x, a = inputs(cfg, 3, 5)
    frames = x.permute(0, 2, 3, 4, 1)
    prev = model.predecessors(frames)
    torch.manual_seed(0)
    own = model.own_predecessors(frames, prev, a, p=1.0)
    torch.testing.assert_close(own[:, :2], prev[:, :2])  # zeros, then the true frame 0
    assert (own[:, 2:] - prev[:, 2:]).abs().amax(dim=(2, 3, 4)).min() > 1e-4
    torch.manual_seed(0)
    torch.rand(3)  # which clips (all, at p=1), drawn first
    noise = torch.randn_like(frames)
    pred = model.predict(noise, torch.ones(3, 5), a, prev=prev)
    torch.testing.assert_close(own[:, 2:], pred[:, 1:-1])
    assert torch.equal(model.own_predecessors(frames, prev, a, p=0.0), prev)


def test_residual_prediction_needs_x0_and_bad_probabilities_are_refused():
    with pytest.raises(ValueError, match="set prediction=x0"):
        DynamicsConfig(prediction="v")
    DynamicsConfig(prediction="v", residual=False)
    with pytest.raises(ValueError, match="self_forcing=1.5"):
        DynamicsConfig(self_forcing=1.5)
    with pytest.raises(ValueError, match="action_dropout=1.0"):
        DynamicsConfig(action_dropout=1.0)


def test_the_relative_loss_weighs_a_still_clip_and_a_moving_one_alike():
    plain = DynamicsConfig(max_frames=4, context_noise=0.0)
    rel = DynamicsConfig(max_frames=4, context_noise=0.0, relative_loss=True, relative_floor=1e-9)
    x, a = inputs(plain, 2, 4)
    still = x * 0.01  # the same motion, a hundredth of the amplitude: 1e-4 of the squared error
    losses = {}
    for name, cfg in (("plain", plain), ("relative", rel)):
        model = build_dynamics(cfg)  # untrained: predicts the predecessor, the copy-last error
        with torch.no_grad():
            losses[name] = [model.loss(clip, a)["loss"].item() for clip in (x, still)]
    assert losses["plain"][0] / losses["plain"][1] == pytest.approx(1e4, rel=1e-3)
    # Relative to copy-last each clip scores 1 (copy-last itself), whatever its amplitude.
    assert losses["relative"] == pytest.approx([1.0, 1.0], rel=1e-3)
    mixed = torch.cat([x[:1], still[1:]])
    with torch.no_grad():
        out = build_dynamics(rel).loss(mixed, a)
    assert float(out["loss"]) == pytest.approx(1.0, rel=1e-3)
    assert float(out["x0_mse"]) == pytest.approx(float(out["copy_last_mse"]))  # plain MSE still reported


def test_the_relative_loss_needs_a_residual_model_and_a_positive_floor():
    with pytest.raises(ValueError, match="relative_loss=true needs residual=true"):
        DynamicsConfig(relative_loss=True, residual=False, prediction="v")
    with pytest.raises(ValueError, match="relative_floor=0"):
        DynamicsConfig(relative_loss=True, relative_floor=0.0)
