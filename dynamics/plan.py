"""``vidworld plan``: model-predictive control in the learned world model, against the real game.

    vidworld plan jobs/plan.yaml checkpoint=RUN_DIR tokenizer=TOKENIZER output=OUT \
        [games=[ALE/Breakout-v5,ALE/Pong-v5]] [episodes=10] [agents=[model,random,emulator]]

At every decision the planner searches action sequences of ``planner.horizon`` latent frames,
scores each by the rewards the model imagines for it (``dynamics.outcome``: the reward head,
discounted, weighted by the continuation head's probability that the episode is still going),
executes the first latent frame's action in the real emulator (held for the ``tau`` source frames
a latent frame codes), observes the real frame and plans again (receding horizon). Search:

- ``cem`` (cross-entropy method): an independent categorical distribution over actions per future
  latent frame; ``population`` sequences are drawn, the ``elites`` best refit it (mixed with the
  old one by ``smoothing``), for ``iterations`` rounds; the best sequence seen is executed.
- ``mppi``: the same draws, refit by weights ``softmax(returns / (temperature * std))`` over the
  whole population (path-integral control over discrete actions; the temperature is in units of
  the population's spread of returns, so one setting serves every reward scale).

With ``planner.disagreement_penalty`` > 0 and a dynamics model trained as an ensemble
(``model.ensemble``), each imagined frame's reward is lowered by the penalty times the members'
disagreement there: the planner prefers futures its model knows.

Between decisions the distribution shifts one frame forward (warm start) and the new last frame
starts uniform. All candidates of a round are imagined as one batch (on the GPU when there is one).

Agents, each over the same episodes (same seeds, so the same starts):

- ``model``: the planner above with the trained dynamics model as its model. Its context: the last
  ``context`` latent frames, encoded by the tokenizer from the real frames (resized as curation
  resizes them: ``resize`` and the tokenizer's frame size), with the actions actually taken.
- ``random``: a uniformly random legal action per decision.
- ``emulator``: the same planner with the true emulator as its model: each candidate is played from
  a saved emulator state (``cloneState`` / ``restoreState``). Its return is the ceiling the model's
  planner is measured against.

Episodes end at the game's end or after ``max_steps`` emulator steps (a cap every agent shares,
reported). Outputs in ``output``: ``plan.json`` (every episode's return, points won, steps and
decisions per second, per game and agent, and the ratios of the model planner to random and to
the emulator planner, and the share of the gap between random play and the emulator planner that
the model planner closes, which also reads right for negative returns), ``plan.md`` (the table)
and a W&B run with the same table.

Games: any ALE game ``ale-py`` ships, with its minimal action set (as ``vidworld samples`` records
them); the model must have been trained with at least that many actions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from pathlib import Path
from typing import Any, Protocol

import av
import numpy as np
import torch
from torch import Tensor

from dynamics.rollout import SamplingConfig, WorldModel
from dynamics.transformer import FrameActions
from pipeline.clips import RESIZE_MODES, center_crop, decode_size
from pipeline.samples import game_name, make_atari_env, replay
from runtime.config import ConfigError
from runtime.files import atomic_write_text, folder_lock
from runtime.progress import Progress
from runtime.stage import stage_cli
from runtime.tracking import Table, WandbConfig, open_run, wandb_media
from tokenizer.evaluate import machine_name, utc_now
from tokenizer.tokenize import frames_to_video

METHODS = ("cem", "mppi")
AGENTS = ("model", "random", "emulator")
TABLE_KEY = "plan/returns"  # the W&B key of the table


@dataclasses.dataclass
class PlannerConfig:
    """The search over action sequences (CEM or MPPI), shared by the model and emulator agents."""

    method: str = "cem"  # cem | mppi
    horizon: int = 6  # decisions per candidate sequence
    hold: int = 8  # latent frames each decision's action is held: imagined frames = horizon * hold
    population: int = 32  # candidate sequences per round
    iterations: int = 2  # rounds of draw-score-refit per decision
    elites: int = 8  # cem: the best sequences that refit the distribution
    temperature: float = 0.5  # mppi: weights softmax(returns / (temperature * their std))
    smoothing: float = 0.2  # weight of the old distribution in each refit (0: the new one alone)
    discount: float = 0.97  # per latent frame
    # Subtracted per imagined frame times the ensemble members' disagreement there (model.ensemble > 1;
    # DynamicsHead.rollout): steers the model planner away from futures its model is unsure of.
    disagreement_penalty: float = 0.0

    def validate(self) -> None:
        checks = [
            ("method", self.method in METHODS, f"must be one of {', '.join(METHODS)}"),
            ("horizon", self.horizon >= 1, "must be >= 1 decision"),
            ("hold", self.hold >= 1, "must be >= 1 latent frame"),
            ("population", self.population >= 2, "must be >= 2"),
            ("iterations", self.iterations >= 1, "must be >= 1"),
            ("elites", 1 <= self.elites <= self.population, "must be in 1..population"),
            ("temperature", self.temperature > 0, "must be > 0"),
            ("smoothing", 0.0 <= self.smoothing < 1.0, "must be in [0, 1)"),
            ("discount", 0.0 < self.discount <= 1.0, "must be in (0, 1]"),
            ("disagreement_penalty", self.disagreement_penalty >= 0.0, "must be >= 0"),
        ]
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"planner.{key}={getattr(self, key)!r} {why}")


@dataclasses.dataclass
class PlanConfig:
    """``vidworld plan``: returns of the planner in the learned model, random play and the planner
    in the true emulator, on real ALE episodes."""

    checkpoint: str = ""  # dynamics run with a reward head (model.reward_head); needed by agent `model`
    tokenizer: str = ""  # the tokenizer its latent shards were made with; needed by agent `model`
    output: str = "???"  # folder: plan.json, plan.md, wandb/
    games: list[str] = dataclasses.field(default_factory=lambda: ["ALE/Breakout-v5", "ALE/Pong-v5"])
    agents: list[str] = dataclasses.field(default_factory=lambda: list(AGENTS))
    episodes: int = 10  # per game and agent
    max_steps: int = 1000  # emulator steps per episode at most (frameskip 4: 15 steps a second)
    seed: int = 0  # episode starts, the planner's draws and the model's sampling noise
    context: int = 4  # latent frames of real history the model sees (1 + (context-1)*tau source frames)
    resize: str = "squash"  # how frames are fitted to the tokenizer's size: as curate.resize made the clips
    device: str = "auto"
    planner: PlannerConfig = dataclasses.field(default_factory=PlannerConfig)
    sampling: SamplingConfig = dataclasses.field(default_factory=SamplingConfig)
    wandb: WandbConfig = dataclasses.field(default_factory=lambda: WandbConfig(mode="offline", tags=["plan"]))

    def validate(self) -> None:
        self.planner.validate()
        bad = [a for a in self.agents if a not in AGENTS]
        if bad or not self.agents:
            raise ConfigError(f"agents={self.agents!r}: each must be one of {', '.join(AGENTS)}")
        if not self.games:
            raise ConfigError("games=[] is empty: name ALE games, e.g. games=[ALE/Breakout-v5]")
        for key in ("episodes", "max_steps", "context"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}={getattr(self, key)} must be >= 1")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"resize={self.resize!r} must be one of {', '.join(RESIZE_MODES)}")
        if "model" in self.agents and not (self.checkpoint and self.tokenizer):
            raise ConfigError(
                "agent `model` needs checkpoint=DYNAMICS_RUN and tokenizer=TOKENIZER (or drop it: "
                "agents=[random,emulator])"
            )


# -- the search ----------------------------------------------------------------------------------


class Scorer(Protocol):
    """What the planner searches with: the return of each candidate ``[N, F]`` (action indices, one
    per latent frame) from the current state, ``float [N]``."""

    def returns(self, candidates: np.ndarray) -> np.ndarray: ...


class Planner:
    """CEM or MPPI over ``num_actions`` discrete actions: ``cfg.horizon`` decisions, each held for
    ``cfg.hold`` latent frames, so the scorer sees ``horizon * hold`` frames of actions."""

    def __init__(self, cfg: PlannerConfig, num_actions: int, rng: np.random.Generator) -> None:
        cfg.validate()
        self.cfg, self.num_actions, self.rng = cfg, num_actions, rng
        self.reset()

    def reset(self) -> None:
        """Forget the warm start: every future frame uniform."""
        self.probs = np.full((self.cfg.horizon, self.num_actions), 1.0 / self.num_actions)

    def sample(self, n: int) -> np.ndarray:
        """``n`` sequences ``int64 [n, H]`` from the current distribution."""
        cum = self.probs.cumsum(-1)
        u = self.rng.random((n, self.cfg.horizon, 1))
        return np.minimum((u > cum[None]).sum(-1), self.num_actions - 1).astype(np.int64)

    def refit(self, candidates: np.ndarray, returns: np.ndarray) -> None:
        """Refit the per-frame categoricals to the scored candidates (elites or softmax weights)."""
        c = self.cfg
        if c.method == "cem":
            weights = np.zeros(len(returns))
            weights[np.argsort(-returns, kind="stable")[: c.elites]] = 1.0 / c.elites
        else:
            # Temperature in units of the population's spread: the same setting serves any reward scale.
            z = (returns - returns.max()) / (c.temperature * (returns.std() + 1e-8))
            weights = np.exp(z) / np.exp(z).sum()
        onehot = np.eye(self.num_actions)[candidates]  # [N, H, A]
        fitted = np.einsum("n,nha->ha", weights, onehot)
        self.probs = c.smoothing * self.probs + (1.0 - c.smoothing) * fitted

    def plan(self, scorer: Scorer) -> tuple[np.ndarray, float]:
        """Search, then shift the distribution one decision on. Returns the best sequence of
        decisions seen ``[horizon]`` and its return."""
        best, best_return = None, -math.inf
        for _ in range(self.cfg.iterations):
            candidates = self.sample(self.cfg.population)
            returns = np.asarray(scorer.returns(np.repeat(candidates, self.cfg.hold, axis=1)), np.float64)
            i = int(np.argmax(returns))
            if returns[i] > best_return:
                best, best_return = candidates[i].copy(), float(returns[i])
            self.refit(candidates, returns)
        self.probs = np.concatenate([self.probs[1:], np.full((1, self.num_actions), 1.0 / self.num_actions)])
        assert best is not None
        return best, best_return


# -- the models a planner searches with ---------------------------------------------------------


class EmulatorScorer:
    """The true emulator as the model: each candidate is played from the current saved state (each
    latent frame's action held for ``tau`` emulator steps); the state is restored afterwards."""

    def __init__(self, env: Any, tau: int, discount: float) -> None:
        self.env, self.tau, self.discount = env, tau, discount

    def returns(self, candidates: np.ndarray) -> np.ndarray:
        ale = self.env.unwrapped.ale
        root = ale.cloneState()
        out = np.zeros(len(candidates))
        weights = self.discount ** np.arange(candidates.shape[1])
        try:
            for i, seq in enumerate(candidates):
                _, rewards, _ = replay(self.env.unwrapped, root, np.repeat(seq, self.tau))
                per_frame = np.add.reduceat(rewards, np.arange(0, len(rewards), self.tau))
                out[i] = float((per_frame * weights[: len(per_frame)]).sum())
        finally:
            ale.restoreState(root)
        return out


def resize_frame(obs: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """An emulator frame ``uint8 [H, W, 3]`` -> ``[height, width, 3]`` as curation makes clip frames
    from a recorded video: 4:2:0 chroma, then an area resize (``pipeline.probe.FrameReader``), and for
    ``center_crop`` the shorter side to ``width`` then the centre."""
    h, w = obs.shape[:2]
    tw, th = decode_size(w, h, 0, width, mode) if mode == "center_crop" else (width, height)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(obs), format="rgb24").reformat(format="yuv420p")
    rgb = frame.reformat(tw, th, "rgb24", interpolation="AREA").to_ndarray()
    return center_crop(rgb[None], width)[0] if mode == "center_crop" else rgb


class ModelScorer:
    """The learned world model as the planner's model.

    ``observe`` records each real frame (resized) and the action taken at it; ``returns`` encodes the
    last ``context`` latent frames' source frames with the tokenizer, imagines every candidate in one
    batch (``WorldModel.rollout``, the candidate's action per latent frame held for ``tau`` source
    frames; latent action models get "no latent action", as labelled clips train), then reads the
    imagined frames' rewards and continuation from the outcome heads, in windows of at most
    ``max_frames`` frames that each start one frame before the frames they score.
    """

    def __init__(
        self,
        world: WorldModel,
        context: int,
        discount: float,
        resize: str,
        seed: int,
        sampling: SamplingConfig | None = None,
        disagreement_penalty: float = 0.0,
    ) -> None:
        model = world.dynamics
        if getattr(model, "outcome", None) is None or model.outcome.reward is None:
            raise ConfigError(
                f"checkpoint={world.checkpoint} has no reward head (model.reward_head is false): a "
                "planner scores imagined rewards; train the dynamics model with model.reward_head=true"
            )
        if world.cfg.action_type != "discrete":
            raise ConfigError(
                f"checkpoint={world.checkpoint} takes {world.cfg.action_type} actions; vidworld plan "
                "plans over discrete game actions (model.action_type=discrete)"
            )
        if disagreement_penalty > 0 and int(getattr(model, "ensemble_size", 1)) < 2:
            raise ConfigError(
                f"planner.disagreement_penalty={disagreement_penalty} needs an ensemble, but checkpoint="
                f"{world.checkpoint} has one member (model.ensemble=1): train with model.ensemble=4 or set "
                "planner.disagreement_penalty=0"
            )
        self.world, self.context, self.discount, self.resize = world, context, discount, resize
        self.penalty = disagreement_penalty
        self.sampling = sampling or SamplingConfig()
        self.generator = torch.Generator(device=world.device).manual_seed(seed)
        scale = int(world.tokenizer.spatial_compression)
        self.height, self.width = world.cfg.latent_height * scale, world.cfg.latent_width * scale
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []  # actions[i]: taken at frames[i]
        self._context: tuple[Tensor, Tensor] | None = None  # encode_context's, until the next frame

    def reset(self, obs: np.ndarray) -> None:
        self.frames, self.actions = [resize_frame(obs, self.width, self.height, self.resize)], []
        self._context = None

    def observe(self, action: int, obs: np.ndarray) -> None:
        """``action`` was taken at the last frame and led to ``obs``."""
        self.actions.append(int(action))
        self.frames.append(resize_frame(obs, self.width, self.height, self.resize))
        self._context = None
        keep = 1 + (self.context - 1) * self.world.tau
        if len(self.frames) > keep:  # only the context window is ever encoded
            drop = len(self.frames) - keep
            self.frames, self.actions = self.frames[drop:], self.actions[drop:]

    @torch.no_grad()
    def encode_context(self) -> tuple[Tensor, Tensor]:
        """The model-space context ``[1, ...]`` of the last latent frames the history covers and its
        actions ``[1, Tc, tau]`` (frame 0: "no action"). Encoded once per observed frame."""
        if self._context is not None:
            return self._context
        tau, cfg, world = self.world.tau, self.world.cfg, self.world
        tc = min(self.context, 1 + (len(self.frames) - 1) // tau)
        n = 1 + (tc - 1) * tau
        frames = np.stack(self.frames[-n:])
        video = frames_to_video(torch.from_numpy(frames)[None].to(world.device))
        if cfg.is_discrete:
            x = world.tokenizer.encode_indices(video).long()
        else:
            x = world.tokenizer.encode(video).float() * cfg.latent_scale
        taken = self.actions[len(self.actions) - (n - 1) :] if n > 1 else []
        groups = [[cfg.num_actions] * tau] + [taken[i * tau : (i + 1) * tau] for i in range(tc - 1)]
        self._context = (x, torch.tensor(groups, dtype=torch.long, device=world.device)[None])
        return self._context

    @torch.no_grad()
    def returns(self, candidates: np.ndarray) -> np.ndarray:
        world, cfg = self.world, self.world.cfg
        x, ctx_actions = self.encode_context()
        n, h = candidates.shape
        tc = world.frames(x)
        cand = torch.as_tensor(candidates, device=world.device)[:, :, None].expand(n, h, world.tau)
        actions = torch.cat([ctx_actions.expand(n, -1, -1), cand], dim=1)
        latent = None
        if int(getattr(cfg, "latent_actions", 0) or 0) > 0:
            latent = torch.full((n, tc + h), cfg.latent_actions, dtype=torch.long, device=world.device)
        ctx = x.expand(n, *x.shape[1:])
        if self.penalty > 0:
            imagined, disagreement = world.rollout(
                ctx, actions, h, self.generator, self.sampling, latent, return_disagreement=True
            )
        else:
            imagined, disagreement = (
                world.rollout(ctx, actions, h, self.generator, self.sampling, latent),
                None,
            )
        reward, cont = self.outcomes(world.cat(ctx, imagined), actions, latent, tc)
        alive = torch.cumprod(torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], dim=1), dim=1)
        weights = self.discount ** torch.arange(h, device=reward.device, dtype=reward.dtype)
        value = reward * alive
        if disagreement is not None:
            value = value - self.penalty * disagreement.to(value)
        return (value * weights).sum(1).cpu().numpy()

    def outcomes(
        self, x: Tensor, actions: Tensor, latent: Tensor | None, start: int
    ) -> tuple[Tensor, Tensor]:
        """Reward ``[N, T - start]`` and continuation probability of frames ``start..T-1`` of ``x``
        (model space), each read in a window of at most ``max_frames`` frames that begins one frame
        before the first it scores (the model was trained on windows that long)."""
        world, model = self.world, self.world.dynamics
        t, span = world.frames(x), max(2, world.cfg.max_frames)
        rewards, conts = [], []
        first = start
        while first < t:
            lo = max(0, first - 1)
            hi = min(t, lo + span)
            acts = FrameActions.of(actions[:, lo:hi], None if latent is None else latent[:, lo:hi])
            out = model.predict_outcomes(world.slice(x, lo, hi), acts)
            rewards.append(out["reward"][:, first - lo :])
            cont = out.get("continue_prob")
            conts.append(cont[:, first - lo :] if cont is not None else torch.ones_like(rewards[-1]))
            first = hi
        return torch.cat(rewards, 1).float(), torch.cat(conts, 1).float()


# -- episodes ----------------------------------------------------------------------------------


def episode_seed(seed: int, game: str, index: int) -> int:
    """The seed of planning episode ``index`` of ``game``: one start per (seed, game, index), shared
    by every agent, and apart from the seeds ``vidworld samples`` records (``pipeline.samples``)."""
    words = [seed, 0x504C414E, zlib.crc32(game.encode()), index]  # 0x504C414E: "PLAN"
    return int(np.random.SeedSequence(words).generate_state(1)[0])


@dataclasses.dataclass
class Episode:
    """One played episode."""

    seed: int
    steps: int
    ended: bool  # the game ended (else the step cap stopped it)
    ret: float  # summed reward
    points: float  # summed positive reward
    decisions: int
    plan_seconds: float  # time spent choosing actions

    def row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def play_episode(
    env: Any,
    seed: int,
    agent: str,
    cfg: PlanConfig,
    tau: int,
    model: ModelScorer | None,
    progress: Progress | None = None,
) -> Episode:
    """Play one episode from ``env.reset(seed=seed)`` with ``agent``: a planner's action is held for
    ``planner.hold`` latent frames (``hold * tau`` emulator steps), random play draws one action per
    emulator step (the usual random baseline)."""
    obs, _info = env.reset(seed=seed)
    n = int(env.action_space.n)
    rng = np.random.default_rng(seed)
    planner = Planner(cfg.planner, n, rng) if agent != "random" else None
    scorer: Scorer | None = None
    if agent == "emulator":
        scorer = EmulatorScorer(env, tau, cfg.planner.discount)
    elif agent == "model":
        assert model is not None
        model.reset(obs)
        model.generator.manual_seed(seed)
        scorer = model
    steps, ret, points, decisions, think = 0, 0.0, 0.0, 0, 0.0
    ended = False
    while steps < cfg.max_steps and not ended:
        t0 = time.perf_counter()
        if planner is None or scorer is None:
            action = int(rng.integers(n))
        else:
            action = int(planner.plan(scorer)[0][0])
        think += time.perf_counter() - t0
        decisions += 1
        # A planned action is held for its `hold` latent frames; random play picks every emulator step.
        for _ in range(cfg.planner.hold * tau if planner is not None else 1):
            obs, reward, terminated, truncated, _info = env.step(action)
            steps += 1
            ret += float(reward)
            points += max(float(reward), 0.0)
            if progress is not None:
                progress.update(1, points=max(float(reward), 0.0))
            if model is not None and agent == "model":
                model.observe(action, obs)
            if terminated or truncated:
                ended = True
                break
            if steps >= cfg.max_steps:
                break
    return Episode(seed, steps, ended, ret, points, decisions, think)


def summarise(episodes: list[Episode], planned: bool) -> dict[str, Any]:
    returns = np.array([e.ret for e in episodes])
    think = sum(e.plan_seconds for e in episodes)
    decisions = sum(e.decisions for e in episodes)
    return {
        "episodes": [e.row() for e in episodes],
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_points": float(np.mean([e.points for e in episodes])),
        "mean_steps": float(np.mean([e.steps for e in episodes])),
        "games_ended": int(sum(e.ended for e in episodes)),
        "decisions_per_second": decisions / think if planned and think > 0 else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` when it means something (``b > 0``), else ``None``."""
    if a is None or b is None or b <= 0:
        return None
    return a / b


def gap_closed(model: float | None, random: float | None, emulator: float | None) -> float | None:
    """``(model - random) / (emulator - random)``: the share of the gap between random play and the
    emulator planner that the model planner closes (1: as good as the true model, 0: no better than
    random). Unlike a ratio of returns it means the same for games with negative returns (Pong)."""
    if model is None or random is None or emulator is None or emulator <= random:
        return None
    return (model - random) / (emulator - random)


def plan(cfg: PlanConfig, world: WorldModel | None = None) -> dict[str, Any]:
    """Play ``cfg.episodes`` episodes of each game with each agent; write ``plan.json`` and ``plan.md``."""
    cfg.validate()
    with folder_lock(cfg.output, "vidworld plan"):
        model = None
        tau = 1
        if "model" in cfg.agents:
            world = world or WorldModel.load(cfg.checkpoint, cfg.tokenizer, cfg.device)
            tau = world.tau
            model = ModelScorer(
                world,
                cfg.context,
                cfg.planner.discount,
                cfg.resize,
                cfg.seed,
                cfg.sampling,
                cfg.planner.disagreement_penalty,
            )
        games: dict[str, Any] = {}
        total = len(cfg.games) * len(cfg.agents) * cfg.episodes * cfg.max_steps
        progress = Progress("plan", total, unit="steps", interval=10.0)
        for game in cfg.games:
            env = make_atari_env(game)
            try:
                n = int(env.action_space.n)
                if model is not None and n > model.world.cfg.num_actions:
                    raise ConfigError(
                        f"{game} has {n} actions but checkpoint={cfg.checkpoint} was trained with "
                        f"model.num_actions={model.world.cfg.num_actions}: plan a game the model knows"
                    )
                rows: dict[str, Any] = {"num_actions": n, "agents": {}}
                for agent in cfg.agents:
                    played = []
                    for i in range(cfg.episodes):
                        ep = play_episode(
                            env, episode_seed(cfg.seed, game, i), agent, cfg, tau, model, progress
                        )
                        played.append(ep)
                        # Steps the cap did not use still count towards the total: the ETA stays honest.
                        progress.update(cfg.max_steps - ep.steps)
                    rows["agents"][agent] = summarise(played, agent != "random")
            finally:
                env.close()
            agents = rows["agents"]
            mean = {a: agents[a]["mean_return"] for a in agents}
            rows["model_over_random"] = ratio(mean.get("model"), mean.get("random"))
            rows["model_over_emulator"] = ratio(mean.get("model"), mean.get("emulator"))
            rows["emulator_over_random"] = ratio(mean.get("emulator"), mean.get("random"))
            rows["model_gap_closed"] = gap_closed(mean.get("model"), mean.get("random"), mean.get("emulator"))
            games[game_name(game)] = rows
        progress.close()
        result = {
            "games": games,
            "checkpoint": cfg.checkpoint,
            "checkpoint_step": None if world is None else world.step,
            "tokenizer": cfg.tokenizer,
            "temporal_compression": tau,
            "episodes": cfg.episodes,
            "max_steps": cfg.max_steps,
            "seed": cfg.seed,
            "context": cfg.context,
            "planner": dataclasses.asdict(cfg.planner),
            "device": str(world.device) if world is not None else "cpu",
            "machine": machine_name(),
            "date": utc_now(),
        }
        out = Path(cfg.output)
        atomic_write_text(out / "plan.json", json.dumps(result, indent=2) + "\n")
        atomic_write_text(out / "plan.md", table_markdown(result))
        log_to_wandb(cfg, out, result)
    return result


def table_rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per game and agent: game, agent, mean return, std, mean points, mean steps, games
    ended, decisions per second."""
    rows = []
    for game, g in result["games"].items():
        for agent, a in g["agents"].items():
            dps = a["decisions_per_second"]
            rows.append(
                [
                    game,
                    agent,
                    round(a["mean_return"], 2),
                    round(a["std_return"], 2),
                    round(a["mean_points"], 2),
                    round(a["mean_steps"], 1),
                    a["games_ended"],
                    None if dps is None else round(dps, 2),
                ]
            )
    return rows


COLUMNS = ["game", "agent", "mean return", "std", "mean points", "mean steps", "games ended", "decisions/s"]


def table_markdown(result: dict[str, Any]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    lines = [
        f"{result['episodes']} episodes per game and agent, at most {result['max_steps']} emulator "
        "steps each; "
        f"planner {result['planner']['method']}, {result['planner']['horizon']} decisions of "
        f"{result['planner']['hold']} latent frames, "
        f"population {result['planner']['population']} x {result['planner']['iterations']} rounds.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table_rows(result)]
    lines.append("")
    for game, g in result["games"].items():
        parts = [
            f"{k.replace('_over_', ' / ')} {cell(None if g[k] is None else round(g[k], 2))}"
            for k in ("model_over_random", "model_over_emulator", "emulator_over_random")
        ]
        closed = g["model_gap_closed"]
        parts.append(
            f"share of the random-to-emulator gap closed {cell(None if closed is None else round(closed, 2))}"
        )
        lines.append(f"- {game}: mean return ratios: " + ", ".join(parts))
    return "\n".join(lines) + "\n"


def log_to_wandb(cfg: PlanConfig, folder: Path, result: dict[str, Any]) -> None:
    """The table as ``TABLE_KEY`` and each game's ratios as summary figures, in a run under ``folder``."""
    config = {"plan": json.loads(json.dumps(dataclasses.asdict(cfg)))}
    run = open_run(cfg.wandb, folder, cfg.wandb.name or "plan", "plan", config)
    if run is None:
        return
    try:
        figures: dict[str, Any] = {TABLE_KEY: wandb_media(Table(COLUMNS, table_rows(result)))}
        for game, g in result["games"].items():
            for agent, a in g["agents"].items():
                figures[f"plan/{game}/{agent}/mean_return"] = a["mean_return"]
            for k in ("model_over_random", "model_over_emulator", "model_gap_closed"):
                if g[k] is not None:
                    figures[f"plan/{game}/{k}"] = g[k]
        run.log(figures)
    finally:
        run.finish()


def cli(config_path: str, overrides: list[str]) -> int:
    """``vidworld plan jobs/plan.yaml checkpoint=RUN tokenizer=TOK output=OUT``."""
    return stage_cli("plan", PlanConfig, plan, config_path, overrides, _report)


def _report(cfg: PlanConfig, result: dict[str, Any]) -> int:
    print(table_markdown(result), end="", flush=True)
    print(Path(cfg.output) / "plan.json", flush=True)
    return 0
