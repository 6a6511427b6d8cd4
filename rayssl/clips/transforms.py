"""Clip augmentations in plain numpy / OpenCV (no torch, no Ray).

Every function works on RGB video clips stored as ``uint8`` arrays of shape ``(T, H, W, 3)``
and returns ``uint8``. They run inside CPU data workers on every training clip, so all pixel
work is done by OpenCV / numpy calls on whole frames; the only Python loops are over frames
and over the four jitter ops.

Colour jitter follows ``torchvision.transforms.RandomApply([ColorJitter(b, c, s, h)], p)``:

* factors are drawn uniformly: brightness in ``[max(0, 1 - b), 1 + b]``, contrast in
  ``[max(0, 1 - c), 1 + c]``, saturation in ``[max(0, 1 - s), 1 + s]``, hue in ``[-h, h]``;
* the four ops run in a random permutation order;
* brightness blends with black, contrast with the mean of the grayscale frame
  (``0.299 R + 0.587 G + 0.114 B``), saturation with the grayscale frame, and hue rotates
  the HSV hue by ``hue_factor`` turns;
* like torchvision on uint8 images, the result of every op is clamped to ``[0, 255]`` and
  stored as uint8 before the next op. OpenCV rounds where torchvision truncates, and the
  grayscale used by contrast/saturation is not quantised, so values can differ from
  torchvision's by about one level per op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "SATURATION",
    "HUE",
    "AugmentConfig",
    "AugmentedClip",
    "JitterParams",
    "augment_clip",
    "augment_clip_stages",
    "augment_clip_with_params",
    "center_crop_params",
    "crop_clip",
    "hflip_clip",
    "jitter_clip",
    "jitter_frame",
    "random_crop_params",
    "resize_clip",
    "resize_short_side",
    "sample_jitter_params",
]

# Op indices used in ``JitterParams.order`` (same numbering as torchvision's ``fn_idx``).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
_NUM_OPS = 4


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _check_clip(clip: np.ndarray) -> None:
    if not isinstance(clip, np.ndarray) or clip.ndim != 4 or clip.shape[-1] != 3:
        shape = getattr(clip, "shape", None)
        raise ValueError(f"clip must be an array of shape (T, H, W, 3), got shape {shape}")
    if clip.dtype != np.uint8:
        raise ValueError(f"clip must have dtype uint8, got {clip.dtype}")


def _check_frame(frame: np.ndarray) -> None:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[-1] != 3:
        shape = getattr(frame, "shape", None)
        raise ValueError(f"frame must be an array of shape (H, W, 3), got shape {shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame must have dtype uint8, got {frame.dtype}")


def _check_size(name: str, size: Any) -> tuple[int, int]:
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair, got {size!r}") from None
    if int(h) != h or int(w) != w or h <= 0 or w <= 0:
        raise ValueError(f"{name} must be two positive integers, got {size!r}")
    return int(h), int(w)


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_jitter_args(
    brightness: float, contrast: float, saturation: float, hue: float, p: float
) -> None:
    for name, value in (
        ("brightness", brightness),
        ("contrast", contrast),
        ("saturation", saturation),
    ):
        if not value >= 0.0:  # also rejects NaN
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    _check_prob("p", p)


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def resize_clip(clip: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize every frame to ``size = (height, width)`` with bilinear interpolation.

    Args:
        clip: ``(T, H, W, 3)`` uint8.
        size: target ``(height, width)``.

    Returns:
        New ``(T, height, width, 3)`` uint8 array (``cv2.INTER_LINEAR``, no antialiasing).
    """
    _check_clip(clip)
    h, w = _check_size("size", size)
    out = np.empty((clip.shape[0], h, w, 3), dtype=np.uint8)
    for i, frame in enumerate(clip):
        # cv2.resize takes (width, height); writes straight into the preallocated frame.
        cv2.resize(frame, (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def resize_short_side(clip: np.ndarray, short: int) -> np.ndarray:
    """Resize so the shorter side equals ``short``, keeping the aspect ratio.

    The long side becomes ``int(short * long / short_side)`` (torchvision's rule).

    Args:
        clip: ``(T, H, W, 3)`` uint8.
        short: target length of the shorter side.

    Returns:
        New ``(T, H', W', 3)`` uint8 array with ``min(H', W') == short``.
    """
    _check_clip(clip)
    if int(short) != short or short <= 0:
        raise ValueError(f"short must be a positive integer, got {short!r}")
    short = int(short)
    h, w = clip.shape[1:3]
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    return resize_clip(clip, size)


def _check_crop(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    ch, cw = _check_size("size", size)
    if ch > height or cw > width:
        raise ValueError(f"crop size {(ch, cw)} is larger than the frame {(height, width)}")
    return ch, cw


def random_crop_params(
    height: int, width: int, size: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Draw the top-left corner of a uniformly random ``size = (h, w)`` crop.

    Returns:
        ``(top, left)`` with ``0 <= top <= height - h`` and ``0 <= left <= width - w``.

    Raises:
        ValueError: if the crop is larger than the frame.
    """
    ch, cw = _check_crop(height, width, size)
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    return top, left


def center_crop_params(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Top-left corner of the centred ``size = (h, w)`` crop (torchvision's rounding).

    Raises:
        ValueError: if the crop is larger than the frame.
    """
    ch, cw = _check_crop(height, width, size)
    return int(round((height - ch) / 2.0)), int(round((width - cw) / 2.0))


def crop_clip(clip: np.ndarray, top: int, left: int, size: tuple[int, int]) -> np.ndarray:
    """Crop the same region from every frame.

    Args:
        clip: ``(T, H, W, 3)`` uint8.
        top, left: corner of the crop.
        size: ``(h, w)`` of the crop.

    Returns:
        ``(T, h, w, 3)`` view of ``clip[:, top:top + h, left:left + w]`` (no copy).

    Raises:
        ValueError: if the crop does not fit inside the frame.
    """
    _check_clip(clip)
    height, width = clip.shape[1:3]
    ch, cw = _check_crop(height, width, size)
    if not (0 <= top <= height - ch and 0 <= left <= width - cw):
        raise ValueError(
            f"crop at (top={top}, left={left}) of size {(ch, cw)} does not fit in the "
            f"frame {(height, width)}"
        )
    return clip[:, top : top + ch, left : left + cw]


def hflip_clip(clip: np.ndarray) -> np.ndarray:
    """Flip every frame horizontally (the whole clip the same way).

    Args:
        clip: ``(T, H, W, 3)`` uint8.

    Returns:
        ``(T, H, W, 3)`` view ``clip[:, :, ::-1]`` (negative stride; wrap it in
        ``np.ascontiguousarray`` before ``torch.from_numpy``).
    """
    _check_clip(clip)
    return clip[:, :, ::-1]


# --------------------------------------------------------------------------------------------
# colour jitter
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JitterParams:
    """One draw of ``RandomApply(ColorJitter(...), p)``.

    Attributes:
        order: the ops to run, in order, as indices ``BRIGHTNESS=0, CONTRAST=1,
            SATURATION=2, HUE=3`` (a permutation of all four when sampled; ops left out are
            not run).
        brightness, contrast, saturation: blend factors (1.0 = identity).
        hue: hue shift in turns, in ``[-0.5, 0.5]`` (0.0 = identity).
        apply: whether the jitter is applied at all (the RandomApply coin).
    """

    order: tuple[int, ...]
    brightness: float
    contrast: float
    saturation: float
    hue: float
    apply: bool

    def __post_init__(self) -> None:
        order = tuple(int(i) for i in self.order)
        if len(set(order)) != len(order) or not set(order) <= set(range(_NUM_OPS)):
            raise ValueError(f"order must be distinct op indices in 0..3, got {self.order!r}")
        object.__setattr__(self, "order", order)
        for name in ("brightness", "contrast", "saturation"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} factor must be >= 0, got {getattr(self, name)}")
        if not -0.5 <= self.hue <= 0.5:
            raise ValueError(f"hue factor must be in [-0.5, 0.5], got {self.hue}")


_JitterRow = tuple[bool, list[int], list[float]]  # (apply, order, factors) of one draw


def _sample_jitter_rows(
    rng: np.random.Generator,
    n: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
) -> list[_JitterRow]:
    """Draw ``n`` independent jitter parameter sets with three vectorised draws.

    Returns:
        ``n`` tuples ``(apply, order, factors)``: the RandomApply coin, a permutation of the
        four op indices, and the ``[brightness, contrast, saturation, hue]`` factors.
    """
    apply = rng.random(n) < p
    order = np.argsort(rng.random((n, _NUM_OPS)), axis=1)
    lo = [max(0.0, 1.0 - brightness), max(0.0, 1.0 - contrast), max(0.0, 1.0 - saturation), -hue]
    hi = [1.0 + brightness, 1.0 + contrast, 1.0 + saturation, hue]
    factors = rng.uniform(lo, hi, size=(n, _NUM_OPS))  # a disabled op draws exactly identity
    return list(zip(apply.tolist(), order.tolist(), factors.tolist(), strict=True))


def sample_jitter_params(
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
) -> JitterParams:
    """Draw one set of colour-jitter parameters (torchvision ``ColorJitter.get_params``).

    Raises:
        ValueError: if ``brightness``/``contrast``/``saturation`` < 0, ``hue`` is outside
            ``[0, 0.5]`` or ``p`` outside ``[0, 1]``.
    """
    _check_jitter_args(brightness, contrast, saturation, hue, p)
    ((apply, order, (b, c, s, h)),) = _sample_jitter_rows(
        rng, 1, brightness, contrast, saturation, hue, p
    )
    return JitterParams(
        order=tuple(order), brightness=b, contrast=c, saturation=s, hue=h, apply=apply
    )


_IDENTITY = (1.0, 1.0, 1.0, 0.0)  # factors that leave a frame unchanged
_GRAY_W = np.array([0.299, 0.587, 0.114])
_EYE = np.eye(3)
_GRAY_ROWS = np.tile(_GRAY_W, (3, 1))  # every output channel = luma
_BELOW_360 = float(np.nextafter(np.float32(360.0), np.float32(0.0)))


def _blend(frame: np.ndarray, op: int, f: float) -> np.ndarray:
    """Brightness / contrast / saturation of one contiguous ``(H, W, 3)`` uint8 frame.

    Each op is the affine colour map ``f * x + (1 - f) * target``, evaluated by a single
    ``cv2.transform`` call that also rounds and saturates to uint8.
    """
    m = np.zeros((3, 4))
    m[:, :3] = f * _EYE
    if op == CONTRAST:  # blend with the mean luma of the frame
        m[:, 3] = (1.0 - f) * float(np.dot(cv2.mean(frame)[:3], _GRAY_W))
    elif op == SATURATION:  # blend with the luma image
        m[:, :3] += (1.0 - f) * _GRAY_ROWS
    # BRIGHTNESS: blend with black, i.e. just the scaling.
    return cv2.transform(frame, m)


def _hue(frame: np.ndarray, f: float) -> np.ndarray:
    """Rotate the HSV hue of one contiguous ``(H, W, 3)`` uint8 frame by ``f`` turns."""
    # float32 input in [0, 255] gives H in degrees [0, 360), S in [0, 1], V in [0, 255].
    hsv = cv2.cvtColor(frame.astype(np.float32), cv2.COLOR_RGB2HSV)
    hue: np.ndarray = cv2.extractChannel(hsv, 0)
    hue += 360.0 * (f + 1.0 if f < 0.0 else f)  # shift in [0, 360): hue now in [0, 720)
    # Wrap back to [0, 360), the range OpenCV documents for HSV2RGB (cv2.threshold gives 360
    # where hue >= 360 and 0 elsewhere; cheaper than np.mod or a masked subtract).
    wrap: np.ndarray = cv2.threshold(hue, _BELOW_360, 360.0, cv2.THRESH_BINARY)[1]
    hue -= wrap
    cv2.insertChannel(hue, hsv, 0)
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))  # round + saturate


def _jitter_one(
    frame: np.ndarray, apply: bool, order: Sequence[int], factors: Sequence[float]
) -> np.ndarray:
    """Jitter one ``(H, W, 3)`` uint8 frame.

    ``factors`` is ``(brightness, contrast, saturation, hue)``; ops with identity factors are
    skipped. May return ``frame`` itself (no copy) when nothing is applied.
    """
    if not apply:
        return frame
    frame = np.ascontiguousarray(frame)  # crops and flips arrive as strided views
    for op in order:
        f = float(factors[op])
        if f == _IDENTITY[op]:
            continue
        frame = _hue(frame, f) if op == HUE else _blend(frame, op, f)
    return frame


def jitter_frame(frame: np.ndarray, params: JitterParams) -> np.ndarray:
    """Colour-jitter one frame with fixed parameters.

    Args:
        frame: ``(H, W, 3)`` uint8 RGB.
        params: the draw to apply (identity when ``params.apply`` is False).

    Returns:
        New ``(H, W, 3)`` uint8 array.
    """
    _check_frame(frame)
    factors = (params.brightness, params.contrast, params.saturation, params.hue)
    out = _jitter_one(frame, params.apply, params.order, factors)
    return out.copy() if out is frame else out


def jitter_clip(
    clip: np.ndarray,
    rng: np.random.Generator,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float = 0.8,
    per_frame: bool = True,
) -> np.ndarray:
    """``RandomApply(ColorJitter(brightness, contrast, saturation, hue), p)`` on a clip.

    Args:
        clip: ``(T, H, W, 3)`` uint8 RGB.
        rng: source of randomness.
        brightness, contrast, saturation: jitter strengths (>= 0).
        hue: hue jitter strength in ``[0, 0.5]`` turns.
        p: probability of applying the jitter.
        per_frame: if True every frame draws independent parameters (including its own
            RandomApply coin); if False one draw is shared by the whole clip.

    Returns:
        New contiguous ``(T, H, W, 3)`` uint8 array.
    """
    _check_clip(clip)
    _check_jitter_args(brightness, contrast, saturation, hue, p)
    t = clip.shape[0]
    rows = _sample_jitter_rows(rng, t if per_frame else 1, brightness, contrast, saturation, hue, p)
    out = np.empty(clip.shape, dtype=np.uint8)
    for i in range(t):
        apply, order, factors = rows[i if per_frame else 0]
        out[i] = _jitter_one(clip[i], apply, order, factors)
    return out


# --------------------------------------------------------------------------------------------
# composite
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentConfig:
    """Settings for :func:`augment_clip`.

    Attributes:
        resize: ``(height, width)`` every frame is resized to first, or None to skip.
        crop: ``(height, width)`` of the random (train) or centre (eval) crop.
        flip_prob: probability of a horizontal flip of the whole clip (train only).
        jitter_prob: RandomApply probability of the colour jitter (train only).
        brightness, contrast, saturation: ColorJitter strengths (>= 0).
        hue: ColorJitter hue strength in ``[0, 0.5]``.
        per_frame_jitter: draw independent jitter parameters for every frame.
    """

    resize: tuple[int, int] | None = (128, 171)
    crop: tuple[int, int] = (112, 112)
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    per_frame_jitter: bool = True

    def __post_init__(self) -> None:
        if self.resize is not None:
            object.__setattr__(self, "resize", _check_size("resize", self.resize))
        object.__setattr__(self, "crop", _check_size("crop", self.crop))
        if self.resize is not None and (
            self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1]
        ):
            raise ValueError(f"crop {self.crop} is larger than resize {self.resize}")
        _check_prob("flip_prob", self.flip_prob)
        _check_prob("jitter_prob", self.jitter_prob)
        _check_jitter_args(self.brightness, self.contrast, self.saturation, self.hue, 0.0)


@dataclass(frozen=True)
class AugmentedClip:
    """One augmented clip and what was done to it.

    Attributes:
        clip: ``(T, crop_h, crop_w, 3)`` uint8, resized, cropped, flipped and colour-jittered:
            what the network sees.
        geometric: the same clip before colour jitter (resized, cropped, flipped), for
            labels that describe the video's pixels (motion statistics); ``clip`` itself
            when no jitter was applied.
        top, left: the crop corner in the resized frame.
        flip: whether the clip was flipped.
    """

    clip: np.ndarray
    geometric: np.ndarray
    top: int
    left: int
    flip: bool


def augment_clip_stages(
    clip: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    train: bool = True,
) -> AugmentedClip:
    """Resize, crop, flip and colour-jitter a clip, keeping the clip before jitter too.

    Train: resize to ``cfg.resize`` (skipped if None or already that size), random crop,
    horizontal flip with ``cfg.flip_prob``, colour jitter. Eval: resize and centre crop only.
    The draws come from ``rng`` in the order crop, flip, jitter, so ``clip`` equals
    ``jitter_clip(hflip_clip(crop_clip(resize_clip(clip, ...), ...)), rng, ...)`` with the same
    ``rng`` state, equal ``rng`` states give equal outputs, and two configs that differ only
    in their jitter settings give the same ``geometric`` clip from equal ``rng`` states. The
    work is done frame by frame so the intermediates stay small and in cache.

    Args:
        clip: ``(T, H, W, 3)`` uint8 RGB.
        cfg: augmentation settings.
        rng: source of randomness (not used when ``train`` is False).
        train: training (random) or evaluation (deterministic) pipeline.

    Raises:
        ValueError: if the clip is malformed or the crop is larger than the (resized) frame.
    """
    _check_clip(clip)
    t, h, w = clip.shape[:3]
    height, width = cfg.resize if cfg.resize is not None else (h, w)
    resize = (height, width) != (h, w)
    rows: list[_JitterRow] = []
    if train:
        top, left = random_crop_params(height, width, cfg.crop, rng)
        flip = bool(rng.random() < cfg.flip_prob)
        rows = _sample_jitter_rows(
            rng,
            t if cfg.per_frame_jitter else 1,
            cfg.brightness,
            cfg.contrast,
            cfg.saturation,
            cfg.hue,
            cfg.jitter_prob,
        )
    else:
        top, left = center_crop_params(height, width, cfg.crop)
        flip = False
    jitters = any(apply for apply, _, _ in rows)
    ch, cw = cfg.crop
    out = np.empty((t, ch, cw, 3), dtype=np.uint8)
    geometric = np.empty_like(out) if jitters else out
    for i in range(t):
        frame = clip[i]
        if resize:
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
        frame = frame[top : top + ch, left : left + cw]
        if flip:
            frame = frame[:, ::-1]
        if jitters:
            geometric[i] = frame
            apply, order, factors = rows[i if cfg.per_frame_jitter else 0]
            frame = _jitter_one(frame, apply, order, factors)
        out[i] = frame
    return AugmentedClip(clip=out, geometric=geometric, top=top, left=left, flip=flip)


def augment_clip_with_params(
    clip: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    train: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Augment a clip (:func:`augment_clip_stages`), also returning the geometric draws.

    Returns:
        ``(out, params)``: ``out`` is a new contiguous ``(T, crop_h, crop_w, 3)`` uint8 array;
        ``params`` is ``{"top": int, "left": int, "flip": bool}``, the crop corner in the
        resized frame and whether the clip was flipped, so the same geometry can be applied
        to other data.
    """
    a = augment_clip_stages(clip, cfg, rng, train=train)
    return a.clip, {"top": a.top, "left": a.left, "flip": a.flip}


def augment_clip(
    clip: np.ndarray,
    cfg: AugmentConfig,
    rng: np.random.Generator,
    train: bool = True,
) -> np.ndarray:
    """Augment a ``(T, H, W, 3)`` uint8 clip; see :func:`augment_clip_stages`.

    Returns:
        New contiguous ``(T, crop_h, crop_w, 3)`` uint8 array.
    """
    return augment_clip_stages(clip, cfg, rng, train=train).clip
