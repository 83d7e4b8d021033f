"""JEPA against reconstruction on Atari play: linear probes from each representation to the true
action and reward of held-out transitions (``dynamics.jepa_eval``).

    .venv/bin/python -m bench.jepa                          # Breakout, 12 + 6 whole episodes
    .venv/bin/python -m bench.jepa --steps 800 --game ALE/Pong-v5

Episodes are played by ``pipeline.samples.atari_episode`` (the policy of ``vidworld samples``) and
made into ``[1, 32, 32]`` "latents" as in ``bench/reward.py`` (no tokenizer). The split is by
episode: training and held-out episodes have different seeds; both models train on the training
episodes only, and the probes are fitted on the training episodes and scored on the held-out ones.

Two models train on the same random 8-frame windows for the same number of steps:

- ``jepa``: ``dynamics.jepa`` (EMA target, VICReg guards), its predictor under the recorded actions;
- ``dynamics``: the diffusion dynamics model (``dynamics.DiffusionDynamics``), a reconstruction
  objective (the next frame's latents), under the recorded actions.

Representations probed (features of frames t and t + 1 -> the movement class of the action into
t + 1, none / right / left, and the reward into t + 1):

- ``latents``: the frames themselves (the reconstruction baseline with a perfect decoder);
- ``dynamics_mean`` / ``dynamics_grid``: the dynamics model's per-frame state under no action, mean
  over positions / average-pooled to a 4x4 grid of positions (the grid keeps *where*);
- ``jepa``: the JEPA encoder's embedding (the encoder never sees an action);
- ``*_untrained``: the same architectures at initialisation (what the architecture alone gives).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from bench.reward import to_latents
from dynamics import DynamicsConfig, build_dynamics
from dynamics.action_probe import movement_classes
from dynamics.jepa import JEPAConfig, build_jepa
from dynamics.jepa_eval import (
    ProbeClip,
    dynamics_features,
    format_table,
    jepa_features,
    latent_features,
    probe_table,
)
from dynamics.outcome import outcome_targets
from dynamics.task import group_actions
from pipeline.samples import atari_episode, make_atari_env
from runtime.progress import Progress


def episode(game: str, seed: int, frames: int, num_actions: int, classes: np.ndarray) -> dict:
    """One episode: latents ``[T, 1, 32, 32]``, actions into each frame ``[T]`` (frame 0: no action),
    their movement classes ``[T]`` (-1 at frame 0) and the reward into each frame ``[T]`` (NaN at 0)."""
    f, actions, rewards, _ = atari_episode(game, seed, frames)
    t = len(f)
    acts = group_actions(torch.from_numpy(actions)[None], t, 1, num_actions)[0, :, 0]
    reward, _ = outcome_targets(torch.from_numpy(rewards)[None], None, t, 1)
    labels = np.concatenate([[-1], classes[actions[: t - 1]]])
    return {
        "x": torch.from_numpy(to_latents(f)),
        "actions": acts,
        "labels": labels,
        "reward": reward[0].numpy(),
    }


def windows(
    train: list[dict], batch: int, length: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows: latents ``[B, 1, length, 32, 32]`` and actions ``[B, length]``."""
    xs, acts = [], []
    for _ in range(batch):
        ep = train[rng.integers(len(train))]
        s = int(rng.integers(0, len(ep["x"]) - length + 1))
        xs.append(ep["x"][s : s + length])
        acts.append(ep["actions"][s : s + length])
    return torch.stack(xs).permute(0, 2, 1, 3, 4), torch.stack(acts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--game", default="ALE/Breakout-v5")
    ap.add_argument("--train", type=int, default=12, help="training episodes")
    ap.add_argument("--heldout", type=int, default=6, help="held-out episodes")
    ap.add_argument("--frames", type=int, default=3000, help="max frames per episode")
    ap.add_argument("--steps", type=int, default=200, help="training steps of each model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    env = make_atari_env(args.game)
    num_actions = env.action_space.n
    env.close()
    classes = movement_classes(args.game)
    t0 = time.perf_counter()
    train = [episode(args.game, 1000 + i, args.frames, num_actions, classes) for i in range(args.train)]
    held = [episode(args.game, 2000 + i, args.frames, num_actions, classes) for i in range(args.heldout)]
    t_data = time.perf_counter() - t0

    length = 8
    jcfg = JEPAConfig(
        latent_channels=1, latent_height=32, latent_width=32, max_frames=length, num_actions=num_actions,
        patch_size=4, channels=32, depth=2, groups=8, embed_dim=64, context=2,
    )  # fmt: skip
    dcfg = DynamicsConfig(
        latent_channels=1, latent_height=32, latent_width=32, patch_size=4, max_frames=length,
        dim=64, depth=2, heads=4, num_actions=num_actions,
    )  # fmt: skip
    jepa, dyn = build_jepa(jcfg), build_dynamics(dcfg)
    jepa0, dyn0 = build_jepa(jcfg).eval(), build_dynamics(dcfg).eval()  # untrained controls
    report: dict = {}
    for name, model, lr in (("jepa", jepa, 1e-3), ("dynamics", dyn, 3e-3)):
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        rng = np.random.default_rng(args.seed)  # the same windows for both models
        t0 = time.perf_counter()
        model.train()
        bar = Progress(f"train {name}", args.steps, unit="steps", interval=30.0)
        for step in range(args.steps):
            x, a = windows(train, args.batch, length, rng)
            out = model(x, a)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            bar.update(1)
            if step % 100 == 0 or step == args.steps - 1:
                shown = {k: round(float(v.detach()), 4) for k, v in out.items()}
                print(f"{name} step {step}: {shown}", flush=True)
        bar.close()
        model.eval()
        report[f"{name}_train_s"] = round(time.perf_counter() - t0, 1)
        report[f"{name}_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)

    def clips(eps: list[dict]) -> list[ProbeClip]:
        return [ProbeClip(ep["x"][None].permute(0, 2, 1, 3, 4), ep["labels"], ep["reward"]) for ep in eps]

    reps = {
        "latents": latent_features,
        "dynamics_mean": dynamics_features(dyn),
        "dynamics_grid": dynamics_features(dyn, grid=4),
        "dynamics_grid_untrained": dynamics_features(dyn0, grid=4),
        "jepa": jepa_features(jepa),
        "jepa_untrained": jepa_features(jepa0),
    }
    t0 = time.perf_counter()
    table = {}
    bar = Progress("probes", len(reps), unit="representations", interval=0.0)
    for name, rep in reps.items():
        table.update(probe_table(clips(train), clips(held), {name: rep}))
        bar.update(1)
    report["probe_s"] = round(time.perf_counter() - t0, 1)
    z = jepa.embed(torch.cat([c.latents for c in clips(held)], dim=2))[0]
    std = z.std(0)
    report.update(
        game=args.game,
        train_episodes=args.train,
        train_frames=sum(len(ep["x"]) for ep in train),
        heldout_episodes=args.heldout,
        heldout_frames=sum(len(ep["x"]) for ep in held),
        steps=args.steps,
        batch=args.batch,
        data_s=round(t_data, 1),
        jepa_heldout_embed_std_mean=round(float(std.mean()), 4),
        jepa_heldout_embed_std_min=round(float(std.min()), 4),
        machine=f"{platform.machine()} {torch.get_num_threads()} threads",
    )
    print(json.dumps(report, indent=1))
    print(json.dumps(table, indent=1, default=float))
    print(format_table(table))


if __name__ == "__main__":
    main()
