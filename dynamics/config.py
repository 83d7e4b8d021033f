"""``DynamicsConfig``: every knob of the dynamics transformer and its two heads.

Defaults are the tiny CPU case (a few thousand parameters' worth of work per step);
``DynamicsConfig.preset("100m")`` gives the ~100M-parameter GPU benchmark model, ``"300m"`` and
``"1b"`` the steps above it (all three: 16 latent frames of 32x32 latents, patch 2 -> 256 tokens
per frame, 4096 per clip; BENCHMARKS.md lists their parameters and FLOPs per clip).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

HEADS = ("diffusion", "maskgit")
ACTION_TYPES = ("none", "discrete", "continuous")
ACTION_INJECTIONS = ("adaln", "add")
BACKENDS = ("auto", "math", "sdpa", "flex", "flash-attn")
PREDICTIONS = ("v", "x0")
SAMPLERS = ("euler", "heun")
REWARD_LOSSES = ("mse", "twohot")


@dataclass
class DynamicsConfig:
    """The ``model:`` section of a dynamics training YAML.

    Latent geometry comes from the tokenizer's interface: ``latent_channels`` (continuous
    latents ``[B, C, T, h, w]``) or ``codebook_size`` (discrete FSQ indices ``[B, T, h, w]``),
    and ``latent_height`` x ``latent_width``. ``max_frames`` bounds the clip length the
    model is trained on (rollouts may go past it: rotary positions extrapolate).
    """

    head: str = "diffusion"  # "diffusion" (continuous latents) or "maskgit" (discrete FSQ indices)
    latent_channels: int = 4
    codebook_size: int = 64
    latent_height: int = 8
    latent_width: int = 8
    max_frames: int = 4
    patch_size: int = 2

    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    # Factorized: alternate spatial (within-frame) and temporal (per-position, causal) blocks;
    # attention cost grows with T*N^2 + N*T^2 instead of (T*N)^2, for long clips.
    factorized: bool = False
    attention_backend: str = "auto"  # auto | math | sdpa | flex | flash-attn

    # Actions, one per latent frame: actions[:, t] is the action that led to frame t.
    action_type: str = "discrete"  # none | discrete | continuous
    num_actions: int = 4  # discrete: vocabulary size (index num_actions is reserved for "no action")
    action_dim: int = 0  # continuous: features per action
    # add: the action embedding is added to every token of its frame (Genie's choice; on the
    # dot-world test it is learned in far fewer steps than adaln); adaln: it joins the
    # per-frame adaptive-layer-norm conditioning of every block instead.
    action_injection: str = "add"
    # Latent actions (clips without action labels): the number of codes of a latent action model
    # (dynamics/lam.py; 0 = none) and its run folder, whose encoder labels every training clip's
    # transitions on the fly. The chain fills both in when it trains a `lam` stage.
    latent_actions: int = 0
    lam: str | None = None
    # Per labelled training clip, the probability that its latent codes are given beside its real
    # actions (otherwise "no latent action"); clips without labels always get their codes. The
    # model so learns real actions alone, latent codes alone, and both.
    latent_action_mix: float = 0.5
    # Fraction of the clips whose action labels are used (chosen by a hash of the clip key, the
    # same clips on every rank and in every run); the others train as unlabelled. For label-efficiency
    # studies: 0.1 = "10% of the clips are labelled".
    label_fraction: float = 1.0

    # The tokenizer seam (from tokenizer.interface), used by DynamicsTask on latent shards:
    # source frames per latent frame after the first, and a factor that brings continuous
    # latents to about unit variance (diffusion noise is unit variance).
    temporal_compression: int = 1
    latent_scale: float = 1.0

    # Diffusion head (flow matching: x_s = (1 - s) x0 + s eps, s in [0, 1]).
    prediction: str = "x0"  # x0 (the clean latent; what residual needs) or v (= eps - x0)
    # Residual: each frame is fed beside its clean predecessor and the head predicts x0 as that
    # predecessor plus a correction, so an untrained model copies the last frame and training
    # spends itself on what moves (a static background cannot hide the moving parts). Frame 0 has
    # no predecessor and is context only. Needs prediction="x0".
    residual: bool = True
    # Noise augmentation of the predecessor (GameNGen): its std is drawn from U(0, context_noise)
    # per frame in training (in latent units, ~unit variance) and told to the model, so rollouts
    # survive their own errors. Rollouts pass clean frames (level 0).
    context_noise: float = 0.1
    # Probability, per training clip, that each frame's predecessor is the model's own one-step
    # prediction of it (made without gradient from the true past) instead of the true frame: the
    # model learns to correct its own errors, which open-loop rollouts feed back (residual only).
    self_forcing: float = 0.0
    # Residual only: each clip's loss is its MSE divided by its copy-last MSE (+ relative_floor, in
    # latent units, ~unit variance), so every clip weighs the same whatever its motion. A plain MSE
    # (false) lets high-motion clips (camera footage) take the gradient from near-static ones
    # (game screens) when both train one model.
    relative_loss: bool = False
    relative_floor: float = 1.0e-3
    # Probability, per training clip, that all its actions are replaced by "no action": keeps an
    # unconditional mode (classifier-free guidance, clips without actions).
    action_dropout: float = 0.1
    sampler: str = "euler"  # euler (deterministic; equals DDIM on this schedule) | heun
    sampling_steps: int = 10
    # Shift of the noise-level schedule towards high noise (SD3 "timestep shift"); 1 = uniform.
    schedule_shift: float = 1.0

    # Reward and continuation heads (DreamerV3), off by default: a model without them has exactly
    # the parameters it had before they existed. Both read the backbone's per-frame state (the last
    # block's tokens of a frame, pooled): the reward of the transition into the frame, and whether
    # the episode goes on after it (dynamics/outcome.py says why); training needs KEY.rewards.npy
    # and, for the continuation head, KEY.terminals.npy in the shards.
    reward_head: bool = False
    reward_loss: str = "mse"  # mse: MSE on symlog(reward); twohot: cross-entropy over symlog bins
    reward_bins: int = 255  # twohot: bins evenly spaced over symlog rewards in [-20, 20]
    reward_loss_weight: float = 1.0
    continue_head: bool = False  # P(the episode goes on), binary cross-entropy
    continue_loss_weight: float = 1.0

    # Uncertainty (an ensemble of heads on a shared trunk): 1 = one head, the model as it always was
    # (same parameters, same checkpoints). K > 1: K members, each with its own top ensemble_depth
    # transformer blocks and output layers on the shared lower blocks, each from its own random
    # start and trained on the same loss; where the data gave no signal they keep disagreeing, and
    # their disagreement along a rollout is the model's epistemic uncertainty
    # (DynamicsHead.rollout(return_disagreement=True); a planner penalises it). Rollouts feed back
    # the members' combined prediction. Cost: (depth + (K-1) * ensemble_depth) blocks' FLOPs.
    ensemble: int = 1
    # Blocks each member owns (0 = only the output layers: cheapest). On the dot world of
    # tests/dynamics/test_ensemble.py (3 seeds, both heads) the disagreement on inputs never seen was
    # 1.5-1.9x that on held-out clips with 0, and 1.6-12x (and ~100x larger in absolute terms) with 1.
    ensemble_depth: int = 1
    # Each member's output projection starts random with weight std ensemble_prior_scale / sqrt(dim),
    # an output of about that std (latent units; logits) on the normalised last tokens: a random
    # prior the data pulls the members away from where it says something and leaves elsewhere. With
    # a zero start (adaLN-Zero, as one head has) the members barely differ anywhere.
    ensemble_prior_scale: float = 1.0
    # K > 1: each member weights each training clip by its own Poisson(1) draw (the online
    # bootstrap), so the members also see different data, not only different starts.
    ensemble_bootstrap: bool = True

    # MaskGIT head.
    maskgit_steps: int = 4
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k truncation

    def __post_init__(self) -> None:
        for name, allowed in (
            ("head", HEADS),
            ("action_type", ACTION_TYPES),
            ("action_injection", ACTION_INJECTIONS),
            ("attention_backend", BACKENDS),
            ("prediction", PREDICTIONS),
            ("sampler", SAMPLERS),
            ("reward_loss", REWARD_LOSSES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"DynamicsConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.dim % self.heads:
            raise ValueError(f"DynamicsConfig.dim={self.dim} must be divisible by heads={self.heads}")
        if (self.dim // self.heads) % 2:
            raise ValueError(
                f"head dim dim/heads={self.dim // self.heads} must be even for rotary embeddings"
            )
        for name in ("latent_height", "latent_width"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(
                    f"DynamicsConfig.{name}={getattr(self, name)} is not a multiple of patch_size="
                    f"{self.patch_size}; pick a patch size that divides the latent grid"
                )
        if self.residual and self.prediction != "x0":
            raise ValueError(
                "DynamicsConfig.residual=true predicts x0 relative to the previous frame: set "
                "prediction=x0 (or residual=false for v-prediction)"
            )
        if self.relative_loss and not (self.residual and self.relative_floor > 0):
            raise ValueError(
                f"DynamicsConfig.relative_loss=true needs residual=true and relative_floor > 0 "
                f"(got residual={self.residual}, relative_floor={self.relative_floor})"
            )
        if not 0.0 <= self.self_forcing <= 1.0:
            raise ValueError(f"DynamicsConfig.self_forcing={self.self_forcing} must be in [0, 1]")
        if not 0.0 <= self.action_dropout < 1.0 or self.context_noise < 0:
            raise ValueError(
                f"DynamicsConfig.action_dropout={self.action_dropout} must be in [0, 1) and "
                f"context_noise={self.context_noise} >= 0"
            )
        for name in ("latent_action_mix", "label_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DynamicsConfig.{name}={getattr(self, name)} must be in [0, 1]")
        if self.latent_actions < 0:
            raise ValueError(f"DynamicsConfig.latent_actions={self.latent_actions} must be >= 0 (0 = none)")
        if self.lam and self.latent_actions <= 0:
            raise ValueError(
                f"DynamicsConfig.lam={self.lam!r} names a latent action model but latent_actions=0; set "
                "model.latent_actions to its number of codes (the chain does this for its lam stage)"
            )
        if self.lam and self.head != "diffusion":
            raise ValueError(
                "DynamicsConfig.lam: the latent action model reads continuous latents; the maskgit head "
                "trains on FSQ indices. Drop model.lam or use a continuous tokenizer"
            )
        if self.reward_loss == "twohot" and self.reward_bins < 2:
            raise ValueError(
                f"DynamicsConfig.reward_bins={self.reward_bins} must be >= 2 for reward_loss=twohot"
            )
        for name in ("reward_loss_weight", "continue_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"DynamicsConfig.{name}={getattr(self, name)} must be >= 0")
        if not isinstance(self.ensemble, int) or isinstance(self.ensemble, bool) or self.ensemble < 1:
            raise ValueError(
                f"DynamicsConfig.ensemble={self.ensemble!r} must be an integer >= 1: set model.ensemble=1 "
                "for one output head (no uncertainty), or K > 1 (e.g. 5) for K heads whose disagreement is "
                "logged along rollouts"
            )
        if self.ensemble > 1 and not 0 <= self.ensemble_depth <= self.depth:
            raise ValueError(
                f"DynamicsConfig.ensemble_depth={self.ensemble_depth} must be in [0, depth={self.depth}]: "
                "the number of top blocks each ensemble member owns (1 is a good start)"
            )
        if self.ensemble_prior_scale < 0:
            raise ValueError(
                f"DynamicsConfig.ensemble_prior_scale={self.ensemble_prior_scale} must be >= 0 "
                "(1.0 is the default)"
            )
        if self.action_type == "continuous" and self.action_dim <= 0:
            raise ValueError("DynamicsConfig.action_type='continuous' needs action_dim > 0")

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    @property
    def is_discrete(self) -> bool:
        return self.head == "maskgit"

    @classmethod
    def preset(cls, name: str, **overrides: object) -> DynamicsConfig:
        """Named sizes: ``tiny`` (CPU tests), ``small`` (CPU benchmark), ``100m`` (GPU benchmark),
        ``300m`` and ``1b`` (GPU clusters). The sized ones hold the parameters their name says
        within 10% with the default diffusion head (checked by a test)."""
        # 16 frames of 32x32 latents (a 16x tokenizer at 512 px, an 8x one at 256 px), patch 2.
        clip = dict(latent_channels=16, latent_height=32, latent_width=32, max_frames=16, codebook_size=1000)
        # A block holds ~18 dim^2 parameters: 12 in attention and MLP, as in GPT or LLaMA, plus 6
        # in its adaLN modulation. So ~1B is 14 blocks at width 2048 (head dim 128), not the ~20
        # of a LLaMA-style 1B model, whose blocks have no modulation.
        presets: dict[str, dict[str, object]] = {
            "tiny": {},
            "small": dict(dim=256, depth=4, heads=4, latent_height=16, latent_width=16, max_frames=8),
            "100m": dict(clip, dim=768, depth=10, heads=12),  # 109M
            "300m": dict(clip, dim=1024, depth=16, heads=16),  # 307M
            "1b": dict(clip, dim=2048, depth=14, heads=16),  # 1.08B
        }
        if name not in presets:
            raise ValueError(f"unknown DynamicsConfig preset {name!r}; choose one of {sorted(presets)}")
        return dataclasses.replace(cls(), **{**presets[name], **overrides})
