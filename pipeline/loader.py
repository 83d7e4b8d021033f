"""Stream WebDataset shards into training batches: clips (mp4) or latents (npy), dealt over ranks and workers.

One pass over the data is an *epoch*. The epoch number and the seed fix everything random: the
order of shards and each stream's shuffle buffer. So the same ``(seed, epoch)`` gives the same
batches (for the same ``world_size`` and ``num_workers``, which decide how the data is dealt), and
the next epoch gives a new order.

Where the data goes. Every (rank, DataLoader worker) pair is one *stream*; there are
``world_size * max(num_workers, 1)`` of them. The split, ``require`` and ``num_frames`` filters are
applied first, from the shard indexes (``pipeline.shards``: each shard's keys, members, split and
frame count, written beside it, or scanned from the tar when missing), so no tar is read to plan.
In each epoch the samples that pass are taken in the epoch's order (shards permuted, samples in
tar order) and cut into one contiguous run per stream, the runs' lengths within one of each other:
every rank gets an equal share of the usable samples whatever the shards hold, and each clip goes
to exactly one stream per epoch. A stream reads only the shards its run touches and emits its run
through a shuffle buffer.

Resuming. ``state_dict()`` holds each stream's position (its epoch and how many of that epoch's
samples it has consumed: counted when a batch is delivered, not when a worker reads ahead). Loaded
in the same layout, every stream goes on exactly where it stopped; in another layout, the samples
of each epoch begun that no stream had consumed are dealt afresh over the new streams (``Plan``), so
an interrupted-and-resumed run sees the same samples as an uninterrupted one, none twice.

- ``resampled=True`` (training): epochs follow each other without end, each a fresh permutation
  (not draws with replacement, so every clip comes once per epoch); a partial batch carries over
  into the next epoch, so every batch has ``batch_size`` clips.
- ``resampled=False`` (evaluation): one epoch per ``iter(loader)``; the last batch of each stream may
  be short, nothing is dropped.
- ``shuffle_buffer=0`` turns all shuffling off (shards in sorted order, samples in tar order).

Members are decoded by extension: ``.mp4`` -> frames ``uint8 [T, H, W, 3]``, ``.npy`` -> array,
``.json`` -> dict, ``.txt`` -> str, anything else stays bytes. A sample that fails to decode, whose
per-frame arrays disagree with its frame count, or that its shard's index lists but the tar lacks,
is *corrupt*: it is logged, counted and skipped.
"""

from __future__ import annotations

import base64
import contextlib
import glob
import hashlib
import io
import itertools
import json
import logging
import multiprocessing
import os
import random
import re
import tarfile
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import braceexpand
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from pipeline.shards import index_entry, index_path
from runtime.checkpoint import merge_loader_states
from runtime.files import url_filesystem
from runtime.video import decode_mp4

log = logging.getLogger(__name__)

# Members that run along the frame axis: cropped with the frames and checked against their count.
PER_FRAME = ("actions", "rewards", "terminals")


@dataclass
class LoaderConfig:
    """The ``data:`` section of a training config.

    ``shards``: a glob (``dir/shard-*.tar``), a brace list (``dir/shard-{000000..000009}.tar``), a
    comma-separated list of either, or a dataset folder (``DIR`` holding ``shards/``, or a folder of
    ``.tar`` files), locally or in object storage (``s3://bucket/curated``, ``gs://...``: globs and
    folders are listed and shards read through fsspec; install ``vidworld[s3]`` or ``vidworld[gcs]``).
    ``http(s)://`` URLs go to WebDataset's ``gopen``; ``pipe:CMD`` URLs run ``CMD`` in a shell, so
    they are refused unless ``allow_pipe`` is true.
    """

    shards: str = "???"  # from Python a list of paths (or globs) works too
    batch_size: int = 4  # clips per batch, per rank
    num_workers: int = 0  # DataLoader worker processes per rank; 0 decodes in the training process
    shuffle_buffer: int = 64  # samples held for shuffling, per stream (compressed, before decoding)
    resampled: bool = True  # True: infinite training stream; False: one finite pass (evaluation)
    num_frames: int | None = None  # crop clips to this many frames from the start; shorter clips are skipped
    split: str | None = None  # keep only clips whose JSON "split" equals this ("train"/"heldout"); None = all
    # Keep only samples that have all these members, by field name ("actions" for KEY.actions.npy):
    # a dataset mixing videos with and without actions trains an action-conditioned model on the former.
    require: list[str] = field(default_factory=list)
    # Fields that some clips may lack (e.g. "actions" in a mix of labelled and unlabelled video): a batch
    # fills a missing one with zeros shaped like the clips that have it, and its bool [B] field
    # NAME_present says which clips have it. A field missing from some clips and not named here (or in
    # require) is an error, so that clips of different kinds are never mixed by accident.
    optional: list[str] = field(default_factory=list)
    # Decode only these fields ("frames" for KEY.mp4, "actions", "latents", ...); the others are
    # dropped unread. None keeps all. A tokenizer reads frames alone, whether or not clips have actions.
    fields: list[str] | None = None
    # WebDataset "pipe:CMD" shard URLs run CMD in a shell: a config (or an override) could run anything.
    allow_pipe: bool = False


# ---------------------------------------------------------------------------------------------------
# Shard lists


def _split_commas(spec: str) -> list[str]:
    """Split ``a,b{1,2}`` at the commas that are outside braces: ``['a', 'b{1,2}']``."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _is_url(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def _on_fsspec(spec: str) -> bool:
    """A URL read through fsspec (``s3://``, ``gs://``, ``file://``...); ``pipe:`` and ``http(s)://``
    go through WebDataset's ``gopen``."""
    return "://" in spec and not spec.startswith(("pipe:", "http://", "https://"))


def open_shard(url: str) -> Any:
    """A binary stream of a shard (or its index): a local path or a ``pipe:`` / ``http(s)://`` URL
    through WebDataset's ``gopen``, any other URL (``s3://``, ``gs://``...) through fsspec."""
    if _on_fsspec(url):
        fs, path = url_filesystem(url)
        return fs.open(path, "rb", block_size=1 << 22)
    return gopen(url, bufsize=1 << 20)  # shards are read start to end: large reads


def resolve_shards(
    shards: str | os.PathLike | Sequence[str | os.PathLike], allow_pipe: bool = False
) -> list[str]:
    """Expand a shard spec (see ``LoaderConfig.shards``) or a list of paths into a sorted list of shards.

    Each glob or folder is sorted; the parts of a comma or brace list keep their order; duplicates
    are dropped. Raises ``FileNotFoundError`` naming the pattern when a part matches nothing.
    """
    if isinstance(shards, (str, os.PathLike)):
        spec = os.fspath(shards)
        if spec in ("", "???"):
            raise ValueError("no shards given: set data.shards to a shard glob, brace list or dataset folder")
        parts = _split_commas(spec)
    else:
        parts = [os.fspath(p) for p in shards]
        if not parts:
            raise ValueError("the shard list is empty: pass at least one shard path")
    piped = [p for p in parts if p.lstrip().startswith("pipe:")]
    if piped and not allow_pipe:
        raise ValueError(
            f"shard URL {piped[0]!r} is a 'pipe:' URL, which runs a shell command; set "
            "data.allow_pipe=true to allow it (only for configs you trust)"
        )
    out: list[str] = []
    for part in parts:
        items = list(braceexpand.braceexpand(part))
        missing = [i for i in items if not (_is_url(i) or glob.has_magic(i) or os.path.exists(i))]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(items)} shard(s) named by {part!r} do not exist "
                f"(first: {missing[:3]}); check the path and the brace range"
            )
        for item in items:
            out.extend(_expand_one(item, part))
    return list(dict.fromkeys(out))


def _expand_one(item: str, pattern: str) -> list[str]:
    if _on_fsspec(item):
        return _expand_fsspec(item, pattern)
    if _is_url(item):
        return [item]
    if os.path.isdir(item):
        folder = os.path.join(item, "shards") if os.path.isdir(os.path.join(item, "shards")) else item
        found = sorted(glob.glob(os.path.join(folder, "*.tar")))
        if not found:
            raise FileNotFoundError(
                f"dataset folder {item!r} holds no .tar shards (looked in {folder!r}); "
                "run the curation job first (vidworld curate) or point data.shards at the shards"
            )
        return found
    if glob.has_magic(item):
        found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
        if not found:
            raise FileNotFoundError(
                f"shard pattern {pattern!r} matches no files; check the path (relative paths start at "
                f"{os.getcwd()!r}) or run the curation job that writes the shards"
            )
        return found
    return [item]


def _expand_fsspec(item: str, pattern: str) -> list[str]:
    """A bucket URL: a glob, a dataset folder (its ``shards/``) or a folder of ``.tar``, or one shard."""
    fs, path = url_filesystem(item)
    if glob.has_magic(path):
        found = sorted(p for p in fs.glob(path) if p.endswith(".tar"))
    elif fs.isdir(path):
        folder = f"{path.rstrip('/')}/shards" if fs.isdir(f"{path.rstrip('/')}/shards") else path.rstrip("/")
        found = sorted(p for p in fs.glob(f"{folder}/*.tar"))
    elif fs.exists(path):
        return [item]
    else:
        found = []
    if not found:
        raise FileNotFoundError(
            f"shard spec {pattern!r} matches no .tar shards in object storage; check the bucket and the "
            "path, or run the job that writes the shards"
        )
    return [fs.unstrip_protocol(p) for p in found]


# ---------------------------------------------------------------------------------------------------
# Samples


class CorruptSample(ValueError):
    """A sample that cannot be decoded or is inconsistent; the loader counts and skips it."""


def decode_member(ext: str, data: bytes) -> Any:
    """Decode one tar member by extension: ``mp4`` -> ``uint8 [T, H, W, 3]``, ``npy`` -> array,
    ``json`` -> dict, ``txt`` -> str, other -> bytes unchanged."""
    if ext.endswith("mp4"):
        return decode_mp4(data)
    if ext.endswith("npy"):
        array = np.load(io.BytesIO(data), allow_pickle=False)
        return array.astype(array.dtype.newbyteorder("="), copy=False)  # torch takes native order only
    if ext.endswith("json"):
        return json.loads(data)
    if ext.endswith("txt"):
        return data.decode("utf-8")
    return data


def _field_name(ext: str) -> str:
    """Batch field for a member: ``actions.npy`` -> ``actions``, ``latents.npy`` -> ``latents``."""
    name = ext[: -len(".npy")] if ext.endswith(".npy") else ext
    return re.sub(r"\W", "_", name)


def _batch_field(ext: str) -> str:
    """The batch field a member lands in: ``mp4`` -> ``frames``, ``actions.npy`` -> ``actions``."""
    return "frames" if ext == "mp4" else _field_name(ext)


def decode_sample(raw: dict[str, Any], num_frames: int | None = None) -> dict[str, Any] | None:
    """Turn one raw WebDataset sample (``__key__`` plus ``ext -> bytes``) into a decoded sample.

    Returns ``{"key", "meta", "frames" (uint8 [T, H, W, 3] or absent), "actions"/"rewards"
    ([T, ...] or absent), other fields}``, or ``None`` for a clip shorter than ``num_frames``.
    Raises ``CorruptSample`` when a member does not decode or the per-frame arrays disagree.
    """
    key = raw["__key__"]
    members = {k: v for k, v in raw.items() if not k.startswith("__")}
    try:
        meta = raw["__meta__"] if "__meta__" in raw else json.loads(members.get("json", b"{}"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptSample(f"{key}.json is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise CorruptSample(f"{key}.json holds a {type(meta).__name__}, not an object")
    has_video = "mp4" in members
    if not has_video and not any(ext.endswith(("npy", "mp4")) for ext in members):
        raise CorruptSample(f"sample {key!r} has neither .mp4 nor .npy members (it has {sorted(members)})")
    if num_frames is not None and not has_video:
        raise ValueError(
            f"sample {key!r} has no .mp4: num_frames cannot crop latent samples (the latent time axis "
            "depends on the tokenizer); set data.num_frames=null for latent shards"
        )
    out: dict[str, Any] = {"key": key, "meta": meta}
    for ext, data in members.items():
        if ext == "json":
            continue
        try:
            value = decode_member(ext, data)
        except Exception as e:  # PyAV, numpy and unicode errors all mean the same: unreadable member
            raise CorruptSample(f"{key}.{ext} does not decode: {type(e).__name__}: {e}") from e
        out["frames" if ext == "mp4" else _field_name(ext)] = value
    if has_video:
        t = len(out["frames"])
        if "num_frames" in meta and meta["num_frames"] != t:
            raise CorruptSample(f"{key}.mp4 has {t} frames but its JSON says num_frames={meta['num_frames']}")
        for name in PER_FRAME:
            if name in out and (out[name].ndim == 0 or len(out[name]) != t):
                shape = out[name].shape
                raise CorruptSample(f"{key}: {name} has shape {shape}, expected {t} rows (1 per frame)")
        if num_frames is not None:
            if t < num_frames:
                return None
            for name in ("frames", *PER_FRAME):
                if name in out:
                    out[name] = out[name][:num_frames]
    if "rewards" in out:
        out["rewards"] = out["rewards"].astype(np.float32, copy=False)
    if "terminals" in out:
        out["terminals"] = out["terminals"].astype(bool, copy=False)
    return out


def collate(samples: list[dict[str, Any]], optional: Collection[str] = ()) -> dict[str, Any]:
    """Stack decoded samples into a batch.

    ``{"key": list[str], "meta": list[dict], "frames": uint8 [B, T, H, W, 3] or None,
    "actions": [B, T, ...] or None, "rewards": float32 [B, T] or None}`` plus every other numeric
    array member stacked to a tensor and every other member (text, bytes, string arrays) as a list.
    Raises ``ValueError`` (naming the keys) when the clips of a batch differ in shape. A field in
    ``optional`` may be missing from some clips: those get zeros shaped like the others', and the
    batch gains ``NAME_present`` (bool ``[B]``).
    """
    batch: dict[str, Any] = {
        "key": [s["key"] for s in samples],
        "meta": [s["meta"] for s in samples],
        "frames": None,
        "actions": None,
        "rewards": None,
    }
    names = {n for s in samples for n in s if n not in ("key", "meta")}
    for name in sorted(names):
        missing = [s["key"] for s in samples if name not in s]
        if name in optional:
            present = [name in s for s in samples]
            batch[f"{name}_present"] = torch.tensor(present)
            if missing:
                like = next(s[name] for s in samples if name in s)
                samples = [s if name in s else {**s, name: np.zeros_like(like)} for s in samples]
            missing = []
        if missing:
            raise ValueError(
                f"batch field {name!r} is missing from samples {missing[:4]} but present in others: the "
                "shards mix kinds of samples (e.g. clips with and without actions); keep them apart, or name "
                f"the field in data.optional (data.optional=[{name}]) to fill it with zeros where missing"
            )
        values = [s[name] for s in samples]
        if isinstance(values[0], np.ndarray) and values[0].dtype.kind in "biufc":
            shapes = {v.shape for v in values}
            if len(shapes) > 1:
                detail = ", ".join(f"{s['key']}: {tuple(s[name].shape)}" for s in samples)
                raise ValueError(
                    f"cannot batch {name!r}: shapes differ ({detail}); set data.num_frames to crop clips "
                    "to one length, or use batch_size=1"
                )
            # default_collate stacks straight into shared memory inside a worker, saving the copy
            # that sending the batch to the training process would otherwise make.
            batch[name] = default_collate([torch.from_numpy(v) for v in values])
        else:
            batch[name] = values
    return batch


# ---------------------------------------------------------------------------------------------------
# The index: every shard's samples, and the ones this config uses

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # WebDataset's split of a member name: key, ext


def _scan_rows(tar: tarfile.TarFile, url: str) -> tuple[list[dict[str, Any]], int]:
    """Index rows of an open tar from its headers and JSON members; and 1 when it ends in an error."""
    rows: list[dict[str, Any]] = []
    key: str | None = None
    members: dict[str, bytes] = {}
    errors = 0
    try:
        for info in tar:
            match = _KEY_EXT.match(info.name) if info.isfile() else None
            if match is None:
                continue
            name, ext = match.groups()
            if name != key:
                if key is not None:
                    rows.append(index_entry(key, members))
                key, members = name, {}
            reader = tar.extractfile(info) if ext == "json" else None
            members[ext] = reader.read() if reader is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("loader: shard %s is cut short or damaged (%s); indexing what precedes", url, e)
        errors = 1
    if key is not None:
        rows.append(index_entry(key, members))
    return rows, errors


def shard_index(url: str) -> tuple[list[dict[str, Any]], int]:
    """A shard's samples in tar order (rows as ``pipeline.shards`` describes them) and how many read
    errors indexing met: from the index beside the shard when it is there and matches the shard's
    size, else by scanning the tar (headers and JSON members only; a local tar's other members are
    skipped by seeking, a remote one is streamed once)."""
    remote = _is_url(url)
    if not url.startswith("pipe:"):
        try:
            if remote:
                with open_shard(index_path(url)) as f:
                    body = json.loads(f.read())
            else:
                with open(index_path(url), encoding="utf-8") as f:
                    body = json.load(f)
            if isinstance(body.get("samples"), list) and (remote or body.get("size") == os.path.getsize(url)):
                return body["samples"], 0
        except Exception:  # no index, or one that does not parse: scan the tar instead
            pass
    try:
        if remote:
            with open_shard(url) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
                return _scan_rows(tar, url)
        with tarfile.open(url, mode="r:") as tar:
            return _scan_rows(tar, url)
    except (tarfile.TarError, OSError, EOFError) as e:
        log.warning("loader: cannot read shard %s (%s); it gives no clips", url, e)
        return [], 1


class DatasetIndex:
    """Which samples one ``LoaderConfig`` uses, in *canonical order* (shards in the order given,
    samples in tar order): sample ``p`` is ``keys[shard[p]][ordinal[p]]``. The split, ``require``
    and ``num_frames`` filters are applied here, from the shard indexes, before any tar is read, so
    that every stream can be dealt an equal share of the samples that pass them.

    ``short``: clips left out as shorter than ``num_frames``; ``bad``: samples whose JSON does not
    parse plus shards that could not be read to the end. ``digest`` names the usable samples
    (shard file names and keys): a checkpoint's loader position only applies to the same samples.
    """

    def __init__(self, urls: list[str], cfg: LoaderConfig) -> None:
        self.urls = urls
        self.keys: list[list[str]] = []
        self.short = self.bad = 0
        shards: list[int] = []
        ordinals: list[int] = []
        digest = hashlib.sha256()
        for i, url in enumerate(urls):
            rows, errors = shard_index(url)
            self.bad += errors
            self.keys.append([row["key"] for row in rows])
            name = url.rstrip("/").rsplit("/", 1)[-1]
            for j, row in enumerate(rows):
                if row.get("bad_json"):
                    log.warning("loader: corrupt %s in %s: its JSON does not parse", row["key"], url)
                    self.bad += 1
                    continue
                if cfg.split is not None and row.get("split") != cfg.split:
                    continue
                exts = row.get("members", [])
                names = {_field_name(e) for e in exts} | {_batch_field(e) for e in exts}
                if not all(name in names for name in cfg.require):
                    continue
                if cfg.num_frames is not None:
                    if "mp4" not in exts:
                        raise ValueError(
                            f"sample {row['key']!r} in {url} has no .mp4: num_frames cannot crop latent "
                            "samples (the latent time axis depends on the tokenizer); set "
                            "data.num_frames=null for latent shards"
                        )
                    frames = row.get("num_frames")
                    if frames is not None and frames < cfg.num_frames:
                        self.short += 1
                        continue
                shards.append(i)
                ordinals.append(j)
                digest.update(f"{name}/{row['key']}\n".encode())
        self.shard = np.asarray(shards, np.int64)
        self.ordinal = np.asarray(ordinals, np.int64)
        self.digest = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.shard)

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
        """The usable samples in the order an epoch reads them: shards in the epoch's permutation
        (sorted when ``shuffle`` is off), each shard's samples in tar order."""
        if not shuffle:
            return np.arange(len(self))
        perm = list(range(len(self.urls)))
        _rng(seed, epoch, "shards").shuffle(perm)
        place = np.empty(len(perm), np.int64)
        place[perm] = np.arange(len(perm))
        return np.argsort(place[self.shard], kind="stable")


# ---------------------------------------------------------------------------------------------------
# Dealing: who reads what, in which order


def _rng(seed: int, epoch: int, what: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and runs.
    return random.Random(f"vidworld.loader/{seed}/{epoch}/{what}")


def _shuffled(items: Iterable[Any], rng: random.Random, size: int) -> Iterator[Any]:
    """A shuffle buffer of ``size`` items (none when ``size <= 0``); a pure function of its inputs."""
    if size <= 0:
        yield from items
        return
    buf: list[Any] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


@dataclass
class Plan:
    """The deal: in epoch ``e`` the usable samples not yet consumed (``done[e]``, set by a resume in
    another layout) are taken in the epoch's reading order and cut into ``streams`` contiguous runs
    whose lengths differ by at most one; stream ``s`` reads run ``s`` and emits it through its own
    shuffle buffer. Everything follows from the index, the seed and ``done``: no tar is read to plan."""

    index: DatasetIndex
    seed: int
    streams: int
    buffer: int
    done: dict[int, np.ndarray] = field(default_factory=dict)
    _cache: tuple[int, np.ndarray] | None = field(default=None, repr=False)

    def remaining(self, epoch: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != epoch:
            order = self.index.epoch_order(self.seed, epoch, self.buffer > 0)
            done = self.done.get(epoch)
            self._cache = (epoch, order if done is None else order[~done[order]])
        return self._cache[1]

    def stream_order(self, epoch: int, stream: int) -> tuple[list[int], list[int]]:
        """``(emit, read)``: stream ``stream``'s samples of ``epoch`` in the order it delivers them,
        and in the order it reads them."""
        order = self.remaining(epoch)
        n = len(order)
        run = order[stream * n // self.streams : (stream + 1) * n // self.streams].tolist()
        return list(_shuffled(run, _rng(self.seed, epoch, f"buffer/{stream}"), self.buffer)), run

    def consumed(self, cursors: dict[int, tuple[int, int]]) -> dict[int, np.ndarray]:
        """Per epoch begun and not finished, which samples the streams at ``cursors`` (stream ->
        (epoch, samples of its emit order consumed)) had consumed; a stream with no cursor is taken
        to be at the start of the oldest epoch (so its samples come again, rather than never)."""
        lo = min(e for e, _ in cursors.values())
        hi = max(e for e, _ in cursors.values())
        out = {}
        for epoch in range(lo, hi + 1):
            done = self.done.get(epoch, np.zeros(len(self.index), bool)).copy()
            for stream in range(self.streams):
                e, k = cursors.get(stream, (lo, 0))
                if e >= epoch:
                    emit, _ = self.stream_order(epoch, stream)
                    done[emit if e > epoch else emit[:k]] = True
            if not done.all():
                out[epoch] = done
        return out


def _pack(done: np.ndarray) -> str:
    return base64.b64encode(np.packbits(done).tobytes()).decode("ascii")


def _unpack(text: str, n: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:n]
    if len(bits) != n:
        raise ValueError(f"a loader bitmap holds {len(bits)} samples, the data {n}")
    return bits.astype(bool)


# ---------------------------------------------------------------------------------------------------
# The dataset a DataLoader (one per rank) iterates


class ShardStream(IterableDataset):
    """One rank's samples as an iterable of batches; each DataLoader worker is its own stream.

    Yields ``collate()`` batches with three more fields: ``"epoch"`` (the newest epoch among its
    clips), and for the ``ClipLoader``, ``"_stream"`` and ``"_cursor"`` (the stream's position after
    the batch: ``(epoch, samples of that epoch's emit order consumed)``).
    """

    def __init__(
        self,
        plan: Plan,
        cfg: LoaderConfig,
        rank: int,
        start: dict[int, tuple[int, int]],
        counters: Any,
        turn: int = 0,
    ) -> None:
        super().__init__()
        self.plan, self.cfg, self.rank, self.start = plan, cfg, rank, start
        # The DataLoader takes batches from its workers in turn starting at worker 0: worker w reads
        # the rank's stream (w + turn) % workers, so a resumed rank goes on with the stream whose turn it was.
        self.turn = turn
        self.counters = counters  # shared multiprocessing array: [corrupt, too_short]

    def _count(self, index: int) -> None:
        with self.counters.get_lock():
            self.counters[index] += 1

    @staticmethod
    def _handle(exn: Exception) -> bool:
        log.warning("loader: skipping unreadable shard data: %s", exn)
        return True  # go on with the next member or shard; the samples lost are counted as missing

    def _read_shard(self, url: str) -> Iterator[dict[str, Any]]:
        try:
            stream = open_shard(url)
        except ImportError:  # a filesystem package to install: say so rather than skip every shard
            raise
        except Exception as e:
            self._handle(e)
            return
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=self._handle)
            yield from group_by_keys(files, handler=self._handle)
        finally:
            stream.close()

    def _read(self, reading: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(sample, raw sample)`` for the samples ``reading`` (in reading order) that the tars hold;
        each shard is read from its start and left once its last wanted sample has passed."""
        index = self.plan.index
        for shard, group in itertools.groupby(reading, key=lambda p: int(index.shard[p])):
            wanted = {int(index.ordinal[p]): p for p in group}
            last, keys, at = max(wanted), index.keys[shard], 0
            with contextlib.closing(self._read_shard(index.urls[shard])) as raws:
                for raw in raws:
                    try:  # the first sample at or after `at` with this key (the index is in tar order)
                        at = keys.index(raw["__key__"], at) + 1
                    except ValueError:
                        continue
                    if at - 1 in wanted:
                        yield wanted[at - 1], raw
                    if at > last:
                        break

    def _emitted(
        self, emit: list[int], reading: list[int], start: int
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(i, decoded sample)`` for ``emit[start:]`` in that order, read in ``reading`` order: a
        sample read ahead of its turn waits (no longer than a shuffle buffer's worth), and one that
        the tar turns out not to hold, or that does not decode, is counted and skipped."""
        need = set(emit[start:])
        reading = [p for p in reading if p in need]
        rank = {p: r for r, p in enumerate(reading)}
        reader = self._read(reading)
        have: dict[int, dict[str, Any]] = {}
        last = -1
        for i in range(start, len(emit)):
            p = emit[i]
            while p not in have and last < rank[p]:
                got = next(reader, None)
                if got is None:
                    last = len(reading)
                    break
                last = rank[got[0]]
                have[got[0]] = got[1]
            raw = have.pop(p, None)
            if raw is None:
                key = self.plan.index.keys[int(self.plan.index.shard[p])][int(self.plan.index.ordinal[p])]
                log.warning("loader: sample %s is in the shard index but not in the shard; skipped", key)
                self._count(0)
                continue
            sample = self._decoded(raw)
            if sample is not None:
                yield i, sample

    def _decoded(self, raw: dict[str, Any]) -> dict[str, Any] | None:
        try:
            meta = json.loads(raw.get("json", b"{}"))
        except (ValueError, UnicodeDecodeError) as e:
            log.warning("loader: corrupt %s in %s: bad JSON: %s", raw["__key__"], raw.get("__url__"), e)
            self._count(0)
            return None
        if self.cfg.fields is not None:
            keep = set(self.cfg.fields)
            raw = {
                ext: v
                for ext, v in raw.items()
                if ext.startswith("__") or ext == "json" or _batch_field(ext) in keep
            }
        raw["__meta__"] = meta
        try:
            sample = decode_sample(raw, self.cfg.num_frames)
        except CorruptSample as e:
            log.warning("loader: corrupt sample in %s skipped: %s", raw.get("__url__"), e)
            self._count(0)
            return None
        if sample is None:  # shorter than num_frames, which its JSON did not say
            self._count(1)
        return sample

    def _batch(self, pending: list[dict[str, Any]], stream: int) -> dict[str, Any]:
        cursors = [s.pop("_cursor") for s in pending]
        batch = collate(pending, self.cfg.optional)
        return {**batch, "epoch": max(e for e, _ in cursors), "_stream": stream, "_cursor": cursors[-1]}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        stream = self.rank * num_workers + (worker + self.turn) % num_workers
        epoch, k = self.start[stream]
        pending: list[dict[str, Any]] = []
        while True:
            emit, reading = self.plan.stream_order(epoch, stream)
            got = 0
            for i, sample in self._emitted(emit, reading, k):
                got += 1
                sample["_cursor"] = (epoch, i + 1)
                pending.append(sample)
                if len(pending) == self.cfg.batch_size:
                    yield self._batch(pending, stream)
                    pending = []
            if not self.cfg.resampled:
                if pending:
                    yield self._batch(pending, stream)
                return
            if got == 0 and k == 0 and epoch not in self.plan.done:
                raise RuntimeError(
                    f"loader stream {stream} (rank {self.rank}, worker {worker}) got no usable clips in "
                    f"epoch {epoch}: all {len(emit)} dealt to it were corrupt or too short (see the "
                    "warnings above); an infinite stream would hang"
                )
            epoch, k = epoch + 1, 0


# ---------------------------------------------------------------------------------------------------
# The loader


class ClipLoader:
    """Iterable of batches for one rank::

        {"key": list[str], "meta": list[dict], "frames": uint8 [B, T, H, W, 3] or None,
         "actions": [B, T, ...] or None, "rewards": float32 [B, T] or None,
         "epoch": int (newest epoch among the batch's clips), <other .npy member>: Tensor [B, ...]}

    ``B`` is ``batch_size`` (smaller only for the last batch of a finite pass). A finite loader
    (``resampled=False``) reads the next epoch on each ``iter()``; an endless one goes on from where
    the batches delivered so far left it (so an ``iter()`` abandoned half way loses nothing).

    ``corrupt_count`` and ``short_count`` count what this rank skipped (summed over its worker
    processes) plus what the shard indexes excluded for the whole dataset; ``skip_metrics`` turns
    them into dataset-wide figures.
    """

    def __init__(self, cfg: LoaderConfig, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        if cfg.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {cfg.batch_size}")
        if cfg.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {cfg.num_workers}")
        if cfg.num_frames is not None and cfg.num_frames < 1:
            raise ValueError(f"data.num_frames must be >= 1 or null, got {cfg.num_frames}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size={world_size})")
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.urls = resolve_shards(cfg.shards, allow_pipe=cfg.allow_pipe)
        self.index = DatasetIndex(self.urls, cfg)
        workers = max(cfg.num_workers, 1)
        self.streams = world_size * workers
        self.my_streams = range(rank * workers, (rank + 1) * workers)
        if cfg.resampled and len(self.index) < self.streams:
            raise ValueError(
                f"{'no' if not len(self.index) else f'only {len(self.index)}'} usable clips in "
                f"{len(self.urls)} shard(s) (split={cfg.split!r}, require={list(cfg.require)}, "
                f"num_frames={cfg.num_frames}) for {self.streams} loader streams ({world_size} rank(s) x "
                f"{workers} worker(s)), and every stream needs one. Use fewer ranks or data.num_workers, "
                "write more clips, or check data.split, data.require and data.num_frames"
            )
        self.seed = seed
        self.epoch = 0
        self.samples_seen = 0
        self._done: dict[int, np.ndarray] = {}
        self._cursors = {s: (0, 0) for s in self.my_streams}
        self._turn = 0  # which of this rank's streams gives the next batch (see ShardStream)
        # Shared with the worker processes, which inherit it when the DataLoader starts them.
        self._counters = multiprocessing.Array("q", 2)

    @property
    def corrupt_count(self) -> int:
        """Corrupt samples (and unreadable shard parts) skipped so far on this rank, plus those the
        shard indexes excluded."""
        return int(self._counters[0]) + self.index.bad

    @property
    def short_count(self) -> int:
        """Clips skipped so far on this rank, or excluded by the index, as shorter than ``num_frames``."""
        return int(self._counters[1]) + self.index.short

    def skip_metrics(self) -> dict[str, float]:
        """``data_corrupt_skipped`` and ``data_short_skipped`` for a training loss dict, so that their
        mean over ranks (what the runtime logs) is the dataset-wide total: this rank's own skips
        times ``world_size`` plus those the index excluded (the same on every rank)."""
        return {
            "data_corrupt_skipped": float(self._counters[0] * self.world_size + self.index.bad),
            "data_short_skipped": float(self._counters[1] * self.world_size + self.index.short),
        }

    def _plan(self, done: dict[int, np.ndarray]) -> Plan:
        return Plan(self.index, self.seed, self.streams, self.cfg.shuffle_buffer, done)

    def _iterate(self, dataset: ShardStream) -> Iterator[dict[str, Any]]:
        loader = DataLoader(
            dataset,
            batch_size=None,  # the dataset batches, so a worker ships whole batches
            num_workers=self.cfg.num_workers,
            prefetch_factor=2 if self.cfg.num_workers else None,
        )
        for batch in loader:
            stream, cursor = batch.pop("_stream"), batch.pop("_cursor")
            self.samples_seen += len(batch["key"])
            if self.cfg.resampled:
                self._cursors[stream] = tuple(cursor)
                self._turn = (stream - self.my_streams.start + 1) % len(self.my_streams)
                self.epoch = min(e for e, _ in self._cursors.values())
            yield batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.cfg.resampled:
            plan, start = self._plan(self._done), dict(self._cursors)
            yield from self._iterate(
                ShardStream(plan, self.cfg, self.rank, start, self._counters, self._turn)
            )
            return
        start = self.epoch
        self.epoch = start + 1  # the next iter() reads the next epoch, even if this one is left half way
        begin = {s: (start, 0) for s in self.my_streams}
        yield from self._iterate(ShardStream(self._plan({}), self.cfg, self.rank, begin, self._counters))

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: ``{"epoch", "seed", "samples_seen", "streams", "cursors", "done",
        "index"}``. ``epoch``: the oldest epoch in progress (of a finite loader: the next to read);
        ``samples_seen``: clips this rank delivered; ``streams``: the layout (ranks x workers);
        ``cursors``: ``{stream: [epoch, samples of its order consumed]}``; ``turns``: ``{rank: which of
        its streams gives the next batch}``; ``done``: per epoch begun
        before the last resume in another layout, a bitmap of the samples consumed then; ``index``:
        the digest of the usable samples.

        With ``torch.distributed`` initialised and ``world_size > 1`` this is a collective (every rank
        calls it at once, as the runtime does at a checkpoint) and the cursors are every rank's, so
        that each rank's saved state alone resumes the whole run, in this layout or another.
        Without it the cursors are this rank's; merge the ranks' states with
        ``runtime.checkpoint.merge_loader_states`` before resuming in another layout."""
        state = {
            "epoch": self.epoch,
            "seed": self.seed,
            "samples_seen": self.samples_seen,
            "streams": self.streams,
            "cursors": {str(s): list(c) for s, c in self._cursors.items()},
            "turns": {str(self.rank): self._turn},
            "done": {str(e): _pack(d) for e, d in self._done.items() if e >= self.epoch},
            "index": self.index.digest,
        }
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, state)
            merged = merge_loader_states(states)  # every rank's cursors and turns; the bitmaps they share
            epoch = min(e for e, _ in merged["cursors"].values()) if self.cfg.resampled else self.epoch
            done = {e: d for e, d in merged["done"].items() if int(e) >= epoch}
            state = {**merged, "epoch": epoch, "samples_seen": self.samples_seen, "done": done}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``: in the same layout every stream goes on exactly where it
        stopped; in another (ranks x workers) the samples of each epoch begun that no stream had
        consumed are dealt afresh over the new streams, so no sample is replayed or skipped. A state
        without cursors (older checkpoints) or for other data resumes at an epoch not yet begun."""
        missing = [k for k in ("epoch", "seed", "samples_seen") if k not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}; pass a dict saved by ClipLoader.state_dict()")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.samples_seen = int(state["samples_seen"])
        self._done = {}
        if not self.cfg.resampled:
            return
        cursors = {int(s): (int(c[0]), int(c[1])) for s, c in state.get("cursors", {}).items()}
        if not cursors or state.get("index") != self.index.digest:
            if cursors:
                self.epoch = max(e for e, _ in cursors.values()) + 1
                log.warning(
                    "loader: the usable samples differ from the checkpoint's (other shards or filters), "
                    "so its position does not apply; starting epoch %d, which it had not begun",
                    self.epoch,
                )
            self._cursors = {s: (self.epoch, 0) for s in self.my_streams}
            return
        done = {int(e): _unpack(d, len(self.index)) for e, d in state.get("done", {}).items()}
        if int(state["streams"]) == self.streams and all(s in cursors for s in self.my_streams):
            self._done, self._cursors = done, {s: cursors[s] for s in self.my_streams}
            self._turn = int(state.get("turns", {}).get(str(self.rank), 0))
        else:  # another layout: what was consumed, per epoch begun, is dealt again over the new streams
            saved = Plan(self.index, self.seed, int(state["streams"]), self.cfg.shuffle_buffer, done)
            self._done = saved.consumed(cursors)
            first = min(self._done) if self._done else max(e for e, _ in cursors.values()) + 1
            self._cursors = {s: (first, 0) for s in self.my_streams}
        self.epoch = min(e for e, _ in self._cursors.values())


def make_loader(
    cfg: LoaderConfig, rank: int = 0, world_size: int = 1, seed: int = 0, state: dict | None = None
) -> ClipLoader:
    """Build the loader for ``rank`` of ``world_size``; ``state`` (from ``state_dict()``) resumes it,
    its seed taking precedence over ``seed``."""
    loader = ClipLoader(cfg, rank=rank, world_size=world_size, seed=seed)
    if state is not None:
        loader.load_state_dict(state)
    return loader
