"""dynamics.verdict: one rule decides whether a model beats copying the last frame; eval.json's
booleans and the report's sentence are two readings of the same judgement."""

from __future__ import annotations

import math

from dynamics.verdict import COMPOUNDING_COLUMNS, compounding_verdict, judge_compounding


def _row(h, model_psnr, copy_recon, model_mse, copy_mse, copy_psnr=20.0, recon_psnr=30.0):
    values = (h, model_psnr, copy_psnr, copy_recon, recon_psnr, model_mse, copy_mse)
    return dict(zip(COMPOUNDING_COLUMNS, map(float, values), strict=True))


def test_a_model_better_in_pixels_and_latents_at_every_horizon_is_worth_something():
    rows = [_row(1, 30, 25, 0.1, 0.2), _row(2, 28, 24, 0.2, 0.3)]
    assert judge_compounding(rows).flags() == {
        "model_beats_copy_last_recon_psnr": True,
        "model_beats_copy_last_latent_mse": True,
        "worth_something": True,
        "tokenizer_limits": False,
    }
    assert "beats copying the last frame at every horizon 1..2" in compounding_verdict(rows)


def test_losing_in_latents_at_one_horizon_fails_the_latent_flag_and_the_sentence_names_it():
    rows = [_row(1, 30, 25, 0.1, 0.2), _row(2, 28, 24, 0.4, 0.3)]
    flags = judge_compounding(rows).flags()
    assert flags["model_beats_copy_last_recon_psnr"] and not flags["model_beats_copy_last_latent_mse"]
    assert not flags["worth_something"]
    assert "does NOT beat copying the last frame at horizon 2 " in compounding_verdict(rows)


def test_a_nan_figure_counts_as_a_loss():
    flags = judge_compounding([_row(1, math.nan, 25, 0.1, 0.2)]).flags()
    assert not flags["model_beats_copy_last_recon_psnr"] and not flags["worth_something"]


def test_copy_last_above_the_recon_ceiling_says_the_tokenizer_limits():
    rows = [_row(1, 30, 25, 0.1, 0.2, copy_psnr=31.0, recon_psnr=30.0)]
    assert judge_compounding(rows).flags()["tokenizer_limits"]
    assert "the tokenizer, not the dynamics, is what loses" in compounding_verdict(rows)
