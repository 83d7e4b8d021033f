"""Checkpoint folders of a training run: DeepSpeed's own state plus ours, complete or ignored.

Layout (version 1)::

    RUN_DIR/checkpoints/
        latest                      # text: the tag of the newest complete checkpoint
        step_00000200/              # one tag per saved step
            ...                     # DeepSpeed's files (engine.save_checkpoint), any ZeRO stage
            runtime_rank00000.pt    # ours, per rank: step, loader state, RNG states (weights_only)
            config.yaml             # the resolved training config
            model.safetensors       # the consolidated model weights (fp32 master copy), rank 0
            optimizer.safetensors   # AdamW's moments per parameter, rank 0 (runtime.portable)
            COMPLETE                # JSON, written last: {"version", "step", "world_size", "zero_stage",
                                    #   "precision", "offload_optimizer", "portable", "global_batch", ...}

Beside them, ``RUN_DIR/data.json`` (``DATA_RECORD``) says what data the run's checkpoints learnt from:
``{"fingerprint": runtime.fingerprint.shards_fingerprint(data.shards) or null, "shards": data.shards,
"started": UTC time, to the microsecond, the run started from step 0}``. ``begin_run`` writes it when
training starts; when the data changed since (curated or tokenized again), it first moves the run's
old outputs to ``RUN_DIR/stale/STAMP/``, so the run starts from step 0 and old and new data never mix
in one model.

A checkpoint is complete when ``COMPLETE`` exists; ``latest`` is moved only after that, and a
folder without ``COMPLETE`` (a write cut off by a crash or preemption) is never resumed from.
Weights leave a run only as safetensors: every checkpoint holds its consolidated weights as
``model.safetensors`` (gathered in memory while training, whatever the ZeRO stage), and
``export_weights`` copies them to ``run_dir/model.safetensors``. DeepSpeed's own files are pickles
(``torch.load(weights_only=False)`` inside DeepSpeed): only the run that wrote them reads them, to
resume itself, in the layout (world size, ZeRO stage, precision, offload) that wrote them; in any
other layout a run resumes from ``model.safetensors`` and ``optimizer.safetensors``
(``runtime.portable``). A checkpoint from elsewhere without ``model.safetensors`` is converted once, on
purpose, by ``vidworld convert-checkpoint RUN_DIR trust=true`` (``runtime.convert``).
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.files import LOCK_FILE, atomic_open, atomic_write_text
from runtime.fingerprint import shards_fingerprint

FORMAT_VERSION = 1
_TAG = re.compile(r"step_(\d{8})")

WEIGHTS = "model.safetensors"  # a run's consolidated weights, at run_dir/WEIGHTS (the one spelling)
DATA_RECORD = "data.json"  # run_dir/DATA_RECORD: the data the run's checkpoints learnt from
STALE_DIR = "stale"  # run_dir/STALE_DIR/STAMP/: a run's outputs set aside when its data changed


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def is_complete(ckpt_dir: Path) -> bool:
    return (ckpt_dir / "COMPLETE").is_file()


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders, oldest step first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _TAG.fullmatch(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: p.name)


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names if complete, else the newest complete
    one (a crash between ``COMPLETE`` and moving ``latest``), else ``None``."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if named.is_dir() and is_complete(named):
            newest = complete_checkpoints(run_dir)[-1]
            return max(named, newest, key=lambda p: p.name)
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    """The ``COMPLETE`` record of a checkpoint folder."""
    path = Path(ckpt_dir) / "COMPLETE"
    if not path.is_file():
        raise FileNotFoundError(f"{ckpt_dir} is not a complete checkpoint (no COMPLETE file); pick another")
    return json.loads(path.read_text())


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU, CUDA) generator states, as plain types and tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators (every device's) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def runtime_state_path(ckpt_dir: Path, rank: int) -> Path:
    return ckpt_dir / f"runtime_rank{rank:05d}.pt"


def save_runtime_state(ckpt_dir: Path, rank: int, state: dict[str, Any]) -> None:
    """This rank's runtime state (step, loader state, RNG), atomically."""
    with atomic_open(runtime_state_path(ckpt_dir, rank), "wb") as f:
        torch.save(state, f)


def load_runtime_state(ckpt_dir: Path, rank: int, world_size: int) -> dict[str, Any]:
    """This rank's runtime state.

    Saved by another number of processes (a resume in another layout, ``runtime.portable``): the step
    and counters are the same on every saved rank; the loader position is ``merge_loader_states`` of
    all of them; the RNG state is this rank's where the saved run had this rank, else ``None`` (the
    caller seeds one from the step and the rank)."""
    saved = int(read_meta(ckpt_dir)["world_size"])

    def read(r: int) -> dict[str, Any]:
        return torch.load(runtime_state_path(ckpt_dir, r), map_location="cpu", weights_only=True)

    if saved == world_size:
        return read(rank)
    states = [read(r) for r in range(saved)]
    state = dict(states[rank] if rank < saved else states[0])
    state["loader"] = merge_loader_states([s["loader"] for s in states])
    if rank >= saved:
        state["rng"] = None
    return state


def merge_loader_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One loader position for every rank of a resumed run from the saved ranks' positions: a value
    all ranks agree on is kept, an integer they disagree on (an epoch, a counter: positions only
    move forward) takes the largest, so no rank starts over data some saved rank had begun, and
    dicts merge key by key by the same rules (so each rank's own entries are all kept)."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for s in states for k in s):
        values = [s[key] for s in states if key in s]
        if all(v == values[0] for v in values):
            out[key] = values[0]
        elif all(isinstance(v, int) for v in values):
            out[key] = max(values)
        elif all(isinstance(v, dict) for v in values):  # e.g. per-stream positions, each rank its own
            out[key] = merge_loader_states(values)
        else:
            raise ValueError(f"saved ranks disagree on loader state {key!r}: {values}; cannot merge")
    return out


def mark_complete(ckpt_dir: Path, meta: dict[str, Any]) -> None:
    """Rank 0, after every rank has written its part: ``COMPLETE``, then move ``latest``."""
    atomic_write_text(ckpt_dir / "COMPLETE", json.dumps({"version": FORMAT_VERSION, **meta}, indent=1))
    atomic_write_text(ckpt_dir.parent / "latest", ckpt_dir.name + "\n")


def prune(run_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints, and incomplete folders older than
    the newest complete one (cut-off writes). Returns the folders deleted."""
    done = complete_checkpoints(run_dir)
    if not done:
        return []
    newest = done[-1].name
    doomed = done[: max(0, len(done) - max(1, keep_last))]
    root = checkpoint_root(run_dir)
    doomed += [
        p
        for p in root.iterdir()
        if p.is_dir() and _TAG.fullmatch(p.name) and not is_complete(p) and p.name < newest
    ]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def remove_incomplete(run_dir: str | Path) -> list[Path]:
    """Delete every checkpoint folder without ``COMPLETE`` (before resuming, so a new save never mixes
    with a cut-off one of the same step)."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    doomed = [p for p in root.iterdir() if p.is_dir() and _TAG.fullmatch(p.name) and not is_complete(p)]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def checkpoint_weights_path(ckpt_dir: str | Path) -> Path:
    return Path(ckpt_dir) / WEIGHTS


def save_weights(state_dict: dict[str, torch.Tensor], out_path: str | Path, metadata: dict[str, str]) -> Path:
    """Write ``state_dict`` as safetensors to ``out_path``, atomically (tied weights become copies)."""
    from safetensors.torch import save

    # Clone so tied weights become separate tensors (safetensors refuses shared storage).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_open(out_path, "wb") as f:
        f.write(save(tensors, metadata=metadata))
    return Path(out_path)


class WeightsNotExported(FileNotFoundError):
    """A checkpoint holds only DeepSpeed's pickled files; the message names the command that converts it."""


def load_checkpoint_weights(ckpt_dir: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The consolidated weights of a complete checkpoint, from its ``model.safetensors`` only (never
    DeepSpeed's pickles)."""
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    read_meta(ckpt_dir)
    path = checkpoint_weights_path(ckpt_dir)
    if not path.is_file():
        run_dir = ckpt_dir.parent.parent
        raise WeightsNotExported(
            f"{ckpt_dir} has no {WEIGHTS} (written by an older or foreign trainer); its weights are only in "
            "DeepSpeed's pickled files, which vidworld does not load because unpickling runs code. If you "
            f"trust the files, convert it once: `vidworld convert-checkpoint {run_dir} trust=true`"
        )
    return load_file(path, device=device)


def export_weights(ckpt_dir: str | Path, out_path: str | Path) -> Path:
    """Copy the consolidated weights of ``ckpt_dir`` to ``out_path`` (safetensors), atomically.

    The file's metadata records the step and source checkpoint. Load with
    ``safetensors.torch.load_file(out_path)`` and ``model.load_state_dict``.
    """
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    weights = load_checkpoint_weights(ckpt_dir)
    return save_weights(weights, out_path, {"step": str(meta["step"]), "checkpoint": ckpt_dir.name})


# ---------------------------------------------------------------------------------------------------
# The data a run learnt from


def data_shards(data: Any) -> Any:
    """The ``shards`` of a training config's ``data`` section (a dataclass or a dict), or ``None`` for a
    task that reads no shards."""
    shards = data.get("shards") if isinstance(data, dict) else getattr(data, "shards", None)
    return None if shards in (None, "", "???") else shards


def data_fingerprint(data: Any) -> str | None:
    """The content fingerprint of the shards ``data`` names (``runtime.fingerprint``), ``None`` when it
    names none. ``OSError`` when they cannot be read."""
    shards = data_shards(data)
    return None if shards is None else shards_fingerprint(shards)


def read_data_record(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``DATA_RECORD``, or ``None`` (a run of an older version, which wrote none)."""
    try:
        record = json.loads((Path(run_dir) / DATA_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def has_outputs(run_dir: str | Path) -> bool:
    """Whether the run has trained anything: checkpoint folders or exported weights."""
    root = checkpoint_root(run_dir)
    tags = root.is_dir() and any(_TAG.fullmatch(p.name) for p in root.iterdir())
    return bool(tags) or (Path(run_dir) / WEIGHTS).is_file()


def set_aside(run_dir: str | Path) -> Path:
    """Move everything in ``run_dir`` but its writer lock and earlier set-asides to
    ``run_dir/stale/STAMP/`` (UTC time); returns that folder. Nothing is deleted."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest, n = run_dir / STALE_DIR / stamp, 1
    while dest.exists():
        dest, n = run_dir / STALE_DIR / f"{stamp}-{n}", n + 1
    dest.mkdir(parents=True)
    for p in sorted(run_dir.iterdir()):
        if p.name not in (LOCK_FILE, STALE_DIR):
            os.replace(p, dest / p.name)
    return dest


def begin_run(run_dir: str | Path, data: Any) -> str | None:
    """Rank 0, when training starts (holding ``run_dir``'s lock, before anything else is written): make
    sure the checkpoints it may resume learnt from the data ``data`` names now, and record it.

    When ``DATA_RECORD`` names other data and the run has outputs, they are moved aside (``set_aside``)
    and the run starts from step 0: a model is never trained on a mix of old and new data, and the old
    one is kept. A run with outputs but no record (an older version) is resumed as it is, and gets one.
    When the data cannot be read, nothing is done: the task's loader will say what is missing.
    Returns a line to print, or ``None``."""
    run_dir = Path(run_dir)
    try:
        fingerprint = data_fingerprint(data)
    except OSError:
        return None
    old = read_data_record(run_dir)
    message = None
    if old is not None and old.get("fingerprint") != fingerprint and has_outputs(run_dir):
        moved = set_aside(run_dir)
        old = None
        message = (
            f"the data ({data_shards(data)}) changed since this run's checkpoints were trained (curated or "
            f"tokenized again); moved them to {moved} and training from step 0 on the data as it is now"
        )
    elif old is None and has_outputs(run_dir):
        message = (
            f"{run_dir} has checkpoints of an older version that did not record their data; resuming them "
            "as they are (if the data changed since, move them away to train from step 0)"
        )
    if old is None or old.get("fingerprint") != fingerprint:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        record = {"fingerprint": fingerprint, "shards": data_shards(data), "started": started}
        atomic_write_text(run_dir / DATA_RECORD, json.dumps(record, indent=1) + "\n")
    return message
