"""PSNR / SSIM on uint8 frames (EVALUATION.md protocol) and FSQ codebook usage."""

from __future__ import annotations

import math

import pytest
import torch

from tokenizer.metrics import codebook_usage, from_uint8, psnr, psnr_per_frame, ssim, ssim_per_frame, to_uint8


def _frames(seed=0, shape=(4, 32, 32, 3)):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_psnr_of_a_uniform_error_of_one_level_is_48_13_db():
    ref = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    assert psnr(ref, ref + 1) == pytest.approx(20 * math.log10(255), abs=1e-9)


def test_psnr_is_per_frame_then_averaged_and_identical_frames_cap_at_100():
    ref = torch.full((2, 8, 8, 3), 100, dtype=torch.uint8)
    test = ref.clone()
    test[1] += 10  # frame 0 identical, frame 1 off by 10 levels
    per = psnr_per_frame(ref, test)
    assert per.shape == (2,) and math.isinf(per[0]) and per[1] == pytest.approx(20 * math.log10(25.5))
    assert psnr(ref, test) == pytest.approx((100 + 20 * math.log10(25.5)) / 2)


def test_ssim_is_one_for_identical_frames_and_falls_with_noise():
    ref = _frames()
    assert ssim(ref, ref) == pytest.approx(1.0)
    noisy = (ref.int() + torch.randint(-20, 21, ref.shape, generator=torch.Generator().manual_seed(1)))
    noisier = (ref.int() + torch.randint(-60, 61, ref.shape, generator=torch.Generator().manual_seed(1)))
    s1, s2 = ssim(ref, noisy.clamp(0, 255).to(torch.uint8)), ssim(ref, noisier.clamp(0, 255).to(torch.uint8))
    assert 1 > s1 > s2 > 0
    assert ssim_per_frame(ref.view(2, 2, 32, 32, 3), ref.view(2, 2, 32, 32, 3)).shape == (2, 2)


def test_ssim_of_a_constant_shift_matches_the_luminance_term():
    # A flat frame shifted by d: sigma terms are 0, so SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1).
    a = torch.full((1, 16, 16, 3), 100, dtype=torch.uint8)
    b = torch.full((1, 16, 16, 3), 120, dtype=torch.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))


def test_metrics_reject_float_or_mismatched_frames():
    with pytest.raises(TypeError, match="uint8"):
        psnr(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3))
    with pytest.raises(ValueError, match="same shape"):
        ssim(_frames(shape=(1, 8, 8, 3)), _frames(shape=(1, 8, 9, 3)))


def test_uint8_conversion_round_trips():
    frames = _frames(shape=(2, 3, 8, 8, 3))
    video = from_uint8(frames)
    assert video.shape == (2, 3, 3, 8, 8) and video.min() >= -1 and video.max() <= 1
    assert torch.equal(to_uint8(video), frames)


def test_codebook_usage_counts_used_codes_and_perplexity():
    uniform = codebook_usage(torch.arange(16).repeat(3), 16)
    assert uniform == {"usage": 1.0, "perplexity": pytest.approx(16.0)}
    one = codebook_usage(torch.zeros(100, dtype=torch.long), 16)
    assert one == {"usage": 1 / 16, "perplexity": pytest.approx(1.0)}
