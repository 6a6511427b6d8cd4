"""Host batches to the device ahead of the step (rayssl/train/prefetch.py), on the CPU:
the background thread, its ordering, errors and shutdown (the CUDA stream part needs a
GPU; benchmarks/train_throughput.py runs it there)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from rayssl.train.prefetch import DevicePrefetcher, device_batches

CPU = torch.device("cpu")


def _batches(n, pulled=None):
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield {
            "clip": np.full((2, 3, 4, 4, 3), i, np.uint8),
            "label": np.array([i, i + 1]),
            "video_id": np.array([f"a{i}", f"b{i}"]),
            "pad": np.array([False, i % 2 == 1]),
        }


def _wait_for(condition, timeout=10.0):
    """Poll until `condition()` holds (the event the test needs), failing after timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.01)


def test_prefetcher_yields_every_batch_in_order_with_host_columns_untouched():
    source = list(_batches(5))
    with DevicePrefetcher(iter(source), CPU, depth=2) as prefetcher:
        got = list(prefetcher)
    assert len(got) == 5
    for i, (host, copied) in enumerate(got):
        assert host is source[i]
        assert isinstance(copied["clip"], torch.Tensor) and copied["clip"].dtype == torch.uint8
        assert torch.equal(copied["clip"], torch.full((2, 3, 4, 4, 3), i, dtype=torch.uint8))
        assert copied["label"].tolist() == [i, i + 1]
        # ids and the pad mask stay numpy on the host: the loop reads them in Python
        assert copied["video_id"] is source[i]["video_id"] and copied["pad"] is source[i]["pad"]


def test_device_batches_converts_numeric_columns_only():
    seen = []

    def convert(name, t):
        seen.append(name)
        return t.float() / 255 if name == "clip" else t

    pairs = list(device_batches(_batches(3), CPU, convert, depth=1))
    assert [int(h["label"][0]) for h, _ in pairs] == [0, 1, 2]
    assert pairs[2][1]["clip"].dtype == torch.float32
    assert float(pairs[2][1]["clip"].max()) == pytest.approx(2 / 255)
    assert sorted(set(seen)) == ["clip", "label"]


def test_an_error_in_the_source_reaches_the_consumer_after_the_good_batches():
    def failing():
        yield from _batches(2)
        raise OSError("read failed: s3://bucket/v.mp4")

    got = []
    with (
        pytest.raises(OSError, match="read failed"),
        DevicePrefetcher(failing(), CPU, depth=1) as prefetcher,
    ):
        for host, _ in prefetcher:
            got.append(int(host["label"][0]))
    assert got == [0, 1]


def test_read_ahead_is_bounded_and_leaving_early_stops_the_thread():
    pulled: list[int] = []
    prefetcher = DevicePrefetcher(_batches(10_000, pulled), CPU, depth=2)
    it = iter(prefetcher)
    next(it)
    # the thread fills the queue (2) and holds one more batch waiting to be put
    _wait_for(lambda: len(pulled) >= 4)
    assert len(pulled) <= 1 + 2 + 1  # consumed + queued + in hand: never the whole source
    prefetcher.close()
    assert not prefetcher._thread.is_alive()
    assert len(pulled) <= 5  # it stopped pulling
    assert not any(t.name == "rayssl-prefetch" and t.is_alive() for t in threading.enumerate())


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        DevicePrefetcher(_batches(1), CPU, depth=0)
