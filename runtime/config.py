"""Configs are data: a dataclass schema, a YAML file, and ``key=value`` overrides.

``load_config(Schema, "jobs/x.yaml", ["trainer.max_steps=10"])`` merges the three in that order
with OmegaConf. A key that the schema does not declare, or a value of the wrong type, fails at
start with a ``ConfigError`` naming the key, the file it came from and what to do.

Secrets stay out of files. A value given as ``${oc.env:NAME}`` (say ``${oc.env:WANDB_API_KEY}``)
is resolved for the run in memory, but ``to_yaml``/``save_config`` write the ``${oc.env:NAME}`` text
back, not the value: the run folder's ``config.yaml`` (and the report that shows it) never holds
the secret, and reading that file again resolves the same variable from the environment of
whoever reads it. The written config therefore needs that variable set where it is used again.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from runtime.files import atomic_write_text

T = TypeVar("T")

# A loaded config object remembers, under this attribute, which of its values came from ``oc.env``:
# ``[(path, raw text, resolved value), ...]`` (path as a tuple of keys and list indices).
_ENV_REFS_ATTR = "_config_env_interpolations"
# Environment variables whose values are never written, wherever they turn up (a value copied
# from one config into another loses its ``oc.env`` origin): names that say they are credentials.
_CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_MIN_CREDENTIAL_LEN = 8  # shorter values ("1", "true") would be replaced all over the config


class ConfigError(ValueError):
    """A config key is unknown, mistyped or missing; the message names it and the fix."""


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """Turn ``["a.b=1", "c=x"]`` into a nested config. Values are parsed as YAML (``1`` is an int)."""
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(
            f"override {bad[0]!r} is not of the form key=value (for example trainer.max_steps=100)"
        )
    for override in overrides:
        try:
            yaml.safe_load(override.split("=", 1)[1])
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {override!r}: its value is not valid YAML ({str(e).splitlines()[0]}); "
                "check its brackets and quotes, e.g. tags='[\"a\", \"b\"]'"
            ) from e
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
    msg = _scrub_credentials(str(getattr(e, "msg", e)).splitlines()[0])
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
    return to_object(cfg, str(path or "the config"))


def to_object(cfg: DictConfig, source: str = "the config") -> Any:
    """``OmegaConf.to_object`` that also remembers which values came from ``${oc.env:...}``, so that
    ``save_config`` writes those back as the interpolation, not the value. Use it instead of
    ``OmegaConf.to_object`` wherever a loaded config may later be saved. An unset variable fails
    with a ``ConfigError`` naming the key."""
    try:
        refs = _env_interpolations(cfg)
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise _explain(e, source, "the config", cfg) from e
    if refs:
        try:
            object.__setattr__(obj, _ENV_REFS_ATTR, refs)
        except (AttributeError, TypeError):  # slotted classes: the credential rule still applies
            pass
    return obj


KeyPath = tuple[Any, ...]


def _leaves(node: Any, prefix: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in _leaves(v, (*prefix, k))]
    if isinstance(node, list):
        return [leaf for i, v in enumerate(node) for leaf in _leaves(v, (*prefix, i))]
    return [(prefix, node)]


def _get(node: Any, path: KeyPath) -> Any:
    for k in path:
        node = node[k]
    return node


def _strings(node: Any) -> list[str]:
    return [v for _, v in _leaves(node) if isinstance(v, str)]


def _env_interpolations(cfg: DictConfig) -> list[tuple[KeyPath, str, Any]]:
    """``(path, raw text, resolved value)`` of every value that is an ``oc.env`` interpolation, or an
    interpolation whose value holds one's value (``b: ${a}`` with ``a: ${oc.env:X}``)."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    if "oc.env" not in str(raw):
        return []
    resolved = OmegaConf.to_container(cfg, resolve=True)
    interpolations = [(p, v) for p, v in _leaves(raw) if isinstance(v, str) and "${" in v]
    refs = [(p, v, _get(resolved, p)) for p, v in interpolations if "oc.env" in v]
    values = {s for _, _, r in refs for s in _strings(r) if s}
    for p, v in interpolations:
        if "oc.env" not in v and any(x in s for s in _strings(_get(resolved, p)) for x in values):
            refs.append((p, v, _get(resolved, p)))
    return refs


def _credentials() -> dict[str, str]:
    """Values of the environment's credential-named variables, longest first."""
    found = {
        v: k for k, v in os.environ.items() if _CREDENTIAL_NAME.search(k) and len(v) >= _MIN_CREDENTIAL_LEN
    }
    return {v: found[v] for v in sorted(found, key=len, reverse=True)}


def _scrub_credentials(text: str, credentials: dict[str, str] | None = None) -> str:
    for value, name in (_credentials() if credentials is None else credentials).items():
        text = text.replace(value, "${oc.env:" + name + "}")
    return text


def to_yaml(cfg: Any) -> str:
    """The YAML text of a config (dataclass, DictConfig or mapping), resolved except for secrets.

    Values that came from ``${oc.env:NAME}`` (known for objects from ``load_config``/``to_object``,
    and for DictConfigs, which keep their raw text) are written as that interpolation. Whatever
    the origin, the value of an environment variable named like a credential (``*KEY*``,
    ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*CREDENTIAL*``; 8 characters or more) is written
    as ``${oc.env:NAME}`` wherever it appears in a string.
    """
    refs = list(getattr(cfg, _ENV_REFS_ATTR, ()))
    if dataclasses.is_dataclass(cfg):
        node = OmegaConf.structured(cfg)
    elif OmegaConf.is_config(cfg):
        node = cfg
        refs += _env_interpolations(cfg) if isinstance(cfg, DictConfig) else []
    else:
        node = OmegaConf.create(cfg)
    data = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    for path, raw, resolved in refs:
        try:
            if _get(data, path[:-1])[path[-1]] == resolved:  # not changed since it was loaded
                _get(data, path[:-1])[path[-1]] = raw
        except (KeyError, IndexError, TypeError):
            continue
    credentials = _credentials()
    if credentials:
        for path, value in _leaves(data):
            if isinstance(value, str) and path:
                _get(data, path[:-1])[path[-1]] = _scrub_credentials(value, credentials)
    return OmegaConf.to_yaml(OmegaConf.create(data))


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the config as YAML, atomically (so a run folder always says how it was made): resolved,
    except that values from the environment stay ``${oc.env:...}`` (see ``to_yaml``), so no secret
    is ever written to disk."""
    return atomic_write_text(path, to_yaml(cfg))
