"""Tokenizer reconstruction on held-out clips: ``recon_psnr`` / ``recon_ssim`` (EVALUATION.md).

``evaluate_tokenizer(tokenizer, clips, out_dir)`` encodes and decodes held-out clips of the clip
shards and compares ``decode(encode(clip))`` with the clip: uint8 RGB at the clip's own resolution,
data range 255, per frame (``tokenizer.metrics``), then the mean over frames and clips. It writes::

    out_dir/metrics.json   {"recon_psnr": dB, "recon_ssim": 0..1, "resolution": "HxW", "clips": n,
                            "frames_per_clip": T, "split": "heldout", "keys": [...], "tokenizer": path,
                            "step": int | null, "inputs": {...}, "date": ISO-8601 UTC, "machine": str,
                            "by_group": {GROUP: {"recon_psnr", "recon_ssim", "clips"}},
                            "codebook_usage" / "codebook_perplexity" (FSQ tokenizers only)}
    out_dir/recon.mp4      side by side, original | reconstruction, a few clips one after another, at
                           the frame rate the first clip's metadata records (else ``fps``)

(file names: ``METRICS_FILE``, ``RECON_VIDEO``); ``is_complete(run_dir, out_dir)`` says whether they
are of the tokenizer run's current weights and of the clip shards as they are now (``inputs``: see
``eval_inputs``).

Which clips: those of ``split`` in the shards, grouped by the folder their source video lies in
(``breakout``, ``pong``, ``natural``...: ``source_group``), ranked within each group by a hash of
``(seed, key)`` and the first ``max_clips`` of each group taken, so the set is fixed by the config
and its seed, every kind of data is measured (``by_group``: Atari and photographs apart, never one
number averaged over both), and one streaming pass holds at most ``max_clips`` clips per group.
``recon_psnr`` is the mean over all chosen clips. A clip whose frame count is not ``1 + k * tau`` is cut
to the longest such prefix. ``select_samples`` and ``machine_name`` are shared with
``dynamics.evaluate``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import heapq
import json
import os
import platform
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.loader import LoaderConfig, make_loader
from pipeline.shards import clip_fps
from runtime.config import load_config
from runtime.files import atomic_write_bytes, atomic_write_text
from runtime.fingerprint import safetensors_sha256, shards_fingerprint
from runtime.progress import Progress
from runtime.video import encode_mp4
from tokenizer.export import load_tokenizer
from tokenizer.metrics import codebook_usage, from_uint8, psnr, ssim, to_uint8

# The files this stage writes into its output folder.
METRICS_FILE = "metrics.json"
RECON_VIDEO = "recon.mp4"


@dataclasses.dataclass
class TokenizerEvalConfig:
    """``python -m tokenizer.evaluate [CONFIG] tokenizer=... clips=... output=...`` (or call
    ``evaluate_tokenizer``)."""

    tokenizer: str = "???"  # an exported tokenizer folder or a tokenizer training run folder
    clips: str = "???"  # curated clip shards (folder, glob or brace list)
    output: str = "???"  # folder for metrics.json and recon.mp4
    split: str = "heldout"  # "heldout" for every reported figure; "train" only to diagnose overfit
    max_clips: int = 8
    video_clips: int = 3  # clips shown one after another in recon.mp4
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    chunk_frames: int | None = None  # stream long clips through the tokenizer this many frames at a time
    fps: float = 15.0  # recon.mp4's rate when the clips' metadata records none (curated clips do)


def tokenizer_identity(tokenizer_path: str | os.PathLike) -> dict[str, Any] | None:
    """Which tokenizer weights an evaluation used: a training run's ``runtime.trained.run_identity``
    (step and data record), an export's sha256 of its weights; ``None`` when there are none."""
    from runtime.trained import run_identity  # here: it imports the training runtime
    from tokenizer.export import weights_file

    identity = run_identity(tokenizer_path)
    if identity is not None:
        return identity
    try:
        return {"sha256": safetensors_sha256(weights_file(tokenizer_path))}
    except (OSError, ValueError):
        return None


def eval_inputs(tokenizer_path: str | os.PathLike, clip_shards: str) -> dict[str, Any]:
    """What an evaluation is of (``metrics.json``'s ``inputs``): the tokenizer (``tokenizer_identity``)
    and the content of the clip shards (``runtime.fingerprint.shards_fingerprint``; ``None`` when
    they cannot be read)."""
    try:
        clips = shards_fingerprint(clip_shards)
    except (OSError, ValueError):
        clips = None
    return {"tokenizer": tokenizer_identity(tokenizer_path), "clips": clips}


def is_complete(run_dir: str | os.PathLike, output: str | os.PathLike) -> bool:
    """Whether ``output`` holds an evaluation of the tokenizer run ``run_dir`` as it is now: its
    ``metrics.json`` is of the step of the run's exported weights, of this run (trained again, it
    has another ``run_identity``) and of the clip shards (``shards``) as they are now, and
    ``recon.mp4`` is there. A ``metrics.json`` of an older version, without ``inputs``, is judged by
    the step alone."""
    from runtime.trained import trained_step  # here: it imports the training runtime

    out = Path(output)
    try:
        metrics = json.loads((out / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return False
    step = trained_step(run_dir)
    return (
        step is not None
        and isinstance(metrics, dict)
        and metrics.get("step") == step
        and (out / RECON_VIDEO).is_file()
        and ("inputs" not in metrics or metrics["inputs"] == eval_inputs(run_dir, str(metrics.get("shards"))))
    )


def machine_name() -> str:
    """``host (CPU model or GPU name)``: which machine made a figure."""
    host = platform.node() or "unknown-host"
    if torch.cuda.is_available():
        return f"{host} ({torch.cuda.get_device_name(0)})"
    return f"{host} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _rank(seed: int, key: str) -> str:
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def select_samples(samples: Iterable[dict[str, Any]], max_clips: int, seed: int) -> list[dict[str, Any]]:
    """The ``max_clips`` samples with the smallest ``sha1(seed:key)``, in that order.

    Streams: holds at most ``max_clips`` samples. The choice depends only on the keys present
    and the seed, not on shard order or count.
    """
    return select_by_group(samples, max_clips, seed, group=lambda meta: "")


class _Neg:
    """Reverses the order of a heap entry, so ``heapq`` (a min-heap) keeps the smallest ranks."""

    __slots__ = ("item",)

    def __init__(self, item: tuple[str, int, dict[str, Any]]) -> None:
        self.item = item

    def __lt__(self, other: _Neg) -> bool:
        return self.item[:2] > other.item[:2]


def source_group(meta: dict[str, Any]) -> str:
    """The kind of data a clip is, for per-kind figures: the name of its source's folder."""
    source = str(meta.get("source", ""))
    return Path(source.split("://")[-1]).parent.name or "other"


def select_by_group(
    samples: Iterable[dict[str, Any]],
    max_clips: int,
    seed: int,
    group: Callable[[dict[str, Any]], str] = source_group,
) -> list[dict[str, Any]]:
    """``select_samples`` within each group (``group(meta)``, by default ``source_group``): up to
    ``max_clips`` clips of every group, groups in name order. Holds at most ``max_clips`` per group."""
    if max_clips < 1:
        raise ValueError(f"max_clips={max_clips}: evaluate at least one clip")
    heaps: dict[str, list[_Neg]] = {}
    for i, s in enumerate(samples):
        heap = heaps.setdefault(group(s.get("meta", {})), [])
        item = (_rank(seed, s["key"]), i, s)
        if len(heap) < max_clips:
            heapq.heappush(heap, _Neg(item))
        elif item[0] < heap[0].item[0]:
            heapq.heapreplace(heap, _Neg(item))
    return [n.item[2] for g in sorted(heaps) for n in sorted(heaps[g], key=lambda n: n.item[0])]


def iter_split(shards: str, split: str, require: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every sample of ``split`` in ``shards`` as one dict: ``key``, ``meta`` and the per-sample
    arrays of a loader batch of one (``frames`` uint8 [T, H, W, 3], ``actions``, ``latents``...)."""
    cfg = LoaderConfig(
        shards=shards,
        batch_size=1,
        resampled=False,
        shuffle_buffer=0,
        split=split,
        require=list(require or []),
    )
    for batch in make_loader(cfg):
        out: dict[str, Any] = {"key": batch["key"][0], "meta": batch["meta"][0]}
        for name, value in batch.items():
            if isinstance(value, torch.Tensor):
                out[name] = value[0]
        yield out


def valid_frames(frames: int, tau: int) -> int:
    """The longest ``1 + k * tau <= frames``: what a causal tokenizer with compression ``tau`` takes."""
    return 1 + ((frames - 1) // tau) * tau


@torch.no_grad()
def evaluate_tokenizer(
    tokenizer_path: str | os.PathLike,
    clip_shards: str,
    out_dir: str | os.PathLike,
    split: str = "heldout",
    max_clips: int = 8,
    video_clips: int = 3,
    seed: int = 0,
    device: str = "auto",
    chunk_frames: int | None = None,
    fps: float = 15.0,
) -> dict[str, Any]:
    """Reconstruction PSNR/SSIM of ``tokenizer_path`` on ``split`` clips of ``clip_shards``.

    Returns the dict written to ``out_dir/metrics.json`` (see the module docstring); also writes
    ``out_dir/recon.mp4``. Raises ``ValueError`` when the split has no clips.
    """
    from runtime.trained import trained_step  # here: it imports the training runtime

    dev = resolve_device(device)
    tok = load_tokenizer(tokenizer_path, device=dev)
    tau = tok.temporal_compression
    chosen = select_by_group(iter_split(clip_shards, split), max_clips, seed)
    if not chosen:
        raise ValueError(
            f"no {split!r} clips in {clip_shards}: evaluate on shards curated with a held-out split "
            "(curate heldout_fraction > 0), or pass split=train to diagnose"
        )
    progress = Progress("tokenizer eval", len(chosen), unit="clips")
    psnrs, ssims, keys, shown, resolutions, indices, groups = [], [], [], [], set(), [], []
    for s in chosen:
        frames = s["frames"]  # uint8 [T, H, W, 3]
        frames = frames[: valid_frames(frames.shape[0], tau)]
        video = from_uint8(frames[None]).to(dev)
        if tok.is_discrete:
            idx = tok.encode_indices(video, chunk_frames=chunk_frames)
            indices.append(idx.cpu())
            recon_video = tok.decode_indices(idx, chunk_frames=chunk_frames)
        else:
            recon_video = tok.decode(tok.encode(video, chunk_frames=chunk_frames), chunk_frames=chunk_frames)
        recon = to_uint8(recon_video)[0].cpu()
        psnrs.append(psnr(frames, recon))
        ssims.append(ssim(frames, recon))
        keys.append(s["key"])
        groups.append(source_group(s["meta"]))
        resolutions.add(f"{frames.shape[1]}x{frames.shape[2]}")
        if len(shown) < video_clips:
            shown.append(np.concatenate([frames.numpy(), recon.numpy()], axis=2))
        progress.set(psnr=round(psnrs[-1], 2))
        progress.update(1)
    progress.close()
    metrics: dict[str, Any] = {
        "recon_psnr": float(np.mean(psnrs)),
        "recon_ssim": float(np.mean(ssims)),
        "resolution": ",".join(sorted(resolutions)),
        "clips": len(keys),
        "split": split,
        "keys": keys,
        "shards": str(clip_shards),
        "tokenizer": str(tokenizer_path),
        "step": trained_step(tokenizer_path),
        "inputs": eval_inputs(tokenizer_path, clip_shards),
        "date": utc_now(),
        "machine": machine_name(),
        "seed": seed,
        "by_group": {
            g: {
                "recon_psnr": float(np.mean([p for p, gg in zip(psnrs, groups, strict=True) if gg == g])),
                "recon_ssim": float(np.mean([v for v, gg in zip(ssims, groups, strict=True) if gg == g])),
                "clips": groups.count(g),
            }
            for g in sorted(set(groups))
        },
    }
    if tok.is_discrete:
        usage = codebook_usage(torch.cat([i.flatten() for i in indices]), int(tok.codebook_size))
        metrics["codebook_usage"] = usage["usage"]
        metrics["codebook_perplexity"] = usage["perplexity"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Clips of other sizes cannot share one video stream: show those of the first clip's size.
    size = shown[0].shape[1:]
    video_frames = np.concatenate([v for v in shown if v.shape[1:] == size])
    # It plays at the rate its first clip (the first chosen) was curated at.
    video_fps = clip_fps(chosen[0]["meta"], fps)
    atomic_write_bytes(out / RECON_VIDEO, encode_mp4(np.ascontiguousarray(video_frames), fps=video_fps))
    atomic_write_text(out / METRICS_FILE, json.dumps(metrics, indent=2))
    return metrics


def cli(config_path: str | None, overrides: list[str]) -> int:
    """``python -m tokenizer.evaluate [CONFIG] tokenizer=DIR clips=CURATED output=DIR``."""
    cfg = load_config(TokenizerEvalConfig, config_path, overrides)
    try:
        m = evaluate_tokenizer(
            cfg.tokenizer,
            cfg.clips,
            cfg.output,
            cfg.split,
            cfg.max_clips,
            cfg.video_clips,
            cfg.seed,
            cfg.device,
            cfg.chunk_frames,
            cfg.fps,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"tokenizer evaluate: {e}", file=sys.stderr)
        return 1
    print(
        f"tokenizer eval: recon_psnr {m['recon_psnr']:.2f} dB, recon_ssim {m['recon_ssim']:.4f} at "
        f"{m['resolution']} on {m['clips']} {m['split']} clips\n  {Path(cfg.output) / METRICS_FILE}\n"
        f"  {Path(cfg.output) / RECON_VIDEO}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    # python -m tokenizer.evaluate [CONFIG.yaml] tokenizer=DIR clips=CURATED output=DIR [key=value ...]
    args = sys.argv[1:]
    config = args.pop(0) if args and "=" not in args[0] else None
    sys.exit(cli(config, args))
