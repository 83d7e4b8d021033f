"""``pipeline.curate.is_complete``: the curation stage's own answer to "is this output finished?"."""

import dataclasses
import json
from pathlib import Path

from pipeline.curate import CurateConfig, curation_inputs, inputs_key, is_complete, settings_key
from pipeline.manifest import MANIFEST_FILE, STATS_FILE, make_row, write_manifest, write_stats
from pipeline.shards import shard_paths


def _finished_output(cfg: CurateConfig, shards: int = 2) -> None:
    """What a finished run leaves: a row per input, the stats saying complete, and the shards."""
    out = Path(cfg.output)
    rows = [make_row(i.source, i.source_id, "ok", clips=1) for i in curation_inputs(cfg.input)]
    write_manifest(rows, out / MANIFEST_FILE)
    for path in shard_paths(out, shards):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    key = inputs_key(curation_inputs(cfg.input))
    write_stats({"complete": True, "shards": shards, "clips": len(rows), "inputs_key": key}, out / STATS_FILE)


def _cfg(tmp_path: Path) -> CurateConfig:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.mp4", "b.mp4"):
        (raw / name).write_bytes(b"video")
    return CurateConfig(input=str(raw), output=str(tmp_path / "curated"))


def test_curation_is_complete_once_its_stats_manifest_and_shards_are_written(tmp_path):
    cfg = _cfg(tmp_path)
    assert not is_complete(cfg)
    _finished_output(cfg)
    assert is_complete(cfg)


def test_a_missing_shard_makes_curation_incomplete(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    shard_paths(cfg.output, 2)[1].unlink()
    assert not is_complete(cfg)


def test_a_new_input_makes_curation_incomplete(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    (Path(cfg.input) / "c.mp4").write_bytes(b"video")
    assert not is_complete(cfg)


def test_stats_of_a_run_stopped_early_are_not_complete(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    write_stats({"complete": False, "staged": 1}, Path(cfg.output) / STATS_FILE)
    assert not is_complete(cfg)
    (Path(cfg.output) / STATS_FILE).write_text("not json")
    assert not is_complete(cfg)


def test_an_edited_input_makes_curation_incomplete(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    (Path(cfg.input) / "a.mp4").write_bytes(b"another video")
    assert not is_complete(cfg)


def test_an_input_waiting_for_a_retry_makes_curation_incomplete(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    a, b = curation_inputs(cfg.input)
    rows = [
        make_row(a.source, a.source_id, "ok", clips=1),
        make_row(b.source, b.source_id, "failed", "EIO", retry=True),
    ]
    write_manifest(rows, Path(cfg.output) / MANIFEST_FILE)
    assert not is_complete(cfg)


def test_other_settings_make_curation_incomplete_and_stats_without_them_are_taken_as_they_are(tmp_path):
    cfg = _cfg(tmp_path)
    _finished_output(cfg)
    assert is_complete(cfg)  # stats of an older version, which recorded no settings
    stats_path = Path(cfg.output) / STATS_FILE
    stats = json.loads(stats_path.read_text())
    write_stats({**stats, "settings_key": settings_key(cfg)}, stats_path)
    assert is_complete(cfg)
    for changed in ({"size": 32}, {"seed": 1}, {"samples_per_shard": 3}, {"num_actions": 18}):
        assert not is_complete(dataclasses.replace(cfg, **changed)), changed
