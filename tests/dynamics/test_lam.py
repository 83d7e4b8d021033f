"""The latent action model (``dynamics/lam.py``), its task, and the scores of ``dynamics/action_probe.py``:
a LAM trained without labels on a small world recovers the true actions; ``vidworld train jobs/lam.yaml``
trains one on latent shards that ``load_trained`` + ``infer`` and ``evaluate_latent_actions`` read back."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamics.action_probe import (
    evaluate_latent_actions,
    linear_probe,
    movement_classes,
    nmi,
    one_hot,
    transition_labels,
)
from dynamics.lam import LAMConfig, build_lam
from dynamics.lam_task import LAMTask
from pipeline.loader import LoaderConfig
from pipeline.shards import ShardWriter
from runtime.trained import load_trained
from tests.dynamics.test_task import vidworld_train

# ---------------------------------------------------------------------------------------------------
# A small world with known actions


def paddle_world(n: int, frames: int, generator: torch.Generator, height: int = 8, width: int = 16):
    """Latents ``[n, 1, frames, height, width]`` (+1 on objects, -1 background) and actions ``[n, frames]``.

    A two-cell paddle on row 6 moves by the action (0 stays, 1 right, 2 left; ``actions[:, t]`` made
    frame ``t``, ``actions[:, 0]`` is unused); it starts far enough from the walls never to reach them.
    A ball bounces in rows 0..4 with constant speed: a distractor that moves every frame, which the
    past predicts and the latent action therefore need not carry.
    """
    acts = torch.randint(0, 3, (n, frames), generator=generator)
    px = torch.randint(frames, width - frames - 1, (n,), generator=generator)
    by = torch.randint(0, 5, (n,), generator=generator)
    bx = torch.randint(0, width, (n,), generator=generator)
    vy = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    vx = torch.randint(0, 2, (n,), generator=generator) * 2 - 1
    x = -torch.ones(n, 1, frames, height, width)
    rows, step = torch.arange(n), torch.tensor([0, 1, -1])
    for t in range(frames):
        if t > 0:
            px = px + step[acts[:, t]]
            vy = torch.where((by + vy < 0) | (by + vy > 4), -vy, vy)
            vx = torch.where((bx + vx < 0) | (bx + vx >= width), -vx, vx)
            by, bx = by + vy, bx + vx
        x[rows, 0, t, 6, px] = 1
        x[rows, 0, t, 6, px + 1] = 1
        x[rows, 0, t, by, bx] = 1
    return x, acts


def test_lam_trained_without_labels_recovers_the_true_actions():
    torch.manual_seed(0)
    cfg = LAMConfig(latent_channels=1, latent_height=8, latent_width=16, channels=16, depth=1, groups=4)
    model = build_lam(cfg)
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        x, _ = paddle_world(32, 6, g)
        loss = model(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, actions = paddle_world(64, 6, torch.Generator().manual_seed(99))
    codes = model.eval().infer(x)[:, 1:].numpy().ravel()
    labels = actions[:, 1:].numpy().ravel()
    clips = np.repeat(np.arange(64), 5)
    probe = linear_probe(one_hot(codes, model.num_codes), labels, seed=0, groups=clips)
    assert probe["balanced_accuracy"] >= 0.8, probe
    assert probe["shuffled_balanced_accuracy"] <= 0.45, probe
    assert nmi(codes, labels) >= 0.5


# ---------------------------------------------------------------------------------------------------
# The model's contract


def test_infer_gives_no_action_at_frame_zero_and_a_code_per_transition():
    cfg = LAMConfig(latent_channels=2, latent_height=4, latent_width=6, levels=[2, 3], channels=8, groups=4)
    model = build_lam(cfg).eval()
    assert model.num_codes == 6
    codes = model.infer(torch.randn(3, 2, 5, 4, 6))
    assert codes.shape == (3, 5) and codes.dtype == torch.long
    assert (codes[:, 0] == 6).all() and ((codes[:, 1:] >= 0) & (codes[:, 1:] < 6)).all()
    assert model.infer(torch.randn(2, 2, 1, 4, 6)).tolist() == [[6], [6]]
    out = model(torch.randn(2, 2, 4, 4, 6))
    assert {"loss", "recon_mse", "copy_last_mse", "code_perplexity", "codes_used"} <= set(out)
    # The decoder starts by copying the last frame.
    assert math.isclose(float(out["recon_mse"]), float(out["copy_last_mse"]), rel_tol=1e-6)


def test_model_built_on_meta_initialises_deterministically():
    cfg = LAMConfig(channels=8, groups=4, levels=[2, 2, 2])
    states = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_lam(cfg)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all(not t.is_meta and torch.isfinite(t).all() for t in [*model.parameters(), *model.buffers()])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_fsq_index_latents_are_refused_with_a_message():
    with pytest.raises(ValueError, match="continuous latents"):
        LAMConfig(head="maskgit")
    model = build_lam(LAMConfig(channels=8, groups=4))
    with pytest.raises(ValueError, match="continuous latents"):
        model.infer(torch.zeros(1, 3, 8, 8, dtype=torch.long))
    task = LAMTask(LAMConfig(channels=8, groups=4), SimpleNamespace(data=LoaderConfig(shards="unused")))
    with pytest.raises(ValueError, match="continuous latents"):
        task.prepare({"indices": torch.zeros(1, 3, 8, 8, dtype=torch.long), "key": ["clip0"]})


def test_flops_count_the_transitions_trained():
    task = LAMTask(LAMConfig(channels=8, groups=4), SimpleNamespace(data=LoaderConfig(shards="unused")))
    assert math.isclose(task.clip_flops(8) / task.clip_flops(4), 7 / 3, rel_tol=1e-6)
    assert task.flops_per_sample() == task.clip_flops(task.cfg.max_frames) > 0


# ---------------------------------------------------------------------------------------------------
# Scores


def test_nmi_and_probe_see_a_perfect_mapping_and_an_independent_one():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    codes = labels * 2 + rng.integers(0, 2, 600)  # two codes per class: a perfect (many-to-one) map
    assert nmi(labels, labels) == pytest.approx(1.0)
    assert nmi((labels + 1) % 3, labels) == pytest.approx(1.0)  # renaming classes changes nothing
    probe = linear_probe(one_hot(codes, 6), labels, seed=0, groups=np.arange(600) // 10)
    assert probe["balanced_accuracy"] > 0.99 and probe["accuracy"] > 0.99
    assert abs(probe["shuffled_balanced_accuracy"] - 1 / 3) < 0.08
    noise = rng.integers(0, 8, 600)
    assert nmi(noise, labels) < 0.02
    chance = linear_probe(one_hot(noise, 8), labels, seed=0)
    assert abs(chance["balanced_accuracy"] - 1 / 3) < 0.1
    assert nmi(np.zeros(5), np.zeros(5)) == 1.0 and nmi(np.zeros(5), np.arange(5)) == 0.0


def test_transition_labels_take_the_action_that_produced_each_latent_frame():
    classes = np.array([0, 0, 1, 2])  # Breakout: NOOP, FIRE, RIGHT, LEFT
    actions = np.array([2, 3, 0, 1, 2, 2, 3])  # actions[j] at source frame j, its result is frame j + 1
    assert transition_labels(actions, 4, 1, classes).tolist() == [-1, 1, 2, 0]
    # tau = 2: latent frame i comes from source frames 2i-1, 2i; the last action of its group labels it.
    assert transition_labels(actions, 4, 2, classes).tolist() == [-1, 2, 0, 1]
    with pytest.raises(ValueError, match="temporal_compression"):
        transition_labels(actions, 5, 2, classes)


def test_movement_classes_of_breakout_and_pong():
    assert movement_classes("breakout").tolist() == [0, 0, 1, 2]  # NOOP FIRE RIGHT LEFT
    assert movement_classes("ALE/Pong-v5").tolist() == [0, 0, 1, 2, 1, 2]  # + RIGHTFIRE LEFTFIRE


# ---------------------------------------------------------------------------------------------------
# Through the runtime


def write_world_shards(out: Path, clips: int = 12, frames: int = 6) -> None:
    """Paddle-world clips as latent shards ``[T, 2, 8, 16]`` float16 with Breakout-style actions
    (RIGHT 2 / LEFT 3 / NOOP 0; ``actions[j]`` made frame ``j + 1``), a quarter of them held out."""
    x, acts = paddle_world(clips, frames, torch.Generator().manual_seed(0))
    source_actions = torch.tensor([0, 2, 3])[acts.roll(-1, dims=1)]  # source convention
    with ShardWriter(out, samples_per_shard=6) as w:
        for i in range(clips):
            lat = x[i].repeat(2, 1, 1, 1).permute(1, 0, 2, 3).numpy().astype(np.float16)
            meta = {
                "key": f"clip{i:03d}",
                "split": "heldout" if i % 4 == 0 else "train",
                "source": f"samples/atari/breakout/breakout-{i:02d}.mp4",
            }
            w.write(
                f"clip{i:03d}", {"json": meta, "latents.npy": lat, "actions.npy": source_actions[i].numpy()}
            )


def train_lam(run: Path, shards: Path) -> None:
    """``vidworld train jobs/lam.yaml`` for 4 steps on paddle-world ``shards`` (``write_world_shards``)."""
    overrides = [
        f"run_dir={run}",
        f"data.shards={shards}",
        "model.latent_channels=2",
        "model.latent_height=8",
        "model.latent_width=16",
        "model.max_frames=4",
        "model.channels=8",
        "model.groups=4",
        "model.depth=1",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=4",
        "trainer.save_every=4",
        "trainer.log_every=2",
        "trainer.eval_every=4",
        "wandb.mode=disabled",
    ]
    vidworld_train("lam.yaml", overrides)
    assert (run / "model.safetensors").is_file()


@pytest.mark.integration
def test_vidworld_train_runs_the_lam_yaml_and_its_run_loads_and_infers(tmp_path):
    shards = tmp_path / "latents"
    write_world_shards(shards)
    run = tmp_path / "run"
    train_lam(run, shards)

    _, task, model = load_trained(run)
    assert isinstance(task, LAMTask)
    codes = model.infer(torch.randn(3, 2, 5, 8, 16))
    assert codes.shape == (3, 5) and (codes[:, 0] == model.num_codes).all()
    assert ((codes[:, 1:] >= 0) & (codes[:, 1:] < model.num_codes)).all()

    report = evaluate_latent_actions(run, str(shards), split="heldout")
    scores = report["games"]["breakout"]
    assert report["num_codes"] == 8 and scores["clips"] == 3 and scores["n"] == 3 * 5
    assert {"nmi", "nmi_shuffled", "probe_balanced_accuracy", "shuffled_probe_balanced_accuracy"} <= set(
        scores
    )
    assert np.asarray(scores["contingency"]).shape == (8, 3) and np.sum(scores["contingency"]) == 15


def test_eval_media_scores_codes_against_the_actions_of_the_batch(tmp_path):
    shards = tmp_path / "latents"
    write_world_shards(shards)
    cfg = LAMConfig(latent_channels=2, latent_height=8, latent_width=16, channels=8, groups=4, max_frames=4)
    data = LoaderConfig(
        shards=str(shards),
        batch_size=6,
        resampled=False,
        shuffle_buffer=0,
        require=["actions"],
        fields=["latents", "actions"],
    )
    task = LAMTask(cfg, SimpleNamespace(data=data))
    batch = next(task.batches(rank=0, world_size=1, seed=0, state=None))
    assert batch["x"].shape == (6, 2, 4, 8, 16) and batch["labels"].shape == (6, 4)
    model = build_lam(cfg).train()
    with torch.no_grad():  # as the runtime calls it
        out = task.eval_media(model, batch)
    for key in (
        "eval/recon_mse",
        "eval/copy_last_mse",
        "eval/shuffled_code_mse",
        "eval/nmi",
        "eval/probe_balanced_accuracy",
        "eval/shuffled_probe_balanced_accuracy",
    ):
        assert key in out and math.isfinite(out[key]), key
    assert model.training  # eval mode was restored
    loss = task.loss(model, batch)
    assert torch.isfinite(loss["loss"]) and loss["latent_frames"] == 4.0
