"""``runtime.trained.is_complete``: a training run is finished when its exported weights are of
``trainer.max_steps``."""

import torch
from safetensors.torch import save_file

from runtime.checkpoint import WEIGHTS
from runtime.train import TrainConfig, TrainerConfig
from runtime.trained import is_complete


def _export(run_dir, step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(run_dir / WEIGHTS), metadata={"step": str(step)})


def test_training_is_complete_when_its_weights_are_of_max_steps(tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), task="reference", trainer=TrainerConfig(max_steps=5))
    assert not is_complete(cfg)
    _export(tmp_path / "run", 3)  # preempted and exported early
    assert not is_complete(cfg)
    _export(tmp_path / "run", 5)
    assert is_complete(cfg)
    (tmp_path / "run" / WEIGHTS).unlink()
    assert not is_complete(cfg)


def test_raising_max_steps_makes_a_finished_run_incomplete(tmp_path):
    _export(tmp_path / "run", 5)
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), task="reference", trainer=TrainerConfig(max_steps=8))
    assert not is_complete(cfg)
