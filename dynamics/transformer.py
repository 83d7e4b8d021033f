"""The frame-causal transformer backbone shared by both dynamics heads.

Latent frames ``[B, T, h, w, F]`` (``F`` features per latent position) are cut into
``patch_size x patch_size`` patches, one token each (``N = (h/p) * (w/p)`` tokens per frame).
Blocks attend frame-causally (full within a frame, causal across frames) with 3D rotary
positions, and are modulated per frame by adaptive layer norm (adaLN-Zero, as in DiT) from a
conditioning vector: whatever the head adds (the diffusion noise level), plus the frame's action
embedding when ``action_injection="adaln"``; with ``"add"`` (the default) the action embedding
is added to every token of its frame instead. ``KVCache`` keeps keys and values of past
frames so a rollout only runs the new frame through the network.

``model.blocks`` is a plain ``nn.ModuleList``: the runtime wraps each block for activation
checkpointing from outside. Nothing here knows about devices or distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.attention import FrameCausalMask, attention
from dynamics.config import DynamicsConfig
from dynamics.rope import apply_rope, rope_angles


@dataclass(frozen=True)
class FrameActions:
    """What conditions each latent frame: real actions, latent action codes, or both.

    ``real``: discrete ``[B, T]`` long in ``0..num_actions`` (``num_actions`` = no action) or
    ``[B, T, k]`` (``k`` source actions per latent frame, summed); continuous ``[B, T(, k), A]``.
    ``latent``: ``[B, T]`` long codes of a latent action model in ``0..latent_actions``
    (``latent_actions`` = no latent action). Either may be ``None``: a model that takes that kind
    then sees "none" for every frame (clips without action labels, or rollouts under latent codes).
    """

    real: Tensor | None = None
    latent: Tensor | None = None

    @staticmethod
    def of(actions: Actions, latent: Tensor | None = None) -> FrameActions | None:
        """``actions`` (a tensor of real actions, ``FrameActions`` or ``None``) with ``latent`` codes
        added; ``None`` when there is neither."""
        if isinstance(actions, FrameActions):
            if latent is None:
                return actions
            actions = actions.real
        if actions is None and latent is None:
            return None
        return FrameActions(actions, latent)

    def frames(self, start: int, end: int) -> FrameActions:
        """The actions of frames ``start..end-1``."""
        cut = lambda a: None if a is None else a[:, start:end]  # noqa: E731
        return FrameActions(cut(self.real), cut(self.latent))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FrameActions:
        """On ``device``; floating-point (continuous) real actions also cast to ``dtype``."""
        real = self.real
        if real is not None:
            real = real.to(device, dtype if dtype is not None and real.is_floating_point() else None)
        return FrameActions(real, None if self.latent is None else self.latent.to(device))


# Conditioning as the heads pass it around: real actions alone (a tensor), both kinds, or none.
Actions = Tensor | FrameActions | None


@dataclass
class KVCache:
    """Keys and values of the frames seen so far, one entry per attention layer.

    ``frames`` is how many latent frames are stored. Spatial blocks of a factorized model
    need no cache (they only look inside the current frame) and keep ``None``.
    """

    frames: int = 0
    layers: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


class SelfAttention(nn.Module):
    """Multi-head self-attention with QK RMS-norm (keeps bf16 logits tame) and rotary positions.

    ``attention_backend`` names the kernel (``dynamics.attention``); the runtime replaces a
    requested ``auto`` by the backend it chose for the device.
    """

    def __init__(self, dim: int, heads: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.attention_backend = attention_backend
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: FrameCausalMask | None,
        past: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``[B', L, D]`` -> (``[B', L, D]``, this layer's keys/values incl. ``past``)."""
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Weights cast to the activations' dtype: under autocast the fused RMSNorm kernel needs both alike.
        hd = (self.head_dim,)
        q = apply_rope(F.rms_norm(q, hd, self.q_norm.weight.to(q.dtype), self.q_norm.eps), cos, sin)
        k = apply_rope(F.rms_norm(k, hd, self.k_norm.weight.to(k.dtype), self.k_norm.eps), cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        out = attention(q, k, v, mask, self.attention_backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1)), (k, v)


class Block(nn.Module):
    """A pre-norm transformer block with adaLN-Zero modulation per frame.

    ``kind``: ``full`` (all tokens of all frames, frame-causal), ``spatial`` (tokens of one
    frame) or ``temporal`` (one spatial position across frames, causal).
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, kind: str = "full", attention_backend: str = "auto"
    ) -> None:
        super().__init__()
        self.kind = kind
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, attention_backend)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Linear(dim, 6 * dim)

    def forward(
        self,
        x: Tensor,
        cond: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: FrameCausalMask | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
        write_cache: bool = False,
    ) -> Tensor:
        """``x`` ``[B, T, N, D]``, ``cond`` ``[B, T, D]``, ``cos``/``sin`` ``[T, N, d/2]`` -> like ``x``.

        ``mask``: the frame-causal mask in this block's token layout (None: see every key).
        """
        mods = self.modulation(F.silu(cond))[:, :, None].chunk(6, dim=-1)
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self._attend(h, cos, sin, mask, cache, layer, write_cache)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.mlp(h)

    def _attend(
        self,
        h: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: FrameCausalMask | None,
        cache: KVCache | None,
        layer: int,
        write_cache: bool,
    ) -> Tensor:
        b, t, n, d = h.shape
        if self.kind == "spatial":
            seq = h.reshape(b * t, n, d)
            c, s = (a.unsqueeze(0).expand(b, -1, -1, -1).reshape(b * t, 1, n, -1) for a in (cos, sin))
            out, _ = self.attn(seq, c, s, None)
            return out.view(b, t, n, d)
        if self.kind == "temporal":
            seq = h.transpose(1, 2).reshape(b * n, t, d)
            c, s = (
                a.transpose(0, 1).unsqueeze(0).expand(b, -1, -1, -1).reshape(b * n, 1, t, -1)
                for a in (cos, sin)
            )
        else:
            seq = h.reshape(b, t * n, d)
            c, s = (a.reshape(1, 1, t * n, -1) for a in (cos, sin))
        past = cache.layers.get(layer) if cache is not None else None
        out, kv = self.attn(seq, c, s, mask, past)
        if cache is not None and write_cache:
            cache.layers[layer] = kv
        if self.kind == "temporal":
            return out.view(b, n, t, d).transpose(1, 2)
        return out.view(b, t, n, d)


class OutputHead(nn.Module):
    """One ensemble member's output layers: final adaLN (``out_modulation``) and the unpatchify
    projection (``patch_out``), as on ``DynamicsTransformer`` itself (which is member 0)."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.out_modulation = nn.Linear(dim, 2 * dim)
        self.patch_out = nn.Linear(dim, out)


class DynamicsTransformer(nn.Module):
    """Patchify -> frame-causal blocks -> unpatchify, conditioned per frame on actions.

    ``in_features`` / ``out_features``: features per latent position going in and out
    (latent channels for the diffusion head; an embedding width in and codebook logits out
    for the MaskGIT head).

    ``model.ensemble = K > 1``: K members on one shared trunk, each with its own top
    ``model.ensemble_depth`` blocks and output layers (final adaLN + unpatchify). Member 0 owns the
    last ``ensemble_depth`` of the ``depth`` blocks and ``out_modulation`` / ``patch_out``; member
    ``k > 0`` owns ``blocks[depth + (k-1) e : depth + k e]`` (``e = ensemble_depth``) and
    ``ensemble_heads[k-1]``. ``blocks`` thus holds every block (the runtime checkpoints and compiles
    them all) and with one member is what it always was. ``forward(members=True)`` gives each
    member's output, otherwise their mean.
    """

    def __init__(self, cfg: DynamicsConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        self.cfg = cfg
        p, d = cfg.patch_size, cfg.dim
        self.in_features, self.out_features = in_features, out_features
        self.patch_in = nn.Linear(in_features * p * p, d)
        kinds = ["spatial", "temporal"] if cfg.factorized else ["full"]
        # One kind per block, read by the forward (masks) and trim_cache: the depth blocks of the
        # trunk and member 0, then each further ensemble member's copies of the top ones.
        self.block_kinds = [kinds[i % len(kinds)] for i in range(cfg.depth)]
        e = cfg.ensemble_depth if cfg.ensemble > 1 else 0
        self.block_kinds += self.block_kinds[cfg.depth - e :] * (cfg.ensemble - 1)
        self.blocks = nn.ModuleList(
            Block(d, cfg.heads, cfg.mlp_ratio, k, cfg.attention_backend) for k in self.block_kinds
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(d, 2 * d)
        self.patch_out = nn.Linear(d, out_features * p * p)
        if cfg.action_type == "discrete":
            # One extra row: index num_actions is "no action" (e.g. the first frame of a clip).
            self.action_embed: nn.Module | None = nn.Embedding(cfg.num_actions + 1, d)
        elif cfg.action_type == "continuous":
            self.action_embed = nn.Linear(cfg.action_dim, d)
        else:
            self.action_embed = None
        # Codes of a latent action model (clips without action labels), index latent_actions = none.
        self.latent_action_embed = nn.Embedding(cfg.latent_actions + 1, d) if cfg.latent_actions > 0 else None
        # Ensemble members past the first (model.ensemble > 1); none at all with one head, so such a
        # model's parameters and checkpoints are what they always were.
        self.ensemble_heads = (
            nn.ModuleList(OutputHead(d, out_features * p * p) for _ in range(cfg.ensemble - 1))
            if cfg.ensemble > 1
            else None
        )

    # -- set-up -------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter in place (after ``to_empty()`` from the meta device)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
            elif isinstance(m, nn.RMSNorm):
                nn.init.ones_(m.weight)
        # adaLN-Zero: every block starts as the identity, the output starts at zero.
        for blk in self.blocks:
            nn.init.zeros_(blk.modulation.weight)
            nn.init.zeros_(blk.modulation.bias)
        for m in (self.out_modulation, self.patch_out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        if self.ensemble_heads is not None:
            # Members start from their own random projections (model.ensemble_prior_scale; adaLN still
            # zero): from a zero start they stay inside the span of what training showed, where they
            # all agree, and hardly disagree on anything the data never showed.
            std = self.cfg.ensemble_prior_scale / math.sqrt(self.cfg.dim)
            for mod, proj in self.output_heads():
                nn.init.zeros_(mod.weight)
                nn.init.zeros_(mod.bias)
                nn.init.normal_(proj.weight, std=std)

    def output_heads(self) -> list[tuple[nn.Linear, nn.Linear]]:
        """``(out_modulation, patch_out)`` of each ensemble member, member 0 first."""
        heads = [(self.out_modulation, self.patch_out)]
        for m in self.ensemble_heads or ():
            heads.append((m.out_modulation, m.patch_out))
        return heads

    def member_blocks(self) -> tuple[range, list[range]]:
        """Indices into ``blocks``: the shared trunk's, and each ensemble member's own (member 0 first)."""
        cfg = self.cfg
        e = cfg.ensemble_depth if cfg.ensemble > 1 else 0
        own = [range(cfg.depth - e, cfg.depth)]
        own += [range(cfg.depth + k * e, cfg.depth + (k + 1) * e) for k in range(cfg.ensemble - 1)]
        return range(cfg.depth - e), own

    # -- forward ------------------------------------------------------------------------------
    def embed_actions(self, actions: Actions, batch: int, frames: int) -> Tensor | None:
        """Per-frame action embedding ``[B, T, D]`` (or None when the model takes no actions).

        ``actions``: real actions (a tensor) or ``FrameActions`` (real and latent). Discrete real
        actions: long ``[B, T]`` in ``0..num_actions`` (``num_actions`` itself means "no action",
        e.g. for the first frame of a clip), or ``[B, T, k]`` when ``k`` source actions fall in one
        latent frame (their embeddings are summed). Continuous: ``[B, T, A]`` or ``[B, T, k, A]``,
        likewise. Latent codes ``[B, T]`` (models with ``latent_actions > 0``) add their own
        embedding. A kind the model takes but ``actions`` lacks is "none" for every frame.
        """
        cfg = self.cfg
        acts = FrameActions.of(actions) or FrameActions()
        emb = None
        if self.action_embed is not None:
            emb = self._embed_real(acts.real, batch, frames)
        if acts.latent is not None and self.latent_action_embed is None:
            raise ValueError(
                "latent action codes were given but this model was trained without a latent action "
                "model (model.latent_actions=0)"
            )
        if self.latent_action_embed is not None:
            latent = acts.latent
            device = self.patch_in.weight.device
            if latent is None:
                latent = torch.full((batch, frames), cfg.latent_actions, dtype=torch.long, device=device)
            if tuple(latent.shape) != (batch, frames) or latent.is_floating_point():
                raise ValueError(
                    f"latent actions have shape {tuple(latent.shape)} {latent.dtype}, expected integer "
                    f"codes {(batch, frames)} in [0, latent_actions={cfg.latent_actions}]"
                )
            lat = self.latent_action_embed(latent.long())
            emb = lat if emb is None else emb + lat
        return emb

    def _embed_real(self, actions: Tensor | None, batch: int, frames: int) -> Tensor:
        cfg = self.cfg
        assert self.action_embed is not None
        device = self.patch_in.weight.device
        if actions is None:  # "no action" for every frame: a clip without labels
            if cfg.action_type == "discrete":
                actions = torch.full((batch, frames), cfg.num_actions, dtype=torch.long, device=device)
            else:
                actions = torch.zeros(batch, frames, cfg.action_dim, device=device)
        item = () if cfg.action_type == "discrete" else (cfg.action_dim,)
        shape = tuple(actions.shape)
        grouped = len(shape) == 3 + len(item) and shape[3:] == item
        if shape[:2] != (batch, frames) or not (shape[2:] == item or grouped):
            raise ValueError(
                f"actions have shape {shape}, expected {(batch, frames, *item)} (one per latent frame) "
                f"or {(batch, frames, 'k', *item)} (k per latent frame)"
            )
        if cfg.action_type == "discrete":
            # Values are checked once per loss or rollout by the head (check_action_values), not
            # here: this runs at every sampling step, and a value check costs a host sync.
            if actions.is_floating_point():
                raise ValueError(
                    f"discrete actions must be integers in [0, num_actions={cfg.num_actions}], got "
                    f"{actions.dtype}; store KEY.actions.npy as integers or set action_type=continuous"
                )
            emb = self.action_embed(actions.long())
        else:
            emb = self.action_embed(actions.to(self.patch_in.weight.dtype))
        return emb.sum(dim=2) if emb.dim() == 4 else emb

    def forward(
        self,
        x: Tensor,
        actions: Actions = None,
        cond: Tensor | None = None,
        cache: KVCache | None = None,
        write_cache: bool = False,
        return_state: bool = False,
        members: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``x`` ``[B, T, h, w, F_in]`` -> ``[B, T, h, w, F_out]``; with ``return_state`` also the
        last block's tokens ``[B, T, N, D]`` (what the reward and continuation heads pool into a
        per-frame state, ``dynamics.outcome``). ``members``: each ensemble member's output,
        ``[K, B, T, h, w, F_out]`` (``K = model.ensemble``; ``[1, ...]`` with one head); otherwise
        the members' mean. With an ensemble the state is the members' mean last-block tokens.

        ``actions``: ``[B, T]`` long or ``[B, T, A]`` float, the action that led to each frame
        (or ``[B, T, k(, A)]``: ``k`` actions per frame, summed), or ``FrameActions`` with latent
        action codes too; see ``embed_actions``.
        ``cond``: extra per-frame conditioning ``[B, T, D]`` (e.g. noise level). With ``cache``
        the ``T`` frames follow the cached ones; ``write_cache`` appends them to it.
        """
        cfg, p = self.cfg, self.cfg.patch_size
        b, t, h, w, f = x.shape
        if f != self.in_features or h % p or w % p:
            raise ValueError(
                f"input has shape {tuple(x.shape)}; expected [B, T, h, w, {self.in_features}] with h, w "
                f"multiples of patch_size={p}"
            )
        gh, gw = h // p, w // p
        tokens = (
            x.reshape(b, t, gh, p, gw, p, f).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, gh * gw, p * p * f)
        )
        tokens = self.patch_in(tokens)
        act = self.embed_actions(actions, b, t)
        c = torch.zeros(b, t, cfg.dim, device=x.device, dtype=tokens.dtype) if cond is None else cond
        if act is not None:
            if cfg.action_injection == "add":
                tokens = tokens + act[:, :, None]
            else:
                c = c + act
        offset = cache.frames if cache is not None else 0
        cos, sin = rope_angles(t, gh, gw, cfg.dim // cfg.heads, offset, device=x.device)
        # Masks are built once per forward and shared by the blocks (FlexAttention's block mask
        # and the dense mask are memoised on the mask object). One new frame needs none.
        n, past = gh * gw, offset
        masks = {
            "full": None if t == 1 else FrameCausalMask(t * n, (past + t) * n, n, past),
            "temporal": None if t == 1 else FrameCausalMask(t, past + t, 1, past),
            "spatial": None,
        }
        trunk, own = self.member_blocks()

        def run(x: Tensor, indices: range) -> Tensor:
            for i in indices:
                x = self.blocks[i](x, c, cos, sin, masks[self.block_kinds[i]], cache, i, write_cache)
            return x

        tokens = run(tokens, trunk)
        fo = self.out_features
        outs, states = [], []
        for indices, (modulation, patch_out) in zip(own, self.output_heads(), strict=True):
            state = run(tokens, indices)
            shift, scale = modulation(F.silu(c))[:, :, None].chunk(2, dim=-1)
            out = patch_out(self.norm_out(state) * (1 + scale) + shift)
            outs.append(
                out.reshape(b, t, gh, gw, p, p, fo).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h, w, fo)
            )
            states.append(state)
        if cache is not None and write_cache:
            cache.frames += t
        if len(outs) == 1:
            out, state = (outs[0][None] if members else outs[0]), states[0]
        else:
            out = torch.stack(outs) if members else torch.stack(outs).mean(0)
            state = torch.stack(states).mean(0)
        return (out, state) if return_state else out

    def trim_cache(self, cache: KVCache, keep_frames: int) -> None:
        """Keep only the last ``keep_frames`` frames' keys and values (a sliding context window).

        A rollout past ``max_frames`` then attends over no more frames, and no longer relative
        positions, than training showed it. The kept frames' features still carry what they saw
        when they were written, so this equals rerunning the window only while nothing was dropped.
        """
        n = self.cfg.tokens_per_frame
        for i, kind in enumerate(self.block_kinds):
            if i not in cache.layers:
                continue
            per_frame = n if kind == "full" else 1
            k, v = cache.layers[i]
            keep = keep_frames * per_frame
            if k.shape[2] > keep:
                cache.layers[i] = (k[:, :, -keep:], v[:, :, -keep:])

    # -- accounting ---------------------------------------------------------------------------
    def forward_flops(self, frames: int) -> float:
        """Forward FLOPs for one clip of ``frames`` latent frames (``DynamicsHead.flops_per_sample``
        makes the training count of them).

        Counts matmuls (2 FLOPs per multiply-add): per-token linears over ``T*N`` tokens,
        per-frame linears (adaLN, action) over ``T`` frames, and attention scores + weighted
        sum over the key/query pairs the frame-causal mask allows (``N^2 T (T+1) / 2`` per full
        block), which is the work a block-sparse kernel has to do.
        """
        cfg, d = self.cfg, self.cfg.dim
        n, t = cfg.tokens_per_frame, frames
        hidden = int(d * cfg.mlp_ratio)
        heads = self.output_heads()  # every ensemble member's output layers run on every token
        per_token = self.patch_in.weight.numel() + sum(proj.weight.numel() for _, proj in heads)
        per_frame = sum(mod.weight.numel() for mod, _ in heads)
        if isinstance(self.action_embed, nn.Linear):
            per_frame += self.action_embed.weight.numel()
        pairs = 0
        for kind in self.block_kinds:
            per_token += 4 * d * d + 2 * d * hidden
            per_frame += 6 * d * d
            if kind == "full":
                pairs += n * n * t * (t + 1) // 2
            elif kind == "spatial":
                pairs += t * n * n
            else:
                pairs += n * t * (t + 1) // 2
        return 2.0 * per_token * t * n + 2.0 * per_frame * t + 4.0 * d * pairs


def frame_slice(actions: Actions, start: int, end: int) -> Actions:
    """Actions of frames ``start..end-1`` (None stays None)."""
    if isinstance(actions, FrameActions):
        return actions.frames(start, end)
    return None if actions is None else actions[:, start:end]


def check_rollout_actions(actions: Actions, batch: int, frames: int) -> None:
    acts = FrameActions.of(actions) or FrameActions()
    for name, a in (("actions", acts.real), ("latent actions", acts.latent)):
        if a is not None and (a.shape[0] != batch or a.shape[1] != frames):
            raise ValueError(
                f"{name} have shape {tuple(a.shape)}; a rollout needs one per frame of "
                f"context + horizon: [B={batch}, {frames}]"
            )


def value_ranges(*tensors: Tensor | None) -> list[tuple[float, float] | None]:
    """``(min, max)`` of each tensor (``None`` for a missing or empty one).

    One fused ``aminmax`` reduction per tensor and one host sync in all, on any device. NaN
    anywhere makes both NaN and an infinity shows as the min or max, so the pair also tells
    whether a tensor is finite.
    """
    present = [t for t in tensors if t is not None and t.numel()]
    if not present:
        return [None] * len(tensors)
    device = present[0].device
    stats = torch.cat(
        [torch.stack(torch.aminmax(t.detach())).to(device=device, dtype=torch.float64) for t in present]
    ).tolist()
    out: list[tuple[float, float] | None] = []
    for t in tensors:
        if t is None or not t.numel():
            out.append(None)
        else:
            out.append((stats.pop(0), stats.pop(0)))
    return out


def _span(lo: float, hi: float) -> str:
    show = lambda v: str(int(v)) if math.isfinite(v) and v == int(v) else str(v)  # noqa: E731
    return f"[{show(lo)}, {show(hi)}]"


def check_action_values(
    actions: Tensor | None, span: tuple[float, float] | None, cfg: DynamicsConfig, name: str = "actions"
) -> None:
    """Refuse actions the model cannot embed; ``span`` is their ``(min, max)`` (``value_ranges``).

    Discrete actions must be integers in ``0..num_actions`` (``num_actions`` = no action);
    continuous ones must be finite (NaN or inf would poison every frame they touch).
    """
    if actions is None or span is None or cfg.action_type == "none":
        return
    lo, hi = span
    finite = math.isfinite(lo) and math.isfinite(hi)
    if cfg.action_type == "discrete":
        n = cfg.num_actions
        if actions.is_floating_point():
            raise ValueError(
                f"{name} must be integer action indices in [0, num_actions={n}], got {actions.dtype}"
                f"{'' if finite else ' holding NaN/inf'}; store KEY.actions.npy as integers, or set "
                "model.action_type=continuous"
            )
        if lo < 0 or hi > n:
            raise ValueError(
                f"{name} hold discrete actions in {_span(lo, hi)}, outside the allowed [0, {n}] "
                f"(model.num_actions={n}; index {n} means no action): set model.num_actions to the "
                "environment's action count, or drop the clips whose KEY.actions.npy holds these values"
            )
    elif not finite:
        raise ValueError(
            f"{name} hold non-finite continuous actions (range {_span(lo, hi)}): drop or repair the "
            "clips whose KEY.actions.npy holds NaN/inf"
        )


def check_latent_action_values(
    latent: Tensor | None, span: tuple[float, float] | None, cfg: DynamicsConfig, name: str = "latent actions"
) -> None:
    """Refuse latent action codes outside ``0..latent_actions`` (``latent_actions`` = none)."""
    if latent is None or span is None:
        return
    k = cfg.latent_actions
    lo, hi = span
    if k <= 0:
        raise ValueError(
            f"{name} were given but this model was trained without a latent action model "
            "(model.latent_actions=0)"
        )
    if latent.is_floating_point() or not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or hi > k:
        raise ValueError(
            f"{name} hold codes in {_span(lo, hi)}; valid codes are integers in [0, {k - 1}] "
            f"(model.latent_actions={k}; {k} means no latent action)"
        )
