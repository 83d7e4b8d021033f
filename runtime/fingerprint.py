"""Content fingerprints of the data a stage reads, so that its completeness check notices new data.

A shard folder (``DIR/shards/*.tar`` beside ``DIR/stats.json``, as curation and tokenize write it)
records the sha256 of every shard's bytes, hashed while the shard was streamed to disk
(``HashingWriter``), in its stats: ``SHARD_HASHES`` = ``{"shard-000000.tar": "<hex>", ...}``. The
folder's fingerprint (``shards_fingerprint``) is a hash of those recorded hashes, so checking a folder
of thousands of shards reads one JSON file and lists one folder; no shard is read.

When the recorded hashes do not name exactly the ``.tar`` files there (a folder written by an older
version, which recorded none, or shards added or removed by hand), the files themselves are hashed
instead: the same fingerprint for the same bytes, but every byte is read, at every check. Rerunning
the job that wrote the folder records the hashes. The recorded hashes stand for the bytes: a shard
edited in place by hand, outside the jobs, is not noticed.

Any other spec (a glob, a brace or comma list of files) is fingerprinted file by file: by the hash
recorded for it in the stats of the folder it lies in (``DIR/shards/NAME`` and ``DIR/stats.json``),
else by hashing it; a URL (``s3://...``, ``pipe:...``) by its text alone: its content is never
fetched here.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import braceexpand

STATS_FILE = "stats.json"  # DIR/STATS_FILE: a shard folder's totals (pipeline.manifest writes it)
SHARDS_DIR = "shards"  # DIR/SHARDS_DIR holds a dataset's shards (pipeline.shards)
SHARD_HASHES = "shard_sha256"  # the stats key: {shard file name: sha256 of its bytes, hex}


class HashingWriter:
    """A binary file that hashes (sha256) every byte written through it, e.g.
    ``tarfile.open(fileobj=HashingWriter(f), mode="w")``; ``hexdigest()`` once done."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._hash = hashlib.sha256()

    def write(self, data: Any) -> int:
        self._hash.update(data)
        return self._f.write(data)

    def tell(self) -> int:
        return self._f.tell()

    def flush(self) -> None:
        self._f.flush()

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _hash_rest(h: Any, f: IO[bytes]) -> str:
    """Feed the rest of ``f`` to ``h`` in 1 MiB pieces; returns the hex digest."""
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, hex."""
    with open(path, "rb") as f:
        return _hash_rest(hashlib.sha256(), f)


def safetensors_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a safetensors file's tensors: the header as canonical JSON (sorted keys) and the
    data after it. ``file_sha256`` would differ between two saves of the same tensors: safetensors
    writes its ``__metadata__`` map in an order that changes from one process to the next."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        try:
            header = json.loads(f.read(size))
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file (its header is not JSON): {e}") from e
        h.update(json.dumps(header, sort_keys=True).encode())
        return _hash_rest(h, f)


def combine(pairs: Iterable[tuple[str, str]]) -> str:
    """One fingerprint (16 hex digits) of ``(name, hash)`` pairs, in their order."""
    h = hashlib.sha256()
    for name, digest in pairs:
        h.update(f"{name} {digest}\n".encode())
    return h.hexdigest()[:16]


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """The fingerprint of files by their names and content (small files: each one is read)."""
    return combine((Path(p).name, file_sha256(p)) for p in paths)


def recorded_hashes(folder: str | os.PathLike) -> dict[str, str] | None:
    """The shard hashes ``folder/stats.json`` records, or ``None`` (no stats, or none recorded)."""
    try:
        stats = json.loads((Path(folder) / STATS_FILE).read_text())
    except (OSError, ValueError):
        return None
    hashes = stats.get(SHARD_HASHES) if isinstance(stats, dict) else None
    if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
        return None
    return hashes


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """A shard folder's fingerprint: of the hashes its stats record when they name exactly its
    ``.tar`` files, else of the files' own bytes (see the module docstring). ``FileNotFoundError``
    when it holds no shards."""
    root = Path(folder)
    shard_dir = root / SHARDS_DIR if (root / SHARDS_DIR).is_dir() else root
    names = sorted(p.name for p in shard_dir.glob("*.tar") if p.is_file())
    if not names:
        raise FileNotFoundError(f"{root} holds no .tar shards (looked in {shard_dir})")
    hashes = recorded_hashes(root)
    if hashes is None or sorted(hashes) != names:
        hashes = {n: file_sha256(shard_dir / n) for n in names}
    return combine((n, hashes[n]) for n in names)


def _is_url(item: str) -> bool:
    return "://" in item or item.startswith("pipe:")


def _split_commas(spec: str) -> list[str]:
    """``a,b{1,2}`` -> ``['a', 'b{1,2}']``: the commas outside braces separate parts."""
    parts, depth, cur = [], 0, ""
    for ch in spec:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [p.strip() for p in [*parts, cur] if p.strip()]


def shards_fingerprint(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> str:
    """The fingerprint of the shards a spec names (a training config's ``data.shards``, tokenize's
    ``input``): a folder's by ``folder_fingerprint``; a glob, brace or comma list by each file's bytes;
    a URL by its text. ``FileNotFoundError`` for a file or pattern that names nothing."""
    if isinstance(spec, (str, os.PathLike)):
        if os.path.isdir(spec):
            return folder_fingerprint(spec)
        parts = _split_commas(os.fspath(spec))
    else:
        parts = [os.fspath(p) for p in spec]
    pairs: list[tuple[str, str]] = []
    recorded: dict[Path, dict[str, str]] = {}  # per folder, read once
    for part in parts:
        for item in braceexpand.braceexpand(part):
            if _is_url(item):
                pairs.append(("url", item))
                continue
            found = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
            if not found:
                raise FileNotFoundError(f"shard pattern {item!r} matches no file")
            for path in found:
                if os.path.isdir(path):
                    pairs.append(("folder", folder_fingerprint(path)))
                else:
                    pairs.append((os.path.basename(path), _file_hash(Path(path), recorded)))
    return combine(pairs)


def _file_hash(path: Path, recorded: dict[Path, dict[str, str]]) -> str:
    """A shard's recorded hash (``DIR/shards/NAME`` in ``DIR/stats.json``), else its bytes' sha256."""
    if not path.is_file():
        raise FileNotFoundError(f"shard {str(path)!r} does not exist")
    root = path.parent.parent if path.parent.name == SHARDS_DIR else path.parent
    if root not in recorded:
        recorded[root] = recorded_hashes(root) or {}
    return recorded[root].get(path.name) or file_sha256(path)
