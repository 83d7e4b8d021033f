"""Dynamics on labelled and unlabelled clips together: the loader's optional fields, which clips
keep their labels (``label_fraction``), latent action codes beside real actions, and a real
``vidworld train`` run over a mix of shards where a missing label never crashes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.task import label_share
from pipeline.loader import collate
from tests.dynamics.dotworld import as_latents, dot_world
from tests.dynamics.test_task import task_for, train_dynamics_yaml, write_latent_shards


def _sample(key: str, actions: bool) -> dict:
    s = {"key": key, "meta": {"source": f"/v/{key}.mp4"}, "latents": np.zeros((3, 2, 4, 4), np.float16)}
    if actions:
        s["actions"] = np.arange(2, dtype=np.int64) + 1
    return s


def test_collate_fills_an_optional_field_and_says_which_clips_have_it():
    batch = collate([_sample("a", True), _sample("b", False), _sample("c", True)], optional=["actions"])
    assert batch["actions_present"].tolist() == [True, False, True]
    assert batch["actions"].tolist() == [[1, 2], [0, 0], [1, 2]]
    with pytest.raises(ValueError, match=r"data.optional=\[actions\]"):
        collate([_sample("a", True), _sample("b", False)])


def test_unlabelled_clips_get_no_action_and_label_fraction_hides_a_fixed_share():
    cfg = DynamicsConfig(max_frames=3, num_actions=4)
    task = task_for(cfg)
    batch = collate([_sample("a", True), _sample("b", False), _sample("c", True)], optional=["actions"])
    out = task.prepare(batch)
    assert out["labeled"].tolist() == [True, False, True]
    assert out["actions"][1].eq(cfg.num_actions).all()  # "no action" throughout
    assert out["actions"][0, 1:, 0].tolist() == [1, 2] and out["actions"][0, 0, 0] == cfg.num_actions

    # label_fraction: the same clips keep labels every time, and about that share of them.
    shares = [label_share(f"clip{i}") for i in range(2000)]
    assert 0.08 < np.mean(np.array(shares) < 0.1) < 0.12
    part = task_for(DynamicsConfig(max_frames=3, num_actions=4, label_fraction=0.5))
    many = collate([_sample(f"k{i}", True) for i in range(64)], optional=["actions"])
    kept = part.prepare(many)["labeled"]
    assert kept.tolist() == [label_share(f"k{i}") < 0.5 for i in range(64)]
    assert 16 < int(kept.sum()) < 48


def test_the_model_takes_real_actions_latent_codes_or_both_and_refuses_bad_codes():
    cfg = DynamicsConfig(latent_actions=3, max_frames=4, sampling_steps=1)
    torch.manual_seed(0)
    model = build_dynamics(cfg).eval()
    # Give the embeddings a visible effect (init is near zero for outputs).
    with torch.no_grad():
        model.backbone.patch_out.weight.normal_(std=0.5)
        model.backbone.latent_action_embed.weight.normal_(std=1.0)
    idx, actions = dot_world(2, 4, size=8)
    x = as_latents(idx).repeat(1, 4, 1, 1, 1)
    ctx = x[:, :, :2]
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    z0 = torch.tensor([[3, 3, 0, 0], [3, 3, 0, 0]])
    z1 = torch.tensor([[3, 3, 1, 2], [3, 3, 2, 1]])
    a = model.rollout(ctx, None, 2, generator=g(), latent_actions=z0)
    b = model.rollout(ctx, None, 2, generator=g(), latent_actions=z1)
    assert not torch.allclose(a, b)  # the codes condition the model
    both = model.rollout(ctx, actions, 2, generator=g(), latent_actions=z0)
    real = model.rollout(ctx, actions, 2, generator=g())
    assert both.shape == real.shape and not torch.allclose(both, real)
    with pytest.raises(ValueError, match=r"valid codes are integers in \[0, 2\]"):
        model.rollout(ctx, None, 2, latent_actions=torch.full((2, 4), 7))
    plain = build_dynamics(DynamicsConfig(max_frames=4))
    with pytest.raises(ValueError, match="without a latent action model"):
        plain.rollout(ctx, None, 2, latent_actions=z0)
    loss = model(x, actions, z1)
    assert torch.isfinite(loss["loss"])


@pytest.mark.integration
def test_a_dynamics_run_over_labelled_and_unlabelled_shards_trains(tmp_path):
    shards = tmp_path / "latents"
    write_latent_shards(shards, "diffusion", clips=8, unlabeled_every=2)
    rows = train_dynamics_yaml(tmp_path, shards, "diffusion", "data.require=[]", "data.optional=[actions]")
    labeled = [r["train/labeled_clips"] for r in rows.values()]
    assert all(0.0 <= v <= 1.0 for v in labeled) and 0.0 < np.mean(labeled) < 1.0
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.integration
def test_a_trained_latent_action_model_labels_unlabelled_clips_and_its_evaluation_goes_stale(tmp_path):
    from dynamics.lam_eval import METRICS, evaluate_lam, is_complete
    from tests.dynamics.test_lam import train_lam, write_world_shards

    shards, lam = tmp_path / "latents", tmp_path / "lam"
    write_world_shards(shards)
    train_lam(lam, shards)

    # The chain's held-out probe of the codes: written once, then complete until the latents change.
    out = tmp_path / "lam_eval"
    info = evaluate_lam(lam, shards, out)
    assert info["games"]["breakout"]["n"] > 0 and (out / METRICS).is_file()
    assert is_complete(lam, shards, out)
    write_world_shards(shards, clips=8)  # re-tokenized: other content under the same names
    assert not is_complete(lam, shards, out)

    # The dynamics task runs the frozen model on the clips' latents: codes for the unlabelled clip,
    # "none" at frame 0 and, with latent_action_mix=0, for the labelled one.
    cfg = DynamicsConfig(latent_channels=2, latent_height=8, latent_width=16, max_frames=4, lam=str(lam),
                         latent_actions=8, latent_action_mix=0.0)  # fmt: skip
    task = task_for(cfg)
    x = torch.randn(2, 2, 4, 8, 16)
    codes = task.latent_actions(x, torch.tensor([True, False]), cfg.latent_action_mix)
    assert codes.shape == (2, 4) and codes[:, 0].eq(8).all() and codes[0].eq(8).all()
    assert ((codes[1, 1:] >= 0) & (codes[1, 1:] < 8)).all()
    model = build_dynamics(cfg)
    labeled = torch.tensor([True, False])
    batch = {"x": x, "actions": torch.full((2, 4, 1), cfg.num_actions), "labeled": labeled}
    assert torch.isfinite(task.loss(model, batch)["loss"])
    with pytest.raises(ValueError, match="latent_actions=6"):
        task_for(DynamicsConfig(latent_channels=2, latent_height=8, latent_width=16, lam=str(lam),
                                latent_actions=6)).latent_model(torch.device("cpu"))  # fmt: skip


def test_label_fraction_hides_labels_in_training_only_and_a_single_clip_counts_as_one():
    from dynamics.rollout import WorldModel

    cfg = DynamicsConfig(max_frames=3, num_actions=4, label_fraction=0.0)
    sample = _sample("clip-with-a-long-key", True)
    one = {k: (torch.from_numpy(v)[None] if isinstance(v, np.ndarray) else v) for k, v in sample.items()}
    assert task_for(cfg).labeled(one).tolist() == [False]  # one clip, whatever its key's length

    class Tok:  # what WorldModel reads of a tokenizer
        temporal_compression, is_discrete = 1, False

    world = WorldModel(build_dynamics(cfg), cfg, Tok())
    out = world.prepare_batch({**sample, "latents": torch.from_numpy(sample["latents"]),
                               "actions": torch.from_numpy(sample["actions"])})  # fmt: skip
    assert out["actions"].shape == (1, 3, 1) and out["actions"][0, 1:, 0].tolist() == [1, 2]
