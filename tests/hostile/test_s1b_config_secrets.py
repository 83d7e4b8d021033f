"""Secrets given as ``${oc.env:...}`` reach the run in memory but never a written file."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runtime.config import ConfigError, load_config, save_config, to_object, to_yaml
from tests.runtime import train_helpers as helpers

SECRET = "sk-live-0123456789abcdef-s1b"  # what a W&B key looks like to a reader of the file


@dataclasses.dataclass
class Service:
    key: str = ""
    entity: str = ""
    copy: str = ""
    retries: int = 1


@dataclasses.dataclass
class Job:
    input: str = "???"
    service: Service = dataclasses.field(default_factory=Service)
    tags: list[str] = dataclasses.field(default_factory=list)


def _files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("S1B_API_KEY", SECRET)
    monkeypatch.setenv("S1B_ENTITY", "team-s1b-entity")  # not a credential by name: kept by origin


def test_oc_env_values_are_used_in_memory_but_written_as_the_interpolation(tmp_path, secret_env):
    yaml = tmp_path / "job.yaml"
    yaml.write_text(
        'service:\n  entity: ${oc.env:S1B_ENTITY}\n  copy: ${service.key}\ntags: ["${oc.env:S1B_API_KEY}"]\n'
    )
    cfg = load_config(Job, yaml, ["input=x", "service.key=${oc.env:S1B_API_KEY}"])
    assert cfg.service.key == SECRET and cfg.service.copy == SECRET and cfg.tags == [SECRET]
    assert cfg.service.entity == "team-s1b-entity"

    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    text = path.read_text()
    assert SECRET not in text and "team-s1b-entity" not in text
    assert "${oc.env:S1B_API_KEY}" in text and "${oc.env:S1B_ENTITY}" in text
    assert _files_holding(tmp_path, SECRET) == []
    # The written file is still a working config: read again, it resolves the same values.
    assert load_config(Job, path) == cfg


def test_a_credential_copied_out_of_its_config_is_still_not_written(tmp_path, secret_env):
    cfg = load_config(Job, None, ["input=x", "service.key=${oc.env:S1B_API_KEY}"])
    # dataclasses.replace, asdict and plain dicts lose where the value came from; the name rule holds.
    copies = [
        dataclasses.replace(cfg, input=f"s3://bucket/{SECRET}"),
        dataclasses.asdict(cfg),
        OmegaConf.create({"wandb": {"project": SECRET}}),
    ]
    for i, copy in enumerate(copies):
        save_config(copy, tmp_path / f"copy{i}.yaml")
        assert "${oc.env:S1B_API_KEY}" in (tmp_path / f"copy{i}.yaml").read_text()
    assert _files_holding(tmp_path, SECRET) == []
    assert SECRET not in to_yaml(copies[0])


def test_a_value_changed_after_loading_is_written_as_changed(tmp_path, secret_env):
    cfg = load_config(Job, None, ["input=x", "service.entity=${oc.env:S1B_ENTITY}"])
    cfg.service.entity = "someone-else"
    assert "entity: someone-else" in to_yaml(cfg)


def test_to_object_keeps_the_origin_for_loaders_that_merge_their_own_layers(tmp_path, secret_env):
    layer = {"input": "x", "service": {"key": "${oc.env:S1B_API_KEY}"}}
    merged = OmegaConf.merge(OmegaConf.structured(Job), layer)
    cfg = to_object(merged)
    assert cfg.service.key == SECRET
    assert "key: ${oc.env:S1B_API_KEY}" in to_yaml(cfg)


def test_an_unset_variable_fails_naming_the_key_and_the_variable(monkeypatch):
    monkeypatch.delenv("S1B_NOT_SET", raising=False)
    with pytest.raises(ConfigError, match=r"service\.key.*S1B_NOT_SET"):
        load_config(Job, None, ["input=x", "service.key=${oc.env:S1B_NOT_SET}"])


def test_a_mistyped_secret_is_not_echoed_in_the_error(secret_env):
    with pytest.raises(ConfigError, match=r"service\.retries") as err:
        load_config(Job, None, ["input=x", "service.retries=${oc.env:S1B_API_KEY}"])
    assert SECRET not in str(err.value)


def test_an_override_that_is_not_yaml_fails_naming_it():
    with pytest.raises(ConfigError, match=r"override 'tags=\[\$\{oc.env:X\}\]'.*not valid YAML"):
        load_config(Job, None, ["input=x", "tags=[${oc.env:X}]"])


@pytest.mark.integration
def test_a_training_run_folder_holds_no_secret_from_the_command_line(tmp_path):
    """The real ``vidworld train``: its config.yaml, checkpoints and logs never hold the key."""
    env = {**helpers.train_env(), "WANDB_API_KEY": SECRET}
    run_dir = tmp_path / "run"
    cmd = helpers.train_cmd(run_dir, ["wandb.mode=disabled", "trainer.max_steps=2", "trainer.save_every=2",
                                      "wandb.project=${oc.env:WANDB_API_KEY}"])
    result = subprocess.run(cmd, cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file()
    assert "project: ${oc.env:WANDB_API_KEY}" in (run_dir / "config.yaml").read_text()
    assert _files_holding(tmp_path, SECRET) == []
    assert SECRET not in result.stdout + result.stderr
