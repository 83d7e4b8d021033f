"""dynamics.evaluate: counterfactual actions scored against the truth (EVALUATION.md's last section).

Branch files are small random frames (24x32, squashed to the 16x16 the tiny tokenizer's model was
trained at); the dynamics models are stand-ins whose answer is known: a replay of the true future
under whichever actions it is given, and models that ignore the actions."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamics.evaluate import EvaluateConfig, evaluate, resize_frames, take_in_turn
from dynamics.verdict import COUNTERFACTUAL_COLUMNS
from pipeline.branches import read_branch, write_branch
from runtime.config import load_config
from runtime.video import decode_mp4
from tests.dynamics.eval_helpers import (
    CopyLastDynamics,
    dyn_config,
    eval_config,
    evaluate_argv,
    fsq_oracle,
    make_data,
    replay,
    world,
    write_branches,
    write_run,
)
from vidworld.cli import main
from vidworld.pipeline_run import PipelineConfig, compose


class IndexCopyLastDynamics(torch.nn.Module):
    """Repeats the last context frame of FSQ indices ``[B, T, h, w]`` (ignores the actions)."""

    def rollout(self, context, actions, horizon, **_):
        return context[:, -1:].repeat(1, horizon, 1, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("counterfactual")
    d = make_data(root)
    d["branches"] = write_branches(root / "branches", count=2)
    return d


def _cfg(data, out, **kw) -> EvaluateConfig:
    root = data["root"]
    branches = dict(branches=str(root / "branches"), branch_size=16, branch_resize="squash")
    return eval_config(root, out, max_clips=2, **{**branches, **kw})


def test_a_model_replaying_the_true_future_of_its_actions_responds_as_the_tokenizer_allows(data, tmp_path):
    res = evaluate(_cfg(data, tmp_path), replay(data, data["branches"], context=2, horizon=2))
    cf = res["counterfactual"]
    assert cf["status"] == "computed" and cf["branches"] == 2 and len(cf["rows"]) == 2
    for r in cf["rows"]:
        # The replayed latents are encoded here in float32; the evaluation stores them as float16.
        assert r["counterfactual_latent_mse"] < 1e-5
        assert r["action_response_ratio_recon"] == pytest.approx(1.0, abs=0.02)
        assert r["true_ab_psnr"] < 20  # the two random futures really differ


@pytest.mark.parametrize(
    "model",
    [
        pytest.param(lambda data: world(data, CopyLastDynamics()), id="repeats-the-last-context-latent"),
        pytest.param(
            lambda data: replay(data, data["branches"], 2, 2, follow_actions=False), id="always-future-a"
        ),
    ],
)
def test_a_model_that_ignores_the_actions_has_zero_action_response(data, tmp_path, model):
    res = evaluate(_cfg(data, tmp_path), model(data))
    for r in res["counterfactual"]["rows"]:
        assert r["action_response_ratio"] == 0.0 and r["action_response_ratio_recon"] == 0.0
        assert r["true_ab_psnr"] < 20


def test_ignoring_the_actions_misses_the_counterfactual_latents_but_not_the_factual_frames(data, tmp_path):
    follows = evaluate(_cfg(data, tmp_path / "f"), replay(data, data["branches"], 2, 2))
    ignores = evaluate(_cfg(data, tmp_path / "i"), replay(data, data["branches"], 2, 2, follow_actions=False))
    for f, i in zip(follows["counterfactual"]["rows"], ignores["counterfactual"]["rows"], strict=True):
        assert i["factual_psnr"] == pytest.approx(f["factual_psnr"], abs=1e-9)
        assert i["counterfactual_latent_mse"] > 100 * f["counterfactual_latent_mse"]


class RecordingDynamics(CopyLastDynamics):
    """Copies the last context latent and keeps the actions of every rollout."""

    def __init__(self) -> None:
        super().__init__()
        self.actions: list[torch.Tensor] = []

    def rollout(self, context, actions, horizon, **kw):
        self.actions.append(actions.cpu())
        return super().rollout(context, actions, horizon, **kw)


def test_both_rollouts_get_the_branch_actions_grouped_as_training_groups_them(data, tmp_path):
    recorder = RecordingDynamics()
    evaluate(_cfg(data, tmp_path), world(data, recorder))
    b = read_branch(data["branches"][0])
    c, tau, branch_point = 2, 4, b.context_frames
    got_a, got_b = recorder.actions[-4], recorder.actions[-3]  # branch 0, after the clips' rollouts
    assert got_a.shape == got_b.shape == (1, c + 2, tau)
    assert torch.equal(got_a[:, :c], got_b[:, :c])  # the shared past
    # Latent frame c shows source frames C .. C+tau-1 of the file: the results of the actions taken
    # at frames C-1 .. C+tau-2, the first of which is the first that differs.
    assert got_a[0, c].tolist() == b.actions_a[branch_point - 1 : branch_point - 1 + tau].tolist()
    assert got_b[0, c].tolist() == b.actions_b[branch_point - 1 : branch_point - 1 + tau].tolist()
    assert got_a[0, c - 1].tolist() == b.actions_a[branch_point - 1 - tau : branch_point - 1].tolist()


def test_counterfactual_over_fsq_indices(tmp_path):
    w = fsq_oracle(tmp_path)
    w.dynamics = IndexCopyLastDynamics()
    write_branches(tmp_path / "branches")
    branches = str(tmp_path / "branches")
    cfg = eval_config(tmp_path, tmp_path / "eval", max_clips=2, branches=branches, branch_size=16)
    cf = evaluate(cfg, w)["counterfactual"]
    assert cf["status"] == "computed" and len(cf["rows"]) == 2
    for r in cf["rows"]:
        assert r["action_response_ratio"] == 0.0 and r["counterfactual_latent_mse"] > 0


def test_csv_eval_json_and_video_carry_the_counterfactual_columns_and_status(data, tmp_path):
    evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics()))
    with open(tmp_path / "counterfactual.csv") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == COUNTERFACTUAL_COLUMNS
    assert [int(r["horizon"]) for r in rows] == [1, 2]
    cf = json.loads((tmp_path / "eval.json").read_text())["counterfactual"]
    assert cf["status"] == "computed" and cf["branches"] == 2
    assert cf["files"] == [str(p) for p in data["branches"]]
    assert cf["horizon_latent_frames"] == 2 and cf["source_frames_per_latent_frame"] == 4
    assert cf["resolution"] == "16x16" and cf["note"] == ""
    assert [tuple(r) for r in cf["rows"]] == [COUNTERFACTUAL_COLUMNS] * 2
    video = decode_mp4(tmp_path / "counterfactual.mp4")
    assert video.shape == (
        13,
        16,
        4 * 16,
        3,
    )  # 5 context + 8 future frames; truth A | model A | truth B | model B


def test_each_game_gets_its_own_rows_beside_the_rows_over_all_branches(data, tmp_path):
    folder = tmp_path / "branches"
    paths = write_branches(folder, count=1, seed=1) + write_branches(
        folder, count=1, seed=2, game="ALE/Pong-v5"
    )
    res = evaluate(_cfg(data, tmp_path / "eval", branches=str(folder)), replay(data, paths, 2, 2))
    cf = res["counterfactual"]
    assert cf["files"] == [str(folder / "breakout-b00.npz"), str(folder / "pong-b00.npz")]
    assert sorted(cf["games"]) == ["ALE/Breakout-v5", "ALE/Pong-v5"]
    breakout, pong = cf["games"]["ALE/Breakout-v5"], cf["games"]["ALE/Pong-v5"]
    for r, b, p in zip(cf["rows"], breakout, pong, strict=True):
        assert r["true_ab_psnr"] == pytest.approx((b["true_ab_psnr"] + p["true_ab_psnr"]) / 2)
        assert b["action_response_ratio_recon"] == pytest.approx(1.0, abs=0.02)
        assert p["action_response_ratio_recon"] == pytest.approx(1.0, abs=0.02)


def test_the_horizon_is_clamped_to_the_branch_files_future_and_eval_json_says_so(data, tmp_path):
    short = write_branches(tmp_path / "short", count=1, horizon_frames=5)
    res = evaluate(_cfg(data, tmp_path / "eval", branches=str(short[0])), world(data, CopyLastDynamics()))
    cf = res["counterfactual"]
    assert cf["horizon_latent_frames"] == 1 and len(cf["rows"]) == 1
    assert "clamped from 2 to 1" in cf["note"] and "breakout-b00.npz" in cf["note"]
    assert len(res["rows"]) == 2  # the compounding-error curve keeps its horizon


def test_identical_true_futures_give_a_null_ratio_not_a_division_by_zero(data, tmp_path):
    b = read_branch(data["branches"][0])
    b.frames_b = b.frames_a.copy()
    path = write_branch(tmp_path / "same" / "breakout-b00.npz", b)
    evaluate(_cfg(data, tmp_path / "eval", branches=str(path)), world(data, CopyLastDynamics()))
    row = json.loads((tmp_path / "eval" / "eval.json").read_text())["counterfactual"]["rows"][0]
    assert row["action_response_ratio"] is None and row["true_ab_psnr"] == 100.0
    with open(tmp_path / "eval" / "counterfactual.csv") as f:
        assert math.isnan(float(next(csv.DictReader(f))["action_response_ratio"]))


def test_too_short_a_branch_context_names_the_file_and_the_fix(data, tmp_path):
    short = write_branches(tmp_path / "short", count=1, context_frames=3)
    with pytest.raises(ValueError, match=r"breakout-b00\.npz.*3 context frames.*lower context to 1"):
        evaluate(_cfg(data, tmp_path / "eval", branches=str(short[0])), world(data, CopyLastDynamics()))
    assert not (tmp_path / "eval" / "eval.json").exists()


def test_a_branch_frame_size_the_model_was_not_trained_at_names_branch_size(data, tmp_path):
    with pytest.raises(ValueError, match="branch_size"):
        evaluate(_cfg(data, tmp_path, branch_size=32), world(data, CopyLastDynamics()))


def test_no_branches_is_off_and_removes_a_stale_counterfactual_csv_and_video(data, tmp_path):
    for name in ("counterfactual.csv", "counterfactual.mp4"):
        (tmp_path / name).write_text("stale")
    res = evaluate(_cfg(data, tmp_path, branches=""), world(data, CopyLastDynamics()))
    assert res["counterfactual"]["status"] == "off" and res["counterfactual"]["rows"] == []
    assert not (tmp_path / "counterfactual.csv").exists() and not (tmp_path / "counterfactual.mp4").exists()
    assert json.loads((tmp_path / "eval.json").read_text())["counterfactual"]["status"] == "off"


def test_a_model_without_actions_skips_the_counterfactual_and_says_why(data, tmp_path):
    (tmp_path / "counterfactual.csv").write_text("stale")
    res = evaluate(_cfg(data, tmp_path), world(data, CopyLastDynamics(), dyn_config(action_type="none")))
    assert res["counterfactual"]["status"] == "skipped: the model takes no actions"
    assert not (tmp_path / "counterfactual.csv").exists()


def test_branch_frames_are_resized_as_curation_resizes_clips():
    frame = np.zeros((1, 16, 32, 3), np.uint8)
    frame[:, :, 8:24] = (0, 0, 255)  # blue centre, black sides
    frame[:, :, :8] = frame[:, :, 24:] = (255, 0, 0)
    squashed = resize_frames(frame, 8, "squash")
    cropped = resize_frames(frame, 8, "center_crop")
    assert squashed.shape == cropped.shape == (1, 8, 8, 3) and squashed.dtype == np.uint8
    assert (squashed[0, :, 0] == (255, 0, 0)).all() and (squashed[0, :, 4] == (0, 0, 255)).all()
    assert (cropped == (0, 0, 255)).all()  # shorter side to 8 (16x8), then the centre 8 columns


def test_the_chain_passes_the_inputs_branch_files_resized_as_its_curate_section(tmp_path):
    def composed(*overrides):
        cfg = load_config(
            PipelineConfig, None, [f"input={tmp_path / 'raw'}", f"output={tmp_path / 'out'}", *overrides]
        )
        return compose(cfg, "evaluate")

    (tmp_path / "raw").mkdir()
    assert "branches" not in composed()
    (tmp_path / "raw" / "branches").mkdir()
    ev = composed("curate.size=32", "curate.resize=squash")
    assert (ev["branches"], ev["branch_size"], ev["branch_resize"]) == (
        str((tmp_path / "raw" / "branches").absolute()),
        32,
        "squash",
    )
    assert composed()["branch_resize"] == "center_crop"  # CurateConfig's default


@pytest.mark.integration
def test_vidworld_evaluate_prints_the_counterfactual_of_a_trained_run_and_logs_it(data, tmp_path, capsys):
    run = write_run(tmp_path / "run", dyn_config(), step=3)
    root = data["root"]
    rc = main(evaluate_argv(root, run, tmp_path / "eval", f"branches={root / 'branches'}", "branch_size=16"))
    assert rc == 0
    out = capsys.readouterr().out
    assert "counterfactual at h=1:" in out and "counterfactual at h=2:" in out
    cf = json.loads((tmp_path / "eval" / "eval.json").read_text())["counterfactual"]
    assert cf["status"] == "computed" and cf["branches"] == 2
    assert all(r["true_ab_psnr"] < 20 for r in cf["rows"])
    assert (tmp_path / "eval" / "counterfactual.mp4").is_file()
    assert list((tmp_path / "eval" / "wandb").glob("offline-run-*"))


def test_a_branch_limit_takes_files_from_every_game_in_turn():
    paths = [Path(f"/b/{g}-b{i:02d}.npz") for g in ("breakout", "pong") for i in range(4)]
    names = [p.stem for p in take_in_turn(paths, 3)]
    assert names == ["breakout-b00", "pong-b00", "breakout-b01"]
    assert len(take_in_turn(paths, 0)) == 8
