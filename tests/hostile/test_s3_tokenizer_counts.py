"""The tokenizer task's loss dict carries the loader's counts of skipped clips (corrupt, too short)."""

from __future__ import annotations

from pathlib import Path

from pipeline.shards import ShardWriter
from runtime.parallelize import build_on_meta, materialize
from runtime.train import load_train_config
from runtime.video import encode_mp4
from tokenizer.synthetic import moving_shapes
from tokenizer.task import TokenizerTask

YAML = Path(__file__).resolve().parents[2] / "jobs" / "tokenizer.yaml"
TINY = ["model.base_channels=8", "model.channel_multipliers=[1,2]", "model.clip_size=[32,32]"]


def test_corrupt_and_short_clips_skipped_by_the_loader_are_in_the_tokenizer_loss_dict(tmp_path):
    videos = moving_shapes(3, 9, 32, seed=3).numpy()
    meta = {"split": "train", "fps": 15.0}
    with ShardWriter(tmp_path / "shards", samples_per_shard=8) as w:
        for i in range(2):
            w.write(f"clip{i}", {"json": meta, "mp4": encode_mp4(videos[i], fps=15, crf=18)})
        w.write("short", {"json": meta, "mp4": encode_mp4(videos[2][:5], fps=15, crf=18)})
        w.write("broken", {"json": meta, "mp4": b"not a video"})
    cfg = load_train_config(YAML, [f"data.shards={tmp_path}", "trainer.micro_batch_size=2", *TINY])
    task = TokenizerTask(cfg.model, cfg)
    model = materialize(build_on_meta(task), "cpu")
    batches = task.batches(rank=0, world_size=1, seed=0, state=None)
    outs = [task.loss(model, next(batches)) for _ in range(2)]  # the second batch starts epoch 1
    last = outs[-1]
    assert isinstance(last["data_corrupt_skipped"], float) and isinstance(last["data_short_skipped"], float)
    assert last["data_corrupt_skipped"] >= 1.0 and last["data_short_skipped"] >= 1.0
    assert outs[0]["loss"].requires_grad
