from dataclasses import dataclass, field

import pytest

from runtime.config import ConfigError, load_config, save_config


@dataclass
class Trainer:
    max_steps: int = 10
    lr: float = 1e-3


@dataclass
class Job:
    input: str = "???"
    trainer: Trainer = field(default_factory=Trainer)


def test_yaml_then_overrides_win(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("input: a\ntrainer:\n  max_steps: 5\n")
    cfg = load_config(Job, f, ["trainer.lr=0.5"])
    assert cfg == Job(input="a", trainer=Trainer(max_steps=5, lr=0.5))


def test_unknown_key_fails_naming_it_and_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"'trainer\.max_step'.*lr, max_steps"):
        load_config(Job, None, ["input=a", "trainer.max_step=3"])


def test_unknown_key_in_file_names_the_file(tmp_path):
    f = tmp_path / "job.yaml"
    f.write_text("input: a\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"job\.yaml.*'bogus'"):
        load_config(Job, f)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match=r"'trainer\.max_steps'.*wrong type"):
        load_config(Job, None, ["input=a", "trainer.max_steps=lots"])


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"\['input'\]"):
        load_config(Job, None, [])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Job, None, ["input"])


def test_saved_config_loads_back_identically(tmp_path):
    cfg = load_config(Job, None, ["input=x", "trainer.max_steps=7"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Job, path) == cfg
