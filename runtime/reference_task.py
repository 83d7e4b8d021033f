"""A small reference task for the training runtime: a decoder-only transformer on synthetic tokens.

It needs no data files (``data.shards`` is unused), so tests, launcher checks and the runtime
benchmark can train something real in seconds. Each sequence is an arithmetic progression modulo
the vocabulary, ``x[t] = (start + stride * t) % vocab``, with ``start`` and ``stride`` drawn per
sequence: a model must read the context to predict the next token, so the loss falls steadily.

Micro-batch ``g`` (counted over all ranks) is a pure function of ``(seed, g)``: rank ``r`` of ``W``
takes ``g = k * W + r`` for its ``k``-th micro-batch. One process with ``grad_accum=2`` and two
processes with ``grad_accum=1`` therefore see the same global batch at every step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass
class ReferenceModelConfig:
    """The ``model:`` section. Defaults are a tiny CPU model (~70k parameters)."""

    vocab_size: int = 64
    width: int = 64
    depth: int = 2
    heads: int = 4
    seq_len: int = 32
    max_stride: int = 3  # strides are drawn from 1..max_stride


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then an MLP. ``[B, T, D] -> [B, T, D]``."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"model.width={width} must be divisible by model.heads={heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token ids ``[B, T]`` (int64) -> logits ``[B, T, vocab]``."""

    def __init__(self, cfg: ReferenceModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.randn(cfg.seq_len, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter in place (after ``to_empty()`` from the meta device), drawn as the
        constructor draws them, in its order: for one seed, the same weights as a plain build."""
        self.embed.reset_parameters()
        nn.init.normal_(self.pos, std=0.02)
        for m in [*self.blocks.modules(), self.norm, self.head]:
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class ReferenceTask:
    """The ``Task`` of the tiny transformer (see ``runtime.task.Task``)."""

    config_class: ClassVar[type] = ReferenceModelConfig

    def __init__(self, model_cfg: ReferenceModelConfig, train_cfg: Any) -> None:
        if model_cfg.max_stride < 1 or model_cfg.seq_len < 2:
            raise ValueError("model.max_stride must be >= 1 and model.seq_len >= 2")
        self.cfg = model_cfg
        self.micro_batch_size = int(train_cfg.trainer.micro_batch_size)
        self._consumed = 0

    def build_model(self) -> nn.Module:
        """Constructed only; the runtime initialises it (``TinyTransformer.init_weights``)."""
        return TinyTransformer(self.cfg)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.blocks)

    def make_batch(self, seed: int, index: int) -> dict[str, torch.Tensor]:
        """Global micro-batch ``index``: ``{"tokens": [B, T] int64, "targets": [B, T] int64}``."""
        g = torch.Generator().manual_seed(seed * 1_000_003 + index)
        b, t, v = self.micro_batch_size, self.cfg.seq_len, self.cfg.vocab_size
        start = torch.randint(0, v, (b, 1), generator=g)
        stride = torch.randint(1, self.cfg.max_stride + 1, (b, 1), generator=g)
        seq = (start + stride * torch.arange(t + 1)) % v
        return {"tokens": seq[:, :-1], "targets": seq[:, 1:]}

    def example_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A random micro-batch of ``batch_size`` sequences (``runtime.task.Task``; for the memory plan)."""
        shape = (batch_size, self.cfg.seq_len)
        return {
            "tokens": torch.randint(0, self.cfg.vocab_size, shape),
            "targets": torch.randint(0, self.cfg.vocab_size, shape),
        }

    def batches(self, rank: int, world_size: int, seed: int, state: dict | None) -> Iterator[Any]:
        """Global micro-batches ``consumed + k * world_size + rank``: the position is global, so a run
        resumed on another number of processes reads on where the saved run stopped."""
        first = int(state["consumed"]) if state else 0
        k = 0
        while True:
            # Counted before the yield: the state after this batch is consumed (by every rank).
            self._consumed = first + (k + 1) * world_size
            yield self.make_batch(seed, first + k * world_size + rank)
            k += 1

    def loader_state(self) -> dict:
        return {"consumed": self._consumed}

    def loss(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        device = next(iter(p.device for p in model.parameters()))
        tokens, targets = batch["tokens"].to(device), batch["targets"].to(device)
        logits = model(tokens).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        acc = (logits.argmax(-1) == targets).float().mean()
        return {"loss": loss, "accuracy": acc.detach()}

    def flops_per_sample(self) -> float:
        """6 x (non-embedding parameters) per token plus attention scores, forward + backward."""
        c = self.cfg
        per_block = 12 * c.width * c.width + 13 * c.width  # qkv + proj + 2 MLP linears (+ biases)
        n = c.depth * per_block + c.width * c.vocab_size
        return float(c.seq_len * (6 * n + 12 * c.depth * c.width * c.seq_len))

    def tokens_per_sample(self) -> int:
        return self.cfg.seq_len

    def eval_media(self, model: nn.Module, batch: Any) -> dict[str, Any]:
        """Loss, perplexity and a 2-frame video of the first sequence: frame 0 the target tokens,
        frame 1 the predicted ones, one column per position, one row per token id
        (``uint8 [2, vocab, T, 3]``, sizes rounded up to even for H.264)."""
        out = self.loss(model, batch)
        device = next(iter(p.device for p in model.parameters()))
        pred = model(batch["tokens"][:1].to(device)).argmax(-1)[0].cpu()
        target = batch["targets"][0]
        h, w = self.cfg.vocab_size + self.cfg.vocab_size % 2, self.cfg.seq_len + self.cfg.seq_len % 2
        frames = torch.zeros(2, h, w, 3, dtype=torch.uint8)
        cols = torch.arange(self.cfg.seq_len)
        frames[0, target, cols] = 255
        frames[1, pred, cols] = 255
        loss = float(out["loss"])
        return {
            "eval/loss": loss,
            "eval/perplexity": math.exp(min(loss, 50.0)),
            "eval/tokens": frames.numpy(),
        }
