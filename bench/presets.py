"""Sizes and FLOPs of the model presets, counted without building a weight (issue 14 item 5).

Dynamics (``DynamicsConfig.preset``): parameters, latent tokens per clip (``max_frames`` x tokens
per frame) and the training FLOPs per clip that MFU uses (``flops_per_sample``: forward and
backward, attention over the pairs the frame-causal mask allows), per clip and per token. Beside
them, PyTorch's ``FlopCounterMode`` over a forward and ``backward()`` of the network on the meta
device. The counter sees the dense attention of the math backend (every score, masked or not),
so the analytic count with the masked pairs added is printed next to it for comparison.

Tokenizer (``tokenizer.config.PRESETS``, continuous ones): parameters, latent grid, latent
tokens and training FLOPs per clip (``TokenizerTask.flops_per_sample``) at 256 and 512 px.

    .venv/bin/python bench/presets.py            # a few seconds on a CPU; no memory needed

Prints markdown tables; never gates CI.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before bench/, whose dynamics.py and tokenizer.py would shadow the packages

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from dynamics import DiffusionDynamics, DynamicsConfig, DynamicsHead, build_dynamics  # noqa: E402
from dynamics.attention import FrameCausalMask  # noqa: E402
from tokenizer import PRESETS, CausalVideoTokenizer, TokenizerConfig  # noqa: E402

DYNAMICS = ["small", "100m", "300m", "1b"]
TOKENIZER = ["cv4x8x8", "cv8x16x16", "cv8x16x16-p4"]
TOKENIZER_CLIPS = [(17, 256), (17, 512)]


def counted_on_meta(model: DynamicsHead, frames: int) -> float:
    """``FlopCounterMode``'s FLOPs of one clip's forward + ``backward()`` through the network, on meta.

    ``loss`` reads values (its input checks), which meta tensors do not have, so this runs the
    network call ``loss`` makes: ``predict`` (diffusion) or ``logits`` (maskgit).
    """
    cfg, meta = model.cfg, torch.device("meta")
    h, w = cfg.latent_height, cfg.latent_width
    actions = torch.zeros(1, frames, dtype=torch.long, device=meta)
    with FlopCounterMode(display=False) as counter:
        if isinstance(model, DiffusionDynamics):
            x = torch.empty(1, frames, h, w, cfg.latent_channels, device=meta)
            s = torch.empty(1, frames, device=meta)
            out = model.predict(x, s, actions, prev=x if cfg.residual else None, prev_level=s)
        else:
            tokens = torch.zeros(1, frames, h, w, dtype=torch.long, device=meta)
            out = model.logits(tokens, actions)
        out.sum().backward()
    return float(counter.get_total_flops())


def attention_pairs(model: DynamicsHead, frames: int) -> tuple[int, int]:
    """(allowed, hidden) query/key pairs of the frame-causal masks over every block, read from the
    masks themselves; dense attention computes both."""
    n = model.cfg.tokens_per_frame
    full, temporal = (
        FrameCausalMask(frames * n, frames * n, n).dense(),
        FrameCausalMask(frames, frames, 1).dense(),
    )
    per_block = {
        "full": (int(full.sum()), int((~full).sum())),
        "temporal": (n * int(temporal.sum()), n * int((~temporal).sum())),
        "spatial": (frames * n * n, 0),
    }
    pairs = [per_block[kind] for kind in model.backbone.block_kinds]
    return sum(a for a, _ in pairs), sum(h for _, h in pairs)


def dynamics_table() -> None:
    print("| preset | head | dim x depth (heads) | parameters | tokens/clip | TFLOP/clip | GFLOP/token "
          "| attention share | dense-attention count (analytic / FlopCounterMode on meta) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name in DYNAMICS:
        for head in ("diffusion", "maskgit"):
            cfg = DynamicsConfig.preset(name, head=head, attention_backend="math")
            model = build_dynamics(cfg, device=None)
            t = cfg.max_frames
            params = sum(p.numel() for p in model.parameters())
            tokens = t * cfg.tokens_per_frame
            flops = model.flops_per_sample(t)
            allowed, hidden = attention_pairs(model, t)
            attention = 3 * 4 * cfg.dim * allowed  # scores and weighted sum, forward + backward
            dense = flops + 3 * 4 * cfg.dim * hidden
            counted = counted_on_meta(model, t)
            print(
                f"| {name} | {head} | {cfg.dim} x {cfg.depth} ({cfg.heads}) | {params / 1e6:,.1f}M "
                f"| {tokens:,} | {flops / 1e12:.3f} | {flops / tokens / 1e9:.3f} | {attention / flops:.0%} "
                f"| {dense / 1e12:.3f} / {counted / 1e12:.3f} TFLOP ({(counted - dense) / dense:+.2%}) |"
            )


def tokenizer_table() -> None:
    print("| preset | compression (t x s x s, patch) | parameters | clip | latent grid | latent tokens "
          "| training TFLOP/clip |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in TOKENIZER:
        cfg = TokenizerConfig.preset(name)
        with torch.device("meta"):
            model = CausalVideoTokenizer(cfg)
        params = sum(p.numel() for p in model.parameters())
        for frames, size in TOKENIZER_CLIPS:
            c, lt, lh, lw = model.latent_shape(frames, size, size)
            flops = model.training_flops_per_video(frames, size, size)
            print(
                f"| {name} | {cfg.temporal_compression}x{cfg.spatial_compression}x{cfg.spatial_compression}, "
                f"p{cfg.patch_size} | {params / 1e6:.1f}M | {frames} x {size}x{size} "
                f"| {lt} x {lh}x{lw} x {c} | {lt * lh * lw:,} | {flops / 1e12:.2f} |"
            )


def main() -> None:
    start = time.perf_counter()
    print(f"{platform.machine()} CPU, {torch.get_num_threads()} threads; torch {torch.__version__}; "
          f"tokenizer presets: {', '.join(sorted(PRESETS))}")  # fmt: skip
    print("\nDynamics presets (16 latent frames; FLOPs per training clip, forward + backward):\n")
    dynamics_table()
    print("\nTokenizer presets (FLOPs per training clip, forward + backward, encoder + decoder):\n")
    tokenizer_table()
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
