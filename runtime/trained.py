"""What a training run has produced, for the stages after it: the step of its exported weights.

Loading a run's model is ``runtime.train.load_trained``.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = "model.safetensors"


def trained_step(run_dir: str | os.PathLike) -> int | None:
    """The training step of a run folder's exported weights, or ``None`` when there are none."""
    from safetensors import safe_open

    path = Path(run_dir) / WEIGHTS
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        step = (f.metadata() or {}).get("step")
    return int(step) if step is not None else None
