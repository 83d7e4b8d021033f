"""How much a latent action model's codes say about the true actions, where a video has them.

The true action is reduced to its *movement class* (``movement_classes``): 0 none, 1 right, 2 left
(FIRE and NOOP are "none": once the ball is in play FIRE moves nothing). Codes are scored against
those classes two ways, on transitions of held-out clips:

- ``nmi``: normalised mutual information (arithmetic-mean normalisation), 1 when code and class
  determine each other, ~0 when independent (a finite sample gives a small positive value: compare
  with ``nmi_shuffled``, the same with the classes permuted).
- ``linear_probe``: a multinomial logistic regression from one-hot codes to the class, trained on half
  the clips and tested on the other half. ``balanced_accuracy`` (mean recall over classes) is the
  headline: a probe whose predictions are independent of the truth scores 1/num_classes in
  expectation whatever the class balance. Its baseline is the same probe on *shuffled codes* (the
  features permuted over all rows, then the same split, train and test): the code-label pairing is
  destroyed on both sides, the distributions of both are kept, averaged over several permutations.
  (Permuting only the training labels is not used: a big code that mostly holds the majority class
  then still maps to that class more often than chance, and the baseline inherits the real signal.)

``evaluate_latent_actions`` runs a trained LAM over the latent shards of a split and reports these per
game and overall (``vidworld`` evaluation and ``bench/`` print them).
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

CLASS_NAMES = ("none", "right", "left")


# ---------------------------------------------------------------------------------------------------
# True actions -> movement classes


def ale_env_id(game: str) -> str:
    """``breakout`` (a sample folder name) or ``ALE/Breakout-v5`` -> the ALE env id ``ALE/Breakout-v5``."""
    if "/" in game:
        return game
    import ale_py
    import gymnasium

    from pipeline.samples import game_name

    gymnasium.register_envs(ale_py)
    for env_id in gymnasium.registry:
        if env_id.startswith("ALE/") and env_id.endswith("-v5") and game_name(env_id) == game.lower():
            return env_id
    raise ValueError(
        f"no ALE game is named {game!r} (folder names are game_name('ALE/Breakout-v5') = 'breakout')"
    )


@functools.cache
def _movement_classes(env_id: str) -> tuple[int, ...]:
    from pipeline.samples import _movement, make_atari_env

    env = make_atari_env(env_id)
    try:
        meanings = env.unwrapped.get_action_meanings()
    finally:
        env.close()
    moves = [_movement(m) for m in meanings]
    horizontal = any("RIGHT" in m or "LEFT" in m for m in moves)
    plus, minus = ("RIGHT", "LEFT") if horizontal else ("UP", "DOWN")
    return tuple(1 if plus in m else 2 if minus in m else 0 for m in moves)


def movement_classes(game: str) -> np.ndarray:
    """The movement class of each action of ``game``'s minimal action set, ``int64 [num_actions]``:
    0 none, 1 right, 2 left (a RIGHT... or LEFT... action, FIRE variants included; a diagonal like
    UPRIGHT counts by its horizontal part; NOOP, FIRE, UP and DOWN are none).

    Games whose actions never move horizontally (UP/DOWN only, e.g. Freeway) use their vertical axis
    instead: UP... -> 1, DOWN... -> 2. ``game``: a folder name (``breakout``) or an env id
    (``ALE/Breakout-v5``). Cached per game. Pong's RIGHT/LEFT move its paddle up/down on screen:
    they stay classes 1/2 (the classes name actions, not screen directions).
    """
    return np.asarray(_movement_classes(ale_env_id(game)), dtype=np.int64)


def game_of(meta: dict[str, Any]) -> str | None:
    """The game of a clip from its JSON ``source`` (``.../atari/breakout/breakout-00.mp4`` -> ``breakout``),
    or None when the clip has no source."""
    source = meta.get("source") if isinstance(meta, dict) else None
    return (Path(source).parent.name or None) if source else None


# ---------------------------------------------------------------------------------------------------
# Scores


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def contingency(
    codes: np.ndarray, labels: np.ndarray, num_codes: int | None = None, num_classes: int | None = None
) -> np.ndarray:
    """``int64 [num_codes, num_classes]``: how often each (code, label) pair occurs."""
    codes, labels = np.asarray(codes, np.int64).ravel(), np.asarray(labels, np.int64).ravel()
    k = num_codes if num_codes is not None else int(codes.max(initial=-1)) + 1
    c = num_classes if num_classes is not None else int(labels.max(initial=-1)) + 1
    table = np.zeros((max(k, 1), max(c, 1)), np.int64)
    np.add.at(table, (codes, labels), 1)
    return table


def nmi(codes: np.ndarray, labels: np.ndarray) -> float:
    """Normalised mutual information ``I(code; label) / ((H(code) + H(label)) / 2)`` in ``[0, 1]``
    (natural logs; sklearn's ``normalized_mutual_info_score`` with ``average_method="arithmetic"``).
    Two constant labellings agree perfectly (1.0); one constant against a varied one is 0.0."""
    codes, labels = np.asarray(codes).ravel(), np.asarray(labels).ravel()
    if codes.shape != labels.shape or codes.size == 0:
        raise ValueError(f"nmi needs two equal, non-empty label arrays; got {codes.shape} and {labels.shape}")
    _, ci = np.unique(codes, return_inverse=True)
    _, li = np.unique(labels, return_inverse=True)
    table = contingency(ci, li).astype(np.float64)
    hc, hl = _entropy(table.sum(1)), _entropy(table.sum(0))
    if hc == 0.0 and hl == 0.0:
        return 1.0
    if hc == 0.0 or hl == 0.0:
        return 0.0
    n = table.sum()
    nz = table > 0
    outer = np.outer(table.sum(1), table.sum(0))
    mi = float((table[nz] / n * np.log(table[nz] * n / outer[nz])).sum())
    return float(min(max(mi / ((hc + hl) / 2), 0.0), 1.0))


def nmi_shuffled(codes: np.ndarray, labels: np.ndarray, seed: int = 0, repeats: int = 5) -> float:
    """``nmi`` with the labels permuted, averaged over ``repeats`` permutations: the finite-sample floor."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).ravel()
    return float(np.mean([nmi(codes, rng.permutation(labels)) for _ in range(repeats)]))


def one_hot(codes: np.ndarray, num_codes: int) -> np.ndarray:
    """Codes ``[N]`` in ``0 .. num_codes-1`` -> float32 ``[N, num_codes]`` one-hot probe features."""
    codes = np.asarray(codes, np.int64).ravel()
    out = np.zeros((codes.size, num_codes), np.float32)
    out[np.arange(codes.size), codes] = 1.0
    return out


def _split(n: int, groups: np.ndarray | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train/test masks: half the groups (clips) each when groups are given (and >= 2), else half the rows."""
    if groups is not None:
        names = np.unique(groups)
        if len(names) >= 2:
            chosen = rng.permutation(names)[: len(names) // 2]
            train = np.isin(groups, chosen)
            return train, ~train
    order = rng.permutation(n)
    train = np.zeros(n, bool)
    train[order[: n // 2]] = True
    return train, ~train


def _fit_predict(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    num_classes: int,
    weight_decay: float,
    steps: int,
) -> np.ndarray:
    """Multinomial logistic regression (L2, full-batch L-BFGS in float64) -> test predictions."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xt = torch.from_numpy((x_train - mean) / std).double()
    yt = torch.from_numpy(y_train).long()
    w = torch.zeros(xt.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, yt) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():  # callers may be under no_grad (the runtime's eval_media is)
        opt.step(closure)
    with torch.no_grad():
        logits = torch.from_numpy((x_test - mean) / std).double() @ w + b
    return logits.argmax(1).numpy()


def _scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(accuracy, balanced accuracy = mean recall over the classes present in ``truth``)."""
    recalls = [float((pred[truth == c] == c).mean()) for c in np.unique(truth)]
    return float((pred == truth).mean()), float(np.mean(recalls))


def linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    groups: np.ndarray | None = None,
    weight_decay: float = 1e-3,
    shuffles: int = 20,
    steps: int = 100,
) -> dict[str, float]:
    """Linear probe from ``features`` ``[N, F]`` (one-hot codes: ``one_hot``) to ``labels`` ``[N]`` int.

    Trained on half the data and tested on the other half: half the ``groups`` (e.g. clip ids, so
    transitions of one clip never sit on both sides) or, without groups, half the rows. Returns
    ``accuracy``, ``balanced_accuracy``, the ``shuffled_accuracy`` / ``shuffled_balanced_accuracy`` of
    the same probe on shuffled codes (the feature rows permuted against the labels before the same
    split; mean of ``shuffles`` permutations; balanced accuracy ~1/num_classes, accuracy ~ what the
    class balance gives), ``n_train`` and ``n_test``.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64).ravel()
    if x.ndim == 1:
        x = x[:, None]
    if x.shape[0] != y.size or y.size < 2:
        raise ValueError(
            f"linear_probe needs >= 2 rows of features and labels alike; got {x.shape}, {y.shape}"
        )
    if y.min() < 0:
        raise ValueError("linear_probe labels must be class indices >= 0")
    rng = np.random.default_rng(seed)
    g = None if groups is None else np.asarray(groups).ravel()
    train, test = _split(y.size, g, rng)
    num_classes = int(y.max()) + 1
    pred = _fit_predict(x[train], y[train], x[test], num_classes, weight_decay, steps)
    acc, bal = _scores(pred, y[test])
    base = []
    for _ in range(shuffles):
        xs = x[rng.permutation(y.size)]
        base.append(
            _scores(_fit_predict(xs[train], y[train], xs[test], num_classes, weight_decay, steps), y[test])
        )
    return {
        "accuracy": acc,
        "balanced_accuracy": bal,
        "shuffled_accuracy": float(np.mean([s[0] for s in base])),
        "shuffled_balanced_accuracy": float(np.mean([s[1] for s in base])),
        "n_train": int(train.sum()),
        "n_test": int(test.sum()),
    }


def code_scores(
    codes: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, num_codes: int, seed: int = 0
) -> dict[str, Any]:
    """Every figure for one set of transitions: ``n``, ``nmi``, ``nmi_shuffled``, the probe's
    ``probe_accuracy`` / ``probe_balanced_accuracy`` and their ``shuffled_`` baselines, and the
    code x class ``contingency`` table (lists, ``[num_codes][3]``)."""
    codes, labels = np.asarray(codes, np.int64).ravel(), np.asarray(labels, np.int64).ravel()
    out: dict[str, Any] = {"n": int(codes.size)}
    if codes.size < 2:
        return out
    probe = linear_probe(one_hot(codes, num_codes), labels, seed=seed, groups=groups)
    out.update(
        nmi=nmi(codes, labels),
        nmi_shuffled=nmi_shuffled(codes, labels, seed=seed),
        probe_accuracy=probe["accuracy"],
        probe_balanced_accuracy=probe["balanced_accuracy"],
        shuffled_probe_accuracy=probe["shuffled_accuracy"],
        shuffled_probe_balanced_accuracy=probe["shuffled_balanced_accuracy"],
        contingency=contingency(codes, labels, num_codes, len(CLASS_NAMES)).tolist(),
    )
    return out


# ---------------------------------------------------------------------------------------------------
# A trained LAM on latent shards


def transition_labels(actions: np.ndarray, latent_frames: int, tau: int, classes: np.ndarray) -> np.ndarray:
    """Source actions ``[T]`` -> the movement class of each latent frame ``[T']`` (-1 at frame 0).

    Latent frame ``i >= 1`` was produced by source actions ``(i-1) tau .. i tau - 1``
    (``dynamics.task.group_actions``); with ``tau > 1`` the *last* of them labels it (the move the
    frame ends with; earlier ones in the group are a coarser signal the code may mix in).
    """
    actions = np.asarray(actions).ravel()
    need = (latent_frames - 1) * tau
    if actions.size < need:
        raise ValueError(
            f"{actions.size} source actions cannot label {latent_frames} latent frames at "
            f"temporal_compression={tau} (need {need}); check model.temporal_compression"
        )
    out = np.full(latent_frames, -1, np.int64)
    if latent_frames > 1:
        last = actions[tau - 1 : need : tau].astype(np.int64)
        if last.min() < 0 or last.max() >= len(classes):
            raise ValueError(
                f"actions {last.min()}..{last.max()} are outside the game's {len(classes)} actions"
            )
        out[1:] = classes[last]
    return out


def evaluate_latent_actions(
    lam_run: str | os.PathLike,
    shards: str,
    split: str | None = "heldout",
    max_clips: int | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Codes of the trained LAM in ``lam_run`` against the true movement class, on the latent shards
    ``shards`` (a folder or spec, ``pipeline.loader.resolve_shards``) of ``split`` that carry actions.

    At most ``max_clips`` clips per game (None: all). Returns ``{"num_codes", "split", "games":
    {game: scores}, "overall": scores, "skipped": {folder: clips}}`` with the scores of
    ``code_scores`` (the overall probe pools every game's transitions; codes need not mean the same
    in every game, so the per-game figures are the ones to judge). Clips whose source folder is not
    an ALE game are counted in ``skipped``.
    """
    from pipeline.loader import LoaderConfig, make_loader
    from runtime.trained import load_trained

    cfg, _, model = load_trained(lam_run, device)
    mcfg = cfg.model
    k, tau = model.num_codes, int(mcfg.temporal_compression)
    loader = make_loader(
        LoaderConfig(
            shards=shards,
            batch_size=1,
            shuffle_buffer=0,
            resampled=False,
            split=split,
            require=["actions"],
            fields=["latents", "actions"],
        )
    )
    per: dict[str, dict[str, list]] = defaultdict(lambda: {"codes": [], "labels": [], "groups": []})
    skipped: dict[str, int] = defaultdict(int)
    clip = 0
    for batch in loader:
        game = game_of(batch["meta"][0]) or "unknown"
        if max_clips is not None and len(per[game]["codes"]) >= max_clips:
            continue
        try:
            classes = movement_classes(game)
        except ValueError:
            skipped[game] += 1
            continue
        latents = batch.get("latents")
        if not isinstance(latents, torch.Tensor):
            raise ValueError(
                f"clip {batch['key'][0]} has no KEY.latents.npy: the LAM needs continuous latents "
                "(FSQ-index latents are not supported)"
            )
        x = (latents.float() * float(mcfg.latent_scale)).permute(0, 2, 1, 3, 4).to(device)
        codes = model.infer(x)[0, 1:].cpu().numpy()
        labels = transition_labels(batch["actions"][0].numpy(), x.shape[2], tau, classes)[1:]
        per[game]["codes"].append(codes)
        per[game]["labels"].append(labels)
        per[game]["groups"].append(np.full(codes.size, clip))
        clip += 1
    per = {g: v for g, v in per.items() if v["codes"]}
    games: dict[str, Any] = {}
    for game, v in sorted(per.items()):
        codes, labels, groups = (np.concatenate(v[n]) for n in ("codes", "labels", "groups"))
        games[game] = {"clips": len(v["codes"]), **code_scores(codes, labels, groups, k, seed)}
    overall: dict[str, Any] = {"clips": 0, "n": 0}
    if per:
        cat = {
            n: np.concatenate([np.concatenate(v[n]) for v in per.values()])
            for n in ("codes", "labels", "groups")
        }
        overall = {"clips": clip, **code_scores(cat["codes"], cat["labels"], cat["groups"], k, seed)}
    return {"num_codes": k, "split": split, "games": games, "overall": overall, "skipped": dict(skipped)}
