"""The dynamics backbone and heads: causality, KV-cache rollouts, sizes, FLOPs and input errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynamics import DiffusionDynamics, DynamicsConfig, MaskGITDynamics, build_dynamics
from dynamics.attention import FrameCausalMask
from runtime.parallelize import apply_activation_checkpointing, available_attention_backends


def randomized(cfg: DynamicsConfig, seed: int = 0) -> nn.Module:
    """A model whose zero-initialised gates and output are perturbed, so every path carries signal."""
    torch.manual_seed(seed)
    model = build_dynamics(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def inputs(
    cfg: DynamicsConfig, batch: int, frames: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.latent_height, cfg.latent_width
    if cfg.head == "diffusion":
        x = torch.randn(batch, cfg.latent_channels, frames, h, w, generator=g)
    else:
        x = torch.randint(0, cfg.codebook_size, (batch, frames, h, w), generator=g)
    if cfg.action_type == "discrete":
        a = torch.randint(0, cfg.num_actions, (batch, frames), generator=g)
    elif cfg.action_type == "continuous":
        a = torch.randn(batch, frames, cfg.action_dim, generator=g)
    else:
        a = None
    return x, a


@torch.no_grad()
def network_output(
    model: nn.Module, x: torch.Tensor, a: torch.Tensor | None, s: torch.Tensor
) -> torch.Tensor:
    """Per-frame network output ``[B, T, ...]`` for latents or indices."""
    if isinstance(model, DiffusionDynamics):
        frames = x.permute(0, 2, 3, 4, 1)
        prev = model.predecessors(frames) if model.cfg.residual else None
        return model.predict(frames, s, a, prev=prev)
    return model.logits(x, a)


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
@pytest.mark.parametrize("factorized", [False, True])
@pytest.mark.parametrize("backend", available_attention_backends("cpu"))
def test_changing_future_frames_does_not_change_past_outputs(head, factorized, backend):
    cfg = DynamicsConfig(
        head=head, factorized=factorized, depth=2 if not factorized else 4, attention_backend=backend
    )
    model = randomized(cfg)
    x, a = inputs(cfg, 2, 4)
    s = torch.rand(2, 4)
    out = network_output(model, x, a, s)
    x2, a2, s2 = x.clone(), a.clone(), s.clone()
    future = (
        (slice(None), slice(None), slice(2, None)) if head == "diffusion" else (slice(None), slice(2, None))
    )
    x2[future] = inputs(cfg, 2, 4, seed=1)[0][future]
    a2[:, 2:] = (a[:, 2:] + 1) % cfg.num_actions
    s2[:, 2:] = torch.rand(2, 2)
    out2 = network_output(model, x2, a2, s2)
    torch.testing.assert_close(out2[:, :2], out[:, :2], atol=1e-5, rtol=1e-5)
    assert (out2[:, 2:] - out[:, 2:]).abs().max() > 1e-3  # the future itself did change


@pytest.mark.parametrize(
    "overrides",
    [
        dict(head="diffusion"),
        dict(head="diffusion", factorized=True, depth=4, sampler="heun", prediction="x0"),
        dict(head="diffusion", action_type="continuous", action_dim=3, action_injection="adaln"),
        dict(head="diffusion", action_type="none"),
        dict(head="maskgit", top_k=8),
        dict(head="maskgit", factorized=True, depth=4, action_injection="adaln"),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_cached_rollout_equals_uncached_rollout(overrides):
    cfg = DynamicsConfig(sampling_steps=3, maskgit_steps=3, max_frames=5, **overrides)
    model = randomized(cfg)
    x, a = inputs(cfg, 2, 5)
    context = x[:, :, :2] if cfg.head == "diffusion" else x[:, :2]
    cached = model.rollout(context, a, 3, generator=torch.Generator().manual_seed(7))
    uncached = model.rollout(context, a, 3, generator=torch.Generator().manual_seed(7), use_cache=False)
    if cfg.head == "diffusion":
        assert cached.shape == (2, cfg.latent_channels, 3, cfg.latent_height, cfg.latent_width)
        torch.testing.assert_close(cached, uncached, atol=1e-4, rtol=1e-4)
    else:
        assert cached.shape == (2, 3, cfg.latent_height, cfg.latent_width) and cached.dtype == torch.long
        assert torch.equal(cached, uncached)


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_cached_rollout_feeds_each_frame_through_the_network_far_less(head):
    """The cache is what makes rollouts cheap: count the tokens entering the network."""
    cfg = DynamicsConfig(head=head, sampling_steps=4, maskgit_steps=4, max_frames=8)
    model = randomized(cfg)
    seen = []
    model.backbone.patch_in.register_forward_hook(lambda m, i, o: seen.append(o.shape[:2].numel()))
    x, a = inputs(cfg, 1, 8)
    context = x[:, :, :2] if head == "diffusion" else x[:, :2]
    model.rollout(context, a, 6)
    cached, seen[:] = sum(seen), []
    model.rollout(context, a, 6, use_cache=False)
    uncached = sum(seen)
    # Cached: 2 context + 6 frames x (4 steps + 1 cache write) - 1; uncached: steps x (past + 1).
    assert cached == 2 + 6 * 5 - 1 and uncached == 4 * sum(range(3, 9))
    assert cached < uncached / 2


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
@pytest.mark.parametrize("factorized", [False, True])
def test_a_rollout_past_max_frames_attends_over_a_window_of_max_frames(head, factorized):
    cfg = DynamicsConfig(head=head, max_frames=3, factorized=factorized, depth=2, sampling_steps=2)
    model = randomized(cfg)
    x, a = inputs(cfg, 1, 8)
    context = x[:, :, :2] if head == "diffusion" else x[:, :2]
    seen_keys = []

    def keys(module, args, out):  # the attention's key length for each new query frame
        seen_keys.append(out[1][0].shape[2])

    for blk in model.backbone.blocks:
        if blk.kind != "spatial":
            blk.attn.register_forward_hook(keys)
    model.rollout(context, a, 6)
    n = cfg.tokens_per_frame
    full = n if not factorized else 1
    assert max(seen_keys) == cfg.max_frames * full  # the window's past frames and the new one
    seen_keys.clear()
    model.rollout(context, a, 6, use_cache=False)
    assert max(seen_keys) == cfg.max_frames * full  # rerun, the window is as long


@pytest.mark.parametrize("name", ["100m", "300m", "1b"])
def test_sized_presets_have_the_parameters_their_name_says_and_fit_16_frames_of_32x32(name):
    size = {"100m": 100e6, "300m": 300e6, "1b": 1e9}[name]
    cfg = DynamicsConfig.preset(name)
    model = build_dynamics(cfg, device=None)  # meta: nothing is allocated
    assert all(p.is_meta for p in model.parameters())
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - size) / size < 0.10, f"{name}: {n / 1e6:.1f}M parameters"
    assert (cfg.max_frames, cfg.latent_height, cfg.latent_width) == (16, 32, 32)
    assert 64 <= cfg.dim // cfg.heads <= 128  # head dims the GPU attention kernels are made for


# Two clip shapes (frames, model overrides) that differ in frames, grid, patch, width and MLP ratio,
# so a count that ignores one of them disagrees with the counter on at least one shape.
FLOP_SHAPES = {
    "4f-8x8-p2-d64": (4, dict(dim=64, heads=4)),
    "6f-16x8-p4-d96": (
        6,
        dict(dim=96, heads=4, latent_height=16, latent_width=8, patch_size=4, mlp_ratio=2.0),
    ),
    # Three ensemble members, each with its own top block and output layers (model.ensemble).
    "4f-8x8-p2-d64-ensemble3": (4, dict(dim=64, heads=4, ensemble=3, ensemble_depth=1)),
}


@pytest.mark.parametrize("shape", sorted(FLOP_SHAPES))
@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
@pytest.mark.parametrize("factorized", [False, True])
def test_flops_per_sample_agrees_with_torch_flop_counter(shape, head, factorized):
    """The analytic count MFU uses vs PyTorch's ``FlopCounterMode`` over a real training step:
    ``loss`` forward and ``backward()`` on CPU (no x3 rule on the counter's side), with
    self-forcing on (its extra forward without gradient is part of the step).

    The math backend computes every score, masked or not; ``flops_per_sample`` counts only the
    pairs the frame-causal mask allows (what a block-sparse kernel does). The masked pairs, read
    from the masks themselves, are added to it: 4 FLOPs per pair and feature forward, x3 with
    the backward. They then agree within 1.8% on these shapes (tolerance 3%); what is left are
    layers whose input needs no gradient, whose backward is 1x, not 2x, their forward (patch_in
    of diffusion, the adaLN modulations of maskgit, whose conditioning is a constant).
    """
    t, overrides = FLOP_SHAPES[shape]
    cfg = DynamicsConfig(
        head=head, factorized=factorized, depth=4, attention_backend="math", self_forcing=0.5, **overrides
    )
    model = build_dynamics(cfg)
    n, d = cfg.tokens_per_frame, cfg.dim
    x, a = inputs(cfg, 2, t)
    with FlopCounterMode(display=False) as counter:
        model.loss(x, a)["loss"].backward()
    counted = counter.get_total_flops() / 2  # per clip
    full, temporal = FrameCausalMask(t * n, t * n, n), FrameCausalMask(t, t, 1)
    masked = {
        "full": int((~full.dense()).sum()),
        "temporal": n * int((~temporal.dense()).sum()),
        "spatial": 0,
    }
    masked_pairs = sum(masked[kind] for kind in model.backbone.block_kinds)
    analytic = model.flops_per_sample(t)
    expected = analytic + 3 * 4 * d * masked_pairs
    assert abs(counted - expected) / expected < 0.03, (counted, expected)


def test_model_builds_on_meta_and_initialises_where_placed():
    cfg = DynamicsConfig()
    model = build_dynamics(cfg)
    assert not any(p.is_meta for p in model.parameters())
    # adaLN-Zero: blocks start as the identity and the output head at zero.
    assert all(blk.modulation.weight.abs().sum() == 0 for blk in model.blocks)
    x, a = inputs(cfg, 2, 3)
    assert torch.isfinite(model.loss(x, a)["loss"])


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_activation_checkpointing_from_outside_keeps_gradients(head):
    """The runtime checkpoints ``model.blocks`` one by one; the gradients must not change."""
    cfg = DynamicsConfig(head=head)
    model = randomized(cfg).train()
    x, a = inputs(cfg, 2, 3)

    def grads() -> list[torch.Tensor]:
        torch.manual_seed(3)
        model.zero_grad()
        model.loss(x, a)["loss"].backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    assert apply_activation_checkpointing(list(model.blocks), []) == len(model.blocks)
    for g1, g2 in zip(plain, grads(), strict=True):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_bf16_autocast_training_step_is_finite(head):
    cfg = DynamicsConfig(head=head)
    model = randomized(cfg).train()
    x, a = inputs(cfg, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(x, a)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


def test_bad_inputs_raise_errors_that_name_the_input_and_the_fix():
    diff = build_dynamics(DynamicsConfig())
    with pytest.raises(ValueError, match="latent_channels"):
        diff.loss(torch.randn(1, 3, 2, 8, 8), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one per latent frame"):
        diff.loss(torch.randn(1, 4, 2, 8, 8), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_actions"):
        diff.loss(torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 9))
    with pytest.raises(ValueError, match="context \\+ horizon"):
        diff.rollout(torch.randn(1, 4, 2, 8, 8), torch.zeros(1, 3, dtype=torch.long), horizon=2)
    ar = build_dynamics(DynamicsConfig(head="maskgit", codebook_size=16))
    with pytest.raises(ValueError, match="codebook_size"):
        ar.loss(torch.full((1, 2, 8, 8), 16), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="patch_size"):
        DynamicsConfig(latent_height=7)
    with pytest.raises(ValueError, match="head"):
        DynamicsConfig(head="gan")
    assert isinstance(ar, MaskGITDynamics)


def test_grouped_actions_are_summed_and_no_action_is_accepted():
    cfg = DynamicsConfig()
    model = randomized(cfg)
    x, a = inputs(cfg, 2, 3)
    s = torch.rand(2, 3)
    single = network_output(model, x, a, s)
    grouped = network_output(model, x, a[:, :, None], s)
    torch.testing.assert_close(single, grouped)
    a2 = a.clone()
    a2[:, 0] = cfg.num_actions  # "no action" for the first frame
    pairs = torch.stack([a2, a2], dim=2)
    emb = model.backbone.embed_actions(pairs, 2, 3)
    torch.testing.assert_close(emb, 2 * model.backbone.action_embed(a2))


@pytest.mark.parametrize("head", ["diffusion", "maskgit"])
def test_pure_bf16_weights_train_and_roll_out_as_under_deepspeed_bf16(head):
    cfg = DynamicsConfig(head=head, factorized=True, depth=2)
    model = build_dynamics(cfg).to(torch.bfloat16)
    x, a = inputs(cfg, 2, 3)
    x = x.to(torch.bfloat16) if x.is_floating_point() else x
    loss = model(x, a)["loss"]  # forward is the loss: what a wrapped model is called with
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad.dtype == torch.bfloat16 for p in model.parameters() if p.grad is not None
    )
    context = x[:, :, :2] if head == "diffusion" else x[:, :2]
    out = model.rollout(context, a, 1)
    assert out.dtype == (torch.bfloat16 if head == "diffusion" else torch.long)
