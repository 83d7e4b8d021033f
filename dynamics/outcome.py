"""Reward and continuation heads on the dynamics model's per-frame state (DreamerV3), their
targets from the shards' per-frame rewards and terminal flags, and their held-out figures.

The per-frame state is the backbone's last block output for a frame (``[B, T, N, D]``,
``DynamicsTransformer.forward(return_state=True)``) pooled over its ``N`` tokens with learned
weights per token position, one set per group of ``D / heads`` channels: zero-initialised, so it
starts as the mean. A plain mean can only say *where* something is on the screen once attention has
written position into the tokens (the residual stream carries no absolute position, only rotary
phases inside attention do); the weights let each group watch a region of the screen directly. On
the dot-world tests (BENCHMARKS.md, 2026-12-07) they gave a 10x lower held-out reward MSE than the
plain mean (AUROC 1.00 against 0.96) but a lower continuation accuracy (0.95 against 0.99): a
modest, mixed gain for ``heads x N`` parameters.
Frame-causal attention means the state of latent frame ``t`` has seen frames ``0..t`` and the
actions that led to them.

What a frame's heads predict. With temporal compression ``tau``, latent frame ``t > 0`` holds source
frames ``1 + (t-1) tau .. t tau``, produced by the source actions ``(t-1) tau .. t tau - 1`` (the
group ``dynamics.task.group_actions`` gives frame ``t``).

- Reward: the transition INTO frame ``t``, the summed reward of the actions of its group, as in
  DreamerV3 (``r_t`` read from the state that has seen the frame the actions led to, so a reward
  that shows on the screen, a brick gone, is seen, not foretold). Frame 0 has no transition into
  it: unknown. In a rollout the model generates frame ``t`` and then reads its reward.
- Continuation: whether the episode goes on after frame ``t`` (the transition OUT of it, source
  actions ``t tau .. (t+1) tau - 1``): 0 when one of their terminal flags is set. Not "into": the
  source convention (``pipeline.samples``) records the frame an action is taken at, never the frame
  after the episode's last action, so the terminal transition leads out of the last recorded frame
  into no frame at all. The last recorded frame so plays DreamerV3's terminal observation. Unknown
  (NaN, no loss) where the clip's source frames stop inside the group, unless the episode ended
  inside it.

Reward: ``symlog`` targets (``sign(r) log(1 + |r|)``) with an MSE, or a cross-entropy against a
two-hot encoding over ``reward_bins`` evenly spaced symlog bins in ``[-20, 20]``
(``model.reward_loss``). Continuation: one logit, binary cross-entropy against ``1 - terminal``.
Both output layers start at zero, as in DreamerV3: an untrained model predicts reward 0 and
P(continue) = 1/2.

Held-out figures (``outcome_metrics``): reward-event AUROC (event: reward != 0, score: the
predicted |reward|) against the always-zero predictor's 0.5, reward MSE (reward units) against
always zero's, continuation accuracy against always predicting the held-out majority class.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.config import DynamicsConfig

SYMLOG_RANGE = 20.0  # two-hot bins span symlog rewards [-20, 20] (|reward| up to ~5e8)


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def twohot(y: Tensor, bins: Tensor) -> Tensor:
    """Values ``y`` ``[...]`` (inside the bins' span after clamping) -> weights ``[..., K]`` on the two
    nearest of the ascending ``bins`` ``[K]``, summing to 1 and averaging back to ``y``."""
    y = y.clamp(float(bins[0]), float(bins[-1]))
    hi = torch.searchsorted(bins, y.contiguous()).clamp(1, len(bins) - 1)
    lo = hi - 1
    w_hi = (y - bins[lo]) / (bins[hi] - bins[lo])
    out = torch.zeros(*y.shape, len(bins), device=y.device, dtype=y.dtype)
    out.scatter_(-1, lo[..., None], (1 - w_hi)[..., None])
    out.scatter_add_(-1, hi[..., None], w_hi[..., None])
    return out


def outcome_targets(
    rewards: Tensor | None, terminals: Tensor | None, latent_frames: int, tau: int
) -> tuple[Tensor | None, Tensor | None]:
    """Per-source-frame ``rewards`` ``[B, T]`` and ``terminals`` ``[B, T]`` (bool; ``None``: not
    recorded) -> per-latent-frame targets ``(reward [B, T'], continue [B, T'])``, float, NaN where
    unknown (see the module docstring): ``reward[:, t]`` is the summed reward of source transitions
    ``(t-1) tau .. t tau - 1`` (into frame ``t``; NaN for ``t = 0``), ``continue[:, t]`` is 0 when
    one of the transitions ``t tau .. (t+1) tau - 1`` (out of frame ``t``) ended the episode, else 1.
    Without terminals the continuation target is ``None``."""
    present = rewards if rewards is not None else terminals
    if present is None:
        return None, None
    b, t_src = present.shape[:2]
    span = latent_frames * tau

    def grouped(a: Tensor, fill: float) -> Tensor:
        a = a.float()[:, :span]
        pad = torch.full((b, span - a.shape[1]), fill, device=a.device) if a.shape[1] < span else a[:, :0]
        return torch.cat([a, pad], dim=1).view(b, latent_frames, tau)

    known = grouped(torch.ones(b, t_src, device=present.device), 0.0).bool()
    ended = torch.zeros(b, latent_frames, dtype=torch.bool, device=present.device)
    if terminals is not None:
        ended = (grouped(terminals, 0.0) > 0).any(-1)
    valid = known.all(-1) | ended
    nan = torch.tensor(float("nan"), device=present.device)
    reward = None
    if rewards is not None:
        # The group out of frame t - 1 is the group into frame t; it always lies inside the clip.
        out_of = grouped(rewards, 0.0).sum(-1)
        reward = torch.cat([torch.full_like(out_of[:, :1], float("nan")), out_of[:, :-1]], dim=1)
    cont = None if terminals is None else torch.where(valid, (~ended).float(), nan)
    return reward, cont


def _mlp(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6),
        nn.Linear(dim, dim),
        nn.SiLU(),
        nn.Linear(dim, out),
    )


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    # A batch with no known target still runs the head (every rank must run the same modules under
    # ZeRO-3) and adds a zero with a gradient path.
    return torch.where(valid, values, torch.zeros_like(values)).sum() / valid.sum().clamp_min(1)


class OutcomeHeads(nn.Module):
    """The reward head and/or the continuation head (``model.reward_head``, ``model.continue_head``)
    on the backbone's last block tokens ``[B, T, N, D]``, pooled into per-frame states ``[B, T, D]``."""

    def __init__(self, cfg: DynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # Pooling logits per channel group and token position (softmax over positions).
        self.pool_logits = nn.Parameter(torch.empty(cfg.heads, cfg.tokens_per_frame))
        twohot_bins = cfg.reward_bins if cfg.reward_loss == "twohot" else 1
        self.reward = _mlp(cfg.dim, twohot_bins) if cfg.reward_head else None
        self.cont = _mlp(cfg.dim, 1) if cfg.continue_head else None

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.zeros_(self.pool_logits)  # the mean
        for head in (self.reward, self.cont):
            if head is None:
                continue
            nn.init.trunc_normal_(head[1].weight, std=0.02)
            nn.init.zeros_(head[1].bias)
            nn.init.zeros_(head[3].weight)  # DreamerV3: predict 0 (and P = 1/2) before training
            nn.init.zeros_(head[3].bias)

    def bins(self, device: torch.device) -> Tensor:
        return torch.linspace(-SYMLOG_RANGE, SYMLOG_RANGE, self.cfg.reward_bins, device=device)

    def forward_flops(self, frames: int) -> float:
        """Forward matmul FLOPs of the heads for one clip of ``frames`` latent frames."""
        heads = [h for h in (self.reward, self.cont) if h is not None]
        pool = self.cfg.tokens_per_frame * self.cfg.dim
        return 2.0 * frames * (pool + sum(h[1].weight.numel() + h[3].weight.numel() for h in heads))

    def pool(self, tokens: Tensor) -> Tensor:
        """Tokens ``[B, T, N, D]`` -> per-frame states ``[B, T, D]``."""
        b, t, n, d = tokens.shape
        if n != self.pool_logits.shape[1]:
            raise ValueError(
                f"the outcome heads pool {self.pool_logits.shape[1]} tokens per frame but got {n}: "
                "latent_height, latent_width and patch_size must be those the model was built with"
            )
        g = self.pool_logits.shape[0]
        w = self.pool_logits.softmax(-1).to(tokens.dtype)  # [G, N]
        return torch.einsum("btngc,gn->btgc", tokens.view(b, t, n, g, d // g), w).reshape(b, t, d)

    def predict(self, tokens: Tensor) -> dict[str, Tensor]:
        """Tokens ``[B, T, N, D]`` -> ``reward`` ``[B, T]`` (reward units) and ``continue_prob``
        ``[B, T]``, each present when its head is."""
        state = self.pool(tokens)
        out: dict[str, Tensor] = {}
        if self.reward is not None:
            raw = self.reward(state).float()
            if self.cfg.reward_loss == "twohot":
                raw = (raw.softmax(-1) * self.bins(raw.device)).sum(-1, keepdim=True)
            out["reward"] = symexp(raw[..., 0])
        if self.cont is not None:
            out["continue_prob"] = torch.sigmoid(self.cont(state).float()[..., 0])
        return out

    def loss(self, tokens: Tensor, reward: Tensor | None, cont: Tensor | None) -> dict[str, Tensor]:
        """``reward_loss`` / ``continue_loss`` for tokens ``[B, T, N, D]`` and targets ``[B, T]`` (NaN =
        unknown, ``None`` = not recorded: the head still runs and adds a zero)."""
        state = self.pool(tokens)
        out: dict[str, Tensor] = {}
        if self.reward is not None:
            raw = self.reward(state).float()
            target = (
                reward if reward is not None else torch.full(raw.shape[:2], float("nan"), device=raw.device)
            )
            valid = ~torch.isnan(target)
            y = symlog(torch.nan_to_num(target.float()))
            if self.cfg.reward_loss == "twohot":
                per = -(twohot(y, self.bins(raw.device)) * raw.log_softmax(-1)).sum(-1)
            else:
                per = (raw[..., 0] - y) ** 2
            out["reward_loss"] = _masked_mean(per, valid)
        if self.cont is not None:
            logit = self.cont(state).float()[..., 0]
            target = cont if cont is not None else torch.full_like(logit, float("nan"))
            valid = ~torch.isnan(target)
            per = F.binary_cross_entropy_with_logits(
                logit, torch.nan_to_num(target.float()), reduction="none"
            )
            out["continue_loss"] = _masked_mean(per, valid)
        return out


# --- held-out figures --------------------------------------------------------------------------


def auroc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for the boolean ``label`` (Mann-Whitney U with tied
    scores at their mean rank, so a constant score gives 0.5); NaN when one class is absent."""
    score, label = np.asarray(score, np.float64).ravel(), np.asarray(label, bool).ravel()
    pos, neg = int(label.sum()), int((~label).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), np.float64)
    sorted_scores = score[order]
    # Mean rank (1-based) of each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(score)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return float((ranks[label].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def outcome_metrics(
    reward_pred: np.ndarray | None = None,
    reward_true: np.ndarray | None = None,
    continue_prob: np.ndarray | None = None,
    continue_true: np.ndarray | None = None,
) -> dict[str, float]:
    """Held-out figures of the outcome heads, each beside its trivial baseline. Inputs are per latent
    frame (any shape, NaN targets are dropped); rewards in reward units, ``continue_true`` 1/0.

    ``reward_auroc`` (event: reward != 0, score: |predicted reward|) and ``reward_auroc_zero`` (always
    zero: 0.5); ``reward_mse`` and ``reward_mse_zero``; ``reward_events`` / ``reward_frames`` (counts);
    ``continue_accuracy`` (P > 1/2) and ``continue_accuracy_base_rate`` (always the majority class of
    these frames: an optimistic baseline); ``terminals`` / ``continue_frames``."""
    out: dict[str, float] = {}
    if reward_pred is not None and reward_true is not None:
        pred, true = np.asarray(reward_pred, np.float64).ravel(), np.asarray(reward_true, np.float64).ravel()
        keep = ~np.isnan(true)
        pred, true = pred[keep], true[keep]
        event = true != 0
        out.update(
            reward_frames=float(len(true)),
            reward_events=float(event.sum()),
            reward_auroc=auroc(np.abs(pred), event),
            reward_auroc_zero=auroc(np.zeros_like(pred), event),
            reward_mse=float(np.mean((pred - true) ** 2)) if len(true) else math.nan,
            reward_mse_zero=float(np.mean(true**2)) if len(true) else math.nan,
        )
    if continue_prob is not None and continue_true is not None:
        prob, true = (
            np.asarray(continue_prob, np.float64).ravel(),
            np.asarray(continue_true, np.float64).ravel(),
        )
        keep = ~np.isnan(true)
        prob, true = prob[keep], true[keep] > 0.5
        rate = float(true.mean()) if len(true) else math.nan
        out.update(
            continue_frames=float(len(true)),
            terminals=float((~true).sum()),
            continue_accuracy=float(np.mean((prob > 0.5) == true)) if len(true) else math.nan,
            continue_accuracy_base_rate=max(rate, 1 - rate),
        )
    return out
