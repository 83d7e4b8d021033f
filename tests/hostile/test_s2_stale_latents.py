"""Latents follow their clips: re-curating makes tokenize stale, and its rerun holds the new clips only.
Also: WebDataset ``pipe:`` shard URLs need an explicit opt-in."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.curate import cli as curate_cli
from pipeline.curate import iter_shard
from pipeline.loader import LoaderConfig, make_loader, resolve_shards
from pipeline.samples import write_video
from tokenizer import TokenizerConfig, build_tokenizer, save_tokenizer
from tokenizer.tokenize import TokenizeConfig, is_complete, run

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "curate.yaml")


def _moving(n: int, shade: int) -> np.ndarray:
    frames = np.full((n, 72, 96, 3), 90, np.uint8)
    for t in range(n):
        x = (3 * t) % 80
        frames[t, 24:48, x : x + 16] = shade
    return frames


def _latent_keys(out: Path) -> list[str]:
    batches = make_loader(LoaderConfig(shards=str(out), batch_size=1, resampled=False, shuffle_buffer=0))
    return sorted(k for b in batches for k in b["key"])


def _clip_keys(curated: Path) -> list[str]:
    return sorted(k for p in sorted((curated / "shards").glob("*.tar")) for k, _ in iter_shard(p))


def test_recurating_with_more_inputs_makes_latents_stale_and_the_rerun_holds_exactly_the_new_clips(
    ray_session, tmp_path
):
    videos, curated, latents = tmp_path / "videos", tmp_path / "curated", tmp_path / "latents"
    videos.mkdir()
    for i in range(2):
        write_video(videos / f"v{i}.mp4", _moving(30, 150 + 40 * i), 15)
    args = [f"input={videos}", f"output={curated}", "clip_frames=9", "size=32", "samples_per_shard=2"]
    assert curate_cli(JOB, args) == 0
    torch.manual_seed(0)
    tcfg = TokenizerConfig(base_channels=8, channel_multipliers=[1, 1, 1, 1], bottleneck="fsq")
    export = save_tokenizer(build_tokenizer(tcfg), tcfg, tmp_path / "tok")
    cfg = TokenizeConfig(input=str(curated), output=str(latents), tokenizer=str(export), num_cpus=1)
    run(cfg)
    assert is_complete(cfg)
    old = _latent_keys(latents)
    assert old == _clip_keys(curated)

    time.sleep(0.01)
    for i in range(2, 4):
        write_video(videos / f"v{i}.mp4", _moving(30, 60 + 40 * i), 15)
    assert curate_cli(JOB, args) == 0
    new_clips = _clip_keys(curated)
    assert len(new_clips) > len(old)
    assert not is_complete(cfg)  # the clips changed under the latents

    stats = run(cfg)
    assert is_complete(cfg)
    assert _latent_keys(latents) == new_clips  # every new clip, once; nothing of the old run left over
    assert stats["clips"] == len(new_clips)
    assert len(list((latents / "shards").glob("shard-*.tar"))) == stats["shards"]
    rows = [json.loads(line) for line in (latents / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["clips"] for r in rows) == len(new_clips)


def test_pipe_shard_urls_are_refused_without_the_opt_in(tmp_path):
    marker = tmp_path / "ran"
    spec = f"pipe:touch {marker}; cat /dev/null"
    with pytest.raises(ValueError, match="data.allow_pipe"):
        resolve_shards(spec)
    with pytest.raises(ValueError, match="data.allow_pipe"):
        make_loader(LoaderConfig(shards=spec, resampled=False))
    assert not marker.exists()
    assert resolve_shards(spec, allow_pipe=True) == [spec]


def test_tokenize_refuses_a_pipe_input_by_name(tmp_path):
    marker = tmp_path / "ran"
    proc = subprocess.run(
        [sys.executable, "-m", "vidworld.cli", "tokenize", str(ROOT / "jobs" / "tokenize.yaml"),
         f"input=pipe:touch {marker}", f"output={tmp_path / 'out'}", f"tokenizer={tmp_path / 'tok'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0 and "allow_pipe" in proc.stderr, proc.stderr
    assert not marker.exists()
