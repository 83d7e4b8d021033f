"""Short CPU training runs on the dot world (cross-hair version): the loss falls, and the model
listens to actions (rollouts under the true actions beat rollouts under another clip's actions)."""

from __future__ import annotations

import pytest
import torch

from dynamics import DynamicsConfig, build_dynamics
from tests.dynamics.dotworld import as_latents, dot_world

STEPS = 200


def world_cfg(head: str) -> DynamicsConfig:
    # x0-prediction: on this deterministic world it learns the dynamics in far fewer steps than v.
    return DynamicsConfig(
        head=head,
        latent_channels=1,
        codebook_size=2,
        latent_height=4,
        latent_width=4,
        patch_size=1,
        max_frames=4,
        dim=64,
        depth=2,
        heads=4,
        num_actions=4,
        prediction="x0",
        sampling_steps=8,
        maskgit_steps=2,
    )


def model_input(head: str, indices: torch.Tensor) -> torch.Tensor:
    return as_latents(indices) if head == "diffusion" else indices


@pytest.fixture(scope="module", params=["diffusion", "maskgit"])
def trained(request):
    """(head, model, loss on a fixed batch before training, after training)."""
    head = request.param
    torch.manual_seed(0)
    before_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_dynamics(world_cfg(head))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = dot_world(64, 4, size=4, generator=torch.Generator().manual_seed(99), cross=True)

    def probe_loss() -> float:
        torch.manual_seed(1)  # same noise levels / masks before and after
        with torch.no_grad():
            return float(model.loss(model_input(head, probe[0]), probe[1])["loss"])

    first = probe_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(STEPS):
        idx, actions = dot_world(32, 4, size=4, generator=g, cross=True)
        loss = model.loss(model_input(head, idx), actions)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = probe_loss()
    torch.set_num_threads(before_threads)
    return head, model.eval(), first, last


@pytest.mark.integration
def test_short_cpu_training_lowers_the_loss(trained):
    head, _, first, last = trained
    assert last < 0.5 * first, (head, first, last)


@pytest.mark.integration
def test_rollouts_under_true_actions_beat_rollouts_under_shuffled_actions(trained):
    head, model, _, _ = trained
    idx, actions = dot_world(64, 4, size=4, generator=torch.Generator().manual_seed(123), cross=True)
    shuffled = torch.roll(actions, 1, dims=0)  # another clip's actions, same context
    x = model_input(head, idx)
    if head == "diffusion":
        context, truth = x[:, :, :1], x[:, :, 1:]
        error = lambda a: float(
            ((model.rollout(context, a, 3, generator=torch.Generator().manual_seed(5)) - truth) ** 2).mean()
        )
    else:
        context, truth = x[:, :1], x[:, 1:]
        error = lambda a: float((model.rollout(context, a, 3, temperature=0.0) != truth).float().mean())
    true_err, shuffled_err = error(actions), error(shuffled)
    assert true_err < 0.5 * shuffled_err, (head, true_err, shuffled_err)


@pytest.mark.integration
def test_a_briefly_trained_model_beats_copying_the_last_frame_at_every_horizon(trained):
    head, model, _, _ = trained
    idx, actions = dot_world(64, 4, size=4, generator=torch.Generator().manual_seed(321), cross=True)
    x = model_input(head, idx)
    if head == "diffusion":
        context, truth = x[:, :, :1], x[:, :, 1:]
        pred = model.rollout(context, actions, 3, generator=torch.Generator().manual_seed(5))
        per_h = lambda a: ((a - truth) ** 2).mean(dim=(0, 1, 3, 4))  # noqa: E731
        model_err, copy_err = per_h(pred), per_h(context.expand_as(truth))
    else:
        context, truth = x[:, :1], x[:, 1:]
        pred = model.rollout(context, actions, 3, temperature=0.0)
        per_h = lambda a: (a != truth).float().mean(dim=(0, 2, 3))  # noqa: E731
        model_err, copy_err = per_h(pred), per_h(context.expand_as(truth))
    assert (model_err < 0.5 * copy_err).all(), (head, model_err.tolist(), copy_err.tolist())
