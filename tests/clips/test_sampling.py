"""Tests for rayssl.clips.sampling: the pace rule, clip fitting, short videos, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from rayssl.clips.sampling import (
    clip_indices,
    clip_rng,
    draw_pace_clip,
    eval_clip_indices,
    eval_clip_starts,
    fitting_paces,
    fraction_mask,
    pace_indices,
    pace_span,
)
from rayssl.config import parse_clip_spec
from rayssl.io.ids import stable_hash

PACES = [1.0, 2.0, 3.0, 4.0]
SLOW_PACES = [0.25, 1 / 3, 0.5, 1.0, 2.0]

# --------------------------------------------------------------------------- pace rule


@pytest.mark.parametrize("pace", [1, 2, 3, 4])
def test_pace_indices_fast(pace):
    idx = pace_indices(7, 16, pace)
    assert idx.dtype == np.int64
    assert idx.shape == (16,)
    np.testing.assert_array_equal(idx, 7 + np.arange(16) * pace)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_pace_indices_slow_repeat_each_frame(k):
    start = 5
    idx = pace_indices(start, 16, 1 / k)
    expected = start + np.repeat(np.arange(-(-16 // k)), k)[:16]
    np.testing.assert_array_equal(idx, expected)
    # Explicitly: 1/2 -> s, s, s+1, s+1, ...
    if k == 2:
        assert idx[:6].tolist() == [5, 5, 6, 6, 7, 7]


@pytest.mark.parametrize(
    "clip_len, pace, span",
    [
        (16, 1, 16),
        (16, 2, 31),
        (16, 3, 46),
        (16, 4, 61),
        (16, 0.5, 8),
        (16, 1 / 3, 6),
        (16, 0.25, 4),
        (1, 4, 1),
        (8, 0.5, 4),
    ],
)
def test_pace_span(clip_len, pace, span):
    assert pace_span(clip_len, pace) == span
    idx = pace_indices(0, clip_len, pace)
    assert int(idx[-1]) - int(idx[0]) + 1 == span


def test_fitting_paces():
    assert fitting_paces(20, 16, PACES) == [0]
    assert fitting_paces(31, 16, PACES) == [0, 1]
    assert fitting_paces(61, 16, PACES) == [0, 1, 2, 3]
    assert fitting_paces(15, 16, PACES) == []
    assert fitting_paces(6, 16, SLOW_PACES) == [0, 1]


# --------------------------------------------------------------------------- draws


@pytest.mark.parametrize("paces", [PACES, SLOW_PACES], ids=["fast", "slow"])
@pytest.mark.parametrize("policy", ["resample_pace", "skip"])
def test_draw_always_fits(paces, policy):
    rng = np.random.default_rng(0)
    clip_len = 16
    drawn = 0
    for num_frames in list(range(1, 80)) + [200, 1000]:
        for _ in range(20):
            d = draw_pace_clip(num_frames, clip_len, paces, rng, policy)
            if d is None:
                continue
            drawn += 1
            assert d.indices.shape == (clip_len,)
            assert d.indices.min() >= 0
            assert d.indices.max() < num_frames
            assert 0 <= d.label < len(paces)
            assert d.pace == pytest.approx(paces[d.label])
            np.testing.assert_array_equal(
                d.indices, pace_indices(int(d.indices[0]), clip_len, paces[d.label])
            )
    assert drawn > 500


def test_label_is_index_of_pace():
    paces = [4.0, 1.0, 0.5, 2.0]  # deliberately unsorted
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(300):
        d = draw_pace_clip(200, 16, paces, rng)
        assert paces[d.label] == d.pace
        steps = np.diff(d.indices)
        if d.pace >= 1:
            assert np.all(steps == d.pace)
        else:
            assert set(steps.tolist()) <= {0, 1}
        seen.add(d.label)
    assert seen == {0, 1, 2, 3}


def test_resample_pace_on_short_video():
    # 20 frames: only pace 1 (span 16) fits among 1, 2, 3, 4.
    resampled = 0
    for seed in range(200):
        first_label = int(np.random.default_rng(seed).integers(len(PACES)))
        d = draw_pace_clip(20, 16, PACES, np.random.default_rng(seed), "resample_pace")
        assert d is not None
        assert d.label == 0 and d.pace == 1.0
        assert d.indices.max() < 20
        assert d.resampled == (first_label != 0)
        resampled += d.resampled
    assert 100 < resampled < 200


def test_resample_only_returns_fitting_paces():
    # 40 frames: paces 1 and 2 fit (spans 16, 31), 3 and 4 do not (46, 61).
    labels = set()
    for seed in range(300):
        d = draw_pace_clip(40, 16, PACES, np.random.default_rng(seed), "resample_pace")
        assert d.label in (0, 1)
        assert d.indices.max() < 40
        labels.add(d.label)
    assert labels == {0, 1}


def test_skip_policy():
    nones = 0
    for seed in range(200):
        first_label = int(np.random.default_rng(seed).integers(len(PACES)))
        d = draw_pace_clip(20, 16, PACES, np.random.default_rng(seed), "skip")
        if first_label == 0:
            assert d is not None and d.label == 0 and not d.resampled
        else:
            assert d is None
            nones += 1
    assert 100 < nones < 200


@pytest.mark.parametrize("policy", ["resample_pace", "skip"])
def test_too_short_for_every_pace(policy):
    for seed in range(50):
        assert draw_pace_clip(15, 16, PACES, np.random.default_rng(seed), policy) is None
        assert draw_pace_clip(3, 16, SLOW_PACES, np.random.default_rng(seed), policy) is None


def test_unknown_policy():
    with pytest.raises(ValueError):
        draw_pace_clip(100, 16, PACES, np.random.default_rng(0), "wrap")


@pytest.mark.parametrize("pace, num_frames", [(2.0, 40), (1.0, 16), (1.0, 30), (0.5, 20)])
def test_start_covers_whole_valid_range(pace, num_frames):
    span = pace_span(16, pace)
    rng = np.random.default_rng(3)
    starts = [int(draw_pace_clip(num_frames, 16, [pace], rng).indices[0]) for _ in range(3000)]
    assert min(starts) == 0
    assert max(starts) == num_frames - span
    assert set(starts) == set(range(num_frames - span + 1))


# --------------------------------------------------------------------------- rng


def test_clip_rng_deterministic():
    a = clip_rng(5, "class/video_001", 3, 1).integers(0, 2**31, size=8)
    b = clip_rng(5, "class/video_001", 3, 1).integers(0, 2**31, size=8)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "args",
    [
        (6, "class/video_001", 3, 1),
        (5, "class/video_002", 3, 1),
        (5, "class/video_001", 4, 1),
        (5, "class/video_001", 3, 0),
    ],
)
def test_clip_rng_any_arg_changes_stream(args):
    base = clip_rng(5, "class/video_001", 3, 1).integers(0, 2**31, size=8)
    other = clip_rng(*args).integers(0, 2**31, size=8)
    assert not np.array_equal(base, other)


def test_stable_hash_is_fixed():
    assert stable_hash("abc") == stable_hash("abc")
    assert stable_hash("abc") != stable_hash("abd")
    assert 0 <= stable_hash("x") < 2**63


# --------------------------------------------------------------------------- evaluation clips


def test_eval_clip_indices_shape_and_spacing():
    idx = eval_clip_indices(100, 16)
    assert idx.shape == (10, 16)
    np.testing.assert_array_equal(np.diff(idx, axis=1), np.ones((10, 15)))
    starts = idx[:, 0]
    assert starts[0] == 0 and starts[-1] == 100 - 16
    gaps = np.diff(starts)
    assert gaps.min() >= 9 and gaps.max() <= 10  # 84 / 9 = 9.33 uniformly
    assert idx.max() == 99
    np.testing.assert_array_equal(starts, eval_clip_starts(100, 16))


def test_eval_clip_indices_num_clips():
    idx = eval_clip_indices(50, 8, num_clips=4)
    assert idx.shape == (4, 8)
    assert idx[0, 0] == 0 and idx[-1, -1] == 49


def test_eval_clip_indices_short_video_clamped():
    idx = eval_clip_indices(10, 16)
    assert idx.shape == (10, 16)
    assert np.all(idx[:, 0] == 0)
    assert idx.max() == 9 and idx.min() == 0
    np.testing.assert_array_equal(idx[0], np.minimum(np.arange(16), 9))
    assert np.all(idx == idx[0])


def test_uniform_1_is_the_centre_clip():
    """One clip is the centre clip (scoring and attention maps use it); two or more keep
    VCOP's positions, first clip at frame 0, last ending at the last frame."""
    idx = eval_clip_indices(100, 16, num_clips=1)
    assert idx.shape == (1, 16) and idx[0, 0] == 42  # (100 - 16) // 2
    assert (idx[0, 0] + idx[0, -1]) / 2 == (0 + 99) / 2  # centred on the video's middle
    spec = parse_clip_spec("uniform:1")
    assert clip_indices(spec, 41, 16)[0, 0] == 12  # 25 // 2
    assert clip_indices(spec, 16, 16)[0].tolist() == list(range(16))
    assert clip_indices(spec, 10, 16)[0].tolist() == [*range(10), *[9] * 6]  # too short
    two = eval_clip_indices(100, 16, num_clips=2)
    assert two[0, 0] == 0 and two[-1, -1] == 99


def test_eval_clip_indices_exact_length():
    idx = eval_clip_indices(16, 16)
    assert np.all(idx == np.arange(16))


# --------------------------------------------------------------------------- fraction mask


def test_fraction_mask_nested_and_counts():
    ids = [f"class{i % 7}/video_{i:04d}" for i in range(237)]
    masks = {f: fraction_mask(ids, f, seed=3) for f in (0.1, 0.25, 0.5, 1.0)}
    for f, m in masks.items():
        assert m.dtype == bool and m.shape == (237,)
        assert m.sum() == round(f * 237)
    assert masks[1.0].all()
    assert np.all(masks[0.1] <= masks[0.25])
    assert np.all(masks[0.25] <= masks[0.5])
    assert np.all(masks[0.5] <= masks[1.0])


def test_fraction_mask_independent_of_row_order():
    ids = [f"v{i}" for i in range(100)]
    chosen = {v for v, keep in zip(ids, fraction_mask(ids, 0.3, seed=1), strict=True) if keep}
    perm = list(np.random.default_rng(0).permutation(ids))
    chosen_perm = {
        v for v, keep in zip(perm, fraction_mask(perm, 0.3, seed=1), strict=True) if keep
    }
    assert chosen == chosen_perm
    assert len(chosen) == 30


def test_fraction_mask_seed_changes_choice_and_at_least_one():
    ids = [f"v{i}" for i in range(100)]
    assert not np.array_equal(fraction_mask(ids, 0.3, seed=1), fraction_mask(ids, 0.3, seed=2))
    assert fraction_mask(ids[:3], 0.01).sum() == 1
    assert fraction_mask([], 0.5).shape == (0,)
    with pytest.raises(ValueError):
        fraction_mask(ids, 0.0)
    with pytest.raises(ValueError):
        fraction_mask(ids, 1.5)
