"""A small but real pipeline output folder (layout: vidworld/report.py) for the report and dashboard tests."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np

from pipeline.video import encode_mp4

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
SCRIPT_REASON = "decode error <script>alert(1)</script>"


def frames(t: int = 6, h: int = 16, w: int = 32, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB frames ``[T, H, W, 3]``."""
    return np.random.default_rng(seed).integers(0, 255, (t, h, w, 3), dtype=np.uint8)


def tiny_png(width: int = 4, height: int = 2) -> bytes:
    """A valid grey RGB PNG, written by hand (signature, IHDR, IDAT, IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    raw = b"".join(b"\0" + b"\x80" * (3 * width) for _ in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def make_output(out: Path, png: bool = False) -> Path:
    """Curated data, a tokenizer run with eval, and dynamics eval files; no dynamics run folder, no
    latents (and no compounding-error PNG unless ``png``)."""
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

    tok = out / "tokenizer"
    (tok / "eval").mkdir(parents=True)
    (tok / "metrics.jsonl").write_text(
        "".join(
            json.dumps({"train/step": s, "train/loss": 1.0 / s, "train/lr": 1e-3, "train/mfu": 0.25}) + "\n"
            for s in range(1, 6)
        )
    )
    (tok / "config.yaml").write_text("task: tokenizer\n")
    (tok / "eval" / "recon.mp4").write_bytes(encode_mp4(frames(), fps=8))
    (tok / "eval" / "metrics.json").write_text(
        json.dumps({"recon_psnr": 29.875, "recon_ssim": 0.8125, "resolution": "64x64", "clips": 4})
    )

    ev = out / "eval"
    ev.mkdir()
    (ev / "compounding_error.csv").write_text(COMPOUNDING_CSV)
    (ev / "action_sensitivity.csv").write_text("horizon,action_sensitivity_psnr\n1,0.5\n2,1.25\n3,2.0\n")
    (ev / "rollout.mp4").write_bytes(encode_mp4(frames(seed=1), fps=8))
    if png:
        (ev / "compounding_error.png").write_bytes(tiny_png())
    (ev / "eval.json").write_text(
        json.dumps(
            {
                "data": {"shards": "curated/shards/shard-000000.tar", "clips": 4, "resolution": "64x64"},
                "checkpoint_step": 500,
                "tokenizer": "tokenizer/model.safetensors",
                "machine": "2-core CPU",
                "date": "2026-11-25",
            }
        )
    )
    return out
