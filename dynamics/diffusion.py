"""Diffusion-forcing dynamics over continuous latents.

Noise schedule: flow matching / rectified flow, ``x_s = (1 - s) x0 + s eps`` with noise level
``s`` in ``[0, 1]`` (0 clean, 1 pure noise). In training every frame gets its *own* noise level
(Diffusion Forcing), so the model learns to denoise a frame given a past of any cleanliness;
at sampling the context is clean (``s = 0``) and each new frame is denoised from ``s = 1`` in
``sampling_steps`` steps while its past is read from the KV cache.

Prediction target: ``v = eps - x0`` (``prediction="v"``) or ``x0``. Samplers: ``euler``
(deterministic; on this schedule it is the same update as DDIM) and ``heun`` (2nd order,
two network calls per step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from dynamics.transformer import DynamicsTransformer, KVCache, check_rollout_actions, frame_slice


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


class DiffusionDynamics(nn.Module):
    """Next-frame diffusion over latents ``[B, C, T, h, w]`` conditioned on per-frame actions."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = DynamicsTransformer(cfg, cfg.latent_channels, cfg.latent_channels)
        self.noise_embed = NoiseLevelEmbedding(cfg.dim)

    @property
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, for per-block activation checkpointing by the runtime."""
        return self.backbone.blocks

    def forward(self, latents: Tensor, actions: Tensor | None = None) -> dict[str, Tensor]:
        """The training loss (see ``loss``): a wrapped model (DeepSpeed) is called like this."""
        return self.loss(latents, actions)

    @torch.no_grad()
    def init_weights(self) -> None:
        self.backbone.init_weights()
        for m in self.noise_embed.mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def flops_per_sample(self, frames: int | None = None) -> float:
        """Training FLOPs per clip (see ``DynamicsTransformer.flops_per_sample``)."""
        return self.backbone.flops_per_sample(frames or self.cfg.max_frames)

    # -- the network in latent layout --------------------------------------------------------
    def _check(self, latents: Tensor, name: str) -> None:
        cfg = self.cfg
        if latents.dim() != 5 or latents.shape[1] != cfg.latent_channels or not latents.is_floating_point():
            raise ValueError(
                f"{name} must be float [B, C={cfg.latent_channels}, T, h, w] latents, got "
                f"{tuple(latents.shape)} {latents.dtype}; set latent_channels to the tokenizer's"
            )

    def predict(
        self,
        x: Tensor,
        s: Tensor,
        actions: Tensor | None,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> Tensor:
        """Raw network output for noisy frames ``x`` ``[B, T, h, w, C]`` at levels ``s`` ``[B, T]``."""
        return self.backbone(x, actions, self.noise_embed(s), cache, write_cache)

    def _x0_eps(self, x: Tensor, s: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
        """Clean and noise estimates from the network output; ``s`` broadcastable to ``x``."""
        if self.cfg.prediction == "v":
            return x - s * out, x + (1 - s) * out
        return out, (x - (1 - s) * out) / s.clamp_min(1e-4)

    def noise_levels(self, u: Tensor) -> Tensor:
        """Map uniform ``u`` in ``[0, 1]`` through the schedule shift (more time at high noise if > 1)."""
        k = self.cfg.schedule_shift
        return k * u / (1 + (k - 1) * u)

    # -- training ----------------------------------------------------------------------------
    def loss(self, latents: Tensor, actions: Tensor | None = None) -> dict[str, Tensor]:
        """Diffusion-forcing loss for latents ``[B, C, T, h, w]`` and actions ``[B, T]`` / ``[B, T, A]``.

        Returns ``loss`` (MSE of the prediction target) and ``x0_mse`` (error of the implied clean
        latents, comparable between ``v`` and ``x0`` prediction).
        """
        self._check(latents, "latents")
        x0 = latents.permute(0, 2, 3, 4, 1)  # [B, T, h, w, C]
        b, t = x0.shape[:2]
        s = self.noise_levels(torch.rand(b, t, device=x0.device))
        sb = s[:, :, None, None, None].to(x0.dtype)
        eps = torch.randn_like(x0)
        xs = (1 - sb) * x0 + sb * eps
        out = self.predict(xs, s, actions)
        target = eps - x0 if self.cfg.prediction == "v" else x0
        x0_hat, _ = self._x0_eps(xs, sb, out)
        return {
            "loss": F.mse_loss(out.float(), target.float()),
            "x0_mse": F.mse_loss(x0_hat.float().detach(), x0.float()),
        }

    # -- sampling ----------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(
        self,
        context: Tensor,
        actions: Tensor | None,
        horizon: int,
        steps: int | None = None,
        sampler: str | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Generate ``horizon`` frames after ``context`` ``[B, C, Tc, h, w]`` -> ``[B, C, horizon, h, w]``.

        ``actions`` cover context and horizon: ``[B, Tc + horizon]`` (or ``[..., A]``). Noise
        comes from ``generator``; the sampler is deterministic given it. ``use_cache=False``
        reruns the whole past at every step (same result, for testing and comparison).
        """
        self._check(context, "context")
        cfg = self.cfg
        steps = steps or cfg.sampling_steps
        sampler = sampler or cfg.sampler
        if sampler not in ("euler", "heun"):
            raise ValueError(f"sampler={sampler!r}; choose euler or heun")
        b, _, tc, h, w = context.shape
        check_rollout_actions(actions, b, tc + horizon)
        frames = context.permute(0, 2, 3, 4, 1)  # [B, Tc, h, w, C]
        levels = self.noise_levels(torch.linspace(1, 0, steps + 1, device=context.device))
        cache = KVCache() if use_cache else None
        if cache is not None:
            self.predict(
                frames, torch.zeros(b, tc, device=frames.device), frame_slice(actions, 0, tc), cache, True
            )
        for i in range(horizon):
            t = tc + i
            x = torch.randn(b, 1, h, w, cfg.latent_channels, generator=generator, device=frames.device)
            x = x.to(frames.dtype)

            for j in range(steps):
                s, s_next = float(levels[j]), float(levels[j + 1])
                v = self._velocity(x, s, t, frames, actions, cache)
                x_euler = x + (s_next - s) * v
                if sampler == "heun" and s_next > 0:
                    v_next = self._velocity(x_euler, s_next, t, frames, actions, cache)
                    x = x + (s_next - s) * 0.5 * (v + v_next)
                else:
                    x = x_euler
            frames = torch.cat([frames, x], dim=1)
            if cache is not None and i + 1 < horizon:
                # The finished frame, clean, goes into the cache for the frames after it.
                self.predict(
                    x, torch.zeros(b, 1, device=x.device), frame_slice(actions, t, t + 1), cache, True
                )
        return frames[:, tc:].permute(0, 4, 1, 2, 3)

    def _velocity(
        self, x: Tensor, s: float, t: int, past: Tensor, actions: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        """Flow velocity ``eps - x0`` for frame ``t`` ``x`` ``[B, 1, h, w, C]`` at level ``s``.

        With a cache the past comes from it; without, the clean ``past`` ``[B, t, h, w, C]`` is rerun.
        """
        b = x.shape[0]
        sl = torch.full((b, 1), s, device=x.device)
        if cache is not None:
            out = self.predict(x, sl, frame_slice(actions, t, t + 1), cache)
        else:
            seq = torch.cat([past, x], dim=1)
            lv = torch.cat([torch.zeros(b, t, device=x.device), sl], dim=1)
            out = self.predict(seq, lv, frame_slice(actions, 0, t + 1))[:, -1:]
        x0, eps = self._x0_eps(x, torch.tensor(s, device=x.device, dtype=x.dtype), out)
        return eps - x0
