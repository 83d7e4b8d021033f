"""Every stage's completeness check covers the content of the shards it read: a shard rewritten with
other bytes but the same name, size and mtime makes training and both evaluations stale, and a
training run on changed data starts from step 0 with its old outputs kept aside, never resumed."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dynamics import evaluate as dyn_eval
from pipeline.shards import ShardWriter
from runtime import checkpoint as ckpt
from runtime import fingerprint
from runtime.fingerprint import SHARD_HASHES, STATS_FILE, file_sha256, shards_fingerprint
from runtime.train import TrainConfig, TrainerConfig
from runtime.trained import is_complete, run_identity
from tests.dynamics.eval_helpers import CopyLastDynamics, eval_config, make_data, world, write_weights
from tokenizer import evaluate as tok_eval


def _write_dataset(folder: Path, version: int, record: bool = True) -> dict[str, str]:
    """Two shards of three samples as a job writes them (with ``stats.json`` recording the shards'
    sha256 when ``record``). ``version`` changes one byte of one sample: same names, same sizes."""
    with ShardWriter(folder / "shards", samples_per_shard=3) as w:
        for i in range(6):
            w.write(f"clip{i}", {"json": {"v": version if i == 4 else 0}, "mp4": bytes(100 + i)})
    if record:
        (folder / STATS_FILE).write_text(json.dumps({"complete": True, SHARD_HASHES: w.sha256}))
    return w.sha256


def _stat_key(folder: Path) -> list[tuple[str, int, int]]:
    """What the old fingerprints looked at: each shard's name, size and mtime."""
    return [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted((folder / "shards").glob("*.tar"))
    ]


def _recurate(folder: Path, version: int, record: bool = True) -> None:
    """Write the dataset again with other content, then give every shard its old mtime back."""
    times = {p.name: (p.stat().st_atime_ns, p.stat().st_mtime_ns) for p in (folder / "shards").glob("*.tar")}
    before = _stat_key(folder)
    _write_dataset(folder, version, record)
    for p in (folder / "shards").glob("*.tar"):
        os.utime(p, ns=times[p.name])
    assert _stat_key(folder) == before  # name, size and mtime tell nothing


# --- fingerprints ----------------------------------------------------------------------------------


def test_the_shard_writer_records_the_sha256_of_each_shard_it_wrote(tmp_path):
    hashes = _write_dataset(tmp_path, 1)
    shards = sorted((tmp_path / "shards").glob("*.tar"))
    assert hashes == {p.name: file_sha256(p) for p in shards}


@pytest.mark.parametrize("record", [True, False], ids=["recorded-hashes", "older-folder-without-hashes"])
def test_a_shard_rewritten_with_the_same_name_size_and_mtime_changes_the_fingerprint(tmp_path, record):
    _write_dataset(tmp_path, 1, record)
    before = shards_fingerprint(str(tmp_path))
    _recurate(tmp_path, 2, record)
    assert shards_fingerprint(str(tmp_path)) != before
    _recurate(tmp_path, 1, record)
    assert shards_fingerprint(str(tmp_path)) == before  # content, not history


def test_recorded_hashes_give_the_fingerprint_hashing_the_files_gives(tmp_path):
    _write_dataset(tmp_path / "recorded", 1, record=True)
    _write_dataset(tmp_path / "bare", 1, record=False)
    assert shards_fingerprint(str(tmp_path / "recorded")) == shards_fingerprint(str(tmp_path / "bare"))


def test_recorded_hashes_that_do_not_name_the_shards_there_are_not_trusted(tmp_path):
    _write_dataset(tmp_path, 1)
    before = shards_fingerprint(str(tmp_path))
    (tmp_path / "shards" / "shard-000001.tar").unlink()  # a shard removed by hand
    assert shards_fingerprint(str(tmp_path)) != before


def test_a_glob_of_shards_is_fingerprinted_by_content(tmp_path):
    _write_dataset(tmp_path, 1, record=False)
    spec = str(tmp_path / "shards" / "shard-*.tar")
    before = shards_fingerprint(spec)
    _recurate(tmp_path, 2, record=False)
    assert shards_fingerprint(spec) != before
    with pytest.raises(FileNotFoundError):
        shards_fingerprint(str(tmp_path / "nothing-*.tar"))


def test_a_brace_list_into_a_folder_with_recorded_hashes_reads_no_shard(tmp_path, monkeypatch):
    _write_dataset(tmp_path / "bare", 1, record=False)
    _write_dataset(tmp_path / "recorded", 1, record=True)
    hashed = shards_fingerprint(str(tmp_path / "bare" / "shards" / "shard-{000000..000001}.tar"))
    spec = str(tmp_path / "recorded" / "shards" / "shard-{000000..000001}.tar")

    def unread(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(fingerprint, "file_sha256", unread)
    assert shards_fingerprint(spec) == hashed
    _recurate(tmp_path / "recorded", 2)
    assert shards_fingerprint(spec) != hashed


# --- training --------------------------------------------------------------------------------------


def _train_cfg(tmp_path: Path, max_steps: int = 5) -> TrainConfig:
    return TrainConfig(
        run_dir=str(tmp_path / "run"),
        task="tokenizer",
        data={"shards": str(tmp_path / "data")},
        trainer=TrainerConfig(max_steps=max_steps),
    )


def _finish(cfg: TrainConfig, step: int) -> None:
    """What ``vidworld train`` leaves: the data record at the start, a checkpoint, exported weights."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt.begin_run(run_dir, cfg.data)
    tag = ckpt.checkpoint_root(run_dir) / ckpt.tag_for(step)
    tag.mkdir(parents=True)
    ckpt.mark_complete(tag, {"step": step})
    save_file({"w": torch.zeros(2)}, str(run_dir / ckpt.WEIGHTS), metadata={"step": str(step)})


def test_a_finished_training_run_is_stale_once_its_shards_change_in_content(tmp_path):
    cfg = _train_cfg(tmp_path)
    _write_dataset(tmp_path / "data", 1)
    _finish(cfg, 5)
    assert is_complete(cfg)
    _recurate(tmp_path / "data", 2)
    assert not is_complete(cfg)


def test_a_training_run_whose_shards_are_gone_is_not_complete(tmp_path):
    cfg = _train_cfg(tmp_path)
    _write_dataset(tmp_path / "data", 1)
    _finish(cfg, 5)
    for p in (tmp_path / "data" / "shards").glob("*.tar"):
        p.unlink()
    assert not is_complete(cfg)


def test_a_run_of_an_older_version_without_a_data_record_is_judged_by_its_step(tmp_path):
    cfg = _train_cfg(tmp_path)
    _write_dataset(tmp_path / "data", 1)
    _finish(cfg, 5)
    (Path(cfg.run_dir) / ckpt.DATA_RECORD).unlink()
    assert is_complete(cfg)
    assert not is_complete(dataclasses.replace(cfg, trainer=TrainerConfig(max_steps=6)))


def test_starting_on_changed_data_sets_the_old_run_aside_and_starts_from_step_0(tmp_path):
    cfg = _train_cfg(tmp_path)
    run_dir = Path(cfg.run_dir)
    _write_dataset(tmp_path / "data", 1)
    _finish(cfg, 5)
    (run_dir / "metrics.jsonl").write_text('{"train/step": 5}\n')
    (run_dir / ".lock").write_text("{}")
    assert ckpt.begin_run(run_dir, cfg.data) is None  # same data: resume, nothing moved
    assert ckpt.find_latest(run_dir) is not None

    _recurate(tmp_path / "data", 2)
    note = ckpt.begin_run(run_dir, cfg.data)
    assert note and "changed" in note and "step 0" in note
    assert ckpt.find_latest(run_dir) is None and not (run_dir / ckpt.WEIGHTS).exists()
    assert not (run_dir / "metrics.jsonl").exists()
    assert (run_dir / ".lock").is_file()  # the writer's lock stays where the writer holds it
    (stale,) = (run_dir / ckpt.STALE_DIR).iterdir()  # kept, not deleted
    assert ckpt.find_latest(stale) is not None and (stale / ckpt.WEIGHTS).is_file()
    assert (stale / "metrics.jsonl").is_file()
    record = ckpt.read_data_record(run_dir)
    assert record["fingerprint"] == shards_fingerprint(str(tmp_path / "data"))


def test_a_run_of_an_older_version_is_resumed_and_gets_a_data_record(tmp_path):
    cfg = _train_cfg(tmp_path)
    run_dir = Path(cfg.run_dir)
    _write_dataset(tmp_path / "data", 1)
    _finish(cfg, 3)
    (run_dir / ckpt.DATA_RECORD).unlink()
    assert "older version" in ckpt.begin_run(run_dir, cfg.data)
    assert ckpt.find_latest(run_dir) is not None
    assert ckpt.read_data_record(run_dir)["fingerprint"] == shards_fingerprint(str(tmp_path / "data"))


# --- evaluations -----------------------------------------------------------------------------------


def test_a_tokenizer_evaluation_is_stale_once_the_clips_or_the_run_change(tmp_path):
    _write_dataset(tmp_path / "clips", 1)
    run = write_weights(tmp_path / "tok", step=40)
    ckpt.begin_run(run, {"shards": str(tmp_path / "clips")})
    out = tmp_path / "tok" / "eval"
    out.mkdir()
    (out / tok_eval.RECON_VIDEO).write_bytes(b"mp4")
    metrics = {
        "step": 40,
        "shards": str(tmp_path / "clips"),
        "inputs": tok_eval.eval_inputs(run, str(tmp_path / "clips")),
    }
    (out / tok_eval.METRICS_FILE).write_text(json.dumps(metrics))
    assert tok_eval.is_complete(run, out)
    _recurate(tmp_path / "clips", 2)
    assert not tok_eval.is_complete(run, out)  # other clips
    metrics["inputs"] = tok_eval.eval_inputs(run, str(tmp_path / "clips"))
    (out / tok_eval.METRICS_FILE).write_text(json.dumps(metrics))
    assert tok_eval.is_complete(run, out)
    identity = run_identity(run)
    (run / ckpt.DATA_RECORD).unlink()
    ckpt.begin_run(run, {"shards": str(tmp_path / "clips")})  # trained again from scratch, same data
    assert run_identity(run) != identity
    assert not tok_eval.is_complete(run, out)


@pytest.fixture(scope="module")
def dyn_data(tmp_path_factory):
    torch.set_num_threads(1)
    return make_data(tmp_path_factory.mktemp("s4eval"))


def test_a_dynamics_evaluation_is_stale_once_its_latents_settings_or_run_change(dyn_data, tmp_path):
    root = dyn_data["root"]
    run = write_weights(tmp_path / "dyn", step=7)  # the stub world model says step 7
    ckpt.begin_run(run, {"shards": str(root / "latents")})
    cfg = eval_config(root, tmp_path / "eval", checkpoint=str(run), max_clips=2)
    dyn_eval.evaluate(cfg, world(dyn_data, CopyLastDynamics()))
    assert json.loads((tmp_path / "eval" / dyn_eval.EVAL_JSON).read_text())["inputs"]["shards"]
    assert dyn_eval.is_complete(cfg)
    assert not dyn_eval.is_complete(dataclasses.replace(cfg, horizon=1))  # another setting
    assert not dyn_eval.is_complete(dataclasses.replace(cfg, seed=1))

    (run / ckpt.DATA_RECORD).unlink()
    ckpt.begin_run(run, {"shards": str(root / "clips")})  # the run trained again, on other data
    assert not dyn_eval.is_complete(cfg)
    (run / ckpt.DATA_RECORD).unlink()
    ckpt.begin_run(run, {"shards": str(root / "latents")})
    dyn_eval.evaluate(cfg, world(dyn_data, CopyLastDynamics()))
    assert dyn_eval.is_complete(cfg)

    # The latents made again: one byte of one shard differs, name, size and mtime do not.
    shard = sorted((root / "latents").rglob("*.tar"))[0]
    st, data = shard.stat(), bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    try:
        assert not dyn_eval.is_complete(cfg)
    finally:
        data[700] ^= 0xFF
        shard.write_bytes(bytes(data))
    assert dyn_eval.is_complete(cfg)


def test_weights_hash_by_their_tensors_not_the_order_safetensors_wrote_its_metadata_in(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.arange(4.0)}, str(path), metadata={"format": "x", "version": "1"})
    first = fingerprint.safetensors_sha256(path)
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"] = dict(reversed(list(header["__metadata__"].items())))
    text = json.dumps(header, separators=(",", ":")).encode().ljust(size)
    assert text != raw[8 : 8 + size] and len(text) == size
    path.write_bytes(raw[:8] + text + raw[8 + size :])  # what another process's save may write
    assert fingerprint.safetensors_sha256(path) == first
    save_file({"a": torch.arange(4.0) + 1}, str(path), metadata={"format": "x", "version": "1"})
    assert fingerprint.safetensors_sha256(path) != first
