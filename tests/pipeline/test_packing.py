"""Packing in the Ray workers: bounded memory, byte-identical reruns, appends that leave complete
shards alone, and a repack that is never taken for complete before it is."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate import CurateConfig, cli, curation_inputs, is_complete, iter_shard, pack, staging_path
from pipeline.manifest import make_row, read_manifest
from pipeline.packing import ROW_KEY, WRITING_DIR, plan_shards, write_shard
from pipeline.samples import write_video
from pipeline.shards import add_sample
from runtime.config import load_config
from runtime.files import atomic_open

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "curate.yaml")
MIB = 1 << 20


def _moving(n: int, shade: int, height: int = 72, width: int = 96) -> np.ndarray:
    frames = np.full((n, height, width, 3), 90, np.uint8)
    for t in range(n):
        x = (3 * t) % (width - 16)
        frames[t, 24:48, x : x + 16] = shade
    return frames


def _videos(folder: Path, shades: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for shade in shades:
        write_video(folder / f"v{shade}.mp4", _moving(45, shade), 15)  # 45 frames -> 5 clips of 9
    return folder


def _args(inputs: Path, out: Path, *extra: str) -> list[str]:
    # size 64, not 32: x264 here encodes 32x32 clips differently from run to run (seen 2026-12-07),
    # and these tests compare bytes across separate curations
    return [f"input={inputs}", f"output={out}", "clip_frames=9", "size=64", "num_cpus=1", *extra]


def _cfg(inputs: Path, out: Path, *extra: str) -> CurateConfig:
    return load_config(CurateConfig, JOB, _args(inputs, out, *extra))


def _files(out: Path) -> dict[str, bytes]:
    """Every shard, shard index and the manifest, by name."""
    files = {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}
    return {**files, "manifest.jsonl": (out / "manifest.jsonl").read_bytes()}


def _fake_staging(path: Path, source_id: str, clips: int, clip_bytes: int, actions: bool = False) -> None:
    """A staging tar as ``stage_input`` writes it, with ``clips`` clips of random ``mp4`` bytes."""
    rng = np.random.default_rng(int(source_id[:8], 16))
    row = make_row(str(path), source_id, "ok", clips=clips)
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(clips):
            members = {"json": {"key": f"{source_id}_{i:05d}", "num_frames": 9}, "mp4": rng.bytes(clip_bytes)}
            if actions:
                members["actions.npy"] = np.arange(9)
            add_sample(tar, f"{source_id}_{i:05d}", members)
        add_sample(tar, ROW_KEY, {"json": row})


# --- the plan and one shard's task: no Ray -------------------------------------------------------


def test_clips_are_cut_into_shards_in_input_order_across_inputs():
    plans = plan_shards(
        [("a.tar", "train", 3), ("b.tar", "heldout", 4), ("c.tar", "train", 1)], 3, start_index=5
    )
    assert plans == [
        {"index": 5, "segments": [["a.tar", "train", 0, 3]]},
        {"index": 6, "segments": [["b.tar", "heldout", 0, 3]]},
        {"index": 7, "segments": [["b.tar", "heldout", 3, 1], ["c.tar", "train", 0, 1]]},
    ]
    assert plan_shards([], 3) == []


def test_a_shard_task_holds_one_clip_at_a_time_not_the_shard(tmp_path):
    """16 clips of 1 MiB go into one 16 MiB shard; the task's Python allocations peak near one clip."""
    _fake_staging(tmp_path / "a.tar", "aaaaaaaaaaaaaaaa", 10, MIB)
    _fake_staging(tmp_path / "b.tar", "bbbbbbbbbbbbbbbb", 10, MIB)
    plan = {
        "index": 0,
        "segments": [  # b's segment starts at its third clip: the skipped clips are not read either
            [str(tmp_path / "a.tar"), "train", 0, 10],
            [str(tmp_path / "b.tar"), "heldout", 2, 6],
        ],
    }
    tracemalloc.start()
    try:
        result = write_shard(plan, tmp_path / "shards")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    shard = tmp_path / "shards" / "shard-000000.tar"
    assert shard.stat().st_size > 16 * MIB
    assert peak < 3 * MIB, f"the shard task peaked at {peak / MIB:.1f} MiB of Python allocations"
    assert result["sha256"] == hashlib.sha256(shard.read_bytes()).hexdigest() and result["clips"] == 16
    samples = iter_shard(shard)
    keys = [k for k, _ in samples]
    assert keys == [f"aaaaaaaaaaaaaaaa_{i:05d}" for i in range(10)] + [
        f"bbbbbbbbbbbbbbbb_{i:05d}" for i in range(2, 8)
    ]
    assert [json.loads(m["json"])["split"] for _, m in samples] == ["train"] * 10 + ["heldout"] * 6
    index = json.loads((tmp_path / "shards" / "shard-000000.index.json").read_text())
    assert [s["key"] for s in index["samples"]] == keys and index["size"] == shard.stat().st_size


def test_a_staging_file_with_fewer_clips_than_planned_stops_the_shard_naming_it(tmp_path):
    _fake_staging(tmp_path / "a.tar", "aaaaaaaaaaaaaaaa", 2, 100)
    with pytest.raises(ValueError, match=r"a\.tar holds 2 clips, not the 3"):
        write_shard({"index": 0, "segments": [[str(tmp_path / "a.tar"), "train", 0, 3]]}, tmp_path / "w")
    assert not list((tmp_path / "w").glob("shard-*.tar"))  # the partial shard is never renamed into place


# --- the job, on a local Ray cluster -------------------------------------------------------------


def _staged_job(root: Path, clip_bytes: int) -> tuple[list, Path, CurateConfig]:
    """Four inputs of 10 staged clips each (the input files themselves are never read by packing)."""
    raw = root / "raw"
    raw.mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        (raw / f"{name}.mp4").write_bytes(b"not read: its clips are staged")
    cfg = CurateConfig(input=str(raw), output=str(root / "out"), samples_per_shard=4, num_cpus=1)
    items = curation_inputs(cfg.input)
    staging = root / "out" / "staging" / cfg.fingerprint()
    staging.mkdir(parents=True)
    for i, item in enumerate(items):
        _fake_staging(staging_path(staging, item), item.source_id, 10, clip_bytes, actions=i % 2 == 0)
    return items, staging, cfg


@pytest.mark.integration
def test_the_driver_reads_no_clip_while_ray_workers_pack(ray_session, tmp_path):
    """40 MiB of staged clips are packed while the driver's Python allocations stay a few MiB."""
    items, staging, cfg = _staged_job(tmp_path / "warm", 1000)
    pack(items, staging, Path(cfg.output), cfg)  # first use imports Ray's client modules: not traced
    items, staging, cfg = _staged_job(tmp_path / "big", MIB)
    tracemalloc.start()
    try:
        rows, hashes = pack(items, staging, Path(cfg.output), cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MIB, f"the driver peaked at {peak / MIB:.1f} MiB of Python allocations"
    shards = sorted((Path(cfg.output) / "shards").glob("shard-*.tar"))
    assert len(hashes) == len(shards) == 10 and sum(r["clips"] for r in rows) == 40
    assert sum(p.stat().st_size for p in shards) > 40 * MIB
    assert not (Path(cfg.output) / WRITING_DIR).exists()


@pytest.mark.integration
def test_two_curations_of_the_same_inputs_are_byte_identical(ray_session, tmp_path):
    inputs = _videos(tmp_path / "in", [150, 200, 250])
    assert cli(JOB, _args(inputs, tmp_path / "a", "samples_per_shard=4")) == 0
    assert cli(JOB, _args(inputs, tmp_path / "b", "samples_per_shard=4")) == 0
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len([n for n in a if n.endswith(".tar")]) == 4  # 15 clips
    stats = [json.loads((tmp_path / d / "stats.json").read_text()) for d in "ab"]
    assert stats[0]["shard_sha256"] == stats[1]["shard_sha256"]


@pytest.mark.integration
def test_adding_inputs_appends_shards_and_leaves_complete_ones_untouched(ray_session, tmp_path):
    inputs = _videos(tmp_path / "in", [150, 200, 250])
    out = tmp_path / "out"
    assert cli(JOB, _args(inputs, out, "samples_per_shard=4")) == 0
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) for p in (out / "shards").iterdir()}
    assert len([p for p in before if p.suffix == ".tar"]) == 4

    _videos(inputs, [120, 180])
    assert not is_complete(_cfg(inputs, out, "samples_per_shard=4"))
    assert cli(JOB, _args(inputs, out, "samples_per_shard=4")) == 0
    assert is_complete(_cfg(inputs, out, "samples_per_shard=4"))
    for p, (data, mtime, inode) in before.items():  # not rewritten, not even touched
        assert (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_ino) == (data, mtime, inode), p.name
    shards = sorted((out / "shards").glob("shard-*.tar"))
    assert [p.name for p in shards] == [f"shard-{i:06d}.tar" for i in range(7)]  # 4 + ceil(10 / 4)

    # The manifest says which inputs each shard holds, and it is what the shards hold.
    rows = read_manifest(out / "manifest.jsonl")
    holds: dict[str, set] = {}
    for row in rows:
        for name in row["shards"]:
            holds.setdefault(name, set()).add(row["source_id"])
    for shard in shards:
        assert holds[shard.name] == {json.loads(m["json"])["source_id"] for _, m in iter_shard(shard)}
    new = {str(inputs / "v120.mp4"), str(inputs / "v180.mp4")}
    assert {s for r in rows if r["source"] in new for s in r["shards"]} == {p.name for p in shards[4:]}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == 7 and stats["clips"] == 25
    assert stats["shard_sha256"] == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}

    # Other settings pack every clip anew: the same bytes as a curation from scratch.
    assert cli(JOB, _args(inputs, out, "samples_per_shard=3")) == 0
    assert cli(JOB, _args(inputs, tmp_path / "fresh", "samples_per_shard=3")) == 0
    assert _files(out) == _files(tmp_path / "fresh")


def _session_members(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # field 6 of stat: the session id
                pids.append(int(entry))
    return pids


@pytest.mark.integration
def test_a_repack_killed_midway_is_never_taken_for_complete(ray_session, tmp_path):
    inputs = _videos(tmp_path / "in", [150, 200, 250])
    out = tmp_path / "out"
    assert cli(JOB, _args(inputs, out, "samples_per_shard=4")) == 0
    old = _files(out)
    # A repack into 1-clip shards (staging reused: it goes straight to packing), killed once it has
    # written its first shard.
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidworld.cli", "curate", JOB, *_args(inputs, out, "samples_per_shard=1")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if list((out / WRITING_DIR).glob("shard-*.tar")):
                break
            time.sleep(0.005)
    finally:
        for pid in _session_members(proc.pid):  # the driver and the local Ray it started
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    written = len(list((out / WRITING_DIR).glob("shard-*.tar")))
    assert 1 <= written < 15, written  # killed halfway through its 15 shards
    assert not is_complete(_cfg(inputs, out, "samples_per_shard=1"))
    assert is_complete(_cfg(inputs, out, "samples_per_shard=4"))  # the old set stands, whole
    assert _files(out) == old

    # Killed between the two renames of the swap: no shards folder, no stats.
    (out / "shards").rename(out / ".shards.old")
    (out / "stats.json").unlink()
    assert not is_complete(_cfg(inputs, out, "samples_per_shard=4"))
    assert not is_complete(_cfg(inputs, out, "samples_per_shard=1"))

    assert cli(JOB, _args(inputs, out, "samples_per_shard=1")) == 0
    assert cli(JOB, _args(inputs, tmp_path / "fresh", "samples_per_shard=1")) == 0
    assert _files(out) == _files(tmp_path / "fresh")
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".shards")) == []


def test_sources_already_in_shards_keep_their_split_when_new_ones_join_their_group():
    from pipeline.curate import assign_splits

    old = assign_splits(["a.mp4", "b.mp4"], 1e-9)  # none falls below: the lowest hash is forced out
    forced = next(s for s, v in old.items() if v == "heldout")
    # a new source with a lower hash: from scratch it would be the one forced out instead
    new = next(
        n for n in (f"n{i}.mp4" for i in range(200)) if assign_splits([forced, n], 1e-9)[n] == "heldout"
    )
    grown = [*old, new]
    assert assign_splits(grown, 1e-9)[forced] == "train"
    assert assign_splits(grown, 1e-9, pinned=old) == {**old, new: "train"}
    many = [*old, *(f"m{i}.mp4" for i in range(50))]
    assert assign_splits(many, 0.3, pinned=old) == {**assign_splits(many, 0.3), **old}
