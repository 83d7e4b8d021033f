"""Counterfactual branch files: one saved game state, two futures under two action sequences.

A world model that follows its actions must imagine different futures for different actions from
the same past. A branch file holds the evidence for one such test, played by an emulator from one
saved state (``pipeline.samples`` writes them for the Atari games, from episodes never written as
training videos). ``GAME-bNN.npz`` is a zip of ``.npy`` arrays (``np.load(path,
allow_pickle=False)`` reads it; ``write_branch`` writes it with fixed timestamps so that the bytes
are a function of the content). With ``C`` context frames and ``H`` future frames:

==================  ===============================  ============================================
key                 dtype, shape                     what it holds
==================  ===============================  ============================================
``frames_a``        ``uint8 [C + H, Hpx, Wpx, 3]``   RGB, the C context frames, then H frames
                                                     under action sequence A (Atari: 210 x 160)
``frames_b``        ``uint8 [C + H, Hpx, Wpx, 3]``   the same C context frames, then H frames
                                                     under action sequence B
``actions_a``       ``int64 [C + H]``                the action taken at each frame of ``frames_a``
``actions_b``       ``int64 [C + H]``                the action taken at each frame of ``frames_b``
``rewards_a``       ``float32 [C + H]``              the reward that ``actions_a[t]`` earned
``rewards_b``       ``float32 [C + H]``              the reward that ``actions_b[t]`` earned
``fps``             ``float64 []``                   frames per second (15.0 for ALE v5)
``game``            ``str []`` (numpy unicode)       the environment id, e.g. ``ALE/Pong-v5``
``context_frames``  ``int64 []``                     C (>= 1)
``horizon_frames``  ``int64 []``                     H (>= 1)
==================  ===============================  ============================================

Alignment is the one of video sidecars (``pipeline.samples``): ``actions[t]`` is taken at frame
``t`` and frame ``t + 1`` shows its result. So ``frames_a[:C] == frames_b[:C]``,
``actions_a[:C - 1] == actions_b[:C - 1]`` and ``rewards_a[:C - 1] == rewards_b[:C - 1]`` (the
shared past), while ``actions_a[C - 1:]`` and ``actions_b[C - 1:]`` are the two diverging
sequences: the action taken at the last context frame is the first that may differ, so the futures
``frames_a[C:]`` and ``frames_b[C:]`` may differ from index ``C`` on. The last action of each
sequence is taken at the last frame; its result is not in the file (as in a video).
"""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.files import atomic_open

BRANCH_SUFFIX = ".npz"
ARRAY_KEYS = ("frames_a", "frames_b", "actions_a", "actions_b", "rewards_a", "rewards_b")
SCALAR_KEYS = ("fps", "game", "context_frames", "horizon_frames")
_DTYPES = {"frames": np.uint8, "actions": np.int64, "rewards": np.float32}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: same content, same bytes


@dataclass
class Branch:
    """One counterfactual branch (see the module docstring for shapes, dtypes and alignment)."""

    frames_a: np.ndarray  # uint8 [C + H, Hpx, Wpx, 3]
    frames_b: np.ndarray  # uint8 [C + H, Hpx, Wpx, 3]
    actions_a: np.ndarray  # int64 [C + H]
    actions_b: np.ndarray  # int64 [C + H]
    rewards_a: np.ndarray  # float32 [C + H]
    rewards_b: np.ndarray  # float32 [C + H]
    fps: float
    game: str
    context_frames: int
    horizon_frames: int

    def validate(self, where: str = "branch") -> None:
        """Raise ``ValueError`` naming ``where`` (a file) and the problem if the branch breaks the format."""
        c, h = self.context_frames, self.horizon_frames
        if c < 1 or h < 1:
            raise ValueError(f"{where}: context_frames={c} and horizon_frames={h} must both be >= 1")
        for key in ARRAY_KEYS:
            arr = getattr(self, key)
            want = _DTYPES[key.split("_")[0]]
            if not isinstance(arr, np.ndarray) or arr.dtype != want:
                got = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
                raise ValueError(f"{where}: {key} has dtype {got}, the format needs {np.dtype(want)}")
            rank = 4 if key.startswith("frames") else 1
            if arr.ndim != rank or (rank == 4 and arr.shape[-1] != 3):
                shape = "[C + H, H, W, 3]" if rank == 4 else "[C + H]"
                raise ValueError(f"{where}: {key} has shape {arr.shape}, the format needs {shape}")
            if len(arr) != c + h:
                raise ValueError(
                    f"{where}: {key} has {len(arr)} entries but context_frames + horizon_frames = "
                    f"{c} + {h} = {c + h}; one entry per frame"
                )
        if self.frames_a.shape != self.frames_b.shape:
            raise ValueError(
                f"{where}: frames_a {self.frames_a.shape} and frames_b {self.frames_b.shape} differ in shape"
            )
        shared = (
            ("frames", self.frames_a[:c], self.frames_b[:c], c),
            ("actions", self.actions_a[: c - 1], self.actions_b[: c - 1], c - 1),
            ("rewards", self.rewards_a[: c - 1], self.rewards_b[: c - 1], c - 1),
        )
        for name, a, b, n in shared:
            if not np.array_equal(a, b):
                raise ValueError(
                    f"{where}: the first {n} {name} of a and b differ, but they are the shared context "
                    f"(context_frames={c}); only {name}[{n}:] may differ"
                )
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"{where}: fps={self.fps} must be a positive number")


def write_branch(path: str | os.PathLike, branch: Branch) -> Path:
    """Validate ``branch`` and write it to ``path`` (``.npz``, deflate-compressed) in one atomic write."""
    path = Path(path)
    branch.validate(str(path))
    arrays = {key: getattr(branch, key) for key in ARRAY_KEYS}
    arrays.update(
        fps=np.float64(branch.fps),
        game=np.str_(branch.game),
        context_frames=np.int64(branch.context_frames),
        horizon_frames=np.int64(branch.horizon_frames),
    )
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, value in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_TIME)
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    return path


def read_branch(path: str | os.PathLike) -> Branch:
    """Read and validate a branch file. Raises ``ValueError`` naming the file when it is not a branch
    (not an npz, a key missing, a wrong dtype, mismatched lengths, contexts that differ)."""
    where = str(path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"it holds one {type(z).__name__}, not a zip of named arrays")
        with z:
            loaded = {k: z[k] for k in (*ARRAY_KEYS, *SCALAR_KEYS) if k in z.files}
            files = sorted(z.files)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        raise ValueError(f"{where}: not a readable .npz branch file ({type(e).__name__}: {e})") from e
    missing = [k for k in (*ARRAY_KEYS, *SCALAR_KEYS) if k not in loaded]
    if missing:
        raise ValueError(
            f"{where}: not a branch file, keys {missing} are missing (it has {files}); "
            "write it with pipeline.branches.write_branch"
        )
    arrays = {k: loaded[k] for k in ARRAY_KEYS}
    scalars = {k: loaded[k] for k in SCALAR_KEYS}
    for key, value in scalars.items():
        if value.ndim != 0:
            raise ValueError(f"{where}: {key} has shape {value.shape}, the format needs a scalar")
    if scalars["game"].dtype.kind != "U":
        raise ValueError(
            f"{where}: game has dtype {scalars['game'].dtype}, the format needs a unicode string"
        )
    for key, kinds, what in (
        ("fps", "fiu", "a number"),
        ("context_frames", "iu", "an integer"),
        ("horizon_frames", "iu", "an integer"),
    ):
        if scalars[key].dtype.kind not in kinds:
            raise ValueError(f"{where}: {key} has dtype {scalars[key].dtype}, the format needs {what}")
    branch = Branch(
        **arrays,
        fps=float(scalars["fps"]),
        game=str(scalars["game"]),
        context_frames=int(scalars["context_frames"]),
        horizon_frames=int(scalars["horizon_frames"]),
    )
    branch.validate(where)
    return branch
