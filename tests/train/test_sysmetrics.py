"""System metrics of a training worker: real figures of this process and node."""

from __future__ import annotations

import torch

from rayssl.train.sysmetrics import FIELDS, SystemSampler, as_metrics


def test_sample_measures_this_process():
    import mmap

    sampler = SystemSampler(torch.device("cpu"))
    before = sampler.sample()["rss_mb"]
    # 64 MiB of new pages, touched: an anonymous mapping of its own (a numpy array could
    # be served from heap pages an earlier test freed and the allocator kept resident)
    block = mmap.mmap(-1, 64 * 1024 * 1024)
    block.write(b"\x01" * len(block))
    after = sampler.sample()
    assert after["rss_mb"] - before > 50
    assert 0 < after["node_mem_pct"] <= 100 and after["cpu_pct"] >= 0
    assert after["gpu_util_pct"] == after["gpu_mem_mb"] == -1.0  # no GPU here
    block.close()


def test_ray_node_rss_is_unknown_outside_a_ray_worker():
    assert SystemSampler(torch.device("cpu")).ray_node_rss_mb() == -1.0


def test_as_metrics_names_every_worker_and_drops_unknown_gpu_figures():
    rows = [
        [100.0, 50.0, 40.0, 30.0, -1.0, -1.0, 0.1],
        [200.0, 60.0, 41.0, 31.0, 90.0, 5000.0, 0.2],
    ]
    m = as_metrics(rows)
    assert m["system/worker0/rss_mb"] == 100.0 and m["system/worker1/rss_mb"] == 200.0
    assert "system/worker0/gpu_util_pct" not in m
    assert m["system/worker1/gpu_util_pct"] == 90.0 and m["system/worker1/gpu_mem_mb"] == 5000.0
    assert m["system/worker1/data_wait_frac"] == 0.2
    assert len(m) == 2 * len(FIELDS) - 2
