"""Stream WebDataset shards into training batches: clips (mp4) or latents (npy), split over ranks and workers.

One pass over the data is an *epoch*. The epoch number and the seed fix everything random: the
order of shards and the shuffle buffer. So the same ``(seed, epoch)`` gives the same batches (for
the same ``world_size`` and ``num_workers``, which decide how the data is dealt), the next epoch
gives a new order, and a run resumed from ``state_dict()`` starts at an epoch it has not
seen instead of replaying the one it was in.

Where the data goes. Every (rank, DataLoader worker) pair is one *stream*; there are
``world_size * max(num_workers, 1)`` of them. With at least as many shards as streams, each stream
reads ``shards[stream::n_streams]`` of the epoch's shard order; with fewer shards, every stream
reads all shards and keeps every ``n_streams``-th sample. Either way each clip goes to exactly one
stream per epoch (ranks may get different numbers of batches when shards differ in size).

- ``resampled=True`` (training): epochs follow each other without end, each a fresh permutation
  (not draws with replacement, so every clip comes once per epoch); a partial batch carries over
  into the next epoch, so every batch has ``batch_size`` clips.
- ``resampled=False`` (evaluation): one epoch per ``iter(loader)``; the last batch of each stream may
  be short, nothing is dropped.
- ``shuffle_buffer=0`` turns all shuffling off (shards in sorted order, samples in tar order).

Members are decoded by extension: ``.mp4`` -> frames ``uint8 [T, H, W, 3]``, ``.npy`` -> array,
``.json`` -> dict, ``.txt`` -> str, anything else stays bytes. A sample that fails to decode, or whose
per-frame arrays disagree with its frame count, is *corrupt*: it is logged, counted and skipped.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import multiprocessing
import os
import random
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

from runtime.video import decode_mp4

log = logging.getLogger(__name__)

# Members that run along the frame axis: cropped with the frames and checked against their count.
PER_FRAME = ("actions", "rewards")


@dataclass
class LoaderConfig:
    """The ``data:`` section of a training config.

    ``shards``: a glob (``dir/shard-*.tar``), a brace list (``dir/shard-{000000..000009}.tar``), a
    comma-separated list of either, or a dataset folder (``DIR`` holding ``shards/``, or a folder of
    ``.tar`` files). Remote URLs (``http://``, ``s3://``...) pass through to WebDataset's ``gopen``;
    ``pipe:CMD`` URLs run ``CMD`` in a shell, so they are refused unless ``allow_pipe`` is true.
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
# The dataset a DataLoader (one per rank) iterates


def _rng(seed: int, epoch: int, what: str) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`, so it is stable across processes and runs.
    return random.Random(f"vidworld.loader/{seed}/{epoch}/{what}")


class ShardStream(IterableDataset):
    """One rank's samples as an iterable of batches; each DataLoader worker takes its own stream.

    Yields ``collate()`` batches with one more field, ``"epoch"``: the newest epoch among its clips.
    """

    def __init__(
        self,
        urls: list[str],
        cfg: LoaderConfig,
        rank: int,
        world_size: int,
        seed: int,
        start_epoch: int,
        counters: Any,
    ) -> None:
        super().__init__()
        self.urls, self.cfg, self.rank, self.world_size = urls, cfg, rank, world_size
        self.seed, self.start_epoch = seed, start_epoch
        self.counters = counters  # shared multiprocessing array: [corrupt, too_short]

    def _count(self, index: int) -> None:
        with self.counters.get_lock():
            self.counters[index] += 1

    def _handler(self, count: bool):
        def handle(exn: Exception) -> bool:
            log.warning("loader: skipping unreadable shard data: %s", exn)
            if count:
                self._count(0)
            return True  # go on with the next member or shard

        return handle

    def _read_shard(self, url: str, count_errors: bool) -> Iterator[dict[str, Any]]:
        handler = self._handler(count_errors)
        try:
            stream = gopen(url, bufsize=1 << 20)  # shards are read start to end: large reads
        except Exception as e:
            handler(e)
            return
        try:
            files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
            yield from group_by_keys(files, handler=handler)
        finally:
            stream.close()

    def raw_samples(self, epoch: int, stream: int, n_streams: int) -> Iterator[dict[str, Any]]:
        """Undecoded samples (``__key__``, ``__url__``, ``ext -> bytes``) of one stream in one epoch."""
        urls = list(self.urls)
        if self.cfg.shuffle_buffer > 0:
            _rng(self.seed, epoch, "shards").shuffle(urls)
        if len(urls) >= n_streams:
            for url in urls[stream::n_streams]:
                yield from self._read_shard(url, count_errors=True)
            return
        # Fewer shards than streams: everyone reads everything and keeps its share of samples.
        index = 0
        for url in urls:
            for sample in self._read_shard(url, count_errors=stream == 0):
                if index % n_streams == stream:
                    yield sample
                index += 1

    def _selected(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """Parse the JSON and apply the split and ``require`` filters before anything heavy is decoded."""
        for raw in samples:
            try:
                meta = json.loads(raw.get("json", b"{}"))
            except (ValueError, UnicodeDecodeError) as e:
                log.warning("loader: corrupt %s in %s: bad JSON: %s", raw["__key__"], raw["__url__"], e)
                self._count(0)
                continue
            split = meta.get("split") if isinstance(meta, dict) else None
            if self.cfg.split is not None and split != self.cfg.split:
                continue
            if self.cfg.require and not all(
                any(_field_name(ext) == name for ext in raw if not ext.startswith("__"))
                for name in self.cfg.require
            ):
                continue
            if self.cfg.fields is not None:
                keep = set(self.cfg.fields)
                raw = {
                    ext: v
                    for ext, v in raw.items()
                    if ext.startswith("__") or ext == "json" or _batch_field(ext) in keep
                }
            raw["__meta__"] = meta
            yield raw

    def _shuffled(self, samples: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict[str, Any]]:
        size = self.cfg.shuffle_buffer
        if size <= 0:
            yield from samples
            return
        buf: list[dict[str, Any]] = []
        for sample in samples:
            if len(buf) < size:
                buf.append(sample)
                continue
            i = rng.randrange(size)
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf

    def _decoded(self, samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for raw in samples:
            try:
                sample = decode_sample(raw, self.cfg.num_frames)
            except CorruptSample as e:
                log.warning("loader: corrupt sample in %s skipped: %s", raw.get("__url__"), e)
                self._count(0)
                continue
            if sample is None:
                self._count(1)
                continue
            yield sample

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        n_streams = self.world_size * num_workers
        stream = self.rank * num_workers + worker
        pending: list[dict[str, Any]] = []
        epoch = self.start_epoch
        while True:
            rng = _rng(self.seed, epoch, f"buffer/{stream}")
            got = 0
            samples = self._selected(self.raw_samples(epoch, stream, n_streams))
            for sample in self._decoded(self._shuffled(samples, rng)):
                got += 1
                pending.append(sample)
                if len(pending) == self.cfg.batch_size:
                    yield {**collate(pending, self.cfg.optional), "epoch": epoch}
                    pending = []
            if not self.cfg.resampled:
                if pending:
                    yield {**collate(pending, self.cfg.optional), "epoch": epoch}
                return
            if got == 0:
                raise RuntimeError(
                    f"loader stream {stream} (rank {self.rank}, worker {worker}) got no usable clips in "
                    f"epoch {epoch} from {len(self.urls)} shard(s) (split={self.cfg.split!r}, "
                    f"require={list(self.cfg.require)}, num_frames={self.cfg.num_frames}); an infinite "
                    "stream would hang. Use fewer workers or ranks than there are clips, write more shards, "
                    "or check data.split, data.require and data.num_frames"
                )
            epoch += 1


# ---------------------------------------------------------------------------------------------------
# The loader


class ClipLoader:
    """Iterable of batches for one rank::

        {"key": list[str], "meta": list[dict], "frames": uint8 [B, T, H, W, 3] or None,
         "actions": [B, T, ...] or None, "rewards": float32 [B, T] or None,
         "epoch": int (newest epoch among the batch's clips), <other .npy member>: Tensor [B, ...]}

    ``B`` is ``batch_size`` (smaller only for the last batch of a finite pass). Each ``iter()``
    starts at ``self.epoch``; a finite loader therefore reshuffles on every pass.

    ``corrupt_count`` and ``short_count`` (clips shorter than ``num_frames``, skipped) are summed
    over this rank's worker processes; they are per rank: all-reduce them for a global figure.
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
        self.seed = seed
        self.epoch = 0
        self.samples_seen = 0
        # Shared with the worker processes, which inherit it when the DataLoader starts them.
        self._counters = multiprocessing.Array("q", 2)

    @property
    def corrupt_count(self) -> int:
        """Corrupt samples (and unreadable shard parts) skipped so far on this rank."""
        return int(self._counters[0])

    @property
    def short_count(self) -> int:
        """Clips skipped so far on this rank because they are shorter than ``num_frames``."""
        return int(self._counters[1])

    def skip_metrics(self) -> dict[str, float]:
        """``data_corrupt_skipped`` and ``data_short_skipped`` for a training loss dict: this rank's
        counts times ``world_size``, so that their mean over ranks (what the runtime logs) is the
        total over all ranks."""
        return {
            "data_corrupt_skipped": float(self.corrupt_count * self.world_size),
            "data_short_skipped": float(self.short_count * self.world_size),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        start = self.epoch
        # Advance now, so a pass abandoned half way is not replayed by the next iter() or a resume.
        self.epoch = start + 1
        dataset = ShardStream(
            self.urls, self.cfg, self.rank, self.world_size, self.seed, start, self._counters
        )
        loader = DataLoader(
            dataset,
            batch_size=None,  # the dataset batches, so a worker ships whole batches
            num_workers=self.cfg.num_workers,
            prefetch_factor=2 if self.cfg.num_workers else None,
        )
        for batch in loader:
            self.samples_seen += len(batch["key"])
            self.epoch = max(self.epoch, batch["epoch"] + 1)
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": next epoch to start, "seed": int, "samples_seen": clips delivered so far}``.

        Ranks can be an epoch apart when saved; resume every rank from one state (rank 0's, or
        the largest epoch) to keep "each clip once per epoch" across ranks in the resumed epoch.
        """
        return {"epoch": self.epoch, "seed": self.seed, "samples_seen": self.samples_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next ``iter()`` starts at ``state["epoch"]``, an epoch the saved run had not begun."""
        missing = [k for k in ("epoch", "seed", "samples_seen") if k not in state]
        if missing:
            raise ValueError(f"loader state lacks {missing}; pass a dict saved by ClipLoader.state_dict()")
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.samples_seen = int(state["samples_seen"])


def make_loader(
    cfg: LoaderConfig, rank: int = 0, world_size: int = 1, seed: int = 0, state: dict | None = None
) -> ClipLoader:
    """Build the loader for ``rank`` of ``world_size``; ``state`` (from ``state_dict()``) resumes it,
    its seed taking precedence over ``seed``."""
    loader = ClipLoader(cfg, rank=rank, world_size=world_size, seed=seed)
    if state is not None:
        loader.load_state_dict(state)
    return loader
