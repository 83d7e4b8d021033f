"""List the inputs of a curation job: a folder, a glob, an fsspec URL, or a list file.

``list_inputs(spec)`` accepts

- a local folder: every file under it, recursively (hidden files and action/reward sidecars
  excepted; a file that is not a video still becomes an input so the manifest can say so);
- a glob (``videos/**/*.mp4``) or an fsspec URL or URL glob (``s3://bucket/videos/``, ``memory://x.mp4``);
- a list file ``*.txt`` (one URL per line, ``#`` comments), ``*.csv`` or ``*.parquet`` with a
  ``url`` column and optional ``caption``, ``actions``, ``rewards`` and ``terminals`` columns (URLs
  of ``.npy`` files). Relative paths in a list file are relative to the list file's folder.

Each input has two names. ``source_id`` hashes its canonical location (the resolved absolute path,
symlinks followed, or the URL), so one file named two ways (``videos/a.mp4``, ``./videos/a.mp4``,
``/data/videos/a.mp4``) is one input with one set of clips. ``name`` is its path relative to what the
job was given (the folder, the glob's fixed prefix, the list file's folder), so the held-out split,
which hashes ``name``, is the same wherever the folder lies or is mounted: moving ``samples/`` from
``/tmp`` to ``/data`` holds out the same videos.

Beside a video ``NAME.EXT``, the files ``NAME.actions.npy``, ``NAME.rewards.npy`` and
``NAME.terminals.npy`` are picked up as its per-frame actions, rewards and episode ends (see
``pipeline.samples`` for the convention).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.files import url_filesystem

SIDECAR_SUFFIXES = (".actions.npy", ".rewards.npy", ".terminals.npy")
LIST_SUFFIXES = (".txt", ".csv", ".parquet")


@dataclass(frozen=True)
class InputItem:
    """One input of the job. ``source`` is a local path or an fsspec URL; ``name`` its path relative
    to the job's input (default: ``source``); the others are optional."""

    source: str
    caption: str | None = None
    actions: str | None = None
    rewards: str | None = None
    name: str | None = None
    terminals: str | None = None  # after name: positional construction predates it

    @property
    def location(self) -> str:
        """The canonical location: a URL as given, a local path resolved (absolute, symlinks followed)."""
        return self.source if _is_url(self.source) else os.path.realpath(self.source)

    @property
    def source_id(self) -> str:
        """A stable 16-hex-digit id of the canonical location: its staging name and the prefix of its
        clip keys."""
        return hashlib.sha1(self.location.encode()).hexdigest()[:16]

    @property
    def split_name(self) -> str:
        """What the held-out split hashes: ``name``, or the source when there is none."""
        return self.name if self.name is not None else self.source


def _is_url(spec: str) -> bool:
    return "://" in spec and not spec.startswith("file://")


def _sidecars(source: str) -> tuple[str | None, str | None, str | None]:
    """The actions, rewards and terminals files beside ``source`` (each None when absent)."""
    base = source.rsplit(".", 1)[0] if "." in os.path.basename(source) else source
    found = []
    for suffix in SIDECAR_SUFFIXES:
        candidate = base + suffix
        try:
            exists = (
                url_filesystem(candidate)[0].exists(candidate)
                if _is_url(candidate)
                else Path(candidate).is_file()
            )
        except (OSError, ValueError):
            exists = False
        found.append(candidate if exists else None)
    return found[0], found[1], found[2]


def _keep(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and not name.endswith(SIDECAR_SUFFIXES)


def _relative(source: str, root: str) -> str:
    """``source`` relative to the folder ``root`` when it lies under it; with no root, a relative
    local path as it is; else the file name."""
    root = root.rstrip("/")
    if root and source.startswith(root + "/"):
        return source[len(root) + 1 :]
    if not root and not _is_url(source) and not os.path.isabs(source):
        return os.path.normpath(source)
    return source.rsplit("/", 1)[-1]


def _fixed_prefix(pattern: str) -> str:
    """The folder of a glob before its first wildcard: ``videos/**/*.mp4`` -> ``videos``."""
    parts = pattern.split("/")
    fixed = next((i for i, part in enumerate(parts) if globlib.has_magic(part)), len(parts))
    return "/".join(parts[:fixed])


def _with_sidecars(sources: list[str], root: str) -> list[InputItem]:
    """Items for ``sources`` (deduplicated by canonical location), named relative to ``root``."""
    items: dict[str, InputItem] = {}
    for s in sorted(set(sources)):
        if _keep(s):
            actions, rewards, terminals = _sidecars(s)
            item = InputItem(s, None, actions, rewards, _relative(s, root), terminals)
            items.setdefault(item.location, item)
    return list(items.values())


def _resolve(ref: str, base: str) -> str:
    if _is_url(ref) or os.path.isabs(ref):
        return ref
    return os.path.normpath(os.path.join(base, ref))


def _read_list(path: str) -> list[InputItem]:
    import pandas as pd

    base = os.path.dirname(path) if not _is_url(path) else path.rsplit("/", 1)[0]
    data = read_bytes(path)
    if path.endswith(".txt"):
        lines = [ln.strip() for ln in data.decode().splitlines()]
        return _with_sidecars([_resolve(ln, base) for ln in lines if ln and not ln.startswith("#")], base)
    frame = pd.read_csv(io.BytesIO(data)) if path.endswith(".csv") else pd.read_parquet(io.BytesIO(data))
    if "url" not in frame.columns:
        raise ValueError(f"list file {path} has no 'url' column (columns: {list(frame.columns)}); add one")
    items = []
    for row in frame.to_dict("records"):

        def opt(col: str, row: dict = row) -> str | None:
            value = row.get(col)
            return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

        source = _resolve(str(row["url"]), base)
        side_a, side_r, side_t = _sidecars(source)
        actions, rewards, terminals = opt("actions"), opt("rewards"), opt("terminals")
        items.append(
            InputItem(
                source,
                opt("caption"),
                _resolve(actions, base) if actions else side_a,
                _resolve(rewards, base) if rewards else side_r,
                _relative(source, base),
                _resolve(terminals, base) if terminals else side_t,
            )
        )
    unique = {i.location: i for i in reversed(sorted(items, key=lambda i: i.source))}
    return sorted(unique.values(), key=lambda i: i.source)


def list_inputs(spec: str) -> list[InputItem]:
    """All inputs named by ``spec`` (see the module docstring), sorted by source. Raises ``ValueError``
    naming ``spec`` when it matches nothing."""
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    if spec.endswith(LIST_SUFFIXES) and (_is_url(spec) or Path(spec).is_file()):
        items = _read_list(spec)
    elif _is_url(spec):
        fs, root = url_filesystem(spec)
        if globlib.has_magic(spec):
            paths, base = fs.glob(root), _fixed_prefix(root)
        elif fs.isdir(root):
            paths, base = [p for p in fs.find(root) if not fs.isdir(p)], root
        else:
            paths, base = [root], ""
        urls = [fs.unstrip_protocol(p) for p in paths]
        items = _with_sidecars(urls, fs.unstrip_protocol(base) if base else "")
    elif globlib.has_magic(spec):
        paths = [p for p in globlib.glob(spec, recursive=True) if os.path.isfile(p)]
        items = _with_sidecars(paths, _fixed_prefix(spec))
    elif Path(spec).is_dir():
        items = _with_sidecars([str(p) for p in Path(spec).rglob("*") if p.is_file()], str(Path(spec)))
    elif Path(spec).is_file():
        items = _with_sidecars([spec], "")
    else:
        raise ValueError(
            f"input {spec!r} is not a folder, file, glob, URL or list file that exists; check the path"
        )
    if not items:
        raise ValueError(f"input {spec!r} matched no files; check the path or pattern")
    return items


def read_bytes(url: str) -> bytes:
    """The bytes of a local path or fsspec URL."""
    fs, path = url_filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def load_array(url: str) -> np.ndarray:
    """A ``.npy`` file (local or fsspec URL) as an array, never unpickling."""
    return np.load(io.BytesIO(read_bytes(url)), allow_pickle=False)
