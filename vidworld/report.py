"""The local HTML report of one pipeline run: ``vidworld report DIR`` writes ``DIR/report.html``.

For users without W&B. One self-contained file (videos and images embedded as base64 data URIs,
charts as inline SVG, no external JS or CSS) that reads top to bottom: what was curated, how well
the tokenizer reconstructs, what the model imagines, how the error grows with the horizon against
copying the last frame (/work/shared/EVALUATION.md), whether the model listens to the actions,
and where the figures come from. Any piece may be missing (a stage not run yet); the report shows
what exists and names each missing file.

The output folder of ``vidworld run`` (this docstring is the one place it is written down)::

    DIR/curated/manifest.jsonl      one row per input: source, status (ok|skipped|failed), reason,
                                    clips, filtered, probe, split (pipeline/manifest.py)
    DIR/curated/stats.json          totals: inputs by status, clips, clips per filter reason,
                                    durations, resolutions, clips per split (pipeline/manifest.py)
    DIR/curated/shards/*.tar        WebDataset clip shards (pipeline/shards.py)
    DIR/tokenizer/                  training run folder of the tokenizer (vidworld/train.py):
                                    config.yaml, metrics.jsonl (vidworld/tracking.py), checkpoints/
    DIR/tokenizer/eval/recon.mp4    side by side: original | reconstruction (held-out clips)
    DIR/tokenizer/eval/metrics.json {"recon_psnr": dB, "recon_ssim": 0..1, "resolution": "64x64",
                                     "clips": int, ...}
    DIR/latents/                    tokenized latent shards (+ manifest.jsonl / stats.json)
    DIR/dynamics/                   training run folder of the dynamics model (as DIR/tokenizer/)
    DIR/eval/compounding_error.csv  horizon, model_psnr, copy_last_psnr, copy_last_recon_psnr,
                                    recon_psnr (dB), model_latent_mse, copy_last_latent_mse
    DIR/eval/action_sensitivity.csv horizon, action_sensitivity_psnr (dB); absent without actions
    DIR/eval/compounding_error.png  the curve
    DIR/eval/rollout.mp4            imagined frames beside the truth
    DIR/eval/eval.json              provenance of the figures: data (shards, clips, resolution),
                                    checkpoint step, tokenizer, machine, date
    DIR/report.html                 this module's output
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidworld.files import atomic_write_text
from vidworld.tracking import read_metrics

# Media above this size is linked (relative to DIR) instead of embedded, so a long rollout does
# not make a report that a browser struggles to open. Eval media are a few hundred kB.
MAX_EMBED_BYTES = 64 * 2**20

COMPOUNDING_COLUMNS = (
    "horizon",
    "model_psnr",
    "copy_last_psnr",
    "copy_last_recon_psnr",
    "recon_psnr",
    "model_latent_mse",
    "copy_last_latent_mse",
)
MANIFEST_ROWS_SHOWN = 200  # inputs listed one by one (failed and skipped first); the rest are counted

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}.missing{color:#a40}
.verdict{padding:.5em 1em;background:#f7f7f7;border-left:4px solid #888}
video,img.fig{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow-x:auto}
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

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def note_missing(self, path: Path, why: str) -> None:
        self.missing.append(self.rel(path))
        self.add(f'<p class="missing">Missing: <code>{esc(self.rel(path))}</code> ({esc(why)}).</p>')


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


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def media(report: Report, path: Path, caption: str, why_missing: str) -> None:
    """Embed an mp4 (``<video>``) or png (``<img>``); link it instead when over MAX_EMBED_BYTES."""
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
        # muted: browsers autoplay and loop only muted video; the clips carry no sound anyway.
        report.add(
            f'<figure><video controls loop muted autoplay playsinline src="{src}"></video>'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
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


# ---------------------------------------------------------------------------------------------------
# The verdicts (EVALUATION.md)


def compounding_verdict(rows: list[dict[str, float]]) -> str:
    """One or two sentences: does the model beat copying the last frame at every horizon?

    Worth something where ``model_psnr > copy_last_recon_psnr`` and ``model_latent_mse <
    copy_last_latent_mse`` at every horizon; where ``copy_last_psnr > recon_psnr`` the tokenizer,
    not the dynamics, is what loses.
    """
    if not rows:
        return "The compounding-error table has no rows: no verdict."
    have = set(rows[0])
    checks = [
        c
        for c in (
            ("model_psnr", "copy_last_recon_psnr", ">"),
            ("model_latent_mse", "copy_last_latent_mse", "<"),
        )
        if c[0] in have and c[1] in have
    ]
    unchecked = [
        n
        for c in (("model_psnr", "copy_last_recon_psnr"), ("model_latent_mse", "copy_last_latent_mse"))
        for n in c
        if n not in have
    ]
    sentences = []
    if not checks:
        sentences.append(f"No verdict: the table lacks the columns {', '.join(sorted(set(unchecked)))}.")
    else:
        failing = []
        for r in rows:
            why = []
            for a, b, op in checks:
                beats = r[a] > r[b] if op == ">" else r[a] < r[b]  # NaN compares False: counts as a loss
                if not beats:
                    why.append(f"{a} {fmt(r[a])} vs {b} {fmt(r[b])}")
            if why:
                failing.append((int(r["horizon"]), "; ".join(why)))
        what = " and ".join(f"{a} {op} {b}" for a, b, op in checks)
        if not failing:
            sentences.append(
                f"The model beats copying the last frame at every horizon "
                f"{int(rows[0]['horizon'])}..{int(rows[-1]['horizon'])} ({what})."
            )
        else:
            hs = ", ".join(str(h) for h, _ in failing)
            detail = "; ".join(f"h={h}: {why}" for h, why in failing)
            sentences.append(
                f"The model does NOT beat copying the last frame at horizon{'s' if len(failing) > 1 else ''} "
                f"{hs} (needs {what}; {detail})."
            )
        if unchecked:
            sentences.append(f"(Not checked, column missing: {', '.join(unchecked)}.)")
    if {"copy_last_psnr", "recon_psnr"} <= have:
        static = [int(r["horizon"]) for r in rows if r["copy_last_psnr"] > r["recon_psnr"]]
        if static:
            sentences.append(
                "At horizon " + ", ".join(map(str, static)) + " copying the last real frame in pixel space "
                "(copy_last_psnr) is above the tokenizer's own reconstruction (recon_psnr): there the "
                "tokenizer, not the dynamics, is what loses."
            )
    return " ".join(sentences)


def action_verdict(rows: list[dict[str, float]]) -> str:
    """Positive and growing with h means the model listens to the actions (Genie's measure)."""
    vals = [(int(r["horizon"]), r["action_sensitivity_psnr"]) for r in rows]
    if not vals:
        return "No rows: no verdict."
    not_pos = [h for h, v in vals if not v > 0]
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


# ---------------------------------------------------------------------------------------------------
# Sections


def section_curated(rep: Report) -> None:
    d = rep.root / "curated"
    rep.add("<h2>1. What was curated</h2>")
    stats_path = d / "stats.json"
    if stats_path.is_file():
        stats = read_json(stats_path)
        if isinstance(stats, dict):
            rep.add(dict_tables(stats, "Totals (stats.json)"))
    else:
        rep.note_missing(stats_path, "the curate stage has not written its totals")
    manifest = d / "manifest.jsonl"
    if manifest.is_file():
        rows = read_jsonl(manifest)
        order = {"failed": 0, "skipped": 1, "ok": 2}
        rows.sort(key=lambda r: (order.get(r.get("status"), 3), str(r.get("source", ""))))
        shown = rows[:MANIFEST_ROWS_SHOWN]
        rep.add(f"<h3>Inputs ({len(rows)}; failed and skipped first)</h3>")
        body = []
        for r in shown:
            probe = r.get("probe") or {}
            res = f"{probe['width']}x{probe['height']}" if "width" in probe and "height" in probe else ""
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


def _run_folder(rep: Report, run_dir: Path, name: str) -> None:
    """Loss curve (and the last logged throughput) of a training run folder."""
    rows = read_metrics(run_dir)
    if not rows:
        rep.note_missing(run_dir / "metrics.jsonl", f"no training metrics of the {name}")
        return
    steps = sorted(rows)
    loss = [(float(s), float(rows[s]["train/loss"])) for s in steps if "train/loss" in rows[s]]
    rep.add(svg_lines({"train/loss": loss}, f"{name}: training loss", "step", "loss"))
    last = rows[steps[-1]]
    keys = [
        k
        for k in (
            "train/lr",
            "train/grad_norm",
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
        rep.add(
            f"<details><summary>{esc(name)} config.yaml</summary><pre>{esc(cfg.read_text())}</pre></details>"
        )


def section_tokenizer(rep: Report) -> None:
    d = rep.root / "tokenizer"
    rep.add("<h2>2. How well the tokenizer reconstructs</h2>")
    mpath = d / "eval" / "metrics.json"
    if mpath.is_file():
        m = read_json(mpath)
        psnr, ssim = m.get("recon_psnr"), m.get("recon_ssim")
        res, clips = m.get("resolution", "unknown resolution"), m.get("clips", "?")
        rep.add(
            f"<p>Reconstruction on {esc(clips)} held-out clips at {esc(res)}: "
            f"<b>PSNR {esc(fmt(psnr))} dB</b>, <b>SSIM {esc(fmt(ssim))}</b>.</p>"
        )
        rep.add(
            table(
                [[k, v if not isinstance(v, (dict, list)) else json.dumps(v)] for k, v in m.items()],
                ["key", "value"],
            )
        )
    else:
        rep.note_missing(mpath, "the tokenizer has not been evaluated")
    media(
        rep,
        d / "eval" / "recon.mp4",
        "left: original, right: reconstruction (held-out clips)",
        "no reconstruction video",
    )
    if d.is_dir():
        _run_folder(rep, d, "tokenizer")
    else:
        rep.note_missing(d, "the tokenizer has not been trained")
    lat = rep.root / "latents"
    if lat.is_dir():
        n = len(list(lat.rglob("*.tar")))
        rep.add(f"<p>Latents: {n} shards in <code>latents/</code>.</p>")
        if (lat / "stats.json").is_file():
            stats = read_json(lat / "stats.json")
            if isinstance(stats, dict):
                rep.add(dict_tables(stats, "Latent totals (latents/stats.json)"))
    else:
        rep.note_missing(lat, "the clips have not been tokenized")


def section_dynamics(rep: Report) -> None:
    e = rep.root / "eval"
    rep.add("<h2>3. What the model imagines</h2>")
    media(rep, e / "rollout.mp4", "imagined frames beside the truth", "no rollout video")
    d = rep.root / "dynamics"
    if d.is_dir():
        _run_folder(rep, d, "dynamics")
    else:
        rep.note_missing(d, "the dynamics model has not been trained")

    rep.add("<h2>4. How the error grows with the horizon</h2>")
    prov = provenance_line(e / "eval.json")
    if prov:
        rep.add(f"<p>Figures below: {esc(prov)}.</p>")
    csv_path = e / "compounding_error.csv"
    rows: list[dict[str, float]] = []
    if csv_path.is_file():
        rows = read_csv_rows(csv_path)
        rep.add(f'<p class="verdict">{esc(compounding_verdict(rows))}</p>')
    png = e / "compounding_error.png"
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
        rep.note_missing(png, "drawn here from the CSV instead")
    else:
        rep.note_missing(png, "no compounding-error figure")
    if csv_path.is_file():
        cols = [c for c in COMPOUNDING_COLUMNS if rows and c in rows[0]]
        cols += [c for c in (rows[0] if rows else {}) if c not in cols]
        rep.add(table([[int(r[c]) if c == "horizon" else r[c] for c in cols] for r in rows], cols))
    else:
        rep.note_missing(csv_path, "the dynamics model has not been evaluated")

    rep.add("<h2>5. Does the model use the actions?</h2>")
    a_path = e / "action_sensitivity.csv"
    if a_path.is_file():
        arows = read_csv_rows(a_path)
        rep.add(f'<p class="verdict">{esc(action_verdict(arows))}</p>')
        rep.add(
            table(
                [[int(r["horizon"]), r["action_sensitivity_psnr"]] for r in arows],
                ["horizon", "action_sensitivity_psnr (dB)"],
            )
        )
    else:
        rep.note_missing(
            a_path, "no action-sensitivity figures: the clips carry no actions, or eval has not run"
        )


def provenance_line(path: Path) -> str:
    """``eval.json`` flattened to one line (``data.clips: 4; checkpoint_step: 500; ...``), or ""."""
    if not path.is_file():
        return ""
    prov = read_json(path)
    if not isinstance(prov, dict):
        return ""

    def flat(d: dict[str, Any], prefix: str = "") -> list[str]:
        out = []
        for k, v in d.items():
            out += flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}: {fmt(v)}"]
        return out

    return "; ".join(flat(prov))


def section_provenance(rep: Report) -> None:
    rep.add("<h2>6. Where the figures come from</h2>")
    p = rep.root / "eval" / "eval.json"
    if p.is_file():
        prov = read_json(p)
        if isinstance(prov, dict):
            rep.add(dict_tables(prov, "eval.json"))
    else:
        rep.note_missing(p, "no provenance: the evaluation has not run")


def build_report(output_dir: str | Path) -> str:
    """The report of a pipeline output folder as one HTML string (nothing written)."""
    root = Path(output_dir).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a folder; pass the output= folder of `vidworld run`")
    rep = Report(root)
    section_curated(rep)
    section_tokenizer(rep)
    section_dynamics(rep)
    section_provenance(rep)
    if rep.missing:
        summary = (
            '<p class="missing">Not in this folder yet (stages not run, or run elsewhere): '
            + ", ".join(f"<code>{esc(m)}</code>" for m in rep.missing)
            + ".</p>"
        )
    else:
        summary = "<p>Every stage's output is present.</p>"
    head = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>vidworld report: '
        f"{esc(root.name)}</title><style>{_CSS}</style></head><body>"
        f"<h1>vidworld report: {esc(root.name)}</h1><p>Output folder <code>{esc(root)}</code>.</p>"
    )
    return head + summary + "".join(rep.parts) + "</body></html>\n"


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
