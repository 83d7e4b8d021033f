"""Shared test setup. GPU tests skip cleanly without CUDA; service fixtures live beside their tests."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (CI has none; run bench/gpu.sh on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# Real SLURM and Ray clusters for integration tests (session-scoped; each skips when unavailable).
from tests.cluster_services import ray_cluster, ray_session, slurm_cluster  # noqa: E402,F401
