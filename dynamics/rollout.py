"""Open-loop rollouts of a trained dynamics model, decoded to pixels: ``vidworld rollout``.

    vidworld rollout jobs/rollout.yaml checkpoint=RUN_DIR tokenizer=TOKENIZER shards=LATENTS \
        clips=CURATED context=2 horizon=2 output=DIR

Units: ``context`` and ``horizon`` count LATENT frames. Latent frame 0 codes source frame 0 alone
and latent frame ``i > 0`` codes source frames ``1 + (i-1) tau .. i tau`` (``tau`` = the
tokenizer's temporal compression; tokenizer/tokenize.py). So ``context=C`` is ``1 + (C-1) tau``
source frames and ``horizon=H`` is ``H tau`` more: with ``tau=4`` and 17-frame clips (5 latent
frames), ``context=2 horizon=2`` shows source frames 0..4 as context and imagines frames 5..12.

``WorldModel`` is the shared machinery (``dynamics.evaluate`` and ``dynamics.play`` use it, and
``find_clip`` / ``true_frames`` / ``side_by_side``): a dynamics model (anything
with the ``rollout`` method of ``DiffusionDynamics`` / ``MaskGITDynamics``) with its
``DynamicsConfig`` and the tokenizer; it turns a latent-shard sample into model input with
``DynamicsTask.prepare`` (which owns the source-frame -> latent-frame action mapping), rolls out,
and decodes latents to uint8 frames; it sees the tokenizer only through
``tokenizer.interface.VideoTokenizer``. The rollout video is ``truth | model`` side by side; the
model's context frames (the tokenizer's reconstruction of the real context) carry a red border.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from dynamics.task import DynamicsTask
from pipeline.loader import LoaderConfig
from pipeline.shards import clip_fps
from runtime.files import atomic_write_bytes
from runtime.stage import stage_cli
from runtime.video import encode_mp4
from tokenizer.evaluate import iter_split, resolve_device
from tokenizer.export import load_tokenizer
from tokenizer.interface import VideoTokenizer
from tokenizer.metrics import to_uint8


@dataclasses.dataclass
class SamplingConfig:
    """Sampler settings of a rollout; ``None`` keeps the model config's value."""

    steps: int | None = None  # diffusion sampling steps / MaskGIT steps per frame
    sampler: str | None = None  # diffusion: euler | heun
    temperature: float | None = None  # maskgit: 0 = most likely token
    top_k: int | None = None  # maskgit


@dataclasses.dataclass
class RolloutConfig:
    """``vidworld rollout``: one clip's imagined future beside its truth, as an mp4."""

    checkpoint: str = "???"  # dynamics training run folder (config.yaml + model.safetensors)
    tokenizer: str = "???"  # the tokenizer the latent shards were made with (export or run folder)
    shards: str = "???"  # latent shards (vidworld tokenize output)
    # Clip shards with the same keys: the truth in pixels. Empty: the truth shown is the
    # tokenizer's reconstruction of the true latents.
    clips: str = ""
    output: str = "???"  # folder; the video is output/rollout.mp4
    split: str = "heldout"
    key: str = ""  # the clip to roll out; empty: the first clip of the split in key order
    context: int = 2  # latent frames of real context (1 + (context-1)*tau source frames)
    horizon: int = 2  # latent frames imagined (horizon*tau source frames)
    seed: int = 0
    device: str = "auto"
    fps: float = 15.0  # only for clips whose metadata has no fps (they play at their own rate)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)


def source_slice(i: int, tau: int) -> slice:
    """The source frames latent frame ``i`` decodes to: ``[0]`` for 0, else ``1+(i-1)tau .. i tau``."""
    return slice(0, 1) if i == 0 else slice(1 + (i - 1) * tau, i * tau + 1)


def source_frames(latent_frames: int, tau: int) -> int:
    """Source frames of ``latent_frames`` latent frames: ``1 + (latent_frames - 1) tau``."""
    return 1 + (latent_frames - 1) * tau


class WorldModel:
    """A dynamics model with the tokenizer it was trained on: latents in, uint8 frames out.

    ``dynamics`` is any module with ``rollout(context, actions, horizon, **sampling)`` (the
    ``DiffusionDynamics`` / ``MaskGITDynamics`` signature); ``cfg`` its ``DynamicsConfig``.
    Model space: continuous latents times ``cfg.latent_scale`` ``[B, C, T, h, w]``, or FSQ
    indices ``[B, T, h, w]`` long.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        cfg: DynamicsConfig,
        tokenizer: VideoTokenizer,
        step: int | None = None,
        checkpoint: str = "",
        tokenizer_path: str = "",
        device: torch.device | str = "cpu",
        data_shards: str = "",
    ) -> None:
        self.dynamics, self.cfg, self.tokenizer = dynamics, cfg, tokenizer
        self.step, self.checkpoint, self.tokenizer_path = step, checkpoint, tokenizer_path
        self.data_shards = data_shards  # the latent shards the model was trained on ("" unknown)
        self.device = torch.device(device)
        self.tau = int(tokenizer.temporal_compression)
        if cfg.temporal_compression != self.tau:
            raise ValueError(
                f"the dynamics model was trained with temporal_compression={cfg.temporal_compression} "
                f"but the tokenizer {tokenizer_path or ''} has {self.tau}: pass the tokenizer that made "
                "the model's latent shards"
            )
        if bool(tokenizer.is_discrete) != cfg.is_discrete:
            need = "a discrete (FSQ)" if cfg.is_discrete else "a continuous"
            raise ValueError(
                f"head={cfg.head} needs {need} tokenizer; {tokenizer_path or 'the tokenizer given'} is not"
            )
        self._tasks: dict[int, DynamicsTask] = {}

    @classmethod
    def load(
        cls, checkpoint: str | os.PathLike, tokenizer: str | os.PathLike, device: str = "auto"
    ) -> WorldModel:
        """Load a finished dynamics run folder and a tokenizer onto ``device`` (auto: cuda if any)."""
        from runtime.trained import load_trained, trained_step

        dev = resolve_device(device)
        train_cfg, _, model = load_trained(checkpoint, dev)
        if not isinstance(train_cfg.model, DynamicsConfig):
            raise ValueError(
                f"{checkpoint} is a run of task {train_cfg.task!r}, not a dynamics run: pass the dynamics "
                "run folder as checkpoint= and the tokenizer as tokenizer="
            )
        tok = load_tokenizer(tokenizer, device=dev)
        shards = getattr(train_cfg.data, "shards", "")
        shards = ",".join(map(str, shards)) if isinstance(shards, (list, tuple)) else str(shards or "")
        return cls(
            model,
            train_cfg.model,
            tok,
            trained_step(checkpoint),
            str(checkpoint),
            str(tokenizer),
            dev,
            shards,
        )

    # -- data ---------------------------------------------------------------------------------
    def prepare(self, sample: dict[str, Any]) -> tuple[Tensor, Tensor | None]:
        """A latent-shard sample (``iter_split`` item) -> ``(x, actions)`` for a batch of one.

        ``x``: model space, all latent frames of the clip; ``actions``: ``[1, T', tau(, A)]``
        or ``None`` for a model without actions.
        """
        out = self.prepare_batch(sample)
        return out["x"], out["actions"]

    def prepare_batch(self, sample: dict[str, Any]) -> dict[str, Any]:
        """``DynamicsTask.prepare``'s whole output for a sample (a batch of one), its tensors on the
        device: ``x`` and ``actions`` as in ``prepare``, and whatever else the task gives; for a model
        with a latent action model (``model.lam``), also ``latent_actions``: the clip's codes ``[1, T']``."""
        field = "indices" if self.cfg.is_discrete else "latents"
        if field not in sample:
            raise ValueError(
                f"sample {sample.get('key')!r} has no KEY.{field}.npy: point shards= at the latent shards "
                f"the tokenizer made (vidworld tokenize), not the clip shards"
            )
        t = int(sample[field].shape[0])
        if t not in self._tasks:
            # max_frames = the clip's length: prepare() would otherwise cut a random window.
            # Every clip keeps its recorded actions here: label_fraction hides labels in training only.
            cfg = dataclasses.replace(self.cfg, max_frames=t, label_fraction=1.0)
            # No loader: the data config only says how the task treats a sample: one without actions
            # (unlabelled video) gets "no action", as in training, and one without rewards or
            # terminals unknown outcome targets.
            self._tasks[t] = DynamicsTask(
                cfg,
                SimpleNamespace(data=LoaderConfig(shards="", optional=["actions", "rewards", "terminals"])),
            )
        batch = {k: (v[None] if isinstance(v, Tensor) else v) for k, v in sample.items()}
        task = self._tasks[t]
        out = {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in task.prepare(batch).items()}
        if self.cfg.lam and not self.cfg.is_discrete:
            # The latent action model's codes for every transition of the clip ([1, T'], "none" first).
            out["latent_actions"] = task.latent_actions(out["x"], None, 0.0)
        return out

    def frames(self, x: Tensor) -> int:
        """Latent frames of a model-space tensor."""
        return int(x.shape[1] if self.cfg.is_discrete else x.shape[2])

    def slice(self, x: Tensor, start: int, end: int) -> Tensor:
        """Latent frames ``start:end`` of a model-space tensor."""
        return x[:, start:end] if self.cfg.is_discrete else x[:, :, start:end]

    def cat(self, *xs: Tensor) -> Tensor:
        return torch.cat(xs, dim=1 if self.cfg.is_discrete else 2)

    # -- model --------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        generator: torch.Generator | None = None,
        sampling: SamplingConfig | None = None,
        latent_actions: Tensor | None = None,
        return_disagreement: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``horizon`` latent frames after ``context`` (model space) under ``actions`` covering
        context + horizon ``[B, Tc + H, tau(, A)]``; returns model space with ``horizon`` frames.

        ``latent_actions``: latent action codes ``[B, Tc + H]`` long (``cfg.latent_actions`` =
        "no latent action"), for a model trained with a latent action model; ``None`` passes none.
        ``return_disagreement``: also the ensemble members' disagreement per imagined frame
        ``[B, H]`` (``DynamicsHead.rollout``; model-space units, zeros for a one-head model).
        """
        s = sampling or SamplingConfig()
        if self.cfg.is_discrete:
            kw = {"steps": s.steps, "temperature": s.temperature, "top_k": s.top_k}
        else:
            kw = {"steps": s.steps, "sampler": s.sampler}
        kw = {k: v for k, v in kw.items() if v is not None}
        if latent_actions is not None:  # only then: models without latent actions take no such argument
            kw["latent_actions"] = latent_actions
        if return_disagreement:  # likewise: only DynamicsHead models know it
            kw["return_disagreement"] = True
        p = next(iter(self.dynamics.parameters()), None)
        if p is not None and context.is_floating_point():
            context = context.to(p.dtype)
        if p is not None and actions is not None and actions.is_floating_point():
            actions = actions.to(p.dtype)  # continuous actions
        return self.dynamics.rollout(context, actions, horizon, generator=generator, **kw)

    def imagine(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        seed: int,
        sampling: SamplingConfig | None = None,
        latent_actions: Tensor | None = None,
    ) -> Tensor:
        """``rollout`` with its noise seeded by ``seed``: the ``horizon`` imagined frames."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        return self.rollout(context, actions, horizon, g, sampling, latent_actions)

    # -- tokenizer ----------------------------------------------------------------------------
    def latents(self, x: Tensor) -> Tensor:
        """Model space -> the tokenizer's latents ``[B, C, T, h, w]`` float: continuous latents
        divided by ``latent_scale``, or the FSQ codes of the indices (what latent MSE compares)."""
        if self.cfg.is_discrete:
            return self.tokenizer.indices_to_codes(x.long()).float()
        return x.float() / self.cfg.latent_scale

    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Model space with ``T'`` latent frames -> uint8 frames ``[B, 1 + (T'-1) tau, H, W, 3]``."""
        return to_uint8(self.tokenizer.decode(self.latents(x).to(self.device))).cpu()


def side_by_side(
    truth: np.ndarray, model: np.ndarray, context_frames: int, model_first: bool = False
) -> np.ndarray:
    """``truth | model`` uint8 ``[T, H, 2W, 3]`` (``model | truth`` with ``model_first``); the model's
    first ``context_frames`` frames (real context through the tokenizer) get a 2-pixel red border so
    the imagined part stands out."""
    if truth.shape != model.shape:
        raise ValueError(f"truth {truth.shape} and model {model.shape} frames must have the same shape")
    model = model.copy()
    b = 2
    for f in model[:context_frames]:
        f[:b], f[-b:], f[:, :b], f[:, -b:] = (255, 0, 0), (255, 0, 0), (255, 0, 0), (255, 0, 0)
    panels = [model, truth] if model_first else [truth, model]
    return np.ascontiguousarray(np.concatenate(panels, axis=2))


def clip_frames_by_key(clip_shards: str, split: str, keys: set[str]) -> dict[str, Tensor]:
    """uint8 frames ``[T, H, W, 3]`` of the clips named in ``keys`` (one pass over the shards)."""
    found: dict[str, Tensor] = {}
    for s in iter_split(clip_shards, split):
        if s["key"] in keys:
            if "frames" not in s:
                raise ValueError(f"{clip_shards}: sample {s['key']!r} has no mp4; clips= takes clip shards")
            found[s["key"]] = s["frames"]
            if len(found) == len(keys):
                break
    missing = sorted(keys - set(found))
    if missing:
        raise ValueError(
            f"clip shards {clip_shards} have no {split!r} clip with key(s) {missing[:3]}: pass the curated "
            "clips the latent shards were tokenized from"
        )
    return found


def find_clip(
    shards: str, split: str, field: str, min_frames: int, key: str = ""
) -> tuple[dict[str, Any] | None, list[str]]:
    """The ``split`` sample of clip ``key`` (empty: the first in key order) among those with at least
    ``min_frames`` latent frames of ``field`` (``latents`` / ``indices``), or ``None``; and the sorted
    keys of the split's samples with ``field`` seen on the way (all of them when none was found)."""
    found, keys = None, []
    for s in iter_split(shards, split):
        if field not in s:
            continue
        keys.append(s["key"])
        if s[field].shape[0] >= min_frames and (not key or s["key"] == key):
            if found is None or s["key"] < found["key"]:
                found = s
            if key:
                break
    return found, sorted(keys)


def true_frames(
    world: WorldModel, sample: dict[str, Any], x: Tensor, clips: str, split: str, n: int
) -> np.ndarray:
    """The clip's true source frames ``0 .. n-1``, uint8 ``[n, H, W, 3]``: from the clip shards ``clips``
    when given, else the tokenizer's reconstruction of its latents ``x`` (model space); black past
    the clip's end."""
    if clips:
        frames = clip_frames_by_key(clips, split, {sample["key"]})[sample["key"]][:n].numpy()
    else:
        latent = min(world.frames(x), 1 + -(-(n - 1) // world.tau))  # the latent frames covering n
        frames = world.decode(world.slice(x, 0, latent))[0, :n].numpy()
    if len(frames) < n:
        frames = np.concatenate([frames, np.zeros((n - len(frames), *frames.shape[1:]), np.uint8)])
    return frames


@torch.no_grad()
def rollout_video(cfg: RolloutConfig, world: WorldModel | None = None) -> Path:
    """Roll out one clip and write ``cfg.output/rollout.mp4``; returns its path."""
    world = world or WorldModel.load(cfg.checkpoint, cfg.tokenizer, cfg.device)
    if cfg.context < 1 or cfg.horizon < 1:
        raise ValueError(f"context={cfg.context}, horizon={cfg.horizon}: both must be >= 1 latent frames")
    need = cfg.context + cfg.horizon
    field = "indices" if world.cfg.is_discrete else "latents"
    sample, _ = find_clip(cfg.shards, cfg.split, field, need, cfg.key)
    if sample is None:
        what = f"clip {cfg.key!r}" if cfg.key else "clip"
        raise ValueError(
            f"no {cfg.split!r} {what} with >= {need} latent frames (context {cfg.context} + horizon "
            f"{cfg.horizon}) in {cfg.shards}; lower context/horizon or pass other shards"
        )
    x, actions = world.prepare(sample)
    x = world.slice(x, 0, need)
    actions = None if actions is None else actions[:, :need]
    ctx = world.slice(x, 0, cfg.context)
    pred = world.imagine(ctx, actions, cfg.horizon, cfg.seed, cfg.sampling)
    model = world.decode(world.cat(ctx, pred))[0].numpy()
    truth = true_frames(world, sample, x, cfg.clips, cfg.split, source_frames(need, world.tau))
    video = side_by_side(truth, model, source_frames(cfg.context, world.tau))
    path = Path(cfg.output) / "rollout.mp4"
    atomic_write_bytes(path, encode_mp4(video, fps=clip_fps(sample.get("meta"), cfg.fps)))
    return path


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld rollout jobs/rollout.yaml checkpoint=RUN tokenizer=TOK shards=LATENTS output=DIR``."""
    return stage_cli("rollout", RolloutConfig, rollout_video, config_path, overrides, _print_path)


def _print_path(_cfg: RolloutConfig, path: Path) -> int:
    print(path, flush=True)
    return 0
