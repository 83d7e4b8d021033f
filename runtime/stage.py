"""The one command-line wrapper of a stage: ``vidworld NAME CONFIG key=value ...``.

A stage module gives its config dataclass and a function of that config; ``stage_cli`` loads the
config (errors name the key and the source, exit 2 through ``vidworld.cli``), runs the function,
turns the errors a user can fix (a missing file, a bad value, another writer on the output
folder) into one line on stderr and exit 1, and lets the stage turn its result into the exit code
(and print its summary). A ``ConfigError`` the stage raises (a bad setting or argument found while
running, e.g. an action out of range) passes through to ``vidworld.cli``: exit 2, as for one found
while loading.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

from runtime.config import ConfigError, load_config
from runtime.files import FolderBusy

C = TypeVar("C")


def stage_cli(
    name: str,
    schema: type[C],
    fn: Callable[[C], Any],
    config_path: str | None,
    overrides: list[str],
    done: Callable[[C, Any], int] | None = None,
) -> int:
    """Run ``fn(config)``; ``done(config, result)`` prints and returns the exit code (default 0)."""
    cfg = load_config(schema, config_path, overrides)
    try:
        result = fn(cfg)
    except ConfigError:
        raise
    except (FileNotFoundError, ValueError, FolderBusy) as e:
        print(f"vidworld {name}: {e}", file=sys.stderr)
        return 1
    return int(done(cfg, result)) if done is not None else 0
