"""The CPU peak behind MFU: the node's, measured once on all its cores, shared by its processes."""

from __future__ import annotations

import json

import torch

from runtime import metrics


def test_the_node_peak_is_measured_on_every_core_and_each_local_process_counts_a_share(tmp_path, monkeypatch):
    seen = []

    def fake_measure(dtype, device, **kwargs):  # records the threads the measurement ran with
        seen.append(torch.get_num_threads())
        return 8e10

    monkeypatch.setattr(metrics, "node_cores", lambda: 2)
    monkeypatch.setattr(metrics, "measure_matmul_flops", fake_measure)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a rank of two on a 2-core node runs with one thread
    try:
        peak, source = metrics.peak_flops(torch.device("cpu"), "fp32", cache_dir=tmp_path, local_world_size=2)
        assert seen == [2] and torch.get_num_threads() == 1  # measured on both cores, then put back
        assert peak == 4e10 and "on 2 core(s), 1/2 per process" in source
        # One process on the same node, from the cache: the whole node, not measured again.
        alone, cached = metrics.peak_flops(
            torch.device("cpu"), "fp32", cache_dir=tmp_path, local_world_size=1
        )
        assert alone == 8e10 and seen == [2] and "cached" in cached
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "peak_flops.json").read_text()) == {"cpu:fp32:cores=2": 8e10}


def test_a_measured_matmul_rate_is_the_best_window_and_positive():
    rate = metrics.measure_matmul_flops(torch.float32, torch.device("cpu"), seconds=0.05, n=64, repeats=3)
    assert 1e6 < rate < 1e14
