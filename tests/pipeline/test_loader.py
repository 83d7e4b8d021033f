"""The streaming shard loader: coverage over ranks and workers, exact decoding, order, resume, corruption.

Fixture clips are 32x32 frames whose left half has brightness ``clip_value(clip)`` and right half
``frame_value(t)``, so every decoded frame says which clip and which frame it is; actions are
``100 * clip + t`` and rewards ``clip + t / 100``.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from pipeline.loader import LoaderConfig, collate, decode_member, make_loader, resolve_shards
from pipeline.shards import ShardWriter, npy_bytes
from runtime.checkpoint import merge_loader_states
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
    state = loader.state_dict()
    assert (state["epoch"], state["seed"], state["samples_seen"]) == (2, 2, 60)  # epoch 2 is in progress
    assert state["cursors"] == {"0": [2, 12]}  # one stream, 12 clips into epoch 2


def test_a_resumed_loader_goes_on_exactly_where_it_stopped_mid_epoch(dataset):
    c = cfg(dataset, resampled=True, num_workers=2)
    whole = keys_of(itertools.islice(make_loader(c, seed=11), 10))  # 30 clips: into the second epoch
    run = make_loader(c, seed=11)
    first = keys_of(itertools.islice(run, 3))
    state = run.state_dict()
    assert state["epoch"] == 0 and state["samples_seen"] == 9  # the workers read ahead; that is not counted
    resumed = make_loader(c, seed=999, state=state)
    assert first + keys_of(itertools.islice(resumed, 7)) == whole
    assert resumed.state_dict()["seed"] == 11  # the saved seed wins over the argument
    assert resumed.state_dict()["samples_seen"] == 30


def epoch_keys(loader, epoch: int, batches: int = NUM_CLIPS) -> list[str]:
    """The keys of ``epoch`` among a batch_size=1 endless loader's first ``batches`` batches (a rank's
    streams can be apart by a clip, so the first batch of the next epoch does not end its share)."""
    return keys_of(b for b in itertools.islice(loader, batches) if b["epoch"] == epoch)


@pytest.mark.parametrize(
    "before, after, taken", [((2, 2), (3, 1), (3, 5)), ((1, 1), (2, 2), (3,)), ((2, 1), (3, 1), (3, 15))]
)
def test_a_resume_in_another_layout_delivers_each_remaining_clip_once(dataset, before, after, taken):
    """Ranks x workers before the save and after it, and the clips each rank had taken (the last
    case: one rank 3 clips into epoch 1, the other in epoch 0): what was seen before plus after is
    every clip exactly once in epoch 0 and again in epoch 1."""

    def layout(workers):
        return cfg(dataset, resampled=True, num_workers=workers, batch_size=1, num_frames=None)

    ranks, workers = before
    loaders = [make_loader(layout(workers), rank=r, world_size=ranks, seed=4) for r in range(ranks)]
    seen = [
        (b["epoch"], b["key"][0])
        for r, loader in enumerate(loaders)
        for b in itertools.islice(loader, taken[r])
    ]
    state = merge_loader_states([loader.state_dict() for loader in loaders])
    ranks, workers = after
    for epoch in (0, 1):
        for r in range(ranks):
            resumed = make_loader(layout(workers), rank=r, world_size=ranks, seed=0, state=state)
            seen += [(epoch, k) for k in epoch_keys(resumed, epoch, 2 * NUM_CLIPS)]
        assert sorted(k for e, k in seen if e == epoch) == sorted(f"clip{c:03d}" for c in range(NUM_CLIPS))


def _save_in_two_processes(rank: int, root: str, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    c = cfg(Path(root), resampled=True, num_workers=1, batch_size=2)
    loader = make_loader(c, rank=rank, world_size=2, seed=8)
    keys = keys_of(itertools.islice(loader, 2 + rank))  # the ranks need not be at the same place
    state = loader.state_dict()  # a collective: every rank's positions
    Path(out, f"{rank}.json").write_text(json.dumps({"keys": keys, "state": state}))
    dist.destroy_process_group()


def test_a_state_saved_by_two_processes_resumes_exactly_on_one_or_three(dataset, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_save_in_two_processes, args=(r, str(dataset), str(tmp_path), port))
        for r in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    saved = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    before = saved[0]["keys"] + saved[1]["keys"]
    assert len(before) == 10
    assert saved[0]["state"]["cursors"] == saved[1]["state"]["cursors"]  # both hold all four streams
    for ranks, state in ((1, saved[0]["state"]), (3, saved[1]["state"])):  # one rank's file alone
        c = cfg(dataset, resampled=True, batch_size=1)
        after = [k for r in range(ranks) for k in epoch_keys(make_loader(c, r, ranks, state=state), 0)]
        assert sorted(before + after) == sorted(f"clip{c:03d}" for c in range(NUM_CLIPS))


def latent_dataset(root: Path, per_shard: int, labelled: Callable[[int], bool], n: int = 16) -> Path:
    with ShardWriter(root / "shards", samples_per_shard=per_shard) as w:
        for i in range(n):
            members = {
                "json": {"key": f"c{i:02d}", "split": "train"},
                "latents.npy": np.full((2, 3), i, np.float32),
            }
            if labelled(i):
                members["actions.npy"] = np.arange(2)
            w.write(f"c{i:02d}", members)
    return root


def test_ranks_get_equal_shares_of_the_clips_that_pass_the_filters_not_of_the_shards(tmp_path):
    root = latent_dataset(tmp_path, 8, labelled=lambda i: i < 8)  # shard 0 labelled, shard 1 not
    c = LoaderConfig(shards=str(root), batch_size=1, resampled=False, require=["actions"])
    per_rank = [keys_of(make_loader(c, rank=r, world_size=2, seed=1)) for r in range(2)]
    assert [len(keys) for keys in per_rank] == [4, 4]
    assert sorted(per_rank[0] + per_rank[1]) == [f"c{i:02d}" for i in range(8)]


def test_more_streams_than_usable_clips_fails_before_training_naming_both(tmp_path):
    root = latent_dataset(tmp_path, 4, labelled=lambda i: i % 2 == 0, n=8)  # 4 usable
    c = LoaderConfig(shards=str(root), batch_size=1, num_workers=3, require=["actions"])
    assert make_loader(c, rank=0, world_size=1)  # 3 streams: enough
    with pytest.raises(ValueError, match=r"only 4 usable clips in 2 shard.*6 loader streams \(2 rank"):
        make_loader(c, rank=0, world_size=2)


def test_shards_without_their_index_or_with_a_stale_one_load_alike(dataset, tmp_path):
    index = json.loads((dataset / "shards" / "shard-000001.index.json").read_text())
    assert [row["key"] for row in index["samples"]] == [f"clip{c:03d}" for c in range(4, 8)]
    assert index["samples"][0]["split"] == "heldout" and index["samples"][1]["num_frames"] == clip_length(5)
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    for p in (copy / "shards").glob("*.index.json"):
        p.unlink()
    stale = {**index, "samples": index["samples"][:1], "size": index["size"] + 512}
    (copy / "shards" / "shard-000002.index.json").write_text(json.dumps(stale))
    c = cfg(dataset, num_frames=10, split="train")
    assert keys_of(make_loader(replace(c, shards=str(copy)), seed=3)) == keys_of(make_loader(c, seed=3))


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
    with pytest.raises(ValueError, match="no usable clips.*split='validation'"):
        make_loader(cfg(dataset, resampled=True, split="validation"))


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


def test_a_worker_forked_after_the_parent_decoded_still_decodes():
    """PyAV >= 18.1.1 keeps a scaler per thread; with FFmpeg 8's slice threads a forked DataLoader
    worker inherited it without its threads and hung in its first decode."""
    data = clip_members(1)["mp4"]
    decode_member("mp4", data)  # the parent decodes first, as training does at eval steps
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the decode finishes within 20 s
        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # killed outright, whatever handler pytest set
        signal.alarm(20)
        ok = decode_member("mp4", data).shape == (clip_length(1), 32, 32, 3)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
