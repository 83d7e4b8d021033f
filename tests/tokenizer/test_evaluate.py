"""tokenizer.evaluate: reconstruction PSNR/SSIM on held-out clips, metrics.json and recon.mp4."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from runtime.checkpoint import WEIGHTS
from runtime.video import decode_mp4
from tests.tokenizer.eval_fixtures import write_clip_shards
from tests.tokenizer.helpers import randomized, tiny_config
from tokenizer import evaluate as tok_eval
from tokenizer import save_tokenizer
from tokenizer.evaluate import evaluate_tokenizer, select_by_group, select_samples, source_group
from tokenizer.metrics import psnr, ssim, to_uint8
from tokenizer.tokenize import frames_to_video

SPLITS = ["train", "heldout", "train", "heldout", "heldout"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokeval")
    clips = write_clip_shards(root / "clips", SPLITS, frames=9, size=16)
    return root, clips


def _export(root, bottleneck="gaussian"):
    cfg = tiny_config(bottleneck=bottleneck)
    tok = randomized(cfg, seed=3)
    save_tokenizer(tok, cfg, root / f"tok-{bottleneck}")
    return root / f"tok-{bottleneck}", tok


def test_recon_psnr_equals_psnr_computed_by_hand_on_one_clip(data, tmp_path):
    root, clips = data
    path, tok = _export(tmp_path)
    m = evaluate_tokenizer(path, str(root / "clips"), tmp_path / "eval", max_clips=1)
    (key,) = m["keys"]
    frames = torch.from_numpy(clips[key])
    with torch.no_grad():
        recon = to_uint8(tok.decode(tok.encode(frames_to_video(frames[None]))))[0]
    assert m["recon_psnr"] == pytest.approx(psnr(frames, recon), abs=1e-6)
    assert m["recon_ssim"] == pytest.approx(ssim(frames, recon), abs=1e-6)
    assert m["resolution"] == "16x16" and m["clips"] == 1


def test_metrics_json_names_heldout_clips_only_and_its_provenance(data, tmp_path):
    root, _ = data
    path, _ = _export(tmp_path)
    evaluate_tokenizer(path, str(root / "clips"), tmp_path / "eval", max_clips=10)
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    heldout = {f"clip{i:03d}" for i, s in enumerate(SPLITS) if s == "heldout"}
    assert set(m["keys"]) == heldout and m["clips"] == 3 and m["split"] == "heldout"
    for k in ("recon_psnr", "recon_ssim", "resolution", "tokenizer", "step", "date", "machine"):
        assert k in m
    assert 0 < m["recon_psnr"] < 100 and -1 <= m["recon_ssim"] <= 1


def test_recon_video_is_original_beside_reconstruction(data, tmp_path):
    root, clips = data
    path, _ = _export(tmp_path)
    m = evaluate_tokenizer(path, str(root / "clips"), tmp_path / "eval", max_clips=3, video_clips=2)
    video = decode_mp4(tmp_path / "eval" / "recon.mp4")
    assert video.shape == (2 * 9, 16, 32, 3)
    # Left half is the original clip (through H.264 once more).
    first = clips[m["keys"][0]]
    assert np.abs(video[:9, :, :16].astype(int) - first.astype(int)).mean() < 6


def test_fsq_tokenizer_reports_codebook_usage(data, tmp_path):
    root, _ = data
    path, _ = _export(tmp_path, "fsq")
    m = evaluate_tokenizer(path, str(root / "clips"), tmp_path / "eval", max_clips=2)
    assert 0 < m["codebook_usage"] <= 1 and m["codebook_perplexity"] >= 1


def test_clip_choice_depends_on_seed_and_keys_not_order():
    samples = [{"key": f"k{i}"} for i in range(20)]
    a = [s["key"] for s in select_samples(iter(samples), 5, seed=0)]
    b = [s["key"] for s in select_samples(iter(samples[::-1]), 5, seed=0)]
    c = [s["key"] for s in select_samples(iter(samples), 5, seed=1)]
    assert a == b and len(set(a)) == 5 and a != c


def test_every_kind_of_data_gets_its_own_clips_and_figures():
    samples = [
        {"key": f"{kind}{i}", "meta": {"source": f"/data/samples/{kind}/v{i % 3}.mp4"}}
        for kind in ("breakout", "natural", "pong")
        for i in range(10 if kind == "natural" else 3)
    ]
    chosen = select_by_group(iter(samples), 4, seed=0)
    kinds = [source_group(s["meta"]) for s in chosen]
    assert kinds == ["breakout"] * 3 + ["natural"] * 4 + ["pong"] * 3
    # The plain selection is the one-group case: the same ranking, whatever the sources.
    assert [s["key"] for s in select_samples(iter(samples), 4, seed=0)] == [
        s["key"] for s in select_by_group(iter(samples), 4, seed=0, group=lambda meta: "")
    ]


def test_no_heldout_clips_is_a_clear_error(tmp_path):
    write_clip_shards(tmp_path / "clips", ["train", "train"])
    path, _ = _export(tmp_path)
    with pytest.raises(ValueError, match="no 'heldout' clips"):
        evaluate_tokenizer(path, str(tmp_path / "clips"), tmp_path / "eval")


def write_weights(path: Path, step: int) -> Path:
    """A run folder with exported weights of ``step`` (what ``runtime.trained.trained_step`` reads)."""
    path.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(1)}, str(path / WEIGHTS), metadata={"step": str(step)})
    return path


def _tokenizer_eval(out: Path, step: int | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / tok_eval.METRICS_FILE).write_text(json.dumps({"step": step, "recon_psnr": 30.0}))
    (out / tok_eval.RECON_VIDEO).write_bytes(b"mp4")
    return out


def test_tokenizer_eval_of_the_current_step_with_its_video_is_complete(tmp_path):
    run = write_weights(tmp_path / "tok", step=40)
    out = _tokenizer_eval(tmp_path / "tok" / "eval", step=40)
    assert tok_eval.is_complete(run, out)
    (out / tok_eval.RECON_VIDEO).unlink()
    assert not tok_eval.is_complete(run, out)


def test_tokenizer_eval_of_an_older_step_or_an_unexported_run_is_not_complete(tmp_path):
    run = write_weights(tmp_path / "tok", step=40)
    assert not tok_eval.is_complete(run, _tokenizer_eval(tmp_path / "old", step=20))
    assert not tok_eval.is_complete(tmp_path / "no-weights", _tokenizer_eval(tmp_path / "null", step=None))
    assert not tok_eval.is_complete(run, tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / tok_eval.METRICS_FILE).write_text("{not json")
    assert not tok_eval.is_complete(run, tmp_path / "bad")


def test_recon_video_plays_at_the_rate_the_clips_were_curated_at(data, tmp_path, monkeypatch):
    root, _ = data
    path, _ = _export(tmp_path)
    real = tok_eval.iter_split

    def curated_at_24(*args, **kw):  # clip metadata as pipeline.curate writes it: with its fps
        for s in real(*args, **kw):
            yield {**s, "meta": {**s["meta"], "fps": 24.0}}

    monkeypatch.setattr(tok_eval, "iter_split", curated_at_24)
    evaluate_tokenizer(path, str(root / "clips"), tmp_path / "eval", max_clips=1, fps=15.0)
    with av.open(str(tmp_path / "eval" / tok_eval.RECON_VIDEO)) as container:
        assert container.streams.video[0].average_rate == 24
