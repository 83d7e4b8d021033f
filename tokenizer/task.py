"""``TokenizerTask``: the tokenizer as seen by the shared training runtime (``runtime.train``).

``vidworld train jobs/tokenizer.yaml run_dir=runs/tok data.shards=CURATED`` trains it. The model
the runtime wraps is ``TokenizerObjective`` (tokenizer + optional discriminator, returning the
loss dict). Batches come from ``pipeline.loader`` (uint8 ``frames [B, T, H, W, 3]``); each clip is
cut to ``clip_frames`` frames starting at a random frame in training (the first frame otherwise)
and a centred ``clip_size`` window, then scaled to float ``[B, 3, T, H, W]`` in [-1, 1].

After training, ``run_dir/config.yaml`` (the ``model:`` section) and ``run_dir/model.safetensors``
(written by the runtime) are what ``tokenizer.load_tokenizer(run_dir)`` reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.loader import ClipLoader, LoaderConfig, make_loader
from pipeline.shards import clip_fps
from runtime.video import VideoClip
from tokenizer.config import TokenizerConfig
from tokenizer.losses import TokenizerObjective
from tokenizer.metrics import codebook_usage, from_uint8, psnr, ssim, to_uint8
from tokenizer.model import CausalVideoTokenizer


@dataclass
class TokenizerTaskConfig(TokenizerConfig):
    """The ``model:`` section: the tokenizer's config plus the training clip geometry.

    ``clip_frames`` must be ``1 + k * temporal_compression``; ``clip_size`` is ``[H, W]``, multiples
    of ``spatial_compression``. Clips are cropped to them (a smaller clip is an error).
    """

    clip_frames: int = 9
    clip_size: list[int] = field(default_factory=lambda: [32, 32])

    def validate(self) -> None:
        super().validate()
        t, s = self.temporal_compression, self.spatial_compression
        if self.clip_frames < 1 or (self.clip_frames - 1) % t:
            raise ValueError(
                f"model.clip_frames={self.clip_frames} must be 1 + k*{t} (temporal compression {t}), "
                f"e.g. {1 + 2 * t}"
            )
        if len(self.clip_size) != 2 or any(v < s or v % s for v in self.clip_size):
            raise ValueError(
                f"model.clip_size={list(self.clip_size)} must be [H, W], multiples of the spatial "
                f"compression {s}"
            )

    def tokenizer_config(self) -> TokenizerConfig:
        """The plain ``TokenizerConfig`` (what an export stores)."""
        names = {f.name for f in dataclasses.fields(TokenizerConfig)}
        return TokenizerConfig.from_dict({k: v for k, v in self.to_dict().items() if k in names})


class TokenizerTask:
    """The ``Task`` of the causal video tokenizer (see ``runtime.task.Task``)."""

    config_class: ClassVar[type] = TokenizerTaskConfig
    data_class: ClassVar[type] = LoaderConfig

    def __init__(self, model_cfg: TokenizerTaskConfig, train_cfg: Any) -> None:
        model_cfg.validate()
        self.cfg = model_cfg
        self.data_cfg = train_cfg.data
        self._loader: ClipLoader | None = None

    def build_model(self) -> nn.Module:
        """``TokenizerObjective``, constructed only (the runtime places it and calls ``init_weights``)."""
        return TokenizerObjective(CausalVideoTokenizer(self.cfg.tokenizer_config()), self.cfg.loss)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return model.tokenizer.blocks()

    # -- data --------------------------------------------------------------------------------
    def prepare(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``[B, T, H, W, 3]`` -> float ``[B, 3, clip_frames, H', W']`` in [-1, 1] (cropped).

        With ``generator`` the window starts at a random frame of each batch (short training
        crops then see every part of a clip, not only its opening frames); else at frame 0.
        """
        if not isinstance(frames, torch.Tensor) or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(
                "the tokenizer trains on video clips: batches need 'frames' uint8 [B, T, H, W, 3] "
                "(point data.shards at curated clip shards, not latent shards)"
            )
        n = self.cfg.clip_frames
        h, w = self.cfg.clip_size
        _, t, fh, fw, _ = frames.shape
        if t < n or fh < h or fw < w:
            raise ValueError(
                f"clips are {t} frames of {fh}x{fw} but model.clip_frames={n} and model.clip_size="
                f"[{h}, {w}]; lower those, or set data.num_frames to skip shorter clips"
            )
        top, left = (fh - h) // 2, (fw - w) // 2
        start = 0 if generator is None else int(torch.randint(0, t - n + 1, (1,), generator=generator))
        return from_uint8(frames[:, start : start + n, top : top + h, left : left + w])

    def example_batch(self, batch_size: int) -> dict[str, Any]:
        """A random micro-batch as ``batches`` yields it: ``{"video": float [B, 3, clip_frames, H, W]
        in [-1, 1], "fps": None}`` (``runtime.task.Task``; for the memory plan)."""
        h, w = self.cfg.clip_size
        return {"video": torch.rand(batch_size, 3, self.cfg.clip_frames, h, w) * 2 - 1, "fps": None}

    def batches(self, rank: int, world_size: int, seed: int, state: dict | None) -> Iterator[Any]:
        self._loader = make_loader(self.data_cfg, rank, world_size, seed, state)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + rank)
        while True:
            for batch in self._loader:
                fps = clip_fps((batch.get("meta") or [{}])[0])  # the first clip's rate, for eval videos
                yield {"video": self.prepare(batch["frames"], generator), "fps": fps}

    def loader_state(self) -> dict:
        return self._loader.state_dict() if self._loader is not None else {}

    # -- training ----------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor | float]:
        """The objective's loss dict, plus, when training from the loader, ``data_corrupt_skipped``
        and ``data_short_skipped``: clips skipped so far as undecodable or shorter than
        ``data.num_frames``, over all ranks."""
        p = next(iter(model.parameters()))
        out: dict[str, torch.Tensor | float] = dict(model(batch["video"].to(device=p.device, dtype=p.dtype)))
        if self._loader is not None:
            out.update(self._loader.skip_metrics())
        return out

    def flops_per_sample(self) -> float:
        """Forward + backward FLOPs of encoder + decoder on one training clip
        (``training_flops_per_video``; discriminator and perceptual network not counted)."""
        h, w = self.cfg.clip_size
        with torch.device("meta"):
            shadow = CausalVideoTokenizer(self.cfg.tokenizer_config())
        return shadow.training_flops_per_video(self.cfg.clip_frames, h, w)

    def tokens_per_sample(self) -> int:
        """Latent positions per clip (``T' * h * w``)."""
        h, w = self.cfg.clip_size
        t, s = self.cfg.temporal_compression, self.cfg.spatial_compression
        return (1 + (self.cfg.clip_frames - 1) // t) * (h // s) * (w // s)

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """Protocol PSNR/SSIM (uint8, per frame, mean) of decode(encode(clip)) over the batch, FSQ
        code usage, and ``eval/reconstruction``: the first clip, original | reconstruction side by
        side, uint8 ``[T, H, 2W, 3]``, a ``VideoClip`` at the clip's fps when the batch has it."""
        tok: CausalVideoTokenizer = model.tokenizer
        p = next(iter(tok.parameters()))
        video = batch["video"].to(device=p.device, dtype=p.dtype)
        z = tok.encode(video)
        recon = tok.decode(z)
        orig8, recon8 = to_uint8(video.float()).cpu(), to_uint8(recon.float()).cpu()
        out: dict[str, Any] = {
            "eval/recon_psnr": psnr(orig8, recon8),
            "eval/recon_ssim": ssim(orig8, recon8),
        }
        side_by_side = torch.cat([orig8[0], recon8[0]], dim=2).numpy()
        fps = batch.get("fps")
        out["eval/reconstruction"] = side_by_side if fps is None else VideoClip(side_by_side, fps)
        if tok.is_discrete:
            usage = codebook_usage(tok.codes_to_indices(z).cpu(), tok.codebook_size or 1)
            out["eval/codebook_usage"] = usage["usage"]
            out["eval/codebook_perplexity"] = usage["perplexity"]
        return out
