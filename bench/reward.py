"""Reward and continuation heads on Atari play: held-out reward-event AUROC, reward MSE and
continuation accuracy beside the trivial baselines (``dynamics.outcome.outcome_metrics``).

    .venv/bin/python -m bench.reward                          # Breakout, 16 + 6 whole episodes
    .venv/bin/python -m bench.reward --steps 600 --game ALE/Pong-v5

Episodes are played by ``pipeline.samples.atari_episode`` (the policy of ``vidworld samples``), with
their per-frame actions, rewards and terminal flags. The split is by episode (EVALUATION.md): the
training episodes and the held-out ones have different seeds, and no held-out frame is trained on.

No tokenizer: each frame becomes a ``[1, 32, 32]`` "latent" directly (grey, the play area cropped
to rows 32..191, then 5x5 max-pooled so that the 2-pixel ball survives; values in [-1, 1]), one
latent frame per source frame (``temporal_compression`` 1). This measures the heads and the
backbone's per-frame state on real game rewards, not a tokenizer; a run through ``vidworld
tokenize`` latents would add the tokenizer's losses.

Training: random 8-frame windows of the training episodes, the diffusion loss plus the two heads'
losses (``model.reward_head``, ``model.continue_head``). Evaluation: every held-out frame once, clean
(``DynamicsHead.predict_outcomes``), in 8-frame windows that overlap by one frame, so that each
scored frame has its predecessor in view (a reward shows as a change between the two).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.outcome import outcome_metrics, outcome_targets
from dynamics.task import group_actions
from pipeline.samples import atari_episode, make_atari_env


def to_latents(frames: np.ndarray) -> np.ndarray:
    """``uint8 [T, 210, 160, 3]`` -> ``float32 [T, 1, 32, 32]`` in [-1, 1] (see the module docstring)."""
    grey = frames[:, 32:192].mean(-1)  # [T, 160, 160]
    pooled = grey.reshape(len(grey), 32, 5, 32, 5).max(axis=(2, 4))
    return (pooled / 127.5 - 1.0).astype(np.float32)[:, None]


def episode(game: str, seed: int, frames: int, num_actions: int) -> dict[str, torch.Tensor]:
    """One episode as training tensors: latents ``[T, 1, 32, 32]``, actions per latent frame ``[T]``
    (frame 0: "no action"), and the outcome targets ``[T]`` (reward into, continuation after, each frame)."""
    f, actions, rewards, terminals = atari_episode(game, seed, frames)
    t = len(f)
    acts = group_actions(torch.from_numpy(actions)[None], t, 1, num_actions)[0, :, 0]
    reward, cont = outcome_targets(torch.from_numpy(rewards)[None], torch.from_numpy(terminals)[None], t, 1)
    return {"x": torch.from_numpy(to_latents(f)), "actions": acts, "reward": reward[0], "cont": cont[0]}


def windows(frames: int, length: int) -> list[tuple[int, int]]:
    """``(start, end)`` of the evaluation windows of an episode of ``frames`` frames: at most
    ``length`` frames each, each starting at the previous one's last frame, so that every frame but
    the episode's first is scored once with at least its predecessor in view (a window's first
    frame has none: it is context only, and scored by the window before)."""
    out, s = [], 0
    while True:
        e = min(s + length, frames)
        out.append((s, e))
        if e == frames:
            return out
        s = e - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="ALE/Breakout-v5")
    ap.add_argument("--train", type=int, default=16, help="training episodes")
    ap.add_argument("--heldout", type=int, default=6, help="held-out episodes")
    ap.add_argument(
        "--frames", type=int, default=3000, help="max frames per episode (Breakout ends at ~400-550)"
    )
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reward-loss", default="mse", choices=["mse", "twohot"])
    ap.add_argument(
        "--event-fraction", type=float, default=0.0,
        help="share of training windows drawn around a reward event (Breakout: ~2%% of frames have one)",
    )  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    env = make_atari_env(args.game)
    num_actions = env.action_space.n
    env.close()
    t0 = time.perf_counter()
    train = [episode(args.game, 1000 + i, args.frames, num_actions) for i in range(args.train)]
    held = [episode(args.game, 2000 + i, args.frames, num_actions) for i in range(args.heldout)]
    t_data = time.perf_counter() - t0

    cfg = DynamicsConfig(
        latent_channels=1, latent_height=32, latent_width=32, patch_size=4, max_frames=8,
        dim=64, depth=2, heads=4, num_actions=num_actions,
        reward_head=True, reward_loss=args.reward_loss, continue_head=True,
    )  # fmt: skip
    model = build_dynamics(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(args.seed)
    # (episode, frame) of every training reward event, for --event-fraction.
    events = [
        (i, int(f)) for i, ep in enumerate(train) for f in torch.nonzero(ep["reward"].nan_to_num() != 0)
    ]
    t0 = time.perf_counter()
    for step in range(args.steps):
        batch = {k: [] for k in ("x", "actions", "reward", "cont")}
        for _ in range(args.batch):
            if events and rng.random() < args.event_fraction:
                i, f = events[rng.integers(len(events))]
                ep = train[i]  # a window holding frame f at position 1..max_frames-1, inside the episode
                lo, hi = max(0, f - cfg.max_frames + 1), min(f - 1, len(ep["x"]) - cfg.max_frames)
                s = (
                    int(rng.integers(lo, hi + 1))
                    if hi >= lo
                    else max(0, min(f - 1, len(ep["x"]) - cfg.max_frames))
                )
            else:
                ep = train[rng.integers(len(train))]
                s = int(rng.integers(0, len(ep["x"]) - cfg.max_frames + 1))
            for k in batch:
                batch[k].append(ep[k][s : s + cfg.max_frames])
        x = torch.stack(batch["x"]).permute(0, 2, 1, 3, 4)  # [B, C, T, h, w]
        out = model(
            x, torch.stack(batch["actions"]), None, torch.stack(batch["reward"]), torch.stack(batch["cont"])
        )
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            shown = {k: round(float(v.detach()), 4) for k, v in out.items()}
            print(f"step {step}: {shown}", flush=True)
    t_train = time.perf_counter() - t0

    model.eval()
    preds: dict[str, list[np.ndarray]] = {
        "reward": [],
        "continue_prob": [],
        "reward_true": [],
        "cont_true": [],
    }
    for ep in held:
        for s, e in windows(len(ep["x"]), cfg.max_frames):
            x = ep["x"][s:e][None].permute(0, 2, 1, 3, 4)
            p = model.predict_outcomes(x, ep["actions"][s:e][None])
            keep = slice(0 if s == 0 else 1, None)
            preds["reward"].append(p["reward"][0, keep].numpy())
            preds["continue_prob"].append(p["continue_prob"][0, keep].numpy())
            preds["reward_true"].append(ep["reward"][s:e][keep].numpy())
            preds["cont_true"].append(ep["cont"][s:e][keep].numpy())
    cat = {k: np.concatenate(v) for k, v in preds.items()}
    m = outcome_metrics(cat["reward"], cat["reward_true"], cat["continue_prob"], cat["cont_true"])
    train_events = sum(int((ep["reward"].nan_to_num() != 0).sum()) for ep in train)
    report = {
        "game": args.game,
        "train_episodes": args.train,
        "train_frames": sum(len(ep["x"]) for ep in train),
        "train_reward_events": train_events,
        "heldout_episodes": args.heldout,
        "heldout_frames": int(sum(len(ep["x"]) for ep in held)),
        "steps": args.steps,
        "batch": args.batch,
        "reward_loss": args.reward_loss,
        "event_fraction": args.event_fraction,
        "parameters": sum(p.numel() for p in model.parameters()),
        "data_s": round(t_data, 1),
        "train_s": round(t_train, 1),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        **{k: round(v, 4) for k, v in m.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
