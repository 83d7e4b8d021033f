"""World-model quality benchmark: train tokenizer and dynamics on the built-in samples, print one table.

    .venv/bin/python bench/worldmodel.py                      # jobs/worldmodel.yaml, ~60 min on 2 cores
    .venv/bin/python bench/worldmodel.py --out bench/out/wm tokenizer.trainer.max_steps=500

It writes the samples (more episodes, photographs and branches than the demo), runs the whole chain
with ``jobs/worldmodel.yaml`` (``vidworld run``: the same stages, W&B runs and HTML report as any
chain) and prints, from the chain's own output files, held-out figures only:

- tokenizer reconstruction PSNR / SSIM per kind of data (Atari games, photographs, synthetic);
- the compounding-error curve (model against copy-last through the tokenizer, latent MSE ratio);
- action sensitivity per horizon; counterfactual PSNR and the action response ratio per horizon;
- each stage's wall time; and whether each target of the quality bar is met, and by how much.

Figures go to ``OUT/worldmodel.json`` beside the chain's folder (``OUT/run``). Never gates CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vidworld.report import (  # noqa: E402
    ATARI_GROUPS,
    NATURAL_GROUPS,
    NATURAL_TARGET_PSNR,
    TOKENIZER_TARGET_PSNR,
    group_psnr,
    read_csv_rows,
)

# The quality bar (issue: "The world model must model the world").
LATENT_RATIO_FROM_2 = 0.5
SENSITIVITY_DB_AT_16 = 1.9
RESPONSE_RATIO = (0.5, 2.0)


def run(cmd: list[str]) -> tuple[str, float]:
    """Run a command, streaming its output; returns (output, seconds). Stops on failure."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        sys.exit(f"worldmodel bench: {cmd[:3]} exited with {proc.returncode}")
    return "".join(lines), time.monotonic() - t0


def csv_rows(path: Path) -> list[dict[str, float]]:
    return read_csv_rows(path) if path.is_file() else []


def mark(ok: bool | None) -> str:
    return "n/a " if ok is None else ("MET " if ok else "MISS")


def summarize(out: Path, stage_seconds: dict[str, float]) -> dict:
    run_dir = out / "run"
    tok = json.loads((run_dir / "tokenizer" / "eval" / "metrics.json").read_text())
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    rows = csv_rows(run_dir / "eval" / "compounding_error.csv")
    sens = csv_rows(run_dir / "eval" / "action_sensitivity.csv")
    cf = csv_rows(run_dir / "eval" / "counterfactual.csv")
    tau = int(ev.get("source_frames_per_latent_frame", 1))
    by_group = tok.get("by_group", {})
    atari, natural = group_psnr(tok, ATARI_GROUPS), group_psnr(tok, NATURAL_GROUPS)
    ratios = [r["model_latent_mse"] / r["copy_last_latent_mse"] for r in rows]
    beats = all(r["model_psnr"] > r["copy_last_recon_psnr"] for r in rows) if rows else None
    last_sens = sens[-1]["action_sensitivity_psnr"] if sens else None
    last_ratio = cf[-1]["action_response_ratio"] if cf else None
    targets = {
        "tokenizer_atari_psnr": (atari, atari is not None and atari >= TOKENIZER_TARGET_PSNR),
        "tokenizer_natural_psnr": (natural, natural is not None and natural >= NATURAL_TARGET_PSNR),
        "beats_copy_last_recon_psnr_every_horizon": (beats, beats),
        "latent_mse_ratio_max_from_h2": (
            max(ratios[1:]) if len(ratios) > 1 else None,
            len(ratios) > 1 and max(ratios[1:]) <= LATENT_RATIO_FROM_2,
        ),
        "action_sensitivity_last_db": (
            last_sens,
            last_sens is not None and last_sens >= SENSITIVITY_DB_AT_16,
        ),
        "action_response_ratio_last": (
            last_ratio,
            last_ratio is not None and RESPONSE_RATIO[0] <= last_ratio <= RESPONSE_RATIO[1],
        ),
    }
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "tokenizer": {"recon_psnr": tok["recon_psnr"], "recon_ssim": tok["recon_ssim"], "by_group": by_group,
                      "step": tok.get("step"), "resolution": tok.get("resolution")},  # fmt: skip
        "dynamics_step": ev.get("checkpoint_step"),
        "source_frames_per_latent_frame": tau,
        "compounding_error": rows,
        "latent_mse_ratio": ratios,
        "action_sensitivity": sens,
        "counterfactual": cf,
        "counterfactual_status": (ev.get("counterfactual") or {}).get("status"),
        "eval_data": ev.get("data"),
        "stage_seconds": stage_seconds,
        "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()},
    }


def print_table(s: dict) -> None:
    tok, tau = s["tokenizer"], s["source_frames_per_latent_frame"]
    print(f"\nworld-model benchmark, {s['date']}, {s['machine']}")
    print(f"tokenizer step {tok['step']} at {tok['resolution']} (held-out clips, PSNR dB / SSIM):")
    for g, v in sorted(tok["by_group"].items()):
        print(f"  {g:12s} {v['recon_psnr']:6.2f} dB  {v['recon_ssim']:.3f}  ({v['clips']} clips)")
    print(f"dynamics step {s['dynamics_step']} on {s['eval_data'].get('clips')} held-out clips; "
          f"horizon in source frames (x{tau} per latent frame):")  # fmt: skip
    sens = {int(r["horizon"]): r["action_sensitivity_psnr"] for r in s["action_sensitivity"]}
    cf = {int(r["horizon"]): r for r in s["counterfactual"]}
    head = ("h", "model dB", "copy-recon dB", "recon dB", "lat ratio", "sens dB", "cf dB", "resp", "resp-rec")
    print("  " + " ".join(f"{h:>13s}" for h in head))
    for r, ratio in zip(s["compounding_error"], s["latent_mse_ratio"], strict=True):
        h = int(r["horizon"])
        c = cf.get(h, {})
        vals = [h * tau, r["model_psnr"], r["copy_last_recon_psnr"], r["recon_psnr"], ratio, sens.get(h),
                c.get("counterfactual_psnr"), c.get("action_response_ratio"),
                c.get("action_response_ratio_recon")]  # fmt: skip
        print("  " + " ".join(f"{'-':>13s}" if v is None else f"{v:13.3f}" for v in vals))
    print("stage wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in s["stage_seconds"].items()))
    print("targets:")
    for k, t in s["targets"].items():
        v = t["value"]
        shown = "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
        print(f"  {mark(t['met'])} {k} = {shown}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "worldmodel"), help="output folder")
    ap.add_argument("--config", default=str(REPO / "jobs" / "worldmodel.yaml"))
    ap.add_argument(
        "--samples",
        default="seed=0 atari=8 atari_max_frames=400 natural=14 synthetic=6 branches=8",
        help="vidworld samples overrides",
    )
    ap.add_argument("overrides", nargs="*", help="chain overrides, e.g. dynamics.trainer.max_steps=100")
    args = ap.parse_args(argv)
    out = Path(args.out).absolute()
    vidworld = [sys.executable, "-m", "vidworld.cli"]
    if not (out / "samples").is_dir():
        run([*vidworld, "samples", str(out / "samples"), *args.samples.split()])
    log, _ = run([*vidworld, "run", args.config, f"input={out / 'samples'}", f"output={out / 'run'}",
                  *args.overrides])  # fmt: skip
    found = re.findall(r"stage '(\w+)' (done|skipped) in ([\d.]+) s", log)
    stage_seconds = {name: float(seconds) for name, _, seconds in found}
    summary = summarize(out, stage_seconds)
    (out / "worldmodel.json").write_text(json.dumps(summary, indent=2))
    print_table(summary)
    print(f"\nfigures: {out / 'worldmodel.json'}; report: {out / 'run' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
