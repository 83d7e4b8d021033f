"""dynamics.rollout: WorldModel (data -> rollout -> pixels) and ``vidworld rollout``'s video."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynamics.rollout import RolloutConfig, WorldModel, rollout_video, source_frames, source_slice
from runtime.video import decode_mp4
from tests.dynamics.eval_helpers import CopyLastDynamics, dyn_config, make_data, world, write_run
from tokenizer.evaluate import iter_split
from vidworld.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    return make_data(tmp_path_factory.mktemp("rollout"))


def test_latent_frame_i_maps_to_its_tau_source_frames():
    assert source_slice(0, 4) == slice(0, 1)
    assert source_slice(1, 4) == slice(1, 5)
    assert source_slice(3, 4) == slice(9, 13)
    assert source_frames(5, 4) == 17 and source_frames(2, 4) == 5


def test_prepare_scales_latents_and_groups_actions_per_latent_frame(data):
    w = world(data, CopyLastDynamics(), dyn_config(latent_scale=2.0))
    s = next(iter_split(str(data["root"] / "latents"), "heldout"))
    x, actions = w.prepare(s)
    assert x.shape == (1, 4, 4, 2, 2)
    torch.testing.assert_close(x[0].permute(1, 0, 2, 3), s["latents"].float() * 2.0)
    torch.testing.assert_close(w.latents(x)[0].permute(1, 0, 2, 3), s["latents"].float())
    assert actions.shape == (1, 4, 4)
    assert actions[0, 0].tolist() == [4, 4, 4, 4]  # latent frame 0: the "no action" index
    assert actions[0, 1].tolist() == s["actions"][0:4].tolist()  # produced source frames 1..4


def test_a_tokenizer_of_another_temporal_compression_is_refused(data):
    with pytest.raises(ValueError, match="temporal_compression=2"):
        world(data, CopyLastDynamics(), dyn_config(temporal_compression=2))


def _run_cli(data, run, out, *extra):
    root = data["root"]
    return main(
        [
            "rollout",
            "jobs/rollout.yaml",
            f"checkpoint={run}",
            f"tokenizer={root / 'tok'}",
            f"shards={root / 'latents'}",
            f"output={out}",
            "context=2",
            "horizon=2",
            "device=cpu",
            *extra,
        ]
    )


def test_vidworld_rollout_writes_truth_beside_model_with_the_context_marked(data, tmp_path, capsys):
    run = write_run(tmp_path / "run", dyn_config())
    assert _run_cli(data, run, tmp_path / "out", f"clips={data['root'] / 'clips'}") == 0
    path = tmp_path / "out" / "rollout.mp4"
    assert capsys.readouterr().out.strip() == str(path)
    video = decode_mp4(path)
    assert video.shape == (source_frames(4, 4), 16, 32, 3)  # 2 + 2 latent frames, two 16-px panels
    # Left: the true clip (first clip of the split in key order).
    truth = data["clips"]["clip001"]
    assert np.abs(video[:, :, :16].astype(int) - truth.astype(int)).mean() < 8
    # Right: red border on the context frames (1 + (2-1)*4 = 5 source frames) only.
    corner = video[:, 0, 17].astype(int)
    assert (corner[:5, 0] > 180).all() and (corner[:5, 1] < 80).all()
    assert not ((corner[5:, 0] > 180) & (corner[5:, 1] < 80)).all()


def test_rollout_is_reproducible_for_a_seed(data, tmp_path):
    run = write_run(tmp_path / "run", dyn_config(), perturb=0.05)
    w = WorldModel.load(run, data["root"] / "tok", "cpu")
    sample = next(s for s in iter_split(str(data["root"] / "latents"), "heldout") if "latents" in s)
    x, actions = w.prepare(sample)
    ctx = w.slice(x, 0, 2)

    def imagine(seed: int) -> torch.Tensor:
        return w.rollout(ctx, actions, 2, torch.Generator().manual_seed(seed))

    # Equal up to float rounding: oneDNN's kernels may sum in another order for other buffers'
    # alignment, which is also why the mp4 bytes are not compared.
    torch.testing.assert_close(imagine(0), imagine(0), rtol=1e-5, atol=1e-5)
    assert (imagine(0) - imagine(1)).abs().max() > 1e-2
    cfg = RolloutConfig(
        checkpoint=str(run),
        tokenizer=str(data["root"] / "tok"),
        shards=str(data["root"] / "latents"),
        output=str(tmp_path / "a"),
    )
    assert decode_mp4(rollout_video(cfg, w)).shape[0] == source_frames(4, w.tau)


def test_rollout_past_the_clip_is_a_clear_error(data, tmp_path):
    run = write_run(tmp_path / "run", dyn_config())
    assert _run_cli(data, run, tmp_path / "out", "horizon=9") == 1
