"""The curation job: raw videos -> WebDataset clip shards, a manifest and stats (Ray Data).

``vidworld curate jobs/curate.yaml input=PATH output=DIR [key=value ...]``

1. ``pipeline.inputs`` lists the inputs (``curation_inputs`` leaves out branch files, ``*.npz``); each
   gets a stable ``source_id`` (a hash of its canonical location) and a ``name`` (its path relative to
   the job's input, which the held-out split hashes: the split does not depend on where the folder lies).
2. Ray Data maps over the inputs not yet staged, one task per input. A task probes, decodes,
   splits, filters, transforms and encodes that input's clips (``curate_input``) and writes them,
   with the input's manifest row, to ``DIR/staging/CONFIG_HASH/SOURCE_ID-VERSION.tar`` in one atomic
   write (``VERSION``: a hash of a local file's size and mtime, so an edited file is curated again).
   An input whose staging file exists is done: a rerun skips it, and a run killed midway loses only
   the inputs in flight. An input that failed for a reason other than its content (an I/O error, a
   vanished file, its task's worker died) gets no staging file, only ``SOURCE_ID.retry.json`` with its
   row: the job exits 4 naming it, ``is_complete`` is False, and a rerun tries exactly those inputs.
3. Packing (``pipeline.packing``): the driver reads each staging tar's row and headers (never a clip),
   plans the shards, and Ray tasks write them, one task per shard streaming its clips from the
   staging tars, one clip in memory at a time; clips go in a fixed order (source id, clip index) and
   each gets its ``split``. Then the driver writes ``DIR/manifest.jsonl`` (each row names the shards
   holding that input's clips) and ``DIR/stats.json`` (with each shard's sha256, hashed as it was
   written: what later stages fingerprint the shards by). Same inputs and config -> byte-identical
   shards, whether the job ran once or was killed and rerun. New inputs added to a finished folder
   are appended as new shards; the shards there are never rewritten. Anything else (other settings,
   an input removed or edited) packs every clip anew, into a new folder that replaces
   ``DIR/shards`` only when whole.

On a multi-node Ray cluster (``RAY_ADDRESS``), ``DIR`` and the inputs must be on storage every node
sees (a shared file system): tasks write their staging files and the shards there. The shard
format is described in ``pipeline.shards``; the manifest in ``pipeline.manifest``.
Clip JSON adds to that format: ``source_id``, ``clip_index``, ``scene``, ``split``
(``train``/``heldout``, by source), ``source_frames`` (the source frame index of each clip frame).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
import tarfile
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import MISSING

from pipeline.branches import BRANCH_SUFFIX
from pipeline.clips import (
    RESIZE_MODES,
    ClipPlan,
    ClipSplitter,
    FilterConfig,
    center_crop,
    clip_scores,
    decode_size,
    filter_reason,
    resample_actions,
    resample_rewards,
    resample_terminals,
    rotate,
)
from pipeline.inputs import InputItem, list_inputs, load_array, read_bytes
from pipeline.manifest import (
    MANIFEST_FILE,
    SHARD_HASHES,
    STATS_FILE,
    make_row,
    read_manifest,
    read_stats,
    retry_rows,
    summarize,
    write_manifest,
    write_stats,
)
from pipeline.packing import (
    ROW_KEY,
    WRITING_DIR,
    clean_leftovers,
    commit,
    plan_shards,
    read_staged_row,
    write_shards,
)
from pipeline.probe import BadInput, FrameReader, is_io_fault, probe
from pipeline.scenes import CutConfig, CutDetector
from pipeline.shards import (
    FORMAT_VERSION,
    SHARD_PATTERN,
    SHARDS_DIR,
    add_sample,
    index_path,
    shard_paths,
)
from runtime.config import ConfigError, load_config
from runtime.files import FolderBusy, atomic_open, atomic_write_text, folder_lock
from runtime.progress import Progress
from runtime.video import encode_mp4

RETRY_SUFFIX = ".retry.json"  # staging/CONFIG_HASH/SOURCE_ID.retry.json: the row of an input to try again
EXIT_RETRY = 4  # cli exit code: some inputs failed for a reason other than their content


@dataclass
class CurateConfig:
    """Curation settings; defaults are the small CPU case (17-frame 64x64 clips at 15 fps)."""

    input: str = MISSING  # folder, glob, fsspec URL, or list file (.txt/.csv/.parquet)
    output: str = MISSING  # DIR: shards/, manifest.jsonl, stats.json, staging/
    clip_frames: int = 17  # 1 + 4k: what a causal tokenizer with temporal compression 4 wants
    fps: float = 15.0  # clips are resampled to this frame rate
    size: int = 64  # output clips are size x size (even)
    resize: str = "center_crop"  # center_crop: shorter side -> size, then centre crop; squash: whole frame
    crf: int = 23  # x264 constant rate factor of the clips
    preset: str = "veryfast"  # x264 preset
    samples_per_shard: int = 64
    # Held-out sources (never clips): split_sources groups them by (has actions, parent folder) and holds
    # out this fraction of each group, by a hash of (seed, name: the source's path relative to the job's
    # input, so the same folder splits the same way anywhere); at least one of each group of >= 2.
    heldout_fraction: float = 0.2
    seed: int = 0  # changes which sources are held out
    # Discrete (integer) actions must be indices below this (the dynamics model's model.num_actions):
    # an input with a larger one fails with the reason in its manifest row. None: not checked.
    num_actions: int | None = None
    max_inputs: int = 0  # stage at most this many new inputs, then stop before packing (0: all)
    num_cpus: int | None = None  # CPUs of a local Ray cluster (ignored with RAY_ADDRESS)
    progress_interval: float = 5.0  # seconds between progress lines
    cuts: CutConfig = field(default_factory=CutConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the key of a value that cannot work."""
        checks = [
            ("clip_frames", self.clip_frames >= 1, "must be >= 1"),
            ("fps", self.fps > 0, "must be > 0"),
            ("size", self.size >= 2 and self.size % 2 == 0, "must be even and >= 2 (H.264 yuv420p)"),
            ("resize", self.resize in RESIZE_MODES, f"must be one of {RESIZE_MODES}"),
            ("crf", 0 <= self.crf <= 51, "must be in 0..51"),
            ("samples_per_shard", self.samples_per_shard >= 1, "must be >= 1"),
            ("heldout_fraction", 0.0 <= self.heldout_fraction <= 1.0, "must be in 0..1"),
            ("max_inputs", self.max_inputs >= 0, "must be >= 0"),
            ("num_actions", self.num_actions is None or self.num_actions >= 1, "must be >= 1 or null"),
        ]
        for key, ok, what in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' = {getattr(self, key)!r} {what}")

    def fingerprint(self) -> str:
        """A hash of every setting that changes a clip's bytes; staged clips are reused only if it matches."""
        keys = ("clip_frames", "fps", "size", "resize", "crf", "preset", "cuts", "filters")
        d = asdict(self)
        if self.num_actions is not None:  # only when set: staging made before the key existed stays valid
            keys += ("num_actions",)
        blob = json.dumps({k: d[k] for k in keys}, sort_keys=True)
        return hashlib.sha1(f"v{FORMAT_VERSION}:{blob}".encode()).hexdigest()[:12]


# --- one input -> clips ---------------------------------------------------------------------------


def clip_meta(
    item: InputItem, key: str, index: int, plan: ClipPlan, scores: dict[str, float], cfg: CurateConfig
) -> dict[str, Any]:
    """A clip's JSON (``split`` is added at packing); fields as in ``pipeline.shards``."""
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "source": item.source,
        "source_id": item.source_id,
        "clip_index": index,
        "scene": plan.scene,
        "start_time": round(plan.start_time, 6),
        "end_time": round(plan.end_time, 6),
        "fps": cfg.fps,
        "width": cfg.size,
        "height": cfg.size,
        "num_frames": len(plan.indices),
        "source_frames": [int(i) for i in plan.indices],
        "scores": scores,
    }
    if item.caption:
        meta["caption"] = item.caption
    return meta


def check_sidecar(
    name: str, url: str, arr: np.ndarray, num_frames: int, num_actions: int | None = None
) -> str | None:
    """Why an actions or rewards array cannot be trusted, or None: it must have one entry per decoded
    frame, hold numbers, be finite, and (integer actions, i.e. discrete ones) be >= 0 and, when
    ``num_actions`` is given, < ``num_actions``."""
    if arr.ndim == 0 or len(arr) != num_frames:
        n = "a scalar" if arr.ndim == 0 else f"{len(arr)} entries"
        return (
            f"{name} file {url} has {n} but the video decoded to {num_frames} frames; "
            "write one entry per frame"
        )
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        return f"{name} file {url} holds {arr.dtype} values, not numbers; save a numeric array"
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr.reshape(len(arr), -1)).all(axis=1))
        return (
            f"{name} file {url} has {len(bad)} non-finite (NaN or inf) entries (first at frame {bad[0]}); "
            "fix or drop them at the source"
        )
    if name == "actions" and np.issubdtype(arr.dtype, np.signedinteger) and (arr < 0).any():
        bad = np.flatnonzero((arr.reshape(len(arr), -1) < 0).any(axis=1))
        return (
            f"{name} file {url} has {len(bad)} negative discrete actions (first {int(arr[bad[0]].min())} "
            f"at frame {bad[0]}); discrete actions are indices 0..N-1"
        )
    if name == "actions" and num_actions is not None and np.issubdtype(arr.dtype, np.integer):
        too_big = (arr.reshape(len(arr), -1) >= num_actions).any(axis=1)
        if too_big.any():
            bad = np.flatnonzero(too_big)
            return (
                f"{name} file {url} has {len(bad)} discrete actions >= num_actions={num_actions} (first "
                f"{int(arr[bad[0]].max())} at frame {bad[0]}); discrete actions are indices "
                f"0..{num_actions - 1}: fix the file, or raise num_actions if the game has more actions"
            )
    return None


def _load_sidecars(item: InputItem, num_frames: int, num_actions: int | None = None) -> tuple[Any, Any, Any]:
    """The input's actions, rewards and terminals arrays (or None). Raises ``BadInput``: ``failed``
    for a sidecar that is not a valid array for this video (``check_sidecar``), to retry when it
    could not be read."""
    arrays: dict[str, Any] = {"actions": None, "rewards": None, "terminals": None}
    for name, url in (("actions", item.actions), ("rewards", item.rewards), ("terminals", item.terminals)):
        if url is None:
            continue
        try:
            arr = load_array(url)
        except (OSError, ValueError) as e:
            if is_io_fault(e):
                raise BadInput("failed", f"{name} file {url} could not be read ({e})", retry=True) from e
            raise BadInput(
                "failed", f"{name} file {url} is not a .npy array ({e}); save it with np.save"
            ) from e
        why = check_sidecar(name, url, arr, num_frames, num_actions)
        if why:
            raise BadInput("failed", why)
        arrays[name] = arr
    return arrays["actions"], arrays["rewards"], arrays["terminals"]


def curate_input(
    item: InputItem, cfg: CurateConfig
) -> tuple[dict[str, Any], list[tuple[str, dict[str, Any]]]]:
    """Everything the job does to one input: returns its manifest row and its clips as
    ``(key, members)`` with members ``mp4`` (bytes), ``json`` (dict), ``actions.npy``,
    ``rewards.npy`` and ``terminals.npy`` (arrays, when the input has them). Never raises for bad
    input: the row says."""
    timing: Counter = Counter()
    t0 = time.perf_counter()
    info = None
    try:
        src: Any = item.source if "://" not in item.source else read_bytes(item.source)
        info = probe(src)
        dw, dh = info.display_size
        if min(dw, dh) < cfg.filters.min_size:
            raise BadInput(
                "skipped",
                f"{dw}x{dh} is smaller than filters.min_size={cfg.filters.min_size} on its shorter "
                "side; lower filters.min_size to keep it",
            )
        if info.duration and info.duration < cfg.filters.min_duration:
            raise BadInput(
                "skipped",
                f"{info.duration:.2f} s is shorter than filters.min_duration={cfg.filters.min_duration} s",
            )
        tw, th = decode_size(dw, dh, info.rotation, cfg.size, cfg.resize)
        sw, sh = (th, tw) if info.rotation in (90, 270) else (tw, th)
        timing["probe"] += time.perf_counter() - t0
        # Stream: decode a frame, look for a cut, hand it to the splitter; score, filter and encode
        # each clip as soon as it is complete. Memory holds one clip, not the video.
        reader = FrameReader(src, sw, sh)
        detector = CutDetector(cfg.cuts)
        splitter = ClipSplitter(cfg.fps, cfg.clip_frames, 1.0 / info.fps if info.fps else 1.0 / cfg.fps)
        kept: list[tuple[ClipPlan, str, dict[str, Any]]] = []
        filtered: Counter = Counter()
        planned = 0
        last_time = 0.0

        def take(done: list[tuple[ClipPlan, np.ndarray]]) -> None:
            nonlocal planned
            for plan, clip in done:
                index, planned = planned, planned + 1
                t = time.perf_counter()
                if cfg.resize == "center_crop":
                    clip = center_crop(clip, cfg.size)
                scores = clip_scores(clip)
                reason = filter_reason(scores, cfg.filters)
                timing["filter"] += time.perf_counter() - t
                if reason:
                    filtered[reason] += 1
                    continue
                t = time.perf_counter()
                key = f"{item.source_id}_{index:05d}"
                meta = clip_meta(item, key, index, plan, scores, cfg)
                mp4 = encode_mp4(clip, cfg.fps, crf=cfg.crf, preset=cfg.preset)
                kept.append((plan, key, {"mp4": mp4, "json": meta}))
                timing["encode"] += time.perf_counter() - t

        t = time.perf_counter()
        for index, (frame, last_time) in enumerate(reader):
            s = time.perf_counter()
            frame = rotate(frame[None], info.rotation)[0]
            done = splitter.push(index, last_time, frame, detector.push(frame))
            timing["split"] += time.perf_counter() - s
            take(done)
        take(splitter.finish())
        timing["decode"] += time.perf_counter() - t - timing["split"] - timing["filter"] - timing["encode"]
        notes = [reader.note] if reader.note else []
        if splitter.too_short:
            filtered["scene_too_short"] += splitter.too_short
        if not planned:
            clip_s = cfg.clip_frames / cfg.fps
            raise BadInput(
                "skipped",
                f"no scene is long enough for one clip of {cfg.clip_frames} frames at "
                f"{cfg.fps:g} fps ({clip_s:.2f} s); video lasts {last_time:.2f} s",
            )
        actions, rewards, terminals = _load_sidecars(item, reader.count, cfg.num_actions)
        clips: list[tuple[str, dict[str, Any]]] = []
        for plan, key, members in kept:
            if actions is not None:
                members["actions.npy"] = resample_actions(actions, plan)
            if rewards is not None:
                members["rewards.npy"] = resample_rewards(rewards, plan)
            if terminals is not None:
                members["terminals.npy"] = resample_terminals(terminals, plan)
            clips.append((key, members))
        if clips:
            row = make_row(
                item.source, item.source_id, "ok", "; ".join(notes), len(clips), filtered, info.as_dict()
            )
        else:
            why = ", ".join(f"{k}={v}" for k, v in sorted(filtered.items()))
            reason = "; ".join([f"every clip was filtered ({why})", *notes])
            row = make_row(item.source, item.source_id, "skipped", reason, 0, filtered, info.as_dict())
    except BadInput as e:
        row = make_row(
            item.source,
            item.source_id,
            e.status,
            e.reason,
            probe=info.as_dict() if info else None,
            retry=e.retry,
        )
        clips = []
    except FileNotFoundError as e:
        row = make_row(item.source, item.source_id, "failed", f"file not found ({e})", retry=True)
        clips = []
    except Exception as e:  # a bug or an input we did not foresee must not stop the job, nor pass silently
        row = make_row(
            item.source,
            item.source_id,
            "failed",
            f"unexpected error: {type(e).__name__}: {e}",
            probe=info.as_dict() if info else None,
            retry=is_io_fault(e),  # disk full, I/O error, out of memory: not the input's fault
        )
        clips = []
    row["timing"] = {k: round(v, 4) for k, v in timing.items()}
    return row, clips


# --- staging ------------------------------------------------------------------------------------


def input_version(item: InputItem) -> str:
    """A local input's size and mtime, hashed (an edited file gets a new one); ``""`` for a URL or a
    file that cannot be statted (a URL is taken to name fixed content)."""
    if "://" in item.source:
        return ""
    try:
        st = os.stat(item.source)
    except OSError:
        return ""
    return hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]


def staging_path(staging_dir: Path, item: InputItem) -> Path:
    version = input_version(item)
    return staging_dir / (f"{item.source_id}-{version}.tar" if version else f"{item.source_id}.tar")


def retry_path(staging_dir: Path, item: InputItem) -> Path:
    return staging_dir / f"{item.source_id}{RETRY_SUFFIX}"


def stage_input(item: InputItem, cfg: CurateConfig, staging_dir: Path) -> dict[str, Any]:
    """Curate one input and write its clips and row to its staging tar in one atomic write; a row to
    retry goes to its ``.retry.json`` instead, so the input stays pending."""
    row, clips = curate_input(item, cfg)
    if row.get("retry"):
        atomic_write_text(retry_path(staging_dir, item), json.dumps(row))
        return row
    path = staging_path(staging_dir, item)
    with (
        atomic_open(path, "wb") as f,
        tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for key, members in clips:
            add_sample(tar, key, members)
        add_sample(tar, ROW_KEY, {"json": row})
    retry_path(staging_dir, item).unlink(missing_ok=True)
    for old in staging_dir.glob(f"{item.source_id}*.tar"):  # the staging of an earlier version of the file
        if old != path:
            old.unlink(missing_ok=True)
    return row


def _clean_temporaries(folder: Path, patterns: list[str]) -> None:
    """Remove temporary files a killed run of this job left (atomic writes that never finished) of the
    files named by ``patterns`` (globs of final names); anyone else's files in the folder are left be.
    Safe because the caller holds the output folder's lock: no live run of this job writes them."""
    for pattern in patterns:
        for p in folder.glob(f".{pattern}.*.tmp"):
            p.unlink(missing_ok=True)


def _stage_with_ray(items: list[InputItem], cfg: CurateConfig, staging_dir: Path) -> int:
    """Map ``stage_input`` over ``items`` with Ray Data, one task per input. Returns clips written."""
    import ray

    from runtime.cluster import init_ray

    init_ray(cfg.num_cpus)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # runtime.progress reports instead
    ctx.max_errored_blocks = -1  # a worker dying on one input must not stop the job; pack() reports it

    def stage(record: dict[str, Any]) -> dict[str, Any]:
        item = InputItem(
            record["source"],
            record["caption"],
            record["actions"],
            record["rewards"],
            terminals=record.get("terminals"),
        )
        row = stage_input(item, cfg, staging_dir)
        return {"source": row["source"], "status": row["status"], "clips": row["clips"]}

    records = [asdict(i) for i in items]
    with warnings.catch_warnings():
        # Ray Data retries a task whose worker died forever by default; an input that crashes its worker
        # every time (a decoder bug) would hang the job. Ray 2.60 names no replacement for this
        # deprecated pass-through argument yet, so keep it and silence the notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ray.data.from_items(records, override_num_blocks=len(records)).map(
            stage, num_cpus=1, max_retries=2
        )
    progress = Progress("curate", len(items), unit="inputs", interval=cfg.progress_interval)
    clips = 0
    for out in ds.iter_rows():
        clips += out["clips"]
        progress.update(1, clips=out["clips"], **{out["status"]: 1})
    progress.close()
    return clips


# --- packing ------------------------------------------------------------------------------------


def _unit_hash(text: str) -> float:
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(
    sources: list[str], heldout_fraction: float, seed: int = 0, pinned: dict[str, str] | None = None
) -> dict[str, str]:
    """``{source: "train" | "heldout"}``: a source is held out when a hash of it (and ``seed``) falls
    below ``heldout_fraction``; with two or more sources and a fraction above 0, at least one is.
    ``pinned`` sources keep the split given there (their clips are already in shards); when none
    is held out, the one forced out is the lowest hash among the others."""
    pinned = pinned or {}
    u = {s: _unit_hash(f"{seed}:{s}") for s in sources}
    split = {s: pinned.get(s) or ("heldout" if u[s] < heldout_fraction else "train") for s in sources}
    free = [s for s in sources if s not in pinned]
    if heldout_fraction > 0 and len(sources) >= 2 and "heldout" not in split.values() and free:
        split[min(free, key=lambda s: (u[s], s))] = "heldout"
    return split


def split_sources(
    has_actions: dict[str, bool],
    heldout_fraction: float,
    seed: int = 0,
    pinned: dict[str, str] | None = None,
) -> dict[str, str]:
    """``{name: "train" | "heldout"}`` for sources given as ``{name: whether it has actions}``; ``pack``
    passes each input's ``name`` (its path relative to the job's input), so the split is the same
    wherever the input folder lies.

    Sources are grouped by (has actions, parent folder: the name up to its last ``/``), and each group
    is split on its own by ``assign_splits``: a source is held out when a hash of (``seed``, name)
    falls below ``heldout_fraction``, and in a group of two or more sources with none below it, the
    one with the lowest hash is. So the split is deterministic, depends on no order, and changes only
    with the names, the seed and the fraction (and, for that one forced source, with which
    other sources share its group). ``pinned`` (``{name: split}``) fixes the split of sources already
    in shards that new ones are appended to (see ``assign_splits``). Every kind of video is held out
    somewhere: an action-conditioned model always has held-out videos with actions to be evaluated
    on, and each folder of two or more sources (``vidworld samples``: atari/breakout, atari/pong,
    natural, synthetic) has held-out ones.
    """
    groups: dict[tuple[bool, str], list[str]] = {}
    for source, actions in has_actions.items():
        groups.setdefault((bool(actions), posixpath.dirname(source)), []).append(source)
    splits: dict[str, str] = {}
    for sources in groups.values():
        splits.update(assign_splits(sources, heldout_fraction, seed, pinned))
    return splits


def _previous_pack(out: Path, cfg: CurateConfig) -> tuple[list[dict[str, Any]], dict[str, str]] | None:
    """The rows and shard hashes of the last pack in ``out`` when new shards may be appended to it:
    its stats are there (they are written after the shards, and removed before any shard moves), it
    was made with these settings, its manifest says which shards hold each input, and ``DIR/shards``
    holds exactly the shards it recorded, each as big as its index says. Else None (pack anew)."""
    try:
        stats = read_stats(out / STATS_FILE)
        rows = read_manifest(out / MANIFEST_FILE)
    except (OSError, ValueError):
        return None
    hashes = stats.get(SHARD_HASHES)
    if stats.get("settings_key") != settings_key(cfg) or not isinstance(hashes, dict):
        return None
    if any("shards" not in r or "version" not in r for r in rows):  # a manifest of an older version
        return None
    names = [p.name for p in shard_paths(out, len(hashes))]
    if sorted(hashes) != names or sorted(p.name for p in (out / SHARDS_DIR).glob("shard-*.tar")) != names:
        return None
    for name in names:
        path = out / SHARDS_DIR / name
        try:
            size = json.loads(Path(index_path(str(path))).read_text())["size"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if path.stat().st_size != size:
            return None
    return rows, {n: hashes[n] for n in names}


def pack(
    items: list[InputItem], staging_dir: Path, out: Path, cfg: CurateConfig
) -> tuple[list[dict], dict[str, str]]:
    """Pack the staged clips into ``out/shards`` (``pipeline.packing``: Ray tasks write the shards, the
    driver reads no clip); return the manifest rows (with splits, and the shards holding each input's
    clips) and ``{shard file name: sha256 of its bytes}`` in shard order. Inputs with no staging file
    get a ``failed`` row.

    When ``out`` holds a pack made with these settings whose inputs are all still there, unedited,
    the clips of the new inputs are appended as new shards and the existing ones are left untouched
    (those inputs keep their splits). Otherwise every clip is packed again, in (source id, clip index)
    order, into a new folder that replaces ``out/shards`` when whole: byte-identical to a curation
    of these inputs from scratch."""
    rows: dict[str, dict[str, Any]] = {}
    staged: dict[str, tuple[Path, dict[str, Any], bool]] = {}
    progress = Progress(
        "pack: reading staged rows", len(items), unit="inputs", interval=cfg.progress_interval
    )
    for item in items:
        progress.update(1)
        path = staging_path(staging_dir, item)
        if path.is_file():
            row, has_actions = read_staged_row(path)
            staged[item.source] = (path, row, has_actions)
        elif retry_path(staging_dir, item).is_file():
            row = json.loads(retry_path(staging_dir, item).read_text())
        else:
            row = make_row(
                item.source,
                item.source_id,
                "failed",
                "the Ray task for this input died "
                "(worker crash or out of memory); rerun the same command to retry it",
                retry=True,
            )
        rows[item.source] = {**row, "version": input_version(item), "shards": []}
    progress.close()
    names = {item.source: item.split_name for item in items}
    previous = _previous_pack(out, cfg)
    packed: dict[str, dict[str, Any]] = {}
    if previous is not None:
        packed = {r["source"]: r for r in previous[0] if r["shards"]}
        if any(
            s not in staged or rows[s]["version"] != r["version"] or rows[s]["clips"] != r["clips"]
            for s, r in packed.items()
        ):
            previous, packed = None, {}  # an input in the shards was removed or edited: pack anew
    ok = [s for s, (_, row, _) in staged.items() if row["status"] == "ok"]
    splits = split_sources(
        {names[s]: staged[s][2] for s in ok},
        cfg.heldout_fraction,
        cfg.seed,
        pinned={names[s]: r["split"] for s, r in packed.items()},
    )
    for source in ok:
        rows[source]["split"] = splits[names[source]]
    new = sorted((s for s in ok if s not in packed), key=lambda s: rows[s]["source_id"])
    start = len(previous[1]) if previous is not None else 0
    plans = plan_shards(
        [(staged[s][0], rows[s]["split"], rows[s]["clips"]) for s in new], cfg.samples_per_shard, start
    )
    by_path = {str(staged[s][0]): s for s in new}
    for plan in plans:
        for path, *_ in plan["segments"]:
            rows[by_path[path]]["shards"].append(SHARD_PATTERN.format(index=plan["index"]))
    for source, row in packed.items():
        rows[source]["shards"] = row["shards"]
    appended = "appending to the shards there" if previous is not None else "packing every clip anew"
    print(
        f"curate: {sum(rows[s]['clips'] for s in new)} clips of {len(new)} inputs into {len(plans)} "
        f"shards, {appended}",
        file=sys.stderr,
        flush=True,
    )
    clean_leftovers(out)
    hashes = write_shards(plans, out / WRITING_DIR, cfg.num_cpus, cfg.progress_interval)
    # The stats go first: until the new ones are written the folder does not read as complete, while
    # shards move in (an append) or the folders are swapped (a repack).
    (out / STATS_FILE).unlink(missing_ok=True)
    commit(out, replace=previous is None)
    if previous is not None:
        hashes = {**previous[1], **hashes}
    return list(rows.values()), hashes


# --- the job ------------------------------------------------------------------------------------


def curation_inputs(spec: str) -> list[InputItem]:
    """The job's inputs, sorted by source id: ``list_inputs(spec)`` less branch files (``*.npz``, the
    counterfactual evaluation data that ``vidworld samples`` writes beside its videos; see
    ``pipeline.branches``), which are not videos to cut into clips."""
    items = [i for i in list_inputs(spec) if not i.source.endswith(BRANCH_SUFFIX)]
    if not items:
        raise ValueError(f"input {spec!r} matched only branch files ({BRANCH_SUFFIX}), no videos")
    return sorted(items, key=lambda i: i.source_id)


def run(cfg: CurateConfig) -> dict[str, Any]:
    """Run the whole job; returns the stats (also in ``DIR/stats.json``), with ``complete`` False
    when ``max_inputs`` stopped it before packing or some inputs must be retried (``retry`` lists
    them). Holds ``DIR``'s writer lock: a second job on the same folder stops with ``FolderBusy``."""
    cfg.validate()
    with folder_lock(cfg.output, "vidworld curate"):
        return _run_locked(cfg)


def _run_locked(cfg: CurateConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    out = Path(cfg.output)
    items = curation_inputs(cfg.input)
    staging_dir = out / "staging" / cfg.fingerprint()
    staging_dir.mkdir(parents=True, exist_ok=True)
    clean_leftovers(out)
    pending = [i for i in items if not staging_path(staging_dir, i).is_file()]
    _clean_temporaries(staging_dir, [f"{i.source_id}*" for i in pending])
    print(
        f"curate: {len(items)} inputs, {len(items) - len(pending)} already staged, {len(pending)} to do",
        file=sys.stderr,
        flush=True,
    )
    limited = bool(cfg.max_inputs) and len(pending) > cfg.max_inputs
    if cfg.max_inputs:
        pending = pending[: cfg.max_inputs]
    if pending:
        _stage_with_ray(pending, cfg, staging_dir)
    if limited:
        print(
            f"curate: stopped after max_inputs={cfg.max_inputs} new inputs; rerun to finish",
            file=sys.stderr,
        )
        return {"complete": False, "staged": len(pending)}
    key = _pack_key(items, staging_dir, cfg)
    stats = _packed_stats(out, key)
    if stats is not None:
        print("curate: nothing new since the last run; its shards, manifest and stats stand", file=sys.stderr)
    else:
        rows, hashes = pack(items, staging_dir, out, cfg)  # removes the old stats before any shard moves
        timing: Counter = Counter()
        for row in rows:
            timing.update(row.pop("timing", {}))
        write_manifest(rows, out / MANIFEST_FILE)
        stats = summarize(rows, cfg.clip_frames / cfg.fps, len(hashes))
        stats["worker_seconds"] = {k: round(v, 3) for k, v in sorted(timing.items())}
        retry = sorted(r["source"] for r in retry_rows(rows))
        stats["complete"] = not retry
        stats["retry"] = retry
        stats["pack_key"] = key
        stats["inputs_key"] = inputs_key(items)
        stats["settings_key"] = settings_key(cfg)
        stats[SHARD_HASHES] = hashes  # what later stages fingerprint these shards by
        write_stats(stats, out / STATS_FILE)
    print(
        f"curate: {stats['clips']} clips in {stats['shards']} shards from {stats['inputs']} inputs "
        f"({stats['inputs_by_status']}) in {time.monotonic() - t0:.1f} s\n"
        f"  shards:   {out / SHARDS_DIR / SHARD_PATTERN.format(index=0).replace('000000', '*')}\n"
        f"  manifest: {out / MANIFEST_FILE}\n  stats:    {out / STATS_FILE}",
        flush=True,
    )
    return stats


def inputs_key(items: list[InputItem]) -> str:
    """What the inputs are: each source with its ``input_version`` (size and mtime of a local file),
    and its sidecars'; any input added, removed or edited changes it. One ``stat`` per file."""
    h = hashlib.sha1()
    for item in sorted(items, key=lambda i: i.source):
        sides = [(u, input_version(InputItem(u))) for u in (item.actions, item.rewards, item.terminals) if u]
        h.update(json.dumps([item.source, input_version(item), item.caption, sides]).encode() + b"\n")
    return h.hexdigest()[:16]


def settings_key(cfg: CurateConfig) -> str:
    """The settings the shards are a function of: those that change a clip's bytes, and the packing
    settings (clips per shard, which sources are held out)."""
    blob = json.dumps([cfg.fingerprint(), cfg.samples_per_shard, cfg.heldout_fraction, cfg.seed])
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _pack_key(items: list[InputItem], staging_dir: Path, cfg: CurateConfig) -> str:
    """What the shards are a function of: the settings, the staged inputs (a staging file never
    changes once written, so its name and size stand for its content) and the inputs' names."""
    h = hashlib.sha1(settings_key(cfg).encode())
    for item in items:
        path = staging_path(staging_dir, item)
        size = path.stat().st_size if path.is_file() else -1
        h.update(f"{item.source_id}:{item.split_name}:{size}\n".encode())  # the name decides the split
    return h.hexdigest()[:16]


def _packed_stats(out: Path, key: str) -> dict[str, Any] | None:
    """The last run's stats when it packed exactly this (so packing again would rewrite the same bytes);
    stats of an older version, without the shards' hashes, are packed again to record them."""
    try:
        stats = read_stats(out / STATS_FILE)
    except (OSError, ValueError):
        return None
    if not stats.get("complete") or stats.get("pack_key") != key or SHARD_HASHES not in stats:
        return None
    if not (out / MANIFEST_FILE).is_file():
        return None
    return stats if all(p.is_file() for p in shard_paths(out, int(stats.get("shards", -1)))) else None


def is_complete(cfg: CurateConfig) -> bool:
    """Whether ``cfg.output`` holds a finished curation of ``cfg.input`` as it is now: the stats say
    complete (no input waits for a retry), every shard they count is there, the manifest has a row
    for exactly the inputs, no input was added, removed or edited since (``inputs_key``), and they were
    made with these settings (``settings_key``; stats of an older version, without it, are taken as
    they are)."""
    out = Path(cfg.output)
    try:
        stats = read_stats(out / STATS_FILE)
        rows = read_manifest(out / MANIFEST_FILE)
    except (OSError, ValueError):
        return False
    shards = shard_paths(out, int(stats.get("shards", -1)))
    if not stats.get("complete") or "shards" not in stats or not all(p.is_file() for p in shards):
        return False
    if retry_rows(rows) or stats.get("settings_key", settings_key(cfg)) != settings_key(cfg):
        return False
    try:  # listed last: for a URL or list file it is the slow part
        items = curation_inputs(cfg.input)
    except ValueError:
        return False
    return {i.source for i in items} == {r["source"] for r in rows} and stats.get("inputs_key") == inputs_key(
        items
    )


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld curate jobs/curate.yaml input=PATH output=DIR [key=value ...]``.

    Exit codes: 0 done, 1 no usable input listing or the output folder is busy, 2 config error,
    3 stopped by ``max_inputs``, 4 some inputs failed for a reason other than their content (rerun)."""
    cfg = load_config(CurateConfig, config_path, overrides)
    try:
        stats = run(cfg)
    except ConfigError:
        raise
    except (ValueError, FolderBusy) as e:  # no inputs matched, bad list file, another writer: named
        print(f"vidworld curate: {e}", file=sys.stderr)
        return 1
    if stats.get("retry"):
        rows = {r["source"]: r for r in retry_rows(read_manifest(Path(cfg.output) / MANIFEST_FILE))}
        lines = "\n".join(f"  {s}: {rows[s]['reason'] if s in rows else ''}" for s in stats["retry"])
        print(
            f"vidworld curate: {len(stats['retry'])} input(s) failed for a reason other than their content "
            f"(I/O error, vanished file, worker crash or out of memory); the others are kept. Fix the cause "
            f"and rerun the same command to retry exactly these:\n{lines}",
            file=sys.stderr,
        )
        return EXIT_RETRY
    return 0 if stats["complete"] else 3


def iter_shard(path: str | os.PathLike) -> list[tuple[str, dict[str, bytes]]]:
    """The samples of one shard as ``(key, {ext: bytes})``, in order (for tools and tests)."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return list(samples.items())
