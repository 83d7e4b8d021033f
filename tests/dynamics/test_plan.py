"""dynamics.plan: ``vidworld plan``, CEM/MPPI in the learned model and in the true emulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dynamics import build_dynamics
from dynamics.plan import (
    EmulatorScorer,
    ModelScorer,
    PlanConfig,
    Planner,
    PlannerConfig,
    episode_seed,
    plan,
    resize_frame,
)
from pipeline.samples import make_atari_env
from runtime.config import ConfigError
from runtime.tracking import WandbConfig
from tests.dynamics.eval_helpers import dyn_config, make_data, world, write_run
from tokenizer.evaluate import iter_split
from vidworld.cli import main


class Target:
    """A toy model with a known optimum: the return counts the frames whose action matches ``best``."""

    def __init__(self, best: np.ndarray) -> None:
        self.best, self.calls = best, 0

    def returns(self, candidates: np.ndarray) -> np.ndarray:
        self.calls += 1
        return (candidates == self.best[None]).sum(1).astype(float)


@pytest.mark.parametrize("method", ["cem", "mppi"])
def test_the_search_finds_the_optimum_of_a_known_model(method):
    rng = np.random.default_rng(0)
    best = rng.integers(0, 6, 8)
    cfg = PlannerConfig(method=method, horizon=8, hold=1, population=64, iterations=8, elites=8)
    planner = Planner(cfg, 6, np.random.default_rng(1))
    seq, ret = planner.plan(Target(best))
    assert ret == 8 and (seq == best).all()
    # Random search with the same budget (8 x 64 draws of 6^8 sequences) would not find it.
    draws = np.random.default_rng(2).integers(0, 6, (8 * 64, 8))
    assert (draws == best).sum(1).max() < 8


def test_a_decision_is_held_for_hold_frames_and_the_distribution_shifts_on():
    cfg = PlannerConfig(horizon=3, hold=2, population=16, iterations=4, elites=4)
    planner = Planner(cfg, 4, np.random.default_rng(0))
    seen = []

    class Spy:
        def returns(self, candidates):
            seen.append(candidates)
            return -np.abs(candidates - 3).sum(1).astype(float)  # best: action 3 throughout

    planner.plan(Spy())
    assert len(seen) == 4 and all(c.shape == (16, 6) for c in seen)
    assert all((c[:, 0::2] == c[:, 1::2]).all() for c in seen)  # each decision covers two frames
    assert (planner.probs[:2].argmax(1) == 3).all()  # the refit favours 3 and moved one decision on
    assert np.allclose(planner.probs[2], 0.25)  # the new last decision starts uniform


def test_bad_planner_settings_name_the_key():
    with pytest.raises(ConfigError, match="planner.elites"):
        PlannerConfig(population=4, elites=8).validate()
    with pytest.raises(ConfigError, match="planner.method"):
        PlannerConfig(method="random").validate()
    with pytest.raises(ConfigError, match="agents="):
        PlanConfig(output="x", agents=["greedy"]).validate()
    with pytest.raises(ConfigError, match="needs checkpoint="):
        PlanConfig(output="x", agents=["model"]).validate()


def test_the_emulator_scorer_plays_each_candidate_from_the_same_state_and_restores_it():
    env = make_atari_env("ALE/Pong-v5")
    try:
        env.reset(seed=3)
        ale = env.unwrapped.ale
        frame = ale.getFrameNumber()
        scorer = EmulatorScorer(env, 1, 1.0)
        candidates = np.random.default_rng(0).integers(0, 6, (4, 10))
        first = scorer.returns(candidates)
        assert ale.getFrameNumber() == frame  # restored
        assert np.array_equal(scorer.returns(candidates), first)  # deterministic from the saved state
    finally:
        env.close()


def test_the_planner_in_the_true_emulator_beats_random_play(tmp_path):
    # Breakout, 3 episodes of 120 emulator steps (8 s of play) from the same starts. Measured: the
    # planner wins 6 points, random play 2 (random play must first press FIRE to serve at all).
    cfg = PlanConfig(
        output=str(tmp_path),
        games=["ALE/Breakout-v5"],
        agents=["random", "emulator"],
        episodes=3,
        max_steps=120,
        planner=PlannerConfig(population=16, iterations=1, elites=4, horizon=4, hold=8),
        wandb=WandbConfig(mode="disabled"),
    )
    agents = plan(cfg)["games"]["breakout"]["agents"]
    planned, random = agents["emulator"]["mean_return"], agents["random"]["mean_return"]
    assert planned > random and planned >= 1.0


def test_episode_seeds_are_shared_by_agents_and_differ_by_game_and_index():
    assert episode_seed(0, "ALE/Pong-v5", 0) == episode_seed(0, "ALE/Pong-v5", 0)
    seeds = {episode_seed(0, g, i) for g in ("ALE/Pong-v5", "ALE/Breakout-v5") for i in range(5)}
    assert len(seeds) == 10


def test_frames_are_resized_as_curation_resizes_them():
    obs = np.zeros((210, 160, 3), np.uint8)
    obs[:, 80:] = 255
    out = resize_frame(obs, 16, 16, "squash")
    assert out.shape == (16, 16, 3) and out[:, :7].max() < 20 and out[:, 9:].min() > 235
    assert resize_frame(obs, 16, 16, "center_crop").shape == (16, 16, 3)


# -- the learned model as the planner's model ------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plan")
    out = make_data(root)
    cfg = dyn_config(reward_head=True, continue_head=True, num_actions=6)
    out["cfg"] = cfg
    out["run"] = write_run(root / "run", cfg, perturb=0.05)
    return out


def _scorer(data, reward, cont, discount=0.9, cfg=None, penalty=0.0) -> ModelScorer:
    """A ModelScorer whose outcome heads are replaced by rules of the actions (``FrameActions``)."""
    cfg = cfg or data["cfg"]
    torch.manual_seed(0)
    model = build_dynamics(cfg)
    model.predict_outcomes = lambda x, actions: {  # type: ignore[method-assign]
        "reward": reward(actions.real[:, :, 0]),
        "continue_prob": cont(actions.real[:, :, 0]),
    }
    scorer = ModelScorer(world(data, model, cfg), 2, discount, "squash", 0, None, penalty)
    obs = np.random.default_rng(0).integers(0, 255, (210, 160, 3), dtype=np.uint8)
    scorer.reset(obs)
    for a in (1, 1, 2, 5, 0):  # history: 6 frames, 5 actions; tau=4 -> a 2-latent-frame context
        scorer.observe(a, obs)
    return scorer


def test_the_model_scorer_sums_the_imagined_rewards_of_each_candidate(data):
    # Reward 1 for each imagined frame reached by action 2; the model's window is 4 frames, so 6
    # imagined frames are read in more than one window.
    scorer = _scorer(data, lambda a: (a == 2).float(), lambda a: torch.ones_like(a, dtype=torch.float))
    candidates = np.array([[2, 2, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 2], [0, 1, 2, 3, 4, 5]])
    want = [sum(0.9**j for j in range(6)), 0.0, 1 + 0.9**5, 0.9**2]
    assert np.allclose(scorer.returns(candidates), want, atol=1e-5)


def test_the_model_scorer_weighs_rewards_by_the_chance_the_episode_goes_on(data):
    scorer = _scorer(
        data,
        lambda a: torch.ones_like(a, dtype=torch.float),
        lambda a: torch.full_like(a, 0.5, dtype=torch.float),
    )
    got = scorer.returns(np.zeros((1, 4), np.int64))
    assert np.allclose(got, [sum((0.9 * 0.5) ** j for j in range(4))], atol=1e-5)


def test_the_ensembles_disagreement_lowers_a_candidates_score(data):
    cfg = dyn_config(reward_head=True, num_actions=6, ensemble=3)
    zero, one = (
        (lambda a: torch.zeros_like(a, dtype=torch.float)),
        (lambda a: torch.ones_like(a, dtype=torch.float)),
    )
    candidates = np.random.default_rng(0).integers(0, 6, (5, 4))
    plain = _scorer(data, zero, one, cfg=cfg).returns(candidates)
    once = _scorer(data, zero, one, cfg=cfg, penalty=1.0).returns(candidates)
    twice = _scorer(data, zero, one, cfg=cfg, penalty=2.0).returns(candidates)
    assert np.allclose(plain, 0.0) and (once < 0).all() and np.allclose(twice, 2 * once, rtol=1e-4)
    with pytest.raises(ConfigError, match="disagreement_penalty=1.0 needs an ensemble"):
        _scorer(data, zero, one, penalty=1.0)


def test_the_model_context_carries_the_actions_taken(data):
    scorer = _scorer(data, lambda a: (a == 2).float(), lambda a: torch.ones_like(a, dtype=torch.float))
    x, actions = scorer.encode_context()
    assert x.shape[2] == 2  # 5 frames of history cover 2 latent frames at tau=4
    assert actions.tolist() == [[[6] * 4, [1, 2, 5, 0]]]  # frame 0: no action; then the 4 taken


def test_clips_without_rewards_prepare_for_a_model_with_outcome_heads(data):
    # The held-out clips here record no rewards (camera footage in a mix): evaluation and planning
    # prepare them with unknown outcome targets instead of refusing them.
    w = world(data, build_dynamics(data["cfg"]), data["cfg"])
    sample = next(iter(iter_split(str(data["root"] / "latents"), "heldout")))
    assert "rewards" not in sample
    out = w.prepare_batch(sample)
    assert torch.isnan(out["rewards"]).all() and torch.isnan(out["continues"]).all()


def test_a_model_without_a_reward_head_is_refused(data):
    model = build_dynamics(dyn_config(num_actions=6))
    with pytest.raises(ConfigError, match="reward_head"):
        ModelScorer(world(data, model, dyn_config(num_actions=6)), 2, 0.9, "squash", 0)


def test_vidworld_plan_writes_the_table_for_every_agent(data, tmp_path, capsys):
    out = tmp_path / "plan"
    argv = [
        "plan",
        "jobs/plan.yaml",
        f"checkpoint={data['run']}",
        f"tokenizer={data['root'] / 'tok'}",
        f"output={out}",
        "games=[ALE/Pong-v5]",
        "episodes=2",
        "max_steps=16",
        "context=2",
        "planner.population=4",
        "planner.iterations=1",
        "planner.elites=2",
        "planner.horizon=2",
        "planner.hold=1",
        "device=cpu",
        "wandb.mode=offline",
    ]
    assert main(argv) == 0
    result = json.loads((out / "plan.json").read_text())
    pong = result["games"]["pong"]
    assert set(pong["agents"]) == {"model", "random", "emulator"}
    for agent, row in pong["agents"].items():
        assert len(row["episodes"]) == 2 and all(e["steps"] == 16 for e in row["episodes"])
        assert (row["decisions_per_second"] is None) == (agent == "random")
    # Planners decide once per held latent frame (tau=4 steps); random play every step.
    assert [e["decisions"] for e in pong["agents"]["model"]["episodes"]] == [4, 4]
    assert [e["decisions"] for e in pong["agents"]["random"]["episodes"]] == [16, 16]
    assert result["temporal_compression"] == 4 and result["checkpoint_step"] == 7
    assert "| pong | model |" in (out / "plan.md").read_text()
    assert "| pong | emulator |" in capsys.readouterr().out
    assert list((out / "wandb").glob("offline-run-*"))


def test_a_game_with_more_actions_than_the_model_knows_is_refused(data, tmp_path):
    run = write_run(tmp_path / "run4", dyn_config(reward_head=True), perturb=0.05)  # 4 actions; Pong has 6
    cfg = PlanConfig(
        checkpoint=str(run),
        tokenizer=str(data["root"] / "tok"),
        output=str(tmp_path / "out"),
        games=["ALE/Pong-v5"],
        episodes=1,
        max_steps=4,
        device="cpu",
        wandb=WandbConfig(mode="disabled"),
    )
    with pytest.raises(ConfigError, match="model.num_actions=4"):
        plan(cfg)
