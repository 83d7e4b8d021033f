"""What a learned representation says about the true actions and rewards, on held-out clips: the JEPA
against the reconstruction baselines.

A *representation* maps a clip's latents ``[1, C, T, h, w]`` to per-frame features ``[T, F]``:

- ``latent_features``: the tokenizer's latents themselves, flattened (what a reconstruction
  objective, the tokenizer's, learned);
- ``dynamics_features(model)``: a dynamics model's per-frame state, its last block's tokens
  (``DynamicsHead.frame_state``) averaged over the frame's positions or over a coarse grid of them,
  computed under *no action* so that the state cannot simply repeat an action it was given; clips
  longer than the model's ``max_frames`` run in consecutive windows of ``max_frames``;
- ``jepa_features(model)``: the JEPA's online encoder embeddings (``dynamics.jepa``), which never
  see an action.

For each transition ``t -> t + 1`` the probe's input is the features of frames ``t`` and ``t + 1``
side by side ``[2F]``, and its targets are the action that led to frame ``t + 1`` (a class: the
movement class of ``dynamics.action_probe.movement_classes`` for Atari clips, or the raw action
index) and the reward into frame ``t + 1`` (``dynamics.outcome.outcome_targets``). Probes are fitted
on the *training* clips and scored on the *held-out* ones (the shards' ``split``, EVALUATION.md):

- actions: multinomial logistic regression (``action_probe``'s, standardised features, L2) ->
  ``action_accuracy`` and ``action_balanced_accuracy`` (mean recall over the classes present),
  beside ``action_chance`` (1 / those classes) and ``action_majority_accuracy`` (always the
  training set's most frequent class);
- rewards: ridge regression to ``symlog(reward)`` (clipped to the training range) ->
  ``reward_auroc`` (the predicted ``|reward|`` scoring the held-out reward events, 0.5 for no
  signal), ``reward_mse`` (reward units) beside ``reward_mse_zero`` (always 0).

``evaluate_jepa(JEPA_RUN, SHARDS)`` runs the three (the dynamics model's when ``dynamics_run`` is
given) over latent shards; ``bench/jepa.py`` trains both models on Atari frames and prints the table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynamics.action_probe import _fit_predict, _scores, game_of, movement_classes, transition_labels
from dynamics.outcome import auroc, outcome_targets, symexp, symlog

# Latents [1, C, T, h, w] (as stored, not scaled) -> per-frame features [T, F].
Representation = Callable[[Tensor], Tensor]


@dataclass
class ProbeClip:
    """One clip for the probes: ``latents`` float ``[1, C, T, h, w]`` as stored (each representation
    applies its own ``latent_scale``), ``actions`` int ``[T]`` (the class of the action into frame
    ``t``; -1: frame 0 or unknown), ``rewards`` float ``[T]`` (the reward into frame ``t``; NaN:
    unknown)."""

    latents: Tensor
    actions: np.ndarray
    rewards: np.ndarray


# ---------------------------------------------------------------------------------------------------
# Representations


def latent_features(latents: Tensor) -> Tensor:
    """``[1, C, T, h, w]`` -> ``[T, C*h*w]``: the latents themselves (the reconstruction baseline)."""
    return latents[0].transpose(0, 1).flatten(1).float()


def jepa_features(model: nn.Module, latent_scale: float = 1.0) -> Representation:
    """The JEPA's per-frame embeddings ``[T, D]`` (``JEPA.embed``)."""

    def features(latents: Tensor) -> Tensor:
        p = next(iter(model.parameters()))
        return model.embed(latents.to(p.device, p.dtype) * latent_scale)[0].float().cpu()

    return features


def dynamics_features(model: nn.Module, latent_scale: float = 1.0, grid: int | None = None) -> Representation:
    """A continuous (diffusion) dynamics model's per-frame state, under no action, in consecutive
    windows of ``max_frames``: the last block's tokens averaged over the frame's positions ``[T, dim]``
    (``grid=None``), or average-pooled to a ``grid x grid`` map of positions and flattened
    ``[T, grid*grid*dim]`` (keeps *where*, which a plain mean loses)."""
    if getattr(model.cfg, "is_discrete", False):
        raise ValueError(
            "the probes read continuous latents; a dynamics model on FSQ indices (head: maskgit) cannot "
            "be compared on them: give a head: diffusion run"
        )
    cfg = model.cfg
    gh, gw = cfg.latent_height // cfg.patch_size, cfg.latent_width // cfg.patch_size

    @torch.no_grad()
    def features(latents: Tensor) -> Tensor:
        p = next(iter(model.parameters()))
        frames = model.to_frames(latents.to(p.device, p.dtype) * latent_scale)  # [1, T, h, w, C]
        step = int(cfg.max_frames)
        states = []
        for s in range(0, frames.shape[1], step):
            tokens = model.frame_state(frames[:, s : s + step], None)[0].float()  # [T, N, D]
            if grid is None:
                states.append(tokens.mean(1).cpu())
            else:
                t, _, d = tokens.shape
                pooled = F.adaptive_avg_pool2d(tokens.transpose(1, 2).reshape(t, d, gh, gw), grid)
                states.append(pooled.flatten(1).cpu())
        return torch.cat(states)

    return features


# ---------------------------------------------------------------------------------------------------
# Probes


def transition_rows(
    features: np.ndarray, actions: np.ndarray, rewards: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame ``features`` ``[T, F]``, ``actions`` ``[T]``, ``rewards`` ``[T]`` -> one row per
    transition ``t -> t + 1``: (features of ``t`` and ``t + 1`` ``[T-1, 2F]``, action into ``t + 1``
    ``[T-1]``, reward into ``t + 1`` ``[T-1]``)."""
    f = np.asarray(features, np.float64)
    return (
        np.concatenate([f[:-1], f[1:]], axis=1),
        np.asarray(actions[1:]),
        np.asarray(rewards[1:], np.float64),
    )


def _ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge regression on standardised features (the intercept unpenalised) -> test predictions,
    clipped to the training targets' range: a feature nearly constant in training (a pixel that
    changed once) is scaled up by standardising, and a held-out frame where it changes would
    otherwise extrapolate without bound (a reward of 1e21 after ``symexp``)."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / std).float()  # float32: the Gram matrix dominates the cost
    xs = torch.from_numpy((x_test - mean) / std).float()
    y0 = float(y_train.mean())
    yt = torch.from_numpy(y_train - y0).float()
    w = torch.linalg.solve(xt.T @ xt + alpha * torch.eye(xt.shape[1]), xt.T @ yt)
    return np.clip((xs @ w).double().numpy() + y0, y_train.min(), y_train.max())


def probe_scores(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    weight_decay: float = 1e-3,
    ridge_alpha: float = 10.0,
    steps: int = 100,
) -> dict[str, float]:
    """Action and reward probes fitted on ``train`` rows and scored on ``test`` rows, each
    ``(features [N, F], action classes [N] (-1: unknown), rewards [N] (NaN: unknown))`` as
    ``transition_rows`` gives them; see the module docstring for the figures."""
    out: dict[str, float] = {}
    (xa, ya, ra), (xb, yb, rb) = train, test
    ka, kb = ya >= 0, yb >= 0
    if ka.sum() >= 2 and kb.sum() >= 1 and len(np.unique(ya[ka])) >= 2:
        num_classes = int(max(ya[ka].max(), yb[kb].max())) + 1
        pred = _fit_predict(xa[ka], ya[ka], xb[kb], num_classes, weight_decay, steps)
        acc, bal = _scores(pred, yb[kb])
        majority = np.bincount(ya[ka]).argmax()
        out.update(
            action_accuracy=acc,
            action_balanced_accuracy=bal,
            action_chance=1.0 / len(np.unique(yb[kb])),
            action_majority_accuracy=float((yb[kb] == majority).mean()),
            action_n_train=int(ka.sum()),
            action_n_test=int(kb.sum()),
        )
    fa, fb = np.isfinite(ra), np.isfinite(rb)
    if fa.sum() >= 2 and fb.sum() >= 1 and np.any(ra[fa] != 0):
        pred = symexp(torch.from_numpy(_ridge(xa[fa], symlog(torch.from_numpy(ra[fa])).numpy(), xb[fb],
                                              ridge_alpha))).numpy()  # fmt: skip
        truth = rb[fb]
        out.update(
            reward_auroc=auroc(np.abs(pred), truth != 0),
            reward_mse=float(((pred - truth) ** 2).mean()),
            reward_mse_zero=float((truth**2).mean()),
            reward_events_train=int((ra[fa] != 0).sum()),
            reward_events_test=int((truth != 0).sum()),
        )
    return out


def probe_rows(clips: Iterable[ProbeClip], rep: Representation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The transition rows of every clip under one representation, stacked."""
    rows = [transition_rows(rep(c.latents).numpy(), c.actions, c.rewards) for c in clips]
    if not rows:
        raise ValueError("no clips to probe")
    return tuple(np.concatenate([r[i] for r in rows]) for i in range(3))  # type: ignore[return-value]


def probe_table(
    train: list[ProbeClip], test: list[ProbeClip], representations: dict[str, Representation]
) -> dict[str, dict[str, float]]:
    """``{name: probe_scores}`` for each representation, probes fitted on ``train`` clips and scored
    on ``test`` clips."""
    return {
        name: probe_scores(probe_rows(train, rep), probe_rows(test, rep))
        for name, rep in representations.items()
    }


COLUMNS = ("action_balanced_accuracy", "action_accuracy", "action_chance", "action_majority_accuracy",
           "reward_auroc", "reward_mse", "reward_mse_zero")  # fmt: skip


def format_table(table: dict[str, dict[str, float]]) -> str:
    """The probe table as a markdown table, one row per representation."""
    lines = ["| representation | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, scores in table.items():
        cells = [f"{scores[c]:.4g}" if c in scores else "-" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Trained runs on latent shards


def shard_clips(
    shards: str, split: str | None, tau: int, labels: str = "movement", max_clips: int | None = None
) -> list[ProbeClip]:
    """The clips of ``split`` in the latent ``shards`` that carry actions, as ``ProbeClip``s.

    ``labels``: ``movement`` (the movement class of each action, ``action_probe.movement_classes``;
    clips whose source is not an ALE game are skipped) or ``raw`` (the action index itself). With
    ``tau`` source frames per latent frame the last action of each group labels it."""
    from pipeline.loader import LoaderConfig, make_loader

    if labels not in ("movement", "raw"):
        raise ValueError(f"labels={labels!r}; choose movement (Atari games) or raw (action indices)")
    loader = make_loader(
        LoaderConfig(shards=shards, batch_size=1, shuffle_buffer=0, resampled=False, split=split,
                     require=["actions"], optional=["rewards"], fields=["latents", "actions", "rewards"])
    )  # fmt: skip
    out: list[ProbeClip] = []
    for batch in loader:
        if max_clips is not None and len(out) >= max_clips:
            break
        latents = batch.get("latents")
        if not isinstance(latents, Tensor):
            raise ValueError(
                f"clip {batch['key'][0]} has no KEY.latents.npy: the probes need continuous latents "
                "(FSQ-index latents are not supported)"
            )
        x = latents.float().permute(0, 2, 1, 3, 4)  # [1, C, T, h, w]
        acts = batch["actions"][0].numpy()
        if acts.ndim != 1 or np.issubdtype(acts.dtype, np.floating):
            raise ValueError(
                f"clip {batch['key'][0]}: the probes need discrete actions [T], got {acts.shape}"
            )
        if labels == "movement":
            try:
                classes = movement_classes(game_of(batch["meta"][0]) or "")
            except ValueError:
                continue
        else:
            classes = np.arange(int(acts.max(initial=0)) + 1)
        t = x.shape[2]
        rewards = np.full(t, np.nan)
        present = batch.get("rewards_present")
        if isinstance(batch.get("rewards"), Tensor) and (present is None or bool(present[0])):
            rewards = outcome_targets(batch["rewards"], None, t, tau)[0][0].numpy()
        out.append(ProbeClip(x, transition_labels(acts, t, tau, classes), rewards))
    return out


def evaluate_jepa(
    jepa_run: str | os.PathLike,
    shards: str,
    dynamics_run: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "heldout",
    labels: str = "movement",
    max_clips: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """The probe table of the JEPA in ``jepa_run`` beside the raw latents (and the dynamics model in
    ``dynamics_run``), fitted on ``train_split`` clips of the latent ``shards`` and scored on
    ``test_split`` clips (at most ``max_clips`` each). Returns ``{"train_clips", "test_clips",
    "labels", "representations": {name: scores}}``."""
    from runtime.trained import load_trained

    cfg, _, jepa = load_trained(jepa_run, device)
    tau = int(cfg.model.temporal_compression)
    reps: dict[str, Representation] = {"latents": latent_features}
    if dynamics_run is not None:
        dcfg, _, dyn = load_trained(dynamics_run, device)
        reps["dynamics"] = dynamics_features(dyn.eval(), float(dcfg.model.latent_scale))
    reps["jepa"] = jepa_features(jepa.eval(), float(cfg.model.latent_scale))
    train = shard_clips(shards, train_split, tau, labels, max_clips)
    test = shard_clips(shards, test_split, tau, labels, max_clips)
    for name, clips in ((train_split, train), (test_split, test)):
        if not clips:
            raise ValueError(
                f"no {name!r} clips with actions in {shards} (labels={labels}): the probes need clips "
                "with KEY.actions.npy on both sides of the split"
            )
    return {
        "train_clips": len(train),
        "test_clips": len(test),
        "labels": labels,
        "representations": probe_table(train, test, reps),
    }
