"""dynamics.play: ``vidworld play`` rolls a held-out clip forward under the user's actions."""

from __future__ import annotations

import dataclasses
import json
import shutil

import av
import numpy as np
import pytest
import torch
from torch import Tensor, nn

import dynamics.play as play_module
import dynamics.rollout as rollout_module
from dynamics.config import DynamicsConfig
from dynamics.play import ACTIONS_KEY, VIDEO_KEY, PlayConfig, imagined_actions, play
from dynamics.rollout import WorldModel, source_frames
from runtime.config import ConfigError
from runtime.tracking import WandbConfig
from runtime.video import decode_mp4
from tests.dynamics.eval_helpers import CopyLastDynamics, dyn_config, make_data, world, write_run
from tokenizer.evaluate import iter_split
from vidworld.cli import main

CLIP = "clip001"  # a held-out clip of make_data: 4 latent frames, 13 source frames, 16x16
TAU = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("play")
    out = make_data(root)
    # perturb: a fresh model's zero-initialised output layers would ignore the actions.
    out["run"] = write_run(root / "run", dyn_config(), perturb=0.05)
    return out


def _argv(data, out, *extra: str) -> list[str]:
    root = data["root"]
    return [
        "play",
        "jobs/play.yaml",
        f"checkpoint={data['run']}",
        f"tokenizer={root / 'tok'}",
        f"shards={root / 'latents'}",
        f"clip={CLIP}",
        f"output={out}",
        "device=cpu",
        "wandb.mode=disabled",
        *extra,
    ]


def _cfg(data, out, **kw) -> PlayConfig:
    root = data["root"]
    base = dict(
        checkpoint=str(data["run"]),
        tokenizer=str(root / "tok"),
        shards=str(root / "latents"),
        clip=CLIP,
        output=str(out),
        device="cpu",
        wandb=WandbConfig(mode="disabled"),
    )
    return PlayConfig(**{**base, **kw})


def _recorded_actions(data, key: str = CLIP) -> np.ndarray:
    s = next(s for s in iter_split(str(data["root"] / "latents"), "heldout") if s["key"] == key)
    return s["actions"].numpy()


def test_vidworld_play_writes_imagined_beside_real_and_the_actions_used(data, tmp_path, capsys):
    out = tmp_path / "out" / "p.mp4"
    rc = main(_argv(data, out, f"clips={data['root'] / 'clips'}", "actions=[1,2,none]"))
    assert rc == 0
    assert capsys.readouterr().out.split() == [str(out), str(tmp_path / "out" / "p.actions.json")]
    video = decode_mp4(out)
    # context 2 + horizon 3 latent frames = 17 source frames; two 16-pixel panels.
    assert video.shape == (source_frames(5, TAU), 16, 32, 3)
    # Right: the real clip (13 frames), then black where the clip has ended.
    truth = data["clips"][CLIP]
    assert np.abs(video[:13, :, 16:].astype(int) - truth.astype(int)).mean() < 8
    assert video[13:, :, 16:].max() < 40
    # Left: the imagined panel, its 5 context frames framed in red.
    corner = video[:, 0, 1].astype(int)
    assert (corner[:5, 0] > 180).all() and (corner[:5, 1] < 80).all()
    record = json.loads((tmp_path / "out" / "p.actions.json").read_text())
    assert record["clip"] == CLIP and record["kind"] == "real" and record["horizon"] == 3
    assert record["actions"] == [1, 2, "none"]
    recorded = _recorded_actions(data)
    assert (
        record["model_actions"]
        == [
            [4] * TAU,  # latent frame 0: no action in the clip
            recorded[0:TAU].tolist(),  # the context keeps the clip's own actions
            [1] * TAU,  # each chosen action is held for the tau source frames of its latent frame
            [2] * TAU,
            [4] * TAU,  # none = the reserved index num_actions
        ]
    )
    assert record["latent_actions"] is None and record["video"] == "p.mp4"


def test_by_default_the_clip_comes_from_the_runs_latents_and_the_video_goes_into_the_run(data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(data["run"], run)
    text = (run / "config.yaml").read_text()
    assert "shards: x" in text
    (run / "config.yaml").write_text(text.replace("shards: x", f"shards: {data['root'] / 'latents'}"))
    drop = ("shards=", "output=", "checkpoint=")
    argv = [a for a in _argv(data, tmp_path / "p.mp4", "actions=[1]") if not a.startswith(drop)]
    assert main([*argv, f"checkpoint={run}"]) == 0
    # Without output= the video goes into the run folder, named after the clip.
    assert decode_mp4(run / "play" / f"{CLIP}.mp4").shape == (source_frames(3, TAU), 16, 32, 3)
    assert (run / "play" / f"{CLIP}.actions.json").is_file()


def test_different_actions_imagine_different_frames(data, tmp_path):
    w = WorldModel.load(data["run"], data["root"] / "tok", "cpu")
    a = play(_cfg(data, tmp_path / "a.mp4", actions=[0, 0]), w).imagined
    again = play(_cfg(data, tmp_path / "a.mp4", actions=[0, 0]), w).imagined
    b = play(_cfg(data, tmp_path / "b.mp4", actions=[3, 3]), w).imagined
    assert a.shape == (1, 4, 2, 2, 2)  # [1, C, horizon, h, w]
    # The same noise both times: only the actions differ, and they change what is imagined.
    torch.testing.assert_close(a, again, rtol=1e-5, atol=1e-5)
    assert (a - b).abs().max() > 100 * (a - again).abs().max().clamp_min(1e-6)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("actions=[1,4]", "actions[1] = 4 is out of range: kind=real takes integers 0..3"),
        ("actions=[-1]", "actions[0] = -1 is out of range"),
        ("actions=[1,2.5]", "actions[1] = 2.5 is not an integer: kind=real takes integers 0..3"),
        ("actions=[left]", "actions[0] = 'left' is not an integer"),
        ("actions=[]", "actions=[] is empty"),
        ("actions=2,3", "is neither a list nor an actions file"),
        ("kind=sideways", "kind='sideways' is not one of real, latent"),
        ("clip=nope", "valid keys include clip001, clip002, clip004 (3 in all)"),
        ("context=5", "clip 'clip001' has fewer than context=5 latent frames"),
    ],
)
def test_a_bad_action_kind_or_clip_exits_2_with_one_line_and_writes_nothing(
    data, tmp_path, capsys, override, message
):
    out = tmp_path / "out" / "p.mp4"
    argv = [a for a in _argv(data, out, "actions=[1,2]") if a.split("=")[0] != override.split("=")[0]]
    assert main([*argv, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_actions_can_come_from_a_file(data, tmp_path):
    w = WorldModel.load(data["run"], data["root"] / "tok", "cpu")
    files = {
        "a.txt": lambda p: p.write_text("1\n2 none\n"),
        "a.json": lambda p: p.write_text('[1, 2, "none"]'),
        "a.npy": lambda p: np.save(p, np.array([1, 2])),
    }
    results = []
    for name, write in files.items():
        write(tmp_path / name)
        res = play(_cfg(data, tmp_path / "out" / f"{name}.mp4", actions=str(tmp_path / name)), w)
        results.append(res)
    assert results[0].record["actions"] == results[1].record["actions"] == [1, 2, "none"]
    assert results[2].record["actions"] == [1, 2]
    # The actions file a play writes replays as actions=.
    replay = play(_cfg(data, tmp_path / "out" / "r.mp4", actions=str(results[0].actions_file)), w)
    assert replay.record["model_actions"] == results[0].record["model_actions"]
    torch.testing.assert_close(replay.imagined, results[0].imagined, rtol=1e-5, atol=1e-5)


def test_an_action_file_with_a_bad_value_names_it(data, tmp_path):
    w = WorldModel.load(data["run"], data["root"] / "tok", "cpu")
    np.save(tmp_path / "a.npy", np.array([1, 7]))
    with pytest.raises(ConfigError, match=r"actions\[1\] = 7 is out of range"):
        play(_cfg(data, tmp_path / "out" / "p.mp4", actions=str(tmp_path / "a.npy")), w)
    assert not (tmp_path / "out").exists()


def test_kind_latent_on_a_model_without_latent_actions_fails_clearly(data, tmp_path, capsys):
    assert main(_argv(data, tmp_path / "p.mp4", "actions=[0,1]", "kind=latent")) == 2
    assert "trained without a latent action model" in capsys.readouterr().err
    assert not (tmp_path / "p.mp4").exists()


@dataclasses.dataclass
class LatentActionConfig(DynamicsConfig):
    latent_actions: int = 3


class RecordingDynamics(nn.Module):
    """Copies the last context frame and remembers the actions it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Tensor | None]] = []

    def rollout(self, context: Tensor, actions, horizon: int, latent_actions=None, **_) -> Tensor:
        self.calls.append({"actions": actions, "latent_actions": latent_actions})
        return CopyLastDynamics().rollout(context, actions, horizon)


def test_kind_latent_gives_the_codes_to_the_imagined_frames_and_no_action(data, tmp_path):
    model = RecordingDynamics()
    cfg = LatentActionConfig(**dataclasses.asdict(dyn_config()) | {"latent_actions": 3})
    res = play(_cfg(data, tmp_path / "p.mp4", actions=[2, 0, "none"], kind="latent"), world(data, model, cfg))
    (call,) = model.calls
    assert call["latent_actions"].tolist() == [[3, 3, 2, 0, 3]]  # 3 = "no latent action"
    recorded = _recorded_actions(data)
    assert call["actions"][0].tolist() == [[4] * TAU, recorded[0:TAU].tolist(), *[[4] * TAU] * 3]
    assert res.record["actions"] == [2, 0, "none"] and res.record["latent_actions"] == [3, 3, 2, 0, 3]
    with pytest.raises(
        ConfigError, match=r"actions\[0\] = 3 is out of range: kind=latent takes latent action codes 0..2"
    ):
        play(_cfg(data, tmp_path / "q.mp4", actions=[3], kind="latent"), world(data, model, cfg))


def test_kind_real_gives_no_latent_codes(data, tmp_path):
    model = RecordingDynamics()
    play(_cfg(data, tmp_path / "p.mp4", actions=[1]), world(data, model))
    assert model.calls[0]["latent_actions"] is None
    assert model.calls[0]["actions"][0, 2].tolist() == [1] * TAU


def test_continuous_actions_are_a_list_of_action_dim_numbers_per_frame():
    cfg = dyn_config(action_type="continuous", action_dim=2)
    given, actions, codes = imagined_actions([[0.5, -1], "none"], cfg, "real")
    assert given == [[0.5, -1.0], [0.0, 0.0]] and codes is None
    assert actions.shape == (1, 2, TAU, 2) and actions[0, 0, 3].tolist() == [0.5, -1.0]
    with pytest.raises(ConfigError, match=r"actions\[0\] = \[0.5\]: .* list of 2 finite numbers"):
        imagined_actions([[0.5]], cfg, "real")


def test_a_model_without_actions_cannot_be_steered_with_real_actions():
    with pytest.raises(ConfigError, match="trained without actions"):
        imagined_actions([1], dyn_config(action_type="none"), "real")


def test_the_video_is_logged_to_wandb_at_the_clips_own_rate(data, tmp_path, monkeypatch):
    def curated_at_24(*args, **kw):  # clip metadata as pipeline.curate writes it: with its fps
        for s in iter_split(*args, **kw):
            yield {**s, "meta": {**s["meta"], "fps": 24.0}}

    logged: dict = {}

    class Run:
        def log(self, row: dict) -> None:
            logged.update(row)

        def finish(self) -> None:
            logged["finished"] = True

    opened = []
    monkeypatch.setattr(rollout_module, "iter_split", curated_at_24)
    monkeypatch.setattr(play_module, "open_run", lambda *a, **kw: opened.append(a) or Run())
    res = play(_cfg(data, tmp_path / "p.mp4", actions=[1, 2]), world(data, RecordingDynamics()))
    assert opened[0][1] == tmp_path and opened[0][2] == f"play-{CLIP}"
    assert {VIDEO_KEY, ACTIONS_KEY, "finished"} <= set(logged)
    assert res.record["fps"] == 24.0
    with av.open(str(res.video)) as container:
        assert container.streams.video[0].average_rate == 24


@pytest.mark.integration
def test_vidworld_play_logs_to_wandb_offline(data, tmp_path):
    out = tmp_path / "p.mp4"
    argv = [a for a in _argv(data, out, "actions=[1,2]") if a != "wandb.mode=disabled"]
    assert main(argv) == 0
    assert list((tmp_path / "wandb").glob("offline-run-*"))
