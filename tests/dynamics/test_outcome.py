"""Reward and continuation heads (``dynamics.outcome``): their targets from per-source-frame rewards
and terminal flags, their figures, that they learn a rule from the dynamics model's per-frame state,
and that a model without them is the model it was before."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from dynamics.evaluate import outcome_figures
from dynamics.outcome import auroc, outcome_metrics, outcome_targets, symexp, symlog, twohot
from dynamics.task import DynamicsTask
from pipeline.loader import LoaderConfig
from pipeline.shards import ShardWriter
from tests.dynamics.dotworld import as_latents, dot_world

NAN = math.nan


def _same(a: torch.Tensor, b: list) -> bool:
    return torch.allclose(a, torch.tensor(b, dtype=a.dtype), equal_nan=True)


def test_targets_label_each_latent_frame_with_the_transition_out_of_it():
    # 7 source frames, tau = 2 -> latent frames 0..3. The reward of latent frame t is that of source
    # transitions 2t-2, 2t-1 (into it: the actions grouped with it); its continuation is about source
    # transitions 2t, 2t+1 (out of it: the actions grouped with latent frame t + 1).
    rewards = torch.tensor([[1.0, 0, 0, 2, 0, 0, 5]])
    terminals = torch.tensor([[False, False, False, False, False, False, False]])
    reward, cont = outcome_targets(rewards, terminals, latent_frames=4, tau=2)
    # Nothing leads into frame 0; out of frame 3 are source transitions 6, 7: only 6 is recorded.
    assert _same(reward, [[NAN, 1.0, 2.0, 0.0]]) and _same(cont, [[1.0, 1.0, 1.0, NAN]])
    # An episode that ends inside the incomplete group is known: it ended.
    terminals[0, 6] = True
    reward, cont = outcome_targets(rewards, terminals, latent_frames=4, tau=2)
    assert _same(reward, [[NAN, 1.0, 2.0, 0.0]]) and _same(cont, [[1.0, 1.0, 1.0, 0.0]])
    # Without terminal flags there is no continuation target; with tau = 1 frame t gets rewards[t-1].
    reward, cont = outcome_targets(rewards, None, latent_frames=7, tau=1)
    assert cont is None and _same(reward, [[NAN, 1.0, 0, 0, 2, 0, 0]])


def test_prepare_windows_the_targets_with_the_latents():
    cfg = DynamicsConfig(
        latent_channels=1, latent_height=4, latent_width=4, max_frames=2, temporal_compression=2,
        reward_head=True, continue_head=True,
    )  # fmt: skip
    task = DynamicsTask(cfg, SimpleNamespace(data=LoaderConfig(shards="unused", batch_size=1)))
    batch = {
        "key": ["a"],
        "latents": torch.zeros(1, 3, 1, 4, 4),  # 3 latent frames <- 5 source frames
        "actions": torch.zeros(1, 5, dtype=torch.long),
        "rewards": torch.tensor([[0.0, 1, 0, 0, 3]]),
        "terminals": torch.tensor([[False, False, False, False, True]]),
    }
    g = torch.Generator().manual_seed(0)
    seen = set()
    plain = lambda t: tuple(None if math.isnan(v) else v for v in t[0].tolist())  # noqa: E731
    for _ in range(20):
        out = task.prepare(batch, g)
        seen.add((plain(out["rewards"]), plain(out["continues"])))
    # Full targets: rewards [none, 1, 0], continues [1, 1, 0]; a 2-frame window starts at 0 or 1.
    assert seen == {((None, 1.0), (1.0, 1.0)), ((1.0, 0.0), (1.0, 0.0))}
    with pytest.raises(ValueError, match="KEY.terminals.npy"):
        task.prepare({k: v for k, v in batch.items() if k != "terminals"}, g)


def test_clips_without_recorded_outcomes_train_no_outcome_loss():
    # data.optional zero-fills a missing KEY.rewards.npy / KEY.terminals.npy: such a clip (camera
    # footage in a mix with game play) has unknown targets, not "reward 0, the episode goes on".
    cfg = DynamicsConfig(
        latent_channels=1, latent_height=4, latent_width=4, max_frames=3, temporal_compression=1,
        reward_head=True, continue_head=True,
    )  # fmt: skip
    data = LoaderConfig(shards="unused", batch_size=2, optional=["actions", "rewards", "terminals"])
    task = DynamicsTask(cfg, SimpleNamespace(data=data))
    batch = {
        "key": ["game", "camera"],
        "latents": torch.zeros(2, 3, 1, 4, 4),
        "actions": torch.zeros(2, 3, dtype=torch.long),
        "rewards": torch.tensor([[0.0, 1, 0], [0, 0, 0]]),
        "rewards_present": torch.tensor([True, False]),
        "terminals": torch.zeros(2, 3, dtype=torch.bool),
        "terminals_present": torch.tensor([True, False]),
    }
    out = task.prepare(batch, torch.Generator().manual_seed(0))
    assert _same(out["rewards"], [[NAN, 0.0, 1.0], [NAN, NAN, NAN]])
    assert _same(out["continues"], [[1.0, 1.0, 1.0], [NAN, NAN, NAN]])
    # A batch in which no clip recorded them: every target unknown, and the head adds no loss.
    bare = {k: v for k, v in batch.items() if not k.startswith(("rewards", "terminals"))}
    out = task.prepare(bare, torch.Generator().manual_seed(0))
    assert torch.isnan(out["rewards"]).all() and torch.isnan(out["continues"]).all()
    model = build_dynamics(cfg)
    losses = model.loss(out["x"], out["actions"], rewards=out["rewards"], continues=out["continues"])
    assert float(losses["reward_loss"]) == 0.0 and float(losses["continue_loss"]) == 0.0
    # Not optional: a batch without them is refused, naming the way out.
    strict = DynamicsTask(cfg, SimpleNamespace(data=LoaderConfig(shards="unused", batch_size=2)))
    with pytest.raises(ValueError, match=r"data.optional=\[rewards\]"):
        strict.prepare(bare, torch.Generator().manual_seed(0))


def test_twohot_and_symlog_round_trip():
    bins = torch.linspace(-20, 20, 255)
    y = torch.tensor([-3.7, 0.0, 0.05, 12.0, 25.0])
    w = twohot(y, bins)
    assert torch.allclose(w.sum(-1), torch.ones(5)) and (w > 0).sum(-1).le(2).all()
    assert torch.allclose((w * bins).sum(-1), y.clamp(-20, 20), atol=1e-5)
    r = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1000.0])
    assert torch.allclose(symexp(symlog(r)), r, rtol=1e-5)


def test_auroc_and_baselines():
    assert auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    assert auroc(np.zeros(4), np.array([0, 1, 0, 1])) == 0.5  # ties count half
    assert math.isnan(auroc(np.ones(3), np.zeros(3)))
    m = outcome_metrics(
        np.array([0.0, 0.9, 0.1, 0.0]), np.array([0.0, 1.0, 0.0, NAN]),
        np.array([0.9, 0.2, 0.8]), np.array([1.0, 0.0, 1.0]),
    )  # fmt: skip
    assert m["reward_frames"] == 3 and m["reward_events"] == 1 and m["reward_auroc"] == 1.0
    assert m["reward_auroc_zero"] == 0.5 and m["reward_mse_zero"] == pytest.approx(1 / 3)
    assert m["reward_mse"] == pytest.approx((0.01 + 0.01) / 3)
    assert m["continue_accuracy"] == 1.0 and m["continue_accuracy_base_rate"] == pytest.approx(2 / 3)


def test_heads_off_add_no_parameters():
    plain = build_dynamics(DynamicsConfig())
    off = build_dynamics(DynamicsConfig(reward_head=False, continue_head=False, reward_loss="twohot"))
    on = build_dynamics(DynamicsConfig(reward_head=True, continue_head=True))
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(off) == shapes(plain)
    assert not any(k.startswith("outcome.") for k in shapes(plain))
    added = {k: v for k, v in shapes(on).items() if k not in shapes(plain)}
    assert added and all(k.startswith("outcome.") for k in added)
    # The loss dict of a model without heads is what it was: no outcome terms, targets ignored.
    x, a = torch.randn(2, 4, 4, 8, 8), torch.randint(0, 4, (2, 4))
    torch.manual_seed(0)
    before = plain(x, a)
    torch.manual_seed(0)
    after = plain(x, a, None, torch.ones(2, 4), torch.ones(2, 4))
    assert set(before) == set(after) == {"loss", "x0_mse", "copy_last_mse"}
    assert torch.equal(before["loss"], after["loss"])


def _dot_clips(n: int, seed: int, head: str):
    """Dot-world clips (4x4, 4 frames) and per-frame targets from the dot at frame t: reward 1 for
    the transition into frame t when it put the dot in the leftmost column; the episode ends after
    frame t when the dot is in the rightmost column."""
    g = torch.Generator().manual_seed(seed)
    idx, actions = dot_world(n, 4, size=4, generator=g)
    col = idx.sum(-2).argmax(-1)  # [B, T] the column of the dot
    reward = (col == 0).float()
    cont = (col != 3).float()
    x = idx if head == "maskgit" else as_latents(idx)
    return x, actions, reward, cont


def _train(head: str, steps: int, **heads):
    torch.manual_seed(0)
    cfg = DynamicsConfig(
        head=head, latent_channels=1, codebook_size=2, latent_height=4, latent_width=4, patch_size=1,
        max_frames=4, dim=32, depth=2, heads=2, action_dropout=0.0, **heads,
    )  # fmt: skip
    model = build_dynamics(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        x, actions, reward, cont = _dot_clips(32, step, head)
        out = model(x, actions, None, reward, cont)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    x, actions, reward, cont = _dot_clips(256, 10_000, head)  # held out: seeds never trained on
    pred = model.predict_outcomes(x, actions)
    return outcome_metrics(
        pred["reward"].numpy() if "reward" in pred else None, reward.numpy(),
        pred["continue_prob"].numpy() if "continue_prob" in pred else None, cont.numpy(),
    )  # fmt: skip


def test_reward_head_learns_a_dot_rule_to_high_auroc_on_held_out_clips():
    m = _train("diffusion", 100, reward_head=True)
    assert m["reward_auroc_zero"] == 0.5
    assert m["reward_auroc"] > 0.9, m
    assert m["reward_mse"] < 0.5 * m["reward_mse_zero"], m


def test_continue_head_learns_a_terminal_rule_beyond_the_base_rate():
    m = _train("diffusion", 100, continue_head=True)
    assert m["continue_accuracy"] > m["continue_accuracy_base_rate"] + 0.1, m


def test_maskgit_model_trains_both_heads():
    torch.manual_seed(0)
    cfg = DynamicsConfig(
        head="maskgit", codebook_size=2, latent_height=4, latent_width=4, patch_size=1, dim=32, heads=2,
        reward_head=True, reward_loss="twohot", continue_head=True,
    )  # fmt: skip
    model = build_dynamics(cfg)
    x, actions, reward, cont = _dot_clips(4, 0, "maskgit")
    out = model(x, actions, None, reward, cont)
    out["loss"].backward()
    assert out["reward_loss"] > 0 and out["continue_loss"] > 0
    assert (
        model.outcome.reward[3].weight.grad.abs().sum() > 0
        and model.outcome.cont[3].weight.grad.abs().sum() > 0
    )
    pred = model.predict_outcomes(x, actions)
    assert pred["reward"].shape == pred["continue_prob"].shape == (4, 4)


def test_evaluation_reports_outcome_figures_beside_their_baselines():
    cfg = DynamicsConfig(
        latent_channels=1, latent_height=4, latent_width=4, patch_size=1, dim=32, heads=2,
        reward_head=True, continue_head=True,
    )  # fmt: skip
    x, actions, reward, cont = _dot_clips(3, 0, "diffusion")
    batches = [{"x": x[i : i + 1], "actions": actions[i : i + 1], "rewards": reward[i : i + 1],
                "continues": cont[i : i + 1]} for i in range(3)]  # fmt: skip
    plain = SimpleNamespace(dynamics=build_dynamics(DynamicsConfig()))
    assert outcome_figures(plain, batches)["status"].startswith("off")
    got = outcome_figures(SimpleNamespace(dynamics=build_dynamics(cfg)), batches)
    assert got["status"] == "computed" and got["clips"] == 3 and got["reward_frames"] == 12
    # Untrained: reward 0 and P(continue) = 1/2 everywhere, i.e. the baselines' own figures.
    assert got["reward_auroc"] == got["reward_auroc_zero"] == 0.5
    assert got["reward_mse"] == pytest.approx(got["reward_mse_zero"])


def test_heads_train_from_latent_shards_with_rewards_and_terminals(tmp_path):
    # Two clips of 5 source frames (3 latent frames at tau = 2); one episode ends at its last action.
    with ShardWriter(tmp_path, samples_per_shard=2) as w:
        for i in range(2):
            w.write(
                f"clip{i}",
                {
                    "json": {"key": f"clip{i}", "num_frames": 5, "split": "train"},
                    "latents.npy": np.zeros((3, 1, 4, 4), np.float16),
                    "actions.npy": np.zeros(5, np.int64),
                    "rewards.npy": np.array([0, 1, 0, 0, i], np.float32),
                    "terminals.npy": np.array([0, 0, 0, 0, i], bool),
                },
            )
    cfg = DynamicsConfig(
        latent_channels=1, latent_height=4, latent_width=4, max_frames=3, temporal_compression=2,
        reward_head=True, continue_head=True,
    )  # fmt: skip
    data = LoaderConfig(shards=str(tmp_path / "shard-*.tar"), batch_size=2, shuffle_buffer=0)
    task = DynamicsTask(cfg, SimpleNamespace(data=data))
    batch = next(task.batches(0, 1, 0, None))
    by_key = dict(zip(batch["keys"], range(2), strict=True))
    # Rewards into latent frames 1, 2: source transitions 0-1, 2-3. Out of latent frame 2: source
    # transitions 4, 5: clip0 stops after 4 (unknown), clip1's episode ended at 4.
    for key in ("clip0", "clip1"):
        assert _same(batch["rewards"][by_key[key]], [NAN, 1.0, 0.0])
    assert _same(batch["continues"][by_key["clip0"]], [1.0, 1.0, NAN])
    assert _same(batch["continues"][by_key["clip1"]], [1.0, 1.0, 0.0])
    out = task.loss(build_dynamics(cfg), batch)
    assert out["reward_loss"] > 0 and out["continue_loss"] > 0 and torch.isfinite(out["loss"])
