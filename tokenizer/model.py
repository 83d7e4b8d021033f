"""The causal video tokenizer: ``Encoder`` -> bottleneck -> ``Decoder``.

A clip of ``1 + k*t`` frames ``[B, 3, 1 + k*t, H, W]`` in [-1, 1] maps to ``1 + k`` latent frames
``[B, C_lat, 1 + k, H/s, W/s]``: the first frame is coded alone, so an image is a 1-frame video
and images and videos share one model (as in Cosmos Tokenizer and MAGVIT-v2). Every op is causal
in time, so latent frame ``j`` depends on input frames ``0 .. j*t`` only, and a video can be
encoded and decoded chunk by chunk (``encode(video, chunk_frames=N)``) with the same result as
whole, at flat memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.bottleneck import DiagonalGaussian, FSQuantizer
from tokenizer.config import TokenizerConfig
from tokenizer.layers import CausalConv3d, Downsample3d, FrameGroupNorm, ResBlock3d, StreamCache, Upsample3d


def _stage_plan(cfg: TokenizerConfig) -> list[tuple[int, bool, bool]]:
    """One ``(channels, halves_space, halves_time)`` per down/up-sampling stage, encoder order.

    Time is halved in the last stages (at lower resolution, where it is cheap and where frames
    already carry context), space in the first ones.
    """
    n_s = int(math.log2(cfg.spatial_compression // cfg.patch_size))
    n_t = int(math.log2(cfg.temporal_compression))
    n = max(n_s, n_t)
    mults = cfg.channel_multipliers
    return [(cfg.base_channels * mults[min(i, len(mults) - 1)], i < n_s, i >= n - n_t) for i in range(n)]


class Encoder(nn.Module):
    """``[B, 3, 1 + k*t, H, W]`` -> ``[B, out_channels, 1 + k, H/s, W/s]`` (pre-bottleneck features)."""

    def __init__(self, cfg: TokenizerConfig, out_channels: int) -> None:
        super().__init__()
        plan = _stage_plan(cfg)
        self.patch_size = cfg.patch_size
        kt = cfg.temporal_kernel
        self.conv_in = CausalConv3d(3 * cfg.patch_size**2, cfg.base_channels, (kt, 3, 3))
        self.stages = nn.ModuleList()
        ch = cfg.base_channels
        for out_ch, spatial, temporal in plan:
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock3d(ch, out_ch, kt))
                ch = out_ch
            blocks.append(Downsample3d(ch, spatial, temporal))
            self.stages.append(blocks)
        self.mid = nn.ModuleList([ResBlock3d(ch, ch, kt) for _ in range(max(2, cfg.num_res_blocks))])
        self.norm_out = FrameGroupNorm(ch)
        self.conv_out = CausalConv3d(ch, out_channels, (kt, 3, 3))

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        h = self.conv_in(space_to_depth(x, self.patch_size), cache)
        for stage in self.stages:
            for block in stage:
                h = block(h, cache)
        for block in self.mid:
            h = block(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


class Decoder(nn.Module):
    """``[B, C_lat, 1 + k, h, w]`` -> ``[B, 3, 1 + k*t, h*s, w*s]`` (unbounded; ~[-1, 1] once trained)."""

    def __init__(self, cfg: TokenizerConfig, in_channels: int) -> None:
        super().__init__()
        plan = _stage_plan(cfg)
        ch = plan[-1][0] if plan else cfg.base_channels
        kt = cfg.temporal_kernel
        self.conv_in = CausalConv3d(in_channels, ch, (kt, 3, 3))
        self.mid = nn.ModuleList([ResBlock3d(ch, ch, kt) for _ in range(max(2, cfg.num_res_blocks))])
        self.stages = nn.ModuleList()
        for i in reversed(range(len(plan))):
            _, spatial, temporal = plan[i]
            out_ch = plan[i - 1][0] if i > 0 else cfg.base_channels
            blocks = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock3d(ch, out_ch, kt))
                ch = out_ch
            blocks.append(Upsample3d(ch, spatial, temporal, kt))
            self.stages.append(blocks)
        self.norm_out = FrameGroupNorm(ch)
        self.patch_size = cfg.patch_size
        self.conv_out = CausalConv3d(ch, 3 * cfg.patch_size**2, (kt, 3, 3))

    def forward(self, z: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        h = self.conv_in(z, cache)
        for block in self.mid:
            h = block(h, cache)
        for stage in self.stages:
            for block in stage:
                h = block(h, cache)
        return depth_to_space(self.conv_out(F.silu(self.norm_out(h)), cache), self.patch_size)


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, C*p*p, T, H/p, W/p]``: each frame's ``p x p`` pixel blocks as channels."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t, h // p, p, w // p, p).permute(0, 1, 4, 6, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of ``space_to_depth``: ``[B, C*p*p, T, h, w]`` -> ``[B, C, T, h*p, w*p]``."""
    if p == 1:
        return x
    b, cpp, t, h, w = x.shape
    c = cpp // (p * p)
    x = x.reshape(b, c, p, p, t, h, w).permute(0, 1, 4, 5, 2, 6, 3)
    return x.reshape(b, c, t, h * p, w * p)


class CausalVideoTokenizer(nn.Module):
    """Encoder + bottleneck (``DiagonalGaussian`` or ``FSQuantizer``) + decoder.

    Implements ``tokenizer.interface.VideoTokenizer``. Videos are float ``[B, 3, T, H, W]`` in
    [-1, 1] with ``T = 1 + k * temporal_compression`` and ``H, W`` multiples of
    ``spatial_compression``.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.bottleneck: DiagonalGaussian | FSQuantizer = (
            FSQuantizer(cfg.fsq_levels) if cfg.bottleneck == "fsq" else DiagonalGaussian(cfg.latent_channels)
        )
        self.encoder = Encoder(cfg, self.bottleneck.in_channels)
        self.decoder = Decoder(cfg, self.bottleneck.latent_channels)
        # The sizes of tokenizer.interface.VideoTokenizer, fixed once the model is built.
        self.temporal_compression: int = cfg.temporal_compression
        self.spatial_compression: int = cfg.spatial_compression
        self.latent_channels: int = self.bottleneck.latent_channels
        self.is_discrete: bool = self.bottleneck.is_discrete
        fsq = self.bottleneck if isinstance(self.bottleneck, FSQuantizer) else None
        self.codebook_size: int | None = fsq.codebook_size if fsq is not None else None
        self.levels: list[int] | None = list(fsq.levels) if fsq is not None else None

    # ----- the interface the dynamics model uses (tokenizer.interface.VideoTokenizer) -----
    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(C_lat, 1 + (T-1)/t, H/s, W/s)`` for a video of ``T x H x W``; raises on invalid sizes."""
        self._check_size(frames, height, width, "video")
        t, s = self.temporal_compression, self.spatial_compression
        return (self.latent_channels, 1 + (frames - 1) // t, height // s, width // s)

    def encode(self, video: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """``[B, 3, T, H, W]`` in [-1, 1] -> latent ``[B, C_lat, 1 + (T-1)/t, H/s, W/s]`` (mean / codes).

        ``chunk_frames=N`` (a multiple of the temporal compression) streams the video N frames at
        a time (the first chunk has 1 + N); the result equals the whole-clip one.
        """
        self._check_video(video)
        if chunk_frames is None:
            return self.bottleneck.encode(self.encoder(video))
        chunks = _split_time(video, self._check_chunk(chunk_frames, "encode"), first_extra=1)
        return torch.cat(list(self.stream_encode(chunks)), dim=2)

    def decode(self, z: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """Latent ``[B, C_lat, 1 + k, h, w]`` (any float dtype) -> video ``[B, 3, 1 + k*t, h*s, w*s]``
        in the model's dtype, clamped to [-1, 1].

        ``chunk_frames=N`` (video frames per chunk, a multiple of the temporal compression)
        streams the decode ``N / t`` latent frames at a time.
        """
        self._check_latent(z)
        z = z.to(self.decoder.conv_in.conv.weight.dtype)  # float32 codes into a bf16 model, say
        if chunk_frames is None:
            return self.decoder(z).clamp(-1.0, 1.0)
        n = self._check_chunk(chunk_frames, "decode") // self.temporal_compression
        chunks = _split_time(z, n, first_extra=1)
        return torch.cat(list(self.stream_decode(chunks)), dim=2)

    def encode_indices(self, video: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """FSQ only: ``[B, 3, T, H, W]`` -> indices ``[B, 1 + (T-1)/t, H/s, W/s]`` int64."""
        self._fsq("encode_indices")
        return self.codes_to_indices(self.encode(video, chunk_frames))

    def decode_indices(self, indices: torch.Tensor, chunk_frames: int | None = None) -> torch.Tensor:
        """FSQ only: indices ``[B, 1 + k, h, w]`` -> video ``[B, 3, 1 + k*t, h*s, w*s]``."""
        return self.decode(self.indices_to_codes(indices), chunk_frames)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """FSQ only: indices ``[B, T', h, w]`` long -> float32 codes ``[B, C_lat, T', h, w]`` (the
        latents ``encode`` gives and ``decode`` takes)."""
        return self._fsq("indices_to_codes").indices_to_codes(indices)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """FSQ only: codes ``[B, C_lat, T', h, w]`` (what ``encode`` gives) -> indices ``[B, T', h, w]``."""
        return self._fsq("codes_to_indices").codes_to_indices(codes)

    # ----- streaming -----
    @torch.no_grad()
    def stream_encode(
        self, chunks: Iterable[torch.Tensor], cache: StreamCache | None = None
    ) -> Iterator[torch.Tensor]:
        """Encode a video given as consecutive chunks; yields each chunk's latent frames.

        The first chunk has ``1 + m*t`` frames (m >= 0), every later one a positive multiple of
        ``t``. Only the causal padding is kept between chunks (in ``cache``, a fresh dict unless
        given), so memory does not grow with the video.
        """
        cache = {} if cache is None else cache
        for i, chunk in enumerate(chunks):
            self._check_stream_chunk(chunk, i, self.temporal_compression, "frames")
            yield self.bottleneck.encode(self.encoder(chunk, cache))

    @torch.no_grad()
    def stream_decode(
        self, chunks: Iterable[torch.Tensor], cache: StreamCache | None = None
    ) -> Iterator[torch.Tensor]:
        """Decode consecutive latent chunks (any number >= 1 of latent frames each); yields video.

        The first latent chunk of ``1 + m`` frames gives ``1 + m*t`` video frames, later chunks of
        ``n`` give ``n*t``. ``cache`` as in ``stream_encode``.
        """
        cache = {} if cache is None else cache
        for chunk in chunks:
            self._check_latent(chunk)
            yield self.decoder(chunk, cache).clamp(-1.0, 1.0)

    # ----- training -----
    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Training pass: ``video [B, 3, T, H, W]`` -> ``(reconstruction [B, 3, T, H, W] unclamped,
        latent [B, C_lat, 1 + k, h, w], bottleneck losses)``."""
        self._check_video(video)
        z, aux = self.bottleneck(self.encoder(video))
        return self.decoder(z), z, aux

    def last_layer_weight(self) -> torch.Tensor:
        """The decoder's output conv weight, for the adaptive adversarial weight."""
        return self.decoder.conv_out.conv.weight

    # ----- runtime helpers -----
    def blocks(self) -> list[nn.Module]:
        """The residual and resampling blocks, in order, for per-block activation checkpointing.

        Each takes ``(x, cache=None)`` and returns a tensor; a wrapper may recompute it.
        """
        enc, dec = self.encoder, self.decoder
        return (
            [b for stage in enc.stages for b in stage]
            + list(enc.mid)
            + list(dec.mid)
            + [b for stage in dec.stages for b in stage]
        )

    def init_weights(self) -> None:
        """(Re)initialise every parameter and buffer in place; call after ``to_empty(device=...)``
        when the model was built on the ``meta`` device."""
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Conv2d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in [*self.encoder.stages, *self.decoder.stages]:
            for b in stage:
                if isinstance(b, ResBlock3d):
                    # Start each residual branch at zero: the net begins close to a plain conv stack.
                    nn.init.zeros_(b.conv2.conv.weight)
        if isinstance(self.bottleneck, FSQuantizer):
            self.bottleneck.reset_buffers()

    def flops_per_video(self, frames: int, height: int, width: int, decoder: bool = True) -> float:
        """Forward FLOPs of one video ``T x H x W``, counted on the meta device: encoder + decoder,
        or the encoder alone with ``decoder=False`` (what ``vidworld tokenize`` runs)."""
        from torch.utils.flop_counter import FlopCounterMode

        self._check_size(frames, height, width, "video")
        with torch.device("meta"):
            shadow = CausalVideoTokenizer(self.cfg)
        x = torch.empty(1, 3, frames, height, width, device="meta")
        with FlopCounterMode(display=False) as counter:
            z = shadow.bottleneck.encode(shadow.encoder(x))
            if decoder:
                shadow.decoder(z)
        return float(counter.get_total_flops())

    def training_flops_per_video(self, frames: int, height: int, width: int) -> float:
        """FLOPs of one training video through encoder + decoder, forward and backward: 3x the
        forward (``flops_per_video``; a conv's backward is twice its forward) less the input
        gradient of the first conv, which training never computes (the video needs none)."""
        conv = self.encoder.conv_in.conv
        p = self.cfg.patch_size
        first_conv = 2.0 * conv.weight.numel() * frames * (height // p) * (width // p)
        return 3.0 * self.flops_per_video(frames, height, width) - first_conv

    # ----- checks -----
    def _fsq(self, what: str) -> FSQuantizer:
        if not isinstance(self.bottleneck, FSQuantizer):
            raise TypeError(f"{what} needs a discrete (bottleneck='fsq') tokenizer; this one is continuous")
        return self.bottleneck

    def _check_size(self, frames: int, height: int, width: int, name: str) -> None:
        t, s = self.temporal_compression, self.spatial_compression
        if frames < 1 or (frames - 1) % t:
            lo = 1 + max(0, (frames - 1) // t) * t
            valid = ", ".join(str(1 + k * t) for k in range(4))
            raise ValueError(
                f"{name} has {frames} frames; this tokenizer (temporal compression {t}) takes 1 + k*{t} "
                f"frames ({valid}, ...): trim the clip to {lo} frames or pad it to {lo + t}"
            )
        if height % s or width % s or height < 1 or width < 1:
            raise ValueError(
                f"{name} is {height}x{width} pixels; height and width must be multiples of the spatial "
                f"compression {s}: crop or resize to {max(s, height // s * s)}x{max(s, width // s * s)}"
            )

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"video must be a float tensor [B, 3, T, H, W] in [-1, 1], got shape {tuple(video.shape)}; "
                "an image [B, 3, H, W] is a 1-frame video: use image.unsqueeze(2)"
            )
        if not video.dtype.is_floating_point:
            raise TypeError(
                f"video must be float in [-1, 1], got {video.dtype}; convert uint8 with x / 127.5 - 1"
            )
        self._check_size(video.shape[2], video.shape[3], video.shape[4], "video")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.latent_channels:
            raise ValueError(
                f"latent must be [B, {self.latent_channels}, T', h, w] "
                f"(latent_channels={self.latent_channels}), got shape {tuple(z.shape)}"
            )

    def _check_chunk(self, chunk_frames: int, what: str) -> int:
        t = self.temporal_compression
        if chunk_frames < 1 or chunk_frames % t:
            raise ValueError(
                f"{what}: chunk_frames={chunk_frames} must be a positive multiple of the temporal "
                f"compression {t} (e.g. {4 * t})"
            )
        return chunk_frames

    def _check_stream_chunk(self, chunk: torch.Tensor, i: int, t: int, unit: str) -> None:
        if chunk.ndim != 5 or chunk.shape[1] != 3:
            raise ValueError(f"stream chunk {i} must be [B, 3, T, H, W], got {tuple(chunk.shape)}")
        n = chunk.shape[2]
        ok = (n - 1) % t == 0 if i == 0 else (n > 0 and n % t == 0)
        if not ok:
            need = f"1 + k*{t}" if i == 0 else f"a positive multiple of {t}"
            raise ValueError(f"stream chunk {i} has {n} {unit}; chunk {i} must have {need} {unit}")


def _split_time(x: torch.Tensor, n: int, first_extra: int) -> Iterator[torch.Tensor]:
    """Chunks of ``x [B, C, T, ...]`` along time: the first of ``first_extra + n``, then ``n`` each."""
    start, size = 0, first_extra + n
    while start < x.shape[2]:
        yield x[:, :, start : start + size]
        start, size = start + size, n


def build_tokenizer(
    cfg: TokenizerConfig, device: torch.device | str = "cpu", meta: bool = False
) -> CausalVideoTokenizer:
    """Build and initialise a tokenizer. ``meta=True`` builds without memory, then places and inits."""
    if meta:
        with torch.device("meta"):
            model = CausalVideoTokenizer(cfg)
        model.to_empty(device=device)
    else:
        model = CausalVideoTokenizer(cfg).to(device)
    model.init_weights()
    return model
