"""The curation job end to end, on a local Ray cluster, over generated samples mixed with bad files."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.curate import CurateConfig, assign_splits, cli, curation_inputs, is_complete, iter_shard
from pipeline.manifest import read_manifest
from pipeline.samples import SamplesConfig, write_samples, write_video
from runtime.config import ConfigError, load_config
from runtime.video import decode_mp4

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
JOB = str(ROOT / "jobs" / "curate.yaml")
INDEX_FRAMES = 200  # frames of the counter video, 30 fps
STRIPES = 8


def _gray_frames(n: int, height: int = 96, width: int = 128) -> np.ndarray:
    """Frame i shows the Gray code of i as 8 black/white vertical stripes (one stripe flips per frame,
    so it has steady motion and no cut)."""
    frames = np.zeros((n, height, width, 3), np.uint8)
    stripe = width // STRIPES
    for i in range(n):
        g = i ^ (i >> 1)
        for b in range(STRIPES):
            if (g >> b) & 1:
                frames[i, :, b * stripe : (b + 1) * stripe] = 255
    return frames


def _read_index(frame: np.ndarray) -> int:
    stripe = frame.shape[1] // STRIPES
    g = 0
    for b in range(STRIPES):
        if frame[:, b * stripe + stripe // 4 : (b + 1) * stripe - stripe // 4].mean() > 128:
            g |= 1 << b
    i = 0
    while g:
        i ^= g
        g >>= 1
    return i


def _write_inputs(root: Path) -> None:
    write_samples(
        root,
        SamplesConfig(
            synthetic=4, natural=0, atari=2, atari_games=["ALE/Breakout-v5"], atari_max_frames=150, branches=1
        ),
    )
    i = np.arange(INDEX_FRAMES)
    write_video(
        root / "index" / "counter.mp4",
        _gray_frames(INDEX_FRAMES),
        30,
        actions=i,
        rewards=(i % 5 == 0).astype(np.float32),
        crf=12,
    )
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.mp4").write_bytes(b"")
    data = (root / "synthetic" / "scene-00.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (bad / "notes.txt").write_text("a text file, not a video\n" * 10)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=1",
            str(bad / "tone.m4a"),
        ],
        check=True,
    )
    write_video(
        bad / "tiny.mp4", np.random.default_rng(0).integers(0, 255, (20, 24, 32, 3), dtype=np.uint8), 15
    )
    write_video(bad / "black.mp4", np.zeros((40, 64, 64, 3), np.uint8), 15)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    _write_inputs(root)
    return root


def _args(inputs: Path, out: Path, *extra: str) -> list[str]:
    return [f"input={inputs}", f"output={out}", "samples_per_shard=8", "progress_interval=0.5", *extra]


@pytest.fixture(scope="module")
def curated(ray_session, inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("curated")
    assert cli(JOB, _args(inputs, out)) == 0
    return out


def _shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("shard-*.tar"))


def _digests(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in _shards(out)}


def _clips(out: Path) -> list[tuple[str, dict]]:
    return [s for p in _shards(out) for s in iter_shard(p)]


def _rows(out: Path) -> dict[str, dict]:
    return {r["source"]: r for r in read_manifest(out / "manifest.jsonl")}


def _row(out: Path, inputs: Path, rel: str) -> dict:
    return _rows(out)[str(inputs / rel)]


def test_every_input_gets_one_manifest_row_and_bad_files_say_why(curated, inputs):
    rows = _rows(curated)
    # 4 synthetic + 2 atari + 1 counter + 6 bad; sidecar .npy files and the branch .npz are not inputs
    assert len(rows) == 13
    expected = {
        "bad/empty.mp4": ("skipped", "empty file"),
        "bad/truncated.mp4": ("failed", "truncated"),
        "bad/notes.txt": ("failed", "not a video"),
        "bad/tone.m4a": ("skipped", "no video stream (audio only)"),
        "bad/tiny.mp4": ("skipped", "32x24 is smaller than filters.min_size=64"),
        "bad/black.mp4": ("skipped", "every clip was filtered (black=2)"),
    }
    for rel, (status, reason) in expected.items():
        row = _row(curated, inputs, rel)
        assert (row["status"], row["clips"]) == (status, 0), row
        assert reason in row["reason"], row
    ok = [r for r in rows.values() if r["status"] == "ok"]
    assert len(ok) == 7 and all(r["clips"] > 0 and r["probe"]["codec"] == "h264" for r in ok)
    stats = json.loads((curated / "stats.json").read_text())
    assert stats["inputs_by_status"] == {"ok": 7, "skipped": 4, "failed": 2}
    assert stats["clips"] == sum(r["clips"] for r in rows.values()) == len(_clips(curated))
    assert stats["clips_filtered"]["black"] == 2
    assert stats["source_resolutions"]["160x210"] == 2
    assert stats["shards"] == len(_shards(curated)) >= 3


def test_shards_read_back_with_webdataset_and_tarfile_in_key_order(curated):
    import webdataset as wds

    urls = [str(p) for p in _shards(curated)]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    keys = [s["__key__"] for s in samples]
    assert keys == [k for k, _ in _clips(curated)] == sorted(keys)
    assert all({"mp4", "json"} <= set(s) for s in samples)
    for path in urls[:-1]:
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert len({n.split(".", 1)[0] for n in names}) == 8  # samples_per_shard
            assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_every_clip_has_the_frames_and_size_its_json_says_per_ffprobe(curated, tmp_path):
    clips = _clips(curated)
    assert len(clips) > 30
    for key, members in clips:
        meta = json.loads(members["json"])
        path = tmp_path / f"{key}.mp4"
        path.write_bytes(members["mp4"])
        out = subprocess.run(
            [
                "ffprobe",
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames,r_frame_rate",
                "-of",
                "json",
                str(path),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        stream = json.loads(out.stdout)["streams"][0]
        assert stream["codec_name"] == "h264"
        assert (stream["width"], stream["height"]) == (meta["width"], meta["height"]) == (64, 64)
        assert int(stream["nb_read_frames"]) == meta["num_frames"] == 17
        assert stream["r_frame_rate"] == "15/1"
        assert set(meta["scores"]) == {"brightness", "motion", "max_frame_diff"}
        assert meta["end_time"] > meta["start_time"]


def test_actions_and_rewards_in_a_shard_belong_to_the_frames_they_were_recorded_with(curated, inputs):
    row = _row(curated, inputs, "index/counter.mp4")
    counter = [(k, m) for k, m in _clips(curated) if k.startswith(row["source_id"])]
    # 200 frames at 30 fps -> 100 at 15 fps -> 5 clips of 17 frames
    assert row["clips"] == len(counter) == 5
    source_rewards = (np.arange(INDEX_FRAMES) % 5 == 0).astype(np.float32)
    for _, members in counter:
        meta = json.loads(members["json"])
        frames = decode_mp4(members["mp4"])
        shown = [_read_index(f) for f in frames]
        actions = np.load(io.BytesIO(members["actions.npy"]))
        rewards = np.load(io.BytesIO(members["rewards.npy"]))
        assert shown == actions.tolist() == meta["source_frames"]
        assert all(
            b - a == 2 for a, b in zip(shown[:-1], shown[1:], strict=True)
        )  # 30 -> 15 fps keeps every other frame
        assert rewards.dtype == np.float32 and rewards.shape == (17,)
        assert rewards.sum() == source_rewards[shown[0] : shown[-1] + 2].sum()


def test_atari_clips_carry_their_episode_actions(curated, inputs):
    row = _row(curated, inputs, "atari/breakout/breakout-00.mp4")
    source_actions = np.load(inputs / "atari" / "breakout" / "breakout-00.actions.npy")
    clips = [m for k, m in _clips(curated) if k.startswith(row["source_id"])]
    assert len(clips) == row["clips"] >= 4
    for members in clips:
        meta = json.loads(members["json"])
        assert (
            np.load(io.BytesIO(members["actions.npy"])).tolist()
            == source_actions[meta["source_frames"]].tolist()
        )


def test_clips_of_one_source_share_one_split_and_some_source_is_held_out(curated):
    split_of: dict[str, set] = {}
    for _, members in _clips(curated):
        meta = json.loads(members["json"])
        split_of.setdefault(meta["source_id"], set()).add(meta["split"])
    assert all(len(s) == 1 for s in split_of.values())
    splits = [s.pop() for s in split_of.values()]
    assert "heldout" in splits and "train" in splits


def test_videos_with_actions_are_split_on_their_own_so_some_are_held_out(curated):
    """An action-conditioned model needs held-out videos with actions, whatever the hash gives."""
    with_actions: dict[str, str] = {}
    for _, members in _clips(curated):
        if "actions.npy" in members:
            meta = json.loads(members["json"])
            with_actions[meta["source_id"]] = meta["split"]
    assert len(with_actions) >= 2
    assert sorted(set(with_actions.values())) == ["heldout", "train"]


def test_the_same_videos_in_another_folder_get_the_same_split(curated, inputs, tmp_path):
    """The split hashes each video's path inside the input folder, not where the folder lies, so a
    benchmark's held-out videos are the same on every machine."""
    moved = tmp_path / "elsewhere" / "deeper" / "samples"
    shutil.copytree(inputs, moved)
    out = tmp_path / "out"
    assert cli(JOB, _args(moved, out)) == 0

    def splits(out: Path, root: Path) -> dict[str, str]:
        rows = read_manifest(out / "manifest.jsonl")
        return {str(Path(r["source"]).relative_to(root)): r["split"] for r in rows if r["status"] == "ok"}

    assert splits(out, moved) == splits(curated, inputs)
    assert sorted(set(splits(out, moved).values())) == ["heldout", "train"]


def test_split_assignment_is_stable_and_holds_out_at_least_one_of_two_sources():
    sources = [f"v{i}.mp4" for i in range(200)]
    split = assign_splits(sources, 0.2)
    assert split == assign_splits(list(reversed(sources)), 0.2)
    assert 20 < sum(v == "heldout" for v in split.values()) < 60
    assert sorted(assign_splits(["a.mp4", "b.mp4"], 0.2).values()) == ["heldout", "train"]
    assert assign_splits(["a.mp4", "b.mp4"], 0.0) == {"a.mp4": "train", "b.mp4": "train"}


def test_a_finished_curation_is_complete_for_its_inputs_only(curated, inputs, tmp_path):
    def cfg(inputs: Path, out: Path, *extra: str) -> CurateConfig:
        return load_config(CurateConfig, JOB, _args(inputs, out, *extra))

    assert is_complete(cfg(inputs, curated))
    assert not is_complete(cfg(inputs / "synthetic", curated))
    assert not is_complete(cfg(inputs, tmp_path / "elsewhere"))
    assert not is_complete(cfg(inputs, curated, "size=32"))  # made with other settings
    assert not is_complete(cfg(inputs, curated, "heldout_fraction=0.5"))


def test_a_rerun_skips_finished_inputs_and_changes_nothing(curated, inputs, capsys):
    before = _digests(curated)
    mtimes = [p.stat().st_mtime_ns for p in _shards(curated)]
    manifest = (curated / "manifest.jsonl").read_bytes()
    staged = sorted((curated / "staging").rglob("*"))
    assert cli(JOB, _args(inputs, curated)) == 0
    captured = capsys.readouterr()
    assert "13 already staged, 0 to do" in captured.err
    assert f"shards:   {curated / 'shards'}" in captured.out and "manifest.jsonl" in captured.out
    assert "nothing new" in captured.err
    assert _digests(curated) == before
    assert [p.stat().st_mtime_ns for p in _shards(curated)] == mtimes  # not even rewritten
    assert (curated / "manifest.jsonl").read_bytes() == manifest
    assert sorted((curated / "staging").rglob("*")) == staged


def test_a_run_stopped_after_some_inputs_finishes_on_rerun_with_byte_identical_shards(
    curated, inputs, tmp_path
):
    out = tmp_path / "partial"
    assert cli(JOB, _args(inputs, out, "max_inputs=4")) == 3
    assert not (out / "manifest.jsonl").exists() and not _shards(out)
    (staging,) = (out / "staging").iterdir()
    assert len(list(staging.glob("*.tar"))) == 4
    staged = {p.name.split("-")[0] for p in staging.glob("*.tar")}
    pending = next(i for i in curation_inputs(str(inputs)) if i.source_id not in staged)
    (staging / f".{pending.source_id}.tar.x.tmp").write_bytes(b"torn write of a killed run")
    (staging / ".notes.txt.x.tmp").write_bytes(b"not this job's file")
    assert cli(JOB, _args(inputs, out)) == 0
    assert _digests(out) == _digests(curated)
    assert [p.name for p in staging.glob(".*.tmp")] == [".notes.txt.x.tmp"]


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


def test_a_killed_run_finishes_on_rerun_with_byte_identical_shards(curated, inputs, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidworld.cli", "curate", JOB, *_args(inputs, out, "num_cpus=1")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if len(list(out.glob("staging/*/*.tar"))) >= 3:
                break
            time.sleep(0.05)
    finally:
        # Kill the driver and every process it started (the local Ray it launched shares its session).
        for pid in _session_members(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    staged = len(list(out.glob("staging/*/*.tar")))
    assert 3 <= staged < 13 and not (out / "manifest.jsonl").exists()
    assert cli(JOB, _args(inputs, out)) == 0
    assert _digests(out) == _digests(curated)
    assert len(read_manifest(out / "manifest.jsonl")) == 13


def test_a_csv_list_with_captions_puts_them_in_the_clip_json(ray_session, inputs, tmp_path):
    import pandas as pd

    urls = [str(inputs / "synthetic/scene-01.mp4"), str(inputs / "bad/notes.txt")]
    pd.DataFrame({"url": urls, "caption": ["a pan", None]}).to_csv(tmp_path / "list.csv", index=False)
    out = tmp_path / "listed"
    assert cli(JOB, _args(tmp_path / "list.csv", out, "resize=center_crop")) == 0
    rows = read_manifest(out / "manifest.jsonl")
    assert [(Path(r["source"]).name, r["status"]) for r in rows] == [
        ("notes.txt", "failed"),
        ("scene-01.mp4", "ok"),
    ]
    clips = _clips(out)
    assert clips and all(json.loads(m["json"])["caption"] == "a pan" for _, m in clips)


def test_bad_config_values_fail_with_the_key_name(tmp_path):
    with pytest.raises(ConfigError, match="size"):
        cli(JOB, [f"input={tmp_path}", f"output={tmp_path}/o", "size=63"])
    with pytest.raises(ConfigError, match="clip_frame"):
        cli(JOB, [f"input={tmp_path}", f"output={tmp_path}/o", "clip_frame=3"])


def test_an_input_that_matches_nothing_exits_1_naming_it(tmp_path, capsys):
    assert cli(JOB, [f"input={tmp_path}/nothing-*.mp4", f"output={tmp_path}/o"]) == 1
    assert "nothing-*.mp4" in capsys.readouterr().err


def test_the_config_fingerprint_ignores_settings_that_do_not_change_clips():
    a = CurateConfig(input="x", output="y")
    assert (
        a.fingerprint()
        == CurateConfig(input="z", output="w", samples_per_shard=3, heldout_fraction=0.5).fingerprint()
    )
    assert a.fingerprint() != CurateConfig(input="x", output="y", crf=30).fingerprint()
