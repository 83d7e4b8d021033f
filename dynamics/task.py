"""``DynamicsTask``: the dynamics model's side of the training runtime (``task: dynamics``).

It trains on *latent shards*: WebDataset samples written by the tokenizer stage with

    KEY.latents.npy   float16/32 [T', C, h, w]   continuous latents (head: diffusion), or
    KEY.indices.npy   int        [T', h, w]      FSQ indices (head: maskgit)
    KEY.actions.npy   [T] or [T, A]              the source clip's per-frame actions (optional)
    KEY.rewards.npy   float32 [T]                per-frame rewards (needed by model.reward_head)
    KEY.terminals.npy bool [T]                   per-frame episode ends (needed by model.continue_head)

Actions to latent frames. The source convention (``pipeline.samples``) is that ``actions[j]``
is taken at source frame ``j`` and its result is frame ``j + 1``. With temporal compression
``tau``, latent frame ``i > 0`` covers source frames ``1 + (i-1) tau .. i tau``; the actions that
produced them are ``actions[(i-1) tau .. i tau - 1]``. All ``tau`` of them are given to the model
for that frame (their embeddings are summed, so a held or a changed action both show), shaped
``[B, T', tau]``. Latent frame 0 (the first source frame alone) has no action in the clip: it
gets the reserved "no action" index ``num_actions`` (zeros for continuous actions).

Rewards and terminal flags to latent frames, for the reward and continuation heads: latent frame
``t`` gets the summed reward of the actions grouped with it above (the transition into it; none
for frame 0), and whether one of the actions grouped with frame ``t + 1`` ended the episode (the
transition out of it) (``dynamics.outcome.outcome_targets``; NaN where the clip does not say).

Clips longer than ``max_frames`` latent frames are cut to a random window of ``max_frames``.
Shorter clips (the loader batches clips of one length) train on all their frames: the loss dict
then counts them (``short_clips``, ``latent_frames``) and ``flops_per_sample`` /
``tokens_per_sample`` report the frames actually trained, so MFU does not count missing frames.
A clip too short to train at all (one latent frame for a residual diffusion model) is refused.

Clips without action labels. With ``data.optional: [actions]`` the loader mixes labelled and
unlabelled clips (``actions_present``); ``model.label_fraction`` hides the labels of a fixed
share of clips (by a hash of their key), for label-efficiency studies. An unlabelled clip gets
"no action" for every frame and, when ``model.lam`` names a trained latent action model
(``dynamics/lam.py``), that model's codes for its transitions, inferred on the fly on the
training device; a labelled clip gets its real actions and, with probability
``model.latent_action_mix``, its codes beside them. One run so learns from every clip, and the
model can be driven by real actions, latent codes or both.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dynamics import build_dynamics, dynamics_class
from dynamics.config import DynamicsConfig
from dynamics.outcome import outcome_targets
from pipeline.loader import ClipLoader, LoaderConfig, make_loader


def label_share(key: str) -> float:
    """A stable number in ``[0, 1)`` for a clip key: the clips with ``label_share(key) <
    label_fraction`` keep their action labels (the same ones on every rank and in every run)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0**64


def group_actions(actions: Tensor, latent_frames: int, tau: int, no_action: int | None) -> Tensor:
    """Source actions ``[B, T]`` (or ``[B, T, A]``) -> per-latent-frame groups ``[B, T', tau(, A)]``.

    ``no_action`` fills latent frame 0 for discrete actions (continuous ones get zeros).
    """
    need = 1 + (latent_frames - 1) * tau
    if actions.shape[1] < need - 1:
        raise ValueError(
            f"actions cover {actions.shape[1]} source frames but {latent_frames} latent frames at "
            f"temporal_compression={tau} need {need - 1} (one per source frame after the first); "
            "check model.temporal_compression against the tokenizer"
        )
    body = actions[:, : need - 1].reshape(actions.shape[0], latent_frames - 1, tau, *actions.shape[2:])
    if actions.is_floating_point():
        first = torch.zeros_like(body[:, :1])
    else:
        first = torch.full_like(body[:, :1], int(no_action if no_action is not None else 0))
    return torch.cat([first, body], dim=1)


def _keys(batch: dict[str, Any]) -> list[str]:
    """The clip keys of a loader batch (a list) or of one sample (a string)."""
    key = batch.get("key") or []
    return [key] if isinstance(key, str) else list(key)


class LatentShardTask:
    """What the tasks that train on latent shards share (``DynamicsTask``, ``dynamics.lam_task.LAMTask``):
    the resumable loader (``data:`` is a ``LoaderConfig``) behind ``batches`` and ``loader_state``, and
    the random window of ``max_frames`` latent frames cut from longer clips, and the count of what
    ``loss`` trained behind ``flops_per_sample`` and ``tokens_per_sample``. A subclass implements
    ``prepare(batch, generator)``, ``clip_flops(frames)`` and ``tokens_per_frame()``."""

    data_class: ClassVar[type] = LoaderConfig

    def __init__(self, model_cfg: Any, train_cfg: Any) -> None:
        self.cfg = model_cfg
        self.data_cfg = train_cfg.data
        self._loader: ClipLoader | None = None
        # What loss() has trained so far on this rank (clips, their FLOPs, their latent frames).
        self._clips, self._flops, self._frames = 0, 0.0, 0

    def prepare(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def clip_flops(self, frames: int) -> float:
        """Training FLOPs of one clip of ``frames`` latent frames."""
        raise NotImplementedError

    def tokens_per_frame(self) -> int:
        """Latent tokens (positions) per latent frame."""
        raise NotImplementedError

    def batches(self, rank: int, world_size: int, seed: int, state: dict | None) -> Iterator[Any]:
        self._loader = make_loader(self.data_cfg, rank, world_size, seed, state)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        while True:
            for batch in self._loader:
                yield self.prepare(batch, generator)

    def loader_state(self) -> dict:
        return self._loader.state_dict() if self._loader is not None else {}

    def transitions(self, batch: dict[str, Any], model: str, why: str) -> tuple[Tensor, list[str]]:
        """The continuous latents ``[B, T, C, h, w]`` of a batch of clips that ``model`` (named in the
        messages) learns from transitions of, and the clips' keys. Refuses FSQ indices, no latents,
        and clips of fewer than 2 latent frames (``why`` says what the model does with them)."""
        x = batch.get("latents")
        keys = _keys(batch)
        if not isinstance(x, Tensor):
            what = (
                "FSQ indices (KEY.indices.npy)" if isinstance(batch.get("indices"), Tensor) else "no latents"
            )
            raise ValueError(
                f"the {model} needs continuous latents (KEY.latents.npy) but clips "
                f"{keys[:4] or '(keys unknown)'} carry {what}; tokenize with a continuous tokenizer "
                "(head: diffusion) and point data.shards at its latent shards"
            )
        t = x.shape[1]
        if t < 2:
            raise ValueError(
                f"clips {keys[:4] or '(keys unknown)'} have {t} latent frame(s); the {model} {why} and "
                "needs >= 2: tokenize longer clips"
            )
        return x, keys

    def window_latents(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, int, int, int]:
        """A random window of ``max_frames`` of latents ``[B, T, C, h, w]`` as the model reads them
        (``[B, C, T', h, w]`` float times ``latent_scale``), its ``start`` and ``end``, and how many
        clips were shorter than the window (``short_clips``)."""
        cfg, t = self.cfg, x.shape[1]
        start, end = self.window(t, cfg.max_frames, generator)
        x = (x[:, start:end].float() * cfg.latent_scale).permute(0, 2, 1, 3, 4)
        return x, start, end, x.shape[0] if t < cfg.max_frames else 0

    @staticmethod
    def window(frames: int, max_frames: int, generator: torch.Generator | None) -> tuple[int, int]:
        """``(start, end)`` of a random window of ``max_frames`` of ``frames`` (all when shorter)."""
        start = 0
        if frames > max_frames:
            start = int(torch.randint(0, frames - max_frames + 1, (1,), generator=generator))
        return start, start + min(frames, max_frames)

    @staticmethod
    def run_model(model: nn.Module, batch: dict[str, Any], *inputs: Any) -> dict[str, Tensor | float]:
        """``model(*inputs)`` as a dict; a ``ValueError`` (bad input) names the batch's clips."""
        try:
            return dict(model(*inputs))
        except ValueError as e:
            if not batch.get("keys"):
                raise
            raise ValueError(f"{e} (batch of clips {batch['keys'][:8]})") from e

    def account(self, out: dict[str, Tensor | float], batch: dict[str, Any], clips: int, frames: int) -> None:
        """Count ``clips`` clips of ``frames`` latent frames as trained, and add to ``out`` what the
        runtime logs about the data: ``short_clips`` (clips of this micro-batch shorter than
        ``max_frames``), ``latent_frames`` and, when training from the loader,
        ``data_corrupt_skipped`` / ``data_short_skipped`` (all ranks)."""
        self._clips += clips
        self._frames += clips * frames
        self._flops += clips * self.clip_flops(frames)
        out["short_clips"] = float(batch.get("short_clips", 0))
        out["latent_frames"] = float(frames)
        if self._loader is not None:
            out.update(self._loader.skip_metrics())

    def flops_per_sample(self) -> float:
        """FLOPs per clip: the mean over the clips trained so far (short clips cost less), or a
        ``max_frames`` clip's before the first step."""
        return self._flops / self._clips if self._clips else self.clip_flops(self.cfg.max_frames)

    def tokens_per_sample(self) -> int:
        """Latent tokens per clip: the mean over the clips trained so far, or a ``max_frames`` clip's."""
        frames = self._frames / self._clips if self._clips else self.cfg.max_frames
        return round(frames * self.tokens_per_frame())


class DynamicsTask(LatentShardTask):
    """The ``Task`` of the dynamics model (see ``runtime.task.Task``)."""

    config_class: ClassVar[type] = DynamicsConfig

    def __init__(self, model_cfg: DynamicsConfig, train_cfg: Any) -> None:
        super().__init__(model_cfg, train_cfg)
        self._meta = build_dynamics(model_cfg, device=None)  # for counting FLOPs only
        self._lam: nn.Module | None = None  # the latent action model (model.lam), loaded when first used
        self._lam_scale = 1.0  # its latent scale over ours

    def build_model(self) -> nn.Module:
        """The head ``model.head`` names, constructed only (the runtime places and initialises it)."""
        return dynamics_class(self.cfg)(self.cfg)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    # -- data --------------------------------------------------------------------------------
    def prepare(
        self, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> dict[str, Tensor | None]:
        """A loader batch -> ``{"x": latents [B, C, T, h, w] or indices [B, T, h, w], "actions": ...}``."""
        cfg = self.cfg
        field = "indices" if cfg.is_discrete else "latents"
        x = batch.get(field)
        if not isinstance(x, Tensor):
            raise ValueError(
                f"head={cfg.head} trains on KEY.{field}.npy members but the batch has none (fields: "
                f"{sorted(k for k, v in batch.items() if v is not None)}); point data.shards at the "
                "tokenizer's latent shards or pick the other head"
            )
        t = x.shape[1]
        keys = _keys(batch)
        need = 2 if cfg.head == "diffusion" and cfg.residual else 1
        if t < need:
            raise ValueError(
                f"clips {keys[:4] or '(keys unknown)'} have {t} latent frame(s) but head={cfg.head} "
                f"with residual={cfg.residual} trains on >= {need}: tokenize longer clips, or drop the "
                "short ones from data.shards"
            )
        labeled = self.labeled(batch)
        actions = None
        if cfg.action_type != "none":
            if not isinstance(batch.get("actions"), Tensor):
                if "actions" not in (getattr(self.data_cfg, "optional", None) or []):
                    raise ValueError(
                        f"model.action_type={cfg.action_type} but the shards have no KEY.actions.npy; "
                        "set model.action_type=none to train without actions, or data.optional=[actions] "
                        "to train on clips without labels as unlabelled ones"
                    )
            else:
                actions = group_actions(batch["actions"], t, cfg.temporal_compression, cfg.num_actions)
                if not bool(labeled.all()):
                    none = (
                        torch.zeros_like(actions)
                        if actions.is_floating_point()
                        else torch.full_like(actions, cfg.num_actions)
                    )
                    keep = labeled.view(-1, *([1] * (actions.dim() - 1)))
                    actions = torch.where(keep, actions, none)
        rewards, continues = self.outcomes(batch, t)
        start, end = self.window(t, cfg.max_frames, generator)
        x = x[:, start:end]
        if cfg.is_discrete:
            x = x.long()
        else:
            x = (x.float() * cfg.latent_scale).permute(0, 2, 1, 3, 4)  # [B, C, T, h, w]
        return {
            "x": x,
            "actions": None if actions is None else actions[:, start:end],
            **({} if rewards is None else {"rewards": rewards[:, start:end]}),
            **({} if continues is None else {"continues": continues[:, start:end]}),
            "keys": keys,
            "labeled": labeled,
            "short_clips": x.shape[0] if t < cfg.max_frames else 0,
        }

    def outcomes(self, batch: dict[str, Any], latent_frames: int) -> tuple[Tensor | None, Tensor | None]:
        """The outcome heads' targets ``[B, T']`` for a loader batch (``outcome_targets``): ``(None,
        None)`` for a model without those heads. Refuses shards that lack what a head needs, unless
        ``data.optional`` names it: then a clip without it (the loader zero-fills it and says so in
        ``NAME_present``) has unknown targets (NaN, no loss), not a recorded reward of 0."""
        cfg = self.cfg
        if not (cfg.reward_head or cfg.continue_head):
            return None, None
        optional = set(getattr(self.data_cfg, "optional", None) or [])
        rewards, terminals = batch.get("rewards"), batch.get("terminals")
        for on, name, value in (
            (cfg.reward_head, "rewards", rewards),
            (cfg.continue_head, "terminals", terminals),
        ):
            if on and not isinstance(value, Tensor) and name not in optional:
                raise ValueError(
                    f"model.{'reward' if name == 'rewards' else 'continue'}_head=true trains on "
                    f"KEY.{name}.npy but the batch has none (clips {_keys(batch)[:4]}): "
                    f"curate sources that record {name} (docs/formats.md), turn the head off, or name "
                    f"it in data.optional=[{name}] to train the head on the clips that have it"
                )
        reward, cont = outcome_targets(
            rewards if cfg.reward_head and isinstance(rewards, Tensor) else None,
            terminals if cfg.continue_head and isinstance(terminals, Tensor) else None,
            latent_frames,
            cfg.temporal_compression,
        )
        b = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))
        targets = []
        heads = ((cfg.reward_head, "rewards", reward), (cfg.continue_head, "terminals", cont))
        for on, name, target in heads:
            if on and target is None:  # no clip of the batch has it: all unknown
                target = torch.full((b, latent_frames), float("nan"))
            present = batch.get(f"{name}_present")
            if target is not None and isinstance(present, Tensor):
                target = torch.where(present.bool().to(target.device)[:, None], target, float("nan"))
            targets.append(target)
        return targets[0], targets[1]

    def example_batch(self, batch_size: int) -> dict[str, Any]:
        """A random micro-batch of ``max_frames`` latent frames as ``prepare`` returns it, every clip
        labelled (``runtime.task.Task``; for the memory plan)."""
        cfg, b, t = self.cfg, batch_size, self.cfg.max_frames
        grid = (cfg.latent_height, cfg.latent_width)
        if cfg.is_discrete:
            x = torch.randint(0, cfg.codebook_size, (b, t, *grid))
        else:
            x = torch.randn(b, cfg.latent_channels, t, *grid)
        tau = cfg.temporal_compression
        actions = None
        if cfg.action_type == "discrete":
            actions = torch.randint(0, cfg.num_actions, (b, t, tau))
        elif cfg.action_type == "continuous":
            actions = torch.randn(b, t, tau, cfg.action_dim)
        labeled = torch.ones(b, dtype=torch.bool)
        out = {"x": x, "actions": actions, "keys": [], "labeled": labeled, "short_clips": 0}
        if cfg.reward_head:
            out["rewards"] = torch.zeros(b, t)
        if cfg.continue_head:
            out["continues"] = torch.ones(b, t)
        return out

    def labeled(self, batch: dict[str, Any]) -> Tensor:
        """Bool ``[B]``: which clips of a loader batch train with their action labels (they have
        them, and ``label_fraction`` keeps them)."""
        keys = _keys(batch)
        n = len(keys) if keys else next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))
        if isinstance(batch.get("actions_present"), Tensor):
            present = batch["actions_present"].bool().clone()
        else:
            present = torch.full((n,), isinstance(batch.get("actions"), Tensor))
        fraction = self.cfg.label_fraction
        if fraction < 1.0:
            if not keys:
                raise ValueError("model.label_fraction < 1 picks clips by their keys, but the batch has none")
            present &= torch.tensor([label_share(k) < fraction for k in keys])
        return present

    # -- latent actions ----------------------------------------------------------------------
    def latent_model(self, device: torch.device) -> nn.Module:
        """The latent action model ``model.lam`` names, frozen, on ``device`` (loaded once)."""
        if self._lam is None:
            from runtime.trained import load_trained

            lam_cfg, _, lam = load_trained(self.cfg.lam, device)
            if int(lam.num_codes) != self.cfg.latent_actions:
                raise ValueError(
                    f"model.lam={self.cfg.lam} has {lam.num_codes} codes but model.latent_actions="
                    f"{self.cfg.latent_actions}; set model.latent_actions={lam.num_codes}"
                )
            lam_channels = getattr(lam_cfg.model, "latent_channels", self.cfg.latent_channels)
            if lam_channels != self.cfg.latent_channels:
                raise ValueError(
                    f"model.lam={self.cfg.lam} reads {lam_channels}-channel latents but these have "
                    f"{self.cfg.latent_channels}: train the latent action model on the same latent shards"
                )
            self._lam_scale = float(getattr(lam_cfg.model, "latent_scale", 1.0)) / self.cfg.latent_scale
            self._lam = lam.requires_grad_(False).eval()
        return self._lam.to(device)

    def latent_actions(self, x: Tensor, labeled: Tensor | None, mix: float) -> Tensor | None:
        """Latent codes ``[B, T]`` for latents ``x`` ``[B, C, T, h, w]`` (our scale): the latent action
        model's for unlabelled clips and, with probability ``mix``, for labelled ones; "none"
        (``latent_actions``) for the rest and for frame 0. None without a latent action model."""
        if not self.cfg.lam:
            return None
        lam = self.latent_model(x.device)
        codes = lam.infer(x.float() * self._lam_scale)
        if labeled is None:
            return codes
        labeled = labeled.to(x.device)
        use = ~labeled | (torch.rand(labeled.shape, device=x.device) < mix)
        return torch.where(use[:, None], codes, torch.full_like(codes, self.cfg.latent_actions))

    # -- training ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> dict[str, Tensor | float]:
        """The model's loss dict, plus what the runtime should log about the data: ``short_clips``
        (clips of this micro-batch shorter than ``max_frames``), ``latent_frames`` (frames trained
        per clip) and, when training from the loader, ``data_corrupt_skipped`` / ``data_short_skipped``."""
        p = next(iter(model.parameters()))
        x = batch["x"].to(p.device)
        if x.is_floating_point():
            x = x.to(p.dtype)
        actions = batch["actions"]
        if actions is not None:
            actions = actions.to(p.device)
            if actions.is_floating_point():
                actions = actions.to(p.dtype)
        labeled = batch.get("labeled")
        latent = self.latent_actions(x, labeled, self.cfg.latent_action_mix)
        targets = ()
        if self.cfg.reward_head or self.cfg.continue_head:
            targets = tuple(
                batch[k].to(p.device) if isinstance(batch.get(k), Tensor) else None
                for k in ("rewards", "continues")
            )
        out = self.run_model(model, batch, x, actions, latent, *targets)
        b, t = x.shape[0], x.shape[1] if self.cfg.is_discrete else x.shape[2]
        self.account(out, batch, b, t)
        if isinstance(labeled, Tensor):
            out["labeled_clips"] = float(labeled.float().mean())
        return out

    def clip_flops(self, frames: int) -> float:
        return self._meta.flops_per_sample(frames)

    def tokens_per_frame(self) -> int:
        return self.cfg.tokens_per_frame

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """Open-loop rollout of the second half of each clip from its first half (latent metrics).

        ``eval/model_error`` (latent MSE, or token error rate for maskgit) against
        ``eval/copy_last_error`` (repeat the last context frame) and, with actions and more than
        one clip, ``eval/shuffled_actions_error`` (the same rollout under another clip's actions).
        Videos need the tokenizer's decoder and are not made here.
        """
        p = next(iter(model.parameters()))
        x, actions = batch["x"].to(p.device), batch["actions"]
        actions = None if actions is None else actions.to(p.device)
        latent = None
        if not self.cfg.is_discrete:
            latent = self.latent_actions(x, batch.get("labeled"), 0.0)
        discrete = self.cfg.is_discrete
        t = x.shape[1] if discrete else x.shape[2]
        if t < 2:
            return {}
        ctx_len = max(1, t // 2)
        horizon = t - ctx_len
        if discrete:
            context, truth = x[:, :ctx_len], x[:, ctx_len:]
            last = context[:, -1:].expand_as(truth)
            err = lambda pred: float((pred != truth).float().mean())  # noqa: E731
        else:
            x = x.to(p.dtype)
            context, truth = x[:, :, :ctx_len], x[:, :, ctx_len:]
            last = context[:, :, -1:].expand_as(truth)
            err = lambda pred: float(((pred.float() - truth.float()) ** 2).mean())  # noqa: E731

        def roll(a: Tensor | None, z: Tensor | None = latent) -> Tensor:
            g = torch.Generator(device=p.device).manual_seed(0)
            return model.rollout(context, a, horizon, generator=g, latent_actions=z)

        was_training = model.training
        model.eval()
        try:
            out = {"eval/model_error": err(roll(actions)), "eval/copy_last_error": err(last)}
            if actions is not None and x.shape[0] > 1:
                out["eval/shuffled_actions_error"] = err(roll(torch.roll(actions, 1, dims=0)))
            if latent is not None and x.shape[0] > 1:
                out["eval/shuffled_latent_actions_error"] = err(roll(actions, torch.roll(latent, 1, dims=0)))
        finally:
            model.train(was_training)
        return out
