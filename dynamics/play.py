"""``vidworld play``: roll a held-out clip forward under actions the user chooses.

    vidworld play jobs/play.yaml checkpoint=RUN_DIR tokenizer=TOKENIZER clip=KEY actions=[2,2,3,3,0] \
        [kind=real|latent] [shards=LATENTS] [clips=CURATED] [output=FILE.mp4]

The clip's first ``context`` latent frames are the real context (with the actions recorded for
them); the model then imagines one latent frame per given action (``horizon`` = their count),
and the video ``imagined | real`` is written to ``output`` (default ``RUN_DIR/play/KEY.mp4``) at
the clip's own frame rate, the imagined panel's context frames framed in red
(``dynamics.rollout.side_by_side``). The real panel is the clip's true frames from the curated
clip shards ``clips`` when given, else the tokenizer's reconstruction of its latents; past the
clip's end it is black. ``shards`` defaults to the latent shards the model was trained on.

Actions, one per imagined LATENT frame, each held for the ``tau`` source frames that latent frame
codes (``tau`` = the tokenizer's temporal compression; ``dynamics.task.group_actions``):

- ``kind=real`` (default): indices into the model's action set, ``0 .. num_actions-1``; ``none``
  is the reserved "no action" (index ``num_actions``). A continuous-action model takes a list of
  ``action_dim`` numbers per frame (``none``: zeros).
- ``kind=latent``: latent action codes ``0 .. K-1`` of a model trained with a latent action model
  (``K`` = ``model.latent_actions``; ``none``: code ``K``, "no latent action"). The imagined frames
  get "no action" as their real actions; the context frames keep their recorded actions and the
  latent codes the model's latent action model infers for them (``WorldModel.prepare_batch``).

``actions`` is a list in the override (``actions=[2,2,none,3]``, ``actions=[[0.1,0.5],[0,1]]``) or
a file: ``.npy`` (integer ``[H]`` or float ``[H, A]``), ``.json`` (a list, or the object this
command writes, whose ``actions`` it replays) or ``.txt`` (integers separated by white space; for
continuous actions one action per line). A bad action, kind or clip key is a config error: one
line naming the value and what is valid, exit 2, nothing written.

Outputs: the video, ``FILE.actions.json`` beside it (the actions as given and as the model saw
them per latent frame, context included, with the clip, checkpoint and seed), and a W&B run
(``wandb.mode``; ``runtime.tracking.open_run``) logging ``VIDEO_KEY`` and ``ACTIONS_KEY``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynamics.config import DynamicsConfig
from dynamics.rollout import (
    SamplingConfig,
    WorldModel,
    find_clip,
    side_by_side,
    source_frames,
    true_frames,
)
from pipeline.shards import clip_fps
from runtime.config import ConfigError
from runtime.files import atomic_write_bytes, atomic_write_text
from runtime.stage import stage_cli
from runtime.tracking import Table, WandbConfig, open_run, wandb_media
from runtime.video import encode_mp4

KINDS = ("real", "latent")
NO_ACTION = "none"  # the word for the reserved "no action" (or "no latent action") in a list
ACTION_FILES = (".npy", ".json", ".txt")
VIDEO_KEY = "play/video"  # the W&B keys this stage logs
ACTIONS_KEY = "play/actions"


@dataclasses.dataclass
class PlayConfig:
    """``vidworld play``: a clip's imagined future under chosen actions, beside its real one."""

    checkpoint: str = "???"  # dynamics training run folder (config.yaml + model.safetensors)
    tokenizer: str = "???"  # the tokenizer the model's latent shards were made with
    clip: str = ""  # the clip's key; empty: the first clip of the split in key order
    # One per imagined latent frame: a list ([2,2,none,3]; continuous: [[0.1,0.5],...]) or a file
    # (.npy, .json, .txt).
    actions: Any = "???"
    kind: str = "real"  # real: the model's action indices | latent: latent action codes
    shards: str = ""  # latent shards; empty: those the model was trained on (its data.shards)
    clips: str = ""  # curated clip shards: the real panel in pixels; empty: the tokenizer's reconstruction
    output: str = ""  # the .mp4 to write; empty: CHECKPOINT/play/KEY.mp4
    split: str = "heldout"
    context: int = 2  # latent frames of real context (1 + (context-1)*tau source frames)
    seed: int = 0  # sampling noise
    device: str = "auto"
    fps: float = 15.0  # only for clips whose metadata has no fps (they play at their own rate)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    wandb: WandbConfig = dataclasses.field(default_factory=lambda: WandbConfig(mode="offline", tags=["play"]))


@dataclasses.dataclass
class Play:
    """What ``play`` made: the files, the clip, and the imagined latent frames (model space,
    ``horizon`` frames: ``[1, C, H, h, w]`` latents or ``[1, H, h, w]`` indices)."""

    video: Path
    actions_file: Path
    key: str
    imagined: Tensor
    record: dict[str, Any]


# -- actions -----------------------------------------------------------------------------------


def _token(text: str) -> int | float | str:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def read_actions(value: Any, kind: str, continuous: bool) -> list[Any]:
    """The ``actions`` config value as a list, one entry per imagined latent frame, values not yet
    checked: the list given, or the contents of the file it names."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if value is None or isinstance(value, (int, float)) or str(value).strip().lower() == NO_ACTION:
        return [value]
    path = Path(str(value))
    if path.suffix.lower() not in ACTION_FILES or not path.is_file():
        raise ConfigError(
            f"actions={value!r} is neither a list nor an actions file ({', '.join(ACTION_FILES)}) that "
            "exists; give a list, e.g. actions=[2,2,3], or a file's path"
        )
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            loaded = np.load(path, allow_pickle=False).tolist()
        elif suffix == ".json":
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                if loaded.get("kind", kind) != kind:
                    raise ConfigError(
                        f"actions file {path} holds kind={loaded['kind']} actions but kind={kind}: pass "
                        f"kind={loaded['kind']}"
                    )
                loaded = loaded.get("actions")
        else:
            lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
            rows = [[_token(t) for t in line] for line in lines]
            loaded = rows if continuous else [t for row in rows for t in row]
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"actions file {path} cannot be read: {str(e).splitlines()[0]}") from e
    if not isinstance(loaded, list):
        raise ConfigError(f"actions file {path} holds {loaded!r}, not a list of actions")
    return loaded


def _index(value: Any, i: int, n: int, valid: str) -> int:
    """An action or latent code ``0 .. n-1``, or ``n`` for the word ``none``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NO_ACTION):
        return n
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"actions[{i}] = {value!r} is not an integer: {valid}")
    if not 0 <= value < n:
        raise ConfigError(f"actions[{i}] = {value} is out of range: {valid}")
    return value


def _vector(value: Any, i: int, dim: int) -> list[float]:
    """A continuous action: ``dim`` finite numbers, or zeros for the word ``none``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == NO_ACTION):
        return [0.0] * dim
    ok = isinstance(value, list) and len(value) == dim
    ok = ok and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not ok:
        raise ConfigError(
            f"actions[{i}] = {value!r}: this continuous-action model takes a list of {dim} finite numbers "
            f"per latent frame (model.action_dim={dim}), e.g. actions=[[{', '.join(['0.0'] * dim)}]], or none"
        )
    return [float(v) for v in value]


def latent_codes(cfg: DynamicsConfig) -> int:
    """``K``, the model's latent action codes; 0 for a model trained without a latent action model."""
    return int(getattr(cfg, "latent_actions", 0) or 0)


def imagined_actions(
    values: list[Any], cfg: DynamicsConfig, kind: str
) -> tuple[list[Any], Tensor | None, Tensor | None]:
    """Checked user actions -> ``(as given, normalised; real actions [1, H, tau(, A)] or None;
    latent codes [1, H] or None)`` for the ``H = len(values)`` imagined latent frames."""
    tau = cfg.temporal_compression
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    if not values:
        raise ConfigError(
            "actions=[] is empty: give one action per imagined latent frame (horizon = their count)"
        )
    h = len(values)
    if kind == "latent":
        k = latent_codes(cfg)
        if k <= 0:
            raise ConfigError(
                "kind=latent: this model was trained without a latent action model (model.latent_actions "
                "is 0); steer it with kind=real and the model's own actions"
            )
        valid = f"kind=latent takes latent action codes 0..{k - 1} (the model has {k}) or {NO_ACTION}"
        codes = [_index(v, i, k, valid) for i, v in enumerate(values)]
        given = [NO_ACTION if c == k else c for c in codes]
        if cfg.action_type == "none":
            actions = None
        elif cfg.action_type == "continuous":
            actions = torch.zeros(1, h, tau, cfg.action_dim)
        else:
            actions = torch.full((1, h, tau), cfg.num_actions, dtype=torch.long)
        return given, actions, torch.tensor([codes], dtype=torch.long)
    if cfg.action_type == "none":
        raise ConfigError(
            "kind=real: this model was trained without actions (model.action_type=none); "
            + ("steer it with kind=latent" if latent_codes(cfg) else "it cannot be steered")
        )
    if cfg.action_type == "continuous":
        vectors = [_vector(v, i, cfg.action_dim) for i, v in enumerate(values)]
        actions = torch.tensor(vectors, dtype=torch.float32)[None, :, None, :].expand(1, h, tau, -1)
        return vectors, actions.contiguous(), None
    n = cfg.num_actions
    valid = f"kind=real takes integers 0..{n - 1} (the model's {n} actions) or {NO_ACTION} (no action)"
    indices = [_index(v, i, n, valid) for i, v in enumerate(values)]
    given = [NO_ACTION if a == n else a for a in indices]
    return given, torch.tensor(indices, dtype=torch.long)[None, :, None].expand(1, h, tau).contiguous(), None


# -- the play ----------------------------------------------------------------------------------


def _clip_not_found(cfg: PlayConfig, shards: str, keys: list[str]) -> ConfigError:
    if not keys:
        return ConfigError(f"{shards} has no {cfg.split!r} clips with latents: check shards= and split=")
    if cfg.clip and cfg.clip not in keys:
        hint = (
            " (a key of digits is read as a number: quote it, clip=\"'KEY'\")" if cfg.clip.isdigit() else ""
        )
        return ConfigError(
            f"clip={cfg.clip!r} is not a {cfg.split!r} clip of {shards}{hint}; valid keys include "
            f"{', '.join(keys[:5])} ({len(keys)} in all)"
        )
    what = f"clip {cfg.clip!r} has fewer than" if cfg.clip else "no clip has at least"
    return ConfigError(
        f"{what} context={cfg.context} latent frames in split {cfg.split!r} of {shards}: lower context"
    )


@torch.no_grad()
def play(cfg: PlayConfig, world: WorldModel | None = None) -> Play:
    """Roll clip ``cfg.clip`` forward under ``cfg.actions``; write the video and the actions file."""
    if cfg.output and Path(cfg.output).suffix.lower() != ".mp4":
        raise ConfigError(f"output={cfg.output!r} must be an .mp4 file path (its actions go beside it)")
    if cfg.context < 1:
        raise ConfigError(f"context={cfg.context} must be >= 1 latent frame")
    world = world or WorldModel.load(cfg.checkpoint, cfg.tokenizer, cfg.device)
    mcfg = world.cfg
    values = read_actions(cfg.actions, cfg.kind, mcfg.action_type == "continuous")
    given, new_actions, new_codes = imagined_actions(values, mcfg, cfg.kind)
    shards = cfg.shards or world.data_shards
    if not shards:
        raise ConfigError("shards= is empty and the run does not say its latent shards: pass shards=LATENTS")
    field = "indices" if mcfg.is_discrete else "latents"
    sample, keys = find_clip(shards, cfg.split, field, cfg.context, cfg.clip)
    if sample is None:
        raise _clip_not_found(cfg, shards, keys)

    tc, h, tau = cfg.context, len(given), world.tau
    prepared = world.prepare_batch(sample)
    x, clip_actions = prepared["x"], prepared["actions"]
    actions = None
    if new_actions is not None:
        actions = torch.cat([clip_actions[:, :tc], new_actions.to(clip_actions)], dim=1)
    latent_actions = None
    if new_codes is not None:
        known = prepared.get("latent_actions")
        ctx_codes = known[:, :tc] if isinstance(known, Tensor) else torch.full((1, tc), latent_codes(mcfg))
        latent_actions = torch.cat([ctx_codes.long().cpu(), new_codes], dim=1).to(world.device)
    ctx = world.slice(x, 0, tc)
    imagined = world.imagine(ctx, actions, h, cfg.seed, cfg.sampling, latent_actions)
    model_px = world.decode(world.cat(ctx, imagined))[0].numpy()
    real_px = true_frames(world, sample, x, cfg.clips, cfg.split, source_frames(tc + h, tau))
    video = side_by_side(real_px, model_px, source_frames(tc, tau), model_first=True)
    fps = clip_fps(sample.get("meta"), cfg.fps)
    mp4 = encode_mp4(video, fps=fps)

    key = sample["key"]
    out = Path(cfg.output) if cfg.output else Path(cfg.checkpoint) / "play" / f"{key}.mp4"
    record = {
        "clip": key,
        "split": cfg.split,
        "kind": cfg.kind,
        "actions": given,  # one per imagined latent frame, as given (this file replays as actions=)
        "context": tc,
        "horizon": h,
        "temporal_compression": tau,
        # What the model saw per latent frame, context then imagined (tau actions each).
        "model_actions": None if actions is None else actions[0].tolist(),
        "latent_actions": None if latent_actions is None else latent_actions[0].tolist(),
        "num_actions": mcfg.num_actions,
        "latent_action_codes": latent_codes(mcfg),
        "clip_latent_frames": world.frames(x),
        "fps": fps,
        "video": out.name,
        "checkpoint": world.checkpoint,
        "checkpoint_step": world.step,
        "tokenizer": world.tokenizer_path,
        "shards": shards,
        "clips": cfg.clips,
        "seed": cfg.seed,
        "sampling": dataclasses.asdict(cfg.sampling),
    }
    atomic_write_bytes(out, mp4)
    actions_file = atomic_write_text(out.with_suffix(".actions.json"), json.dumps(record, indent=2) + "\n")
    log_to_wandb(cfg, out, record)
    return Play(out, actions_file, key, imagined, record)


def log_to_wandb(cfg: PlayConfig, video: Path, record: dict[str, Any]) -> None:
    """The video (at the clip's rate: the mp4's own) as ``VIDEO_KEY`` and the per-latent-frame
    actions as the table ``ACTIONS_KEY``, in a run under the video's folder."""
    config = {"play": json.loads(json.dumps(dataclasses.asdict(cfg))), "actions": record}
    run = open_run(cfg.wandb, video.parent, cfg.wandb.name or f"play-{record['clip']}", "play", config)
    if run is None:
        return
    try:
        real, latent = record["model_actions"], record["latent_actions"]
        rows = [
            [
                t,
                "context" if t < record["context"] else "imagined",
                json.dumps(real[t]) if real else "",
                str(latent[t]) if latent else "",
            ]
            for t in range(record["context"] + record["horizon"])
        ]
        table = Table(["latent_frame", "part", "actions", "latent_action"], rows)
        run.log({VIDEO_KEY: wandb_media(video), ACTIONS_KEY: wandb_media(table)})
    finally:
        run.finish()


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld play jobs/play.yaml checkpoint=RUN tokenizer=TOK clip=KEY actions=[...]``.
    A bad action, kind or clip key is a ``ConfigError``: exit 2 through ``vidworld.cli``."""
    return stage_cli("play", PlayConfig, play, config_path, overrides, _report)


def _report(_cfg: PlayConfig, result: Play) -> int:
    print(result.video, flush=True)
    print(result.actions_file, flush=True)
    return 0
