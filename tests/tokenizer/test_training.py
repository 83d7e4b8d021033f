"""A short CPU training run learns: the loss falls and held-out PSNR rises."""

from __future__ import annotations

import pytest
import torch

from tokenizer import TokenizerConfig, build_tokenizer
from tokenizer.losses import TokenizerObjective
from tokenizer.metrics import from_uint8, psnr, to_uint8
from tokenizer.synthetic import moving_shapes


def _held_out(model, clips):
    """(L1 in [-1, 1] pixels, PSNR in dB on uint8) of decode(encode(clips)), clips uint8 [N, T, H, W, 3]."""
    model.eval()
    with torch.no_grad():
        video = from_uint8(clips)
        recon = model.decode(model.encode(video))
    model.train()
    return float((recon - video).abs().mean()), psnr(clips, to_uint8(recon))


@pytest.mark.integration
@pytest.mark.parametrize("bottleneck", ["gaussian", "fsq"])
def test_100_steps_on_moving_shapes_lower_the_loss_and_raise_held_out_psnr(bottleneck):
    torch.manual_seed(0)
    cfg = TokenizerConfig(
        base_channels=8, channel_multipliers=[1, 2], bottleneck=bottleneck, latent_channels=8
    )
    obj = TokenizerObjective(build_tokenizer(cfg), cfg.loss).train()
    train = from_uint8(moving_shapes(64, 5, 32, seed=0))
    held_out = moving_shapes(8, 5, 32, seed=1234)
    l1_before, psnr_before = _held_out(obj.tokenizer, held_out)
    opt = torch.optim.Adam(obj.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        out = obj(train[torch.randint(0, 64, (4,))])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    l1_after, psnr_after = _held_out(obj.tokenizer, held_out)
    print(f"{bottleneck}: L1 {l1_before:.3f} -> {l1_after:.3f}, PSNR {psnr_before:.2f} -> {psnr_after:.2f}")
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10]), losses
    assert l1_after < 0.85 * l1_before
    assert psnr_after > psnr_before + 2.0
