"""A latent action model (LAM, after Genie): one small discrete action per frame transition, learned
from unlabelled latent video.

Latents ``[B, C, T, h, w]`` (continuous, already times ``latent_scale``). For each transition
``t = 1 .. T-1`` the *past* is the ``context`` frames ``t - context .. t - 1`` (frames before 0 are
frame 0 repeated):

- ``LAMEncoder`` sees the past, the next frame ``t`` and the change ``next - last``, runs a small
  conv net, pools over the grid (mean and max) and projects to ``len(levels)`` numbers, which FSQ
  (``tokenizer.bottleneck.FSQuantizer``) rounds to one of ``prod(levels)`` codes.
- ``LAMDecoder`` sees only the past and the quantised code (an MLP of it modulates every block,
  FiLM) and predicts the next frame as ``last + residual``. The loss is the MSE of that prediction.

The code is a handful of bits pooled over the whole grid: it cannot carry the next frame, only the
little that changed and the past does not predict (where the player moved; not where the ball went,
which the past frames already tell the decoder). That is the action.

``infer`` gives the codes ``[B, T]`` with ``num_codes`` ("no latent action") at frame 0, the
convention of the dynamics model's action inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.head import relative_to_copy_last
from tokenizer.bottleneck import FSQuantizer


@dataclass
class LAMConfig:
    """The ``model:`` section of ``task: lam`` (``jobs/lam.yaml``).

    The latent geometry keys are the ones the chain fills from the tokenizer's latents
    (``tokenizer.tokenize.latent_geometry``); ``head`` and ``codebook_size`` are accepted for that
    reason only: the LAM reads continuous latents (``head: diffusion``) and refuses FSQ indices.
    """

    head: str = "diffusion"  # must be "diffusion": continuous latents [T', C, h, w]
    latent_channels: int = 4
    codebook_size: int = 0  # unused (FSQ-index latents are refused)
    latent_height: int = 8
    latent_width: int = 8
    temporal_compression: int = 1  # source frames per latent frame (labels in evaluation only)
    latent_scale: float = 1.0  # brings the latents to about unit variance
    max_frames: int = 8  # latent frames per training clip (longer clips: a random window)

    levels: list[int] = field(default_factory=lambda: [2, 2, 2])  # FSQ levels; prod = num_codes
    context: int = 2  # past frames the encoder and decoder see
    channels: int = 32  # conv width of encoder and decoder
    depth: int = 2  # residual blocks in each of encoder and decoder
    groups: int = 8  # GroupNorm groups (must divide channels)
    # The encoder sees the change next - last scaled to unit RMS per transition: an Atari paddle's
    # move is ~1/20 of a natural clip's change in latent units and would otherwise vanish beside the
    # frames' content (without it the codes of Atari clips collapse to one per game).
    normalize_change: bool = True
    # Each clip's next-frame MSE is divided by its copy-last MSE (+ relative_floor, latent units of
    # ~unit variance): clips with small changes (Atari) weigh as much as busy ones (camera motion);
    # false: the plain MSE over all transitions.
    relative_loss: bool = True
    relative_floor: float = 1.0e-4

    def __post_init__(self) -> None:
        if self.head != "diffusion":
            raise ValueError(
                f"LAMConfig.head={self.head!r}: the latent action model needs continuous latents "
                "(KEY.latents.npy, head: diffusion); FSQ-index latents (head: maskgit) are not supported. "
                "Tokenize with a continuous tokenizer for the LAM"
            )
        positive = (
            "latent_channels",
            "latent_height",
            "latent_width",
            "temporal_compression",
            "context",
            "channels",
            "depth",
            "groups",
        )
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"LAMConfig.{name}={getattr(self, name)} must be >= 1")
        if self.max_frames < 2:
            raise ValueError(
                f"LAMConfig.max_frames={self.max_frames}: a transition needs 2 latent frames; use >= 2"
            )
        if not self.levels or any(int(v) < 2 for v in self.levels):
            raise ValueError(
                f"LAMConfig.levels={list(self.levels)}: FSQ levels must be integers >= 2, "
                "e.g. [8] or [2, 2, 2]"
            )
        if self.channels % self.groups:
            raise ValueError(f"LAMConfig.channels={self.channels} must be divisible by groups={self.groups}")
        if not self.latent_scale > 0 or not self.relative_floor > 0:
            raise ValueError(
                f"LAMConfig.latent_scale={self.latent_scale} and relative_floor={self.relative_floor} "
                "must both be > 0"
            )

    @property
    def num_codes(self) -> int:
        return math.prod(int(v) for v in self.levels)


class ResBlock(nn.Module):
    """``x + conv(silu(film(norm(conv(silu(norm(x)))))))`` on ``[N, ch, h, w]``; ``film`` is an optional
    per-sample ``(scale, shift)`` ``[N, ch]`` pair applied after the second norm."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor, film: tuple[Tensor, Tensor] | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if film is not None:
            scale, shift = film
            h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        return x + self.conv2(F.silu(h))


class LAMEncoder(nn.Module):
    """(past ``[N, context*C, h, w]``, next ``[N, C, h, w]``) -> pre-quantisation code ``[N, L]``."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        c, ch = cfg.latent_channels, cfg.channels
        self.normalize_change = cfg.normalize_change
        self.conv_in = nn.Conv2d((cfg.context + 2) * c, ch, 3, padding=1)
        self.blocks = nn.ModuleList(ResBlock(ch, cfg.groups) for _ in range(cfg.depth))
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.proj = nn.Sequential(nn.Linear(2 * ch, ch), nn.SiLU(), nn.Linear(ch, len(cfg.levels)))

    def forward(self, past: Tensor, nxt: Tensor) -> Tensor:
        change = nxt - past[:, -nxt.shape[1] :]
        if self.normalize_change:
            change = change * torch.rsqrt(change.pow(2).mean(dim=(1, 2, 3), keepdim=True) + 1e-6)
        h = self.conv_in(torch.cat([past, nxt, change], dim=1))
        for block in self.blocks:
            h = block(h)
        h = F.silu(self.norm_out(h))
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.proj(pooled)


class LAMDecoder(nn.Module):
    """(past ``[N, context*C, h, w]``, code ``[N, L]`` in [-1, 1]) -> next frame ``[N, C, h, w]``
    as the last past frame plus a predicted residual."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        c, ch = cfg.latent_channels, cfg.channels
        self.conv_in = nn.Conv2d(cfg.context * c, ch, 3, padding=1)
        self.action_mlp = nn.Sequential(nn.Linear(len(cfg.levels), ch), nn.SiLU())
        self.blocks = nn.ModuleList(ResBlock(ch, cfg.groups) for _ in range(cfg.depth))
        self.films = nn.ModuleList(nn.Linear(ch, 2 * ch) for _ in range(cfg.depth))
        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = nn.Conv2d(ch, c, 3, padding=1)

    def forward(self, past: Tensor, code: Tensor) -> Tensor:
        c = self.conv_out.out_channels
        a = self.action_mlp(code)
        h = self.conv_in(past)
        for block, film in zip(self.blocks, self.films, strict=True):
            h = block(h, film(a).chunk(2, dim=1))
        return past[:, -c:] + self.conv_out(F.silu(self.norm_out(h)))


class LatentActionModel(nn.Module):
    """Encoder, FSQ and decoder; see the module docstring. Build on meta, then ``init_weights()``."""

    def __init__(self, cfg: LAMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = LAMEncoder(cfg)
        self.quantizer = FSQuantizer(cfg.levels)
        self.decoder = LAMDecoder(cfg)

    @property
    def num_codes(self) -> int:
        """K: codes ``0 .. K-1``; ``K`` itself means "no latent action" (frame 0)."""
        return self.cfg.num_codes

    @torch.no_grad()
    def init_weights(self) -> None:
        """Set every parameter and buffer in place from the global RNG (after ``to_empty``)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.GroupNorm)):
                m.reset_parameters()
        # The decoder starts by copying the last frame: training spends itself on what changes.
        nn.init.zeros_(self.decoder.conv_out.weight)
        nn.init.zeros_(self.decoder.conv_out.bias)
        self.quantizer.reset_buffers()

    # -- pieces -------------------------------------------------------------------------------
    def transitions(self, latents: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, C, T, h, w]`` -> (past ``[B*(T-1), context*C, h, w]``, next ``[B*(T-1), C, h, w]``),
        transitions ``1 .. T-1`` of each clip in order; frames before 0 are frame 0 repeated."""
        b, c, t, h, w = latents.shape
        k = self.cfg.context
        steps = torch.arange(1, t, device=latents.device)
        idx = (steps[:, None] - k + torch.arange(k, device=latents.device)[None]).clamp(min=0)  # [T-1, k]
        frames = latents.transpose(1, 2)  # [B, T, C, h, w]
        past = frames[:, idx].reshape(b * (t - 1), k * c, h, w)
        nxt = frames[:, 1:].reshape(b * (t - 1), c, h, w)
        return past, nxt

    def check_latents(self, latents: Tensor) -> None:
        cfg = self.cfg
        if latents.dim() != 5 or not latents.is_floating_point():
            raise ValueError(
                f"the latent action model takes continuous latents float [B, C, T, h, w], got "
                f"{tuple(latents.shape)} {latents.dtype}; FSQ indices (head: maskgit) are not supported: "
                "the LAM needs continuous latents"
            )
        want = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        got = (latents.shape[1], latents.shape[3], latents.shape[4])
        if got != want:
            raise ValueError(
                f"latents have (C, h, w)={got} but the LAM was built for {want} (model.latent_channels, "
                "latent_height, latent_width): set them from the tokenizer's latents"
            )

    def encode(self, past: Tensor, nxt: Tensor) -> tuple[Tensor, Tensor]:
        """(past, next) of ``N`` transitions -> (codes ``[N, L]`` on the FSQ grid, straight-through;
        indices ``[N]`` long in ``0 .. K-1``)."""
        z = self.encoder(past, nxt)
        codes = self.quantizer.quantize(z[:, :, None, None, None])
        return codes[:, :, 0, 0, 0], self.quantizer.codes_to_indices(codes).reshape(-1)

    def code_vectors(self, indices: Tensor) -> Tensor:
        """Indices ``[N]`` in ``0 .. K-1`` -> codes ``[N, L]`` (to drive the decoder with a chosen action)."""
        return self.quantizer.indices_to_codes(indices.reshape(-1, 1, 1, 1))[:, :, 0, 0, 0]

    # -- training and inference ----------------------------------------------------------------
    def forward(self, latents: Tensor) -> dict[str, Tensor]:
        """Latents ``[B, C, T, h, w]`` (T >= 2) -> ``loss`` (next-frame MSE over all transitions, per
        clip relative to copying the last frame with ``relative_loss``), ``recon_mse`` (the plain
        MSE, detached), ``copy_last_mse`` (predicting the last frame),
        ``code_perplexity`` (exp entropy of this batch's code histogram) and ``codes_used`` (share
        of the K codes that occur in the batch)."""
        self.check_latents(latents)
        if latents.shape[2] < 2:
            raise ValueError(f"the LAM needs clips of >= 2 latent frames, got {latents.shape[2]}")
        b = latents.shape[0]
        past, nxt = self.transitions(latents)
        codes, indices = self.encode(past, nxt)
        pred = self.decoder(past, codes)
        c = nxt.shape[1]
        err = (pred.float() - nxt.float()).pow(2).reshape(b, -1).mean(1)  # per clip
        copy = (past[:, -c:].float() - nxt.float()).pow(2).reshape(b, -1).mean(1).detach()
        if self.cfg.relative_loss:
            loss = relative_to_copy_last(err, copy, self.cfg.relative_floor)
        else:
            loss = err.mean()
        usage = (indices[:, None] == torch.arange(self.num_codes, device=indices.device)).float().mean(0)
        entropy = -(usage * torch.log(usage.clamp_min(1e-12))).sum()
        return {
            "loss": loss,
            "recon_mse": err.mean().detach(),
            "copy_last_mse": copy.mean(),
            "code_perplexity": entropy.exp().detach(),
            "codes_used": (usage > 0).float().mean().detach(),
        }

    @torch.no_grad()
    def infer(self, latents: Tensor) -> Tensor:
        """Latents float ``[B, C, T, h, w]`` (times ``latent_scale``) -> codes long ``[B, T]``: the
        transition code (``0 .. K-1``) that led to frame ``t`` for ``t >= 1``, and ``K`` ("no latent
        action") at frame 0."""
        self.check_latents(latents)
        b, t = latents.shape[0], latents.shape[2]
        out = torch.full((b, t), self.num_codes, dtype=torch.long, device=latents.device)
        if t > 1:
            past, nxt = self.transitions(latents)
            out[:, 1:] = self.encode(past, nxt)[1].view(b, t - 1)
        return out

    @torch.no_grad()
    def predict(self, latents: Tensor, indices: Tensor | None = None) -> Tensor:
        """The decoder's next frames ``[B, C, T-1, h, w]`` for transitions ``1 .. T-1``, under the
        inferred codes or under ``indices`` ``[B, T-1]`` (e.g. another clip's, for a control)."""
        self.check_latents(latents)
        b, c, t, h, w = latents.shape
        past, nxt = self.transitions(latents)
        codes = self.encode(past, nxt)[0] if indices is None else self.code_vectors(indices)
        return self.decoder(past, codes).view(b, t - 1, c, h, w).transpose(1, 2)


def build_lam(cfg: LAMConfig, device: torch.device | str | None = "cpu") -> LatentActionModel:
    """Build on meta, then (unless ``device`` is None) materialise on ``device`` and ``init_weights()``."""
    with torch.device("meta"):
        model = LatentActionModel(cfg)
    if device is not None:
        model.to_empty(device=device)
        model.init_weights()
    return model
