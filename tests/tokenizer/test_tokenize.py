"""The tokenize job: clip shards -> latent shards on a local Ray cluster, read back by the loader."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.curate import iter_shard
from pipeline.loader import LoaderConfig, make_loader
from pipeline.shards import ShardWriter
from runtime.video import decode_mp4, encode_mp4
from tokenizer import TokenizerConfig, build_tokenizer, load_tokenizer, save_tokenizer
from tokenizer.tokenize import TokenizeConfig, frames_to_video, is_complete, latent_geometry, run

pytestmark = pytest.mark.integration

T, H, W = 9, 32, 32  # 1 + 2*4 frames -> 3 latent frames of 4x4


def _clip(i: int) -> np.ndarray:
    """A square moving right, its brightness set by the clip id."""
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t, 8:20, 2 + 2 * t : 14 + 2 * t] = 60 + 30 * i
    return frames


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curated")
    clips = {}
    with ShardWriter(root / "shards", samples_per_shard=3) as w:
        for i in range(5):
            mp4 = encode_mp4(_clip(i), 15, crf=0)
            clips[f"clip{i}"] = decode_mp4(mp4)  # what the job sees (yuv420p is lossy even at crf 0)
            w.write(
                f"clip{i}",
                {
                    "mp4": mp4,
                    "json": {"key": f"clip{i}", "num_frames": T, "split": "train"},
                    "actions.npy": np.arange(T) % 3,
                    "rewards.npy": np.ones(T, np.float32),
                },
            )
        w.write("broken", {"mp4": b"not an mp4 at all", "json": {"key": "broken", "num_frames": T}})
    return root, clips


def _export(tmp_path, bottleneck: str):
    torch.manual_seed(0)
    cfg = TokenizerConfig(base_channels=8, channel_multipliers=[1, 1, 1, 1], bottleneck=bottleneck)
    return save_tokenizer(build_tokenizer(cfg), cfg, tmp_path / f"tok-{bottleneck}")


@pytest.mark.parametrize("bottleneck", ["gaussian", "fsq"])
def test_latent_shards_load_and_decode_back_to_the_clips_reconstruction(curated, tmp_path, bottleneck):
    root, clips = curated
    export = _export(tmp_path, bottleneck)
    out = tmp_path / "latents"
    stats = run(TokenizeConfig(input=str(root), output=str(out), tokenizer=str(export), num_cpus=2))
    assert stats["complete"] and stats["clips"] == 5 and stats["corrupt"] == 1
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["clips"] for r in rows] == [3, 2] and "broken" in rows[1]["reason"]

    tok = load_tokenizer(export)
    field = "indices" if bottleneck == "fsq" else "latents"
    batches = list(
        make_loader(LoaderConfig(shards=str(out), batch_size=5, resampled=False, shuffle_buffer=0))
    )
    assert len(batches) == 1
    batch = batches[0]
    assert batch["key"] == [f"clip{i}" for i in range(5)]
    assert torch.equal(batch["actions"], torch.from_numpy(np.stack([np.arange(T) % 3] * 5)))
    with torch.no_grad():
        video = frames_to_video(torch.from_numpy(np.stack([clips[k] for k in batch["key"]])))
        if bottleneck == "fsq":
            assert batch[field].shape == (5, 3, 4, 4) and batch[field].dtype == torch.int32
            assert torch.equal(batch[field].long(), tok.encode_indices(video))
            decoded = tok.decode_indices(batch[field].long())
        else:
            assert batch[field].shape == (5, 3, tok.latent_channels, 4, 4)
            expected = tok.encode(video)  # [B, C, T', h, w]
            got = batch[field].float().permute(0, 2, 1, 3, 4)
            assert torch.allclose(got, expected, atol=2e-3, rtol=2e-3)  # float16 storage
            decoded = tok.decode(got)
    assert decoded.shape == (5, 3, T, H, W)
    assert batch["meta"][0]["tokenizer"]["temporal_compression"] == 4


def test_rerun_skips_finished_shards_and_another_tokenizer_is_refused(curated, tmp_path):
    root, _ = curated
    export = _export(tmp_path, "gaussian")
    out = tmp_path / "latents"
    run(TokenizeConfig(input=str(root), output=str(out), tokenizer=str(export), num_cpus=2))
    shards = sorted((out / "shards").glob("*.tar"))
    for shard in shards:  # each latent shard's index lists the keys it holds, for the loader
        index = json.loads(shard.with_name(shard.stem + ".index.json").read_text())
        assert [row["key"] for row in index["samples"]] == [key for key, _ in iter_shard(str(shard))]
        assert index["size"] == shard.stat().st_size
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    run(TokenizeConfig(input=str(root), output=str(out), tokenizer=str(export), num_cpus=2))
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards} == before

    other = _export(tmp_path / "other", "fsq")
    with pytest.raises(ValueError, match="another tokenizer"):
        run(TokenizeConfig(input=str(root), output=str(out), tokenizer=str(other), num_cpus=2))


def test_tokenize_is_complete_until_a_shard_goes_or_the_tokenizer_changes(curated, tmp_path):
    root, _ = curated
    export = _export(tmp_path, "gaussian")
    cfg = TokenizeConfig(input=str(root), output=str(tmp_path / "latents"), tokenizer=str(export), num_cpus=2)
    assert not is_complete(cfg)
    run(cfg)
    assert is_complete(cfg)
    assert not is_complete(dataclasses.replace(cfg, chunk_frames=5))  # settings that change latents
    shard = tmp_path / "latents" / "shards" / "shard-000001.tar"
    kept = shard.read_bytes()
    shard.unlink()
    assert not is_complete(cfg)
    shard.write_bytes(kept)
    assert is_complete(cfg)
    save_tokenizer(load_tokenizer(export), None, export)  # re-exported, the same weights: the same latents
    assert is_complete(cfg)
    tok = load_tokenizer(export)
    with torch.no_grad():
        next(tok.parameters()).add_(0.5)
    save_tokenizer(tok, None, export)  # other weights: known by their content
    assert not is_complete(cfg)


def test_latent_geometry_is_what_the_dynamics_model_needs_of_the_latents(curated, tmp_path):
    root, _ = curated
    assert latent_geometry(tmp_path / "latents") == {}
    export = _export(tmp_path, "fsq")
    run(TokenizeConfig(input=str(root), output=str(tmp_path / "latents"), tokenizer=str(export), num_cpus=2))
    tok = load_tokenizer(export)
    assert latent_geometry(tmp_path / "latents") == {
        "temporal_compression": 4,
        "head": "maskgit",
        "codebook_size": tok.codebook_size,
        "latent_height": 4,
        "latent_width": 4,
    }
