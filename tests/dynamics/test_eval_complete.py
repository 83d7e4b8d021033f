"""dynamics.evaluate.is_complete: whether an output folder holds the evaluation of the run's current
weights, with the counterfactuals when they are asked for."""

from __future__ import annotations

import json
from pathlib import Path

from dynamics import evaluate as dyn_eval
from dynamics.evaluate import EvaluateConfig
from tests.dynamics.eval_helpers import write_weights


def _dynamics_eval(out: Path, step: int, counterfactual: str = "off", cf_files: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in (dyn_eval.COMPOUNDING_CSV, dyn_eval.COMPOUNDING_FIGURE, dyn_eval.ROLLOUT_VIDEO):
        (out / name).write_bytes(b"x")
    if cf_files:
        for name in (dyn_eval.COUNTERFACTUAL_CSV, dyn_eval.COUNTERFACTUAL_VIDEO):
            (out / name).write_bytes(b"x")
    info = {"checkpoint_step": step, "counterfactual": {"status": counterfactual}}
    (out / dyn_eval.EVAL_JSON).write_text(json.dumps(info))
    return out


def _cfg(tmp_path: Path, **kw) -> EvaluateConfig:
    return EvaluateConfig(checkpoint=str(tmp_path / "dyn"), output=str(tmp_path / "eval"), **kw)


def test_dynamics_eval_of_the_current_step_with_curve_and_video_is_complete(tmp_path):
    write_weights(tmp_path / "dyn", step=7)
    out = _dynamics_eval(tmp_path / "eval", step=7)
    assert dyn_eval.is_complete(_cfg(tmp_path))
    (out / dyn_eval.COMPOUNDING_FIGURE).unlink()
    assert not dyn_eval.is_complete(_cfg(tmp_path))


def test_dynamics_eval_of_another_step_is_not_complete(tmp_path):
    write_weights(tmp_path / "dyn", step=8)
    _dynamics_eval(tmp_path / "eval", step=7)
    assert not dyn_eval.is_complete(_cfg(tmp_path))


def test_dynamics_eval_without_the_asked_for_counterfactuals_is_not_complete(tmp_path):
    write_weights(tmp_path / "dyn", step=7)
    _dynamics_eval(tmp_path / "eval", step=7, counterfactual="off")
    assert dyn_eval.is_complete(_cfg(tmp_path))
    assert not dyn_eval.is_complete(_cfg(tmp_path, branches="samples/branches"))


def test_dynamics_eval_with_computed_counterfactuals_needs_their_files(tmp_path):
    write_weights(tmp_path / "dyn", step=7)
    cfg = _cfg(tmp_path, branches="samples/branches")
    _dynamics_eval(tmp_path / "eval", step=7, counterfactual="computed")
    assert not dyn_eval.is_complete(cfg)
    _dynamics_eval(tmp_path / "eval", step=7, counterfactual="computed", cf_files=True)
    assert dyn_eval.is_complete(cfg)


def test_dynamics_eval_whose_counterfactuals_were_skipped_for_the_model_is_complete(tmp_path):
    # A model without discrete actions skips them again on every rerun: nothing left to do.
    write_weights(tmp_path / "dyn", step=7)
    _dynamics_eval(tmp_path / "eval", step=7, counterfactual="skipped: the model takes no actions")
    assert dyn_eval.is_complete(_cfg(tmp_path, branches="samples/branches"))
