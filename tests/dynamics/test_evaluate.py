"""dynamics.evaluate: the compounding-error curve and action sensitivity (EVALUATION.md)."""

from __future__ import annotations

import csv
import json

import av
import pytest
import torch

import dynamics.evaluate as ev
from dynamics import build_dynamics
from dynamics.evaluate import ACTION_COLUMNS, EvaluateConfig, evaluate
from dynamics.rollout import source_slice
from dynamics.verdict import COMPOUNDING_COLUMNS
from tests.dynamics.eval_helpers import (
    SPLITS,
    CopyLastDynamics,
    dyn_config,
    eval_config,
    evaluate_argv,
    fsq_oracle,
    make_data,
    oracle,
    world,
    write_run,
)
from tokenizer.evaluate import iter_split
from tokenizer.metrics import psnr, to_uint8
from vidworld.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    return make_data(tmp_path_factory.mktemp("dyneval"))


def _cfg(data, out, **kw) -> EvaluateConfig:
    return eval_config(data["root"], out, **kw)


def _rows(path):
    with open(path) as f:
        r = csv.DictReader(f)
        return r.fieldnames, [{k: float(v) for k, v in row.items()} for row in r]


def test_csv_has_exactly_the_protocol_columns_and_one_row_per_horizon(data, tmp_path):
    evaluate(_cfg(data, tmp_path, horizon=2), world(data, CopyLastDynamics()))
    cols, rows = _rows(tmp_path / "compounding_error.csv")
    assert tuple(cols) == COMPOUNDING_COLUMNS
    assert [r["horizon"] for r in rows] == [1.0, 2.0]
    cols, arows = _rows(tmp_path / "action_sensitivity.csv")
    assert tuple(cols) == ACTION_COLUMNS and len(arows) == 2
    assert (tmp_path / "compounding_error.png").read_bytes()[:4] == b"\x89PNG"


def test_perfect_model_reaches_the_tokenizer_ceiling_with_zero_latent_error(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path), oracle(data))
    for r in res["rows"]:
        assert r["model_psnr"] == pytest.approx(r["recon_psnr"], abs=1e-9)
        assert r["model_latent_mse"] == 0.0
        assert r["copy_last_latent_mse"] > 0
    assert res["verdict"]["model_beats_copy_last_latent_mse"]


def test_copy_last_model_equals_the_copy_last_recon_baseline(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics()))
    for r in res["rows"]:
        assert r["model_psnr"] == pytest.approx(r["copy_last_recon_psnr"], abs=1e-9)
        assert r["model_latent_mse"] == pytest.approx(r["copy_last_latent_mse"], rel=1e-6)
    assert not res["verdict"]["worth_something"]


def test_recon_psnr_is_the_decoded_shard_latents_against_the_clip_with_latent_scale_undone(data, tmp_path):
    cfg = _cfg(data, tmp_path, max_clips=1, horizon=1)
    res = evaluate(cfg, oracle(data, dyn_config(latent_scale=3.0)))
    (key,) = res["data"]["keys"]
    (sample,) = [s for s in iter_split(cfg.shards, "heldout") if s["key"] == key]
    z = sample["latents"].float().permute(1, 0, 2, 3)[None]  # [1, C, T', h, w]
    with torch.no_grad():
        recon = to_uint8(data["tok"].decode(z))[0]
    truth = torch.from_numpy(data["clips"][key])
    sl = source_slice(2, 4)  # horizon 1 after 2 context latent frames: source frames 5..8
    assert res["rows"][0]["recon_psnr"] == pytest.approx(psnr(truth[sl], recon[sl]), abs=1e-9)
    last = truth[4:5].expand(4, -1, -1, -1).contiguous()
    assert res["rows"][0]["copy_last_psnr"] == pytest.approx(psnr(truth[sl], last), abs=1e-9)


def test_only_heldout_clips_are_evaluated_and_recorded(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path, max_clips=10), world(data, CopyLastDynamics()))
    info = json.loads((tmp_path / "eval.json").read_text())
    heldout = {f"clip{i:03d}" for i, s in enumerate(SPLITS) if s == "heldout"}
    assert set(info["data"]["keys"]) == heldout == set(res["data"]["keys"])
    assert info["data"]["clips"] == 3 and info["data"]["resolution"] == "16x16"
    assert info["checkpoint_step"] == 7 and info["tokenizer"] == "tok"
    assert {"machine", "date", "verdict"} <= set(info)
    assert set(info["verdict"]) >= {"worth_something", "tokenizer_limits"}


def test_action_sensitivity_is_zero_when_the_model_ignores_actions(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics()))
    assert [r["action_sensitivity_psnr"] for r in res["action_rows"]] == [0.0, 0.0]


def test_action_sensitivity_is_positive_when_the_model_follows_actions(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path), oracle(data, follow_actions=True))
    for r, a in zip(res["rows"], res["action_rows"], strict=True):
        assert a["action_sensitivity_psnr"] > 0
        assert a["action_sensitivity_psnr"] == pytest.approx(r["model_psnr"] - r["copy_last_recon_psnr"])


def test_no_action_sensitivity_file_for_a_model_without_actions(data, tmp_path):
    (tmp_path / "action_sensitivity.csv").write_text("stale")
    res = evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics(), dyn_config(action_type="none")))
    assert res["action_rows"] == [] and not (tmp_path / "action_sensitivity.csv").exists()
    assert res["action_sensitivity"].startswith("skipped")


def test_too_long_a_horizon_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match="latent frames"):
        evaluate(_cfg(data, tmp_path, horizon=5), world(data, CopyLastDynamics()))


@pytest.mark.integration
def test_vidworld_evaluate_runs_a_trained_run_folder_and_logs_to_wandb_offline(data, tmp_path, capsys):
    run = write_run(tmp_path / "run", dyn_config(), step=11)
    root = data["root"]
    rc = main(evaluate_argv(root, run, tmp_path / "eval"))
    assert rc == 0
    cols, rows = _rows(tmp_path / "eval" / "compounding_error.csv")
    assert tuple(cols) == COMPOUNDING_COLUMNS and len(rows) == 2
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["checkpoint_step"] == 11
    assert (tmp_path / "eval" / "rollout.mp4").is_file()
    assert list((tmp_path / "eval" / "wandb").glob("offline-run-*"))
    assert "verdict" in capsys.readouterr().out


def test_perfect_model_over_fsq_indices_reaches_the_ceiling(tmp_path):
    w = fsq_oracle(tmp_path)
    res = evaluate(eval_config(tmp_path, tmp_path / "eval", max_clips=2), w)
    for r in res["rows"]:
        assert r["model_psnr"] == pytest.approx(r["recon_psnr"], abs=1e-9)
        assert r["model_latent_mse"] == 0.0
    assert res["head"] == "maskgit"


def test_rollout_video_plays_at_the_rate_the_clips_were_curated_at(data, tmp_path, monkeypatch):
    def curated_at_24(*args, **kw):  # clip metadata as pipeline.curate writes it: with its fps
        for s in iter_split(*args, **kw):
            yield {**s, "meta": {**s["meta"], "fps": 24.0}}

    monkeypatch.setattr(ev, "iter_split", curated_at_24)
    evaluate(_cfg(data, tmp_path, fps=15.0), world(data, CopyLastDynamics()))
    with av.open(str(tmp_path / "rollout.mp4")) as container:
        assert container.streams.video[0].average_rate == 24


def test_an_ensembles_disagreement_is_logged_per_horizon_beside_the_curve(data, tmp_path, monkeypatch):
    logged: list[dict] = []

    class Run:
        def define_metric(self, *a, **kw) -> None:
            pass

        def log(self, row: dict) -> None:
            logged.append(row)

        def finish(self) -> None:
            pass

    monkeypatch.setattr(ev, "open_run", lambda *a, **kw: Run())
    cfg = dyn_config(ensemble=3, latent_scale=2.0)
    torch.manual_seed(0)
    w = world(data, build_dynamics(cfg).eval(), cfg)
    res = evaluate(_cfg(data, tmp_path, horizon=2), w)
    spread = res["disagreement"]
    assert spread["status"] == "computed" and spread["members"] == 3 and "tokenizer" in spread["unit"]
    assert [r["horizon"] for r in spread["rows"]] == [1.0, 2.0]
    assert all(r["ensemble_disagreement"] > 0 for r in spread["rows"])
    cols, rows = _rows(tmp_path / "disagreement.csv")
    assert tuple(cols) == ("horizon", "ensemble_disagreement")
    assert [r["ensemble_disagreement"] for r in rows] == pytest.approx(
        [r["ensemble_disagreement"] for r in spread["rows"]], rel=1e-5
    )
    assert json.loads((tmp_path / "eval.json").read_text())["disagreement"]["rows"] == spread["rows"]
    curve = [r for r in logged if "compounding/horizon" in r]
    assert [r[ev.DISAGREEMENT_KEY] for r in curve] == [r["ensemble_disagreement"] for r in spread["rows"]]
    # The same rollouts by hand (clip j's noise seed is j at seed 0): latent_scale 2 divides by 4.
    model = world(data, build_dynamics(cfg).eval(), cfg)
    model.dynamics.load_state_dict(w.dynamics.state_dict())
    samples = {s["key"]: s for s in iter_split(str(data["root"] / "latents"), "heldout")}
    by_hand = []
    for j, key in enumerate(res["data"]["keys"]):
        x, actions = model.prepare(samples[key])
        g = torch.Generator().manual_seed(j)
        _, d = model.rollout(model.slice(x, 0, 2), actions[:, :4], 2, g, return_disagreement=True)
        by_hand.append(d[0] / 4)
    assert [r["ensemble_disagreement"] for r in spread["rows"]] == pytest.approx(
        torch.stack(by_hand).mean(0).tolist(), rel=1e-5
    )
    # A one-head model has no disagreement to log, and a stale file goes.
    res = evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics()))
    assert res["disagreement"]["status"].startswith("off") and res["disagreement"]["rows"] == []
    assert not (tmp_path / "disagreement.csv").exists()


def test_an_ensemble_run_folder_loads_from_its_config_and_safetensors_and_is_evaluated(data, tmp_path):
    run = write_run(tmp_path / "run", dyn_config(ensemble=2, ensemble_depth=1), step=3, perturb=0.05)
    res = evaluate(_cfg(data, tmp_path / "eval", checkpoint=str(run), device="cpu"))
    assert res["checkpoint_step"] == 3 and res["disagreement"]["members"] == 2
    assert len(res["disagreement"]["rows"]) == 2 and (tmp_path / "eval" / "disagreement.csv").is_file()
