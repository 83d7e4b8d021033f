"""The training objective: reconstruction, KL, perceptual and the delayed, adaptive adversarial terms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.tokenizer.helpers import random_video, randomized, tiny_config
from tokenizer import TokenizerLossConfig
from tokenizer.losses import TokenizerObjective, adaptive_weight, hinge_d_loss, reconstruction_loss


def test_reconstruction_losses_are_l1_and_charbonnier():
    a, b = torch.zeros(1, 3, 1, 2, 2), torch.full((1, 3, 1, 2, 2), 0.5)
    assert reconstruction_loss(a, b, "l1") == pytest.approx(0.5)
    assert reconstruction_loss(a, b, "charbonnier") == pytest.approx((0.25 + 1e-6) ** 0.5)
    assert reconstruction_loss(a, a, "charbonnier") == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="'l1' or 'charbonnier'"):
        reconstruction_loss(a, b, "l2")


def test_continuous_objective_adds_weighted_kl():
    model = randomized(tiny_config(4, 8))
    obj = TokenizerObjective(model, TokenizerLossConfig(kl_weight=0.5))
    torch.manual_seed(0)
    out = obj(random_video(5, 16))
    assert {"loss", "rec", "kl", "psnr_float"} <= set(out)
    torch.testing.assert_close(out["loss"].detach(), out["rec"] + 0.5 * out["kl"])


def test_discriminator_starts_after_the_configured_step_and_each_term_moves_only_its_player():
    model = randomized(tiny_config(4, 8, "fsq"))
    loss_cfg = TokenizerLossConfig(discriminator=True, disc_start_step=2, disc_channels=8)
    obj = TokenizerObjective(model, loss_cfg)
    obj.init_weights()
    video = random_video(5, 16)
    for _ in range(2):
        assert "d_loss" not in obj(video)
    out = obj(video)
    assert {"d_loss", "g_adv", "adv_weight"} <= set(out) and int(obj.num_updates) == 3
    obj.zero_grad()
    out["loss"].backward()
    d_grads = [p.grad.clone() for p in obj.discriminator.parameters()]
    # The discriminator's gradient is exactly that of its hinge loss on detached reconstructions:
    # the generator's adversarial term does not push it.
    obj.zero_grad()
    with torch.no_grad():
        recon = model(video)[0]  # FSQ: deterministic
    hinge_d_loss(obj.discriminator(video), obj.discriminator(recon)).backward()
    for g, p in zip(d_grads, obj.discriminator.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-4)


def test_adaptive_weight_balances_gradient_norms_at_the_last_layer():
    layer = nn.Linear(4, 4)
    y = layer(torch.randn(3, 4))
    rec, adv = y.pow(2).mean(), 4 * y.pow(2).mean()
    assert float(adaptive_weight(rec, adv, layer.weight)) == pytest.approx(0.25, rel=1e-3)


class _Features(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.a(x))
        return f1, torch.relu(self.b(f1))


def test_perceptual_term_uses_the_supplied_network_and_keeps_it_out_of_the_trained_weights(tmp_path):
    torch.manual_seed(0)
    dim = torch.export.Dim("n", min=1, max=4096)
    program = torch.export.export(_Features(), (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: dim},))
    path = tmp_path / "features.pt2"
    torch.export.save(program, str(path))
    model = randomized(tiny_config(4, 8))
    obj = TokenizerObjective(model, TokenizerLossConfig(perceptual_path=str(path), perceptual_weight=1.0))
    video = random_video(5, 16)
    assert float(obj.perceptual(video, video)) == pytest.approx(0.0, abs=1e-6)
    assert float(obj.perceptual(video, random_video(5, 16, seed=7))) > 0.01
    out = obj(video)
    assert out["perceptual"] > 0
    n_params = sum(p.numel() for p in obj.parameters())
    assert n_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(FileNotFoundError, match="perceptual_path.*nothing is downloaded"):
        TokenizerObjective(model, TokenizerLossConfig(perceptual_path=str(tmp_path / "missing.pt2")))
