"""The compounding-error evaluation of a dynamics model (/work/shared/EVALUATION.md): ``vidworld evaluate``.

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

Outputs (vidworld/report.py documents the folder): ``compounding_error.csv``,
``action_sensitivity.csv``, ``compounding_error.png``, ``rollout.mp4`` (the first clip,
truth | model), ``eval.json`` (provenance and verdict), and a W&B run (``wandb.mode``) with the
keys ``vidworld.dashboard`` reads: ``compounding/*`` against ``compounding/horizon``, the table
``eval/compounding_error``, ``eval/compounding_error_figure`` and ``eval/rollout_video``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.rollout import (
    SamplingConfig,
    WorldModel,
    clip_frames_by_key,
    side_by_side,
    source_frames,
    source_slice,
)
from pipeline.video import encode_mp4
from tokenizer.evaluate import iter_split, machine_name, select_samples, utc_now
from tokenizer.metrics import psnr
from vidworld.config import load_config
from vidworld.files import atomic_write_bytes, atomic_write_text
from vidworld.progress import Progress
from vidworld.report import COMPOUNDING_COLUMNS, compounding_verdict
from vidworld.tracking import WandbConfig

ACTION_COLUMNS = ("horizon", "action_sensitivity_psnr")


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
    device: str = "auto"
    fps: float = 15.0
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    wandb: WandbConfig = dataclasses.field(
        default_factory=lambda: WandbConfig(mode="offline", tags=["eval"], name="eval")
    )


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: (int(r[c]) if c == "horizon" else f"{r[c]:.6g}") for c in columns})
    atomic_write_text(path, buf.getvalue())


def verdict(rows: list[dict[str, float]]) -> dict[str, bool]:
    """EVALUATION.md's booleans: beats copy-last in pixels / in latents at every horizon, and
    whether the tokenizer is what loses (pixel copy-last above the recon ceiling somewhere)."""
    return {
        "model_beats_copy_last_recon_psnr": all(r["model_psnr"] > r["copy_last_recon_psnr"] for r in rows),
        "model_beats_copy_last_latent_mse": all(
            r["model_latent_mse"] < r["copy_last_latent_mse"] for r in rows
        ),
        "worth_something": all(
            r["model_psnr"] > r["copy_last_recon_psnr"] and r["model_latent_mse"] < r["copy_last_latent_mse"]
            for r in rows
        ),
        "tokenizer_limits": any(r["copy_last_psnr"] > r["recon_psnr"] for r in rows),
    }


def _sensitivity_status(done: bool, uses_actions: bool, wanted: bool) -> str:
    if done:
        return "computed"
    if not wanted:
        return "off"
    return "skipped: the model takes no actions" if not uses_actions else "skipped: fewer than 2 clips"


def plot_curve(rows: list[dict[str, float]], path: Path, title: str) -> None:
    """PSNR against horizon: model, copy-last (pixels and through the tokenizer), recon ceiling."""
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())


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
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """One clip's per-horizon figures (the CSV columns, and ``action_sensitivity_psnr`` when
    ``other_actions`` is given), each ``[horizon]``, and the model's decoded frames.

    ``x``: the clip's first ``context + horizon`` latent frames (model space, batch of one);
    ``actions`` ``[1, context + horizon, tau]`` or None; ``truth``: its uint8 source frames
    ``[1 + (context + horizon - 1) tau, H, W, 3]``. Both rollouts use the same noise.
    """
    c, tau = context, world.tau
    ctx = world.slice(x, 0, c)
    last = world.slice(ctx, c - 1, c)

    def roll(a: torch.Tensor | None) -> torch.Tensor:
        g = torch.Generator(device=world.device).manual_seed(noise_seed)
        return world.cat(ctx, world.rollout(ctx, a, horizon, g, sampling))

    seq_model = roll(actions)
    seqs = [seq_model, world.cat(ctx, *([last] * horizon)), x.to(seq_model.dtype)]
    if other_actions is not None and actions is not None:
        # Same context and context actions; only the rolled-out frames get the other clip's actions.
        seqs.append(
            roll(torch.cat([actions[:, :c], other_actions[:, c : c + horizon].to(actions.device)], 1))
        )
    # One decode for all: model, copy-last, truth (the recon ceiling), other-actions rollout.
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
    if len(seqs) == 4:
        out["action_sensitivity_psnr"] = np.zeros(horizon)
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
        if len(seqs) == 4:
            out["action_sensitivity_psnr"][k] = out["model_psnr"][k] - psnr(t, decoded[3][sl])
    return out, model_px


@torch.no_grad()
def evaluate(cfg: EvaluateConfig, world: WorldModel | None = None) -> dict[str, Any]:
    """Run the evaluation; returns the ``eval.json`` dict (with ``rows`` and ``action_rows``)."""
    if cfg.context < 1 or cfg.horizon < 1:
        raise ValueError(f"context={cfg.context}, horizon={cfg.horizon}: both must be >= 1 latent frames")
    world = world or WorldModel.load(cfg.checkpoint, cfg.tokenizer, cfg.device)
    tau, c, hz = world.tau, cfg.context, cfg.horizon
    need = c + hz
    field = "indices" if world.cfg.is_discrete else "latents"
    uses_actions = world.cfg.action_type != "none"
    require = [field] + (["actions"] if uses_actions else [])
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
    truth_by_key = clip_frames_by_key(cfg.clips, cfg.split, {s["key"] for s in chosen})
    prepared = []
    for s in chosen:
        x, actions = world.prepare(s)
        prepared.append((world.slice(x, 0, need), None if actions is None else actions[:, :need]))
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
        scores, model_px = score_clip(
            world, x, actions, other, truth, c, hz, cfg.seed * 1_000_003 + j, cfg.sampling, s["key"]
        )
        for col, v in scores.items():
            sums[col] = sums.get(col, 0.0) + v
        if video is None:
            video = side_by_side(truth.numpy(), model_px.numpy(), source_frames(c, tau))
        progress.update(1)
    progress.close()
    n = len(chosen)
    sens = sums.pop("action_sensitivity_psnr", None)
    rows = [{"horizon": float(k + 1), **{col: float(v[k] / n) for col, v in sums.items()}} for k in range(hz)]
    action_rows = []
    if sens is not None:
        action_rows = [
            {"horizon": float(k + 1), "action_sensitivity_psnr": float(sens[k] / n)} for k in range(hz)
        ]
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "compounding_error.csv", COMPOUNDING_COLUMNS, rows)
    sens_path = out / "action_sensitivity.csv"
    if action_rows:
        _write_csv(sens_path, ACTION_COLUMNS, action_rows)
    elif sens_path.exists():
        sens_path.unlink()  # a stale file from an earlier run would be read as this run's
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
        "head": world.cfg.head,
        "tokenizer": world.tokenizer_path,
        "machine": machine_name(),
        "date": utc_now(),
        "action_sensitivity": _sensitivity_status(bool(action_rows), uses_actions, cfg.action_sensitivity),
        "verdict": verdict(rows),
    }
    title = (
        f"{n} {cfg.split} clips at {resolution}, step {world.step}, context {c} latent frames\n"
        f"{Path(world.checkpoint).name or 'model'} | tokenizer {Path(world.tokenizer_path).name} | "
        f"{info['machine']} | {info['date'][:10]}"
    )
    plot_curve(rows, out / "compounding_error.png", title)
    assert video is not None
    atomic_write_bytes(out / "rollout.mp4", encode_mp4(video, fps=cfg.fps))
    atomic_write_text(out / "eval.json", json.dumps(info, indent=2))
    log_to_wandb(cfg, out, rows, action_rows, info)
    return {**info, "rows": rows, "action_rows": action_rows}


def log_to_wandb(
    cfg: EvaluateConfig,
    out: Path,
    rows: list[dict[str, float]],
    action_rows: list[dict[str, float]],
    info: dict[str, Any],
) -> None:
    """The curve as ``compounding/*`` against ``compounding/horizon`` (a line plot per column), the
    table ``eval/compounding_error``, the figure and the rollout video (keys: vidworld.dashboard)."""
    if cfg.wandb.mode == "disabled":
        return
    import wandb  # only when logging: it is slow to import

    from vidworld.dashboard import ACTION_KEY, HORIZON_KEY

    mode = cfg.wandb.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        print(
            "wandb: WANDB_API_KEY is not set; logging offline (sync later with `wandb sync`)", file=sys.stderr
        )
        mode = "offline"
    run = wandb.init(
        project=cfg.wandb.project,
        entity=cfg.wandb.entity,
        group=cfg.wandb.group,
        name=cfg.wandb.name,
        tags=list(cfg.wandb.tags),
        job_type="eval",
        mode=mode,
        dir=str(out),
        config={"eval": json.loads(json.dumps(dataclasses.asdict(cfg))), "provenance": info},
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        run.define_metric(HORIZON_KEY)
        run.define_metric("compounding/*", step_metric=HORIZON_KEY)
        sens = {int(r["horizon"]): r["action_sensitivity_psnr"] for r in action_rows}
        for r in rows:
            h = int(r["horizon"])
            row = {HORIZON_KEY: h, **{f"compounding/{k}": v for k, v in r.items() if k != "horizon"}}
            if h in sens:
                row[ACTION_KEY] = sens[h]
            run.log({k: v for k, v in row.items() if not (isinstance(v, float) and not math.isfinite(v))})
        table = wandb.Table(
            columns=list(COMPOUNDING_COLUMNS), data=[[r[c] for c in COMPOUNDING_COLUMNS] for r in rows]
        )
        run.log(
            {
                "eval/compounding_error": table,
                "eval/compounding_error_figure": wandb.Image(str(out / "compounding_error.png")),
                "eval/rollout_video": wandb.Video(str(out / "rollout.mp4"), format="mp4"),
            }
        )
    finally:
        run.finish()


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld evaluate jobs/evaluate.yaml checkpoint=RUN tokenizer=TOK shards=LATENTS clips=CURATED
    output=DIR``: prints the table and the output paths."""
    cfg = load_config(EvaluateConfig, config_path, overrides)
    try:
        res = evaluate(cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"vidworld evaluate: {e}", file=sys.stderr)
        return 1
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
    print(f"verdict: {compounding_verdict(res['rows'])}\noutput: {cfg.output}", flush=True)
    return 0
