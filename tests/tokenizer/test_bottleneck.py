"""FSQ codes, indices and grid; the Gaussian bottleneck's mean and KL."""

from __future__ import annotations

import math

import pytest
import torch

from tokenizer.bottleneck import DiagonalGaussian, FSQuantizer


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [2, 3]])
def test_every_index_round_trips_through_codes(levels):
    fsq = FSQuantizer(levels)
    n = math.prod(levels)
    idx = torch.arange(n).view(1, 1, 1, n)
    codes = fsq.indices_to_codes(idx)
    assert codes.shape == (1, len(levels), 1, 1, n)
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    # Distinct indices are distinct codes: the implicit codebook has prod(levels) entries.
    assert torch.unique(codes.view(len(levels), n).T, dim=0).shape[0] == n


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [2, 3, 4]])
def test_quantized_values_lie_on_the_per_channel_grid(levels):
    fsq = FSQuantizer(levels)
    h = torch.randn(4, len(levels), 3, 5, 5) * 4
    q = fsq.quantize(h)
    for c, level in enumerate(levels):
        half = level // 2
        grid = (torch.arange(level) - half) / half
        on_grid = (q[:, c].reshape(-1, 1) - grid.view(1, -1)).abs().min(dim=1).values
        assert on_grid.max() < 1e-6
        # Large inputs reach both ends of the grid (all levels are usable).
        assert set(torch.unique(q[:, c]).tolist()) == set(grid.tolist())
    idx = fsq.codes_to_indices(q)
    assert torch.equal(fsq.indices_to_codes(idx), q)


def test_fsq_passes_gradients_straight_through():
    fsq = FSQuantizer([8, 5, 5, 5])
    h = torch.randn(1, 4, 1, 2, 2, requires_grad=True)
    fsq.quantize(h).sum().backward()
    assert h.grad is not None and (h.grad.abs() > 0).all()


def test_bad_levels_and_indices_are_rejected_with_the_valid_range():
    with pytest.raises(ValueError, match="levels must be integers >= 2"):
        FSQuantizer([8, 1])
    fsq = FSQuantizer([8, 5])
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        fsq.indices_to_codes(torch.tensor([[[[40]]]]))
    with pytest.raises(TypeError, match="integer"):
        fsq.indices_to_codes(torch.zeros(1, 1, 1, 1))


def test_gaussian_encode_is_the_mean_and_kl_is_zero_for_the_prior():
    g = DiagonalGaussian(4)
    mean = torch.randn(2, 4, 3, 2, 2)
    h = torch.cat([mean, torch.zeros_like(mean)], dim=1)
    assert torch.equal(g.encode(h), mean)
    _, aux = g(torch.zeros(2, 8, 3, 2, 2))
    assert aux["kl"].abs() < 1e-7
    _, aux = g(h)
    torch.testing.assert_close(aux["kl"], 0.5 * mean.pow(2).mean())
    torch.manual_seed(0)
    samples = torch.stack([g(h)[0] for _ in range(200)])
    assert (samples.mean(0) - mean).abs().max() < 0.35 and abs(samples.std(0).mean() - 1) < 0.1
