"""``DynamicsHead``: what every dynamics head shares, so that adding a head is one subclass in one file.

A head owns the frame-causal backbone (``DynamicsTransformer``) and says three things: how a
clip's frames enter and leave it (``loss`` for training; ``to_frames`` / ``from_frames`` between
its own layout and the frame-major ``[B, T, h, w(, C)]`` one), how one new frame is sampled given
the past (``sample_frame``) and how finished frames are written into the KV cache
(``write_cache``). The base class owns the rest: the blocks the runtime checkpoints, the training
forward, initialisation, FLOP counting, and the rollout loop (context through the cache, then one
frame at a time over a sliding window of ``max_frames - 1`` past frames, as in training).

Uncertainty (``model.ensemble = K > 1``): the backbone carries K members on a shared trunk, each
with its own top blocks and output layers (``DynamicsTransformer``). Each head trains every member
on its loss (``member_weights``: the online bootstrap), samples from the members' combined
prediction, and says how much the members disagree on each imagined frame (``sample_frame``'s
second output); ``rollout(..., return_disagreement=True)`` returns that per frame, for the
evaluation and for a planner.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from dynamics.outcome import OutcomeHeads
from dynamics.transformer import (
    Actions,
    DynamicsTransformer,
    FrameActions,
    KVCache,
    check_action_values,
    check_latent_action_values,
    check_rollout_actions,
    frame_slice,
    value_ranges,
)


def relative_to_copy_last(err: Tensor, copy: Tensor, floor: float) -> Tensor:
    """The mean over clips of each clip's prediction error divided by what copying the last frame
    scores on it (plus ``floor``, in the same units): ``err`` and ``copy`` are squared errors
    ``[B, ...]``. A clip of a static game screen and one of a panning camera then weigh the same;
    under a plain MSE the clips with the most motion take nearly all the gradient."""
    b = err.shape[0]
    per_clip = err.reshape(b, -1).mean(1)
    base = copy.detach().reshape(b, -1).mean(1)
    return (per_clip / (base + floor)).mean()


class DynamicsHead(nn.Module):
    """A next-frame model on a ``DynamicsTransformer`` taking ``in_features`` and giving
    ``out_features`` per latent position. Subclasses implement the methods that raise here."""

    def __init__(self, cfg: DynamicsConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = DynamicsTransformer(cfg, in_features, out_features)
        # Reward / continuation heads (model.reward_head, model.continue_head): no module at all when
        # both are off, so such a model's parameters and checkpoints are what they always were.
        self.outcome = OutcomeHeads(cfg) if cfg.reward_head or cfg.continue_head else None

    # -- what the runtime uses ---------------------------------------------------------------
    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, for per-block activation checkpointing and compile by the runtime."""
        return self.backbone.blocks

    def forward(
        self,
        x: Tensor,
        actions: Tensor | None = None,
        latent_actions: Tensor | None = None,
        rewards: Tensor | None = None,
        continues: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The training loss (see ``loss``): a wrapped model (DeepSpeed) is called like this.
        ``latent_actions``: ``[B, T]`` codes of a latent action model (``FrameActions``);
        ``rewards`` / ``continues``: ``[B, T]`` targets of the outcome heads (``dynamics.outcome``,
        NaN = unknown), used only by a model that has them."""
        if self.outcome is None:
            return self.loss(x, FrameActions.of(actions, latent_actions))
        return self.loss(x, FrameActions.of(actions, latent_actions), rewards, continues)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter in place (after ``to_empty()`` from the meta device): the
        backbone first, then the head's own layers (``init_head_weights``)."""
        self.backbone.init_weights()
        self.init_head_weights()
        if self.outcome is not None:
            self.outcome.init_weights()

    def flops_per_sample(self, frames: int | None = None) -> float:
        """Training FLOPs (what MFU counts) for a clip of ``frames`` latent frames (default ``max_frames``).

        Forward and backward (3x the forward) of the backbone (``DynamicsTransformer.forward_flops``)
        and of the head's own layers (``head_forward_flops``), plus the forward passes ``loss`` runs
        without gradient (``no_grad_forwards``).
        """
        t = frames or self.cfg.max_frames
        forward = self.backbone.forward_flops(t) + self.head_forward_flops(t)
        if self.outcome is not None:
            forward += self.outcome.forward_flops(t)
        return (3.0 + self.no_grad_forwards(t)) * forward

    @property
    def ensemble_size(self) -> int:
        """``K``: the number of ensemble members on the trunk (``model.ensemble``; 1 = no ensemble)."""
        return self.cfg.ensemble

    def member_weights(self, batch: int, device: torch.device) -> Tensor | None:
        """Training weights ``[K, B, 1]`` of each clip for each ensemble member. With
        ``model.ensemble_bootstrap``: independent Poisson(1) draws scaled to a mean of 1 over the
        batch (the online bootstrap: every member trains on the plain loss, each on its own resample
        of the data); else ones. ``None`` with one head, which then draws no random numbers (its
        training is what it always was)."""
        k = self.cfg.ensemble
        if k == 1:
            return None
        if not self.cfg.ensemble_bootstrap:
            return torch.ones(k, batch, 1, device=device)
        draws = torch.poisson(torch.ones(k, batch, 1, device=device))
        # Scaled to a mean of 1 over the batch, so each member's loss keeps the plain loss's scale.
        return draws / draws.mean(1, keepdim=True).clamp_min(1e-6)

    # -- what a head provides ----------------------------------------------------------------
    def init_head_weights(self) -> None:
        """Initialise the head's layers outside the backbone (none by default)."""

    def head_forward_flops(self, frames: int) -> float:
        """Forward FLOPs of the head's matmuls outside the backbone for one clip (none by default)."""
        return 0.0

    def no_grad_forwards(self, frames: int) -> int:
        """Extra forward passes of the whole network, without gradient, that ``loss`` runs per clip
        of ``frames`` latent frames (none by default)."""
        return 0

    def loss(self, x: Tensor, actions: Actions = None) -> dict[str, Tensor]:
        """Scalar tensors for a training clip; ``"loss"`` is optimised. ``actions``: real actions
        (a tensor) or ``FrameActions``."""
        raise NotImplementedError

    def frame_state(self, frames: Tensor, actions: Actions) -> Tensor:
        """The last block's tokens ``[B, T, N, D]`` for clean frames ``[B, T, h, w(, C)]``
        (frame-major), as a rollout writes them into the cache: what the outcome heads read outside
        training."""
        raise NotImplementedError

    def check_input(self, x: Tensor, name: str) -> None:
        """Raise ``ValueError`` (naming ``name``) when ``x`` is not in the head's layout."""
        raise NotImplementedError

    # -- reward and continuation --------------------------------------------------------------
    def add_outcome_losses(
        self, losses: dict[str, Tensor], state: Tensor, rewards: Tensor | None, continues: Tensor | None
    ) -> dict[str, Tensor]:
        """Add the outcome heads' losses (weighted by ``model.reward_loss_weight`` /
        ``continue_loss_weight``) to ``losses["loss"]`` and log each (``reward_loss``,
        ``continue_loss``); ``state``: the last block's tokens ``[B, T, N, D]``. Nothing without
        outcome heads."""
        if self.outcome is None:
            return losses
        terms = self.outcome.loss(state, rewards, continues)
        weights = {"reward_loss": self.cfg.reward_loss_weight, "continue_loss": self.cfg.continue_loss_weight}
        losses["loss"] = losses["loss"] + sum(weights[k] * v for k, v in terms.items())
        return {**losses, **{k: v.detach() for k, v in terms.items()}}

    @torch.no_grad()
    def predict_outcomes(self, x: Tensor, actions: Actions = None) -> dict[str, Tensor]:
        """Per latent frame of clean ``x`` (the head's layout) under ``actions``: ``reward`` ``[B, T]``
        (reward units) of the transition into each frame and ``continue_prob`` ``[B, T]`` of the
        transition out of it (``dynamics.outcome``), each present when the model has that head."""
        if self.outcome is None:
            raise ValueError(
                "this dynamics model has no reward or continuation head (model.reward_head and "
                "model.continue_head are false): train one with them to predict outcomes"
            )
        self.check_input(x, "x")
        return self.outcome.predict(self.frame_state(self.to_frames(x), FrameActions.of(actions)))

    def check_input_range(self, lo: float, hi: float, name: str) -> None:
        """Raise ``ValueError`` (naming ``name``) when input values spanning ``[lo, hi]`` are invalid
        (NaN in either means some value is NaN)."""
        raise NotImplementedError

    def check_values(self, x: Tensor, actions: Actions, name: str) -> None:
        """Refuse out-of-range or non-finite inputs ``x`` and ``actions`` on every device.

        Called once per ``loss`` and per ``rollout`` (not per network call). Its cost is one fused
        min/max reduction per tensor and one host sync, which a training step already pays when the
        runtime reads the loss; an unchecked bad index would otherwise be a bare IndexError on a CPU
        and an unreadable device-side assert on a GPU, and NaN would only show as a NaN loss.
        """
        acts = FrameActions.of(actions) or FrameActions()
        real = acts.real if self.backbone.action_embed is not None else None
        x_span, real_span, latent_span = value_ranges(x, real, acts.latent)
        if x_span is not None:
            self.check_input_range(*x_span, name)
        check_action_values(real, real_span, self.cfg)
        check_latent_action_values(acts.latent, latent_span, self.cfg)

    def to_frames(self, x: Tensor) -> Tensor:
        """The head's layout -> frame-major ``[B, T, h, w(, C)]`` (identity by default)."""
        return x

    def from_frames(self, frames: Tensor) -> Tensor:
        """Frame-major ``[B, T, h, w(, C)]`` -> the head's layout (identity by default)."""
        return frames

    def sampling_options(self, **options: Any) -> dict[str, Any]:
        """The sampler settings of one rollout, ``None`` replaced by the config's value, checked."""
        raise NotImplementedError

    def sample_frame(
        self,
        frames: Tensor,
        t: int,
        actions: Actions,
        cache: KVCache | None,
        generator: torch.Generator | None,
        **options: Any,
    ) -> tuple[Tensor, Tensor]:
        """Frame ``t`` ``[B, 1, h, w(, C)]`` after the frames so far ``[B, t, h, w(, C)]`` (read from
        ``cache`` when given, else rerun over the window) under ``actions`` (all frames), and the
        ensemble members' disagreement on it ``[B]`` float32 (zeros with one head; see ``rollout``)."""
        raise NotImplementedError

    def write_cache(self, frames: Tensor, before: Tensor | None, actions: Actions, cache: KVCache) -> None:
        """Append the finished ``frames`` ``[B, T, h, w(, C)]`` (their actions: ``actions``) to
        ``cache``; ``before`` is the frame preceding them (``None`` at the start of a clip)."""
        raise NotImplementedError

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Actions,
        horizon: int,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        latent_actions: Tensor | None = None,
        return_disagreement: bool = False,
        **sampling: Any,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Generate ``horizon`` frames after ``context`` (the head's layout, ``Tc`` frames) -> the
        head's layout with ``horizon`` frames; with ``return_disagreement``, ``(frames,
        disagreement)``, ``disagreement`` ``[B, horizon]`` float32 on the context's device.

        ``actions`` cover context and horizon: ``[B, Tc + horizon(, ...)]`` (``None``: no action),
        and so do ``latent_actions`` (``[B, Tc + horizon]`` codes, models with a latent action
        model; ``None``: no latent action). Randomness comes from
        ``generator`` only. Each new frame sees at most the ``max_frames - 1`` frames before it, as
        in training (a sliding window; see ``DynamicsTransformer.trim_cache``). ``use_cache=False``
        reruns that window at every step: the same result while context + horizon <= ``max_frames``,
        for testing. ``sampling``: the head's sampler settings (``sampling_options``).

        Disagreement (``model.ensemble = K``): how much the K ensemble members disagree on each
        imagined frame, given the same imagined past, >= 0, larger = less known; all zeros when
        K = 1. The frames fed back are the members' combined prediction (one trajectory, not K).
        Diffusion: the variance over members of the predicted clean latent ``x0`` at the last
        sampling step, averaged over positions and channels (model-space latent units squared, i.e.
        after ``latent_scale``). MaskGIT: the Jensen-Shannon divergence of the members' token
        distributions (nats, ``0 .. log K``), each position's taken at the step that reveals it,
        averaged over positions. A planner scores an imagined action sequence by its return minus
        ``disagreement_penalty * disagreement.sum(1)`` (or per step, discounted like the rewards).
        """
        actions = FrameActions.of(actions, latent_actions)
        self.check_input(context, "context")
        self.check_values(context, actions, "context")
        options = self.sampling_options(**sampling)
        frames = self.to_frames(context)
        b, tc = frames.shape[:2]
        check_rollout_actions(actions, b, tc + horizon)
        window = max(1, self.cfg.max_frames - 1)
        cache = KVCache() if use_cache else None
        if cache is not None:
            self.write_cache(frames, None, frame_slice(actions, 0, tc), cache)
            self.backbone.trim_cache(cache, window)
        spread = []
        for i in range(horizon):
            t = tc + i
            new, disagreement = self.sample_frame(frames, t, actions, cache, generator, **options)
            spread.append(disagreement)
            before = frames[:, -1:]
            frames = torch.cat([frames, new], dim=1)
            if cache is not None and i + 1 < horizon:
                # The finished frame, clean, goes into the cache for the frames after it.
                self.write_cache(new, before, frame_slice(actions, t, t + 1), cache)
                self.backbone.trim_cache(cache, window)
        out = self.from_frames(frames[:, tc:])
        if not return_disagreement:
            return out
        if not spread:
            return out, torch.zeros(b, 0, device=frames.device)
        return out, torch.stack(spread, dim=1).float()
