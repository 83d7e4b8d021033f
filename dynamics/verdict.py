"""The compounding-error table and its verdict (EVALUATION.md): the columns ``dynamics.evaluate``
writes, and the one rule that says whether a model beats copying the last frame.

``judge_compounding(rows)`` applies the rule and returns the figures (``CompoundingJudgement``);
``.flags()`` are eval.json's ``verdict`` booleans and ``compounding_verdict(rows)`` words the same
judgement for the report and the command line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

COMPOUNDING_COLUMNS = (
    "horizon",
    "model_psnr",
    "copy_last_psnr",
    "copy_last_recon_psnr",
    "recon_psnr",
    "model_latent_mse",
    "copy_last_latent_mse",
)
# Means over branches (PSNR dB, latent MSE in tokenizer units), then two ratios of sums (dynamics.evaluate).
COUNTERFACTUAL_COLUMNS = (
    "horizon",
    "factual_psnr",
    "counterfactual_psnr",
    "counterfactual_latent_mse",
    "true_ab_psnr",
    "action_response_ratio",
    "action_response_ratio_recon",
)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4g}"


@dataclass
class CompoundingJudgement:
    """EVALUATION.md's test of a compounding-error table, as figures; ``compounding_verdict`` words it.

    A model is worth something where ``model_psnr > copy_last_recon_psnr`` and ``model_latent_mse <
    copy_last_latent_mse`` at every horizon; where ``copy_last_psnr > recon_psnr`` the tokenizer,
    not the dynamics, is what loses.
    """

    horizons: list[int]
    checks: list[tuple[str, str, str]]  # (model column, copy-last column, ">" or "<") in the table
    unchecked: list[str]  # columns a check needs that the table lacks
    failing: list[tuple[int, str]]  # (horizon, what lost there)
    lost: dict[str, list[int]]  # model column of each check -> the horizons where it loses
    tokenizer_limits: list[tuple[int, float, float]]  # (horizon, recon_psnr, copy_last_psnr)
    worst_margin_db: tuple[int, float] | None  # (horizon, model_psnr - copy_last_recon_psnr), smallest
    worst_latent_ratio: tuple[int, float] | None  # (horizon, model / copy-last latent MSE), largest

    @property
    def beats(self) -> bool | None:
        """Beats copy-last at every horizon; ``None`` when nothing could be checked."""
        return None if not self.checks or not self.horizons else not self.failing

    def flags(self) -> dict[str, bool]:
        """eval.json's ``verdict``: beats copy-last in pixels / in latents / both at every horizon,
        and whether the tokenizer is what loses (pixel copy-last above the recon ceiling somewhere)."""
        pixels = "model_psnr" in self.lost and not self.lost["model_psnr"]
        latents = "model_latent_mse" in self.lost and not self.lost["model_latent_mse"]
        return {
            "model_beats_copy_last_recon_psnr": pixels,
            "model_beats_copy_last_latent_mse": latents,
            "worth_something": pixels and latents,
            "tokenizer_limits": bool(self.tokenizer_limits),
        }


def judge_compounding(rows: list[dict[str, float]]) -> CompoundingJudgement:
    """The one place that decides whether the model beats copying the last frame (EVALUATION.md)."""
    have = set(rows[0]) if rows else set()
    pairs = (("model_psnr", "copy_last_recon_psnr", ">"), ("model_latent_mse", "copy_last_latent_mse", "<"))
    checks = [c for c in pairs if c[0] in have and c[1] in have]
    unchecked = [n for a, b, _ in pairs for n in (a, b) if n not in have] if rows else []
    failing = []
    lost: dict[str, list[int]] = {a: [] for a, _, _ in checks}
    for r in rows:
        why = []
        for a, b, op in checks:
            beats = r[a] > r[b] if op == ">" else r[a] < r[b]  # NaN compares False: counts as a loss
            if not beats:
                why.append(f"{a} {_fmt(r[a])} vs {b} {_fmt(r[b])}")
                lost[a].append(int(r["horizon"]))
        if why:
            failing.append((int(r["horizon"]), "; ".join(why)))
    limits = []
    if {"copy_last_psnr", "recon_psnr"} <= have:
        limits = [
            (int(r["horizon"]), r["recon_psnr"], r["copy_last_psnr"])
            for r in rows
            if r["copy_last_psnr"] > r["recon_psnr"]
        ]

    def extreme(values: list[tuple[int, float]], pick: Callable) -> tuple[int, float] | None:
        finite = [(h, v) for h, v in values if not math.isnan(v)]
        return pick(finite, key=lambda hv: hv[1]) if finite else None

    psnr_check, latent_check = pairs
    margins, ratios = [], []  # (horizon, model_psnr - copy_last_recon_psnr), (horizon, MSE model/copy)
    for r in rows:
        h = int(r["horizon"])
        if psnr_check in checks:
            margins.append((h, r["model_psnr"] - r["copy_last_recon_psnr"]))
        if latent_check in checks:
            copy = r["copy_last_latent_mse"]
            ratios.append((h, r["model_latent_mse"] / copy if copy else math.inf))
    return CompoundingJudgement(
        horizons=[int(r["horizon"]) for r in rows],
        checks=checks,
        unchecked=unchecked,
        failing=failing,
        lost=lost,
        tokenizer_limits=limits,
        worst_margin_db=extreme(margins, min),
        worst_latent_ratio=extreme(ratios, max),
    )


def compounding_verdict(rows: list[dict[str, float]]) -> str:
    """One or two sentences: does the model beat copying the last frame at every horizon?"""
    if not rows:
        return "The compounding-error table has no rows: no verdict."
    j = judge_compounding(rows)
    sentences = []
    if not j.checks:
        sentences.append(f"No verdict: the table lacks the columns {', '.join(sorted(set(j.unchecked)))}.")
    else:
        what = " and ".join(f"{a} {op} {b}" for a, b, op in j.checks)
        if not j.failing:
            sentences.append(
                f"The model beats copying the last frame at every horizon "
                f"{j.horizons[0]}..{j.horizons[-1]} ({what})."
            )
        else:
            hs = ", ".join(str(h) for h, _ in j.failing)
            detail = "; ".join(f"h={h}: {why}" for h, why in j.failing)
            plural = "s" if len(j.failing) > 1 else ""
            sentences.append(
                f"The model does NOT beat copying the last frame at horizon{plural} {hs} "
                f"(needs {what}; {detail})."
            )
        if j.unchecked:
            sentences.append(f"(Not checked, column missing: {', '.join(j.unchecked)}.)")
    if j.tokenizer_limits:
        sentences.append(
            "At horizon " + ", ".join(str(h) for h, _, _ in j.tokenizer_limits) + " copying the last real "
            "frame in pixel space (copy_last_psnr) is above the tokenizer's own reconstruction (recon_psnr): "
            "there the tokenizer, not the dynamics, is what loses."
        )
    return " ".join(sentences)
