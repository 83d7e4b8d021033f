"""The chain runner's own logic: how stage configs are composed, validated, ordered and skipped.

The whole chain on real data runs in tests/test_demo.py; these are the fast unit tests."""

import json

import pytest
import torch
from safetensors.torch import save_file

import pipeline.curate
import tokenizer.tokenize
from pipeline.curate import curation_inputs, inputs_key
from pipeline.manifest import MANIFEST_FILE, STATS_FILE, make_row, write_manifest, write_stats
from runtime.config import ConfigError, load_config
from vidworld import pipeline_run
from vidworld.layout import OutputLayout
from vidworld.pipeline_run import PipelineConfig, StageFailed, compose, run, run_stage, write_stage_config


def _cfg(tmp_path, *overrides):
    return load_config(
        PipelineConfig, None, [f"input={tmp_path / 'raw'}", f"output={tmp_path / 'out'}", *overrides]
    )


def test_stages_link_through_the_output_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _cfg(tmp_path, "tokenizer.trainer.max_steps=7", "wandb.project=p")
    out = (tmp_path / "out").absolute()
    assert compose(cfg, "curate")["output"] == str(out / "curated")
    tok = compose(cfg, "tokenizer")
    assert tok["run_dir"] == str(out / "tokenizer") and tok["data"]["shards"] == str(out / "curated")
    assert tok["trainer"]["max_steps"] == 7
    assert tok["wandb"] == {"mode": "offline", "project": "p", "group": "out", "name": "tokenizer",
                            "tags": ["tokenizer"], "entity": None}  # fmt: skip
    assert tok["launcher"]["kind"] == "local"
    z = compose(cfg, "tokenize")
    assert (z["input"], z["output"], z["tokenizer"]) == (
        str(out / "curated"),
        str(out / "latents"),
        tok["run_dir"],
    )
    assert compose(cfg, "dynamics")["data"]["shards"] == str(out / "latents")


def test_training_goes_to_ray_train_under_a_ray_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert compose(_cfg(tmp_path), "dynamics")["launcher"]["kind"] == "ray"
    assert compose(_cfg(tmp_path, "train_launcher=local"), "dynamics")["launcher"]["kind"] == "local"


def test_dynamics_geometry_comes_from_the_latent_shards(tmp_path):
    cfg = _cfg(tmp_path)
    latents = tmp_path / "out" / "latents"
    latents.mkdir(parents=True)
    tok = {"temporal_compression": 4, "is_discrete": False, "latent_channels": 8, "codebook_size": None}
    stats = {"tokenizer": tok, "latent_shape": [5, 8, 8, 8], "latent_std": 0.5}
    (latents / "stats.json").write_text(json.dumps(stats))
    geometry = {"temporal_compression": 4, "head": "diffusion", "latent_channels": 8,
                "latent_height": 8, "latent_width": 8, "latent_scale": 2.0}  # fmt: skip
    assert compose(cfg, "lam")["model"] == geometry
    # With a lam stage the dynamics model gets the latent action model and its number of codes.
    model = compose(_cfg(tmp_path, "lam.model.levels=[3,2]"), "dynamics")["model"]
    assert model == {**geometry, "lam": str((tmp_path / "out" / "lam").absolute()), "latent_actions": 6}
    no_lam = _cfg(tmp_path, "stages=[curate,tokenizer,tokenize,dynamics,evaluate,report]")
    assert compose(no_lam, "dynamics")["model"] == geometry
    # A per-stage job (stages=[dynamics], as under SLURM) links a lam that its section describes and
    # that is trained, and only then.
    per_stage = _cfg(tmp_path, "stages=[dynamics]", "lam.model.levels=[2,2]")
    assert compose(per_stage, "dynamics")["model"] == geometry
    lam = tmp_path / "out" / "lam"
    lam.mkdir()
    save_file({"w": torch.zeros(1)}, str(lam / "model.safetensors"), metadata={"step": "3"})
    assert compose(per_stage, "dynamics")["model"]["latent_actions"] == 4


def test_a_bad_key_in_a_stage_section_fails_naming_the_stage_and_key(tmp_path):
    cfg = _cfg(tmp_path, "curate.clip_framez=3")
    with pytest.raises(ConfigError, match=r"curate.*clip_framez"):
        write_stage_config(cfg, "curate")


def test_stage_config_is_saved_resolved(tmp_path):
    cfg = _cfg(tmp_path, "curate.clip_frames=9")
    path = write_stage_config(cfg, "curate")
    assert path == tmp_path / "out" / "configs" / "curate.yaml"
    assert (
        "clip_frames: 9" in path.read_text() and f"output: {tmp_path / 'out' / 'curated'}" in path.read_text()
    )


def test_unknown_stage_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown stage"):
        run(_cfg(tmp_path, "stages=[curate,train]"), stage_runner=lambda c, s: "done")


def test_stages_run_in_chain_order_and_a_failure_stops_the_chain_with_its_code(tmp_path, capsys):
    seen = []

    def runner(cfg, stage):
        seen.append(stage)
        if stage == "tokenize":
            raise StageFailed(stage, 75, "preempted")
        return "done"

    code = run(_cfg(tmp_path, "stages=[evaluate,tokenize,curate,tokenizer]"), stage_runner=runner)
    assert code == 75 and seen == ["curate", "tokenizer", "tokenize"]
    assert "rerun the same command" in capsys.readouterr().err
    assert (tmp_path / "out" / "configs" / "pipeline.yaml").is_file()


@pytest.mark.parametrize(("stage", "module"), [("curate", pipeline.curate), ("tokenize", tokenizer.tokenize)])
def test_the_chain_asks_the_stage_whether_its_outputs_are_complete(tmp_path, monkeypatch, stage, module):
    cfg = _cfg(tmp_path)
    asked, children = [], []
    monkeypatch.setattr(pipeline_run, "_child", lambda s, cmd: children.append(cmd[-2:]))
    monkeypatch.setattr(module, "is_complete", lambda c: asked.append(c.output) or done)
    done = True
    assert run_stage(cfg, stage) == "skipped" and children == []
    done = False
    assert run_stage(cfg, stage) == "done"
    assert children == [[stage, str(OutputLayout.of(cfg.output).stage_config(stage))]]
    assert asked == [compose(cfg, stage)["output"]] * 2


def test_curation_outputs_written_make_the_chain_skip_the_stage(tmp_path, monkeypatch):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.mp4").write_bytes(b"video")
    cfg = _cfg(tmp_path)
    monkeypatch.setattr(pipeline_run, "_child", lambda s, cmd: None)
    assert run_stage(cfg, "curate") == "done"
    out = OutputLayout.of(cfg.output).curated
    write_manifest([make_row(str(tmp_path / "raw" / "a.mp4"), "a", "ok", clips=1)], out / MANIFEST_FILE)
    key = inputs_key(curation_inputs(str(tmp_path / "raw")))
    write_stats({"complete": True, "shards": 0, "inputs_key": key}, out / STATS_FILE)
    assert run_stage(cfg, "curate") == "skipped"


@pytest.mark.parametrize(
    ("codes", "retries", "calls", "result"),
    [
        ([4, 0], 1, 2, "done"),  # pending inputs retried once, then curation finishes
        ([4, 4], 1, 2, 4),  # still failing: the chain stops with curate's code
        ([4], 0, 1, 4),  # curate_retries=0: no retry
        ([2], 1, 1, 2),  # any other failure is not retried
    ],
)
def test_curate_is_rerun_when_inputs_failed_not_for_their_content(
    tmp_path, monkeypatch, codes, retries, calls, result
):
    cfg = _cfg(tmp_path, f"curate_retries={retries}")
    left = list(codes)
    monkeypatch.setattr(pipeline.curate, "is_complete", lambda c: False)
    monkeypatch.setattr(pipeline_run.subprocess, "call", lambda cmd: left.pop(0))
    try:
        got = run_stage(cfg, "curate")
    except StageFailed as e:
        got = e.code
    assert got == result and len(codes) - len(left) == calls
