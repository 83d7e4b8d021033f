"""The compounding-error evaluation of a dynamics model (docs/evaluation.md): ``vidworld evaluate``.

    vidworld evaluate jobs/evaluate.yaml checkpoint=RUN_DIR tokenizer=TOKENIZER \
        shards=LATENT_SHARDS clips=CLIP_SHARDS horizon=2 output=DIR

On held-out clips (``split``; chosen by ``tokenizer.evaluate.select_samples``: the ``max_clips``
smallest ``sha1(seed:key)``, so fixed by the config and its seed), the first ``context`` real
latent frames are given and ``horizon`` latent frames are rolled out open-loop under the
recorded actions. Both counts are LATENT frames (dynamics/rollout.py: ``context=C`` is
``1 + (C-1) tau`` source frames; horizon ``h`` is latent frame ``C-1+h``, i.e. the ``tau`` source
frames ``1 + (C+h-2) tau .. (C+h-1) tau``). Per horizon ``h`` (mean over clips; PSNR per source
frame on uint8 at the clip's resolution, ``tokenizer.metrics.psnr``):

- ``model_psnr``: decode(context latents + rollout) against the true source frames of clip shards;
- ``copy_last_psnr``: the last real context source frame (``(C-1) tau``) against them;
- ``copy_last_recon_psnr``: decode(context latents + the last context latent repeated);
- ``recon_psnr``: decode(the true latents);
- ``model_latent_mse`` / ``copy_last_latent_mse``: against the true latent, in the tokenizer's
  units (continuous latents without ``latent_scale``; FSQ codes for indices).

Every decode is of the whole sequence from latent frame 0 (the decoder is causal), so the
predicted frames are decoded after the real context, as they would be shown.

Action sensitivity (after Genie): the same rollout (same context, same noise) with the horizon
frames' actions taken from another held-out clip (the next in the selection; the context keeps
its recorded actions); ``action_sensitivity_psnr`` = model_psnr(recorded) - model_psnr(other).
Skipped when the model has no actions or fewer than two clips are evaluated.

Latent actions (models trained with a latent action model, ``model.lam``): the latent action
model labels each clip's transitions with its codes, and the model rolls out under those codes
alone (no real actions, as it trained on unlabelled clips): ``latent_action_psnr`` per horizon;
then under the next clip's codes for the horizon frames: ``latent_sensitivity_psnr`` =
latent_action_psnr - that rollout's PSNR. Written to ``latent_actions.csv``.

Counterfactual actions (EVALUATION.md, simulator data; on when ``branches`` names branch files,
``pipeline/branches.py``: two futures of one saved emulator state, A under the recorded actions
and B under other ones, after the same context frames). Each file's frames are resized to
``branch_size`` the way curation resized the training clips (``branch_resize``; PyAV's AREA
scaler), cut to the ``1 + (context-1) tau`` source frames before the branch point and
``horizon tau`` after it (``horizon`` is clamped to the shortest file's future and eval.json
says so), and both sequences are encoded. The model rolls out from the same context latents with
the same noise under A's and under B's actions, grouped per latent frame as in training. Per
horizon ``h`` (mean over branches; PSNR in dB per source frame on uint8 at branch_size):

- ``factual_psnr``: decoded rollout A against the true frames under A;
- ``counterfactual_psnr``: decoded rollout B against the true frames under B (the real test);
- ``counterfactual_latent_mse``: rollout B against the encoded true B, in tokenizer units;
- ``true_ab_psnr``: true A against true B, how much the change of actions changes the game
  (identical frames count as 100 dB);
- ``action_response_ratio``: pixel MSE (uint8 units squared) of decoded rollout A against decoded
  rollout B over that of true A against true B, summed over branches before dividing (a ratio of
  means): 1 = the model reacts to the change of actions as much as the game, 0 = it ignores the
  actions; NaN in the CSV (null in eval.json) where the true futures are identical in every branch;
- ``action_response_ratio_recon``: the same with the denominator through the tokenizer
  (decode(encode(true A)) against decode(encode(true B))): the dynamics model alone, not penalised
  for what the tokenizer cannot show.

Skipped (and said so) for a model without actions, or with continuous ones (branch files hold
discrete Atari actions).

Uncertainty (models with an ensemble of output heads, ``model.ensemble = K > 1``): along the same
rollouts as the curve, the members' disagreement on each imagined frame (``DynamicsHead.rollout``
with ``return_disagreement``), mean over clips per horizon, ``ensemble_disagreement``: for
continuous latents the variance over members of the predicted clean latent in the tokenizer's
units squared (``latent_scale`` undone, as ``model_latent_mse``, beside which it is read), for FSQ
indices the members' Jensen-Shannon divergence in nats. Written to ``disagreement.csv``, eval.json
``disagreement`` and drawn on a second axis of ``compounding_error.png``; growing with the horizon
means the model knows less the further it imagines.

Reward and continuation (models with ``model.reward_head`` / ``model.continue_head``; the clips
must then have ``KEY.rewards.npy`` / ``KEY.terminals.npy``): every latent frame of the evaluated
clips, clean, under the recorded actions: reward-event AUROC, reward MSE and continuation accuracy
beside the always-zero and base-rate predictors (``outcome_figures``; eval.json ``outcomes``).

Outputs (the file names below are this module's constants, EVAL_JSON...; vidworld/report.py
documents the folder): ``compounding_error.csv``, ``action_sensitivity.csv``, ``disagreement.csv``,
``counterfactual.csv``,
``compounding_error.png``, ``rollout.mp4`` (the first clip, truth | model, at the frame rate its
metadata records), ``counterfactual.mp4`` (the first branch, truth A | model A | truth B | model B,
at the branch file's rate), ``eval.json`` (provenance, verdict, and a ``counterfactual`` object:
status ``computed`` / ``off`` / ``skipped: REASON``, the branch files, horizon, rows, and the rows
of each game alone under ``games``), and a W&B run (``wandb.mode``, ``runtime.tracking.open_run``)
with the keys defined below, which ``vidworld.dashboard`` draws: ``compounding/*`` and
``counterfactual/*`` against ``compounding/horizon``, the tables ``eval/compounding_error`` and
``eval/counterfactual``, ``eval/compounding_error_figure``, ``eval/rollout_video`` and
``eval/counterfactual_video``. A file of a part not computed this run is removed, so a stale one
is never read as this run's. ``is_complete(cfg)`` says whether an output folder is up to date.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import itertools
import json
import math
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch import Tensor

from dynamics.outcome import outcome_metrics
from dynamics.rollout import (
    SamplingConfig,
    WorldModel,
    clip_frames_by_key,
    side_by_side,
    source_frames,
    source_slice,
)
from dynamics.transformer import FrameActions
from dynamics.verdict import (
    COMPOUNDING_COLUMNS,
    COUNTERFACTUAL_COLUMNS,
    compounding_verdict,
    judge_compounding,
)
from pipeline.branches import BRANCH_SUFFIX, read_branch
from pipeline.clips import RESIZE_MODES, center_crop, decode_size
from pipeline.shards import clip_fps
from runtime.files import atomic_write_bytes, atomic_write_text
from runtime.progress import Progress
from runtime.stage import stage_cli
from runtime.tracking import Table, WandbConfig, open_run, wandb_media
from runtime.video import encode_mp4
from tokenizer.evaluate import iter_split, machine_name, select_samples, utc_now
from tokenizer.metrics import from_uint8, psnr

# The files this stage writes into its output folder (``output``); eval.json is written last.
EVAL_JSON = "eval.json"
COMPOUNDING_CSV = "compounding_error.csv"
COMPOUNDING_FIGURE = "compounding_error.png"
ACTION_CSV = "action_sensitivity.csv"
LATENT_CSV = "latent_actions.csv"
DISAGREEMENT_CSV = "disagreement.csv"
COUNTERFACTUAL_CSV = "counterfactual.csv"
ROLLOUT_VIDEO = "rollout.mp4"
COUNTERFACTUAL_VIDEO = "counterfactual.mp4"

ACTION_COLUMNS = ("horizon", "action_sensitivity_psnr")
LATENT_COLUMNS = ("horizon", "latent_action_psnr", "latent_sensitivity_psnr")
DISAGREEMENT_COLUMNS = ("horizon", "ensemble_disagreement")

# The W&B keys this stage logs (vidworld.dashboard draws them): the per-horizon figures as
# PREFIX + column against HORIZON_KEY (latent frames after the context).
COMPOUNDING_PREFIX = "compounding/"  # + a COMPOUNDING_COLUMNS name
COUNTERFACTUAL_PREFIX = "counterfactual/"  # + a COUNTERFACTUAL_COLUMNS name
HORIZON_KEY = COMPOUNDING_PREFIX + "horizon"
COMPOUNDING_KEYS = tuple(COMPOUNDING_PREFIX + c for c in COMPOUNDING_COLUMNS if c != "horizon")
ACTION_KEY = COMPOUNDING_PREFIX + "action_sensitivity_psnr"
LATENT_KEYS = tuple(COMPOUNDING_PREFIX + c for c in LATENT_COLUMNS if c != "horizon")
DISAGREEMENT_KEY = COMPOUNDING_PREFIX + "ensemble_disagreement"
COMPOUNDING_TABLE_KEY = "eval/compounding_error"
COUNTERFACTUAL_TABLE_KEY = "eval/counterfactual"
FIGURE_KEY = "eval/compounding_error_figure"
ROLLOUT_VIDEO_KEY = "eval/rollout_video"
COUNTERFACTUAL_VIDEO_KEY = "eval/counterfactual_video"
# COUNTERFACTUAL_COLUMNS are these means over branches, then two ratios of sums over
# branches of the per-branch pixel MSEs (uint8 units squared) in RESPONSE_TERMS: the numerator
# (rollout A against rollout B) and the two denominators (true A against true B; through the tokenizer).
COUNTERFACTUAL_MEANS = ("factual_psnr", "counterfactual_psnr", "counterfactual_latent_mse", "true_ab_psnr")
RESPONSE_TERMS = ("rollout_ab_mse", "true_ab_mse", "recon_ab_mse")


@dataclasses.dataclass
class EvaluateConfig:
    """``vidworld evaluate``. Defaults: the small CPU case (17-frame clips, tau=4 -> 5 latent frames)."""

    checkpoint: str = "???"  # dynamics training run folder (config.yaml + model.safetensors)
    tokenizer: str = "???"  # the tokenizer that made the latent shards
    shards: str = "???"  # latent shards (vidworld tokenize output)
    clips: str = "???"  # the clip shards they were tokenized from (same keys): the truth in pixels
    output: str = "???"  # folder for the CSVs, figure, video and eval.json
    split: str = "heldout"  # never report "train" figures as held-out
    max_clips: int = 8
    seed: int = 0  # clip selection and sampling noise
    context: int = 2  # latent frames of real context
    horizon: int = 2  # latent frames rolled out open-loop
    action_sensitivity: bool = True
    # Counterfactual actions: branch files of simulator data (`vidworld samples` writes
    # OUT/branches/GAME-bNN.npz; pipeline/branches.py), a folder or a glob; empty: off.
    branches: str = ""
    branch_size: int = 64  # pixels: the curated clips' `size`, which the model was trained at
    branch_resize: str = "squash"  # the curated clips' `resize` (squash | center_crop)
    max_branches: int = 8  # taken in turn from each game (the file name before "-bNN"); 0: all
    device: str = "auto"
    fps: float = 15.0  # rollout.mp4's rate when the clips' metadata records none (curated clips do)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    wandb: WandbConfig = dataclasses.field(
        default_factory=lambda: WandbConfig(mode="offline", tags=["eval"], name="eval")
    )


# Config keys that say where things are or go, not what is measured: their content is in eval_inputs.
_NOT_SETTINGS = ("checkpoint", "tokenizer", "shards", "clips", "branches", "output", "device", "wandb")


def eval_inputs(cfg: EvaluateConfig) -> dict[str, Any]:
    """What an evaluation is of (eval.json's ``inputs``): the dynamics run
    (``runtime.trained.run_identity``: step, data record), the tokenizer
    (``tokenizer.evaluate.tokenizer_identity``), the content of the latent and clip shards and of the
    branch files (``runtime.fingerprint``; ``None`` for what cannot be read), and every other setting."""
    from runtime.fingerprint import files_fingerprint, shards_fingerprint
    from runtime.trained import run_identity  # here: it imports the training runtime
    from tokenizer.evaluate import tokenizer_identity

    def content(fingerprint: Any, spec: Any) -> str | None:
        try:
            return fingerprint(spec)
        except (OSError, ValueError):
            return None

    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_SETTINGS}
    return json.loads(  # as eval.json holds it (tuples as lists), so that the two compare equal
        json.dumps(
            {
                "checkpoint": run_identity(cfg.checkpoint),
                "tokenizer": tokenizer_identity(cfg.tokenizer),
                "shards": content(shards_fingerprint, cfg.shards),
                "clips": content(shards_fingerprint, cfg.clips),
                "branches": content(lambda b: files_fingerprint(branch_files(b)), cfg.branches)
                if cfg.branches
                else None,
                "settings": settings,
            },
            sort_keys=True,
        )
    )


def is_complete(cfg: EvaluateConfig) -> bool:
    """Whether ``cfg.output`` holds this evaluation of ``cfg.checkpoint`` as it is now: eval.json of
    the step of the run's exported weights, of the inputs and settings as they are now
    (``eval_inputs``: a run trained again, latents or clips made again, other settings make it stale;
    an eval.json of an older version, without ``inputs``, is judged by the step alone), the curve
    (CSV and figure) and the rollout video; and, when ``cfg.branches`` asks for counterfactuals,
    their outcome: computed (then with counterfactual.csv and counterfactual.mp4) or skipped for
    this model (no discrete actions: rerunning would skip them again)."""
    from runtime.trained import trained_step  # here: it imports the training runtime

    out = Path(cfg.output)
    try:
        info = json.loads((out / EVAL_JSON).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict):
        return False
    step = trained_step(cfg.checkpoint)
    if step is None or info.get("checkpoint_step") != step:
        return False
    if "inputs" in info and info["inputs"] != eval_inputs(cfg):
        return False
    if not all((out / n).is_file() for n in (COMPOUNDING_CSV, COMPOUNDING_FIGURE, ROLLOUT_VIDEO)):
        return False
    if not cfg.branches:
        return True
    status = str((info.get("counterfactual") or {}).get("status", "off"))
    if status.startswith("skipped"):
        return True
    return status == "computed" and all(
        (out / n).is_file() for n in (COUNTERFACTUAL_CSV, COUNTERFACTUAL_VIDEO)
    )


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (int(r[c]) if c == "horizon" else f"{r[c]:.6g}") for c in columns})
    atomic_write_text(path, buf.getvalue())


def _sensitivity_status(done: bool, uses_actions: bool, wanted: bool) -> str:
    if done:
        return "computed"
    if not wanted:
        return "off"
    return "skipped: the model takes no actions" if not uses_actions else "skipped: fewer than 2 clips"


def plot_curve(
    rows: list[dict[str, float]],
    path: Path,
    title: str,
    disagreement: list[dict[str, float]] | None = None,
    disagreement_label: str = "ensemble disagreement",
) -> None:
    """PSNR against horizon: model, copy-last (pixels and through the tokenizer), recon ceiling; with
    ``disagreement`` rows (``DISAGREEMENT_COLUMNS``), the ensemble's disagreement on a second axis
    labelled ``disagreement_label``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    h = [int(r["horizon"]) for r in rows]
    for col, style, label in (
        ("model_psnr", "o-", "model"),
        ("copy_last_psnr", "s--", "copy last frame"),
        ("copy_last_recon_psnr", "^--", "copy last latent (through tokenizer)"),
        ("recon_psnr", "k:", "tokenizer reconstruction (ceiling)"),
    ):
        ax.plot(h, [r[col] for r in rows], style, label=label)
    ax.set_xlabel("horizon (latent frames after the context)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xticks(h)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if disagreement:
        right = ax.twinx()
        (line,) = right.plot(
            [int(r["horizon"]) for r in disagreement],
            [r["ensemble_disagreement"] for r in disagreement],
            "d-.",
            color="tab:purple",
            label="ensemble disagreement (right axis)",
        )
        right.set_ylabel(disagreement_label)
        right.set_ylim(bottom=0)
        handles, labels = [*handles, line], [*labels, line.get_label()]
    ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


def roll_out(
    world: WorldModel,
    ctx: torch.Tensor,
    actions: torch.Tensor | None,
    horizon: int,
    noise_seed: int,
    sampling: SamplingConfig,
    latent_actions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``ctx`` followed by ``horizon`` rolled-out latent frames (model space), the sampling noise
    seeded by ``noise_seed`` so that rollouts under different actions share it."""
    g = torch.Generator(device=world.device).manual_seed(noise_seed)
    return world.cat(ctx, world.rollout(ctx, actions, horizon, g, sampling, latent_actions))


def score_clip(
    world: WorldModel,
    x: torch.Tensor,
    actions: torch.Tensor | None,
    other_actions: torch.Tensor | None,
    truth: torch.Tensor,
    context: int,
    horizon: int,
    noise_seed: int,
    sampling: SamplingConfig,
    key: str = "",
    latent: torch.Tensor | None = None,
    other_latent: torch.Tensor | None = None,
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """One clip's per-horizon figures (the CSV columns, and ``action_sensitivity_psnr`` when
    ``other_actions`` is given), each ``[horizon]``, and the model's decoded frames. With the
    clip's latent action codes ``latent`` ``[1, context + horizon]`` (and another clip's,
    ``other_latent``), also ``latent_action_psnr`` (and ``latent_sensitivity_psnr``). For an
    ensemble (``model.ensemble > 1``), also ``ensemble_disagreement`` along the model's rollout
    (``disagreement_figure``).

    ``x``: the clip's first ``context + horizon`` latent frames (model space, batch of one);
    ``actions`` ``[1, context + horizon, tau]`` or None; ``truth``: its uint8 source frames
    ``[1 + (context + horizon - 1) tau, H, W, 3]``. Both rollouts use the same noise.
    """
    c, tau = context, world.tau
    ctx = world.slice(x, 0, c)
    last = world.slice(ctx, c - 1, c)
    spread = None
    if world.cfg.ensemble > 1:
        g = torch.Generator(device=world.device).manual_seed(noise_seed)
        pred, spread = world.rollout(ctx, actions, horizon, g, sampling, return_disagreement=True)
        seq_model = world.cat(ctx, pred)
    else:
        seq_model = roll_out(world, ctx, actions, horizon, noise_seed, sampling)
    seqs = [seq_model, world.cat(ctx, *([last] * horizon)), x.to(seq_model.dtype)]
    if other_actions is not None and actions is not None:
        # Same context and context actions; only the rolled-out frames get the other clip's actions.
        other = torch.cat([actions[:, :c], other_actions[:, c : c + horizon].to(actions.device)], 1)
        seqs.append(roll_out(world, ctx, other, horizon, noise_seed, sampling))
    extra: dict[str, int] = {"other_actions": len(seqs) - 1} if len(seqs) == 4 else {}
    if latent is not None:
        # Latent codes alone, as the model trained on unlabelled clips; then the other clip's codes
        # for the horizon frames.
        extra["latent"] = len(seqs)
        seqs.append(roll_out(world, ctx, None, horizon, noise_seed, sampling, latent))
        if other_latent is not None:
            swapped = torch.cat([latent[:, :c], other_latent[:, c : c + horizon].to(latent.device)], 1)
            extra["other_latent"] = len(seqs)
            seqs.append(roll_out(world, ctx, None, horizon, noise_seed, sampling, swapped))
    # One decode for all: model, copy-last, truth (the recon ceiling), other-actions rollouts.
    decoded = world.decode(torch.cat(seqs, dim=0))
    if decoded.shape[1:] != truth.shape:
        raise ValueError(
            f"decoded frames {tuple(decoded.shape[1:])} differ from clip {key!r} {tuple(truth.shape)}: "
            "the tokenizer does not match these shards"
        )
    model_px, copy_px, recon_px = decoded[0], decoded[1], decoded[2]
    z_true, z_model = world.latents(x), world.latents(seq_model)
    last_src = truth[source_slice(c - 1, tau)][-1:]
    out = {col: np.zeros(horizon) for col in COMPOUNDING_COLUMNS if col != "horizon"}
    for name, col in (
        ("other_actions", "action_sensitivity_psnr"),
        ("latent", "latent_action_psnr"),
        ("other_latent", "latent_sensitivity_psnr"),
    ):
        if name in extra:
            out[col] = np.zeros(horizon)
    if spread is not None:
        out["ensemble_disagreement"] = disagreement_figure(world, spread)[0]
    for k in range(horizon):
        i = c + k  # the latent frame of horizon k + 1
        sl = source_slice(i, tau)
        t = truth[sl]
        out["model_psnr"][k] = psnr(t, model_px[sl])
        out["copy_last_psnr"][k] = psnr(t, last_src.expand_as(t).contiguous())
        out["copy_last_recon_psnr"][k] = psnr(t, copy_px[sl])
        out["recon_psnr"][k] = psnr(t, recon_px[sl])
        zt = z_true[:, :, i]
        out["model_latent_mse"][k] = float(((z_model[:, :, i] - zt) ** 2).mean())
        out["copy_last_latent_mse"][k] = float(((z_true[:, :, c - 1] - zt) ** 2).mean())
        if "other_actions" in extra:
            out["action_sensitivity_psnr"][k] = out["model_psnr"][k] - psnr(
                t, decoded[extra["other_actions"]][sl]
            )
        if "latent" in extra:
            out["latent_action_psnr"][k] = psnr(t, decoded[extra["latent"]][sl])
        if "other_latent" in extra:
            other_psnr = psnr(t, decoded[extra["other_latent"]][sl])
            out["latent_sensitivity_psnr"][k] = out["latent_action_psnr"][k] - other_psnr
    return out, model_px


def disagreement_figure(world: WorldModel, spread: Tensor) -> np.ndarray:
    """A rollout's disagreement ``[B, H]`` (``DynamicsHead.rollout``, model space) in the units
    eval.json states (``disagreement_unit``): continuous latents back in the tokenizer's units
    (variance / ``latent_scale``², like ``model_latent_mse``), FSQ indices as they are (nats)."""
    spread = spread.float().cpu()
    if not world.cfg.is_discrete:
        spread = spread / world.cfg.latent_scale**2
    return spread.numpy().astype(np.float64)


def disagreement_unit(world: WorldModel) -> str:
    """What ``ensemble_disagreement`` measures for this model, in words."""
    if world.cfg.is_discrete:
        return "Jensen-Shannon divergence of the members' token distributions, nats"
    return "variance over members of the predicted latent, tokenizer latent units squared"


# -- counterfactual actions ------------------------------------------------------------------------


@dataclasses.dataclass
class BranchWindow:
    """One branch file cut for scoring. ``truth`` uint8 ``[2, n, S, S, 3]`` (A, B) and ``actions``
    int64 ``[2, n]``: the ``n = 1 + (context + horizon - 1) tau`` source frames from the first
    context frame kept; A and B differ from source frame ``1 + (context - 1) tau`` on."""

    path: str
    game: str
    fps: float
    truth: Tensor
    actions: Tensor


def branch_files(spec: str) -> list[Path]:
    """The branch files (``.npz``) of a folder or a glob, in name order."""
    p = Path(spec)
    found = sorted(p.glob(f"*{BRANCH_SUFFIX}")) if p.is_dir() else sorted(Path(f) for f in glob.glob(spec))
    found = [f for f in found if f.suffix == BRANCH_SUFFIX and f.is_file()]
    if not found:
        raise ValueError(
            f"branches={spec!r} names no {BRANCH_SUFFIX} branch files: pass the branches/ folder that "
            "`vidworld samples OUT` writes (OUT/branches), or branches='' to turn the counterfactual "
            "evaluation off"
        )
    return found


def resize_frames(frames: np.ndarray, size: int, mode: str) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` -> ``[T, size, size, 3]`` as curation resizes clips: to
    ``pipeline.clips.decode_size`` with PyAV's AREA scaler (pipeline.probe.FrameReader's), then
    ``center_crop`` for that mode."""
    h, w = frames.shape[1:3]
    tw, th = decode_size(w, h, 0, size, mode)
    reformatter = VideoReformatter()
    out = np.stack(
        [
            reformatter.reformat(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24"),
                tw,
                th,
                "rgb24",
                interpolation="AREA",
            ).to_ndarray()
            for f in frames
        ]
    )
    return center_crop(out, size) if mode == "center_crop" else out


def counterfactual_status(cfg: EvaluateConfig, world: WorldModel) -> str:
    """``computed`` when the branch files will be scored, ``off``, or ``skipped: REASON``."""
    if not cfg.branches:
        return "off"
    if world.cfg.action_type == "none":
        return "skipped: the model takes no actions"
    if world.cfg.action_type != "discrete":
        return f"skipped: the model takes {world.cfg.action_type} actions; branch files hold discrete ones"
    return "computed"


def take_in_turn(paths: list[Path], limit: int) -> list[Path]:
    """Up to ``limit`` (0: all) of ``paths``, one from each game in turn (the game is the file name
    before its last "-": ``breakout-b03.npz`` -> ``breakout``), so a limit never drops a game."""
    games: dict[str, list[Path]] = {}
    for p in paths:
        games.setdefault(p.stem.rsplit("-", 1)[0], []).append(p)
    order = [p for group in itertools.zip_longest(*games.values()) for p in group if p is not None]
    return order[:limit] if limit > 0 else order


def load_branch_windows(cfg: EvaluateConfig, world: WorldModel) -> tuple[list[BranchWindow], int, str]:
    """Read, check, cut and resize ``max_branches`` branch files (``take_in_turn``). Returns the windows,
    the horizon in latent frames (``cfg.horizon`` clamped so that ``horizon tau`` source frames
    fit in every file's future) and a note saying so when it was clamped."""
    if cfg.branch_resize not in RESIZE_MODES or cfg.branch_size < 2:
        raise ValueError(
            f"branch_size={cfg.branch_size}, branch_resize={cfg.branch_resize!r}: set them to the curated "
            f"clips' size (>= 2 pixels) and resize (one of {RESIZE_MODES})"
        )
    tau, c = world.tau, cfg.context
    n_ctx = source_frames(c, tau)
    paths = take_in_turn(branch_files(cfg.branches), cfg.max_branches)
    branches = [(p, read_branch(p)) for p in paths]
    for p, b in branches:
        if b.context_frames < n_ctx:
            raise ValueError(
                f"branch file {p} has {b.context_frames} context frames but context={c} latent frames "
                f"need {n_ctx} source frames before the branch point (tau={tau}): lower context to "
                f"{1 + (b.context_frames - 1) // tau} or record branches with context_frames >= {n_ctx}"
            )
        if b.horizon_frames < tau:
            raise ValueError(
                f"branch file {p} has {b.horizon_frames} frames after the branch point, fewer than one "
                f"latent frame (tau={tau}): record branches with horizon_frames >= {tau}"
            )
        acts = np.concatenate([b.actions_a, b.actions_b])
        if acts.min() < 0 or acts.max() >= world.cfg.num_actions:
            raise ValueError(
                f"branch file {p} has actions {int(acts.min())}..{int(acts.max())} but the model takes "
                f"0..{world.cfg.num_actions - 1}: score it with a model trained on that game's actions"
            )
    shortest, sb = min(branches, key=lambda pb: pb[1].horizon_frames)
    hz = min(cfg.horizon, sb.horizon_frames // tau)
    note = ""
    if hz < cfg.horizon:
        note = (
            f"horizon clamped from {cfg.horizon} to {hz} latent frames: {shortest.name} holds "
            f"{sb.horizon_frames} source frames after the branch point (tau={tau})"
        )
    n = source_frames(c + hz, tau)
    windows: list[BranchWindow] = []
    for p, b in branches:
        cut = slice(b.context_frames - n_ctx, b.context_frames - n_ctx + n)
        frames = [resize_frames(f[cut], cfg.branch_size, cfg.branch_resize) for f in (b.frames_a, b.frames_b)]
        actions = np.stack([b.actions_a[cut], b.actions_b[cut]])
        truth, acts = torch.from_numpy(np.stack(frames)), torch.from_numpy(actions)
        windows.append(BranchWindow(str(p), b.game, b.fps, truth, acts))
    return windows, hz, note


def encode_branch(
    world: WorldModel, frames: Tensor, actions: Tensor, key: str
) -> tuple[Tensor, Tensor | None]:
    """uint8 frames ``[n, S, S, 3]`` and their actions ``[n]`` -> ``(x, actions)`` as
    ``WorldModel.prepare`` gives them for a latent-shard sample: latents stored as the tokenize job
    stores them (float16 ``[T', C, h, w]``, or FSQ indices ``[T', h, w]``), actions grouped per
    latent frame as in training."""
    tok = world.tokenizer
    video = from_uint8(frames[None].to(world.device))
    p = next(iter(tok.parameters()), None)
    if p is not None:
        video = video.to(p.dtype)
    if world.cfg.is_discrete:
        sample = {"indices": tok.encode_indices(video)[0].cpu()}
    else:
        sample = {"latents": tok.encode(video)[0].permute(1, 0, 2, 3).to(torch.float16).cpu()}
    grid = tuple(next(iter(sample.values())).shape[-2:])
    if grid != (world.cfg.latent_height, world.cfg.latent_width):
        raise ValueError(
            f"branch {key}: {frames.shape[1]}x{frames.shape[2]} frames encode to a {grid[0]}x{grid[1]} "
            f"latent grid but the model was trained on {world.cfg.latent_height}x{world.cfg.latent_width}: "
            "set branch_size (and branch_resize) to the curated clips' size (and resize)"
        )
    return world.prepare({"key": key, **sample, "actions": actions})


def _pixel_mse(a: Tensor, b: Tensor) -> float:
    """Mean squared difference of uint8 frames, in uint8 units squared."""
    return float((a.double() - b.double()).pow(2).mean())


def score_branch(
    world: WorldModel,
    win: BranchWindow,
    context: int,
    horizon: int,
    noise_seed: int,
    sampling: SamplingConfig,
) -> tuple[dict[str, np.ndarray], Tensor]:
    """One branch's per-horizon figures, each ``[horizon]``: ``COUNTERFACTUAL_MEANS`` and the
    ``RESPONSE_TERMS`` behind the ratios; and the decoded
    rollouts uint8 ``[2, n, S, S, 3]`` (A, B). Both rollouts start from A's context latents (the
    same frames: the encoder is causal) with the same noise."""
    c, tau = context, world.tau
    (xa, acts_a), (xb, acts_b) = (
        encode_branch(world, win.truth[i], win.actions[i], f"{win.path}:{ab}") for i, ab in enumerate("AB")
    )
    ctx = world.slice(xa, 0, c)
    seq_a = roll_out(world, ctx, acts_a, horizon, noise_seed, sampling)
    seq_b = roll_out(world, ctx, acts_b, horizon, noise_seed, sampling)
    # One decode for all: rollout A, rollout B, and true A and B through the tokenizer.
    model_a, model_b, recon_a, recon_b = world.decode(
        torch.cat([seq_a, seq_b, xa.to(seq_a.dtype), xb.to(seq_a.dtype)], dim=0)
    )
    true_a, true_b = win.truth
    z_true_b, z_model_b = world.latents(xb), world.latents(seq_b)
    out = {col: np.zeros(horizon) for col in (*COUNTERFACTUAL_MEANS, *RESPONSE_TERMS)}
    for k in range(horizon):
        i = c + k  # the latent frame of horizon k + 1
        sl = source_slice(i, tau)
        out["factual_psnr"][k] = psnr(true_a[sl], model_a[sl])
        out["counterfactual_psnr"][k] = psnr(true_b[sl], model_b[sl])
        out["counterfactual_latent_mse"][k] = float(((z_model_b[:, :, i] - z_true_b[:, :, i]) ** 2).mean())
        out["true_ab_psnr"][k] = psnr(true_a[sl], true_b[sl])
        out["rollout_ab_mse"][k] = _pixel_mse(model_a[sl], model_b[sl])
        out["true_ab_mse"][k] = _pixel_mse(true_a[sl], true_b[sl])
        out["recon_ab_mse"][k] = _pixel_mse(recon_a[sl], recon_b[sl])
    return out, torch.stack([model_a, model_b])


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def counterfactual_rows(scores: list[dict[str, np.ndarray]]) -> list[dict[str, float]]:
    """``COUNTERFACTUAL_COLUMNS`` rows, one per horizon, from branches' ``score_branch`` figures:
    ``COUNTERFACTUAL_MEANS`` averaged, the ratios as sums over sums of ``RESPONSE_TERMS``."""
    sums = {col: np.sum([s[col] for s in scores], axis=0) for col in (*COUNTERFACTUAL_MEANS, *RESPONSE_TERMS)}
    rows = []
    for k in range(len(sums["rollout_ab_mse"])):
        row = {
            "horizon": float(k + 1),
            **{col: float(sums[col][k] / len(scores)) for col in COUNTERFACTUAL_MEANS},
        }
        row["action_response_ratio"] = _ratio(sums["rollout_ab_mse"][k], sums["true_ab_mse"][k])
        row["action_response_ratio_recon"] = _ratio(sums["rollout_ab_mse"][k], sums["recon_ab_mse"][k])
        rows.append(row)
    return rows


def score_branches(
    world: WorldModel, windows: list[BranchWindow], context: int, horizon: int, cfg: EvaluateConfig
) -> tuple[list[dict[str, float]], dict[str, list[dict[str, float]]], np.ndarray]:
    """The counterfactual rows over all windows and over each game's (``{game: rows}``; the games'
    scales differ, EVALUATION.md), and the first branch's video: truth A | model A | truth B |
    model B, uint8 ``[n, S, 4S, 3]``."""
    scores: list[dict[str, np.ndarray]] = []
    video: np.ndarray | None = None
    progress = Progress("counterfactual", len(windows), unit="branches")
    for j, win in enumerate(windows):
        figures, model = score_branch(world, win, context, horizon, cfg.seed * 1_000_003 + j, cfg.sampling)
        scores.append(figures)
        if video is None:
            n_ctx = source_frames(context, world.tau)
            pairs = [side_by_side(win.truth[i].numpy(), model[i].numpy(), n_ctx) for i in range(2)]
            video = np.ascontiguousarray(np.concatenate(pairs, axis=2))
        progress.update(1)
    progress.close()
    assert video is not None
    per_game = {
        game: counterfactual_rows([s for s, w in zip(scores, windows, strict=True) if w.game == game])
        for game in sorted({w.game for w in windows})
    }
    return counterfactual_rows(scores), per_game, video


@torch.no_grad()
def evaluate(cfg: EvaluateConfig, world: WorldModel | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the ``eval.json`` dict (with ``rows`` and ``action_rows``; the
    ``counterfactual`` object's rows keep NaN where eval.json has null)."""
    if cfg.context < 1 or cfg.horizon < 1:
        raise ValueError(f"context={cfg.context}, horizon={cfg.horizon}: both must be >= 1 latent frames")
    world = world or WorldModel.load(cfg.checkpoint, cfg.tokenizer, cfg.device)
    tau, c, hz = world.tau, cfg.context, cfg.horizon
    need = c + hz
    field = "indices" if world.cfg.is_discrete else "latents"
    uses_actions = world.cfg.action_type != "none"
    require = [field] + (["actions"] if uses_actions else [])
    require += ["rewards"] if world.cfg.reward_head else []
    require += ["terminals"] if world.cfg.continue_head else []
    long_enough = (s for s in iter_split(cfg.shards, cfg.split, require) if s[field].shape[0] >= need)
    chosen = select_samples(long_enough, cfg.max_clips, cfg.seed)
    if not chosen:
        raise ValueError(
            f"no {cfg.split!r} clips with {'+'.join(require)} and >= {need} latent frames (context {c} + "
            f"horizon {hz}) in {cfg.shards}: lower context/horizon, or curate with a held-out split"
            + (
                "; this model takes actions, so a source WITH actions must be held out (change the "
                "curate seed or heldout_fraction)"
                if uses_actions
                else ""
            )
        )
    for s in chosen:
        if s["meta"].get("split", cfg.split) != cfg.split:
            raise ValueError(f"clip {s['key']!r} is in split {s['meta'].get('split')!r}, not {cfg.split!r}")
    cf_status = counterfactual_status(cfg, world)
    # Read and check the branch files before the long part, so that a bad one fails at once.
    windows, cf_hz, cf_note = load_branch_windows(cfg, world) if cf_status == "computed" else ([], 0, "")
    truth_by_key = clip_frames_by_key(cfg.clips, cfg.split, {s["key"] for s in chosen})
    prepared, latents, outcome_batches = [], [], []
    for s in chosen:
        batch = world.prepare_batch(s)
        if getattr(world.dynamics, "outcome", None) is not None:
            outcome_batches.append(batch)
        x, actions = batch["x"], batch["actions"]
        prepared.append((world.slice(x, 0, need), None if actions is None else actions[:, :need]))
        if batch.get("latent_actions") is not None:
            latents.append(batch["latent_actions"][:, :need])
    n_src = source_frames(need, tau)
    sums: dict[str, np.ndarray] = {}  # column -> per-horizon sum over clips
    do_sens = cfg.action_sensitivity and uses_actions and len(chosen) >= 2
    resolutions: set[str] = set()
    video: np.ndarray | None = None
    progress = Progress("evaluate", len(chosen), unit="clips")
    for j, (s, (x, actions)) in enumerate(zip(chosen, prepared, strict=True)):
        truth = truth_by_key[s["key"]]
        if truth.shape[0] < n_src:
            raise ValueError(
                f"clip {s['key']!r} has {truth.shape[0]} frames in {cfg.clips} but its latents need {n_src}"
            )
        truth = truth[:n_src]
        resolutions.add(f"{truth.shape[1]}x{truth.shape[2]}")
        other = prepared[(j + 1) % len(prepared)][1] if do_sens else None
        latent = latents[j] if latents else None
        other_latent = latents[(j + 1) % len(latents)] if latents and len(latents) >= 2 else None
        scores, model_px = score_clip(
            world, x, actions, other, truth, c, hz, cfg.seed * 1_000_003 + j, cfg.sampling, s["key"],
            latent, other_latent,
        )  # fmt: skip
        for col, v in scores.items():
            sums[col] = sums.get(col, 0.0) + v
        if video is None:
            video = side_by_side(truth.numpy(), model_px.numpy(), source_frames(c, tau))
        progress.update(1)
    progress.close()
    cf_rows, cf_per_game, cf_video = (
        score_branches(world, windows, c, cf_hz, cfg) if windows else ([], {}, None)
    )
    n = len(chosen)
    sens = sums.pop("action_sensitivity_psnr", None)
    latent_sums = {col: sums.pop(col) for col in LATENT_COLUMNS if col in sums}
    spread_sums = sums.pop("ensemble_disagreement", None)
    disagreement_rows = []
    if spread_sums is not None:
        disagreement_rows = [
            {"horizon": float(k + 1), "ensemble_disagreement": float(spread_sums[k] / n)} for k in range(hz)
        ]
    latent_rows = []
    if latent_sums:
        latent_rows = [
            {"horizon": float(k + 1), **{col: float(v[k] / n) for col, v in latent_sums.items()}}
            for k in range(hz)
        ]
    rows = [{"horizon": float(k + 1), **{col: float(v[k] / n) for col, v in sums.items()}} for k in range(hz)]
    action_rows = []
    if sens is not None:
        action_rows = [
            {"horizon": float(k + 1), "action_sensitivity_psnr": float(sens[k] / n)} for k in range(hz)
        ]
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / COMPOUNDING_CSV, COMPOUNDING_COLUMNS, rows)
    sens_path = out / ACTION_CSV
    if action_rows:
        _write_csv(sens_path, ACTION_COLUMNS, action_rows)
    elif sens_path.exists():
        sens_path.unlink()  # a stale file from an earlier run would be read as this run's
    if latent_rows:
        _write_csv(out / LATENT_CSV, tuple(c for c in LATENT_COLUMNS if c in latent_rows[0]), latent_rows)
    else:
        (out / LATENT_CSV).unlink(missing_ok=True)
    if disagreement_rows:
        _write_csv(out / DISAGREEMENT_CSV, DISAGREEMENT_COLUMNS, disagreement_rows)
    else:
        (out / DISAGREEMENT_CSV).unlink(missing_ok=True)
    if cf_video is not None:
        _write_csv(out / COUNTERFACTUAL_CSV, COUNTERFACTUAL_COLUMNS, cf_rows)
        atomic_write_bytes(out / COUNTERFACTUAL_VIDEO, encode_mp4(cf_video, fps=windows[0].fps))
    else:
        for name in (COUNTERFACTUAL_CSV, COUNTERFACTUAL_VIDEO):
            (out / name).unlink(missing_ok=True)
    resolution = ",".join(sorted(resolutions))
    info: dict[str, Any] = {
        "data": {
            "shards": str(cfg.shards),
            "clip_shards": str(cfg.clips),
            "split": cfg.split,
            "clips": n,
            "keys": [s["key"] for s in chosen],
            "resolution": resolution,
            "seed": cfg.seed,
        },
        "context_latent_frames": c,
        "horizon_latent_frames": hz,
        "context_source_frames": source_frames(c, tau),
        "source_frames_per_latent_frame": tau,
        "checkpoint": world.checkpoint,
        "checkpoint_step": world.step,
        "inputs": eval_inputs(cfg),  # what is_complete compares with the inputs as they are later
        "head": world.cfg.head,
        "tokenizer": world.tokenizer_path,
        "machine": machine_name(),
        "date": utc_now(),
        "action_sensitivity": _sensitivity_status(bool(action_rows), uses_actions, cfg.action_sensitivity),
        "latent_actions": {
            "status": "computed" if latent_rows else "off: the model has no latent action model",
            "lam": world.cfg.lam or "",
            "codes": world.cfg.latent_actions,
            "rows": latent_rows,
        },
        "disagreement": {
            "status": "computed"
            if disagreement_rows
            else "off: the model has one output head (model.ensemble=1)",
            "members": world.cfg.ensemble,
            "unit": disagreement_unit(world) if disagreement_rows else "",
            "rows": disagreement_rows,
        },
        "verdict": judge_compounding(rows).flags(),
        "outcomes": outcome_figures(world, outcome_batches),
        "counterfactual": {
            "status": cf_status,
            "branches": len(windows),
            "files": [w.path for w in windows],
            "resolution": f"{cfg.branch_size}x{cfg.branch_size}" if windows else "",
            "resize": cfg.branch_resize if windows else "",
            "horizon_latent_frames": cf_hz,
            "source_frames_per_latent_frame": tau,
            "note": cf_note,
            "rows": cf_rows,
            "games": cf_per_game,  # env id -> the same rows over that game's branches alone
        },
    }
    title = (
        f"{n} {cfg.split} clips at {resolution}, step {world.step}, context {c} latent frames\n"
        f"{Path(world.checkpoint).name or 'model'} | tokenizer {Path(world.tokenizer_path).name} | "
        f"{info['machine']} | {info['date'][:10]}"
    )
    label = "ensemble disagreement (" + ("JS, nats" if world.cfg.is_discrete else "latent variance") + ")"
    plot_curve(rows, out / COMPOUNDING_FIGURE, title, disagreement_rows, label)
    assert video is not None
    # The video is of the first clip: it plays at that clip's recorded rate.
    atomic_write_bytes(out / ROLLOUT_VIDEO, encode_mp4(video, fps=clip_fps(chosen[0]["meta"], cfg.fps)))
    atomic_write_text(out / EVAL_JSON, json.dumps(_finite_or_null(info), indent=2))
    log_to_wandb(cfg, out, rows, action_rows, info)
    return {**info, "rows": rows, "action_rows": action_rows}


def outcome_figures(world: WorldModel, batches: list[dict[str, Any]]) -> dict[str, Any]:
    """The reward and continuation heads' held-out figures over the evaluated clips (``batches``:
    ``WorldModel.prepare_batch`` outputs), every latent frame of each clip, from its clean latents
    under its recorded actions (``DynamicsHead.predict_outcomes``), each beside its trivial baseline
    (``dynamics.outcome.outcome_metrics``); ``status`` says when the model has no such head."""
    model = world.dynamics
    if getattr(model, "outcome", None) is None:
        return {"status": "off: the model has no reward or continuation head"}
    cols: dict[str, list[np.ndarray]] = {"reward": [], "rewards": [], "continue_prob": [], "continues": []}
    for b in batches:
        pred = model.predict_outcomes(b["x"], FrameActions.of(b["actions"], b.get("latent_actions")))
        for name, target in (("reward", "rewards"), ("continue_prob", "continues")):
            if name in pred and isinstance(b.get(target), Tensor):
                cols[name].append(pred[name].float().cpu().numpy().ravel())
                cols[target].append(b[target].float().cpu().numpy().ravel())
    arrays = {k: np.concatenate(v) if v else None for k, v in cols.items()}
    figures = outcome_metrics(
        arrays["reward"], arrays["rewards"], arrays["continue_prob"], arrays["continues"]
    )
    return {"status": "computed", "clips": len(batches), **figures}


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None, so that eval.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_null(v) for v in obj]
    return obj


def log_to_wandb(
    cfg: EvaluateConfig,
    out: Path,
    rows: list[dict[str, float]],
    action_rows: list[dict[str, float]],
    info: dict[str, Any],
) -> None:
    """The curve as ``compounding/*`` against ``HORIZON_KEY`` (a line plot per column; with an
    ensemble also ``DISAGREEMENT_KEY``), the table ``eval/compounding_error``, the figure and the
    rollout video (keys: vidworld.dashboard);
    when computed, the counterfactual columns as ``counterfactual/*`` against the same horizon,
    the table ``eval/counterfactual`` and ``eval/counterfactual_video``."""
    config = {"eval": json.loads(json.dumps(dataclasses.asdict(cfg))), "provenance": _finite_or_null(info)}
    run = open_run(cfg.wandb, out, cfg.wandb.name, job_type="eval", config=config)
    if run is None:
        return
    try:
        run.define_metric(HORIZON_KEY)
        run.define_metric(COMPOUNDING_PREFIX + "*", step_metric=HORIZON_KEY)
        run.define_metric(COUNTERFACTUAL_PREFIX + "*", step_metric=HORIZON_KEY)
        sens = {int(r["horizon"]): r["action_sensitivity_psnr"] for r in action_rows}
        latent = {int(r["horizon"]): r for r in info["latent_actions"]["rows"]}
        spread = {int(r["horizon"]): r["ensemble_disagreement"] for r in info["disagreement"]["rows"]}
        # The counterfactual horizon is at most the curve's (clamped to the branch files' future).
        cf_rows = info["counterfactual"]["rows"]
        cf = {int(r["horizon"]): r for r in cf_rows}
        for r in rows:
            h = int(r["horizon"])
            row = {HORIZON_KEY: h, **{COMPOUNDING_PREFIX + k: v for k, v in r.items() if k != "horizon"}}
            if h in sens:
                row[ACTION_KEY] = sens[h]
            if h in spread:
                row[DISAGREEMENT_KEY] = spread[h]
            row.update({COMPOUNDING_PREFIX + k: v for k, v in latent.get(h, {}).items() if k != "horizon"})
            row.update({COUNTERFACTUAL_PREFIX + k: v for k, v in cf.get(h, {}).items() if k != "horizon"})
            run.log({k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))})
        logged = {
            COMPOUNDING_TABLE_KEY: Table.of_rows(COMPOUNDING_COLUMNS, rows),
            FIGURE_KEY: out / COMPOUNDING_FIGURE,
            ROLLOUT_VIDEO_KEY: out / ROLLOUT_VIDEO,
        }
        if cf_rows:
            logged[COUNTERFACTUAL_TABLE_KEY] = Table.of_rows(COUNTERFACTUAL_COLUMNS, cf_rows)
            logged[COUNTERFACTUAL_VIDEO_KEY] = out / COUNTERFACTUAL_VIDEO
        run.log({k: wandb_media(v) for k, v in logged.items()})
    finally:
        run.finish()


def print_summary(cfg: EvaluateConfig, res: dict[str, Any]) -> int:
    """The table, the action sensitivity and counterfactual lines, the verdict and the output folder."""
    d = res["data"]
    print(
        f"compounding error: {d['clips']} {d['split']} clips at {d['resolution']}, step "
        f"{res['checkpoint_step']} (PSNR dB; latent MSE)"
    )
    print("  ".join(f"{c:>20}" for c in COMPOUNDING_COLUMNS))
    for r in res["rows"]:
        print("  ".join(f"{r[c]:>20.4g}" for c in COMPOUNDING_COLUMNS))
    for r in res["action_rows"]:
        print(f"action sensitivity at h={int(r['horizon'])}: {r['action_sensitivity_psnr']:+.3f} dB")
    for r in res["latent_actions"]["rows"]:
        sens = r.get("latent_sensitivity_psnr", float("nan"))
        print(
            f"latent actions at h={int(r['horizon'])}: {r['latent_action_psnr']:.2f} dB under the inferred "
            f"codes, sensitivity to shuffled codes {sens:+.3f} dB"
        )
    spread = res["disagreement"]
    for r in spread["rows"]:
        print(
            f"ensemble disagreement at h={int(r['horizon'])}: {r['ensemble_disagreement']:.4g} "
            f"({spread['members']} members; {spread['unit']})"
        )
    cf = res["counterfactual"]
    if cf["status"] == "computed":
        note = f" ({cf['note']})" if cf["note"] else ""
        print(f"counterfactual actions: {cf['branches']} branches at {cf['resolution']}{note}")
        for r in cf["rows"]:
            print(
                f"counterfactual at h={int(r['horizon'])}: factual {r['factual_psnr']:.2f} dB, "
                f"counterfactual {r['counterfactual_psnr']:.2f} dB "
                f"(latent MSE {r['counterfactual_latent_mse']:.4g}), "
                f"true A vs B {r['true_ab_psnr']:.2f} dB, "
                f"action response ratio {r['action_response_ratio']:.3f} "
                f"(through the tokenizer {r['action_response_ratio_recon']:.3f})"
            )
    elif cf["status"] != "off":
        print(f"counterfactual actions: {cf['status']}")
    print(f"verdict: {compounding_verdict(res['rows'])}\noutput: {cfg.output}", flush=True)
    return 0


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld evaluate jobs/evaluate.yaml checkpoint=RUN tokenizer=TOK shards=LATENTS clips=CURATED
    output=DIR``: prints the table and the output paths."""
    return stage_cli("evaluate", EvaluateConfig, evaluate, config_path, overrides, done=print_summary)
