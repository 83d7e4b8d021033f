"""Export / load round trip of a tokenizer folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.tokenizer.helpers import random_video, randomized, tiny_config
from tokenizer import load_tokenizer, save_tokenizer


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
