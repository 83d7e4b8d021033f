"""The one attention function of the dynamics model, its backends, and ``FrameCausalMask``.

``attention(q, k, v, mask, backend)`` with ``q`` ``[B, H, Lq, d]`` and ``k``, ``v``
``[B, H, Lk, d]`` returns ``[B, H, Lq, d]``. Backends:

- ``math``: the reference (scores in fp32, masked softmax, weighted sum). Any device.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``. Without a mask the GPU
  picks flash/cuDNN kernels; a frame-causal mask is passed as a boolean tensor, which the
  cuDNN or memory-efficient kernels take on GPU (math on CPU).
- ``flex``: ``torch.nn.attention.flex_attention`` with a block mask, so fully masked blocks
  of the frame-causal pattern are skipped. Compiled on CUDA; eager (unfused) on CPU, where
  torch 2.13 runs the forward only (no CPU backward): use it there for inference and tests.
- ``flash-attn``: the ``flash_attn`` package (optional ``gpu`` extra, imported only when
  chosen). It has causal but no block-causal masks, so a frame-causal mask is done as one
  call per query frame against its key prefix (``Lq / tokens_per_frame`` calls; no
  masked work is done at all). fp16/bf16 on CUDA only.
- ``auto``: the runtime picks one for the device it trains on (``runtime.parallelize``); a
  model used without the runtime runs ``auto`` as ``sdpa`` (works everywhere, every dtype).

Which backends a device can run is the runtime's business, not the model's.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(eq=False)
class FrameCausalMask:
    """Full attention within a frame, causal across frames.

    Query token ``i`` belongs to frame ``q_offset_frames + i // tokens_per_frame`` (the
    offset is the number of frames already in a KV cache); key token ``j`` to frame
    ``j // tokens_per_frame``. A query sees a key when the key's frame is not later than its own.
    """

    q_len: int
    kv_len: int
    tokens_per_frame: int
    q_offset_frames: int = 0
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        n = self.tokens_per_frame
        if self.q_len % n or self.kv_len % n:
            raise ValueError(
                f"FrameCausalMask: q_len={self.q_len} and kv_len={self.kv_len} must be whole frames "
                f"of tokens_per_frame={n}"
            )
        if self.kv_len != (self.q_offset_frames * n + self.q_len):
            raise ValueError(
                f"FrameCausalMask: kv_len={self.kv_len} must equal cached frames ({self.q_offset_frames}) "
                f"x tokens_per_frame ({n}) + q_len ({self.q_len})"
            )

    @property
    def q_frames(self) -> int:
        return self.q_len // self.tokens_per_frame

    def dense(self, device: torch.device | str = "cpu") -> Tensor:
        """Boolean ``[Lq, Lk]``, True where attention is allowed."""
        key = ("dense", str(device))
        if key not in self._memo:
            n = self.tokens_per_frame
            qf = torch.arange(self.q_len, device=device) // n + self.q_offset_frames
            kf = torch.arange(self.kv_len, device=device) // n
            self._memo[key] = kf[None, :] <= qf[:, None]
        return self._memo[key]

    def mask_mod(self):  # noqa: ANN201 - a FlexAttention mask_mod
        n, off = self.tokens_per_frame, self.q_offset_frames
        return lambda b, h, q_idx, kv_idx: (kv_idx // n) <= (q_idx // n + off)

    def block_mask(self, device: torch.device) -> Any:
        """FlexAttention ``BlockMask`` for this pattern (built once per mask object and device)."""
        key = ("block", str(device))
        if key not in self._memo:
            from torch.nn.attention.flex_attention import create_block_mask

            self._memo[key] = create_block_mask(
                self.mask_mod(), None, None, self.q_len, self.kv_len, device=str(device)
            )
        return self._memo[key]


def attention(q: Tensor, k: Tensor, v: Tensor, mask: FrameCausalMask | None, backend: str) -> Tensor:
    """Scaled dot-product attention ``[B, H, Lq, d] x [B, H, Lk, d] -> [B, H, Lq, d]``.

    ``mask=None`` means every query sees every key. ``backend`` is one of ``BACKENDS`` of
    ``dynamics.config`` (``auto`` runs ``sdpa``).
    """
    if mask is not None and (mask.q_len != q.shape[-2] or mask.kv_len != k.shape[-2]):
        raise ValueError(
            f"mask is for {mask.q_len}x{mask.kv_len} tokens but q/k have {q.shape[-2]}/{k.shape[-2]}"
        )
    if backend == "math":
        return _math(q, k, v, mask)
    if backend in ("sdpa", "auto"):
        if mask is not None and mask.tokens_per_frame == 1 and mask.q_offset_frames == 0:
            # One token per frame (temporal blocks): frame-causal is plain causal, which lets the
            # GPU use its flash kernels instead of a dense boolean mask.
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if mask is None else mask.dense(q.device)
        )
    if backend == "flex":
        return _flex(q, k, v, mask)
    if backend == "flash-attn":
        return _flash_attn(q, k, v, mask)
    raise ValueError(f"unknown attention backend {backend!r}; use one of math, sdpa, flex, flash-attn")


def _math(q: Tensor, k: Tensor, v: Tensor, mask: FrameCausalMask | None) -> Tensor:
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask.dense(q.device), float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


@functools.cache
def _flex_fn(device_type: str):  # noqa: ANN202
    from torch.nn.attention.flex_attention import flex_attention

    # Uncompiled FlexAttention materialises the scores; on CUDA it must be compiled to be fast.
    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _flex(q: Tensor, k: Tensor, v: Tensor, mask: FrameCausalMask | None) -> Tensor:
    if q.device.type == "cpu" and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise ValueError(
            "attention backend 'flex' has no backward on CPU in this torch; train on CPU with "
            "attention_backend=sdpa (flex is fine on CPU under torch.no_grad(), and on CUDA)"
        )
    block_mask = None if mask is None else mask.block_mask(q.device)
    with warnings.catch_warnings():
        # Eager (CPU) FlexAttention warns that it is unfused; that is expected there.
        warnings.simplefilter("ignore")
        return _flex_fn(q.device.type)(q, k, v, block_mask=block_mask)


def _flash_attn(q: Tensor, k: Tensor, v: Tensor, mask: FrameCausalMask | None) -> Tensor:
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(
            f"flash-attn needs fp16/bf16 CUDA tensors, got {q.dtype} on {q.device}; "
            "use attention_backend=sdpa or run under bf16 autocast on a GPU"
        )
    from flash_attn import flash_attn_func

    # flash_attn takes [B, L, H, d].
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    if mask is None:
        return flash_attn_func(qt, kt, vt).transpose(1, 2)
    n, off = mask.tokens_per_frame, mask.q_offset_frames
    if n == 1:
        # One token per frame: frame-causal is causal, bottom-right aligned as flash-attn >= 2.1 does.
        return flash_attn_func(qt, kt, vt, causal=True).transpose(1, 2)
    outs = []
    for f in range(mask.q_frames):
        end = (off + f + 1) * n  # keys of every frame up to and including this one
        outs.append(flash_attn_func(qt[:, f * n : (f + 1) * n], kt[:, :end], vt[:, :end]))
    return torch.cat(outs, dim=1).transpose(1, 2)
