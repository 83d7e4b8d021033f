"""Connect to Ray: the cluster at ``RAY_ADDRESS`` when set, else a local one started here."""

from __future__ import annotations

import logging
import os


def init_ray(num_cpus: int | None = None) -> None:
    """``ray.init`` once per process: join ``RAY_ADDRESS`` (set by ``ray job submit`` or the user),
    otherwise start a local single-node cluster. ``num_cpus`` only applies to a local cluster."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **kwargs)
