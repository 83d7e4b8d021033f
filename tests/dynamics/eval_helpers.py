"""Builders for the rollout / evaluation tests: a tiny tokenizer, clip + latent shards, stub
dynamics models (small ``nn.Module``s with the ``rollout`` signature, each a known predictor),
counterfactual branch files, and a real dynamics run folder as ``vidworld train`` leaves it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from dynamics import build_dynamics
from dynamics.config import DynamicsConfig
from dynamics.evaluate import EvaluateConfig, resize_frames
from dynamics.rollout import WorldModel
from dynamics.task import group_actions
from pipeline.branches import Branch, read_branch, write_branch
from runtime.checkpoint import WEIGHTS
from runtime.config import to_yaml
from runtime.tracking import WandbConfig
from tests.tokenizer.eval_fixtures import write_decoded_shards
from tests.tokenizer.helpers import randomized, tiny_config
from tokenizer import save_tokenizer
from tokenizer.evaluate import iter_split
from tokenizer.metrics import from_uint8

LATENT_FRAMES = 4  # 13 source frames at tau=4; 16x16 clips, 2x2 latents at spatial compression 8
SPLITS = ["train", "heldout", "heldout", "train", "heldout"]


def dyn_config(**kw) -> DynamicsConfig:
    base = dict(
        latent_channels=4,
        latent_height=2,
        latent_width=2,
        patch_size=2,
        max_frames=4,
        dim=32,
        depth=1,
        heads=2,
        temporal_compression=4,
        latent_scale=2.0,
        num_actions=4,
        sampling_steps=3,
    )
    base.update(kw)
    return DynamicsConfig(**base)


def make_data(root: Path) -> dict:
    """Tokenizer export, clip shards and latent shards under ``root``."""
    cfg = tiny_config()
    tok = randomized(cfg, seed=3)
    save_tokenizer(tok, cfg, root / "tok")
    clips = write_decoded_shards(root / "latents", root / "clips", tok, SPLITS, latent_frames=LATENT_FRAMES)
    return {"tok": tok, "clips": clips, "root": root}


class OracleDynamics(nn.Module):
    """Returns the true future latents of whichever clip starts with the given context."""

    def __init__(self, sequences: list[Tensor]) -> None:
        super().__init__()
        self.sequences = sequences  # model space [1, C, T, h, w]

    def rollout(self, context: Tensor, actions, horizon: int, **_) -> Tensor:
        tc = context.shape[2]
        for s in self.sequences:
            if torch.equal(s[:, :, :tc].to(context.dtype), context):
                return s[:, :, tc : tc + horizon].to(context.dtype)
        raise AssertionError("context of no known clip")


class CopyLastDynamics(nn.Module):
    """Repeats the last context frame (ignores the actions)."""

    def rollout(self, context: Tensor, actions, horizon: int, **_) -> Tensor:
        return context[:, :, -1:].repeat(1, 1, horizon, 1, 1)


class ActionOracleDynamics(nn.Module):
    """Follows the actions: the true future under the clip's recorded actions, the last context
    frame repeated under any others."""

    def __init__(self, sequences: list[tuple[Tensor, Tensor]]) -> None:
        super().__init__()
        self.sequences = sequences  # (model-space [1, C, T, h, w], actions [1, T, tau])

    def rollout(self, context: Tensor, actions: Tensor, horizon: int, **_) -> Tensor:
        tc = context.shape[2]
        for s, a in self.sequences:
            if torch.equal(s[:, :, :tc].to(context.dtype), context):
                if torch.equal(a[:, : tc + horizon], actions):
                    return s[:, :, tc : tc + horizon].to(context.dtype)
                return context[:, :, -1:].repeat(1, 1, horizon, 1, 1)
        raise AssertionError("context of no known clip")


def world(data: dict, model: nn.Module, cfg: DynamicsConfig | None = None) -> WorldModel:
    return WorldModel(
        model, cfg or dyn_config(), data["tok"], step=7, checkpoint="stub", tokenizer_path="tok"
    )


def oracle(data: dict, cfg: DynamicsConfig | None = None, follow_actions: bool = False) -> WorldModel:
    """A world model with the perfect predictor (``follow_actions``: only under recorded actions)."""
    cfg = cfg or dyn_config()
    w = world(data, nn.Identity(), cfg)
    seqs = [w.prepare(s) for s in iter_split(str(data["root"] / "latents"), None)]
    w.dynamics = ActionOracleDynamics(seqs) if follow_actions else OracleDynamics([x for x, _ in seqs])
    return w


def write_run(folder: Path, cfg: DynamicsConfig, step: int = 7, seed: int = 0, perturb: float = 0.0) -> Path:
    """A finished dynamics run folder: ``config.yaml`` + ``model.safetensors`` (step in metadata).

    ``perturb`` > 0 adds that much Gaussian noise to every weight: a fresh model's zero-initialised
    output layers make it copy the last frame whatever the noise, as a trained one does not.
    """
    torch.manual_seed(seed)
    model = build_dynamics(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    run = {
        "run_dir": str(folder),
        "task": "dynamics",
        "model": dataclasses.asdict(cfg),
        "data": {"shards": "x"},
    }
    (folder / "config.yaml").write_text(to_yaml(run))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"step": str(step)})
    return folder


class IndexOracleDynamics(nn.Module):
    """The perfect predictor over FSQ indices ``[B, T, h, w]``."""

    def __init__(self, sequences: list[Tensor]) -> None:
        super().__init__()
        self.sequences = sequences

    def rollout(self, context: Tensor, actions, horizon: int, **_) -> Tensor:
        tc = context.shape[1]
        for s in self.sequences:
            if torch.equal(s[:, :tc], context):
                return s[:, tc : tc + horizon]
        raise AssertionError("context of no known clip")


def fsq_oracle(root: Path) -> WorldModel:
    """FSQ tokenizer, its index shards from real clips under ``root``, and the index oracle."""
    from tests.tokenizer.eval_fixtures import write_latent_shards

    cfg = tiny_config(bottleneck="fsq")
    tok = randomized(cfg, seed=4)
    save_tokenizer(tok, cfg, root / "tok")
    write_latent_shards(root / "latents", root / "clips", tok, SPLITS, frames=13, size=16)
    dcfg = dyn_config(head="maskgit", codebook_size=tok.codebook_size)
    w = WorldModel(nn.Identity(), dcfg, tok, step=1, checkpoint="stub", tokenizer_path="tok")
    w.dynamics = IndexOracleDynamics([w.prepare(s)[0] for s in iter_split(str(root / "latents"), None)])
    return w


def write_branches(
    folder: Path,
    count: int = 2,
    context_frames: int = 6,
    horizon_frames: int = 8,
    height: int = 24,
    width: int = 32,
    seed: int = 0,
    game: str = "ALE/Breakout-v5",
) -> list[Path]:
    """``count`` branch files (pipeline/branches.py) of random frames: a shared past, then two
    different futures under two action sequences that differ at every step from ``C - 1`` on
    (actions in 0..3, the test models' vocabulary)."""
    rng = np.random.default_rng(seed)
    c, h = context_frames, horizon_frames
    paths = []
    for i in range(count):
        past = rng.integers(0, 256, (c, height, width, 3), dtype=np.uint8)
        fut_a, fut_b = (rng.integers(0, 256, (h, height, width, 3), dtype=np.uint8) for _ in range(2))
        actions_a = rng.integers(0, 4, c + h).astype(np.int64)
        actions_b = actions_a.copy()
        actions_b[c - 1 :] = (actions_a[c - 1 :] + 1) % 4
        branch = Branch(
            frames_a=np.concatenate([past, fut_a]),
            frames_b=np.concatenate([past, fut_b]),
            actions_a=actions_a,
            actions_b=actions_b,
            rewards_a=np.zeros(c + h, np.float32),
            rewards_b=np.zeros(c + h, np.float32),
            fps=15.0,
            game=game,
            context_frames=c,
            horizon_frames=h,
        )
        name = game.split("/")[-1].split("-")[0].lower()
        paths.append(write_branch(folder / f"{name}-b{i:02d}.npz", branch))
    return paths


class ReplayDynamics(nn.Module):
    """Replays the true future of the branch whose actions it is given (encoded independently of
    dynamics.evaluate); with ``follow_actions=False`` always branch A's future (a model that
    ignores the actions). Any other context (the clip evaluation's) gets its last frame repeated."""

    def __init__(self, branches: list[list[tuple[Tensor, Tensor]]], follow_actions: bool = True) -> None:
        super().__init__()
        # Per branch, for A then B: (model-space x [1, C, T, h, w], grouped actions [1, T, tau]).
        self.branches = branches
        self.follow_actions = follow_actions

    def rollout(self, context: Tensor, actions: Tensor, horizon: int, **_) -> Tensor:
        tc = context.shape[2]
        for pair in self.branches:
            for x, a in pair:
                if a.shape[1] == tc + horizon and torch.equal(a, actions.cpu()):
                    assert torch.allclose(x[:, :, :tc], context.float(), atol=1e-2), "another context"
                    future = x if self.follow_actions else pair[0][0]
                    return future[:, :, tc : tc + horizon].to(context.dtype)
        return CopyLastDynamics().rollout(context, actions, horizon)


def replay(
    data: dict,
    paths: list[Path],
    context: int,
    horizon: int,
    follow_actions: bool = True,
    size: int = 16,
) -> WorldModel:
    """A world model over ``data``'s tokenizer whose dynamics is ``ReplayDynamics`` of the branch
    files ``paths`` (squashed to ``size``, windows of ``context + horizon`` latent frames)."""
    cfg = dyn_config()
    tau = cfg.temporal_compression
    n_ctx, n = 1 + (context - 1) * tau, 1 + (context + horizon - 1) * tau
    branches = []
    for path in paths:
        b = read_branch(path)
        window = slice(b.context_frames - n_ctx, b.context_frames - n_ctx + n)
        pair = []
        for frames, actions in ((b.frames_a, b.actions_a), (b.frames_b, b.actions_b)):
            video = from_uint8(torch.from_numpy(resize_frames(frames[window], size, "squash"))[None])
            with torch.no_grad():
                x = data["tok"].encode(video) * cfg.latent_scale
            grouped = group_actions(torch.from_numpy(actions[window])[None], context + horizon, tau, 4)
            pair.append((x, grouped))
        branches.append(pair)
    return world(data, ReplayDynamics(branches, follow_actions), cfg)


def evaluate_argv(root: Path, run: Path, output: Path, *extra: str) -> list[str]:
    """``vidworld evaluate`` arguments for a run folder on the data of ``make_data(root)``."""
    return [
        "evaluate",
        "jobs/evaluate.yaml",
        f"checkpoint={run}",
        f"tokenizer={root / 'tok'}",
        f"shards={root / 'latents'}",
        f"clips={root / 'clips'}",
        f"output={output}",
        "max_clips=2",
        "device=cpu",
        *extra,
    ]


def eval_config(root: Path, out: Path, **kw) -> EvaluateConfig:
    """An ``EvaluateConfig`` on the data of ``make_data(root)``: 2 context, 2 rolled-out latent
    frames, no W&B; ``kw`` overrides any key."""
    base = dict(
        checkpoint="stub",
        tokenizer=str(root / "tok"),
        shards=str(root / "latents"),
        clips=str(root / "clips"),
        output=str(out),
        context=2,
        horizon=2,
        wandb=WandbConfig(mode="disabled"),
    )
    return EvaluateConfig(**{**base, **kw})


def write_weights(path: Path, step: int) -> Path:
    """A run folder with exported weights of ``step`` (what ``runtime.trained.trained_step`` reads)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path / WEIGHTS), metadata={"step": str(step)})
    return path
