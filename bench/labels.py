"""Label efficiency: how much of the full-label dynamics model's margin over copy-last a model keeps
when only a fraction of the Atari clips carry their actions.

    .venv/bin/python bench/labels.py demo_out                       # a finished `vidworld run` folder
    .venv/bin/python bench/labels.py demo_out --fraction 0.1 --steps 400
    .venv/bin/python bench/labels.py demo_out --variants full --set model.relative_loss=true --tag rel

On the latents, tokenizer and latent action model of a finished chain (its ``configs/dynamics.yaml``
and ``configs/evaluate.yaml``), it trains the dynamics model three times with the same recipe and
steps, and evaluates each on the same held-out clips under their recorded actions:

- ``full``: every Atari clip labelled, latent actions for the clips without labels (the chain's recipe);
- ``fraction+lam``: only ``--fraction`` of the clips keep their labels (``model.label_fraction``, by
  a hash of the clip key); every other clip trains on its latent actions;
- ``fraction``: the same labels, no latent action model (unlabelled clips train without actions).

Margin over copy-last at each horizon: ``copy_last_latent_mse - model_latent_mse`` (latent units)
and ``model_psnr - copy_last_recon_psnr`` (dB through the tokenizer); the target (Dreamer 4's
label-efficiency figure) is ``fraction+lam`` keeping >= 85% of ``full``'s latent margin, mean over
horizons. Figures go to ``OUT/bench_labels/labels.json`` (``labels_TAG.json`` with ``--tag``). Never gates CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vidworld.report import read_csv_rows  # noqa: E402

VARIANTS = {
    "full": [],
    "fraction+lam": ["model.label_fraction={fraction}"],
    "fraction": ["model.label_fraction={fraction}", "model.lam=null", "model.latent_actions=0"],
}


def run(cmd: list[str]) -> float:
    t = time.monotonic()
    print("bench:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return time.monotonic() - t


def margins(eval_dir: Path) -> dict[str, object]:
    rows = read_csv_rows(eval_dir / "compounding_error.csv")
    latent = [r["copy_last_latent_mse"] - r["model_latent_mse"] for r in rows]
    db = [r["model_psnr"] - r["copy_last_recon_psnr"] for r in rows]
    return {
        "latent_margin": latent,
        "db_margin": db,
        "mean_latent_margin": sum(latent) / len(latent),
        "mean_db_margin": sum(db) / len(db),
        "latent_ratio": [r["model_latent_mse"] / r["copy_last_latent_mse"] for r in rows],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="a finished `vidworld run` output folder (with a lam stage)")
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=None, help="dynamics steps (default: the chain's)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="an override for every variant's training (e.g. model.relative_loss=true); repeatable",
    )  # fmt: skip
    ap.add_argument("--tag", default="", help="suffix of the variants' folders (to keep several recipes)")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    dyn_cfg, eval_cfg = out / "configs" / "dynamics.yaml", out / "configs" / "evaluate.yaml"
    for p in (dyn_cfg, eval_cfg, out / "lam"):
        if not p.exists():
            raise SystemExit(f"{p} is missing: run the chain with a lam stage first (make demo)")
    bench = out / "bench_labels"
    vw = [sys.executable, "-m", "vidworld.cli"]
    results: dict[str, object] = {}
    for name in args.variants.split(","):
        folder = bench / (name.replace("+", "_") + (f"_{args.tag}" if args.tag else ""))
        extra = [o.format(fraction=args.fraction) for o in VARIANTS[name]] + args.set
        if args.steps:
            extra += [f"trainer.max_steps={args.steps}", f"trainer.save_every={args.steps}"]
        train_s = run(
            [*vw, "train", str(dyn_cfg), f"run_dir={folder / 'dynamics'}", "wandb.mode=disabled", *extra]
        )
        eval_s = run([*vw, "evaluate", str(eval_cfg), f"checkpoint={folder / 'dynamics'}",
                      f"output={folder / 'eval'}", "wandb.mode=disabled", "branches=''"])  # fmt: skip
        results[name] = {**margins(folder / "eval"), "train_s": train_s, "eval_s": eval_s, "overrides": extra}
    summary: dict[str, object] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({platform.machine()}, {platform.processor() or 'cpu'})",
        "fraction": args.fraction,
        "variants": results,
    }
    full = results.get("full")
    print(
        f"\nlabel efficiency, {args.fraction:.0%} of the clips labelled (held-out clips, recorded actions):"
    )
    print(
        f"{'variant':>14} {'latent margin':>14} {'dB margin':>10} {'of full':>8}  MSE / copy-last per h"
    )
    for name, r in results.items():
        share = (
            r["mean_latent_margin"] / full["mean_latent_margin"]
            if full and full["mean_latent_margin"]
            else None
        )
        r["share_of_full"] = share
        ratios = " ".join(f"{v:.2f}" for v in r["latent_ratio"])
        pct = f"{share:.0%}" if share is not None else "n/a"
        print(f"{name:>14} {r['mean_latent_margin']:>14.4g} {r['mean_db_margin']:>+10.3f} {pct:>8}  {ratios}")
    if full and "fraction+lam" in results:
        share = results["fraction+lam"]["share_of_full"]
        met = share is not None and full["mean_latent_margin"] > 0 and share >= 0.85
        summary["target_met"] = bool(met)
        print(f"target (>= 85% of the full-label margin): {'met' if met else 'missed'}")
    bench.mkdir(parents=True, exist_ok=True)
    figures = bench / (f"labels_{args.tag}.json" if args.tag else "labels.json")
    figures.write_text(json.dumps(summary, indent=2))
    print(f"figures: {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
