"""A joint-embedding predictive model (JEPA) of latent video: predict the next frame's *embedding*,
not its pixels or latents.

Latents ``[B, C, T, h, w]`` (continuous, already times ``latent_scale``); optional discrete actions
``[B, T]`` or ``[B, T, tau]`` long in ``0 .. num_actions`` (``num_actions``: no action), where
``actions[:, t]`` led to frame ``t`` (the dynamics model's convention, ``dynamics.task.group_actions``).

- ``FrameEncoder`` maps one latent frame ``[N, C, h, w]`` to an embedding ``[N, D]``: a patchifying
  conv (``patch_size``), residual conv blocks, and a linear map of the whole flattened grid (not a
  pooled one: *where* a thing is, a paddle or a cursor, is what an action changes).
- ``JEPAPredictor`` maps the embeddings of the ``context`` frames up to ``t - 1`` (frames before 0
  are frame 0 repeated) and the embedded action that led to frame ``t`` to a predicted embedding
  of frame ``t``.
- The target is the embedding of frame ``t`` by the *target encoder*.

Collapse. A predictor that chases an encoder's own output is happiest when the encoder maps every
frame to one constant: the loss is then 0. The guards, each configurable:

- ``target: ema`` (default): the target encoder is an exponential moving average of the online one
  (``ema_decay``), updated at the start of each training forward, and never gets a gradient
  (BYOL, I-JEPA). ``target: online``: the online encoder itself, its output detached when
  ``stop_gradient`` (a SimSiam-style guard) or not (no guard: the deliberately bad setting).
- VICReg regularisers on the online embeddings of the batch's frames: ``variance_weight`` times the
  mean hinge ``relu(variance_floor - std)`` of each dimension's standard deviation over the batch,
  and ``covariance_weight`` times the summed squared off-diagonal covariances over ``D``. They keep
  every dimension in use and the dimensions decorrelated, whatever the target does.

On the dot world (``tests/dynamics/test_jepa.py``, 200 steps, held-out frames) the per-dimension std
of the embeddings ends near 1.0 with the defaults; ~0.01 (collapsed) with ``variance_weight: 0``,
``target: online`` and ``stop_gradient: false`` (the covariance term alone does not help: a constant
has no covariance); 0.3-0.4 with stop-gradient alone; 1.2-1.4 with the variance term alone; 2-2.7
with the EMA target alone.

The EMA update runs inside ``forward`` (only in training mode with gradients on): under gradient
accumulation the target so moves once per micro-batch, not once per optimiser step, and
``task: jepa`` refuses ZeRO-3, whose partitioned parameters a forward cannot average.

``embed`` gives the online encoder's per-frame embeddings ``[B, T, D]``: what the held-out probes
read (``dynamics.jepa_eval``). The encoder never sees an action, so a probe from the embeddings of
frames ``t`` and ``t + 1`` to the action at ``t + 1`` measures what the frames show, not an input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.lam import ResBlock

TARGETS = ("ema", "online")


@dataclass
class JEPAConfig:
    """The ``model:`` section of ``task: jepa`` (``jobs/jepa.yaml``).

    The latent geometry keys are the ones the chain fills from the tokenizer's latents
    (``tokenizer.tokenize.latent_geometry``); ``head`` and ``codebook_size`` are accepted for that
    reason only: the JEPA reads continuous latents (``head: diffusion``) and refuses FSQ indices.
    """

    head: str = "diffusion"  # must be "diffusion": continuous latents [T', C, h, w]
    latent_channels: int = 4
    codebook_size: int = 0  # unused (FSQ-index latents are refused)
    latent_height: int = 8
    latent_width: int = 8
    temporal_compression: int = 1  # source frames per latent frame (groups the actions)
    latent_scale: float = 1.0  # brings the latents to about unit variance
    max_frames: int = 8  # latent frames per training clip (longer clips: a random window)
    num_actions: int = 0  # discrete actions that condition the predictor; 0: no action input

    patch_size: int = 1  # the encoder's first conv has this kernel and stride (must divide h, w)
    channels: int = 32  # conv width of the encoder
    depth: int = 2  # residual conv blocks in the encoder
    groups: int = 8  # GroupNorm groups (must divide channels)
    embed_dim: int = 64  # D: the embedding of one frame
    context: int = 2  # past frames' embeddings the predictor sees
    predictor_hidden: int = 256  # width of the predictor MLP

    target: str = "ema"  # "ema": an EMA copy of the encoder; "online": the encoder itself
    ema_decay: float = 0.99  # target <- decay * target + (1 - decay) * online, each training forward
    stop_gradient: bool = True  # target: online only: detach the target embedding
    variance_weight: float = 1.0  # VICReg variance hinge on the online embeddings (0: off)
    variance_floor: float = 1.0  # the per-dimension std the hinge asks for
    covariance_weight: float = 0.04  # VICReg off-diagonal covariance penalty (0: off)

    def __post_init__(self) -> None:
        if self.head != "diffusion":
            raise ValueError(
                f"JEPAConfig.head={self.head!r}: the JEPA needs continuous latents (KEY.latents.npy, "
                "head: diffusion); FSQ-index latents (head: maskgit) are not supported. Tokenize with "
                "a continuous tokenizer"
            )
        positive = ("latent_channels", "latent_height", "latent_width", "temporal_compression", "patch_size",
                    "channels", "depth", "groups", "embed_dim", "context", "predictor_hidden")  # fmt: skip
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"JEPAConfig.{name}={getattr(self, name)} must be >= 1")
        if self.max_frames < 2:
            raise ValueError(
                f"JEPAConfig.max_frames={self.max_frames}: a transition needs 2 frames; use >= 2"
            )
        if self.num_actions < 0:
            raise ValueError(f"JEPAConfig.num_actions={self.num_actions} must be >= 0 (0: no actions)")
        if self.latent_height % self.patch_size or self.latent_width % self.patch_size:
            raise ValueError(
                f"JEPAConfig.patch_size={self.patch_size} must divide latent_height={self.latent_height} "
                f"and latent_width={self.latent_width}; pick a patch size that divides the latent grid"
            )
        if self.channels % self.groups:
            raise ValueError(f"JEPAConfig.channels={self.channels} must be divisible by groups={self.groups}")
        if self.target not in TARGETS:
            raise ValueError(f"JEPAConfig.target={self.target!r}; choose one of {list(TARGETS)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(
                f"JEPAConfig.ema_decay={self.ema_decay} must be in [0, 1) (0.99-0.999 is usual; "
                "use target: online for no moving average)"
            )
        if self.target == "ema" and not self.stop_gradient:
            raise ValueError(
                "JEPAConfig.stop_gradient=false applies to target: online only (an EMA target never "
                "gets a gradient); set target: online, or stop_gradient: true"
            )
        for name in ("variance_weight", "covariance_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"JEPAConfig.{name}={getattr(self, name)} must be >= 0 (0: off)")
        if not self.variance_floor > 0 or not self.latent_scale > 0:
            raise ValueError(
                f"JEPAConfig.variance_floor={self.variance_floor} and latent_scale={self.latent_scale} "
                "must both be > 0"
            )


class FrameEncoder(nn.Module):
    """One latent frame ``[N, C, h, w]`` -> embedding ``[N, D]``."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        ch, p = cfg.channels, cfg.patch_size
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch, p, stride=p)
        self.blocks = nn.ModuleList(ResBlock(ch, cfg.groups) for _ in range(cfg.depth))
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        cells = (cfg.latent_height // p) * (cfg.latent_width // p)
        self.proj = nn.Linear(ch * cells, cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h)
        return self.proj(F.silu(self.norm_out(h)).flatten(1))


class JEPAPredictor(nn.Module):
    """(past embeddings ``[N, context, D]``, action groups ``[N, tau]`` long or None) -> the next
    frame's predicted embedding ``[N, D]``. Summed action embeddings (a held or a changed action both
    show), index ``num_actions`` = no action."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.action_embed = nn.Embedding(cfg.num_actions + 1, d) if cfg.num_actions > 0 else None
        self.mlp = nn.Sequential(
            nn.LayerNorm((cfg.context + 1) * d),
            nn.Linear((cfg.context + 1) * d, cfg.predictor_hidden),
            nn.SiLU(),
            nn.Linear(cfg.predictor_hidden, cfg.predictor_hidden),
            nn.SiLU(),
            nn.Linear(cfg.predictor_hidden, d),
        )

    def forward(self, past: Tensor, actions: Tensor | None) -> Tensor:
        n, _, d = past.shape
        if self.action_embed is None or actions is None:
            a = past.new_zeros(n, d)
        else:
            a = self.action_embed(actions).sum(1).to(past.dtype)
        return self.mlp(torch.cat([past.flatten(1), a], dim=1))


def variance_loss(z: Tensor, floor: float) -> tuple[Tensor, Tensor]:
    """VICReg's variance term for embeddings ``[N, D]``: (mean over dims of ``relu(floor - std)``,
    per-dimension std ``[D]``)."""
    std = torch.sqrt(z.float().var(dim=0) + 1e-4)
    return F.relu(floor - std).mean(), std


def covariance_loss(z: Tensor) -> Tensor:
    """VICReg's covariance term for ``[N, D]``: the summed squared off-diagonal covariances over ``D``."""
    n, d = z.shape
    zc = z.float() - z.float().mean(0)
    cov = zc.T @ zc / max(n - 1, 1)
    off = cov - torch.diag(torch.diagonal(cov))
    return off.pow(2).sum() / d


class JEPA(nn.Module):
    """Online encoder, predictor and (``target: ema``) target encoder; see the module docstring.
    Build on meta, then ``init_weights()``."""

    def __init__(self, cfg: JEPAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = FrameEncoder(cfg)
        self.predictor = JEPAPredictor(cfg)
        self.target_encoder = FrameEncoder(cfg) if cfg.target == "ema" else None
        if self.target_encoder is not None:
            self.target_encoder.requires_grad_(False)  # the runtime's optimiser takes trainable ones only

    @torch.no_grad()
    def init_weights(self) -> None:
        """Set every parameter in place from the global RNG (after ``to_empty``); the target starts
        as a copy of the online encoder."""
        for m in [*self.encoder.modules(), *self.predictor.modules()]:
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm, nn.Embedding)):
                m.reset_parameters()
        if self.target_encoder is not None:
            for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True):
                t.copy_(o)

    @torch.no_grad()
    def update_target(self) -> None:
        """``target <- ema_decay * target + (1 - ema_decay) * online`` (nothing for ``target: online``)."""
        if self.target_encoder is None:
            return
        w = 1.0 - self.cfg.ema_decay
        for t, o in zip(self.target_encoder.parameters(), self.encoder.parameters(), strict=True):
            t.lerp_(o.detach().to(t.dtype), w)

    # -- pieces -------------------------------------------------------------------------------
    def check_latents(self, latents: Tensor) -> None:
        cfg = self.cfg
        if latents.dim() != 5 or not latents.is_floating_point():
            raise ValueError(
                f"the JEPA takes continuous latents float [B, C, T, h, w], got {tuple(latents.shape)} "
                f"{latents.dtype}; FSQ indices (head: maskgit) are not supported"
            )
        want = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        got = (latents.shape[1], latents.shape[3], latents.shape[4])
        if got != want:
            raise ValueError(
                f"latents have (C, h, w)={got} but the JEPA was built for {want} (model.latent_channels, "
                "latent_height, latent_width): set them from the tokenizer's latents"
            )

    def _check_actions(self, actions: Tensor | None, b: int, t: int) -> Tensor | None:
        """Actions ``[B, T]`` / ``[B, T, tau]`` -> ``[B, T, tau]`` long, or None (no conditioning)."""
        if actions is None or self.cfg.num_actions == 0:
            return None
        if actions.is_floating_point() or tuple(actions.shape[:2]) != (b, t) or actions.dim() > 3:
            raise ValueError(
                f"the JEPA takes discrete actions long [B, T] or [B, T, tau] for latents of B={b}, T={t}; "
                f"got {tuple(actions.shape)} {actions.dtype}"
            )
        a = actions if actions.dim() == 3 else actions[:, :, None]
        if a.is_meta:  # the memory plan runs the loss on meta tensors: no values to check
            return a
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > self.cfg.num_actions:
            raise ValueError(
                f"actions span {lo}..{hi} but model.num_actions={self.cfg.num_actions} allows "
                f"0..{self.cfg.num_actions} ({self.cfg.num_actions} = no action): set model.num_actions "
                "to the game's action count"
            )
        return a

    def _frames(self, encoder: nn.Module, latents: Tensor) -> Tensor:
        b, c, t, h, w = latents.shape
        z = encoder(latents.transpose(1, 2).reshape(b * t, c, h, w))
        return z.view(b, t, -1)

    def past_embeddings(self, z: Tensor) -> Tensor:
        """Per-frame embeddings ``[B, T, D]`` -> the predictor's context for transitions ``1 .. T-1``
        ``[B, T-1, context, D]`` (frames ``t - context .. t - 1``; before 0: frame 0 repeated)."""
        t, k = z.shape[1], self.cfg.context
        steps = torch.arange(1, t, device=z.device)
        idx = (steps[:, None] - k + torch.arange(k, device=z.device)[None]).clamp(min=0)
        return z[:, idx]

    def predict(self, z: Tensor, actions: Tensor | None) -> Tensor:
        """Predicted embeddings of frames ``1 .. T-1`` ``[B, T-1, D]`` from per-frame embeddings
        ``[B, T, D]`` and actions ``[B, T, tau]`` (or None)."""
        b, t, d = z.shape
        past = self.past_embeddings(z).reshape(b * (t - 1), self.cfg.context, d)
        a = None if actions is None else actions[:, 1:].reshape(b * (t - 1), -1)
        return self.predictor(past, a).view(b, t - 1, d)

    # -- training and inference ----------------------------------------------------------------
    def forward(self, latents: Tensor, actions: Tensor | None = None) -> dict[str, Tensor]:
        """Latents ``[B, C, T, h, w]`` (T >= 2) and optional actions -> ``loss`` (prediction MSE plus
        the weighted guards), ``pred_loss`` (MSE of predicted against target embeddings),
        ``copy_last_loss`` (the target embedding of frame ``t - 1`` against frame ``t``'s: predicting
        no change), ``var_loss``, ``cov_loss``, and the per-dimension std of the online embeddings
        over the batch's frames: ``embed_std`` (mean) and ``embed_std_min``."""
        self.check_latents(latents)
        b, _, t = latents.shape[:3]
        if t < 2:
            raise ValueError(f"the JEPA needs clips of >= 2 latent frames, got {t}")
        acts = self._check_actions(actions, b, t)
        cfg = self.cfg
        if self.training and torch.is_grad_enabled():
            self.update_target()
        z = self._frames(self.encoder, latents)  # [B, T, D]
        if self.target_encoder is not None:
            with torch.no_grad():
                target = self._frames(self.target_encoder, latents)
        else:
            target = z.detach() if cfg.stop_gradient else z
        pred = self.predict(z, acts)
        pred_loss = (pred.float() - target[:, 1:].float()).pow(2).mean()
        flat = z.reshape(b * t, -1)
        var_loss, std = variance_loss(flat, cfg.variance_floor)
        cov_loss = covariance_loss(flat)
        loss = pred_loss
        if cfg.variance_weight > 0:
            loss = loss + cfg.variance_weight * var_loss
        if cfg.covariance_weight > 0:
            loss = loss + cfg.covariance_weight * cov_loss
        copy = (target[:, :-1].float() - target[:, 1:].float()).pow(2).mean()
        return {
            "loss": loss,
            "pred_loss": pred_loss.detach(),
            "copy_last_loss": copy.detach(),
            "var_loss": var_loss.detach(),
            "cov_loss": cov_loss.detach(),
            "embed_std": std.mean().detach(),
            "embed_std_min": std.min().detach(),
        }

    @torch.no_grad()
    def embed(self, latents: Tensor) -> Tensor:
        """Latents float ``[B, C, T, h, w]`` (times ``latent_scale``) -> the online encoder's
        per-frame embeddings ``[B, T, D]``."""
        self.check_latents(latents)
        return self._frames(self.encoder, latents)


def build_jepa(cfg: JEPAConfig, device: torch.device | str | None = "cpu") -> JEPA:
    """Build on meta, then (unless ``device`` is None) materialise on ``device`` and ``init_weights()``."""
    with torch.device("meta"):
        model = JEPA(cfg)
    if device is not None:
        model.to_empty(device=device)
        model.init_weights()
    return model
