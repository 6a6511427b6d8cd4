"""Tests for rayssl.clips.transforms (numpy/OpenCV clip augmentation)."""

from __future__ import annotations

import colorsys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from rayssl.clips.transforms import (
    BRIGHTNESS,
    CONTRAST,
    HUE,
    SATURATION,
    AugmentConfig,
    JitterParams,
    augment_clip,
    augment_clip_stages,
    augment_clip_with_params,
    center_crop_params,
    crop_clip,
    hflip_clip,
    jitter_clip,
    jitter_frame,
    random_crop_params,
    resize_clip,
    resize_short_side,
    sample_jitter_params,
)

GRAY_W = np.array([0.299, 0.587, 0.114])


def _clip(t: int = 16, h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _smooth_clip(t: int = 4, h: int = 240, w: int = 320) -> np.ndarray:
    """A clip with spatial structure (so resize / crop / flip are not trivially invariant)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [
        np.stack([(x + 7 * i) % 256, (y * 2) % 256, (x + y + 30 * i) % 256], axis=-1)
        for i in range(t)
    ]
    return np.asarray(frames, dtype=np.uint8)


def _params(order=(BRIGHTNESS, CONTRAST, SATURATION, HUE), b=1.0, c=1.0, s=1.0, h=0.0):
    return JitterParams(order=order, brightness=b, contrast=c, saturation=s, hue=h, apply=True)


def _diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------


def test_resize_clip_to_128x171_from_240x320():
    clip = _smooth_clip()
    out = resize_clip(clip, (128, 171))
    assert out.shape == (4, 128, 171, 3) and out.dtype == np.uint8
    for i in range(len(clip)):
        expected = cv2.resize(clip[i], (171, 128), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(out[i], expected)


def test_resize_short_side_keeps_aspect():
    assert resize_short_side(_clip(2, 240, 320), 128).shape == (2, 128, 170, 3)
    assert resize_short_side(_clip(2, 320, 240), 128).shape == (2, 170, 128, 3)
    assert resize_short_side(_clip(2, 100, 100), 64).shape == (2, 64, 64, 3)


def test_crop_clip_equals_slice():
    clip = _clip(3, 40, 50)
    out = crop_clip(clip, 5, 7, (20, 30))
    assert out.shape == (3, 20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, clip[:, 5:25, 7:37])


def test_crop_clip_rejects_bad_crops():
    clip = _clip(2, 40, 50)
    with pytest.raises(ValueError, match="larger"):
        crop_clip(clip, 0, 0, (41, 10))
    with pytest.raises(ValueError, match="does not fit"):
        crop_clip(clip, 30, 0, (20, 10))
    with pytest.raises(ValueError, match="does not fit"):
        crop_clip(clip, 0, -1, (20, 10))


def test_random_crop_params_in_bounds_and_covering():
    rng = np.random.default_rng(0)
    draws = np.array([random_crop_params(128, 171, (112, 112), rng) for _ in range(2000)])
    assert draws[:, 0].min() == 0 and draws[:, 0].max() == 16
    assert draws[:, 1].min() == 0 and draws[:, 1].max() == 59
    assert random_crop_params(112, 112, (112, 112), rng) == (0, 0)
    with pytest.raises(ValueError, match="larger"):
        random_crop_params(100, 171, (112, 112), rng)


def test_center_crop_params():
    assert center_crop_params(128, 171, (112, 112)) == (8, 30)  # round(29.5) like torchvision
    assert center_crop_params(112, 112, (112, 112)) == (0, 0)
    with pytest.raises(ValueError, match="larger"):
        center_crop_params(128, 100, (112, 112))


def test_hflip_equals_reversed_width():
    clip = _clip(3, 10, 12)
    out = hflip_clip(clip)
    assert out.shape == clip.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, clip[:, :, ::-1])


# ------------------------------------------------------------------------------------------
# colour jitter: single ops
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [0.0, 0.3, 1.0, 1.7])
def test_brightness_is_scaling_clamped(f):
    frame = _clip(1, 32, 48)[0]
    out = jitter_frame(frame, _params(b=f))
    assert out.shape == frame.shape and out.dtype == np.uint8
    expected = np.clip(frame.astype(np.float64) * f, 0, 255)
    assert np.abs(out - expected).max() <= 1.0


@pytest.mark.parametrize("f", [0.0, 0.4, 1.6])
def test_contrast_blends_with_mean_gray(f):
    frame = _clip(1, 32, 48, seed=1)[0]
    x = frame.astype(np.float64)
    mean = (x @ GRAY_W).mean()
    expected = np.clip(f * x + (1 - f) * mean, 0, 255)
    assert np.abs(jitter_frame(frame, _params(c=f)) - expected).max() <= 1.0


def test_saturation_zero_gives_gray():
    frame = _clip(1, 32, 48, seed=2)[0]
    out = jitter_frame(frame, _params(s=0.0)).astype(np.int32)
    gray = frame.astype(np.float64) @ GRAY_W
    assert np.abs(out - gray[..., None]).max() <= 1.0
    assert (
        np.abs(out[..., 0] - out[..., 1]).max() <= 1
        and np.abs(out[..., 1] - out[..., 2]).max() <= 1
    )


def test_saturation_blend():
    frame = _clip(1, 32, 48, seed=3)[0]
    x = frame.astype(np.float64)
    gray = (x @ GRAY_W)[..., None]
    expected = np.clip(1.8 * x - 0.8 * gray, 0, 255)
    assert np.abs(jitter_frame(frame, _params(s=1.8)) - expected).max() <= 1.0


@pytest.mark.parametrize("hue", [-0.5, -0.37, -0.1, -0.01, 0.02, 0.15, 0.33, 0.5])
def test_hue_shift_matches_colorsys(hue):
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (1, 300, 3), dtype=np.uint8)
    corners = [[0, 0, 0], [255, 255, 255], [128, 128, 128], [255, 0, 0], [0, 255, 0], [0, 0, 255]]
    pixels[0, : len(corners)] = corners
    out = jitter_frame(pixels, _params(h=hue))
    expected = np.empty((300, 3))
    for i, (r, g, b) in enumerate(pixels[0] / 255.0):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        expected[i] = colorsys.hsv_to_rgb((h + hue) % 1.0, s, v)
    assert np.abs(out[0] - np.round(expected * 255.0)).max() <= 2.0


def test_hue_zero_and_full_half_turns():
    frame = _clip(1, 16, 16, seed=5)[0]
    np.testing.assert_array_equal(jitter_frame(frame, _params(h=0.0)), frame)
    assert _diff(jitter_frame(frame, _params(h=0.5)), jitter_frame(frame, _params(h=-0.5))) <= 1


def test_ops_run_in_the_given_order():
    frame = _clip(1, 24, 24, seed=6)[0]
    factors = {
        BRIGHTNESS: {"b": 1.5},
        CONTRAST: {"c": 0.3},
        SATURATION: {"s": 1.9},
        HUE: {"h": 0.2},
    }
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2)]:
        stepwise = frame
        for op in order:
            stepwise = jitter_frame(stepwise, _params(order=(op,), **factors[op]))
        combined = jitter_frame(frame, _params(order=order, b=1.5, c=0.3, s=1.9, h=0.2))
        np.testing.assert_array_equal(combined, stepwise)
    a = jitter_frame(frame, _params(order=(0, 1, 2, 3), b=1.5, c=0.3, s=1.9, h=0.2))
    b = jitter_frame(frame, _params(order=(3, 2, 1, 0), b=1.5, c=0.3, s=1.9, h=0.2))
    assert not np.array_equal(a, b)


def test_jitter_frame_apply_false_is_identity_copy():
    frame = _clip(1, 8, 8)[0]
    params = JitterParams(
        order=(0, 1, 2, 3), brightness=0.1, contrast=2.0, saturation=0.0, hue=0.3, apply=False
    )
    out = jitter_frame(frame, params)
    np.testing.assert_array_equal(out, frame)
    assert not np.shares_memory(out, frame)


def test_jitter_params_validation():
    with pytest.raises(ValueError, match="order"):
        _params(order=(0, 0, 1, 2))
    with pytest.raises(ValueError, match="order"):
        _params(order=(0, 4))
    with pytest.raises(ValueError, match="brightness"):
        _params(b=-0.1)
    with pytest.raises(ValueError, match="hue"):
        _params(h=0.6)


# ------------------------------------------------------------------------------------------
# colour jitter: sampling and clips
# ------------------------------------------------------------------------------------------


def test_sample_jitter_params_ranges():
    rng = np.random.default_rng(7)
    draws = [sample_jitter_params(rng, 0.8, 0.5, 1.5, 0.2, 0.8) for _ in range(2000)]
    b = np.array([d.brightness for d in draws])
    c = np.array([d.contrast for d in draws])
    s = np.array([d.saturation for d in draws])
    h = np.array([d.hue for d in draws])
    assert b.min() >= 0.2 and b.max() <= 1.8 and b.min() < 0.25 and b.max() > 1.75
    assert c.min() >= 0.5 and c.max() <= 1.5
    assert s.min() >= 0.0 and s.max() <= 2.5  # lower bound max(0, 1 - 1.5)
    assert h.min() >= -0.2 and h.max() <= 0.2 and h.min() < -0.19 and h.max() > 0.19
    assert all(sorted(d.order) == [0, 1, 2, 3] for d in draws)
    assert len({d.order for d in draws}) == 24
    assert 0.75 < np.mean([d.apply for d in draws]) < 0.85
    off = sample_jitter_params(rng, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert (off.brightness, off.contrast, off.saturation, off.hue, off.apply) == (1, 1, 1, 0, True)


def test_per_frame_jitter_differs_between_frames():
    frame = _clip(1, 32, 32, seed=8)[0]
    clip = np.repeat(frame[None], 16, axis=0)
    out = jitter_clip(clip, np.random.default_rng(0), 0.8, 0.8, 0.8, 0.2, p=0.8, per_frame=True)
    assert out.shape == clip.shape and out.dtype == np.uint8
    distinct = {out[i].tobytes() for i in range(16)}
    assert len(distinct) > 8


def test_clip_level_jitter_keeps_frames_equal():
    frame = _clip(1, 32, 32, seed=8)[0]
    clip = np.repeat(frame[None], 16, axis=0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        out = jitter_clip(clip, rng, 0.8, 0.8, 0.8, 0.2, p=1.0, per_frame=False)
        assert all(np.array_equal(out[0], out[i]) for i in range(16))
        assert not np.array_equal(out[0], frame)


def test_jitter_p0_is_identity():
    clip = _clip(4, 20, 20)
    out = jitter_clip(clip, np.random.default_rng(0), 0.8, 0.8, 0.8, 0.2, p=0.0)
    np.testing.assert_array_equal(out, clip)
    assert not np.shares_memory(out, clip)


def test_jitter_clip_on_strided_views():
    clip = _clip(4, 40, 40)
    view = clip[:, 5:30, ::-1]
    a = jitter_clip(view, np.random.default_rng(3), 0.5, 0.5, 0.5, 0.1, p=1.0)
    b = jitter_clip(np.ascontiguousarray(view), np.random.default_rng(3), 0.5, 0.5, 0.5, 0.1, p=1.0)
    np.testing.assert_array_equal(a, b)
    assert a.flags.c_contiguous


def test_jitter_determinism_and_seed_dependence():
    clip = _clip(8, 24, 24)
    args = (0.8, 0.8, 0.8, 0.2)
    a = jitter_clip(clip, np.random.default_rng(11), *args)
    b = jitter_clip(clip, np.random.default_rng(11), *args)
    c = jitter_clip(clip, np.random.default_rng(12), *args)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------------------------------
# composite
# ------------------------------------------------------------------------------------------


def test_augment_train_shapes_and_dtype():
    clip = _clip(16, 240, 320)
    out = augment_clip(clip, AugmentConfig(), np.random.default_rng(0))
    assert out.shape == (16, 112, 112, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous


def test_augment_eval_is_center_crop_of_resize():
    clip = _smooth_clip()
    out, params = augment_clip_with_params(clip, AugmentConfig(), np.random.default_rng(0), False)
    assert params == {"top": 8, "left": 30, "flip": False}
    np.testing.assert_array_equal(out, resize_clip(clip, (128, 171))[:, 8:120, 30:142])
    # Eval draws nothing: the result does not depend on the generator.
    other = augment_clip(clip, AugmentConfig(), np.random.default_rng(99), train=False)
    np.testing.assert_array_equal(out, other)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_augment_params_reproduce_geometry(flip_prob):
    clip = _smooth_clip()
    cfg = AugmentConfig(flip_prob=flip_prob, jitter_prob=0.0)
    out, params = augment_clip_with_params(clip, cfg, np.random.default_rng(3))
    assert set(params) == {"top", "left", "flip"} and params["flip"] is (flip_prob == 1.0)
    expected = crop_clip(resize_clip(clip, (128, 171)), params["top"], params["left"], (112, 112))
    if params["flip"]:
        expected = hflip_clip(expected)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("per_frame", [True, False])
def test_augment_stages_keep_the_clip_before_jitter(per_frame):
    """`geometric` is the clip a jitter-free config gives from the same rng state (the same
    crop and flip); `clip` is what augment_clip gives."""
    clip = _smooth_clip(8)
    cfg = AugmentConfig(flip_prob=0.5, jitter_prob=1.0, per_frame_jitter=per_frame)
    for seed in range(4):
        a = augment_clip_stages(clip, cfg, np.random.default_rng(seed))
        np.testing.assert_array_equal(a.clip, augment_clip(clip, cfg, np.random.default_rng(seed)))
        plain = replace(cfg, jitter_prob=0.0)
        geometric, params = augment_clip_with_params(clip, plain, np.random.default_rng(seed))
        np.testing.assert_array_equal(a.geometric, geometric)
        assert (a.top, a.left, a.flip) == (params["top"], params["left"], params["flip"])
        assert not np.array_equal(a.clip, a.geometric)
    none = augment_clip_stages(clip, replace(cfg, jitter_prob=0.0), np.random.default_rng(0))
    assert none.geometric is none.clip  # nothing jittered: no copy
    test = augment_clip_stages(clip, cfg, np.random.default_rng(0), train=False)
    assert test.geometric is test.clip


@pytest.mark.parametrize("per_frame", [True, False])
def test_augment_equals_composition_of_parts(per_frame):
    clip = _smooth_clip(8)
    cfg = AugmentConfig(per_frame_jitter=per_frame)
    out = augment_clip(clip, cfg, np.random.default_rng(21))
    rng = np.random.default_rng(21)
    resized = resize_clip(clip, cfg.resize)
    top, left = random_crop_params(128, 171, cfg.crop, rng)
    x = crop_clip(resized, top, left, cfg.crop)
    if rng.random() < cfg.flip_prob:
        x = hflip_clip(x)
    jit = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    expected = jitter_clip(x, rng, *jit, p=cfg.jitter_prob, per_frame=per_frame)
    np.testing.assert_array_equal(out, expected)


def test_augment_skips_resize_when_already_sized_or_none():
    clip = _clip(4, 128, 171)
    cfg = AugmentConfig(jitter_prob=0.0, flip_prob=0.0)
    out, p = augment_clip_with_params(clip, cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(
        out, clip[:, p["top"] : p["top"] + 112, p["left"] : p["left"] + 112]
    )
    raw = _clip(2, 150, 200)
    out = augment_clip(raw, AugmentConfig(resize=None, crop=(100, 120)), np.random.default_rng(0))
    assert out.shape == (2, 100, 120, 3)
    with pytest.raises(ValueError, match="larger"):
        augment_clip(_clip(2, 90, 200), AugmentConfig(resize=None), np.random.default_rng(0))


def test_augment_never_aliases_input():
    clip = _clip(2, 112, 112)
    out = augment_clip(clip, AugmentConfig(resize=None), np.random.default_rng(0), train=False)
    np.testing.assert_array_equal(out, clip)
    assert not np.shares_memory(out, clip)


def test_augment_determinism_and_seed_dependence():
    clip = _clip(16, 240, 320)
    cfg = AugmentConfig()
    a = augment_clip(clip, cfg, np.random.default_rng(5))
    b = augment_clip(clip, cfg, np.random.default_rng(5))
    c = augment_clip(clip, cfg, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


# ------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"hue": 0.6}, "hue"),
        ({"hue": -0.1}, "hue"),
        ({"brightness": -0.1}, "brightness"),
        ({"contrast": -1.0}, "contrast"),
        ({"saturation": -0.5}, "saturation"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"jitter_prob": -0.1}, "jitter_prob"),
        ({"crop": (0, 112)}, "crop"),
        ({"resize": (128,)}, "resize"),
        ({"crop": (129, 112)}, "crop"),
    ],
)
def test_augment_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AugmentConfig(**kwargs)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((-0.1, 0.5, 0.5, 0.1, 0.5), "brightness"),
        ((0.5, -0.1, 0.5, 0.1, 0.5), "contrast"),
        ((0.5, 0.5, -0.1, 0.1, 0.5), "saturation"),
        ((0.5, 0.5, 0.5, 0.51, 0.5), "hue"),
        ((0.5, 0.5, 0.5, 0.1, 1.1), "p"),
        ((0.5, 0.5, 0.5, 0.1, -0.1), "p"),
    ],
)
def test_jitter_argument_validation(args, field):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=field):
        sample_jitter_params(rng, *args)
    with pytest.raises(ValueError, match=field):
        jitter_clip(_clip(1, 4, 4), rng, *args[:4], p=args[4])


def test_clip_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        augment_clip(_clip(1, 128, 171).astype(np.float32), AugmentConfig(), rng)
    with pytest.raises(ValueError, match="shape"):
        resize_clip(np.zeros((4, 4, 3), np.uint8), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        jitter_frame(np.zeros((1, 4, 4, 3), np.uint8), _params())
