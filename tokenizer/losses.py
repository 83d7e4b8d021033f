"""Training objective of the tokenizer: reconstruction, KL, optional perceptual and adversarial terms.

``TokenizerObjective`` is the module the runtime trains: it holds the tokenizer and, when
enabled, a ``PatchDiscriminator``, and its ``forward(video)`` returns the loss dict. Both
players are updated by one optimizer step from one scalar: the discriminator's hinge loss sees
detached reconstructions, and the generator's adversarial term is computed through a copy of the
discriminator's weights that is detached, so each term only moves its own player.

The adversarial terms start after ``disc_start_step`` forward passes in training mode (a buffer
in the module, so it is saved with checkpoints and survives resume; with gradient accumulation
it counts micro-batches). The generator's adversarial weight is adaptive (Esser et al., VQGAN
2021): ``|grad rec| / |grad adv|`` at the decoder's last layer, which needs the full last-layer
weight on each rank (ZeRO stage <= 2).

The perceptual term uses a feature network the user supplies as a ``torch.export`` program
(``.pt2``) mapping images ``[N, 3, H, W]`` in [-1, 1] to a feature tensor or a tuple of them;
the distance is the mean squared difference of channel-normalised features (as in LPIPS, without
learned channel weights). It is frozen and kept outside the trained module's parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from tokenizer.config import TokenizerLossConfig
from tokenizer.model import CausalVideoTokenizer


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean per-pixel L1 or Charbonnier (``sqrt(d^2 + 1e-6)``) distance; videos ``[B, 3, T, H, W]``."""
    d = recon - target
    if kind == "l1":
        return d.abs().mean()
    if kind == "charbonnier":
        return torch.sqrt(d * d + 1e-6).mean()
    raise ValueError(f"reconstruction loss {kind!r} unknown; use 'l1' or 'charbonnier'")


def _frames(video: torch.Tensor) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B*T, C, H, W]``."""
    b, c, t, h, w = video.shape
    return video.transpose(1, 2).reshape(b * t, c, h, w)


class PerceptualLoss:
    """Feature distance from a frozen, user-supplied network (see module docstring).

    Not an ``nn.Module`` on purpose: its weights must stay out of the trained model's parameters,
    optimizer and checkpoints.
    """

    def __init__(self, path: str | Path) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"perceptual network {str(p)!r} not found; set loss.perceptual_path to a torch.export "
                "(.pt2) file, or to '' to turn the perceptual term off (nothing is downloaded)"
            )
        self.path = p
        # Loaded at first use: the objective may be built on the meta device, this network never is.
        self.net: nn.Module | None = None
        self._device: torch.device | None = None

    def __call__(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Videos ``[B, 3, T, H, W]`` in [-1, 1] -> scalar."""
        if self.net is None:
            self.net = torch.export.load(str(self.path)).module()
            for param in self.net.parameters():
                param.requires_grad_(False)
        if self._device != recon.device:
            self.net = self.net.to(recon.device)
            self._device = recon.device
        fr, ft = self.net(_frames(recon)), self.net(_frames(target))
        fr = fr if isinstance(fr, (tuple, list)) else (fr,)
        ft = ft if isinstance(ft, (tuple, list)) else (ft,)
        total = recon.new_zeros(())
        for a, b in zip(fr, ft, strict=True):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b.detach() / (b.detach().norm(dim=1, keepdim=True) + 1e-10)
            total = total + (a - b).pow(2).sum(dim=1).mean()
        return total / len(fr)


class PatchDiscriminator(nn.Module):
    """Per-frame PatchGAN: ``[B, 3, T, H, W]`` -> logits ``[B*T, 1, h, w]`` (one per patch).

    Frames are judged one by one, so the discriminator never mixes frames (causality is a
    property of the tokenizer only, but per-frame judging also keeps it cheap).
    """

    def __init__(self, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(3, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers):
            out = channels * min(2**i, 8)
            mods += [nn.Conv2d(ch, out, 4, 2, 1), nn.GroupNorm(min(32, out), out), nn.LeakyReLU(0.2)]
            ch = out
        mods += [nn.Conv2d(ch, 1, 3, 1, 1)]
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(_frames(video))


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss: ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``, halved."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """``|d rec / d W| / |d adv / d W|`` at the last layer ``W``, clamped to [0, 1e4], detached."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, 1e4).detach()


class TokenizerObjective(nn.Module):
    """Tokenizer (+ discriminator) with its loss: ``forward(video [B, 3, T, H, W]) -> dict of scalars``.

    Keys: ``loss`` (optimised), ``rec``, ``kl`` (continuous), ``perceptual`` (if on), ``g_adv``,
    ``d_loss``, ``adv_weight`` (once the discriminator has started), ``psnr_float`` (dB on the
    [-1, 1] float pixels; the uint8 protocol PSNR is in ``tokenizer.metrics``).
    """

    def __init__(self, tokenizer: CausalVideoTokenizer, cfg: TokenizerLossConfig) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.discriminator = (
            PatchDiscriminator(cfg.disc_channels, cfg.disc_layers) if cfg.discriminator else None
        )
        self.perceptual = PerceptualLoss(cfg.perceptual_path) if cfg.perceptual_path else None
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def init_weights(self) -> None:
        self.tokenizer.init_weights()
        if self.discriminator is not None:
            for m in self.discriminator.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.GroupNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
        self.num_updates.zero_()

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        recon, _, aux = self.tokenizer(video)
        rec = reconstruction_loss(recon, video, cfg.reconstruction)
        out: dict[str, torch.Tensor] = {"rec": rec.detach()}
        loss = rec
        if "kl" in aux:
            loss = loss + cfg.kl_weight * aux["kl"]
            out["kl"] = aux["kl"].detach()
        if self.perceptual is not None:
            p = self.perceptual(recon, video)
            loss = loss + cfg.perceptual_weight * p
            out["perceptual"] = p.detach()
        adv_on = self.discriminator is not None and int(self.num_updates) >= cfg.disc_start_step
        if adv_on and self.discriminator is not None:
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            g_adv = -functional_call(self.discriminator, frozen, (recon,)).mean()
            last = self.tokenizer.last_layer_weight()
            w = adaptive_weight(loss, g_adv, last) if torch.is_grad_enabled() else 1.0
            d_loss = hinge_d_loss(self.discriminator(video), self.discriminator(recon.detach()))
            loss = loss + cfg.disc_weight * w * g_adv + d_loss
            out.update(g_adv=g_adv.detach(), d_loss=d_loss.detach(), adv_weight=torch.as_tensor(w).detach())
        if self.training:
            self.num_updates += 1
        mse = (recon.detach().clamp(-1, 1) - video).pow(2).mean()
        out["psnr_float"] = 10.0 * torch.log10(4.0 / mse.clamp(min=1e-10))
        out["loss"] = loss
        return out
