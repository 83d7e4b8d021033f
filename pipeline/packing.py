"""Packing staged clips into shards, in the Ray workers, in bounded memory.

The driver never reads a clip. It reads each staging tar's headers and its row (``read_staged_row``),
cuts the clips, in (source id, clip index) order, into shards of ``samples_per_shard`` (``plan_shards``:
each shard a list of segments ``[staging tar, split, first clip, clips]``), and hands one plan per
shard to a Ray task (``write_shards``). A task streams its segments from the staging tars into one
shard tar (``write_shard``), one clip in memory at a time, writes the shard's index and returns the
shard's sha256. So no process holds more than one clip, whatever the number of clips, and a shard's
bytes depend only on its plan: the same plans give byte-identical shards, however the tasks are
scheduled.

Every shard of a pack is first written under ``DIR/.shards.writing/``; only when all of them are there
does ``commit`` put them in place: a repack swaps the whole folder (``DIR/shards`` -> ``DIR/.shards.old``,
``DIR/.shards.writing`` -> ``DIR/shards``, the old one removed), an append moves the new shards in beside
the existing ones, which are never rewritten. A run killed while writing leaves ``DIR/shards`` and its
stats as they were (still a complete curation of the inputs it was made from); ``clean_leftovers``
removes what it wrote, under the caller's folder lock.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.shards import SHARD_PATTERN, SHARDS_DIR, ShardWriter
from runtime.progress import Progress

WRITING_DIR = ".shards.writing"  # DIR/WRITING_DIR: the shards of a pack in progress
OLD_DIR = ".shards.old"  # DIR/OLD_DIR: the shards a repack replaced, for the instant of the swap
ROW_KEY = "row"  # the staging tar member (ROW_KEY.json) that holds the input's manifest row


def read_staged_row(path: Path) -> tuple[dict[str, Any], bool]:
    """A staging tar's manifest row and whether its clips carry actions, reading only the tar's
    headers and the row (never a clip's bytes)."""
    row = None
    has_actions = False
    with tarfile.open(path) as tar:
        for member in tar:  # a regular file's data is skipped with a seek, not read
            if member.name == f"{ROW_KEY}.json":
                row = json.loads(tar.extractfile(member).read())
            elif member.name.endswith(".actions.npy"):
                has_actions = True
    if row is None:
        raise ValueError(
            f"staging file {path} has no {ROW_KEY}.json member; delete it and rerun to curate that "
            "input again"
        )
    return row, has_actions


def iter_staged_clips(path: str | Path, start: int, count: int) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Clips ``start .. start + count - 1`` of a staging tar as ``(key, {ext: bytes})``, in tar order,
    one at a time: only the clip being yielded is in memory."""
    key, members, index = None, {}, -1
    with tarfile.open(path) as tar:
        for member in tar:
            name, ext = member.name.split(".", 1)
            if name == ROW_KEY:
                break
            if name != key:
                if key is not None and start <= index:
                    yield key, members
                key, members, index = name, {}, index + 1
                if index >= start + count:
                    return
            if start <= index:
                members[ext] = tar.extractfile(member).read()
        if key is not None and start <= index < start + count:
            yield key, members


def plan_shards(
    inputs: list[tuple[str, str, int]], samples_per_shard: int, start_index: int = 0
) -> list[dict[str, Any]]:
    """Cut the clips of ``inputs`` (``(staging tar, split, clips)``, in packing order) into shards of
    ``samples_per_shard`` clips (the last may hold fewer), numbered from ``start_index``. Returns one
    plan per shard: ``{"index": shard number, "segments": [[staging tar, split, first clip, clips]]}``."""
    plans: list[dict[str, Any]] = []
    room = 0
    for path, split, clips in inputs:
        first = 0
        while first < clips:
            if room == 0:
                plans.append({"index": start_index + len(plans), "segments": []})
                room = samples_per_shard
            take = min(room, clips - first)
            plans[-1]["segments"].append([str(path), split, first, take])
            first += take
            room -= take
    return plans


def write_shard(plan: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write the shard of one plan (``plan_shards``) into ``out_dir``, with its index, streaming the
    clips from their staging tars and adding each clip's ``split`` to its JSON. Returns
    ``{"name", "sha256", "clips"}``. Raises ``ValueError`` when a staging tar holds fewer clips than
    planned (it changed under the job)."""
    want = sum(count for _, _, _, count in plan["segments"])
    with ShardWriter(out_dir, max(want, 1), start_index=plan["index"]) as writer:
        for path, split, start, count in plan["segments"]:
            got = 0
            for key, members in iter_staged_clips(path, start, count):
                meta = json.loads(members["json"])
                meta["split"] = split
                writer.write(key, {**members, "json": meta})
                got += 1
            if got != count:
                raise ValueError(
                    f"staging file {path} holds {start + got} clips, not the {start + count} its row says; "
                    "delete it and rerun to curate that input again"
                )
    (name,) = writer.sha256
    return {"name": name, "sha256": writer.sha256[name], "clips": want}


def write_shards(
    plans: list[dict[str, Any]], out_dir: Path, num_cpus: int | None = None, progress_interval: float = 5.0
) -> dict[str, str]:
    """Write every planned shard into ``out_dir``, one Ray task per shard, at most twice as many in
    flight as the cluster has CPUs; returns ``{shard file name: sha256}`` in shard order. Raises
    ``RuntimeError`` naming the shard when a task failed (what was written stays in ``out_dir``, not
    in the dataset). ``num_cpus``: of a local Ray cluster, when none is running yet
    (``runtime.cluster.init_ray``).

    Plain tasks, not Ray Data: the plans are known up front and nothing flows back but a hash, and
    Ray Data's executor cost seconds per pack on small jobs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not plans:
        return {}
    import ray

    from runtime.cluster import init_ray

    init_ray(num_cpus)
    task = ray.remote(num_cpus=1, max_retries=2)(write_shard)  # retried when a worker dies
    window = 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    progress = Progress("pack", len(plans), unit="shards", interval=progress_interval)
    hashes: dict[str, str] = {}
    todo = iter(plans)
    running: dict[Any, dict[str, Any]] = {}
    try:
        while True:
            while len(running) < window and (plan := next(todo, None)) is not None:
                running[task.remote(plan, str(out_dir))] = plan
            if not running:
                break
            (ref,), _ = ray.wait(list(running), num_returns=1)
            plan = running.pop(ref)
            try:
                out = ray.get(ref)
            except Exception as e:
                name = SHARD_PATTERN.format(index=plan["index"])
                raise RuntimeError(f"packing stopped: shard {name} could not be written ({e})") from e
            hashes[out["name"]] = out["sha256"]
            progress.update(1, clips=out["clips"])
    finally:
        for ref in running:  # after a failure: stop the rest
            ray.cancel(ref)
        progress.close()
    return {n: hashes[n] for n in (SHARD_PATTERN.format(index=p["index"]) for p in plans)}


def clean_leftovers(out: Path) -> None:
    """Remove what a killed pack left (a folder being written, or a replaced one). Only under the
    output folder's lock: no live pack writes them. A pack killed in the instant between the two
    renames of a swap leaves no ``DIR/shards``: its stats were removed first, so the folder reads as
    not complete and the next run packs again."""
    for name in (WRITING_DIR, OLD_DIR):
        shutil.rmtree(out / name, ignore_errors=True)


def commit(out: Path, replace: bool) -> None:
    """Put the shards of ``DIR/.shards.writing`` in place: with ``replace``, as the whole new
    ``DIR/shards`` (swapping the folders); else beside the shards already there (an append: new file
    names only, nothing existing is rewritten). The caller removed the stats first and writes them
    after, so a half-done commit is never taken for a complete curation."""
    writing, shards = out / WRITING_DIR, out / SHARDS_DIR
    if replace:
        if shards.exists():
            shards.rename(out / OLD_DIR)
        writing.rename(shards)
        shutil.rmtree(out / OLD_DIR, ignore_errors=True)
        return
    shards.mkdir(parents=True, exist_ok=True)
    for path in sorted(writing.iterdir()):
        if (shards / path.name).exists():
            raise FileExistsError(f"{shards / path.name} exists; an append never rewrites a shard")
        path.rename(shards / path.name)
    writing.rmdir()
