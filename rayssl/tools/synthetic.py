"""Procedurally generated video datasets written as real encoded video files.

The generator renders textured objects moving over a textured (optionally panning) background
and encodes the result with PyAV/FFmpeg. Classes are defined purely by the *kind of motion*
(translate right, rotate clockwise, zoom in, ...); textures, colours, object shapes, object
sizes, the background and the speed are drawn at random per video. A representation that
separates the classes must therefore have captured motion rather than appearance, and since the
speed varies per video (0.9-1.5 px/frame, log-uniform; narrow enough that the pace of a
clip can be told from its motion) pace prediction on temporally subsampled
clips is learnable but not trivial.

Besides the motion dataset the module provides:

* :func:`index_pattern_frames` / :func:`read_index_pattern` -- frames that carry their own frame
  index as large black/white blocks, robust to lossy compression, for testing frame-exact
  random access of video readers;
* :func:`write_corrupt_files` -- broken inputs (empty, non-video, truncated, random bytes) for
  manifest/validation tests.

Example::

    videos = generate_dataset("/tmp/synth", num_videos=24, codec="mpeg4-bframes")
    for v in videos:
        print(v.path, v.label, v.label_name, v.num_frames)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType

import av
import cv2
import numpy as np

__all__ = [
    "CODECS",
    "MOTION_CLASSES",
    "MOTION_FAMILIES",
    "CodecSpec",
    "SynthVideo",
    "generate_dataset",
    "index_pattern_frames",
    "read_index_pattern",
    "render_video",
    "write_corrupt_files",
    "write_video",
]

# --------------------------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """How to encode a video with one FFmpeg encoder.

    Attributes:
        encoder: FFmpeg encoder name (``"libx264"``, ``"mpeg4"``).
        extension: file extension including the dot (``".mp4"``).
        container_format: FFmpeg muxer name (``"mp4"``, ``"avi"``).
        codec_tag: FourCC written to the container, or ``None`` for the muxer default.
        options: default encoder options (FFmpeg AVOptions, string values). ``g`` (the GOP size)
            is always set by :func:`write_video` and overrides any value here.
        default_gop: GOP size used when :func:`write_video` gets ``gop=None``; ``None`` means
            ``2 * fps`` (two seconds).
    """

    encoder: str
    extension: str
    container_format: str
    codec_tag: str | None = None
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    default_gop: int | None = None


# MPEG-4 part 2 in quantiser mode (``-q:v 4``): FFmpeg's default 200 kb/s would smear textures.
_MPEG4_QUALITY = {"flags": "+qscale", "global_quality": str(4 * 118)}  # 118 = FF_QP2LAMBDA

CODECS: dict[str, CodecSpec] = {
    # H.264 in MP4, x264 defaults (CRF 23, up to 3 B-frames), 2 s GOP.
    "h264": CodecSpec(
        encoder="libx264",
        extension=".mp4",
        container_format="mp4",
        codec_tag=None,
        options=MappingProxyType({"preset": "veryfast", "crf": "23"}),
        default_gop=None,
    ),
    # Xvid-style MPEG-4 part 2 in AVI with 2 B-frames and a 12-frame GOP, like UCF101.
    "mpeg4-bframes": CodecSpec(
        encoder="mpeg4",
        extension=".avi",
        container_format="avi",
        codec_tag="XVID",
        options=MappingProxyType({"bf": "2", **_MPEG4_QUALITY}),
        default_gop=12,
    ),
    # Same without B-frames (I/P only).
    "mpeg4": CodecSpec(
        encoder="mpeg4",
        extension=".avi",
        container_format="avi",
        codec_tag="XVID",
        options=MappingProxyType({"bf": "0", **_MPEG4_QUALITY}),
        default_gop=12,
    ),
}


def _codec_spec(codec: str) -> CodecSpec:
    try:
        return CODECS[codec]
    except KeyError:
        raise ValueError(f"unknown codec {codec!r}; expected one of {sorted(CODECS)}") from None


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "h264",
    gop: int | None = None,
) -> int:
    """Encode RGB frames to a video file.

    Args:
        path: output file (parent directories are created). Its extension is not checked; the
            container format comes from the codec spec.
        frames: iterable of ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order, all of the same
            shape, with ``H`` and ``W`` even (required by yuv420p).
        fps: frame rate (> 0).
        codec: key of :data:`CODECS`.
        gop: keyframe interval (encoder option ``g``); ``None`` uses the codec default (12 for
            MPEG-4, ``2 * fps`` for H.264).

    Returns:
        The number of frames written.

    Raises:
        ValueError: unknown codec, bad ``fps``/``gop``, no frames, or a malformed frame.
    """
    spec = _codec_spec(codec)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if gop is None:
        gop = spec.default_gop if spec.default_gop is not None else max(1, round(2 * fps))
    if isinstance(gop, bool) or not isinstance(gop, (int, np.integer)) or gop < 1:
        raise ValueError(f"gop must be a positive integer, got {gop!r}")

    iterator = iter(frames)
    try:
        first = _check_frame(next(iterator), None, 0)
    except StopIteration:
        raise ValueError("frames is empty; a video needs at least one frame") from None
    height, width = first.shape[:2]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    options = {**spec.options, "g": str(int(gop))}
    count = 0
    with av.open(str(path), mode="w", format=spec.container_format) as container:
        stream = container.add_stream(spec.encoder, rate=rate, options=options)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        if spec.codec_tag is not None:
            stream.codec_tag = spec.codec_tag
        frame: np.ndarray | None = first
        while frame is not None:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = count
            container.mux(stream.encode(video_frame))
            count += 1
            nxt = next(iterator, None)
            frame = None if nxt is None else _check_frame(nxt, (height, width), count)
        container.mux(stream.encode(None))
    return count


def _check_frame(frame: np.ndarray, shape: tuple[int, int] | None, index: int) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(
            f"frame {index} must be a uint8 (H, W, 3) RGB array, "
            f"got dtype={frame.dtype} shape={frame.shape}"
        )
    h, w = frame.shape[:2]
    if shape is None:
        if h < 2 or w < 2 or h % 2 or w % 2:
            raise ValueError(f"frame height and width must be even and >= 2, got {h}x{w}")
    elif (h, w) != shape:
        raise ValueError(f"frame {index} has size {h}x{w}, expected {shape[0]}x{shape[1]}")
    return np.ascontiguousarray(frame)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

MOTION_CLASSES: tuple[str, ...] = (
    "translate_right",
    "translate_left",
    "translate_up",
    "translate_down",
    "rotate_cw",
    "rotate_ccw",
    "zoom_in",
    "zoom_out",
    "oscillate_horizontal",
    "oscillate_vertical",
)
"""Motion kinds, in label order: label ``k`` of a generated dataset is ``MOTION_CLASSES[k]``."""

MOTION_FAMILIES: dict[str, tuple[str, ...]] = {
    "translate": ("translate_right", "translate_left", "translate_up", "translate_down"),
    "rotate": ("rotate_cw", "rotate_ccw"),
    "zoom": ("zoom_in", "zoom_out"),
    "oscillate": ("oscillate_horizontal", "oscillate_vertical"),
}
"""Classes that name a family of motion kinds: each video of such a class shows one kind
of the family, drawn at random (direction is not part of the class)."""

_TRANSLATIONS = {
    "translate_right": (1.0, 0.0),
    "translate_left": (-1.0, 0.0),
    "translate_up": (0.0, -1.0),
    "translate_down": (0.0, 1.0),
}
_MIN_SPEED, _MAX_SPEED = 0.9, 1.5  # px/frame, sampled log-uniformly per video
_MAX_PAN_SPEED = 0.5  # px/frame; the camera pan is always slower than the objects


def _contrasting_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    c1 = rng.integers(0, 256, size=3).astype(np.float32)
    c2 = rng.integers(0, 256, size=3).astype(np.float32)
    if np.abs(c1 - c2).mean() < 80:
        c2 = 255.0 - c1
    return c1, c2


def _texture(
    height: int, width: int, rng: np.random.Generator, contrast: float = 1.0
) -> np.ndarray:
    """A random two-colour texture (smooth noise, stripes, checker or blobs), float32 RGB.

    ``contrast`` < 1 pulls both colours towards their mean (used for backgrounds).
    """
    c1, c2 = _contrasting_colours(rng)
    mid = (c1 + c2) / 2.0
    c1, c2 = mid + contrast * (c1 - mid), mid + contrast * (c2 - mid)
    kind = int(rng.integers(4))
    if kind in (0, 3):  # smooth noise / thresholded blobs
        cell = int(rng.integers(3, 10)) if kind == 0 else int(rng.integers(2, 6))
        small = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
        t = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        t = np.clip(t, 0.0, 1.0)
        if kind == 3:
            t = (t > 0.5).astype(np.float32)
    else:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        theta = rng.uniform(0.0, math.pi)
        u = xx * math.cos(theta) + yy * math.sin(theta)
        if kind == 1:  # stripes, soft or hard
            period = rng.uniform(6.0, 20.0)
            t = 0.5 + 0.5 * np.sin(u * (2.0 * math.pi / period))
            if rng.random() < 0.5:
                t = (t > 0.5).astype(np.float32)
        else:  # rotated checkerboard
            size = rng.uniform(4.0, 14.0)
            v = -xx * math.sin(theta) + yy * math.cos(theta)
            t = ((np.floor(u / size) + np.floor(v / size)) % 2).astype(np.float32)
    img = c1 + t[..., None] * (c2 - c1)
    img += rng.normal(0.0, 6.0, size=img.shape).astype(np.float32)  # fine grain
    return img.astype(np.float32)


def _shape_mask(radius: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """An anti-aliased random shape inscribed in a circle of ``radius`` around the centre."""
    mask = np.zeros((size, size), np.uint8)
    c = (size - 1) / 2.0
    shift = 4  # fixed-point sub-pixel precision for OpenCV drawing
    scale = 1 << shift
    kind = int(rng.integers(3))
    if kind == 0:  # rectangle with corners on the circle
        phi = rng.uniform(0.35, 1.2)
        a, b = radius * math.cos(phi), radius * math.sin(phi)
        pts = np.array([[c - a, c - b], [c + a, c - b], [c + a, c + b], [c - a, c + b]])
        cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)
    elif kind == 1:  # ellipse
        axes = (radius * rng.uniform(0.55, 1.0), radius * rng.uniform(0.55, 1.0))
        cv2.ellipse(
            mask,
            (round(c * scale), round(c * scale)),
            (round(axes[0] * scale), round(axes[1] * scale)),
            0.0,
            0.0,
            360.0,
            255,
            -1,
            cv2.LINE_AA,
            shift,
        )
    else:  # convex-ish polygon, 3-7 vertices
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0.0, 2.0 * math.pi, n))
        angles = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False) * 0.5 + angles * 0.5
        radii = radius * rng.uniform(0.75, 1.0, n)
        pts = np.stack([c + radii * np.cos(angles), c + radii * np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(pts * scale).astype(np.int32)], 255, cv2.LINE_AA, shift)
    return mask.astype(np.float32) / 255.0


@dataclass
class _Object:
    sprite: np.ndarray  # (S, S, 3) float32
    mask: np.ndarray  # (S, S) float32 in [0, 1]
    radius: float  # radius of the shape at scale 1
    x: float
    y: float
    angle: float  # degrees, OpenCV convention (positive = counter-clockwise on screen)
    speed: float  # px/frame
    phase: float  # free parameter in [0, 1) used by periodic motions
    period: float  # frames, for oscillation

    def pose(
        self, motion: str, t: int, height: int, width: int
    ) -> tuple[float, float, float, float]:
        """Centre x, centre y, angle (degrees), scale at frame ``t``."""
        x, y, angle, scale = self.x, self.y, self.angle, 1.0
        if motion in _TRANSLATIONS:
            dx, dy = _TRANSLATIONS[motion]
            ext = self.radius + 2.0
            # Wrap on a torus one object wider than the frame: the object fully leaves on one
            # side before it re-enters on the other.
            x = (x + dx * self.speed * t + ext) % (width + 2 * ext) - ext
            y = (y + dy * self.speed * t + ext) % (height + 2 * ext) - ext
        elif motion in ("rotate_cw", "rotate_ccw"):
            omega = math.degrees(self.speed / self.radius)  # rim moves at `speed` px/frame
            angle += -omega * t if motion == "rotate_cw" else omega * t
        elif motion in ("zoom_in", "zoom_out"):
            # The rim moves at half the speed; sawtooth between 30% and 100% of full size.
            lo = 0.3
            span = (1.0 - lo) * self.radius
            pos = (self.phase * span + 0.5 * self.speed * t) % span
            scale = lo + pos / self.radius
            if motion == "zoom_out":
                scale = 1.0 + lo - scale
        elif motion in ("oscillate_horizontal", "oscillate_vertical"):
            amp = self.speed * self.period / (2.0 * math.pi)  # peak speed = `speed`
            off = amp * math.sin(2.0 * math.pi * (t / self.period + self.phase))
            if motion == "oscillate_horizontal":
                x += off
            else:
                y += off
        return x, y, angle, scale


def _make_object(
    height: int, width: int, motion: str, speed: float, rng: np.random.Generator
) -> _Object:
    short = min(height, width)
    radius = max(3.0, rng.uniform(0.12, 0.25) * short)
    size = int(math.ceil(2 * radius)) + 3
    sprite = _texture(size, size, rng)
    mask = _shape_mask(radius, size, rng)
    period = rng.uniform(12.0, 32.0)
    margin = radius
    if motion.startswith("oscillate"):
        margin += speed * period / (2.0 * math.pi)
    x = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
    y = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
    return _Object(
        sprite=sprite,
        mask=mask,
        radius=radius,
        x=float(x),
        y=float(y),
        angle=float(rng.uniform(0.0, 360.0)),
        speed=float(speed * rng.uniform(0.85, 1.15)),
        phase=float(rng.random()),
        period=float(period),
    )


def _composite(
    canvas: np.ndarray, obj: _Object, cx: float, cy: float, angle: float, scale: float
) -> None:
    """Alpha-blend ``obj`` into ``canvas`` (float32, in place), warping only its bounding box."""
    height, width = canvas.shape[:2]
    ext = (obj.sprite.shape[0] / 2.0) * scale * math.sqrt(2.0) + 2.0
    x0, x1 = max(0, int(math.floor(cx - ext))), min(width, int(math.ceil(cx + ext)))
    y0, y1 = max(0, int(math.floor(cy - ext))), min(height, int(math.ceil(cy + ext)))
    if x1 <= x0 or y1 <= y0:
        return
    c = (obj.sprite.shape[0] - 1) / 2.0
    m = cv2.getRotationMatrix2D((c, c), angle, scale)
    m[0, 2] += cx - c - x0
    m[1, 2] += cy - c - y0
    dsize = (x1 - x0, y1 - y0)
    sprite = cv2.warpAffine(obj.sprite, m, dsize, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(obj.mask, m, dsize, flags=cv2.INTER_LINEAR)[..., None]
    roi = canvas[y0:y1, x0:x1]
    roi += alpha * (sprite - roi)


def _check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_even(name: str, value: object) -> int:
    value = _check_positive_int(name, value, 2)
    if value % 2:
        raise ValueError(f"{name} must be even (yuv420p), got {value}")
    return value


def render_video(
    num_frames: int, height: int, width: int, motion: str, rng: np.random.Generator
) -> np.ndarray:
    """Render one synthetic video whose objects all follow the motion kind ``motion``.

    One to three textured objects (rectangles, ellipses or polygons with noise, stripe, checker
    or blob textures in random colours) move over a textured background. With probability 1/2
    the background pans slowly (< 0.5 px/frame, random direction). The object speed is drawn
    log-uniformly from 0.9-1.5 px/frame per video (each object jitters it by +-15%); for rotation
    and zoom it is the speed of the object's rim. Translating objects wrap around the frame so
    that the motion stays visible for any number of frames.

    Args:
        num_frames: number of frames (>= 1).
        height: frame height in pixels (>= 1).
        width: frame width in pixels (>= 1).
        motion: one of :data:`MOTION_CLASSES`.
        rng: source of all randomness; the same generator state gives the same pixels.

    Returns:
        ``uint8`` array of shape ``(num_frames, height, width, 3)`` in RGB order.
    """
    num_frames = _check_positive_int("num_frames", num_frames)
    height = _check_positive_int("height", height)
    width = _check_positive_int("width", width)
    if motion not in MOTION_CLASSES:
        raise ValueError(f"unknown motion {motion!r}; expected one of {MOTION_CLASSES}")

    speed = math.exp(rng.uniform(math.log(_MIN_SPEED), math.log(_MAX_SPEED)))

    # Background, larger than the frame when it pans.
    pan = 0.0
    pan_dir = (0.0, 0.0)
    if rng.random() < 0.5:
        pan = rng.uniform(0.1, _MAX_PAN_SPEED)
        a = rng.uniform(0.0, 2.0 * math.pi)
        pan_dir = (math.cos(a), math.sin(a))
    pad = int(math.ceil(pan * (num_frames - 1))) + 2
    background = _texture(height + pad, width + pad, rng, contrast=rng.uniform(0.35, 0.85))

    objects = [
        _make_object(height, width, motion, speed, rng) for _ in range(int(rng.integers(1, 4)))
    ]

    video = np.empty((num_frames, height, width, 3), np.uint8)
    centre = (num_frames - 1) / 2.0
    for t in range(num_frames):
        ox = pad / 2.0 + pan * pan_dir[0] * (t - centre)
        oy = pad / 2.0 + pan * pan_dir[1] * (t - centre)
        shift = np.array([[1.0, 0.0, -ox], [0.0, 1.0, -oy]])
        canvas = cv2.warpAffine(background, shift, (width, height), flags=cv2.INTER_LINEAR)
        for obj in objects:
            _composite(canvas, obj, *obj.pose(motion, t, height, width))
        np.clip(canvas, 0.0, 255.0, out=canvas)
        video[t] = (canvas + 0.5).astype(np.uint8)
    return video


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclass
class SynthVideo:
    """One generated video.

    Attributes:
        path: the encoded file, ``out_dir/<label_name>/<label_name>_<i:04d><ext>``.
        label: class index into :data:`MOTION_CLASSES`.
        label_name: ``MOTION_CLASSES[label]``.
        num_frames: frames written.
    """

    path: Path
    label: int
    label_name: str
    num_frames: int


def generate_dataset(
    out_dir: str | Path,
    num_videos: int = 24,
    num_frames: int = 64,
    height: int = 240,
    width: int = 320,
    fps: float = 25.0,
    codec: str = "mpeg4-bframes",
    num_classes: int = 4,
    seed: int = 0,
    gop: int | None = None,
    classes: Sequence[str] | None = None,
) -> list[SynthVideo]:
    """Generate a balanced motion-classification dataset of encoded videos.

    Video ``i`` has label ``i % num_classes`` (the motion kind ``MOTION_CLASSES[label]``, or
    ``classes[label]``) and is
    rendered from ``np.random.default_rng([seed, i])``, so the output is deterministic for a
    seed and any single video can be regenerated on its own. Files are laid out folder-per-class:
    ``out_dir/<class_name>/<class_name>_<i:04d><ext>`` (existing files are overwritten).

    Args:
        out_dir: output directory (created if missing).
        num_videos: number of videos (>= 1).
        num_frames: frames per video (>= 1).
        height: frame height, even, >= 2.
        width: frame width, even, >= 2.
        fps: frame rate written to the container.
        codec: key of :data:`CODECS`.
        num_classes: number of motion classes used, ``1 <= num_classes <= len(MOTION_CLASSES)``:
            the first ``num_classes`` of :data:`MOTION_CLASSES`.
        seed: non-negative integer seed.
        gop: keyframe interval, ``None`` for the codec default.
        classes: the classes to use instead (no repeats): motion kinds of
            :data:`MOTION_CLASSES`, or families of :data:`MOTION_FAMILIES` (a video of a
            family shows one of its kinds, drawn at random); video ``i`` is of class
            ``classes[i % len(classes)]`` and ``num_classes`` is ignored.

    Returns:
        One :class:`SynthVideo` per video, in index order.
    """
    num_videos = _check_positive_int("num_videos", num_videos)
    num_frames = _check_positive_int("num_frames", num_frames)
    height = _check_even("height", height)
    width = _check_even("width", width)
    if classes is not None:
        names = list(classes)
        bad = [c for c in names if c not in MOTION_CLASSES and c not in MOTION_FAMILIES]
        if not names or bad or len(set(names)) != len(names):
            raise ValueError(
                f"classes must be distinct names of {MOTION_CLASSES} or of "
                f"{tuple(MOTION_FAMILIES)}, got {list(classes)}"
            )
    else:
        num_classes = _check_positive_int("num_classes", num_classes)
        if num_classes > len(MOTION_CLASSES):
            raise ValueError(
                f"num_classes must be <= {len(MOTION_CLASSES)} (len(MOTION_CLASSES)), "
                f"got {num_classes}"
            )
        names = list(MOTION_CLASSES[:num_classes])
    seed = _check_positive_int("seed", seed, 0)
    spec = _codec_spec(codec)
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    if gop is not None:
        _check_positive_int("gop", gop)

    out_dir = Path(out_dir)
    videos = []
    for i in range(num_videos):
        label = i % len(names)
        name = names[label]
        rng = np.random.default_rng([seed, i])
        kinds = MOTION_FAMILIES.get(name, (name,))
        motion = kinds[int(rng.integers(len(kinds)))] if len(kinds) > 1 else kinds[0]
        frames = render_video(num_frames, height, width, motion, rng)
        path = out_dir / name / f"{name}_{i:04d}{spec.extension}"
        n = write_video(path, frames, fps=fps, codec=codec, gop=gop)
        videos.append(SynthVideo(path=path, label=label, label_name=name, num_frames=n))
    return videos


# --------------------------------------------------------------------------------------------
# Frame-index patterns (for frame-exact random access tests)
# --------------------------------------------------------------------------------------------

_GRID_ROWS, _GRID_COLS = 4, 5
_INDEX_BITS = 18  # cells 0..17: index bits (LSB first); cell 18: even parity; cell 19: gray
_MIN_CELL = 8
_GUTTER_GRAY = 128
_BIT_MARGIN = 48.0  # a bit cell must be < 128 - margin (0) or > 128 + margin (1)


def _cells(height: int, width: int) -> tuple[int, int]:
    ch, cw = height // _GRID_ROWS, width // _GRID_COLS
    if ch < _MIN_CELL or cw < _MIN_CELL:
        raise ValueError(
            f"index pattern frames need height >= {_GRID_ROWS * _MIN_CELL} and "
            f"width >= {_GRID_COLS * _MIN_CELL}, got {height}x{width}"
        )
    return ch, cw


def _gray_level(index: int) -> int:
    return 64 + (index * 8) % 128  # always in [64, 184]: never mistaken for black or white


def index_pattern_frames(num_frames: int, height: int = 64, width: int = 96) -> np.ndarray:
    """Frames that show their own index, robust to lossy compression.

    Each frame is a 4x5 grid of cells (at least 8x8 pixels each) separated by mid-gray gutters.
    Cells 0-17 (row-major) hold the bits of the frame index, least significant first, as white
    (1) or black (0); cell 18 holds an even-parity bit over them; cell 19 is a gray level that
    cycles with the index (also handy for eyeballing). Decode with :func:`read_index_pattern`.

    Args:
        num_frames: number of frames, ``1 <= num_frames <= 2**18``.
        height: frame height, even, >= 32.
        width: frame width, even, >= 40.

    Returns:
        ``uint8`` array ``(num_frames, height, width, 3)``; frame ``i`` encodes ``i``.
    """
    num_frames = _check_positive_int("num_frames", num_frames)
    if num_frames > 1 << _INDEX_BITS:
        raise ValueError(f"num_frames must be <= {1 << _INDEX_BITS}, got {num_frames}")
    height = _check_even("height", height)
    width = _check_even("width", width)
    ch, cw = _cells(height, width)
    gy, gx = max(1, ch // 8), max(1, cw // 8)  # gutter

    frames = np.full((num_frames, height, width), _GUTTER_GRAY, np.uint8)
    for i in range(num_frames):
        bits = [(i >> b) & 1 for b in range(_INDEX_BITS)]
        values = [255 * b for b in bits] + [255 * (sum(bits) % 2), _gray_level(i)]
        for cell, value in enumerate(values):
            r, c = divmod(cell, _GRID_COLS)
            frames[i, r * ch + gy : (r + 1) * ch - gy, c * cw + gx : (c + 1) * cw - gx] = value
    return np.repeat(frames[..., None], 3, axis=3)


def read_index_pattern(frame_rgb: np.ndarray) -> int:
    """Decode the frame index from a (decoded) frame made by :func:`index_pattern_frames`.

    The central half of each cell is averaged; bit cells are thresholded at 128.

    Args:
        frame_rgb: ``(H, W, 3)`` RGB or ``(H, W)`` gray frame, same size as generated.

    Returns:
        The frame index.

    Raises:
        ValueError: the frame is too small or is not a (recoverable) index pattern: a bit cell
            is neither clearly black nor clearly white, the gray cell is black or white (e.g. a
            blank frame), or the parity check fails.
    """
    frame = np.asarray(frame_rgb, dtype=np.float32)
    if frame.ndim == 3:
        frame = frame.mean(axis=2)
    if frame.ndim != 2:
        raise ValueError(f"frame_rgb must be (H, W, 3) or (H, W), got shape {frame.shape}")
    ch, cw = _cells(*frame.shape)
    means = []
    for cell in range(_GRID_ROWS * _GRID_COLS):
        r, c = divmod(cell, _GRID_COLS)
        y0, x0 = r * ch + ch // 4, c * cw + cw // 4
        means.append(float(frame[y0 : y0 + max(1, ch // 2), x0 : x0 + max(1, cw // 2)].mean()))
    bit_means, gray = means[: _INDEX_BITS + 1], means[_INDEX_BITS + 1]
    if any(abs(m - 128.0) <= _BIT_MARGIN for m in bit_means):
        raise ValueError("not an index pattern: a bit cell is neither black nor white")
    if not 32.0 <= gray <= 224.0:
        raise ValueError(f"not an index pattern: gray cell has level {gray:.0f}")
    bits = [int(m >= 128.0) for m in bit_means]
    if sum(bits) % 2:
        raise ValueError("not an index pattern: parity check failed")
    return sum(b << k for k, b in enumerate(bits[:_INDEX_BITS]))


# --------------------------------------------------------------------------------------------
# Broken inputs
# --------------------------------------------------------------------------------------------


def write_corrupt_files(out_dir: str | Path) -> dict[str, Path]:
    """Write broken "video" files for manifest/validation tests.

    Files (all in ``out_dir``, created if missing):

    * ``empty.mp4`` -- zero bytes;
    * ``text.avi`` -- plain text with a video extension;
    * ``truncated.mp4`` -- the first ~30% of a valid H.264 MP4 (the index atom is lost);
    * ``garbage.mp4`` -- 4 KiB of (deterministic) random bytes.

    Returns:
        Mapping from file name to path.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        name: out_dir / name for name in ("empty.mp4", "text.avi", "truncated.mp4", "garbage.mp4")
    }
    files["empty.mp4"].write_bytes(b"")
    files["text.avi"].write_text("This is not a video file.\nJust some text.\n" * 8)

    full = out_dir / ".full_for_truncation.mp4"
    frames = render_video(16, 64, 96, "translate_right", np.random.default_rng(0))
    write_video(full, frames, fps=25.0, codec="h264")
    data = full.read_bytes()
    full.unlink()
    files["truncated.mp4"].write_bytes(data[: max(1, int(len(data) * 0.3))])

    files["garbage.mp4"].write_bytes(np.random.default_rng(1234).bytes(4096))
    return files
