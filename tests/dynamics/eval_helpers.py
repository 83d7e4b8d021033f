"""Builders for the rollout / evaluation tests: a tiny tokenizer, clip + latent shards, stub
dynamics models (small ``nn.Module``s with the ``rollout`` signature, each a known predictor)
and a real dynamics run folder as ``vidworld train`` leaves it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from dynamics import build_dynamics
from dynamics.config import DynamicsConfig
from dynamics.rollout import WorldModel
from tests.tokenizer.eval_fixtures import write_decoded_shards
from tests.tokenizer.helpers import randomized, tiny_config
from tokenizer import save_tokenizer
from tokenizer.evaluate import iter_split
from vidworld.config import to_yaml

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


def write_run(folder: Path, cfg: DynamicsConfig, step: int = 7, seed: int = 0) -> Path:
    """A finished dynamics run folder: ``config.yaml`` + ``model.safetensors`` (step in metadata)."""
    torch.manual_seed(seed)
    model = build_dynamics(cfg)
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
