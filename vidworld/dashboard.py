"""The W&B dashboard of a pipeline run, defined in code: ``vidworld dashboard GROUP entity=... project=...``.

A pipeline run (``vidworld run``) is one W&B *group*: the tokenizer and the dynamics training runs
(named after their run folders, ``tokenizer`` and ``dynamics``) and one ``report`` run that
``publish`` fills from the output folder (data statistics, reconstruction and rollout videos,
the compounding-error curve). The dashboard is a saved W&B workspace view filtered to that group.

The panels are data (``dashboard_spec``), so a test checks the metric keys they reference without
network; ``build_workspace`` turns them into ``wandb_workspaces`` objects (the optional extra
``pip install vidworld[dashboard]``). Every key the dashboard reads is listed below, in one place:

- ``RUNTIME_TRAIN_KEYS``: what the shared runtime (runtime/train.py) logs for every model, against
  ``train/step`` (runtime/tracking.py). A task's own loss terms (``train/rec``, ``train/kl``...)
  are logged too and drawn by one regex panel (``TASK_TERMS_REGEX``), so a new term needs no edit.
- ``PUBLISHED_KEYS``: what ``publish`` logs from the output folder (``vidworld.layout``), the
  report's headline figures (``headline/*``, ``vidworld.report.HEADLINE_SCALARS``) included. The
  evaluation's keys among them (``compounding/*`` against ``HORIZON_KEY``, its table, figure and
  rollout video) are ``dynamics.evaluate``'s, the stage that logs them first.

Without ``WANDB_API_KEY`` nothing can be saved to W&B; the local report (``vidworld report DIR``,
``DIR/report.html``) shows the same figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from dynamics.evaluate import (
    ACTION_CSV,
    ACTION_KEY,
    COMPOUNDING_CSV,
    COMPOUNDING_FIGURE,
    COMPOUNDING_KEYS,
    COMPOUNDING_PREFIX,
    COMPOUNDING_TABLE_KEY,
    DISAGREEMENT_CSV,
    DISAGREEMENT_KEY,
    FIGURE_KEY,
    HORIZON_KEY,
    LATENT_CSV,
    LATENT_KEYS,
    ROLLOUT_VIDEO,
    ROLLOUT_VIDEO_KEY,
)
from dynamics.lam_eval import METRICS as LAM_METRICS
from dynamics.verdict import COMPOUNDING_COLUMNS
from runtime.config import ConfigError, load_config, load_yaml
from runtime.tracking import Table, WandbConfig, open_run, wandb_media
from tokenizer.evaluate import METRICS_FILE, RECON_VIDEO
from vidworld.layout import OutputLayout
from vidworld.report import (
    HEADLINE_SCALARS,
    headline_scalars,
    read_csv_rows,
    read_headline,
    read_jsonl,
)

STEP_KEY = "train/step"
RUNTIME_TRAIN_KEYS = (
    "train/loss",
    "train/lr",
    "train/grad_norm",
    "train/skipped_steps",
    "train/nonfinite_step",
    "train/peak_mem_gib",
    "train/step_time_s",
    "train/samples_per_s",
    "train/tokens_per_s",
    "train/mfu",  # fraction 0..1 of the machine's peak FLOP/s
)
# Every train/* key that is not the runtime's: the task's loss terms. W&B reads it as a JS regex.
WARNINGS_REGEX = "^warn/.+$"  # the runtime's loud checks (runtime.health): 1 at the step they fire
TASK_TERMS_REGEX = (
    "^train/(?!(" + "|".join(re.escape(k[6:]) for k in (STEP_KEY, *RUNTIME_TRAIN_KEYS)) + ")$).+$"
)

# The evaluation's keys (HORIZON_KEY, COMPOUNDING_KEYS, ACTION_KEY, the eval/ media and table) are
# dynamics.evaluate's, which logs them too; the others below are publish's own.
EVAL_SCALAR_KEYS = ("eval/recon_psnr", "eval/recon_ssim")  # dB; 0..1; held-out clips
# The latent action model's codes against the true movement class, all held-out Atari games pooled
# (lam/eval/metrics.json "overall"; per game in the report): NMI, and a probe's balanced accuracy.
LAM_FIGURES = ("nmi", "nmi_shuffled", "probe_balanced_accuracy", "shuffled_probe_balanced_accuracy")
LAM_SCALAR_KEYS = tuple(f"lam/{k}" for k in LAM_FIGURES)
RECON_VIDEO_KEY = "eval/recon_video"
MEDIA_KEYS = (RECON_VIDEO_KEY, ROLLOUT_VIDEO_KEY, FIGURE_KEY)
TABLE_KEYS = (COMPOUNDING_TABLE_KEY, "data/clips_filtered", "data/inputs_not_ok")
# What report.html opens with, as numbers (1/0 for the yes/no ones); units in vidworld/report.py.
HEADLINE_KEYS = tuple(f"headline/{n}" for n in HEADLINE_SCALARS)
DATA_SCALAR_KEYS = (
    "data/inputs",
    "data/inputs_ok",
    "data/inputs_skipped",
    "data/inputs_failed",
    "data/clips",
    "data/shards",
    "data/source_seconds",
    "data/clip_seconds",
)
PUBLISHED_KEYS = (
    HEADLINE_KEYS
    + (HORIZON_KEY, *COMPOUNDING_KEYS, ACTION_KEY, *LATENT_KEYS, DISAGREEMENT_KEY)
    + EVAL_SCALAR_KEYS
    + LAM_SCALAR_KEYS
    + MEDIA_KEYS
    + TABLE_KEYS
    + DATA_SCALAR_KEYS
)


@dataclasses.dataclass(frozen=True)
class PanelSpec:
    """One panel. ``kind``: line (``keys`` against ``x``), scalar (last value per run), media, table."""

    kind: str
    title: str
    keys: tuple[str, ...] = ()
    x: str = STEP_KEY
    log_y: bool = False
    regex: str | None = None  # line plots only: draw every key matching it instead of ``keys``


@dataclasses.dataclass(frozen=True)
class SectionSpec:
    name: str
    panels: tuple[PanelSpec, ...]


def dashboard_spec() -> tuple[SectionSpec, ...]:
    """The dashboard as data, top to bottom. Lines are one per run (tokenizer, dynamics) of the group."""
    line = lambda title, *keys, **kw: PanelSpec("line", title, tuple(keys), **kw)
    return (
        SectionSpec(
            "Headline (the report's verdict)",
            tuple(PanelSpec("scalar", k.split("/", 1)[1].replace("_", " "), (k,)) for k in HEADLINE_KEYS),
        ),
        SectionSpec(
            "Training (one line per stage)",
            (
                line("loss", "train/loss", log_y=True),
                line("learning rate", "train/lr"),
                line("gradient norm (before clipping)", "train/grad_norm", log_y=True),
                line("throughput (samples/s)", "train/samples_per_s"),
                line("throughput (tokens/s)", "train/tokens_per_s"),
                line("MFU (fraction of peak FLOP/s)", "train/mfu"),
                line("step time (s)", "train/step_time_s"),
                line("peak accelerator memory (GiB)", "train/peak_mem_gib"),
                line("skipped non-finite steps", "train/skipped_steps", "train/nonfinite_step"),
                PanelSpec("line", "the task's loss terms", regex=TASK_TERMS_REGEX),
                PanelSpec("line", "warnings: flat loss, throughput drop, ranks differ", regex=WARNINGS_REGEX),
            ),
        ),
        SectionSpec(
            "Tokenizer reconstruction (held-out clips)",
            (
                PanelSpec("scalar", "recon PSNR (dB)", ("eval/recon_psnr",)),
                PanelSpec("scalar", "recon SSIM", ("eval/recon_ssim",)),
                PanelSpec("media", "original | reconstruction", (RECON_VIDEO_KEY,)),
            ),
        ),
        SectionSpec(
            "Dynamics: imagined vs real, compounding error",
            (
                PanelSpec("media", "rollout: imagined beside the truth", (ROLLOUT_VIDEO_KEY,)),
                line(
                    "PSNR against horizon (dB)",
                    "compounding/model_psnr",
                    "compounding/copy_last_psnr",
                    "compounding/copy_last_recon_psnr",
                    "compounding/recon_psnr",
                    x=HORIZON_KEY,
                ),
                line(
                    "latent MSE against horizon",
                    "compounding/model_latent_mse",
                    "compounding/copy_last_latent_mse",
                    x=HORIZON_KEY,
                    log_y=True,
                ),
                line("action sensitivity (dB) against horizon", ACTION_KEY, x=HORIZON_KEY),
                line("under latent actions (dB) against horizon", *LATENT_KEYS, x=HORIZON_KEY),
                line("ensemble disagreement against horizon", DISAGREEMENT_KEY, x=HORIZON_KEY),
                PanelSpec("table", "compounding error", (COMPOUNDING_TABLE_KEY,)),
                PanelSpec("media", "compounding error figure", (FIGURE_KEY,)),
            ),
        ),
        SectionSpec(
            "Latent actions (held-out Atari, codes against the true movement)",
            tuple(PanelSpec("scalar", k.split("/", 1)[1].replace("_", " "), (k,)) for k in LAM_SCALAR_KEYS),
        ),
        SectionSpec(
            "Data",
            tuple(PanelSpec("scalar", k.split("/", 1)[1].replace("_", " "), (k,)) for k in DATA_SCALAR_KEYS)
            + (
                PanelSpec("table", "clips dropped per filter", ("data/clips_filtered",)),
                PanelSpec("table", "inputs skipped or failed", ("data/inputs_not_ok",)),
            ),
        ),
    )


def referenced_keys(spec: tuple[SectionSpec, ...]) -> set[str]:
    """Every metric key the panels read (x axes included; regex panels excluded)."""
    out: set[str] = set()
    for section in spec:
        for p in section.panels:
            out.update(p.keys)
            if p.kind == "line":
                out.add(p.x)
    return out


def build_workspace(spec: tuple[SectionSpec, ...], entity: str, project: str, group: str, name: str = ""):
    """The ``wandb_workspaces.workspaces.Workspace`` of ``spec``, its runs filtered to W&B group ``group``."""
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as e:
        raise SystemExit(
            "vidworld dashboard needs wandb-workspaces: pip install 'vidworld[dashboard]' "
            "(or pip install wandb-workspaces)"
        ) from e

    def panel(p: PanelSpec):
        if p.kind == "line":
            return wr.LinePlot(
                title=p.title,
                x=p.x,
                y=list(p.keys),
                metric_regex=p.regex,
                log_y=p.log_y or None,
                smoothing_type="none",
            )
        if p.kind == "scalar":
            return wr.ScalarChart(title=p.title, metric=p.keys[0])
        if p.kind == "media":
            return wr.MediaBrowser(title=p.title, media_keys=list(p.keys), gallery_axis="step")
        if p.kind == "table":
            return wr.WeavePanelSummaryTable(table_name=p.keys[0])
        raise ValueError(f"panel {p.title!r}: unknown kind {p.kind!r} (line, scalar, media, table)")

    return ws.Workspace(
        entity=entity,
        project=project,
        name=name or f"vidworld {group}",
        sections=[ws.Section(name=s.name, panels=[panel(p) for p in s.panels], is_open=True) for s in spec],
        settings=ws.WorkspaceSettings(x_axis=STEP_KEY),
        runset_settings=ws.RunsetSettings(filters=ws.And(ws.Metric("Group") == group)),
    )


# ---------------------------------------------------------------------------------------------------
# What `publish` logs from an output folder


def published_metrics(output_dir: str | Path) -> dict[str, Any]:
    """The output folder as ``{key: value}``: floats, file paths (``Path``, media) and tables
    (``{"columns": [...], "data": [[...]]}``); per-horizon curves under ``HORIZON_KEY`` as a list of
    row dicts. Missing files are left out. Keys are those of ``PUBLISHED_KEYS``."""
    root = Path(output_dir)
    layout = OutputLayout.of(root)
    out: dict[str, Any] = {}
    stats_path = layout.curated / "stats.json"
    if stats_path.is_file():
        s = json.loads(stats_path.read_text())
        for k in ("inputs", "clips", "shards", "source_seconds", "clip_seconds"):
            if k in s:
                out[f"data/{k}"] = float(s[k])
        for status, n in (s.get("inputs_by_status") or {}).items():
            if f"data/inputs_{status}" in DATA_SCALAR_KEYS:
                out[f"data/inputs_{status}"] = float(n)
        out["data/clips_filtered"] = {
            "columns": ["reason", "clips"],
            "data": [[r, int(n)] for r, n in (s.get("clips_filtered") or {}).items()],
        }
    manifest = layout.curated / "manifest.jsonl"
    if manifest.is_file():
        rows = read_jsonl(manifest)
        out["data/inputs_not_ok"] = {
            "columns": ["source", "status", "reason"],
            "data": [[r["source"], r["status"], r.get("reason", "")] for r in rows if r["status"] != "ok"],
        }
    tok = layout.tokenizer_eval / METRICS_FILE
    if tok.is_file():
        m = json.loads(tok.read_text())
        for k in ("recon_psnr", "recon_ssim"):
            if k in m:
                out[f"eval/{k}"] = float(m[k])
    for key, path in (
        (RECON_VIDEO_KEY, layout.tokenizer_eval / RECON_VIDEO),
        (ROLLOUT_VIDEO_KEY, layout.eval / ROLLOUT_VIDEO),
        (FIGURE_KEY, layout.eval / COMPOUNDING_FIGURE),
    ):
        if path.is_file():
            out[key] = path
    curve: dict[int, dict[str, float]] = {}
    lam = layout.lam_eval / LAM_METRICS
    if lam.is_file():
        overall = json.loads(lam.read_text()).get("overall") or {}
        out.update({f"lam/{k}": float(overall[k]) for k in LAM_FIGURES if overall.get(k) is not None})
    for csv_name in (COMPOUNDING_CSV, ACTION_CSV, LATENT_CSV, DISAGREEMENT_CSV):
        path = layout.eval / csv_name
        if path.is_file():
            rows = read_csv_rows(path)
            if csv_name == COMPOUNDING_CSV:
                cols = list(rows[0]) if rows else list(COMPOUNDING_COLUMNS)
                out[COMPOUNDING_TABLE_KEY] = {
                    "columns": cols,
                    "data": [[r[c] for c in cols] for r in rows],
                }
            for r in rows:
                h = int(r["horizon"])
                curve.setdefault(h, {HORIZON_KEY: float(h)}).update(
                    {COMPOUNDING_PREFIX + c: v for c, v in r.items() if c != "horizon" and math.isfinite(v)}
                )
    if curve:
        out[HORIZON_KEY] = [curve[h] for h in sorted(curve)]
    out.update({f"headline/{k}": v for k, v in headline_scalars(read_headline(root)).items()})
    return out


def publish(output_dir: str | Path, cfg: WandbConfig, run_name: str = "report") -> None:
    """Log ``published_metrics(output_dir)`` to a W&B run ``run_name`` of group ``cfg.group``.

    ``cfg.mode`` as in training (online | offline | disabled); offline runs write under
    ``DIR/wandb`` for a later ``wandb sync``.
    """
    run = open_run(cfg, output_dir, run_name, job_type="report")
    if run is None:
        return
    m = published_metrics(output_dir)
    try:
        run.define_metric(HORIZON_KEY)
        run.define_metric(COMPOUNDING_PREFIX + "*", step_metric=HORIZON_KEY)
        for row in m.pop(HORIZON_KEY, []):
            run.log(row)
        summary: dict[str, Any] = {}
        for k, v in m.items():
            if isinstance(v, Path):
                summary[k] = wandb_media(v)
            elif isinstance(v, dict):
                summary[k] = wandb_media(Table(v["columns"], v["data"]))
            else:
                summary[k] = v
        run.log(summary)
    finally:
        run.finish()


# ---------------------------------------------------------------------------------------------------
# Entry


@dataclasses.dataclass
class DashboardConfig:
    """``vidworld dashboard GROUP|CONFIG key=value``: where the dashboard goes."""

    entity: str | None = None  # W&B entity (user or team); default: the API key's default entity
    project: str = "vidworld"
    group: str | None = None  # the pipeline run's W&B group
    name: str = ""  # the workspace view's name; default "vidworld GROUP"
    output: str | None = None  # the pipeline output folder: also publish its figures (``publish``)


def load_dashboard_config(config_or_group: str, overrides: list[str]) -> DashboardConfig:
    """A YAML file gives ``wandb.{entity,project,group}`` and ``output``; any other string is the group."""
    base: list[str] = []
    if config_or_group.endswith((".yaml", ".yml")):
        y = load_yaml(config_or_group)
        w = y.get("wandb") or {}
        base += [f"{k}={w[k]}" for k in ("entity", "project", "group") if w.get(k) is not None]
        if y.get("output") is not None:
            base.append(f"output={y['output']}")
    else:
        base.append(f"group={config_or_group}")
    cfg = load_config(DashboardConfig, None, base + list(overrides))
    if not cfg.group:
        raise ConfigError(
            f"{config_or_group}: no W&B group; pass the pipeline run's group "
            "(vidworld dashboard GROUP) or group=..."
        )
    return cfg


def cli(config_or_group: str, overrides: list[str]) -> int:
    cfg = load_dashboard_config(config_or_group, overrides)
    if not os.environ.get("WANDB_API_KEY"):
        where = f"{cfg.output}/report.html" if cfg.output else "DIR/report.html"
        print(
            "vidworld dashboard: saving a W&B dashboard needs a W&B API key (set WANDB_API_KEY, e.g. from "
            f"https://wandb.ai/authorize). Without W&B, the local report is {where} "
            f"(write it with `vidworld report {cfg.output or 'DIR'}`).",
            file=sys.stderr,
        )
        return 2
    import wandb

    entity = cfg.entity or wandb.Api().default_entity
    if cfg.output:
        publish(cfg.output, WandbConfig(mode="online", project=cfg.project, group=cfg.group, entity=entity))
    workspace = build_workspace(dashboard_spec(), entity, cfg.project, cfg.group, cfg.name).save()
    print(f"dashboard: {workspace.url}")
    return 0
