"""Export / load round trip of a tokenizer folder, and loading a tokenizer training run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from runtime.checkpoint import WEIGHTS
from tests.tokenizer.helpers import random_video, randomized, tiny_config
from tokenizer import CausalVideoTokenizer, load_tokenizer, save_tokenizer
from tokenizer.export import weights_file

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = ["model.base_channels=8", "model.channel_multipliers=[1,2]", "model.clip_size=[32,32]"]


@pytest.mark.parametrize("bottleneck", ["gaussian", "fsq"])
def test_exported_tokenizer_loads_with_identical_outputs(tmp_path, bottleneck):
    model = randomized(tiny_config(4, 8, bottleneck))
    folder = save_tokenizer(model, model.cfg, tmp_path / "tok")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "vidworld-tokenizer" and meta["model"]["bottleneck"] == bottleneck
    assert set(load_file(str(folder / "model.safetensors"))) == set(model.state_dict())
    loaded = load_tokenizer(folder)
    assert not loaded.training
    video = random_video(9, 16)
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), model.encode(video))
        z = model.encode(video)
        assert torch.equal(loaded.decode(z), model.decode(z))
        if bottleneck == "fsq":
            idx = loaded.encode_indices(video)
            assert torch.equal(idx, model.encode_indices(video))
            assert torch.equal(loaded.decode_indices(idx), model.decode(z))


def test_run_folder_with_export_subfolder_loads(tmp_path):
    model = randomized(tiny_config(4, 8))
    save_tokenizer(model, None, tmp_path / "run" / "export")
    assert load_tokenizer(tmp_path / "run").latent_channels == 4


def test_export_replaces_an_old_export_whole_and_leaves_no_temporaries(tmp_path):
    a, b = randomized(tiny_config(4, 8), seed=1), randomized(tiny_config(4, 8, "fsq"), seed=2)
    save_tokenizer(a, None, tmp_path / "tok")
    save_tokenizer(b, None, tmp_path / "tok")
    assert load_tokenizer(tmp_path / "tok").is_discrete
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def test_loading_a_folder_without_a_tokenizer_says_what_is_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.safetensors and config.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "other"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="expected 'vidworld-tokenizer'"):
        load_tokenizer(tmp_path)


def _run_folder(tmp_path, task_yaml: str, *overrides: str, step: int = 6):
    """A training run folder as ``vidworld train`` leaves it: the resolved config and the exported
    weights of the task's whole model (for the tokenizer: the ``TokenizerObjective``)."""
    from runtime.config import save_config
    from runtime.train import load_train_config, resolve_task_class

    run_dir = tmp_path / "run"
    cfg = load_train_config(REPO / "jobs" / task_yaml, [f"run_dir={run_dir}", *overrides])
    torch.manual_seed(0)
    model = resolve_task_class(cfg.task)(cfg.model, cfg).build_model()
    run_dir.mkdir()
    save_config(cfg, run_dir / "config.yaml")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / WEIGHTS), metadata={"step": str(step)})
    return run_dir, model


def test_a_tokenizer_run_folder_loads_through_the_runs_one_loader(tmp_path):
    run_dir, objective = _run_folder(tmp_path, "tokenizer.yaml", "data.shards=unused", *TINY_RUN)
    tok = load_tokenizer(run_dir)
    assert isinstance(tok, CausalVideoTokenizer) and not tok.training
    trained = objective.tokenizer.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in tok.state_dict().items())
    assert weights_file(run_dir) == run_dir / WEIGHTS


def test_a_run_of_another_task_is_not_a_tokenizer(tmp_path):
    run_dir, _ = _run_folder(tmp_path, "reference.yaml")
    with pytest.raises(ValueError, match="not a tokenizer run"):
        load_tokenizer(run_dir)


def test_a_run_still_training_has_no_weights_file_to_fingerprint(tmp_path):
    run_dir, _ = _run_folder(tmp_path, "tokenizer.yaml", "data.shards=unused", *TINY_RUN)
    (run_dir / WEIGHTS).unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors yet"):
        weights_file(run_dir)
    with pytest.raises(FileNotFoundError, match="train it first"):
        load_tokenizer(run_dir)
