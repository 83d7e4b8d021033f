"""Tokenizer tests run torch on one thread: other jobs share the 2 cores, and two spinning torch
threads on a loaded machine were up to 10x slower than one."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
