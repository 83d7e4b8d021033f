"""Re-curating makes every stage after it stale, even when the new shards have the old names, sizes
and mtimes; training on the changed data starts from step 0 (the old run kept aside, never resumed),
and tokenize rebuilds its latents for a tokenizer trained again at the same path."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.curate import cli as curate_cli
from pipeline.samples import write_video
from pipeline.shards import ShardWriter
from runtime import checkpoint as ckpt
from runtime.fingerprint import SHARD_HASHES, STATS_FILE, shards_fingerprint
from runtime.train import TrainConfig, TrainerConfig, load_train_config
from runtime.trained import is_complete as trained_complete
from runtime.trained import trained_step
from runtime.video import encode_mp4
from tests.hostile.test_s2_stale_latents import _moving  # the same moving-bar videos
from tests.runtime.train_helpers import VIDWORLD, train_env
from tokenizer import TokenizerConfig, build_tokenizer, save_tokenizer
from tokenizer.synthetic import moving_shapes
from tokenizer.tokenize import TokenizeConfig
from tokenizer.tokenize import is_complete as tokenize_complete
from tokenizer.tokenize import run as tokenize

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _stat_key(folder: Path) -> list[tuple[str, int, int]]:
    shards = sorted((folder / "shards").glob("*.tar"))
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in shards]


def _finished_run(run_dir: Path, shards: Path, steps: int = 5) -> TrainConfig:
    """A training run as ``vidworld train`` leaves it on ``shards``: its data record, exported weights."""
    cfg = TrainConfig(
        run_dir=str(run_dir),
        task="tokenizer",
        data={"shards": str(shards)},
        trainer=TrainerConfig(max_steps=steps),
    )
    run_dir.mkdir(parents=True)
    ckpt.begin_run(run_dir, cfg.data)
    ckpt.save_weights({"w": torch.zeros(1)}, run_dir / ckpt.WEIGHTS, {"step": str(steps)})
    return cfg


def _export(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    cfg = TokenizerConfig(base_channels=8, channel_multipliers=[1, 1, 1, 1], bottleneck="fsq")
    return save_tokenizer(build_tokenizer(cfg), cfg, folder)


def test_recurating_with_the_same_shard_names_sizes_and_mtimes_makes_every_later_stage_stale(
    ray_session, tmp_path
):
    videos, curated, latents = tmp_path / "videos", tmp_path / "curated", tmp_path / "latents"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"v{i}.mp4", _moving(30, 150 + 40 * i), 15)
    job = str(ROOT / "jobs" / "curate.yaml")
    args = [f"input={videos}", f"output={curated}", "clip_frames=9", "size=32", "num_cpus=1"]
    assert curate_cli(job, [*args, "heldout_fraction=0.0"]) == 0
    tok_cfg = TokenizeConfig(
        input=str(curated), output=str(latents), tokenizer=str(_export(tmp_path / "tok", 0)), num_cpus=1
    )
    tokenize(tok_cfg)
    assert json.loads((latents / STATS_FILE).read_text())[SHARD_HASHES]
    tokenizer_run = _finished_run(tmp_path / "tokenizer", curated)
    dynamics_run = _finished_run(tmp_path / "dynamics", latents)
    assert tokenize_complete(tok_cfg) and trained_complete(tokenizer_run) and trained_complete(dynamics_run)

    # Curated again: every clip is now held out, which changes a few bytes of each clip's JSON
    # ("train" -> "heldout") but, tar blocks being 512 bytes, no shard's size; the old mtimes are put back.
    times = {p.name: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (curated / "shards").glob("*.tar")}
    before = _stat_key(curated)
    assert curate_cli(job, [*args, "heldout_fraction=1.0"]) == 0
    for p in (curated / "shards").glob("*.tar"):
        os.utime(p, ns=times[p.name])
    assert _stat_key(curated) == before  # names, sizes and mtimes say nothing changed

    assert not tokenize_complete(tok_cfg)
    assert not trained_complete(tokenizer_run)
    assert trained_complete(dynamics_run)  # its latents are still the old ones...
    tokenize(tok_cfg)
    assert tokenize_complete(tok_cfg)
    assert not trained_complete(dynamics_run)  # ...until they are made again from the new clips


def test_tokenize_rebuilds_its_latents_for_a_tokenizer_trained_again_at_the_same_path(ray_session, tmp_path):
    curated = tmp_path / "curated"
    _write_clip_shards(curated, shade_seed=3)
    export = _export(tmp_path / "tok", 0)
    cfg = TokenizeConfig(
        input=str(curated), output=str(tmp_path / "latents"), tokenizer=str(export), num_cpus=1
    )
    tokenize(cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "latents" / "shards").glob("*.tar")}
    _export(tmp_path / "tok", 1)  # the chain trained the tokenizer again: other weights, same folder
    assert not tokenize_complete(cfg)
    stats = tokenize(cfg)  # not refused: these latents are of weights that are gone
    assert tokenize_complete(cfg) and stats["clips"] == 4
    after = {p.name: p.read_bytes() for p in (tmp_path / "latents" / "shards").glob("*.tar")}
    assert after.keys() == before.keys() and after != before


def _write_clip_shards(folder: Path, shade_seed: int, clips: int = 4) -> None:
    """Clip shards as curation writes them: ``stats.json`` records each shard's sha256."""
    videos = moving_shapes(clips, 9, 32, seed=shade_seed).numpy()
    with ShardWriter(folder / "shards", samples_per_shard=2) as w:
        for i, v in enumerate(videos):
            w.write(f"clip{i:04d}", {"json": {"split": "train", "fps": 15.0}, "mp4": encode_mp4(v, fps=15)})
    (folder / STATS_FILE).write_text(
        json.dumps({"complete": True, "shards": len(w.sha256), SHARD_HASHES: w.sha256})
    )


def _train(run_dir: Path, data: Path) -> subprocess.CompletedProcess:
    cmd = [
        VIDWORLD, "train", str(ROOT / "jobs" / "tokenizer.yaml"), f"run_dir={run_dir}", f"data.shards={data}",
        "model.base_channels=8", "model.channel_multipliers=[1,2]", "model.clip_size=[32,32]",
        "trainer.max_steps=2", "trainer.save_every=1", "trainer.eval_every=0", "trainer.log_every=1",
        "trainer.warmup_steps=1", "trainer.micro_batch_size=2", "wandb.mode=disabled",
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=300)


def test_vidworld_train_on_changed_data_starts_from_step_0_and_keeps_the_old_run(tmp_path):
    data, run_dir = tmp_path / "curated", tmp_path / "run"
    _write_clip_shards(data, shade_seed=3)
    proc = _train(run_dir, data)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_train_config(run_dir / "config.yaml")
    assert trained_complete(cfg)
    old_weights = (run_dir / ckpt.WEIGHTS).read_bytes()

    _write_clip_shards(data, shade_seed=4)  # curated again: other clips
    assert not trained_complete(cfg)
    proc = _train(run_dir, data)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "resumed from" not in out and "training from step 0" in out, out[-6000:]
    assert trained_complete(cfg) and trained_step(run_dir) == 2
    (stale,) = (run_dir / ckpt.STALE_DIR).iterdir()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()  # a fresh history, not appended to the old
    assert lines and len(lines) == len((stale / "metrics.jsonl").read_text().splitlines())
    assert (stale / ckpt.WEIGHTS).read_bytes() == old_weights  # the old model is kept, not overwritten
    assert ckpt.find_latest(stale) is not None


@pytest.mark.slow
def test_vidworld_run_after_recurating_trains_again_on_the_new_clips_alone(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    for i in range(3):
        write_video(videos / f"v{i}.mp4", _moving(36, 120 + 50 * i), 15, actions=np.arange(36) % 4)
    tiny = [
        "stages=[curate,tokenizer,tokenize,dynamics]", "train_launcher=local", "wandb.mode=disabled",
        "tokenizer.model.base_channels=8", "dynamics.model.dim=32", "dynamics.model.depth=1",
        "dynamics.model.heads=2",
    ] + [
        f"{stage}.trainer.{key}"
        for stage in ("tokenizer", "dynamics")
        for key in ("max_steps=2", "save_every=2", "eval_every=0", "micro_batch_size=2", "warmup_steps=1")
    ]  # fmt: skip
    cmd = [VIDWORLD, "run", str(ROOT / "jobs" / "demo.yaml"), f"input={videos}", f"output={out}", *tiny]

    first = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    old_clips = json.loads((out / "curated" / STATS_FILE).read_text())["clips"]

    write_video(videos / "v3.mp4", _moving(36, 240), 15, actions=np.arange(36) % 4)  # one more video
    second = subprocess.run(cmd, cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=900)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-6000:]
    clips = json.loads((out / "curated" / STATS_FILE).read_text())["clips"]
    assert clips > old_clips
    assert json.loads((out / "latents" / STATS_FILE).read_text())["clips"] == clips  # no old latents mixed in
    for stage, data in (("tokenizer", out / "curated"), ("dynamics", out / "latents")):
        cfg = load_train_config(out / "configs" / f"{stage}.yaml")
        assert trained_complete(cfg) and trained_step(out / stage) == 2, stage
        assert ckpt.read_data_record(out / stage)["fingerprint"] == shards_fingerprint(str(data))
        assert len(list((out / stage / ckpt.STALE_DIR).iterdir())) == 1, stage  # the old run, kept
    assert "resumed from" not in log
    tok_eval = json.loads((out / "tokenizer" / "eval" / "metrics.json").read_text())
    assert tok_eval["inputs"]["clips"] == shards_fingerprint(str(out / "curated"))
