"""The curation manifest and stats: every input accounted for.

``DIR/manifest.jsonl`` has one JSON row per input, sorted by ``source``::

    {"source": str, "source_id": str, "status": "ok" | "skipped" | "failed", "reason": str,
     "clips": int, "split": "train" | "heldout", "filtered": {reason: clips dropped},
     "probe": {container, codec, width, height, fps, duration, rotation, num_frames} | null,
     "version": str, "shards": [shard file name, ...]}

``version`` is the input's version (a hash of a local file's size and mtime, empty for a URL) and
``shards`` the shard files holding its clips (which inputs each shard holds); the job adds both
when it packs (``pipeline.packing``).

``reason`` is empty for an ``ok`` row without remarks. A ``failed`` row whose cause was a failure to
read the input or to run its task (I/O error, vanished file, worker crash or out of memory), not the
input's content, also has ``"retry": true``: the job did not finish it, and a rerun tries it again.
``DIR/stats.json`` holds the totals:
inputs by status, clips, clips dropped per filter reason, seconds of source and of clips,
source resolutions, clips and sources per split, and ``shard_sha256``: ``{shard file name: sha256 of
its bytes}``, which later stages fingerprint the folder by (``runtime.fingerprint``).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from runtime.files import atomic_write_text
from runtime.fingerprint import SHARD_HASHES, STATS_FILE  # noqa: F401  (DIR/STATS_FILE: the totals)

MANIFEST_FILE = "manifest.jsonl"  # DIR/MANIFEST_FILE: the rows
STATUSES = ("ok", "skipped", "failed")


def make_row(
    source: str,
    source_id: str,
    status: str,
    reason: str = "",
    clips: int = 0,
    filtered: dict[str, int] | None = None,
    probe: dict[str, Any] | None = None,
    retry: bool = False,
) -> dict[str, Any]:
    """One manifest row (``split`` is added when the job packs its shards); ``retry`` marks a failure
    that was not the input's fault (see the module docstring)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    if retry and status != "failed":
        raise ValueError(f"only a failed row can be retried, got status {status!r}")
    row = {
        "source": source,
        "source_id": source_id,
        "status": status,
        "reason": reason,
        "clips": clips,
        "filtered": dict(sorted((filtered or {}).items())),
        "probe": probe,
    }
    if retry:
        row["retry"] = True
    return row


def retry_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows a rerun must try again (failures that were not the input's fault)."""
    return [r for r in rows if r.get("retry")]


def write_manifest(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as JSON lines, sorted by source, atomically."""
    rows = sorted(rows, key=lambda r: r["source"])
    return atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_manifest(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def summarize(rows: list[dict[str, Any]], clip_seconds: float, shards: int) -> dict[str, Any]:
    """Totals of a manifest; ``clip_seconds`` is one clip's length in seconds."""
    status = Counter(r["status"] for r in rows)
    filtered: Counter = Counter()
    resolutions: Counter = Counter()
    split_clips: Counter = Counter()
    split_sources: Counter = Counter()
    source_seconds = 0.0
    for r in rows:
        filtered.update(r.get("filtered") or {})
        if r.get("probe"):
            resolutions[f"{r['probe']['width']}x{r['probe']['height']}"] += 1
            source_seconds += r["probe"]["duration"]
        if r["status"] == "ok":
            split_clips[r["split"]] += r["clips"]
            split_sources[r["split"]] += 1
    clips = sum(r["clips"] for r in rows)
    return {
        "inputs": len(rows),
        "inputs_by_status": {s: status.get(s, 0) for s in STATUSES},
        "clips": clips,
        "clips_filtered": dict(sorted(filtered.items())),
        "shards": shards,
        "source_seconds": round(source_seconds, 3),
        "clip_seconds": round(clips * clip_seconds, 3),
        "source_resolutions": dict(sorted(resolutions.items())),
        "clips_by_split": dict(sorted(split_clips.items())),
        "sources_by_split": dict(sorted(split_sources.items())),
    }


def write_stats(stats: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(stats, indent=2, sort_keys=True) + "\n")


def read_stats(path: str | os.PathLike) -> dict[str, Any]:
    """The stats object at ``path``; ``OSError`` when unreadable, ``ValueError`` when not a JSON object."""
    stats = json.loads(Path(path).read_text())
    if not isinstance(stats, dict):
        raise ValueError(f"{path}: expected a JSON object of totals, got {type(stats).__name__}")
    return stats
