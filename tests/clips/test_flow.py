"""Tests for rayssl.clips.flow: shapes and conventions of compute_flow, the shift each
algorithm recovers on a translating texture, flips, the per-thread cache and errors."""

from __future__ import annotations

import threading

import cv2
import numpy as np
import pytest

from rayssl.clips.flow import FLOW_ALGORITHMS, FlowError, available_flow_algorithms, compute_flow


def _translating(num_frames: int, size: int, dx: int, dy: int, seed: int = 0) -> np.ndarray:
    """(T, size, size, 3) uint8: a smooth random texture whose content moves by (dx, dy) px
    (right, down) per frame."""
    pad = 8 + max(abs(dx), abs(dy)) * num_frames
    full = size + 2 * pad
    rng = np.random.default_rng(seed)
    small = rng.random((full // 4 + 2, full // 4 + 2, 3)).astype(np.float32)
    texture = cv2.resize(small, (full + 8, full + 8), interpolation=cv2.INTER_CUBIC)[:full, :full]
    texture = (np.clip(texture, 0, 1) * 255).astype(np.uint8)
    frames = []
    for t in range(num_frames):
        top, left = pad - dy * t, pad - dx * t
        frames.append(texture[top : top + size, left : left + size])
    return np.stack(frames)


def test_algorithms_listed():
    assert FLOW_ALGORITHMS == ("dis", "farneback", "tvl1")
    assert available_flow_algorithms() == ["dis", "farneback", "tvl1"]  # contrib build


@pytest.mark.parametrize(("algorithm", "size"), [("dis", 112), ("farneback", 112), ("tvl1", 48)])
def test_recovers_a_translation(algorithm, size):
    frames = _translating(3, size, dx=2, dy=-1)
    flow = compute_flow(frames, algorithm)
    assert flow.shape == (2, size, size, 2) and flow.dtype == np.float32
    inner = flow[:, 8:-8, 8:-8]
    assert np.median(inner[..., 0]) == pytest.approx(2.0, abs=0.15)  # u: right
    assert np.median(inner[..., 1]) == pytest.approx(-1.0, abs=0.15)  # v: up
    assert np.abs(inner - np.array([2.0, -1.0])).mean() < 0.3


def test_still_frames_have_no_flow():
    frames = np.repeat(_translating(1, 64, 0, 0), 3, axis=0)
    assert np.abs(compute_flow(frames, "dis")).max() < 1e-3


@pytest.mark.parametrize("algorithm", ["dis", "farneback"])
def test_flipped_clip_negates_u(algorithm):
    # Flow of the flipped frames = the mirrored flow with u negated (the reference code
    # mirrors stored flow without negating u).
    frames = _translating(3, 112, dx=3, dy=1, seed=1)
    flow = compute_flow(frames, algorithm)
    flipped = compute_flow(np.ascontiguousarray(frames[:, :, ::-1]), algorithm)
    expected = flow[:, :, ::-1] * np.array([-1.0, 1.0], np.float32)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(flipped[inner] - expected[inner]).mean() < 0.15
    assert np.median(flipped[inner][..., 0]) == pytest.approx(-3.0, abs=0.15)


def test_accepts_views():
    frames = _translating(3, 120, dx=1, dy=0)
    view = frames[:, 4:116, ::-1]  # cropped and flipped, not contiguous
    assert np.array_equal(compute_flow(view), compute_flow(np.ascontiguousarray(view)))


@pytest.mark.parametrize("algorithm", ["dis", "farneback"])
def test_flow_does_not_depend_on_earlier_clips(algorithm):
    """The same clip gives the same flow whatever was computed before it in the process
    (a reused DIS object kept settings derived from the first, smaller image)."""
    frames = _translating(3, 64, dx=1, dy=1)
    before = compute_flow(frames, algorithm)
    compute_flow(_translating(3, 32, dx=2, dy=0), algorithm)
    compute_flow(_translating(3, 112, dx=0, dy=2), algorithm)
    assert np.array_equal(compute_flow(frames, algorithm), before)


def test_threads_compute_the_same_flow():
    frames = _translating(3, 64, dx=1, dy=1)
    expected = compute_flow(frames, "dis")
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(compute_flow(frames, "dis")))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(np.array_equal(r, expected) for r in results)


def test_unknown_algorithm():
    frames = _translating(2, 32, 1, 0)
    with pytest.raises(FlowError, match="unknown flow algorithm 'raft'.*dis"):
        compute_flow(frames, "raft")
    assert issubclass(FlowError, ValueError)


def test_tvl1_without_contrib(monkeypatch):
    monkeypatch.delattr(cv2, "optflow")
    assert available_flow_algorithms() == ["dis", "farneback"]
    with pytest.raises(FlowError, match="opencv-contrib-python-headless"):
        compute_flow(_translating(2, 32, 1, 0), "tvl1")


def test_bad_frames():
    with pytest.raises(ValueError, match="at least 2 frames"):
        compute_flow(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        compute_flow(np.zeros((3, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        compute_flow(np.zeros((3, 32, 32), np.uint8))
