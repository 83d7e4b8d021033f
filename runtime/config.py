"""Configs are data: a dataclass schema, a YAML file, and ``key=value`` overrides.

``load_config(Schema, "jobs/x.yaml", ["trainer.max_steps=10"])`` merges the three in that order
with OmegaConf. A key that the schema does not declare, or a value of the wrong type, fails at
start with a ``ConfigError`` naming the key, the file it came from and what to do.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from runtime.files import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key is unknown, mistyped or missing; the message names it and the fix."""


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """Turn ``["a.b=1", "c=x"]`` into a nested config. Values are parsed as YAML (``1`` is an int)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"override {bad[0]!r} is not of the form key=value (for example trainer.max_steps=100)"
        )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:  # pragma: no cover - OmegaConf's own parse errors
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {e}") from e


def _valid_keys(base: DictConfig, key: str) -> list[str]:
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(base, parent) if parent else base
    return sorted(node.keys()) if isinstance(node, DictConfig) else []


def _explain(e: OmegaConfBaseException, source: str, schema_name: str, base: DictConfig) -> ConfigError:
    key = str(getattr(e, "full_key", None) or getattr(e, "key", None) or "?")
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if isinstance(e, (ConfigKeyError, ConfigAttributeError)):
        return ConfigError(
            f"{source}: unknown config key '{key}' for {schema_name}; check its spelling. "
            f"Valid keys here: {', '.join(_valid_keys(base, key)) or '(none)'}"
        )
    if isinstance(e, ValidationError):
        return ConfigError(f"{source}: config key '{key}' has a value of the wrong type: {msg}")
    return ConfigError(f"{source}: bad config at key '{key}': {msg}")


def merge_into(schema: type[T] | DictConfig, *layers: tuple[str, Any]) -> DictConfig:
    """Merge ``(source_name, mapping)`` layers onto a structured schema, naming the source on error."""
    base = schema if isinstance(schema, DictConfig) else OmegaConf.structured(schema)
    name = getattr(schema, "__name__", "the config")
    for source, layer in layers:
        if layer is None:
            continue
        try:
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as e:
            raise _explain(e, source, name, base) from e
    return base


def load_yaml(path: str | os.PathLike) -> DictConfig:
    """Read a YAML config file, with an error that names the file when it is missing or not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist; pass a YAML file such as jobs/curate.yaml")
    cfg = OmegaConf.load(p)
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {str(p)!r} must hold a mapping of keys, not a {type(cfg).__name__}")
    return cfg


def load_config(
    schema: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    section: str | None = None,
) -> T:
    """Build a ``schema`` instance from its defaults, a YAML file and command-line overrides.

    ``section`` picks one top-level key of the file (a stage inside ``jobs/pretrain.yaml``).
    Missing required values (``???``) fail with the key's name. Returns the dataclass object.
    """
    layers: list[tuple[str, Any]] = []
    if path is not None:
        file_cfg = load_yaml(path)
        if section is not None:
            if section not in file_cfg:
                raise ConfigError(f"{path}: has no section '{section}'")
            file_cfg = file_cfg[section]
        layers.append((str(path), file_cfg))
    if overrides:
        layers.append(("command line", parse_overrides(overrides)))
    cfg = merge_into(schema, *layers)
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        src = path or "the defaults"
        raise ConfigError(
            f"{src}: required config key(s) {missing} have no value; set them, e.g. {missing[0]}=..."
        )
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    """The YAML text of a dataclass config (or DictConfig), resolved."""
    if dataclasses.is_dataclass(cfg):
        cfg = OmegaConf.structured(cfg)
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML, atomically (so a run folder always says how it was made)."""
    return atomic_write_text(path, to_yaml(cfg))
