"""The clip shard format (version 1) and its writer. This docstring is the format's one description.

A curated dataset is a folder::

    DIR/shards/shard-000000.tar, shard-000001.tar, ...   WebDataset tar shards
    DIR/manifest.jsonl                                   one row per input (see pipeline.manifest)
    DIR/stats.json                                       totals, and the sha256 of each shard

Each clip is one WebDataset sample: tar members that share the key ``KEY`` (no dots in it)::

    KEY.mp4           H.264 mp4, exactly the clip's frames (see runtime.video)
    KEY.json          metadata: format_version, key, source, start_time, end_time (seconds in
                      the source), fps, width, height, num_frames, scores {name: float},
                      caption (when known); pipeline.curate adds source_id, clip_index,
                      scene, split ("train" or "heldout", the same for every clip of a
                      source) and source_frames (the source frame index of each frame)
    KEY.actions.npy   per-frame actions, first axis = num_frames (only when the source has them)
    KEY.rewards.npy   per-frame rewards, float32 [num_frames] (likewise)
    KEY.terminals.npy per-frame episode ends, bool [num_frames]: True where the action taken at that
                      frame ended the episode (only when the source records them; shards written
                      before this member existed lack it and stay readable)

Beside each shard, ``shard-NNNNNN.index.json`` lists its samples in tar order, so that a loader can
plan who reads what without opening the tars (``pipeline.loader``)::

    {"format_version": 1, "size": bytes of the tar,
     "samples": [{"key": str, "members": [ext, ...], "split": str | null,
                  "num_frames": int | null, "bad_json": true (only when KEY.json does not parse)}]}

A shard without its index (or whose size differs from the index's ``size``) is still read: the
loader then scans the tar's headers and JSON members instead.

Tars are deterministic: members in a fixed order, mtime 0, uid/gid 0, mode 0644, so the same
clips give byte-identical shards. A shard is written to a temporary name and renamed when
complete, so a ``shard-*.tar`` that exists is whole. ``ShardWriter`` hashes each shard's bytes
(sha256) as it streams them; the job records them in ``stats.json`` (``runtime.fingerprint``), which
is how later stages tell that the shards they read have changed.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtime.files import atomic_open, atomic_write_text
from runtime.fingerprint import SHARDS_DIR, HashingWriter  # DIR/SHARDS_DIR holds a dataset's shards

FORMAT_VERSION = 1
SHARD_PATTERN = "shard-{index:06d}.tar"
INDEX_SUFFIX = ".index.json"  # shard-NNNNNN.tar -> shard-NNNNNN.index.json
# Members of a sample are written in this order; others follow sorted by name.
MEMBER_ORDER = ("json", "mp4", "actions.npy", "rewards.npy", "terminals.npy")


def shard_paths(dataset: str | os.PathLike, count: int) -> list[Path]:
    """The paths of the first ``count`` shards of the dataset folder ``dataset`` (none when ``count < 0``)."""
    return [Path(dataset) / SHARDS_DIR / SHARD_PATTERN.format(index=i) for i in range(count)]


def index_path(shard: str) -> str:
    """The index beside a shard: ``.../shard-000000.tar`` -> ``.../shard-000000.index.json``."""
    return (shard[: -len(".tar")] if shard.endswith(".tar") else shard) + INDEX_SUFFIX


def index_entry(key: str, members: Mapping[str, Any]) -> dict[str, Any]:
    """One sample's row of a shard index (see the module docstring), from the members written."""
    meta = members.get("json", {})
    entry: dict[str, Any] = {"key": key, "members": sorted(members, key=_member_sort_key)}
    if isinstance(meta, (bytes, bytearray, str)):
        try:
            meta = json.loads(meta)
        except ValueError:
            meta = None
    if not isinstance(meta, dict):
        return {**entry, "split": None, "num_frames": None, "bad_json": True}
    frames = meta.get("num_frames")
    entry["split"] = meta.get("split") if isinstance(meta.get("split"), str) else None
    entry["num_frames"] = frames if isinstance(frames, int) and not isinstance(frames, bool) else None
    return entry


def write_index(shard: str | os.PathLike, entries: list[dict[str, Any]]) -> None:
    """Write the index of a finished shard (atomically), with the shard's size."""
    shard = os.fspath(shard)
    body = {"format_version": FORMAT_VERSION, "size": os.path.getsize(shard), "samples": entries}
    atomic_write_text(index_path(shard), json.dumps(body, separators=(",", ":")))


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` into bytes (the ``.npy`` members)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def encode_member(ext: str, value: Any) -> bytes:
    """Serialize one member by its extension: dict -> JSON, array -> .npy, bytes as they are."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if ext.endswith("json"):
        return json.dumps(value, sort_keys=True).encode()
    if ext.endswith("npy"):
        return npy_bytes(np.asarray(value))
    raise TypeError(
        f"member {ext!r}: cannot serialize {type(value).__name__}; pass bytes, a dict or an array"
    )


def _member_sort_key(ext: str) -> tuple[int, str]:
    return (MEMBER_ORDER.index(ext) if ext in MEMBER_ORDER else len(MEMBER_ORDER), ext)


def add_sample(tar: tarfile.TarFile, key: str, members: Mapping[str, Any]) -> None:
    """Append one sample's members to an open tar, deterministically."""
    if "." in key or "/" in key:
        raise ValueError(
            f"sample key {key!r} must not contain '.' or '/' (WebDataset splits keys at the first dot)"
        )
    for ext in sorted(members, key=_member_sort_key):
        data = encode_member(ext, members[ext])
        info = tarfile.TarInfo(f"{key}.{ext}")
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Write samples into ``out_dir/shard-NNNNNN.tar`` files of ``samples_per_shard`` samples each.

    Numbering starts at ``start_index``. Each shard is written under a temporary name and renamed
    when full or on ``close()``; ``written`` lists the finished shard paths and ``sha256`` maps each
    one's file name to the sha256 of its bytes (hex), hashed while writing. Use as a context manager;
    on an exception the partial shard is discarded, never renamed.
    """

    def __init__(self, out_dir: str | os.PathLike, samples_per_shard: int, start_index: int = 0) -> None:
        if samples_per_shard < 1:
            raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.samples_per_shard = samples_per_shard
        self.index = start_index
        self.written: list[Path] = []
        self.sha256: dict[str, str] = {}
        self._ctx = None
        self._hashing: HashingWriter | None = None
        self._tar: tarfile.TarFile | None = None
        self._count = 0

    def _open(self) -> None:
        self._ctx = atomic_open(self.out_dir / SHARD_PATTERN.format(index=self.index), "wb")
        self._hashing = HashingWriter(self._ctx.__enter__())
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT)
        self._count = 0
        self._entries = []

    def _finish(self, exc: BaseException | None = None) -> None:
        if self._tar is None:
            return
        self._tar.close()
        path = self.out_dir / SHARD_PATTERN.format(index=self.index)
        ctx, self._ctx, self._tar = self._ctx, None, None
        if exc is None:
            ctx.__exit__(None, None, None)
            write_index(path, self._entries)
            self.written.append(path)
            self.sha256[path.name] = self._hashing.hexdigest()
            self.index += 1
        else:
            ctx.__exit__(type(exc), exc, exc.__traceback__)

    def write(self, key: str, members: Mapping[str, Any]) -> None:
        if self._tar is None:
            self._open()
        add_sample(self._tar, key, members)
        self._entries.append(index_entry(key, members))
        self._count += 1
        if self._count >= self.samples_per_shard:
            self._finish()

    def close(self) -> list[Path]:
        self._finish()
        return self.written

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            self.close()
        else:
            self._finish(exc)


def clip_fps(meta: Any, default: float | None = None) -> float | None:
    """The rate a clip was curated at: its ``KEY.json`` ``fps`` (``meta`` is that dict, as loaders
    and ``iter_split`` give it), else ``default``."""
    fps = meta.get("fps") if isinstance(meta, dict) else None
    return float(fps) if isinstance(fps, (int, float)) and fps > 0 else default
