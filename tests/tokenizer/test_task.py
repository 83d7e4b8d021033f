"""TokenizerTask: the tokenizer behind the shared training runtime, and jobs/tokenizer.yaml."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from pipeline.shards import ShardWriter
from runtime.config import ConfigError
from runtime.parallelize import build_on_meta, materialize
from runtime.tracking import read_metrics
from runtime.train import load_train_config
from runtime.video import VideoClip, encode_mp4
from tokenizer import load_tokenizer
from tokenizer.metrics import to_uint8
from tokenizer.synthetic import moving_shapes
from tokenizer.task import TokenizerTask, TokenizerTaskConfig

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "jobs" / "tokenizer.yaml"
TINY = ["model.base_channels=8", "model.channel_multipliers=[1,2]", "model.clip_size=[32,32]"]


def test_tokenizer_yaml_loads_with_the_task_model_section():
    cfg = load_train_config(YAML, ["data.shards=somewhere"])
    assert cfg.task == "tokenizer" and isinstance(cfg.model, TokenizerTaskConfig)
    assert (cfg.model.clip_frames - 1) % cfg.model.temporal_compression == 0
    assert cfg.model.tokenizer_config().to_dict().keys() == {
        k for k in cfg.model.to_dict() if k not in ("clip_frames", "clip_size")
    }


def test_clip_frames_that_the_tokenizer_cannot_take_fail_at_start_naming_the_key():
    with pytest.raises((ValueError, ConfigError), match=r"clip_frames=8 must be 1 \+ k\*4"):
        load_train_config(YAML, ["data.shards=x", "model.clip_frames=8"])


def test_task_crops_a_loader_batch_and_gives_losses_media_and_counts():
    cfg = load_train_config(YAML, ["data.shards=x", "model.bottleneck=fsq", *TINY])
    task = TokenizerTask(cfg.model, cfg)
    model = materialize(build_on_meta(task), "cpu")
    frames = torch.from_numpy(moving_shapes(2, 17, 40).numpy())  # [2, 17, 40, 40, 3] uint8
    video = task.prepare(frames)
    assert video.shape == (2, 3, 9, 32, 32) and video.dtype == torch.float32
    # Centre crop of the first 9 frames; in training a window starting at a random frame.
    assert torch.equal(to_uint8(video), frames[:, :9, 4:36, 4:36])
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(20):
        v = to_uint8(task.prepare(frames, g))
        (start,) = [s for s in range(9) if torch.equal(v, frames[:, s : s + 9, 4:36, 4:36])]
        starts.add(start)
    assert len(starts) > 3
    out = task.loss(model, {"video": video})
    assert {"loss", "rec", "psnr_float"} <= set(out) and out["loss"].requires_grad
    out["loss"].backward()
    assert len(task.blocks(model)) == len(model.tokenizer.blocks()) > 0
    model.eval()
    with torch.no_grad():
        media = task.eval_media(model, {"video": video})
    side_by_side = media["eval/reconstruction"]
    assert side_by_side.shape == (9, 32, 64, 3) and side_by_side.dtype == "uint8"
    assert (side_by_side[:, :, :32] == to_uint8(video)[0].numpy()).all()
    assert 0 < media["eval/recon_psnr"] < 100 and -1 <= media["eval/recon_ssim"] <= 1
    assert 0 < media["eval/codebook_usage"] <= 1
    with torch.no_grad():
        clip = task.eval_media(model, {"video": video, "fps": 12.5})["eval/reconstruction"]
    assert isinstance(clip, VideoClip) and clip.fps == 12.5
    np.testing.assert_array_equal(clip.frames, side_by_side)
    assert task.tokens_per_sample() == 3 * 4 * 4
    assert task.flops_per_sample() == pytest.approx(model.tokenizer.training_flops_per_video(9, 32, 32))
    with pytest.raises(ValueError, match=r"clips are 5 frames of 40x40.*clip_frames=9"):
        task.prepare(frames[:, :5])


# Two training clips that differ in frames, height, width, patch, temporal compression and
# bottleneck, so a count that ignores one of them disagrees with the counter on at least one.
FLOP_CLIPS = {
    "gaussian-4x8x8-5f-16x16": dict(clip_frames=5, clip_size=[16, 16]),
    "fsq-2x8x8-p2-9f-16x32": dict(
        temporal_compression=2, patch_size=2, bottleneck="fsq", clip_frames=9, clip_size=[16, 32]
    ),
}


@pytest.mark.parametrize("clip", sorted(FLOP_CLIPS))
def test_flops_per_sample_agrees_with_torch_flop_counter_over_a_training_step(clip):
    """What MFU uses (3x the forward counted on the meta device, less the first conv's input
    gradient) against PyTorch's ``FlopCounterMode`` over a real training step on CPU: the task's
    loss forward and ``backward()`` (no x3 rule on the counter's side). They agree exactly here
    (tolerance 1%); 3x the forward alone is 5.1% (fsq clip) and 1.6% (gaussian clip) too high."""
    cfg = TokenizerTaskConfig(
        base_channels=8, channel_multipliers=[1, 2], latent_channels=4, **FLOP_CLIPS[clip]
    )
    task = TokenizerTask(cfg, SimpleNamespace(data=None))
    model = materialize(build_on_meta(task), "cpu")
    with FlopCounterMode(display=False) as counter:
        task.loss(model, task.example_batch(2))["loss"].backward()
    counted = counter.get_total_flops() / 2  # per clip
    assert abs(counted - task.flops_per_sample()) / counted < 0.01, (counted, task.flops_per_sample())


def _write_shards(folder: Path, clips: int = 8) -> None:
    videos = moving_shapes(clips, 9, 32, seed=3).numpy()
    with ShardWriter(folder / "shards", samples_per_shard=4) as w:
        for i, v in enumerate(videos):
            meta = {"split": "train", "fps": 15.0}
            w.write(f"clip{i:04d}", {"json": meta, "mp4": encode_mp4(v, fps=15, crf=18)})


@pytest.mark.integration
def test_vidworld_train_runs_the_tokenizer_task_and_its_run_folder_loads(tmp_path):
    _write_shards(tmp_path / "curated")
    run_dir = tmp_path / "run"
    from tests.runtime.train_helpers import VIDWORLD, train_env

    cmd = [
        VIDWORLD,
        "train",
        str(YAML),
        f"run_dir={run_dir}",
        f"data.shards={tmp_path / 'curated'}",
        *TINY,
        "trainer.max_steps=6",
        "trainer.eval_every=3",
        "trainer.save_every=3",
        "trainer.log_every=1",
        "trainer.warmup_steps=1",
        "wandb.mode=disabled",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tok = load_tokenizer(run_dir)
    trained = load_file(str(run_dir / "model.safetensors"))
    for name, value in tok.state_dict().items():
        assert torch.equal(value, trained[f"tokenizer.{name}"])
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    assert tok.decode(tok.encode(video)).shape == video.shape
    # The eval video plays at the clips' own rate (their KEY.json fps), not the tracker's default.
    videos = sorted((run_dir / "media").rglob("*.mp4"))
    assert videos, sorted(p.name for p in run_dir.rglob("*"))
    with av.open(str(videos[0])) as container:
        assert float(container.streams.video[0].average_rate) == pytest.approx(15.0)


@pytest.mark.integration
@pytest.mark.slow
def test_two_process_tokenizer_training_is_the_same_at_zero0_and_zero3(tmp_path):
    """The real task under ZeRO-3 (parameters partitioned over the 2 ranks, gathered per module):
    the same losses and weights as the same 2 ranks at ZeRO-0."""
    from tests.runtime.train_helpers import TORCHRUN, VIDWORLD, train_env

    _write_shards(tmp_path / "curated")
    losses, weights = {}, {}
    for stage in (0, 3):
        run_dir = tmp_path / f"zero{stage}"
        cmd = [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node=2",
            VIDWORLD,
            "train",
            str(YAML),
            f"run_dir={run_dir}",
            f"data.shards={tmp_path / 'curated'}",
            *TINY,
            "trainer.max_steps=4",
            "trainer.save_every=4",
            "trainer.log_every=1",
            "trainer.warmup_steps=1",
            f"trainer.zero_stage={stage}",
            "wandb.mode=disabled",
        ]
        proc = subprocess.run(cmd, cwd=REPO, env=train_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        rows = read_metrics(run_dir)
        losses[stage] = [rows[s]["train/loss"] for s in sorted(rows)]
        weights[stage] = load_file(str(run_dir / "model.safetensors"))
    assert len(losses[0]) == 4 and losses[3] == pytest.approx(losses[0], rel=1e-5)
    assert weights[3].keys() == weights[0].keys()
    for key, w in weights[0].items():
        torch.testing.assert_close(weights[3][key], w, rtol=1e-5, atol=1e-6, msg=key)
