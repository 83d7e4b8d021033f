"""Diffusion-forcing dynamics over continuous latents.

Noise schedule: flow matching / rectified flow, ``x_s = (1 - s) x0 + s eps`` with noise level
``s`` in ``[0, 1]`` (0 clean, 1 pure noise). In training every frame gets its *own* noise level
(Diffusion Forcing), so the model learns to denoise a frame given a past of any cleanliness;
at sampling the context is clean (``s = 0``) and each new frame is denoised from ``s = 1`` in
``sampling_steps`` steps while its past is read from the KV cache.

Prediction target: ``x0`` (default) or ``v = eps - x0``. With ``residual`` (default) every
frame is fed beside its predecessor (channels ``[noisy x_t | x_{t-1}]``, the predecessor
noise-augmented in training) and the network's output is added to that predecessor: the head
predicts what changes. An untrained model therefore copies the last frame, and the loss is spent
on the moving parts rather than on re-drawing a static background. Frame 0 has no predecessor
(zeros) and carries no loss; it is context.

Actions: in training a clip's actions are all replaced by "no action" with probability
``action_dropout`` (an unconditional mode). Samplers: ``euler`` (deterministic; on this schedule
it is the same update as DDIM) and ``heun`` (2nd order, two network calls per step). With
x0-prediction one step gives the model's mean prediction of the next frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from dynamics.head import DynamicsHead, relative_to_copy_last
from dynamics.transformer import Actions, FrameActions, KVCache, frame_slice


class NoiseLevelEmbedding(nn.Module):
    """Noise level ``s`` ``[B, T]`` in ``[0, 1]`` -> ``[B, T, D]`` (sinusoidal features, then an MLP)."""

    def __init__(self, dim: int, features: int = 256) -> None:
        super().__init__()
        self.features = features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, s: Tensor) -> Tensor:
        half = self.features // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, device=s.device, dtype=torch.float32) / half
        )
        ang = (s.float() * 1000.0)[..., None] * freqs
        emb = torch.cat([ang.cos(), ang.sin()], dim=-1)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class DiffusionDynamics(DynamicsHead):
    """Next-frame diffusion over latents ``[B, C, T, h, w]`` conditioned on per-frame actions."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        c = cfg.latent_channels
        super().__init__(cfg, 2 * c if cfg.residual else c, c)
        self.noise_embed = NoiseLevelEmbedding(cfg.dim)
        # The predecessor's augmentation level (residual only), as GameNGen conditions on it.
        self.context_noise_embed = NoiseLevelEmbedding(cfg.dim) if cfg.residual else None

    def init_head_weights(self) -> None:
        for emb in (self.noise_embed, self.context_noise_embed):
            for m in emb.mlp if emb is not None else ():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)

    def head_forward_flops(self, frames: int) -> float:
        # The noise-level MLPs run once per frame (two of them with residual).
        mlps = [e.mlp for e in (self.noise_embed, self.context_noise_embed) if e is not None]
        return 2.0 * frames * sum(m.weight.numel() for mlp in mlps for m in mlp if isinstance(m, nn.Linear))

    def no_grad_forwards(self, frames: int) -> int:
        # Self-forcing predicts every frame once more to make the predecessors (own_predecessors).
        cfg = self.cfg
        return 1 if cfg.residual and cfg.self_forcing > 0 and frames >= 3 else 0

    # -- the network in latent layout --------------------------------------------------------
    def check_input(self, latents: Tensor, name: str) -> None:
        cfg = self.cfg
        if latents.dim() != 5 or latents.shape[1] != cfg.latent_channels or not latents.is_floating_point():
            raise ValueError(
                f"{name} must be float [B, C={cfg.latent_channels}, T, h, w] latents, got "
                f"{tuple(latents.shape)} {latents.dtype}; set latent_channels to the tokenizer's"
            )

    def check_input_range(self, lo: float, hi: float, name: str) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"{name} hold non-finite latents (min {lo}, max {hi}): drop or re-tokenize the clips "
                "whose KEY.latents.npy holds NaN/inf"
            )

    def predict(
        self,
        x: Tensor,
        s: Tensor,
        actions: Actions,
        cache: KVCache | None = None,
        write_cache: bool = False,
        prev: Tensor | None = None,
        prev_level: Tensor | None = None,
        return_state: bool = False,
        members: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Network output for noisy frames ``x`` ``[B, T, h, w, C]`` at levels ``s`` ``[B, T]``.

        Residual models also take each frame's predecessor ``prev`` (like ``x``; zeros for frame
        0) at augmentation level ``prev_level`` ``[B, T]`` (zeros when None), and return the
        clean-frame estimate ``prev + network output``. Otherwise the raw output (v or x0).
        ``return_state``: also the last block's tokens ``[B, T, N, D]`` (``DynamicsTransformer.forward``).
        ``members``: each ensemble member's output ``[K, B, T, h, w, C]`` (``model.ensemble``), else
        their mean.
        """
        cond = self.noise_embed(s)
        if not self.cfg.residual:
            return self.backbone(x, actions, cond, cache, write_cache, return_state, members)
        if prev is None:
            raise ValueError("a residual dynamics model needs each frame's predecessor: pass prev=")
        level = torch.zeros_like(s) if prev_level is None else prev_level
        assert self.context_noise_embed is not None
        cond = cond + self.context_noise_embed(level)
        xp = torch.cat([x, prev], dim=-1)
        out = self.backbone(xp, actions, cond, cache, write_cache, return_state, members)
        if return_state:
            return prev + out[0], out[1]
        return prev + out

    def _x0_eps(self, x: Tensor, s: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Clean and noise estimates from the network output; ``s`` broadcastable to ``x``."""
        if self.cfg.prediction == "v":
            return x - s * out, x + (1 - s) * out
        return out, (x - (1 - s) * out) / s.clamp_min(1e-4)

    @staticmethod
    def predecessors(frames: Tensor, first: Tensor | None = None) -> Tensor:
        """Each frame's predecessor: ``[B, T, h, w, C]`` -> the same shifted by one frame, with
        ``first`` (the frame before, ``[B, 1, h, w, C]``) or zeros in front."""
        head = torch.zeros_like(frames[:, :1]) if first is None else first
        return torch.cat([head, frames[:, :-1]], dim=1)

    def noise_levels(self, u: Tensor) -> Tensor:
        """Map uniform ``u`` in ``[0, 1]`` through the schedule shift (more time at high noise if > 1)."""
        k = self.cfg.schedule_shift
        return k * u / (1 + (k - 1) * u)

    # -- training ----------------------------------------------------------------------------
    def loss(
        self,
        latents: Tensor,
        actions: Actions = None,
        rewards: Tensor | None = None,
        continues: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Diffusion-forcing loss for latents ``[B, C, T, h, w]`` and actions ``[B, T]`` / ``[B, T, A]``.

        Returns ``loss`` (MSE of the prediction target) and ``x0_mse`` (error of the implied clean
        latents, comparable between ``v`` and ``x0`` prediction). With outcome heads, their losses
        too, on the states of this same pass (``add_outcome_losses``; targets ``[B, T]``). With an
        ensemble (``model.ensemble = K > 1``) the loss is the mean of the K members' losses, each
        clip weighted per member (``member_weights``), ``x0_mse`` the members' mean error, and
        ``ensemble_disagreement`` the variance over members of the clean estimate (latent units²).
        """
        cfg = self.cfg
        self.check_input(latents, "latents")
        self.check_values(latents, actions, "latents")
        x0 = latents.permute(0, 2, 3, 4, 1)  # [B, T, h, w, C]
        b, t = x0.shape[:2]
        s = self.noise_levels(torch.rand(b, t, device=x0.device))
        sb = s[:, :, None, None, None].to(x0.dtype)
        eps = torch.randn_like(x0)
        xs = (1 - sb) * x0 + sb * eps
        actions = self.drop_actions(actions)
        weights = self.member_weights(b, x0.device)  # [K, B, 1]; None with one head
        members = weights is not None
        if not cfg.residual:
            out, state = self.predict(xs, s, actions, return_state=True, members=members)
            target = eps - x0 if cfg.prediction == "v" else x0
            x0_hat, _ = self._x0_eps(xs, sb, out)
            if weights is None:
                losses = {
                    "loss": F.mse_loss(out.float(), target.float()),
                    "x0_mse": F.mse_loss(x0_hat.float().detach(), x0.float()),
                }
            else:
                sq = (out.float() - target.float()) ** 2
                losses = {
                    "loss": _per_member(sq, weights).mean(),
                    "x0_mse": ((x0_hat.float().detach() - x0.float()) ** 2).mean(),
                    "ensemble_disagreement": _spread(x0_hat.detach()).mean(),
                }
            return self.add_outcome_losses(losses, state, rewards, continues)
        if t < 2:
            raise ValueError(
                "a residual dynamics model trains on clips of >= 2 latent frames (model.max_frames)"
            )
        level = torch.rand(b, t, device=x0.device) * cfg.context_noise
        prev = self.predecessors(x0)
        if cfg.self_forcing > 0:
            prev = self.own_predecessors(x0, prev, actions, cfg.self_forcing)
        prev = prev + level[:, :, None, None, None].to(x0.dtype) * torch.randn_like(prev)
        x0_hat, state = self.predict(
            xs, s, actions, prev=prev, prev_level=level, return_state=True, members=members
        )
        # Frame 0 has no predecessor: it is context, not a target. (x0_hat is [K, B, T, ...] with members.)
        x0_hat = x0_hat[..., 1:, :, :, :]
        err = (x0_hat.float() - x0[:, 1:].float()) ** 2
        copy = (x0[:, :-1].float() - x0[:, 1:].float()) ** 2
        x0_mse = err.detach().mean()
        if weights is not None:
            # Each member's clips are clips of one batch K times as long, weighted by its draws.
            err = _per_member(err, weights)
            copy = copy.expand(weights.shape[0], *copy.shape).flatten(0, 1)
        if cfg.relative_loss:
            loss = relative_to_copy_last(err, copy, cfg.relative_floor)
        else:
            loss = err.mean()
        losses = {
            "loss": loss,
            "x0_mse": x0_mse,
            "copy_last_mse": copy.mean(),  # what copying the previous frame would score
        }
        if weights is not None:
            losses["ensemble_disagreement"] = _spread(x0_hat.detach()).mean()
        return self.add_outcome_losses(losses, state, rewards, continues)

    @torch.no_grad()
    def own_predecessors(self, x0: Tensor, prev: Tensor, actions: Actions, p: float) -> Tensor:
        """For a fraction ``p`` of the clips, replace each frame's predecessor by the model's
        one-step prediction of it from the true past (what an open-loop rollout feeds back);
        ``x0``, ``prev`` ``[B, T, h, w, C]``. Frame 0 keeps its zeros, frame 1 the true frame 0."""
        b, t = x0.shape[:2]
        chosen = torch.rand(b, device=x0.device) < p
        # Not skipped when no clip of this batch is chosen: under ZeRO-3 every rank must run the same
        # modules in the same order (each forward gathers their parameters collectively), and another
        # rank's batch may have chosen clips. Only what is the same everywhere may skip it.
        if p <= 0 or t < 3:
            return prev
        noise = torch.randn_like(x0)
        pred = self.predict(noise, torch.ones(b, t, device=x0.device), actions, prev=prev)
        own = torch.cat([prev[:, :2], pred[:, 1:-1]], dim=1)  # frame t's predecessor: pred of t-1
        return torch.where(chosen[:, None, None, None, None], own.to(prev.dtype), prev)

    def drop_actions(self, actions: Actions) -> Actions:
        """Training only: each clip's actions (real and latent) become "no action" with probability
        ``action_dropout``."""
        p = self.cfg.action_dropout
        acts = FrameActions.of(actions)
        if acts is None or not self.training or p <= 0:
            return actions
        present = acts.real if acts.real is not None else acts.latent
        assert present is not None
        keep = torch.rand(present.shape[0], device=present.device) >= p

        def drop(a: Tensor | None, none: int) -> Tensor | None:
            if a is None:
                return None
            k = keep.view(-1, *([1] * (a.dim() - 1)))
            if a.is_floating_point():
                return a * k.to(a.dtype)
            return torch.where(k, a, torch.full_like(a, none))

        real = drop(acts.real, self.cfg.num_actions)
        if not isinstance(actions, FrameActions):
            return real
        return FrameActions(real, drop(acts.latent, self.cfg.latent_actions))

    # -- sampling (the loop is DynamicsHead.rollout) ------------------------------------------
    def to_frames(self, x: Tensor) -> Tensor:
        """``[B, C, T, h, w]`` -> ``[B, T, h, w, C]``."""
        return x.permute(0, 2, 3, 4, 1)

    def from_frames(self, frames: Tensor) -> Tensor:
        """``[B, T, h, w, C]`` -> ``[B, C, T, h, w]``."""
        return frames.permute(0, 4, 1, 2, 3)

    def sampling_options(self, steps: int | None = None, sampler: str | None = None) -> dict[str, Any]:
        """``steps`` (default ``sampling_steps``) and ``sampler``: ``euler`` or ``heun`` (default
        ``cfg.sampler``)."""
        sampler = sampler or self.cfg.sampler
        if sampler not in ("euler", "heun"):
            raise ValueError(f"sampler={sampler!r}; choose euler or heun")
        return {"steps": steps or self.cfg.sampling_steps, "sampler": sampler}

    def frame_state(self, frames: Tensor, actions: Actions) -> Tensor:
        b, t = frames.shape[:2]
        prev = self.predecessors(frames) if self.cfg.residual else None
        zero = torch.zeros(b, t, device=frames.device)
        return self.predict(frames, zero, actions, prev=prev, return_state=True)[1]

    def write_cache(self, frames: Tensor, before: Tensor | None, actions: Actions, cache: KVCache) -> None:
        b, t = frames.shape[:2]
        prev = self.predecessors(frames, before) if self.cfg.residual else None
        self.predict(frames, torch.zeros(b, t, device=frames.device), actions, cache, True, prev=prev)

    def sample_frame(
        self,
        frames: Tensor,
        t: int,
        actions: Actions,
        cache: KVCache | None,
        generator: torch.Generator | None,
        steps: int = 1,
        sampler: str = "euler",
    ) -> tuple[Tensor, Tensor]:
        """Denoise frame ``t`` from pure noise (``s = 1``) to clean in ``steps`` steps; the members'
        disagreement ``[B]`` is that of their clean estimates at the last step (``_velocity``)."""
        b, _, h, w, c = frames.shape
        levels = self.noise_levels(torch.linspace(1, 0, steps + 1, device=frames.device))
        x = torch.randn(b, 1, h, w, c, generator=generator, device=frames.device).to(frames.dtype)
        spread = torch.zeros(b, device=frames.device)
        for j in range(steps):
            s, s_next = float(levels[j]), float(levels[j + 1])
            v, spread = self._velocity(x, s, t, frames, actions, cache)
            x_euler = x + (s_next - s) * v
            if sampler == "heun" and s_next > 0:
                v_next, _ = self._velocity(x_euler, s_next, t, frames, actions, cache)
                x = x + (s_next - s) * 0.5 * (v + v_next)
            else:
                x = x_euler
        return x, spread

    def _velocity(
        self, x: Tensor, s: float, t: int, past: Tensor, actions: Actions, cache: KVCache | None
    ) -> tuple[Tensor, Tensor]:
        """Flow velocity ``eps - x0`` for frame ``t`` ``x`` ``[B, 1, h, w, C]`` at level ``s``, and the
        ensemble members' disagreement on ``x0`` ``[B]`` float32 (their variance, averaged over
        positions and channels; zeros with one head). With an ensemble the velocity is that of the
        members' mean ``x0`` (and ``eps``).

        With a cache the past comes from it; without, the clean ``past`` ``[B, t, h, w, C]`` is rerun.
        """
        b = x.shape[0]
        residual, members = self.cfg.residual, self.cfg.ensemble > 1
        sl = torch.full((b, 1), s, device=x.device)
        if cache is not None:
            prev = past[:, -1:] if residual else None
            out = self.predict(x, sl, frame_slice(actions, t, t + 1), cache, prev=prev, members=members)
        else:
            start = max(0, t - max(1, self.cfg.max_frames - 1))  # the window training showed
            seq = torch.cat([past[:, start:], x], dim=1)
            lv = torch.cat([torch.zeros(b, t - start, device=x.device), sl], dim=1)
            first = past[:, start - 1 : start] if start > 0 else None
            prev = self.predecessors(seq, first) if residual else None
            out = self.predict(seq, lv, frame_slice(actions, start, t + 1), prev=prev, members=members)
            out = out[..., -1:, :, :, :]
        x0, eps = self._x0_eps(x, torch.tensor(s, device=x.device, dtype=x.dtype), out)
        if not members:
            return eps - x0, torch.zeros(b, device=x.device)
        spread = _spread(x0).flatten(1).mean(1)
        return eps.mean(0) - x0.mean(0), spread


def _per_member(err: Tensor, weights: Tensor) -> Tensor:
    """Squared errors ``[K, B, ...]`` of K ensemble members, each clip scaled by its member's weight
    (``weights`` ``[K, B, 1]``) -> ``[K * B, ...]``: the K members' clips as one batch, so that any
    per-clip reduction of the one-head loss is the mean of the members' losses."""
    k, b = weights.shape[:2]
    return (err * weights.view(k, b, *([1] * (err.dim() - 2))).to(err.dtype)).flatten(0, 1)


def _spread(members: Tensor) -> Tensor:
    """The variance over ensemble members (dim 0) of estimates ``[K, B, ...]`` -> ``[B, ...]`` float32."""
    return members.float().var(0, unbiased=False)
