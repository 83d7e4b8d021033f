"""The streaming shard loader: coverage over ranks and workers, exact decoding, order, resume, corruption.

Fixture clips are 32x32 frames whose left half has brightness ``clip_value(clip)`` and right half
``frame_value(t)``, so every decoded frame says which clip and which frame it is; actions are
``100 * clip + t`` and rewards ``clip + t / 100``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.loader import LoaderConfig, collate, decode_member, make_loader, resolve_shards
from pipeline.shards import ShardWriter, npy_bytes
from runtime.config import ConfigError, merge_into
from runtime.video import encode_mp4

NUM_CLIPS = 24
CLIPS_PER_SHARD = 4  # 6 shards


def clip_value(clip: int) -> int:
    return 16 + 9 * clip


def frame_value(t: int) -> int:
    return 16 + 12 * t


def clip_length(clip: int) -> int:
    return 9 + clip % 3  # 9, 10 or 11 frames


def make_frames(clip: int, t_len: int, size: int = 32) -> np.ndarray:
    frames = np.empty((t_len, size, size, 3), np.uint8)
    for t in range(t_len):
        frames[t, :, : size // 2] = clip_value(clip)
        frames[t, :, size // 2 :] = frame_value(t)
    return frames


def clip_members(clip: int, t_len: int | None = None) -> dict:
    t_len = clip_length(clip) if t_len is None else t_len
    return {
        "mp4": encode_mp4(make_frames(clip, t_len), fps=10, crf=4),
        "json": {
            "format_version": 1,
            "key": f"clip{clip:03d}",
            "clip": clip,
            "num_frames": t_len,
            "fps": 10,
            "split": "heldout" if clip % 4 == 0 else "train",
        },
        "actions.npy": np.arange(t_len, dtype=np.int64) + 100 * clip,
        "rewards.npy": (clip + np.arange(t_len) / 100).astype(np.float32),
    }


def write_dataset(root: Path, clips: dict[str, dict], per_shard: int) -> Path:
    with ShardWriter(root / "shards", samples_per_shard=per_shard) as writer:
        for key, members in clips.items():
            writer.write(key, members)
    return root


@pytest.fixture(scope="module")
def clips() -> dict[str, dict]:
    return {f"clip{c:03d}": clip_members(c) for c in range(NUM_CLIPS)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, clips) -> Path:
    return write_dataset(tmp_path_factory.mktemp("clips"), clips, CLIPS_PER_SHARD)


@pytest.fixture(scope="module")
def one_shard_dataset(tmp_path_factory, clips) -> Path:
    return write_dataset(tmp_path_factory.mktemp("one"), clips, NUM_CLIPS)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def cfg(root: Path, **kw) -> LoaderConfig:
    base = dict(shards=str(root), batch_size=3, shuffle_buffer=8, resampled=False, num_frames=9)
    return LoaderConfig(**{**base, **kw})


@pytest.mark.parametrize("which", ["dataset", "one_shard_dataset"])
def test_two_ranks_two_workers_see_every_clip_exactly_once_per_epoch(request, which):
    root = request.getfixturevalue(which)
    seen = []
    for rank in range(2):
        loader = make_loader(cfg(root, num_workers=2), rank=rank, world_size=2, seed=7)
        seen += keys_of(loader)
    dupes = [k for k, n in Counter(seen).items() if n > 1]
    assert not dupes
    assert sorted(seen) == sorted(f"clip{c:03d}" for c in range(NUM_CLIPS))


def test_decoded_frames_are_exactly_the_clip_with_its_actions_rewards_and_meta(dataset):
    loader = make_loader(cfg(dataset, batch_size=1, num_frames=None), seed=1)
    n = 0
    for batch in loader:
        frames, meta = batch["frames"][0], batch["meta"][0]
        clip = meta["clip"]
        t_len = clip_length(clip)
        assert batch["key"] == [f"clip{clip:03d}"]
        assert frames.dtype == torch.uint8 and frames.shape == (t_len, 32, 32, 3)
        expected = torch.from_numpy(make_frames(clip, t_len)).int()
        assert (frames.int() - expected).abs().max() <= 3  # near-lossless crf=4, gray levels
        assert batch["actions"].tolist() == [[100 * clip + t for t in range(t_len)]]
        assert batch["rewards"].dtype == torch.float32
        assert torch.allclose(batch["rewards"][0], clip + torch.arange(t_len) / 100)
        n += 1
    assert n == NUM_CLIPS


def test_num_frames_crops_frames_actions_rewards_alike_and_batches(dataset):
    batch = next(iter(make_loader(cfg(dataset, batch_size=4, num_frames=5), seed=0)))
    assert batch["frames"].shape == (4, 5, 32, 32, 3)
    assert batch["actions"].shape == batch["rewards"].shape == (4, 5)
    for i, meta in enumerate(batch["meta"]):
        right_half = batch["frames"][i, :, :, 16:].float().mean(dim=(1, 2, 3))
        assert torch.allclose(right_half, torch.tensor([float(frame_value(t)) for t in range(5)]), atol=2)
        assert batch["actions"][i].tolist() == [100 * meta["clip"] + t for t in range(5)]


def test_clips_shorter_than_num_frames_are_skipped_and_counted(dataset):
    loader = make_loader(cfg(dataset, num_frames=11))
    keys = keys_of(loader)
    assert sorted(keys) == sorted(f"clip{c:03d}" for c in range(NUM_CLIPS) if clip_length(c) == 11)
    assert loader.short_count == NUM_CLIPS - len(keys)
    assert loader.corrupt_count == 0


def test_split_keeps_only_clips_of_that_split(dataset):
    keys = keys_of(make_loader(cfg(dataset, split="heldout", num_workers=2), seed=3))
    assert sorted(keys) == [f"clip{c:03d}" for c in range(0, NUM_CLIPS, 4)]


def test_same_seed_same_order_and_another_epoch_or_seed_another_order(dataset):
    first = keys_of(make_loader(cfg(dataset, num_workers=2), seed=5))
    again = keys_of(make_loader(cfg(dataset, num_workers=2), seed=5))
    assert first == again
    loader = make_loader(cfg(dataset, num_workers=2), seed=5)
    epoch0, epoch1 = keys_of(loader), keys_of(loader)  # each iter() of a finite loader is the next epoch
    assert epoch0 == first
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    assert keys_of(make_loader(cfg(dataset, num_workers=2), seed=6)) != first


def test_no_shuffle_buffer_reads_shards_and_samples_in_order(dataset):
    keys = keys_of(make_loader(cfg(dataset, shuffle_buffer=0)))
    assert keys == [f"clip{c:03d}" for c in range(NUM_CLIPS)]


def test_resampled_stream_runs_past_the_end_into_new_epochs_with_full_batches(dataset):
    loader = make_loader(cfg(dataset, resampled=True, batch_size=5), seed=2)
    batches = list(itertools.islice(loader, 12))  # 60 clips: two and a half epochs of 24
    assert all(len(b["key"]) == 5 for b in batches)
    keys = keys_of(batches)
    assert sorted(keys[:24]) == sorted(f"clip{c:03d}" for c in range(NUM_CLIPS))
    assert keys[:24] != keys[24:48]
    assert loader.state_dict() == {"epoch": 3, "seed": 2, "samples_seen": 60}


def test_resume_from_state_dict_starts_a_new_epoch_instead_of_replaying(dataset):
    run = make_loader(cfg(dataset, resampled=True, num_workers=2), seed=11)
    seen = keys_of(itertools.islice(run, 3))
    state = run.state_dict()
    assert state["epoch"] == 1 and state["samples_seen"] == 9

    resumed = make_loader(cfg(dataset, resampled=True, num_workers=2), seed=999, state=state)
    after = list(itertools.islice(resumed, 3))
    assert all(b["epoch"] >= 1 for b in after)
    assert keys_of(after) != seen  # a restart from scratch would repeat `seen` exactly
    fresh = make_loader(cfg(dataset, resampled=True, num_workers=2), seed=11)
    assert keys_of(itertools.islice(fresh, 3)) == seen
    assert resumed.state_dict()["samples_seen"] == 18
    assert resumed.state_dict()["seed"] == 11  # the saved seed wins over the argument


def test_corrupt_samples_are_skipped_and_counted_and_the_rest_arrive(tmp_path, clips):
    bad = dict(clips)
    bad["clip003"] = {**clips["clip003"], "mp4": b"this is not an mp4" * 10}
    bad["clip010"] = {**clips["clip010"], "actions.npy": b"\x93NUMPY garbage"}
    bad["clip017"] = {**clips["clip017"], "json": b"{not json"}
    root = write_dataset(tmp_path, bad, CLIPS_PER_SHARD)
    loader = make_loader(cfg(root, num_workers=2), seed=0)
    keys = keys_of(loader)
    assert sorted(keys) == sorted(k for k in clips if k not in ("clip003", "clip010", "clip017"))
    assert loader.corrupt_count == 3  # counted across both worker processes


def test_truncated_shard_is_counted_and_the_other_shards_still_load(tmp_path, clips):
    root = write_dataset(tmp_path, clips, CLIPS_PER_SHARD)
    shard = root / "shards" / "shard-000002.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    loader = make_loader(cfg(root, shuffle_buffer=0, num_frames=None, batch_size=1), seed=0)
    keys = keys_of(loader)
    assert loader.corrupt_count >= 1
    assert set(f"clip{c:03d}" for c in range(NUM_CLIPS) if not 8 <= c < 12) <= set(keys)


def test_latent_shards_without_mp4_load_and_collate(tmp_path):
    rng = np.random.default_rng(0)
    samples = {
        f"lat{i:02d}": {
            "json": {"key": f"lat{i:02d}", "num_frames": 17},
            "latents.npy": rng.standard_normal((5, 4, 8, 8)).astype(np.float32),
            "indices.npy": rng.integers(0, 1000, (5, 8, 8)),
            "actions.npy": np.full(17, i, np.int64),
            "rewards.npy": np.zeros(17, np.float32),
        }
        for i in range(6)
    }
    root = write_dataset(tmp_path, samples, 3)
    batches = list(make_loader(LoaderConfig(shards=str(root), batch_size=2, resampled=False), seed=0))
    assert len(batches) == 3
    for b in batches:
        assert b["frames"] is None
        assert b["latents"].shape == (2, 5, 4, 8, 8) and b["latents"].dtype == torch.float32
        assert b["indices"].shape == (2, 5, 8, 8) and b["indices"].dtype == torch.int64
        for i, key in enumerate(b["key"]):
            assert torch.equal(b["latents"][i], torch.from_numpy(samples[key]["latents.npy"]))
            assert b["actions"][i].tolist() == [int(key[3:])] * 17


def test_num_frames_on_latent_shards_fails_with_the_fix(tmp_path):
    root = write_dataset(tmp_path, {"lat": {"json": {}, "latents.npy": np.zeros((2, 3))}}, 1)
    with pytest.raises(ValueError, match="num_frames=null"):
        list(make_loader(LoaderConfig(shards=str(root), num_frames=4, resampled=False)))


def test_big_endian_arrays_become_tensors_and_string_arrays_stay_lists():
    be = npy_bytes(np.arange(3, dtype=">i4"))
    names = npy_bytes(np.array(["left", "fire"]))
    samples = [
        {"key": k, "meta": {}, "codes": decode_member("c.npy", be), "names": decode_member("n.npy", names)}
        for k in "ab"
    ]
    batch = collate(samples)
    assert batch["codes"].tolist() == [[0, 1, 2], [0, 1, 2]] and batch["codes"].dtype == torch.int32
    assert [list(n) for n in batch["names"]] == [["left", "fire"]] * 2


def test_clips_of_different_lengths_fail_to_batch_with_the_fix():
    samples = [
        {"key": "a", "meta": {}, "frames": np.zeros((9, 2, 2, 3), np.uint8)},
        {"key": "b", "meta": {}, "frames": np.zeros((10, 2, 2, 3), np.uint8)},
    ]
    with pytest.raises(ValueError, match=r"'frames'.*a: \(9, 2, 2, 3\).*num_frames"):
        collate(samples)


def test_shard_specs_globs_braces_comma_lists_folders_and_lists_resolve_alike(dataset):
    shards = sorted(str(p) for p in (dataset / "shards").glob("*.tar"))
    assert len(shards) == NUM_CLIPS // CLIPS_PER_SHARD
    d = dataset / "shards"
    assert resolve_shards(str(dataset)) == shards
    assert resolve_shards(str(d)) == shards
    assert resolve_shards(f"{d}/shard-*.tar") == shards
    assert resolve_shards(f"{d}/shard-{{000000..000005}}.tar") == shards
    assert resolve_shards(f"{d}/shard-00000{{0,1}}.tar,{d}/shard-00000[2-5].tar") == shards
    assert resolve_shards(shards) == shards


def test_a_list_of_shard_paths_loads_those_shards_only(dataset):
    shards = sorted(str(p) for p in (dataset / "shards").glob("*.tar"))[:2]
    keys = keys_of(make_loader(LoaderConfig(shards=shards, resampled=False, num_frames=9)))
    assert sorted(keys) == [f"clip{c:03d}" for c in range(2 * CLIPS_PER_SHARD)]


def test_loader_config_is_a_config_section_with_typed_overrides():
    section = merge_into(
        LoaderConfig, ("cli", OmegaConf.from_dotlist(["shards=d", "num_frames=8", "split=train"]))
    )
    assert OmegaConf.to_object(section) == LoaderConfig(shards="d", num_frames=8, split="train")
    with pytest.raises(ConfigError, match="num_workers"):
        merge_into(LoaderConfig, ("cli", OmegaConf.from_dotlist(["num_workers=many"])))


def test_an_infinite_stream_with_no_usable_clips_fails_instead_of_hanging(dataset):
    loader = make_loader(cfg(dataset, resampled=True, split="validation"))
    with pytest.raises(RuntimeError, match="no usable clips.*split='validation'"):
        next(iter(loader))


def test_a_pattern_matching_nothing_fails_naming_the_pattern_and_the_fix(tmp_path):
    pattern = f"{tmp_path}/nowhere-*.tar"
    with pytest.raises(FileNotFoundError, match=r"nowhere-\*\.tar.*matches no files.*curation"):
        make_loader(LoaderConfig(shards=pattern))
    (tmp_path / "shard-000008.tar").write_bytes(b"")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"1 of the 2 shard\(s\) named by .*shard-000009.tar"):
        resolve_shards(f"{tmp_path}/shard-{{000008..000009}}.tar")
    with pytest.raises(FileNotFoundError, match="holds no .tar shards"):
        resolve_shards(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="data.shards"):
        make_loader(LoaderConfig())


def test_require_keeps_only_samples_with_those_members(tmp_path):
    with ShardWriter(tmp_path / "shards", samples_per_shard=10) as w:
        for i in range(6):
            members = {"json": {"key": f"c{i}"}, "latents.npy": np.full((2, 3), i, np.float32)}
            if i % 2:
                members["actions.npy"] = np.arange(2)
            w.write(f"c{i}", members)
    cfg = LoaderConfig(shards=str(tmp_path), batch_size=10, resampled=False, require=["actions"])
    (batch,) = list(make_loader(cfg))
    assert sorted(batch["key"]) == ["c1", "c3", "c5"]
    assert batch["actions"].shape == (3, 2)


def test_fields_decodes_only_the_named_fields_so_mixed_samples_batch(tmp_path):
    with ShardWriter(tmp_path / "shards", samples_per_shard=10) as w:
        for i in range(4):
            members = {"json": {"key": f"c{i}"}, "latents.npy": np.full((2, 3), i, np.float32)}
            if i % 2:
                members["actions.npy"] = np.arange(2)
            w.write(f"c{i}", members)
    cfg = LoaderConfig(shards=str(tmp_path), batch_size=4, resampled=False, fields=["latents"])
    (batch,) = list(make_loader(cfg))
    assert batch["latents"].shape == (4, 2, 3) and batch["actions"] is None
