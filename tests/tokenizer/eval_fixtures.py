"""Small real inputs for the evaluation tests: clip shards and the latent shards of a tokenizer.

Clips are moving colour blobs (so frames differ over time), written with the real shard writer
and H.264 encoder; latent shards hold what the given tokenizer encodes from the *decoded* clips,
exactly as ``vidworld tokenize`` writes them (tokenizer/tokenize.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.shards import ShardWriter
from runtime.video import decode_mp4, encode_mp4
from tokenizer.tokenize import frames_to_video


def blob_clip(frames: int, size: int, seed: int) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: a soft coloured square moving on a gradient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    colour = rng.uniform(60, 255, 3)
    x0, y0 = rng.uniform(0, size / 2, 2)
    vx, vy = rng.uniform(-1.5, 1.5, 2)
    out = np.empty((frames, size, size, 3), np.uint8)
    for t in range(frames):
        cx, cy = x0 + vx * t + size / 4, y0 + vy * t + size / 4
        mask = np.exp(-(((xx - cx) / 3) ** 2 + ((yy - cy) / 3) ** 2))[..., None]
        base = np.stack([xx * 4, yy * 4, np.full_like(xx, 40)], -1)
        out[t] = np.clip(base * (1 - mask) + colour * mask, 0, 255).astype(np.uint8)
    return out


def write_clip_shards(
    folder: Path,
    splits: list[str],
    frames: int = 9,
    size: int = 16,
    actions: bool = True,
    num_actions: int = 4,
) -> dict[str, np.ndarray]:
    """One clip per entry of ``splits`` into ``folder/shard-*.tar``; returns ``{key: decoded frames}``
    (the frames the loader will return, after H.264)."""
    out = {}
    with ShardWriter(folder, samples_per_shard=3) as w:
        for i, split in enumerate(splits):
            key = f"clip{i:03d}"
            mp4 = encode_mp4(blob_clip(frames, size, seed=i), fps=15, crf=18)
            members = {
                "mp4": mp4,
                "json": {"key": key, "split": split, "num_frames": frames, "width": size, "height": size},
            }
            if actions:
                members["actions.npy"] = np.random.default_rng(100 + i).integers(0, num_actions, frames)
            w.write(key, members)
            out[key] = decode_mp4(mp4)
    return out


@torch.no_grad()
def write_latent_shards(
    folder: Path, clip_folder: Path, tok: torch.nn.Module, splits: list[str], **clip_kw
) -> dict[str, np.ndarray]:
    """Clip shards in ``clip_folder`` and their latents (``tok``) in ``folder``, same keys; returns the
    decoded clip frames by key."""
    clips = write_clip_shards(clip_folder, splits, **clip_kw)
    with ShardWriter(folder, samples_per_shard=3) as w:
        for i, (key, frames) in enumerate(clips.items()):
            video = frames_to_video(torch.from_numpy(frames)[None])
            members: dict = {"json": {"key": key, "split": splits[i]}}
            if tok.is_discrete:
                members["indices.npy"] = tok.encode_indices(video)[0].to(torch.int32).numpy()
            else:
                members["latents.npy"] = tok.encode(video)[0].permute(1, 0, 2, 3).to(torch.float16).numpy()
            if clip_kw.get("actions", True):
                n = clip_kw.get("num_actions", 4)
                members["actions.npy"] = np.random.default_rng(100 + i).integers(0, n, len(frames))
            w.write(key, members)
    return clips


@torch.no_grad()
def write_decoded_shards(
    folder: Path,
    clip_folder: Path,
    tok: torch.nn.Module,
    splits: list[str],
    latent_frames: int,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Clips *made by* ``tok``: random latents ``z`` go to ``folder`` as KEY.latents.npy and their
    decoding ``tok.decode(z)`` to ``clip_folder`` as the clip. For this data the tokenizer is
    nearly perfect (only H.264 and uint8 rounding differ), so pixel metrics respond to the
    latents a model predicts, as they would with a trained tokenizer. Returns decoded clip frames."""
    from tokenizer.metrics import to_uint8

    g = torch.Generator().manual_seed(seed)
    out = {}
    c, _, h, w = tok.latent_shape(1, 16, 16)
    with ShardWriter(clip_folder, samples_per_shard=3) as wc, ShardWriter(folder, samples_per_shard=3) as wl:
        for i, split in enumerate(splits):
            key = f"clip{i:03d}"
            z = (torch.randn(1, c, latent_frames, h, w, generator=g) * 0.5).half()
            frames = to_uint8(tok.decode(z.float()))[0].numpy()
            mp4 = encode_mp4(frames, fps=15, crf=0)
            t = len(frames)
            actions = np.random.default_rng(100 + i).integers(0, 4, t)
            meta = {"key": key, "split": split, "num_frames": t, "width": 16, "height": 16}
            wc.write(key, {"mp4": mp4, "json": meta, "actions.npy": actions})
            latents = z[0].permute(1, 0, 2, 3).numpy()
            wl.write(
                key, {"json": {"key": key, "split": split}, "latents.npy": latents, "actions.npy": actions}
            )
            out[key] = decode_mp4(mp4)
    return out
