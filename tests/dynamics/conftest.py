"""Dynamics tests run single-threaded: the models are tiny, so extra threads only add
contention with other test processes sharing the CI machine's 2 cores."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
