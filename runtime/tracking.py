"""The one logger of a training run (console line, ``metrics.jsonl`` in the run folder, and W&B),
and the one W&B writer of every stage: ``open_run`` opens a run (training, evaluation, the chain's
report) and ``wandb_media`` turns videos, images and tables into W&B objects.

Videos are ``VideoClip``s (frames with their true rate, ``runtime.video``) written to mp4 at that
rate, or mp4 files already written, so that every logged video plays at the speed it was recorded.

Only rank 0 makes a ``Tracker``. W&B writes under ``run_dir/wandb``; its run id is kept in
``run_dir/wandb_run_id.txt`` so a restarted run continues the same W&B run. Without
``WANDB_API_KEY`` an ``online`` run falls back to ``offline`` (sync later with ``wandb sync``).
Every metric is charted against ``train/step`` (``define_metric``), so a resumed run that
repeats a few steps draws over them instead of shifting the curve.

Metric names (``metrics.jsonl`` rows and W&B keys; the place they are defined):

==========================  ==========================================================
``train/step``              optimizer steps done (1 after the first step)
``train/loss``              mean loss over the step's finite micro-batches, all ranks
``train/<name>``            the task's other loss-dict entries, averaged
``train/lr``                learning rate after the step
``train/grad_norm``         global gradient norm before clipping (inf: a skipped step)
``train/skipped_steps``     steps skipped so far for a non-finite loss or gradient
``train/nonfinite_step``    1 when this step was skipped
``train/step_time_s``       seconds per step, mean since the last logged row
``train/samples_per_s``     global samples per second (all ranks)
``train/tokens_per_s``      ``samples_per_s`` x the task's tokens per sample
``train/mfu``               model FLOPs utilisation, 0..1 (see ``runtime.metrics``)
``train/peak_mem_gib``      rank 0's peak memory, GiB (CUDA allocator, or CPU RSS)
``eval/<name>``             the task's ``eval_media`` numbers; videos in ``run_dir/media``
==========================  ==========================================================
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.files import atomic_write_bytes, atomic_write_text
from runtime.video import VideoClip, encode_mp4

WANDB_MODES = ("online", "offline", "disabled")
OFFLINE_FALLBACK = "wandb: WANDB_API_KEY is not set; logging offline (sync later with `wandb sync`)"


@dataclasses.dataclass
class WandbConfig:
    """The ``wandb:`` section."""

    mode: str = "offline"  # online | offline | disabled
    project: str = "vidworld"
    group: str | None = None
    name: str | None = None  # default: the run folder's name
    tags: list[str] = dataclasses.field(default_factory=list)
    entity: str | None = None


@dataclasses.dataclass(frozen=True)
class Table:
    """A table to log: ``columns`` and ``data``, one list of cells per row."""

    columns: list[str]
    data: list[list[Any]]

    @classmethod
    def of_rows(cls, columns: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> Table:
        """The ``columns`` of dict ``rows``, in that order."""
        return cls(list(columns), [[r[c] for c in columns] for r in rows])


def open_run(
    cfg: WandbConfig,
    run_dir: str | Path,
    name: str | None,
    job_type: str | None = None,
    config: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Any:
    """A W&B run writing under ``run_dir/wandb``, or ``None`` when ``cfg.mode`` is ``disabled``.

    ``online`` without ``WANDB_API_KEY`` falls back to ``offline`` (one line on stderr, sync later
    with ``wandb sync``). ``run_id`` resumes that run when it exists (a restarted training run).
    W&B's console capture is off: the stage prints its own lines.
    """
    if cfg.mode not in WANDB_MODES:
        raise ValueError(f"wandb.mode must be online, offline or disabled, got {cfg.mode!r}")
    if cfg.mode == "disabled":
        return None
    import wandb  # only when logging: it is slow to import

    mode = cfg.mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY"):
        print(OFFLINE_FALLBACK, file=sys.stderr)
        mode = "offline"
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    resume = {"id": run_id, "resume": "allow"} if run_id else {}
    return wandb.init(
        project=cfg.project,
        entity=cfg.entity,
        group=cfg.group,
        name=name,
        tags=list(cfg.tags),
        job_type=job_type,
        mode=mode,
        dir=str(run_dir),
        config=config,
        settings=wandb.Settings(console="off", silent=True),
        **resume,
    )


def write_video(clip: VideoClip, path: str | Path) -> Path:
    """``clip`` as an mp4 at ``path``, playing at ``clip.fps``."""
    frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
    atomic_write_bytes(Path(path), encode_mp4(frames, fps=clip.fps))
    return Path(path)


def wandb_media(value: VideoClip | str | Path | np.ndarray | Table, video_path: Path | None = None) -> Any:
    """``value`` as the W&B object to log: a ``VideoClip`` (written to ``video_path`` at its fps) or an
    ``.mp4`` file as a ``wandb.Video``, another image file or a uint8 ``[H, W, 3]`` array as a
    ``wandb.Image``, a ``Table`` as a ``wandb.Table``."""
    import wandb

    if isinstance(value, VideoClip):
        if video_path is None:
            raise ValueError("a VideoClip is logged from an mp4 file: pass video_path to write it to")
        value = write_video(value, video_path)
    if isinstance(value, Table):
        return wandb.Table(columns=value.columns, data=value.data)
    if isinstance(value, (str, Path)):
        path = Path(value)
        return wandb.Video(str(path), format="mp4") if path.suffix == ".mp4" else wandb.Image(str(path))
    return wandb.Image(np.asarray(value, dtype=np.uint8))


def format_console_line(step: int, max_steps: int, metrics: dict[str, float]) -> str:
    """``step 20/100 | loss 2.3010 | lr 3.00e-04 | grad_norm 0.512 | 1.2e+03 samples/s | ...``."""
    parts = [f"step {step}/{max_steps}"]
    m = metrics
    if "train/loss" in m:
        parts.append(f"loss {m['train/loss']:.4f}")
    if "train/lr" in m:
        parts.append(f"lr {m['train/lr']:.2e}")
    if "train/grad_norm" in m:
        parts.append(f"grad_norm {m['train/grad_norm']:.3g}")
    if "train/samples_per_s" in m:
        parts.append(f"{m['train/samples_per_s']:.3g} samples/s")
        parts.append(f"{m['train/tokens_per_s']:.3g} tokens/s")
        parts.append(f"MFU {100 * m['train/mfu']:.2f}%")
    if "train/peak_mem_gib" in m:
        parts.append(f"mem {m['train/peak_mem_gib']:.2f} GiB")
    if m.get("train/skipped_steps"):
        parts.append(f"skipped {int(m['train/skipped_steps'])}")
    return " | ".join(parts)


class Tracker:
    """Console + ``metrics.jsonl`` + W&B for rank 0 of a run.

    ``log(step, metrics)`` takes flat names such as ``"train/loss"``; the step is added as
    ``"train/step"``.
    """

    def __init__(
        self,
        cfg: WandbConfig,
        run_dir: str | Path,
        resolved_config: dict[str, Any],
        max_steps: int,
        media_fps: float = 4.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.media_fps = media_fps
        self.max_steps = max_steps
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.run = self._init_wandb(cfg, resolved_config)

    def _init_wandb(self, cfg: WandbConfig, resolved_config: dict[str, Any]) -> Any:
        if cfg.mode not in WANDB_MODES or cfg.mode == "disabled":
            return open_run(cfg, self.run_dir, cfg.name)  # None, or the error naming the mode
        id_file = self.run_dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        atomic_write_text(id_file, run_id + "\n")
        name = cfg.name or self.run_dir.resolve().name
        run = open_run(cfg, self.run_dir, name, config=resolved_config, run_id=run_id)
        run.define_metric("train/step")
        run.define_metric("train/*", step_metric="train/step")
        run.define_metric("eval/*", step_metric="train/step")
        run.define_metric("warn/*", step_metric="train/step")
        return run

    def log(self, step: int, metrics: dict[str, float], console: bool = True) -> None:
        row = {"train/step": step, **metrics}
        with open(self.jsonl, "a") as f:  # append-only record; a torn last line is skipped by readers
            f.write(json.dumps(row) + "\n")
        if console:
            print(format_console_line(step, self.max_steps, metrics), flush=True)
        if self.run is not None:
            self.run.log(row)

    def log_media(self, step: int, media: dict[str, Any]) -> None:
        """A task's eval output: numbers go where ``log`` puts them; videos (``VideoClip``, played at its
        fps; a bare uint8 ``[T, H, W, 3]`` array at ``media_fps``) become mp4 files in ``run_dir/media``
        and W&B videos; uint8 ``[H, W, 3]`` arrays W&B images."""
        scalars: dict[str, float] = {}
        files: dict[str, Any] = {}
        for key, value in media.items():
            key = key if "/" in key else f"eval/{key}"
            if isinstance(value, VideoClip):
                clip = value
            else:
                arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
                if arr.ndim == 0:
                    scalars[key] = float(arr)
                    continue
                if arr.ndim == 3:
                    files[key] = arr.astype(np.uint8)
                    continue
                if arr.ndim != 4:
                    raise ValueError(
                        f"eval_media[{key!r}] has shape {arr.shape}; give a number, a VideoClip, uint8 "
                        "[T, H, W, 3] video or uint8 [H, W, 3] image"
                    )
                clip = VideoClip(arr, self.media_fps)
            path = self.run_dir / "media" / f"{key.replace('/', '_')}_step{step:08d}.mp4"
            files[key] = write_video(clip, path)
        if scalars:
            self.log(step, scalars, console=False)
            print(
                f"eval at step {step}: " + " | ".join(f"{k} {v:.4g}" for k, v in scalars.items()), flush=True
            )
        if files and self.run is not None:
            self.run.log({"train/step": step, **{k: wandb_media(v) for k, v in files.items()}})

    def close(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def read_metrics(run_dir: str | Path) -> dict[int, dict[str, float]]:
    """``metrics.jsonl`` as ``{step: row}``, rows of one step merged (train and eval); a step logged
    twice (redone after a resume) keeps the later values."""
    out: dict[int, dict[str, float]] = {}
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(int(row["train/step"]), {}).update(row)
    return out
