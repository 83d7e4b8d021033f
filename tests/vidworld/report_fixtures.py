"""A small but real pipeline output folder (layout: vidworld/report.py) for the report and dashboard tests."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from runtime.video import encode_mp4

COMPOUNDING_HEADER = (
    "horizon,model_psnr,copy_last_psnr,copy_last_recon_psnr,recon_psnr,model_latent_mse,copy_last_latent_mse"
)
# The model beats copy-last at h=1,2 and loses at h=3 (model_psnr below copy_last_recon_psnr).
COMPOUNDING_CSV = (
    COMPOUNDING_HEADER
    + """
1,31.25,29.5,28.75,33.5,0.0125,0.0250
2,27.5,26.0,25.5,33.25,0.0200,0.0300
3,22.125,24.0,23.5,33.0,0.0400,0.0350
"""
)
COUNTERFACTUAL_CSV = """horizon,factual_psnr,counterfactual_psnr,counterfactual_latent_mse,true_ab_psnr,\
action_response_ratio,action_response_ratio_recon
1,30.5,29.0,0.02,36.0,0.25,0.3
2,27.0,25.5,0.03,34.5,0.375,0.4
3,24.0,22.625,0.045,33.5,0.4375,0.5
"""
SCRIPT_REASON = "decode error <script>alert(1)</script>"


def frames(t: int = 6, h: int = 16, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames ``[T, H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def counterfactual_rows() -> list[dict[str, float]]:
    """COUNTERFACTUAL_CSV's rows as dicts, as eval.json's counterfactual object holds them."""
    header, *lines = COUNTERFACTUAL_CSV.splitlines()
    return [dict(zip(header.split(","), map(float, line.split(",")), strict=True)) for line in lines]


def scene(t: int = 6, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB frames ``[T, H, W, 3]`` of a square moving over a gradient: a video a reader can follow."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        out[i] = np.stack([x * 255 // w, y * 255 // h, np.full_like(x, 60 + 30 * seed)], axis=-1)
        top, left = h // 4 + i * 2, (w // 8 + 5 * i + 9 * seed) % (w - w // 4)
        out[i, top : top + h // 4, left : left + w // 4] = (250, 250, 250)
    return out


def side_by_side(*panels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(panels, axis=2))


def training_run(run_dir: Path, steps: range, step_time_s: float, task: str) -> None:
    """``metrics.jsonl`` (one row every ``steps.step``) and ``config.yaml`` of a training run folder."""
    run_dir.mkdir(parents=True)
    rows = (
        {
            "train/step": s,
            "train/loss": 1.0 / s,
            "train/lr": 1e-3,
            "train/mfu": 0.25,
            "train/step_time_s": step_time_s,
        }
        for s in steps
    )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "config.yaml").write_text(f"task: {task}\n")


def tiny_png(width: int = 4, height: int = 2) -> bytes:
    """A valid grey RGB PNG, written by hand (signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def make_output(
    out: Path, png: bool = False, dynamics_run: bool = False, counterfactual: bool = True
) -> Path:
    """Curated data, stage configs, a tokenizer run (600 steps, 2 min) with eval, and dynamics eval files
    with counterfactuals; no latents, no dynamics run folder unless ``dynamics_run`` (1500 steps,
    2 min 30 s), no compounding-error PNG unless ``png``, no counterfactual files unless ``counterfactual``
    (eval.json then says it was skipped)."""
    cur = out / "curated"
    (cur / "shards").mkdir(parents=True)
    (cur / "shards" / "shard-000000.tar").write_bytes(b"\0" * 1024)
    rows = [
        {
            "source": "a.mp4",
            "status": "ok",
            "reason": "",
            "clips": 12,
            "split": "train",
            "probe": {"width": 64, "height": 48},
        },
        {"source": "b.mp4", "status": "failed", "reason": SCRIPT_REASON, "clips": 0, "probe": None},
        {
            "source": "c.mp4",
            "status": "skipped",
            "reason": "too short (0.4 s < 1 s)",
            "clips": 0,
            "probe": None,
        },
    ]
    (cur / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = {
        "inputs": 3,
        "inputs_by_status": {"ok": 1, "skipped": 1, "failed": 1},
        "clips": 12,
        "shards": 1,
        "source_seconds": 30.5,
        "clip_seconds": 24.0,
        "clips_filtered": {"static": 7},
        "source_resolutions": {"64x48": 1},
    }
    (cur / "stats.json").write_text(json.dumps(stats))
    (out / "configs").mkdir()
    (out / "configs" / "pipeline.yaml").write_text("output: run1\n")
    (out / "configs" / "tokenizer.yaml").write_text("task: tokenizer\n")

    tok = out / "tokenizer"
    training_run(tok, range(100, 700, 100), 0.2, "tokenizer")
    (tok / "eval").mkdir()
    (tok / "eval" / "recon.mp4").write_bytes(encode_mp4(frames(), fps=8))
    (tok / "eval" / "metrics.json").write_text(
        json.dumps(
            {
                "recon_psnr": 29.875,
                "recon_ssim": 0.8125,
                "resolution": "64x64",
                "clips": 4,
                # Atari apart from photographs (tokenizer/evaluate.py): Atari's mean is 29.875.
                "by_group": {
                    "breakout": {"recon_psnr": 29.5, "recon_ssim": 0.8, "clips": 2},
                    "pong": {"recon_psnr": 30.25, "recon_ssim": 0.825, "clips": 2},
                    "natural": {"recon_psnr": 24.0, "recon_ssim": 0.6, "clips": 2},
                },
            }
        )
    )
    if dynamics_run:
        training_run(out / "dynamics", range(100, 1600, 100), 0.1, "dynamics")

    ev = out / "eval"
    ev.mkdir()
    (ev / "compounding_error.csv").write_text(COMPOUNDING_CSV)
    (ev / "action_sensitivity.csv").write_text("horizon,action_sensitivity_psnr\n1,0.5\n2,1.25\n3,2.0\n")
    (ev / "latent_actions.csv").write_text(
        "horizon,latent_action_psnr,latent_sensitivity_psnr\n1,30.5,0.25\n2,29.0,0.5\n3,28.0,0.75\n"
    )
    (ev / "disagreement.csv").write_text("horizon,ensemble_disagreement\n1,0.0125\n2,0.03125\n3,0.0625\n")
    training_run(out / "lam", range(10, 31, 10), 0.05, "lam")
    lam_eval = out / "lam" / "eval"
    lam_eval.mkdir(parents=True)
    scores = {
        "clips": 4,
        "n": 60,
        "nmi": 0.4,
        "nmi_shuffled": 0.01,
        "probe_balanced_accuracy": 0.8,
        "shuffled_probe_balanced_accuracy": 0.33,
        "probe_accuracy": 0.85,
        "shuffled_probe_accuracy": 0.5,
    }
    (lam_eval / "metrics.json").write_text(
        json.dumps(
            {
                "num_codes": 8,
                "lam_step": 10,
                "split": "heldout",
                "games": {"breakout": scores},
                "overall": scores,
            }
        )
    )
    (ev / "rollout.mp4").write_bytes(encode_mp4(side_by_side(scene(), scene(seed=1)), fps=8))
    if png:
        (ev / "compounding_error.png").write_bytes(tiny_png())
    cf_status: dict = {"status": "off", "rows": [], "games": {}}  # no branch files given
    if counterfactual:
        (ev / "counterfactual.csv").write_text(COUNTERFACTUAL_CSV)
        cf = [
            scene(seed=2),
            scene(seed=3),
            scene(seed=1),
            scene(seed=0),
        ]  # true A | model A | true B | model B
        (ev / "counterfactual.mp4").write_bytes(encode_mp4(side_by_side(*cf), fps=8))
        rows = counterfactual_rows()
        cf_status = {
            "status": "computed",
            "branches": 4,
            "resolution": "64x64",
            "note": "",
            "rows": rows,
            # Pong's first horizon: identical true futures, no ratio (null, as dynamics/evaluate.py writes).
            "games": {
                "ALE/Breakout-v5": rows,
                "ALE/Pong-v5": [
                    {**r, "action_response_ratio": 0.5 if r["horizon"] > 1 else None} for r in rows
                ],
            },
        }
    (ev / "eval.json").write_text(
        json.dumps(
            {
                "data": {"shards": "curated/shards/shard-000000.tar", "clips": 4, "resolution": "64x64"},
                "checkpoint_step": 500,
                "tokenizer": "tokenizer/model.safetensors",
                "machine": "2-core CPU",
                "date": "2026-11-25",
                "action_sensitivity": "computed",
                "counterfactual": cf_status,
            }
        )
    )
    return out
