"""The local HTML report of one pipeline run: ``vidworld report DIR`` writes ``DIR/report.html``.

For users without W&B. One self-contained file (videos and images embedded as base64 data URIs,
charts as inline SVG, CSS inline; no script, nothing fetched from elsewhere) that puts the answer
first and reads top to bottom:

1. the verdict: one sentence in words, then the headline figures (the tokenizer's held-out
   reconstruction against its target, whether the dynamics model beats copying the last frame at
   every horizon and by how much at the worst one, action sensitivity at the first and the last
   horizon, the counterfactual response at the last horizon, how long each model trained), and
   the list of files not in the folder yet;
2. the videos, scaled up with nearest-neighbour pixels: the rollout (truth | model), the
   tokenizer's reconstruction (original | reconstruction), the counterfactual rollout (true A |
   model A | true B | model B);
3. the compounding-error curve against copying the last frame (docs/evaluation.md), with
   the verdicts in full;
4. the raw tables, folded (``<details>``): the CSVs, the tokenizer's metrics, training curves and
   configs, curation totals and inputs, latents, the chain's configs, provenance.

Any piece may be missing (a stage not run yet): the report shows what exists, names each missing
file where it would be, and lists them all under the verdict. A measurement that was not made
(action sensitivity without actions, counterfactuals without simulator data) says "not measured"
with the reason eval.json records. ``headline_scalars`` hands the same headline figures to the
W&B ``report`` run (vidworld/dashboard.py).

The output folder of ``vidworld run`` (this docstring is the one place it is written down)::

    DIR/configs/STAGE.yaml          each stage's resolved config, and pipeline.yaml (vidworld/pipeline_run.py)
    DIR/curated/manifest.jsonl      one row per input: source, status (ok|skipped|failed), reason,
                                    clips, filtered, probe, split (pipeline/manifest.py)
    DIR/curated/stats.json          totals: inputs by status, clips, clips per filter reason,
                                    durations, resolutions, clips per split (pipeline/manifest.py)
    DIR/curated/shards/*.tar        WebDataset clip shards (pipeline/shards.py)
    DIR/tokenizer/                  training run folder of the tokenizer (runtime/train.py):
                                    config.yaml, metrics.jsonl (runtime/tracking.py), checkpoints/
    DIR/tokenizer/eval/recon.mp4    side by side: original | reconstruction (held-out clips)
    DIR/tokenizer/eval/metrics.json {"recon_psnr": dB, "recon_ssim": 0..1, "resolution": "64x64",
                                     "clips": int, ...} (tokenizer/evaluate.py)
    DIR/latents/                    tokenized latent shards (+ manifest.jsonl / stats.json)
    DIR/lam/                        training run folder of the latent action model (as DIR/tokenizer/)
    DIR/lam/eval/metrics.json       its codes against the true actions on held-out clips: per game
                                    and "overall", NMI and a linear probe's (balanced) accuracy to the
                                    movement class, each with its shuffled baseline, and the code x
                                    class table (dynamics/lam_eval.py, dynamics/action_probe.py)
    DIR/dynamics/                   training run folder of the dynamics model (as DIR/tokenizer/)
    DIR/eval/compounding_error.csv  horizon, model_psnr, copy_last_psnr, copy_last_recon_psnr,
                                    recon_psnr (dB), model_latent_mse, copy_last_latent_mse
    DIR/eval/action_sensitivity.csv horizon, action_sensitivity_psnr (dB); absent without actions
    DIR/eval/latent_actions.csv     horizon, latent_action_psnr, latent_sensitivity_psnr (dB): rollouts
                                    under the inferred latent codes and the gain over another clip's;
                                    absent without a latent action model
    DIR/eval/disagreement.csv       horizon, ensemble_disagreement: how much the dynamics model's
                                    ensemble members disagree on each imagined frame (latent
                                    variance, or JS divergence in nats for FSQ indices); absent for a
                                    one-head model (model.ensemble=1)
    DIR/eval/counterfactual.csv     horizon, factual_psnr, counterfactual_psnr (dB),
                                    counterfactual_latent_mse, true_ab_psnr (dB),
                                    action_response_ratio, action_response_ratio_recon
                                    (EVALUATION.md "Counterfactual actions"); absent unless the
                                    clips carry a second action branch (simulator data)
    DIR/eval/counterfactual.mp4     the first branch: truth A | model A | truth B | model B; absent
                                    as the CSV
    DIR/eval/compounding_error.png  the curve
    DIR/eval/rollout.mp4            truth | model: imagined frames beside the truth
    DIR/eval/eval.json              provenance of the figures: data (shards, clips, resolution),
                                    checkpoint step, tokenizer, machine, date; "verdict" (booleans);
                                    "action_sensitivity": status; "counterfactual": {"status",
                                    "branches", "files", "resolution", "resize",
                                    "horizon_latent_frames", "note", "rows" (the CSV's), "games":
                                    {game: rows}}; a status is "computed" | "off" | "skipped: why",
                                    NaN is null (dynamics/evaluate.py)
    DIR/report.html                 this module's output
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamics.evaluate import (
    ACTION_COLUMNS,
    ACTION_CSV,
    COMPOUNDING_CSV,
    COMPOUNDING_FIGURE,
    COUNTERFACTUAL_CSV,
    COUNTERFACTUAL_VIDEO,
    DISAGREEMENT_COLUMNS,
    DISAGREEMENT_CSV,
    EVAL_JSON,
    LATENT_COLUMNS,
    LATENT_CSV,
    ROLLOUT_VIDEO,
)
from dynamics.lam_eval import METRICS as LAM_METRICS
from dynamics.verdict import (
    COMPOUNDING_COLUMNS,
    COUNTERFACTUAL_COLUMNS,
    CompoundingJudgement,
    compounding_verdict,
    judge_compounding,
)
from pipeline.probe import BadInput, probe
from runtime.files import atomic_write_text
from runtime.progress import format_duration
from runtime.tracking import read_metrics
from tokenizer.evaluate import METRICS_FILE, RECON_VIDEO
from vidworld.layout import OutputLayout

# Media above this size is linked (relative to DIR) instead of embedded, so a long rollout does
# not make a report that a browser struggles to open. Eval media are a few hundred kB.
MAX_EMBED_BYTES = 64 * 2**20

# The project's targets for the tokenizer: held-out reconstruction PSNR on Atari at 64x64, and on
# photographs (the source folders tokenizer/evaluate.py groups its figures by).
TOKENIZER_TARGET_PSNR = 32.0  # dB
TOKENIZER_TARGET_RESOLUTION = "64x64"
NATURAL_TARGET_PSNR = 28.0  # dB
ATARI_GROUPS = ("breakout", "pong")
NATURAL_GROUPS = ("natural",)


def group_psnr(metrics: dict[str, Any] | None, groups: tuple[str, ...]) -> float | None:
    """Clip-weighted mean ``recon_psnr`` of the named ``by_group`` entries of a tokenizer's
    ``metrics.json`` (None when it has none of them)."""
    chosen = [v for g, v in ((metrics or {}).get("by_group") or {}).items() if g in groups]
    n = sum(v["clips"] for v in chosen)
    return sum(v["recon_psnr"] * v["clips"] for v in chosen) / n if n else None


def tokenizer_headline_psnr(metrics: dict[str, Any] | None) -> float | None:
    """The figure held against ``TOKENIZER_TARGET_PSNR``: Atari clips when the evaluation has them
    apart, else the mean over every held-out clip."""
    atari = group_psnr(metrics, ATARI_GROUPS)
    return atari if atari is not None else _num(metrics, "recon_psnr")


# Videos are shown enlarged by a whole factor (crisp nearest-neighbour pixels): about this high
# (6x a 64-pixel clip), no wider than the page, at most VIDEO_MAX_SCALE times.
VIDEO_HEIGHT_PX = 384
VIDEO_MAX_WIDTH_PX = 1024
VIDEO_MAX_SCALE = 8

# The headline figures as numbers (``headline_scalars``), in the order the report shows them.
HEADLINE_SCALARS = (
    "tokenizer_psnr",  # dB, held-out Atari clips (all held-out clips when not grouped)
    "tokenizer_natural_psnr",  # dB, held-out photographs (target NATURAL_TARGET_PSNR)
    "tokenizer_ssim",  # 0..1
    "tokenizer_meets_target",  # 1 when tokenizer_psnr >= TOKENIZER_TARGET_PSNR
    "beats_copy_last",  # 1 when the model beats copy-last at every horizon (EVALUATION.md)
    "worst_margin_db",  # min over horizons of model_psnr - copy_last_recon_psnr
    "worst_latent_mse_ratio",  # max over horizons of model_latent_mse / copy_last_latent_mse
    "action_sensitivity_first",  # dB, first horizon
    "action_sensitivity_last",  # dB, last horizon
    "action_response_ratio_last",  # last horizon; 1: reacts to other actions as the game does
    "counterfactual_psnr_last",  # dB, last horizon
)
MANIFEST_ROWS_SHOWN = 200  # inputs listed one by one (failed and skipped first); the rest are counted

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.2em auto;padding:0 1em;color:#222;
line-height:1.35}
h1{font-size:1.45em;margin:0 0 .1em}h2{margin-top:1.6em;border-bottom:1px solid #ccc;font-size:1.25em}
.sub{color:#666;font-size:.85em;margin:0 0 .8em}
.verdict{border-left:6px solid #999;background:#f5f5f5;padding:.7em 1em .6em;margin:0 0 1em}
.verdict.good{border-color:#2a8a2a}.verdict.bad{border-color:#c0392b}
.verdict .say{font-size:1.15em;font-weight:600;margin:0 0 .6em}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(190px,1fr));gap:.5em}
.fig{background:#fff;border:1px solid #ddd;border-radius:4px;padding:.4em .6em}
.fig .k{font-size:.75em;color:#555;text-transform:uppercase;letter-spacing:.03em}
.fig .v{font-size:1.3em;font-weight:650}.fig .v small{font-size:.6em;font-weight:600;color:#555}
.fig .v.sm{font-size:1.05em;line-height:1.5}.fig .m{font-size:.85em;font-weight:600}
.fig .d{font-size:.8em;color:#444}
.pass{color:#2a8a2a}.miss{color:#c0392b}.na{color:#777}
.verdict .prov,.verdict .missing{font-size:.8em;margin:.5em 0 0}
.videos{display:flex;flex-wrap:wrap;gap:1em}.videos figure{margin:0}
video.big{image-rendering:crisp-edges;image-rendering:pixelated;max-width:100%;height:auto;
background:#000;display:block}
figcaption{font-size:.9em;color:#333;max-width:768px;margin-bottom:.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}.missing{color:#a40}
.says{padding:.4em 1em;background:#f7f7f7;border-left:4px solid #888}
img.fig{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow-x:auto}
details{margin:.3em 0;border:1px solid #ddd;border-radius:4px;padding:.2em .6em}
summary{cursor:pointer;font-weight:600}details[open]{padding-bottom:.6em}
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """A cell: floats to 4 significant digits, everything else as text."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


@dataclass
class Report:
    """Sections of HTML being assembled, and the files found missing (relative to DIR)."""

    root: Path
    parts: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def add(self, html_text: str) -> None:
        self.parts.append(html_text)

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout.of(self.root)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def note_missing(self, path: Path, why: str) -> None:
        if self.rel(path) not in self.missing:
            self.missing.append(self.rel(path))
        self.add(f'<p class="missing">Missing: <code>{esc(self.rel(path))}</code> ({esc(why)}).</p>')

    def fold(self, title: str, fill: Callable[[], None]) -> None:
        """What ``fill`` adds, inside a closed ``<details>`` titled ``title`` (marked when missing)."""
        outer, missing_before = self.parts, len(self.missing)
        self.parts = []
        try:
            fill()
        finally:
            inner, self.parts = self.parts, outer
        flag = ' <span class="missing">(missing)</span>' if len(self.missing) > missing_before else ""
        self.add(f"<details><summary>{esc(title)}{flag}</summary>{''.join(inner)}</details>")


# ---------------------------------------------------------------------------------------------------
# Reading the files


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); rerun the stage that writes it") from e


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a bad line fails naming the file and line (the stage that wrote it should rerun)."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path} line {i} is not valid JSON ({e}); rerun the stage that writes it"
                ) from e
    return rows


def read_csv_rows(path: Path) -> list[dict[str, float]]:
    """Rows of a numeric CSV with a header; empty cells read as NaN."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            out.append({k: float(v) if v not in ("", None) else math.nan for k, v in row.items()})
        except ValueError as e:
            raise ValueError(f"{path} line {i}: a value is not a number ({e}); rewrite the file") from e
    return out


def read_eval_json(root: Path) -> dict[str, Any] | None:
    """``DIR/eval/eval.json`` as a dict, or ``None`` when absent."""
    path = OutputLayout.of(root).eval / EVAL_JSON
    if not path.is_file():
        return None
    info = read_json(path)
    if not isinstance(info, dict):
        raise ValueError(f"{path} holds {type(info).__name__}, not an object; rerun vidworld evaluate")
    return info


# ---------------------------------------------------------------------------------------------------
# HTML pieces


def table(rows: list[list[Any]], header: list[str] | None = None) -> str:
    """An HTML table; numbers right-aligned, text left-aligned."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = (
            f'<td class="{"n" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""}">'
            f"{esc(fmt(v))}</td>"
            for v in row
        )
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "".join(out)


def dict_tables(d: dict[str, Any], title: str) -> str:
    """Scalars of ``d`` in one key/value table; each nested dict in its own table, generically."""
    scalars = [[k, v] for k, v in d.items() if not isinstance(v, (dict, list))]
    out = [f"<h3>{esc(title)}</h3>", table(scalars, ["key", "value"])] if scalars else []
    for k, v in d.items():
        if isinstance(v, dict):
            flat = [[kk, json.dumps(vv) if isinstance(vv, (dict, list)) else vv] for kk, vv in v.items()]
            out.append(f"<h3>{esc(k)}</h3>" + (table(flat, ["key", "value"]) if flat else "<p>(none)</p>"))
        elif isinstance(v, list):
            out.append(f"<h3>{esc(k)}</h3><p>{esc(', '.join(map(str, v))) or '(none)'}</p>")
    return "".join(out)


def rows_table(rows: list[dict[str, float]], first: tuple[str, ...]) -> str:
    """CSV rows as a table: the columns of ``first`` that exist, in that order, then the others."""
    if not rows:
        return "<p>(no rows)</p>"
    cols = [c for c in first if c in rows[0]] + [c for c in rows[0] if c not in first]
    return table([[int(r[c]) if c == "horizon" else r[c] for c in cols] for r in rows], cols)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def video_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` in pixels of an mp4, or ``None`` when it does not probe."""
    try:
        info = probe(str(path))
    except BadInput:
        return None
    return info.width, info.height


def media(report: Report, path: Path, caption: str, why_missing: str) -> None:
    """Embed an mp4 (``<video>``, enlarged) or png (``<img>``); link it instead when over MAX_EMBED_BYTES."""
    if not path.is_file():
        report.note_missing(path, why_missing)
        return
    size = path.stat().st_size
    is_video = path.suffix == ".mp4"
    if size > MAX_EMBED_BYTES:
        report.add(
            f'<p><a href="{esc(report.rel(path))}">{esc(caption)}</a> ({size / 2**20:.0f} MiB: '
            "linked, not embedded; keep report.html beside it)</p>"
        )
        return
    src = data_uri(path.read_bytes(), "video/mp4" if is_video else "image/png")
    if is_video:
        # A whole scale factor keeps every source pixel the same size on screen (CSS pixelated).
        wh = video_size(path)
        if wh:
            scale = max(1, min(VIDEO_MAX_SCALE, VIDEO_HEIGHT_PX // wh[1], VIDEO_MAX_WIDTH_PX // wh[0]))
            dims = f'width="{wh[0] * scale}" height="{wh[1] * scale}"'
            caption += f" Shown at {scale}x ({wh[0]}x{wh[1]} pixels)."
        else:
            dims = f'style="height:{VIDEO_HEIGHT_PX}px"'
        # muted: browsers autoplay and loop only muted video; the clips carry no sound anyway.
        report.add(
            f'<figure><video class="big" controls loop muted autoplay playsinline {dims} src="{src}">'
            f"</video><figcaption>{esc(caption)}</figcaption></figure>"
        )
    else:
        report.add(
            f'<figure><img class="fig" alt="{esc(caption)}" src="{src}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def svg_lines(
    series: dict[str, list[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 640,
    height: int = 300,
) -> str:
    """Inline SVG line chart of ``{name: [(x, y), ...]}``; non-finite points are dropped."""
    clean = {k: [(x, y) for x, y in v if math.isfinite(x) and math.isfinite(y)] for k, v in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return f"<p>{esc(title)}: no finite values to draw.</p>"
    xs = [x for v in clean.values() for x, _ in v]
    ys = [y for v in clean.values() for _, y in v]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 60, 10, 24, 36
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 18 * len(clean)}" '
        f'font-size="11" font-family="sans-serif">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-weight="bold">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        yv, xv = y0 + frac * (y1 - y0), x0 + frac * (x1 - x0)
        out.append(f'<text x="{left - 4}" y="{py(yv) + 4:.1f}" text-anchor="end">{esc(fmt(yv))}</text>')
        out.append(f'<text x="{px(xv):.1f}" y="{top + ph + 14}" text-anchor="middle">{esc(fmt(xv))}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 30}" text-anchor="middle">{esc(xlabel)}</text>')
    out.append(
        f'<text x="12" y="{top + ph / 2}" transform="rotate(-90 12 {top + ph / 2})" '
        f'text-anchor="middle">{esc(ylabel)}</text>'
    )
    for i, (name, pts) in enumerate(clean.items()):
        color = _COLORS[i % len(_COLORS)]
        d = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{d}"/>')
        ly = height + 18 * i + 4
        out.append(
            f'<line x1="{left}" y1="{ly}" x2="{left + 20}" y2="{ly}" stroke="{color}" stroke-width="2"/>'
            f'<text x="{left + 26}" y="{ly + 4}">{esc(name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def sensitivity_not_positive(rows: list[dict[str, float]]) -> list[int]:
    """Horizons where action sensitivity is not positive (NaN included): there the actions go unheard."""
    return [int(r["horizon"]) for r in rows if not r["action_sensitivity_psnr"] > 0]


def action_verdict(rows: list[dict[str, float]]) -> str:
    """Positive and growing with h means the model listens to the actions (Genie's measure)."""
    vals = [(int(r["horizon"]), r["action_sensitivity_psnr"]) for r in rows]
    if not vals:
        return "No rows: no verdict."
    not_pos = sensitivity_not_positive(rows)
    grows = all(b >= a for (_, a), (_, b) in zip(vals, vals[1:], strict=False))
    if not_pos:
        return (
            "The model does not clearly use the actions: sensitivity is not positive at horizon "
            + ", ".join(map(str, not_pos))
            + "."
        )
    return "Sensitivity is positive at every horizon" + (
        " and grows with it: the model listens to the actions."
        if grows
        else ", though it does not grow steadily."
    )


def counterfactual_verdict(rows: list[dict[str, float]]) -> str:
    """The last horizon's response ratio and counterfactual PSNR in words (EVALUATION.md)."""
    if not rows:
        return "No rows: no verdict."
    last = rows[-1]
    h, ratio = int(last["horizon"]), last.get("action_response_ratio", math.nan)
    if math.isnan(ratio):
        words = "no ratio"
    elif ratio < 0.1:
        words = "the model all but ignores the actions"
    elif ratio < 0.5:
        words = "the model reacts to a change of actions, less than the game does"
    elif ratio <= 2:
        words = "the model reacts to a change of actions about as much as the game does"
    else:
        words = "the model reacts to a change of actions far more than the game does"
    out = (
        f"At horizon {h} the action response ratio is {fmt(ratio)} (1: as much as the game; 0: not at all): "
    )
    out += f"{words}."
    if "counterfactual_psnr" in last:
        out += f" The rollout under the other actions scores {fmt(last['counterfactual_psnr'])} dB against "
        out += "their true future"
        out += (
            f" (under the recorded actions: {fmt(last['factual_psnr'])} dB)."
            if "factual_psnr" in last
            else "."
        )
    return out


# ---------------------------------------------------------------------------------------------------
# The headline: the figures the report opens with


@dataclass
class TrainingRun:
    """How long a training run folder trained, from its ``metrics.jsonl`` (runtime/tracking.py).

    ``seconds`` is wall time inside training steps: the sum over logged rows of ``train/step_time_s``
    (the mean since the previous logged row) times the steps since that row. Start-up, checkpoints
    and evaluation are not in it; ``None`` when no row has a step time.
    """

    steps: int | None  # last logged step; None without metrics
    seconds: float | None


def training_run(run_dir: Path) -> TrainingRun:
    rows = read_metrics(run_dir)
    if not rows:
        return TrainingRun(None, None)
    total, prev, timed = 0.0, 0, False
    for step in sorted(rows):
        st = rows[step].get("train/step_time_s")
        if st is not None and math.isfinite(st):
            total += st * (step - prev)
            prev, timed = step, True
    return TrainingRun(max(rows), total if timed else None)


@dataclass
class Measured:
    """Per-horizon rows of an optional measurement, or why it was not made (``rows`` empty then).

    ``status`` is eval.json's (``computed``, ``off``, ``skipped: why``), ``None`` when eval.json
    records none: then an absent CSV counts as missing rather than as not measured. ``entry`` is
    eval.json's object for it (the counterfactual's: branches, resolution, note, games), or ``{}``.
    """

    rows: list[dict[str, float]]
    why_not: str = ""
    status: str | None = None
    entry: dict[str, Any] = field(default_factory=dict)


def _status_reason(status: str) -> str:
    if status == "off":
        return "switched off in the evaluation's config"
    return status.split(":", 1)[1].strip() if status.startswith("skipped:") else status


def json_rows(rows: Any, where: str) -> list[dict[str, float]]:
    """Rows kept in eval.json as CSV rows: numbers as floats, null (a NaN or infinity) as NaN."""
    try:
        return [{k: math.nan if v is None else float(v) for k, v in r.items()} for r in rows]
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: rows are not objects of numbers ({e}); rerun vidworld evaluate") from e


def measured(root: Path, info: dict[str, Any] | None, csv_name: str, key: str) -> Measured:
    """``DIR/eval/CSV_NAME`` rows; else eval.json's ``key`` (a status string, or ``{"status", "rows"}``)."""
    path = OutputLayout.of(root).eval / csv_name
    entry = (info or {}).get(key)
    obj = entry if isinstance(entry, dict) else {}
    status = obj.get("status") if isinstance(entry, dict) else entry
    status = None if status is None else str(status)
    if path.is_file():
        rows = read_csv_rows(path)
        return Measured(rows, "" if rows else f"eval/{csv_name} has no rows", status, obj)
    if info is None:
        return Measured([], "no eval/eval.json: the evaluation has not run")
    if status is None:
        return Measured([], f"eval/{csv_name} is absent and eval.json records no {key} status")
    if status == "computed" and obj.get("rows"):
        return Measured(json_rows(obj["rows"], f"eval/eval.json {key}"), "", status, obj)
    if status == "computed":
        return Measured([], f"eval.json says computed, but eval/{csv_name} is missing", status, obj)
    return Measured([], _status_reason(status), status, obj)


@dataclass
class Headline:
    """What the report opens with, read from the output folder; ``None``/empty where not there."""

    tokenizer: dict[str, Any] | None  # tokenizer/eval/metrics.json
    compounding: CompoundingJudgement | None
    compounding_why_not: str
    actions: Measured
    counterfactual: Measured
    training: dict[str, TrainingRun]  # "tokenizer", "dynamics"
    info: dict[str, Any] | None  # eval/eval.json


def read_headline(root: Path) -> Headline:
    """The headline figures of an output folder; never fails on a missing file."""
    layout = OutputLayout.of(root)
    tok_path = layout.tokenizer_eval / METRICS_FILE
    tok = read_json(tok_path) if tok_path.is_file() else None
    if tok is not None and not isinstance(tok, dict):
        raise ValueError(f"{tok_path} holds {type(tok).__name__}, not an object; rerun the tokenizer eval")
    info = read_eval_json(root)
    csv_path = layout.eval / COMPOUNDING_CSV
    judgement, why = None, "no eval/compounding_error.csv: the dynamics model has not been evaluated"
    if csv_path.is_file():
        rows = read_csv_rows(csv_path)
        judgement, why = (
            (judge_compounding(rows), "") if rows else (None, "eval/compounding_error.csv has no rows")
        )
        if judgement is not None and judgement.beats is None:
            why = f"eval/compounding_error.csv lacks {', '.join(judgement.unchecked)}"
    return Headline(
        tokenizer=tok,
        compounding=judgement,
        compounding_why_not=why,
        actions=measured(root, info, ACTION_CSV, "action_sensitivity"),
        counterfactual=measured(root, info, COUNTERFACTUAL_CSV, "counterfactual"),
        training={"tokenizer": training_run(layout.tokenizer), "dynamics": training_run(layout.dynamics)},
        info=info,
    )


def _num(d: dict[str, Any] | None, key: str) -> float | None:
    """``d[key]`` as a float when it is a number, else ``None``."""
    v = (d or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def headline_scalars(h: Headline) -> dict[str, float]:
    """The headline as ``{name: number}`` (names: ``HEADLINE_SCALARS``); unmeasured figures left out."""
    out: dict[str, float] = {}
    psnr, ssim = tokenizer_headline_psnr(h.tokenizer), _num(h.tokenizer, "recon_ssim")
    natural = group_psnr(h.tokenizer, NATURAL_GROUPS)
    if natural is not None:
        out["tokenizer_natural_psnr"] = natural
    if psnr is not None:
        out["tokenizer_psnr"] = psnr
        out["tokenizer_meets_target"] = float(psnr >= TOKENIZER_TARGET_PSNR)
    if ssim is not None:
        out["tokenizer_ssim"] = ssim
    j = h.compounding
    if j is not None and j.beats is not None:
        out["beats_copy_last"] = float(j.beats)
    if j is not None and j.worst_margin_db:
        out["worst_margin_db"] = j.worst_margin_db[1]
    if j is not None and j.worst_latent_ratio:
        out["worst_latent_mse_ratio"] = j.worst_latent_ratio[1]
    a = h.actions.rows
    if a and "action_sensitivity_psnr" in a[0]:
        out["action_sensitivity_first"] = a[0]["action_sensitivity_psnr"]
        out["action_sensitivity_last"] = a[-1]["action_sensitivity_psnr"]
    c = h.counterfactual.rows
    for col, name in (
        ("action_response_ratio", "action_response_ratio_last"),
        ("counterfactual_psnr", "counterfactual_psnr_last"),
    ):
        if c and col in c[-1]:
            out[name] = c[-1][col]
    return {k: out[k] for k in HEADLINE_SCALARS if k in out and math.isfinite(out[k])}


def _horizons_phrase(failing: list[int], horizons: list[int]) -> str:
    if failing == horizons:
        return "at every horizon"
    if len(failing) == 1:
        return f"at horizon {failing[0]}"
    if failing == horizons[horizons.index(failing[0]) :]:
        return f"from horizon {failing[0]} on"
    return "at horizons " + ", ".join(map(str, failing))


def headline_sentence(h: Headline) -> str:
    """One sentence in words of what the headline figures mean."""
    j = h.compounding
    if j is None or j.beats is None:
        out = f"The dynamics model is not judged yet ({h.compounding_why_not})"
    elif j.beats:
        out = "The dynamics model beats copying the last frame at every horizon"
    else:
        out = "The dynamics model loses to copying the last frame " + _horizons_phrase(
            [hz for hz, _ in j.failing], j.horizons
        )
    a, c = h.actions.rows, h.counterfactual.rows
    if a and "action_sensitivity_psnr" in a[0]:
        follows = not sensitivity_not_positive(a)
        loses = j is not None and j.beats is False
        if not follows:
            out += f", {'but' if j is not None and j.beats else 'and'} it does not clearly follow the actions"
        else:
            out += f", {'though' if loses else 'and'} it follows the actions"
            if c and "action_response_ratio" in c[-1] and math.isfinite(c[-1]["action_response_ratio"]):
                ratio = c[-1]["action_response_ratio"]
                out += f", reacting to other actions {_ratio(ratio)}x as much as the game does"
    psnr = tokenizer_headline_psnr(h.tokenizer)
    if j is not None and j.tokenizer_limits:
        hz, recon, copy = j.tokenizer_limits[0]
        out += (
            f"; the tokenizer is the bottleneck: its reconstruction of these clips ({recon:.1f} dB) is "
            f"further from the truth than copying the last frame in pixels ({copy:.1f} dB) at horizon {hz}"
        )
    elif psnr is not None:
        out += (
            f"; the tokenizer ({psnr:.1f} dB) is below its {TOKENIZER_TARGET_PSNR:g} dB target"
            if psnr < TOKENIZER_TARGET_PSNR
            else f"; the tokenizer ({psnr:.1f} dB) meets its {TOKENIZER_TARGET_PSNR:g} dB target"
        )
    return out + "."


def _signed_db(v: float) -> str:
    """``+1.25`` / ``-0.50``; a value that rounds to zero as ``0.00``, not ``-0.00``."""
    return "0.00" if round(v, 2) == 0 else f"{v:+.2f}"


def _ratio(v: float) -> str:
    """Two decimals; a small nonzero ratio in two significant digits (``5e-05``), not ``0.00``."""
    return f"{v:.2g}" if 0 < abs(v) < 0.01 else f"{v:.2f}"


def _card(
    label: str, value: str, detail: str, mark: tuple[str, str] | None = None, value_class: str = "v"
) -> str:
    """One headline figure: label, big value (HTML), an optional pass/miss mark, a line of detail."""
    m = f'<div class="m {mark[0]}">{esc(mark[1])}</div>' if mark else ""
    return (
        f'<div class="fig"><div class="k">{esc(label)}</div><div class="{value_class}">{value}</div>{m}'
        f'<div class="d">{esc(detail)}</div></div>'
    )


def _not_measured(label: str, why: str) -> str:
    return _card(label, '<span class="na">not measured</span>', why)


def headline_cards(h: Headline) -> str:
    cards = []
    label = "Tokenizer PSNR"
    psnr, ssim = tokenizer_headline_psnr(h.tokenizer), _num(h.tokenizer, "recon_ssim")
    if psnr is None:
        cards.append(
            _not_measured(label, "no tokenizer/eval/metrics.json: the tokenizer has not been evaluated")
        )
    else:
        res = str((h.tokenizer or {}).get("resolution", "unknown resolution"))
        ok = psnr >= TOKENIZER_TARGET_PSNR
        target = f"{TOKENIZER_TARGET_PSNR:g} dB target"
        by_group = h.tokenizer.get("by_group") or {}
        if group_psnr(h.tokenizer, ATARI_GROUPS) is not None:
            label = "Tokenizer PSNR (Atari)"
            kinds = ", ".join(f"{g} {v['recon_psnr']:.1f}" for g, v in sorted(by_group.items()))
            natural = group_psnr(h.tokenizer, NATURAL_GROUPS)
            detail = f"held-out at {res}: {kinds} dB"
            if natural is not None:
                verdict = "meets" if natural >= NATURAL_TARGET_PSNR else "below"
                detail += f"; photographs {verdict} their {NATURAL_TARGET_PSNR:g} dB target"
        else:
            detail = f"held-out at {res}, {h.tokenizer.get('clips', '?')} clips"
        detail += f"; SSIM {ssim:.3f}" if ssim is not None else ""
        if res != TOKENIZER_TARGET_RESOLUTION:
            detail += f" (the target is for Atari at {TOKENIZER_TARGET_RESOLUTION})"
        mark = ("pass", f"✓ meets the {target}") if ok else ("miss", f"✗ below the {target}")
        cards.append(_card(label, f"{psnr:.2f} <small>dB</small>", detail, mark))

    label = "Beats copying the last frame?"
    j = h.compounding
    if j is None or j.beats is None:
        cards.append(_not_measured(label, h.compounding_why_not))
    else:
        if j.beats:
            mark = ("pass", f"✓ at every horizon {j.horizons[0]}..{j.horizons[-1]}")
        else:
            mark = ("miss", "✗ loses " + _horizons_phrase([hz for hz, _ in j.failing], j.horizons))
        parts = []
        if j.worst_margin_db:
            hz, m = j.worst_margin_db
            parts.append(f"worst h={hz}: {_signed_db(m)} dB vs copy-last through the tokenizer")
        if j.worst_latent_ratio:
            hz, r = j.worst_latent_ratio
            parts.append(f"latent MSE {_ratio(r)}x copy-last's (h={hz})")
        value = "yes" if j.beats else "no"
        cards.append(_card(label, value, "; ".join(parts), mark))

    label = "Action sensitivity (dB)"
    a = h.actions.rows
    if not a or "action_sensitivity_psnr" not in a[0]:
        cards.append(_not_measured(label, h.actions.why_not or "no action_sensitivity_psnr column"))
    else:
        first, last = a[0], a[-1]
        ok = not sensitivity_not_positive(a)
        cards.append(
            _card(
                label,
                " → ".join(_signed_db(r["action_sensitivity_psnr"]) for r in (first, last)),
                f"h={int(first['horizon'])} → h={int(last['horizon'])}: PSNR under the recorded actions "
                "minus under another clip's",
                ("pass", "✓ positive") if ok else ("miss", "✗ not positive"),
            )
        )

    label = "Counterfactual response"
    c = h.counterfactual.rows
    if not c or "action_response_ratio" not in c[-1]:
        cards.append(_not_measured(label, h.counterfactual.why_not or "no action_response_ratio column"))
    else:
        last, cf = c[-1], h.counterfactual.entry
        ratio = last["action_response_ratio"]
        detail = f"h={int(last['horizon'])}"
        if cf.get("branches"):
            detail += f", {cf['branches']} branches at {cf.get('resolution') or '?'}"
        detail += ": 1 = reacts to other actions as the game does, 0 = ignores them"
        if not math.isfinite(ratio):
            detail += " (no ratio: the true futures are identical in every branch)"
        if "counterfactual_psnr" in last:
            detail += f"; counterfactual PSNR {last['counterfactual_psnr']:.2f} dB"
        games = cf.get("games") if isinstance(cf.get("games"), dict) else {}
        if len(games) > 1:
            per_game = {g: json_rows(r, f"eval/eval.json counterfactual.games.{g}") for g, r in games.items()}
            detail += "; by game: " + ", ".join(
                f"{g} {_ratio(r[-1]['action_response_ratio'])}" for g, r in per_game.items() if r
            )
        if cf.get("note"):
            detail += f" ({cf['note']})"
        value = (
            f"ratio {_ratio(ratio)}" if math.isfinite(ratio) else '<span class="na">ratio undefined</span>'
        )
        cards.append(_card(label, value, detail))

    lines, timed = [], False
    for name, run in h.training.items():
        if run.steps is None:
            lines.append(f'{name} <span class="na">not trained</span>')
        elif run.seconds is None:
            lines.append(f"{name} {run.steps} steps")
        else:
            timed = True
            lines.append(f"{name} {format_duration(run.seconds)} <small>{run.steps} steps</small>")
    detail = (
        "wall time inside training steps (train/step_time_s); start-up, checkpoints, evaluation not counted"
        if timed
        else "no step time recorded in metrics.jsonl: steps only"
    )
    cards.append(_card("Training time", "<br>".join(lines), detail, value_class="v sm"))
    return '<div class="figs">' + "".join(cards) + "</div>"


def provenance_short(info: dict[str, Any] | None) -> str:
    """``4 heldout clips at 64x64 · dynamics step 500 · tokenizer ... · machine · date`` from eval.json."""
    if not info:
        return ""
    data = info.get("data") if isinstance(info.get("data"), dict) else {}
    bits = []
    if "clips" in data:
        bits.append(
            f"{data['clips']} {data.get('split', '')} clips at {data.get('resolution', '?')}".replace(
                "  ", " "
            )
        )
    if "checkpoint_step" in info:
        bits.append(f"dynamics step {info['checkpoint_step']}")
    for k in ("tokenizer", "machine", "date"):
        if info.get(k):
            bits.append(f"{k} {info[k]}" if k == "tokenizer" else str(info[k]))
    return " · ".join(bits)


# ---------------------------------------------------------------------------------------------------
# Sections


def section_verdict(h: Headline, missing: list[str]) -> str:
    """The block the page opens with: sentence, figures, provenance, what is not there yet."""
    beats = h.compounding.beats if h.compounding else None
    cls = {True: "good", False: "bad", None: "unknown"}[beats]
    out = [f'<section id="verdict" class="verdict {cls}">', f'<p class="say">{esc(headline_sentence(h))}</p>']
    out.append(headline_cards(h))
    prov = provenance_short(h.info)
    if prov:
        out.append(f'<p class="prov">Dynamics figures: {esc(prov)}.</p>')
    if missing:
        out.append(
            '<p class="missing">Not in this folder yet (stages not run, or run elsewhere): '
            + ", ".join(f"<code>{esc(m)}</code>" for m in missing)
            + ".</p>"
        )
    else:
        out.append('<p class="prov">Every stage\'s output is present.</p>')
    return "".join(out) + "</section>"


def section_videos(rep: Report, h: Headline) -> None:
    e, tok = rep.layout.eval, rep.layout.tokenizer_eval
    rep.add('<h2>1. What the model imagines</h2><div class="videos">')
    media(
        rep,
        e / ROLLOUT_VIDEO,
        "Rollout. Left: the true frames. Right: the model: the real context through the tokenizer "
        "(red border), then frames imagined open-loop under the recorded actions.",
        "no rollout video",
    )
    media(
        rep,
        tok / RECON_VIDEO,
        "Tokenizer. Left: the original held-out clip. Right: its reconstruction (decode(encode(clip))).",
        "no reconstruction video",
    )
    cf = e / COUNTERFACTUAL_VIDEO
    if cf.is_file() or h.counterfactual.rows:
        media(
            rep,
            cf,
            "Counterfactual, from one saved game state: true A | model A | true B | model B, where A "
            "plays the recorded actions and B other ones (the model's real context has a red border).",
            "the counterfactual was measured but its video is not there",
        )
    else:
        rep.add(f'<p class="na">No counterfactual video (not measured, {esc(h.counterfactual.why_not)}).</p>')
    rep.add("</div>")


def section_curve(rep: Report, h: Headline) -> None:
    e = rep.layout.eval
    rep.add("<h2>2. How the error grows with the horizon</h2>")
    prov = provenance_line(e / EVAL_JSON)
    if prov:
        rep.add(f"<p>Figures below: {esc(prov)}.</p>")
    csv_path = e / COMPOUNDING_CSV
    rows = read_csv_rows(csv_path) if csv_path.is_file() else []
    if csv_path.is_file():
        rep.add(f'<p class="says">{esc(compounding_verdict(rows))}</p>')
    if h.actions.rows:
        rep.add(f'<p class="says">Actions: {esc(action_verdict(h.actions.rows))}</p>')
    if h.counterfactual.rows:
        rep.add(f'<p class="says">Counterfactual: {esc(counterfactual_verdict(h.counterfactual.rows))}</p>')
    spread_path = e / DISAGREEMENT_CSV
    spread = read_csv_rows(spread_path) if spread_path.is_file() else []
    if spread:
        rep.add(f'<p class="says">Uncertainty: {esc(disagreement_verdict(spread))}</p>')
    png = e / COMPOUNDING_FIGURE
    if png.is_file():
        media(rep, png, "compounding error against the horizon", "")
    elif rows:
        cols = [
            c for c in ("model_psnr", "copy_last_psnr", "copy_last_recon_psnr", "recon_psnr") if c in rows[0]
        ]
        rep.add(
            svg_lines(
                {c: [(r["horizon"], r[c]) for r in rows] for c in cols},
                "PSNR against horizon",
                "horizon (frames)",
                "PSNR (dB)",
            )
        )
        if spread:
            rep.add(
                svg_lines(
                    {"ensemble_disagreement": [(r["horizon"], r["ensemble_disagreement"]) for r in spread]},
                    "ensemble disagreement against horizon",
                    "horizon (frames)",
                    "disagreement",
                )
            )
        rep.note_missing(png, "drawn here from the CSV instead")
    else:
        rep.note_missing(png, "no compounding-error figure")


def disagreement_verdict(rows: list[dict[str, float]]) -> str:
    """The ensemble's disagreement along the rollouts (eval/disagreement.csv), in words."""
    first, last = rows[0], rows[-1]
    a, b, h = first["ensemble_disagreement"], last["ensemble_disagreement"], int(last["horizon"])
    if len(rows) == 1:
        return f"the ensemble's members disagree by {a:.3g} on the imagined frame."
    trend = "grows" if b > a else "does not grow"
    return (
        f"the ensemble's disagreement {trend} with the horizon ({a:.3g} at h=1, {b:.3g} at h={h}): "
        "where it grows, the further the model imagines the less its members agree."
    )


def _run_folder(rep: Report, run_dir: Path, name: str) -> None:
    """Loss curve, the last logged step's runtime figures and config.yaml of a training run folder."""
    if not run_dir.is_dir():
        rep.note_missing(run_dir, f"the {name} model has not been trained")
        return
    rows = read_metrics(run_dir)
    if not rows:
        rep.note_missing(run_dir / "metrics.jsonl", f"no training metrics of the {name}")
    else:
        steps = sorted(rows)
        loss = [(float(s), float(rows[s]["train/loss"])) for s in steps if "train/loss" in rows[s]]
        rep.add(svg_lines({"train/loss": loss}, f"{name}: training loss", "step", "loss"))
        last = rows[steps[-1]]
        keys = [
            k
            for k in (
                "train/lr",
                "train/grad_norm",
                "train/step_time_s",
                "train/samples_per_s",
                "train/tokens_per_s",
                "train/mfu",
                "train/peak_mem_gib",
                "train/skipped_steps",
            )
            if k in last
        ]
        if keys:
            rep.add(
                f"<p>Last logged step {steps[-1]}:</p>"
                + table([[k, float(last[k])] for k in keys], ["metric", "value"])
            )
    cfg = run_dir / "config.yaml"
    if cfg.is_file():
        rep.add(f"<h3>{esc(name)}/config.yaml</h3><pre>{esc(cfg.read_text())}</pre>")


def _tokenizer_metrics(rep: Report) -> None:
    mpath = rep.layout.tokenizer_eval / METRICS_FILE
    if not mpath.is_file():
        rep.note_missing(mpath, "the tokenizer has not been evaluated")
        return
    m = read_json(mpath)
    rep.add(
        f"<p>Reconstruction on {esc(m.get('clips', '?'))} held-out clips at "
        f"{esc(m.get('resolution', 'unknown resolution'))}: PSNR {esc(fmt(m.get('recon_psnr')))} dB, "
        f"SSIM {esc(fmt(m.get('recon_ssim')))}.</p>"
    )
    rep.add(
        table(
            [[k, v if not isinstance(v, (dict, list)) else json.dumps(v)] for k, v in m.items()],
            ["key", "value"],
        )
    )


LAM_COLUMNS = (
    ("clips", "clips"),
    ("n", "transitions"),
    ("nmi", "NMI"),
    ("nmi_shuffled", "NMI shuffled"),
    ("probe_balanced_accuracy", "probe balanced acc."),
    ("shuffled_probe_balanced_accuracy", "shuffled"),
    ("probe_accuracy", "probe acc."),
    ("shuffled_probe_accuracy", "shuffled"),
)


def _lam_metrics(rep: Report) -> None:
    path = rep.layout.lam_eval / LAM_METRICS
    if not path.is_file():
        rep.add('<p class="na">Not measured: no latent action model was trained (no lam stage).</p>')
        return
    m = read_json(path)
    games = dict(m.get("games") or {})
    if m.get("overall"):
        games["all games"] = m["overall"]
    rep.add(
        f"<p>{esc(m.get('num_codes', '?'))} latent actions, step {esc(m.get('lam_step', '?'))}, on "
        f"{esc(m.get('split', '?'))} clips; movement classes none / right / left. The balanced accuracy "
        "(mean recall per class) of a probe trained on shuffled labels is about 1/3.</p>"
    )
    rep.add(table([[g, *(fmt(v.get(k)) for k, _ in LAM_COLUMNS)] for g, v in games.items()],
                  ["game", *(h for _, h in LAM_COLUMNS)]))  # fmt: skip


def _curation(rep: Report) -> None:
    d = rep.layout.curated
    _json_tables(rep, d / "stats.json", "Totals (stats.json)", "the curate stage has not written its totals")
    manifest = d / "manifest.jsonl"
    if manifest.is_file():
        rows = read_jsonl(manifest)
        order = {"failed": 0, "skipped": 1, "ok": 2}
        rows.sort(key=lambda r: (order.get(r.get("status"), 3), str(r.get("source", ""))))
        shown = rows[:MANIFEST_ROWS_SHOWN]
        rep.add(f"<h3>Inputs ({len(rows)}; failed and skipped first)</h3>")
        body = []
        for r in shown:
            probe_info = r.get("probe") or {}
            res = (
                f"{probe_info['width']}x{probe_info['height']}"
                if "width" in probe_info and "height" in probe_info
                else ""
            )
            body.append(
                [
                    r.get("source", ""),
                    r.get("status", ""),
                    r.get("reason", ""),
                    r.get("clips", ""),
                    r.get("split", ""),
                    res,
                ]
            )
        rep.add(table(body, ["source", "status", "reason", "clips", "split", "resolution"]))
        if len(rows) > len(shown):
            rep.add(f"<p>... and {len(rows) - len(shown)} more inputs (see manifest.jsonl).</p>")
    else:
        rep.note_missing(manifest, "the curate stage has not run")
    shards = sorted((d / "shards").glob("*.tar"))
    if shards:
        size = sum(p.stat().st_size for p in shards)
        rep.add(f"<p>{len(shards)} clip shards, {size / 2**20:.1f} MiB, in <code>curated/shards/</code>.</p>")
    else:
        rep.note_missing(d / "shards", "no clip shards")


def _latents(rep: Report) -> None:
    lat = rep.layout.latents
    if not lat.is_dir():
        rep.note_missing(lat, "the clips have not been tokenized")
        return
    n = len(list(lat.rglob("*.tar")))
    rep.add(f"<p>Latents: {n} shards in <code>latents/</code>.</p>")
    if (lat / "stats.json").is_file():
        stats = read_json(lat / "stats.json")
        if isinstance(stats, dict):
            rep.add(dict_tables(stats, "Latent totals (latents/stats.json)"))


def _configs(rep: Report) -> None:
    d = rep.layout.configs
    files = sorted(p for p in d.glob("*.yaml") if not p.name.endswith(".draft.yaml"))
    if not files:
        rep.note_missing(d, "the chain has not written its stage configs")
    for p in files:
        rep.add(f"<h3>configs/{esc(p.name)}</h3><pre>{esc(p.read_text())}</pre>")


def _json_tables(rep: Report, path: Path, title: str, why_missing: str) -> None:
    """A JSON object file as tables titled ``title``, or noted missing with ``why_missing``."""
    if not path.is_file():
        rep.note_missing(path, why_missing)
        return
    obj = read_json(path)
    if isinstance(obj, dict):
        rep.add(dict_tables(obj, title))


def _provenance(rep: Report) -> None:
    _json_tables(rep, rep.layout.eval / EVAL_JSON, EVAL_JSON, "no provenance: the evaluation has not run")


def _optional_csv(rep: Report, m: Measured, name: str, first: tuple[str, ...]) -> None:
    """The rows of an optional measurement, "not measured" with eval.json's reason, or missing."""
    path = rep.layout.eval / name
    if m.rows:
        rep.add(rows_table(m.rows, first))
        if not path.is_file():
            rep.note_missing(path, "rows read from eval.json instead")
    elif path.is_file():
        rep.add("<p>(no rows)</p>")
    elif m.status is not None and m.status != "computed":
        rep.add(f'<p class="na">Not measured: {esc(m.why_not)}.</p>')
    else:
        rep.note_missing(path, f"not measured, {m.why_not}")


def section_raw(rep: Report, h: Headline) -> None:
    rep.add("<h2>3. Raw tables</h2><p>Folded: click a title to open it.</p>")

    def compounding() -> None:
        path = rep.layout.eval / COMPOUNDING_CSV
        if path.is_file():
            rep.add(rows_table(read_csv_rows(path), COMPOUNDING_COLUMNS))
        else:
            rep.note_missing(path, "the dynamics model has not been evaluated")

    rep.fold("Compounding error per horizon (eval/compounding_error.csv)", compounding)
    rep.fold(
        "Action sensitivity per horizon, dB (eval/action_sensitivity.csv)",
        lambda: _optional_csv(rep, h.actions, ACTION_CSV, ACTION_COLUMNS),
    )

    def counterfactual() -> None:
        # Optional (simulator data only): without an eval.json status its absence is not "missing".
        m = h.counterfactual
        if not (m.rows or m.status == "computed"):
            rep.add(f'<p class="na">Not measured: {esc(m.why_not)}.</p>')
            return
        _optional_csv(rep, m, COUNTERFACTUAL_CSV, COUNTERFACTUAL_COLUMNS)
        if m.entry.get("note"):
            rep.add(f"<p>{esc(m.entry['note'])}.</p>")
        games = m.entry.get("games") if isinstance(m.entry.get("games"), dict) else {}
        for game, rows in games.items():
            rep.add(f"<h3>{esc(game)} alone</h3>")
            rep.add(
                rows_table(
                    json_rows(rows, f"eval/eval.json counterfactual.games.{game}"), COUNTERFACTUAL_COLUMNS
                )
            )

    rep.fold("Counterfactual actions per horizon (eval/counterfactual.csv)", counterfactual)
    rep.fold(
        "Latent actions: codes against the true actions (lam/eval/metrics.json)", lambda: _lam_metrics(rep)
    )

    def eval_table(name: str, columns: tuple[str, ...], why_missing: str) -> Callable[[], None]:
        """The fold's body: ``eval/NAME`` as a table, or "Not measured" and why."""

        def body() -> None:
            path = rep.layout.eval / name
            if path.is_file():
                rep.add(rows_table(read_csv_rows(path), columns))
            else:
                rep.add(f'<p class="na">Not measured: {why_missing}.</p>')

        return body

    rep.fold(
        "Rollouts under latent actions per horizon, dB (eval/latent_actions.csv)",
        eval_table(LATENT_CSV, LATENT_COLUMNS, "the dynamics model has no latent action model"),
    )
    rep.fold(
        "Ensemble disagreement per horizon (eval/disagreement.csv)",
        eval_table(
            DISAGREEMENT_CSV, DISAGREEMENT_COLUMNS, "the dynamics model has one head (model.ensemble=1)"
        ),
    )
    rep.fold("Tokenizer reconstruction (tokenizer/eval/metrics.json)", lambda: _tokenizer_metrics(rep))
    rep.fold(
        "Tokenizer training (tokenizer/: loss, last step, config)",
        lambda: _run_folder(rep, rep.layout.tokenizer, "tokenizer"),
    )
    rep.fold(
        "Latent action model training (lam/: loss, last step, config)",
        lambda: (
            _run_folder(rep, rep.layout.lam, "lam")
            if rep.layout.lam.is_dir()
            else rep.add('<p class="na">Not trained: the chain had no lam stage.</p>')
        ),
    )
    rep.fold(
        "Dynamics training (dynamics/: loss, last step, config)",
        lambda: _run_folder(rep, rep.layout.dynamics, "dynamics"),
    )
    rep.fold("Curation: totals, inputs, shards (curated/)", lambda: _curation(rep))
    rep.fold("Latents (latents/)", lambda: _latents(rep))
    rep.fold("Run configs (configs/)", lambda: _configs(rep))
    rep.fold(
        "Provenance of the dynamics figures, verdict, counterfactual (eval/eval.json)",
        lambda: _provenance(rep),
    )


def provenance_line(path: Path) -> str:
    """``eval.json`` flattened to one line (``data.clips: 4; checkpoint_step: 500; ...``), or "".

    Its figures (``verdict``, the ``counterfactual`` object) are left to the tables."""
    if not path.is_file():
        return ""
    prov = read_json(path)
    if not isinstance(prov, dict):
        return ""
    prov = {k: v for k, v in prov.items() if k not in ("verdict", "counterfactual")}

    def flat(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}: {fmt(v)}"]
        return out

    return "; ".join(flat(prov))


def build_report(output_dir: str | Path) -> str:
    """The report of a pipeline output folder as one HTML string (nothing written)."""
    root = Path(output_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a folder; pass the output= folder of `vidworld run`")
    rep = Report(root)
    h = read_headline(root)
    section_videos(rep, h)
    section_curve(rep, h)
    section_raw(rep, h)
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>vidworld report: '
        f"{esc(root.name)}</title><style>{_CSS}</style></head><body>"
        f'<h1>vidworld report: {esc(root.name)}</h1><p class="sub">Output folder <code>{esc(root)}</code></p>'
    )
    return head + section_verdict(h, rep.missing) + "".join(rep.parts) + "</body></html>\n"


def write_report(output_dir: str | Path) -> Path:
    """Write ``DIR/report.html`` atomically and return its path."""
    return atomic_write_text(Path(output_dir) / "report.html", build_report(output_dir))


def cli(output_dir: str, overrides: list[str]) -> int:
    """``vidworld report DIR``: takes no overrides."""
    if overrides:
        print(
            f"vidworld report: takes only the output folder, got extra arguments {overrides}", file=sys.stderr
        )
        return 2
    try:
        path = write_report(output_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"vidworld report: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
