"""Atomic file writes, and one writer per output folder.

Every artifact vidworld writes (shards, manifests, checkpoints, configs, reports) goes through
``atomic_open``: write to a temporary name in the same folder, flush and fsync, then
``os.replace``; a reader sees the old file or the whole new one, never a torn write. Files get
the permissions the umask allows (as ``open`` would give), so teammates on shared storage can
read them.

``folder_lock(folder)`` makes one process the folder's writer: a second one stops at once with
``FolderBusy`` naming the holder's host and pid. The lock is an ``flock`` on ``FOLDER/.lock``:
the kernel drops it when the holder dies, so a stale lock from a dead process is simply taken.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on clean exit it replaces ``path``, on error it is removed."""
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing; got mode {mode!r}")
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp makes 0600; give what open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def current_umask() -> int:
    """The process umask (read from /proc where it can be, without changing it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


LOCK_FILE = ".lock"


class FolderBusy(RuntimeError):
    """Another live process is writing the folder; the message names it."""


# fsspec filesystems that are optional extras of vidworld (pyproject.toml).
_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def url_filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path)`` of a URL or local path; a missing filesystem package (``s3fs``,
    ``gcsfs``) raises ``ImportError`` naming the vidworld extra that installs it."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        scheme = url.split("://", 1)[0]
        extra = _EXTRAS.get(scheme)
        fix = f"pip install 'vidworld[{extra}]'" if extra else f"install fsspec's {scheme}:// filesystem"
        raise ImportError(f"reading {url} needs fsspec's {scheme}:// filesystem ({e}); {fix}") from e


def require_local_folder(folder: str | os.PathLike, key: str) -> None:
    """Refuse a URL (``s3://``, ``gs://``...) where an output folder goes: ``Path`` would quietly turn
    ``s3://b/x`` into a local folder ``s3:/b/x``. Raises ``ValueError`` naming ``key`` and the fix."""
    text = os.fspath(folder)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"{key}={text!r} is a {scheme}:// URL, but outputs are written to a local or shared filesystem "
            "folder (inputs and shards can be read from object storage; outputs cannot be written there "
            f"yet). Set {key} to a folder, and copy it to the bucket afterwards (e.g. aws s3 sync DIR {text})"
        )


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the block (the folder is created); raises ``FolderBusy``
    at once when another process holds it, and ``ValueError`` for a URL (``require_local_folder``).
    ``what`` (e.g. "vidworld train") is recorded for the message a second writer gets."""
    require_local_folder(folder, "output")
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(
                f"{root} is being written by {_holder(path)}; wait for it to finish, stop it, or choose "
                "another output folder (one writer per folder)"
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": what or " ".join(sys.argv[:2]),
        }
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        os.close(fd)  # closing drops the flock


def _holder(path: Path) -> str:
    """``host pid N (command, since T)`` from a lock file, as far as it can be read."""
    try:
        h = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process (its lock file cannot be read)"
    if not h:
        return "another process (it is just starting)"
    host, pid, command, since = (h.get(k, "?") for k in ("host", "pid", "command", "since"))
    return f"{host} pid {pid} ({command}, since {since})"
