"""Autoregressive dynamics over discrete FSQ indices: frame by frame, MaskGIT inside a frame.

Training (as in Genie): every frame gets its own mask ratio ``r = cos(pi/2 * u)``,
``u ~ U(0, 1)``; masked positions are replaced by a ``[MASK]`` token and the model predicts
them (cross-entropy on masked positions only) through frame-causal attention, so it learns to
fill in frame ``t`` from any partly revealed version of it and its past.

Sampling: past frames are fully revealed (and read from the KV cache). A new frame starts all
masked; in each of ``maskgit_steps`` steps every masked position is sampled (temperature,
top-k), the most confident samples are kept and the rest masked again, following the cosine
schedule, until the last step reveals everything.

Ensemble (``model.ensemble = K > 1``): K members on a shared trunk (``DynamicsTransformer``),
each trained on the masked cross-entropy (clips weighted per member,
``DynamicsHead.member_weights``). Sampling draws from the members' mean distribution; the members'
disagreement on a position is the Jensen-Shannon divergence of their distributions (nats,
``0 .. log K``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.config import DynamicsConfig
from dynamics.head import DynamicsHead
from dynamics.transformer import Actions, KVCache, frame_slice


class MaskGITDynamics(DynamicsHead):
    """Next-frame prediction over indices ``[B, T, h, w]`` (long, ``0..codebook_size-1``)."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__(cfg, cfg.dim, cfg.codebook_size)
        self.mask_id = cfg.codebook_size
        self.token_embed = nn.Embedding(cfg.codebook_size + 1, cfg.dim)

    def init_head_weights(self) -> None:
        nn.init.normal_(self.token_embed.weight, std=0.02)

    def check_input(self, indices: Tensor, name: str) -> None:
        if indices.dim() != 4 or indices.dtype != torch.long:
            raise ValueError(
                f"{name} must be long [B, T, h, w] FSQ indices, got {tuple(indices.shape)} {indices.dtype}"
            )

    def check_input_range(self, lo: float, hi: float, name: str) -> None:
        k = self.cfg.codebook_size
        if lo < 0 or hi >= k:
            raise ValueError(
                f"{name} hold indices in [{int(lo)}, {int(hi)}], outside [0, codebook_size={k}); set "
                "model.codebook_size to the tokenizer's"
            )

    def logits(
        self,
        tokens: Tensor,
        actions: Actions,
        cache: KVCache | None = None,
        write_cache: bool = False,
        return_state: bool = False,
        members: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Tokens ``[B, T, h, w]`` (``mask_id`` where hidden) -> logits ``[B, T, h, w, V]`` over the
        ``V = codebook_size`` codes (and with ``return_state`` the last block's tokens ``[B, T, N, D]``).
        ``members``: each ensemble member's logits ``[K, B, T, h, w, V]``; otherwise with an ensemble
        the log of the members' mean distribution (``ensemble_logits``)."""
        ensemble = self.cfg.ensemble > 1
        emb = self.token_embed(tokens)
        out = self.backbone(emb, actions, None, cache, write_cache, return_state, ensemble)
        logits, state = out if return_state else (out, None)
        if ensemble and not members:
            logits = ensemble_logits(logits)
        elif members and not ensemble:
            logits = logits[None]
        return (logits, state) if return_state else logits

    def frame_state(self, frames: Tensor, actions: Actions) -> Tensor:
        return self.logits(frames, actions, return_state=True)[1]

    def loss(
        self,
        indices: Tensor,
        actions: Actions = None,
        rewards: Tensor | None = None,
        continues: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Masked-token cross-entropy for ``indices`` ``[B, T, h, w]``; ``loss`` and ``masked_accuracy``
        (and the outcome heads' losses, ``add_outcome_losses``). With an ensemble (``model.ensemble =
        K > 1``) the loss is the mean of the members' losses, each clip weighted per member
        (``member_weights``), ``masked_accuracy`` that of the members' mean distribution, and
        ``ensemble_disagreement`` the members' mean Jensen-Shannon divergence on masked positions."""
        self.check_input(indices, "indices")
        self.check_values(indices, actions, "indices")
        b, t = indices.shape[:2]
        ratio = torch.cos(0.5 * math.pi * torch.rand(b, t, 1, 1, device=indices.device))
        masked = torch.rand(indices.shape, device=indices.device) < ratio
        weights = self.member_weights(b, indices.device)  # [K, B, 1]; None with one head
        hidden = torch.where(masked, self.mask_id, indices)
        if weights is None:
            logits, state = self.logits(hidden, actions, return_state=True)
            ce = F.cross_entropy(logits.float().flatten(0, 3), indices.flatten(), reduction="none")
            w = masked.flatten().float()
            count = w.sum().clamp_min(1.0)
            acc = ((logits.argmax(-1) == indices).flatten().float() * w).sum() / count
            losses = {"loss": (ce * w).sum() / count, "masked_accuracy": acc.detach()}
            return self.add_outcome_losses(losses, state, rewards, continues)
        member_logits, state = self.logits(hidden, actions, return_state=True, members=True)
        k = member_logits.shape[0]
        target = indices.expand(k, *indices.shape)
        ce = F.cross_entropy(member_logits.float().flatten(0, 4), target.flatten(), reduction="none")
        w = masked.float()  # [B, T, h, w]
        count = w.sum().clamp_min(1.0)
        per_clip = (ce.view(k, b, -1) * w.view(1, b, -1)).sum(-1)  # [K, B]
        mean = ensemble_logits(member_logits.detach())
        acc = ((mean.argmax(-1) == indices).float() * w).sum() / count
        js = (jensen_shannon(member_logits.detach()) * w).sum() / count
        losses = {
            "loss": (per_clip * weights[..., 0]).sum() / (k * count),
            "masked_accuracy": acc,
            "ensemble_disagreement": js,
        }
        return self.add_outcome_losses(losses, state, rewards, continues)

    # -- sampling (the loop is DynamicsHead.rollout) ------------------------------------------
    def sampling_options(
        self, steps: int | None = None, temperature: float | None = None, top_k: int | None = None
    ) -> dict[str, Any]:
        """``steps`` per frame (default ``maskgit_steps``); ``temperature=0`` picks the most likely
        token (deterministic), else tokens are drawn; ``top_k`` (0: all). ``None``: the config's."""
        cfg = self.cfg
        return {
            "steps": steps or cfg.maskgit_steps,
            "temperature": cfg.temperature if temperature is None else temperature,
            "top_k": cfg.top_k if top_k is None else top_k,
        }

    def write_cache(self, frames: Tensor, before: Tensor | None, actions: Actions, cache: KVCache) -> None:
        self.logits(frames, actions, cache, True)

    def sample_frame(
        self,
        frames: Tensor,
        t: int,
        actions: Actions,
        cache: KVCache | None,
        generator: torch.Generator | None,
        steps: int = 1,
        temperature: float = 0.0,
        top_k: int = 0,
    ) -> tuple[Tensor, Tensor]:
        """Frame ``t`` from all-masked, revealing the most confident samples step by step; the
        ensemble members' disagreement ``[B]``: the mean over positions of their Jensen-Shannon
        divergence at the step that revealed each position (zeros with one head)."""
        b, _, h, w = frames.shape
        n = h * w
        window = max(1, self.cfg.max_frames - 1)
        ensemble = self.cfg.ensemble > 1
        cur = torch.full((b, 1, h, w), self.mask_id, dtype=torch.long, device=frames.device)
        spread = torch.zeros(b, n, device=frames.device)
        for j in range(steps):
            if cache is not None:
                logits = self.logits(cur, frame_slice(actions, t, t + 1), cache, members=ensemble)
            else:
                start = max(0, t - window)
                seq = torch.cat([frames[:, start:], cur], 1)
                logits = self.logits(seq, frame_slice(actions, start, t + 1), members=ensemble)
                logits = logits[..., -1:, :, :, :]
            if ensemble:
                js = jensen_shannon(logits).flatten(1)  # [B, n]
                logits = ensemble_logits(logits)
            sampled, conf = _sample(logits.float().flatten(1, 3), temperature, top_k, generator)
            hidden = cur.flatten(1) == self.mask_id
            if ensemble:
                # Every hidden position is scored now; those hidden again are scored again later.
                spread = torch.where(hidden, js, spread)
            cur_flat = torch.where(hidden, sampled, cur.flatten(1))
            # Positions revealed earlier are never hidden again.
            conf = torch.where(hidden, conf, torch.full_like(conf, float("inf")))
            keep_hidden = int(math.floor(n * math.cos(0.5 * math.pi * (j + 1) / steps)))
            if keep_hidden > 0:
                lowest = conf.topk(keep_hidden, dim=1, largest=False).indices
                cur_flat = cur_flat.scatter(1, lowest, self.mask_id)
            cur = cur_flat.view(b, 1, h, w)
        return cur, spread.mean(1)


def ensemble_logits(members: Tensor) -> Tensor:
    """Logits of K members ``[K, ..., V]`` -> the log of their mean distribution ``[..., V]`` (float32)."""
    logp = members.float().log_softmax(-1)
    return torch.logsumexp(logp, dim=0) - math.log(members.shape[0])


def jensen_shannon(members: Tensor) -> Tensor:
    """The Jensen-Shannon divergence of K members' distributions, logits ``[K, ..., V]`` -> ``[...]``
    float32 in nats (``0 .. log K``): the entropy of the mean distribution minus the members' mean
    entropy, i.e. the mutual information between the member and the token (BALD)."""
    logp = members.float().log_softmax(-1)
    mean = ensemble_logits(members)
    entropy = lambda lp: -(lp.exp() * lp).sum(-1)  # noqa: E731
    return (entropy(mean) - entropy(logp).mean(0)).clamp_min(0.0)


def _sample(
    logits: Tensor,
    temperature: float,
    top_k: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """Logits ``[B, L, K]`` -> (tokens ``[B, L]``, their probabilities ``[B, L]``)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if temperature <= 0:
        tokens = logits.argmax(-1)
        probs = logits.softmax(-1)
    else:
        probs = (logits / temperature).softmax(-1)
        tokens = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
    return tokens, probs.gather(-1, tokens[..., None])[..., 0]
