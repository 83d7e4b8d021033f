"""``vidworld tokenize``: encode curated clip shards into latent shards, with Ray Data.

Dynamics training reads latents, never re-running the encoder. One Ray task per input shard;
output shard ``i`` holds the clips of input shard ``i`` (so names and contents are deterministic
and a rerun skips shards already written). Each output sample keeps the clip's key and has::

    KEY.json           the clip's metadata plus {"tokenizer": {...interface...}, "latent_shape": [...]}
    KEY.latents.npy    continuous tokenizers: float16 [T', C, h, w] (latent frames first)
    KEY.indices.npy    FSQ tokenizers: int32 [T', h, w]
    KEY.actions.npy    per source frame, as in the clip shard (when the clip has actions)
    KEY.rewards.npy    likewise
    KEY.terminals.npy  likewise (when the clip has episode ends; pipeline.shards)

Latent frame 0 codes source frame 0 alone; latent frame i > 0 codes source frames
``1 + (i-1)*t .. i*t`` (``t`` = temporal compression). The folder gets ``manifest.jsonl`` (one row
per input shard: ``source``, ``status``, ``reason``, ``clips``, ``corrupt``, ``sha256`` of the latent
shard written) and ``stats.json`` (totals, the tokenizer, ``latent_shape``, ``latent_std``, the
``fingerprint`` of the tokenizer weights and settings and of the input shards, ``shard_sha256``,
``complete``), like curation's. ``is_complete(cfg)`` says whether a folder holds this job's finished
output for the inputs as they are now; ``latent_geometry(folder)`` reads the dynamics model's side of
the tokenizer seam from the stats.

Inputs and weights are identified by their content: the input shards by
``runtime.fingerprint.shards_fingerprint`` (the sha256 curation recorded for each shard, so a check
reads no shard), the tokenizer by the sha256 of its weights file. When the input shards changed since
the folder was written (the clips were curated again), or the tokenizer at the same path has other
weights (it was trained again), the run removes the old latent shards and rows first and tokenizes
everything again, so old and new clips are never mixed. Latents of a tokenizer at another path, or
of other settings, are refused, never overwritten. The job holds the output folder's writer lock
(``runtime.files.folder_lock``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.curate import iter_shard
from pipeline.loader import PER_FRAME, resolve_shards
from pipeline.manifest import MANIFEST_FILE, STATS_FILE, read_stats, write_manifest
from pipeline.shards import SHARD_PATTERN, SHARDS_DIR, add_sample, index_entry, shard_paths, write_index
from runtime.files import atomic_open, atomic_write_text, folder_lock
from runtime.fingerprint import (
    SHARD_HASHES,
    HashingWriter,
    file_sha256,
    safetensors_sha256,
    shards_fingerprint,
)
from runtime.progress import Progress
from runtime.stage import stage_cli
from runtime.video import decode_mp4

PER_FRAME_MEMBERS = tuple(f"{name}.npy" for name in PER_FRAME)  # copied unchanged into latent shards


@dataclasses.dataclass
class TokenizeConfig:
    input: str = "???"  # curated dataset folder (DIR with shards/) or a shard glob / brace list
    output: str = "???"  # latent dataset folder; output/shards/shard-NNNNNN.tar
    tokenizer: str = "???"  # an exported tokenizer folder or a tokenizer training run folder
    batch_size: int = 8  # clips encoded together
    chunk_frames: int | None = None  # stream long clips through the encoder this many frames at a time
    device: str = "auto"  # auto | cpu | cuda
    num_cpus: int | None = None  # local Ray cluster size (ignored with RAY_ADDRESS)
    num_gpus_per_task: float = 0.0  # >0 places each encoder on a GPU
    concurrency: int = 1  # encoder actors (each holds one tokenizer copy)
    progress_interval: float = 5.0


def frames_to_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, T, H, W]`` in [-1, 1]."""
    return frames.permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def tokenizer_info(tok: Any, path: str) -> dict[str, Any]:
    """What a latent shard needs to say about the tokenizer that made it."""
    return {
        "path": str(path),
        "temporal_compression": tok.temporal_compression,
        "spatial_compression": tok.spatial_compression,
        "latent_channels": tok.latent_channels,
        "is_discrete": tok.is_discrete,
        "codebook_size": tok.codebook_size,
        "levels": tok.levels,
    }


def _settings(cfg: TokenizeConfig) -> str:
    """The settings that change latents (besides the weights)."""
    return json.dumps({"chunk_frames": cfg.chunk_frames})


def _fingerprint(cfg: TokenizeConfig) -> str:
    """The tokenizer weights (the sha256 of their bytes) and the settings that change latents."""
    from tokenizer.export import weights_file

    text = json.dumps([safetensors_sha256(weights_file(cfg.tokenizer)), _settings(cfg)])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def inputs_fingerprint(cfg: TokenizeConfig) -> str:
    """The input shards as they are now, by content (``runtime.fingerprint.shards_fingerprint``)."""
    return shards_fingerprint(cfg.input)


def _full_fingerprint(cfg: TokenizeConfig) -> str:
    return f"{_fingerprint(cfg)}+{inputs_fingerprint(cfg)}"


def is_complete(cfg: TokenizeConfig) -> bool:
    """Whether ``cfg.output`` holds this job's finished output: the stats say complete, were made with
    this tokenizer's weights as they are now and these settings, from the input shards as they are now
    (``inputs_fingerprint``: their content, not their names), and every shard they count is there."""
    out = Path(cfg.output)
    try:
        stats = read_stats(out / STATS_FILE)
        fingerprint = _full_fingerprint(cfg)
    except (OSError, ValueError):
        return False
    return (
        bool(stats.get("complete"))
        and stats.get("fingerprint") == fingerprint
        and all(p.is_file() for p in shard_paths(out, int(stats.get("shards", -1))))
    )


def latent_geometry(folder: str | os.PathLike) -> dict[str, Any]:
    """The dynamics model's config keys that follow from the latents in ``folder`` (this job's
    output): ``temporal_compression``, ``head`` (``maskgit`` for FSQ indices, ``diffusion`` for
    continuous latents), ``codebook_size`` or ``latent_channels``, ``latent_height`` and
    ``latent_width`` (latent cells), and ``latent_scale`` (1 / the latents' std, continuous only).
    Empty when the folder has no stats yet."""
    try:
        stats = read_stats(Path(folder) / STATS_FILE)
    except FileNotFoundError:
        return {}
    tok, shape = stats.get("tokenizer") or {}, stats.get("latent_shape")
    geo: dict[str, Any] = {}
    if tok:
        geo["temporal_compression"] = tok["temporal_compression"]
        geo["head"] = "maskgit" if tok["is_discrete"] else "diffusion"
        if tok["is_discrete"]:
            geo["codebook_size"] = tok["codebook_size"]
        else:
            geo["latent_channels"] = tok["latent_channels"]
    if shape:  # [T', h, w] (indices) or [T', C, h, w] (latents)
        geo["latent_height"], geo["latent_width"] = shape[-2], shape[-1]
    if stats.get("latent_std"):
        geo["latent_scale"] = round(1.0 / max(float(stats["latent_std"]), 1e-6), 6)
    return geo


class ShardEncoder:
    """A Ray Data actor: loads the tokenizer once, then encodes whole shards (one row = one shard)."""

    def __init__(self, cfg: TokenizeConfig) -> None:
        from tokenizer.export import load_tokenizer

        torch.set_num_threads(max(1, int(torch.get_num_threads())))
        device = cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cfg, self.device = cfg, torch.device(device)
        self.tok = load_tokenizer(cfg.tokenizer, device=self.device)
        self.info = tokenizer_info(self.tok, cfg.tokenizer)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = [
            self.encode_shard(src, dst) for src, dst in zip(batch["source"], batch["target"], strict=True)
        ]
        return {"row": [json.dumps(r) for r in rows]}

    @torch.no_grad()
    def _encode(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        video = frames_to_video(torch.from_numpy(np.stack(frames)).to(self.device))
        if self.tok.is_discrete:
            z = self.tok.encode_indices(video, chunk_frames=self.cfg.chunk_frames)  # [B, T', h, w]
            return [x.to(torch.int32).cpu().numpy() for x in z]
        z = self.tok.encode(video, chunk_frames=self.cfg.chunk_frames)  # [B, C, T', h, w]
        return [x.permute(1, 0, 2, 3).to(torch.float16).cpu().numpy() for x in z]

    def encode_shard(self, source: str, target: str) -> dict[str, Any]:
        row = {
            "source": source,
            "status": "ok",
            "reason": "",
            "clips": 0,
            "corrupt": 0,
            "tokenizer": self.info,
        }
        try:
            samples = iter_shard(source)
        except (OSError, tarfile.TarError, ValueError) as e:
            return {**row, "status": "failed", "reason": f"cannot read the shard ({type(e).__name__}: {e})"}
        decoded: list[tuple[str, dict[str, bytes], np.ndarray]] = []
        problems: list[str] = []
        for key, members in samples:
            try:
                decoded.append((key, members, decode_mp4(members["mp4"])))
            except Exception as e:  # any decode failure means the same: skip this clip, count it
                problems.append(f"{key}: {type(e).__name__}: {e}")
        # Encode clips of equal shape together.
        latents: dict[str, np.ndarray] = {}
        by_shape: dict[tuple, list[int]] = {}
        for i, (_, _, frames) in enumerate(decoded):
            by_shape.setdefault(frames.shape, []).append(i)
        for idx in by_shape.values():
            for start in range(0, len(idx), self.cfg.batch_size):
                part = idx[start : start + self.cfg.batch_size]
                try:
                    outs = self._encode([decoded[i][2] for i in part])
                except ValueError as e:  # wrong frame count or size for this tokenizer
                    problems += [f"{decoded[i][0]}: {e}" for i in part]
                    continue
                latents.update({decoded[i][0]: z for i, z in zip(part, outs, strict=True)})
        entries: list[dict[str, Any]] = []  # the shard's index (pipeline.shards)
        with (
            atomic_open(target, "wb") as f,
            # Hashed as it streams: the shard's sha256, which later stages fingerprint the latents by.
            tarfile.open(fileobj=(hashing := HashingWriter(f)), mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for key, members, _ in decoded:
                if key not in latents:
                    continue
                z = latents[key]
                meta = {**json.loads(members["json"]), "tokenizer": self.info, "latent_shape": list(z.shape)}
                out = {"json": meta, ("indices.npy" if self.tok.is_discrete else "latents.npy"): z}
                out.update({ext: members[ext] for ext in PER_FRAME_MEMBERS if ext in members})
                add_sample(tar, key, out)
                entries.append(index_entry(key, out))
        write_index(target, entries)
        row["sha256"] = hashing.hexdigest()
        row["clips"], row["corrupt"] = len(latents), len(problems)
        if latents:
            first = next(iter(latents.values()))
            row["latent_shape"] = list(first.shape)
            if not self.tok.is_discrete:  # for the dynamics model's latent_scale
                values = np.concatenate([z.astype(np.float64).ravel() for z in latents.values()])
                row["latent_sum"], row["latent_sumsq"], row["latent_count"] = (
                    float(values.sum()),
                    float((values**2).sum()),
                    int(values.size),
                )
        if problems:
            row["reason"] = f"{len(problems)} clip(s) skipped: " + "; ".join(problems[:3])
        return row


def run(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize every input shard not yet done; returns the stats (also in ``output/stats.json``).
    Raises ``FolderBusy`` when another process writes ``cfg.output``."""
    with folder_lock(cfg.output, "vidworld tokenize"):
        return _run_locked(cfg)


def _start_over(out: Path, shard_dir: Path, rows_dir: Path) -> None:
    """Remove what a run on other inputs left; the stats go first, so no reader sees a mix as complete."""
    (out / STATS_FILE).unlink(missing_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)
    for p in [
        *rows_dir.glob("*.json"),
        *shard_dir.glob("shard-*.tar"),
        *shard_dir.glob("shard-*.index.json"),
    ]:
        p.unlink()


def _run_locked(cfg: TokenizeConfig) -> dict[str, Any]:
    import ray

    from runtime.cluster import init_ray

    t0 = time.monotonic()
    sources = resolve_shards(cfg.input)
    out = Path(cfg.output)
    shard_dir = out / SHARDS_DIR
    shard_dir.mkdir(parents=True, exist_ok=True)
    rows_dir = out / "rows"
    rows_dir.mkdir(exist_ok=True)
    fingerprint = _fingerprint(cfg)
    inputs = inputs_fingerprint(cfg)
    stamp = out / "tokenizer.json"
    old = json.loads(stamp.read_text()) if stamp.is_file() else {}
    written = any(rows_dir.iterdir()) or any(shard_dir.glob("shard-*.tar"))
    if old and old.get("fingerprint") != fingerprint:
        # The tokenizer at the same path with other weights was trained (or exported) again: its old
        # latents are of weights that are gone. Another path or other settings: someone else's latents.
        if old.get("tokenizer") != cfg.tokenizer or old.get("settings", _settings(cfg)) != _settings(cfg):
            raise ValueError(
                f"{out} holds latents of another tokenizer or settings ({stamp}); "
                "choose a new output folder, or delete this one to re-tokenize"
            )
        if written:
            print(
                f"tokenize: the tokenizer {cfg.tokenizer} has other weights than the ones that made {out} "
                "(trained again?); removing its old latents and tokenizing every shard again",
                file=sys.stderr,
            )
            _start_over(out, shard_dir, rows_dir)
    elif old.get("inputs") != inputs and written:
        print(
            f"tokenize: the input shards {cfg.input} changed since {out} was written (curated again?); "
            "removing its old latents and tokenizing every shard again",
            file=sys.stderr,
        )
        _start_over(out, shard_dir, rows_dir)
    stamp_data = {
        "fingerprint": fingerprint,
        "inputs": inputs,
        "tokenizer": cfg.tokenizer,
        "settings": _settings(cfg),
    }
    atomic_write_text(stamp, json.dumps(stamp_data))
    jobs = []
    for i, src in enumerate(sources):
        target = shard_dir / SHARD_PATTERN.format(index=i)
        if not (target.is_file() and (rows_dir / f"{i:06d}.json").is_file()):
            jobs.append({"index": i, "source": src, "target": str(target)})
    print(
        f"tokenize: {len(sources)} shards, {len(sources) - len(jobs)} already done, {len(jobs)} to do",
        file=sys.stderr,
    )
    if jobs:
        init_ray(cfg.num_cpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ds = ray.data.from_items(jobs, override_num_blocks=len(jobs)).map_batches(
            ShardEncoder,
            fn_constructor_args=(cfg,),
            batch_size=1,
            concurrency=cfg.concurrency,
            num_cpus=1,
            num_gpus=cfg.num_gpus_per_task or None,
        )
        progress = Progress("tokenize", len(jobs), unit="shards", interval=cfg.progress_interval)
        index_of = {j["source"]: j["index"] for j in jobs}
        for rec in ds.iter_rows():
            row = json.loads(rec["row"])
            atomic_write_text(rows_dir / f"{index_of[row['source']]:06d}.json", json.dumps(row))
            progress.update(1, clips=row["clips"])
        progress.close()
    rows = [json.loads((rows_dir / f"{i:06d}.json").read_text()) for i in range(len(sources))]
    write_manifest(rows, out / MANIFEST_FILE)
    tok_info = next((r["tokenizer"] for r in rows if r.get("tokenizer")), None)
    count = sum(r.get("latent_count", 0) for r in rows)
    latent_std = None
    if count:
        mean = sum(r["latent_sum"] for r in rows if "latent_sum" in r) / count
        var = sum(r["latent_sumsq"] for r in rows if "latent_sumsq" in r) / count - mean**2
        latent_std = float(max(var, 0.0) ** 0.5)
    stats = {
        "complete": True,
        "shards": len(sources),
        "clips": sum(r["clips"] for r in rows),
        "corrupt": sum(r["corrupt"] for r in rows),
        "shards_by_status": {s: sum(r["status"] == s for r in rows) for s in ("ok", "failed")},
        "tokenizer": tok_info,
        "latent_shape": next((r["latent_shape"] for r in rows if r.get("latent_shape")), None),
        "latent_std": latent_std,  # continuous latents: the dynamics model's latent_scale is 1 / this
        "fingerprint": f"{fingerprint}+{inputs}",
        # Each latent shard's sha256, hashed as it was written (rows of an older version: hashed now),
        # which the dynamics stage fingerprints its data by (runtime.fingerprint).
        SHARD_HASHES: {
            p.name: r.get("sha256") or file_sha256(p)
            for r, p in zip(rows, shard_paths(out, len(sources)), strict=True)
            if p.is_file()
        },
    }
    atomic_write_text(out / STATS_FILE, json.dumps(stats, indent=2, sort_keys=True))
    print(
        f"tokenize: {stats['clips']} clips in {len(sources)} shards in {time.monotonic() - t0:.1f} s\n"
        f"  shards: {shard_dir}/shard-*.tar\n  stats:  {out / STATS_FILE}",
        flush=True,
    )
    return stats


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld tokenize jobs/tokenize.yaml input=CURATED output=DIR tokenizer=RUN_OR_EXPORT``."""
    return stage_cli(
        "tokenize", TokenizeConfig, run, config_path, overrides,
        lambda _, stats: 0 if stats["shards_by_status"]["failed"] == 0 else 1,
    )  # fmt: skip
