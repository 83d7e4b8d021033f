"""``vidworld train CONFIG key=value ...``: the launcher picks where the training loop runs.

``launcher.kind: local`` trains in this process (one rank of those torchrun or srun started);
``launcher.kind: ray`` hands the resolved config to Ray Train (``runtime.ray_train.launch``),
whose workers run the same loop (``runtime.train.train``).
"""

from __future__ import annotations

from runtime import ray_train
from runtime.train import load_train_config, train


def cli(config_path: str, overrides: list[str]) -> int:
    """Train here, or via Ray Train when ``launcher.kind=ray``; returns the exit code."""
    cfg = load_train_config(config_path, overrides)
    if cfg.launcher.kind == "ray":
        return int(ray_train.launch(config_path, overrides, cfg) or 0)
    return train(cfg)
