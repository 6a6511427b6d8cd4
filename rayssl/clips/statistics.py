"""Spatio-temporal statistics labels (thesis ch. 2) and the curriculum score (thesis 3.2).

A clip of ``T`` frames gets 27 integer labels, all 0-based: 14 motion labels computed from
its ``T - 1`` optical-flow frames and 13 appearance labels computed from its pixels. They
answer: where is the largest motion and which way do its motion boundaries point; in which
flow frame is the motion largest; where is the colour most diverse / most stable over time,
and what are the dominant colours there and in the whole clip.

Partition patterns (:func:`pattern_masks`, :func:`region_maps`); every pixel belongs to
exactly one region of each pattern, ``y`` = row, ``x`` = column, pixel centres at ``+0.5``:

* ``grid`` (16): 4x4 blocks, row-major, index ``4 * floor(4y/H) + floor(4x/W)`` (28x28 blocks
  at 112x112; block 0 is top-left, block 3 top-right).
* ``rings`` (4): concentric square rings, 0 = the centre square ``[3/8, 5/8)`` of each side,
  1 = ``[1/4, 3/4)`` minus the centre, 2 = ``[1/8, 7/8)`` minus the previous, 3 = the rest
  (edges at ``k * H // 8``: exactly ``[42:70]``, ``[28:84]``, ``[14:98]`` at 112x112).
* ``triangles`` (8): the frame cut by both diagonals and both mid-lines, numbered as the
  reference code: 0 = top-left quadrant, triangle on the left edge; 1 = top-left, top edge;
  2 = top-right, top edge; 3 = top-right, right edge; 4 = bottom-left, left edge;
  5 = bottom-left, bottom edge; 6 = bottom-right, bottom edge; 7 = bottom-right, right edge.
  The reference puts a pixel on a diagonal into both triangles of its quadrant; here it goes
  to the triangle on the left/right edge, which keeps the partition symmetric under both
  flips (horizontal flip maps 0<->3, 1<->2, 4<->7, 5<->6) at the price of unequal areas
  (1596 and 1540 pixels at 112x112), which the location rule's mean absorbs.

Motion (:func:`motion_boundaries`, :func:`motion_labels`). Motion boundaries are the Prewitt
x/y derivatives of ``u`` and of ``v`` in every flow frame (cv2.filter2D, a correlation: the
x kernel rows are ``[-1, 0, 1]``, so ``d/dx`` is positive where the value grows to the right;
border pixels replicated), summed over the clip's flow frames (eq. 2.2) into ``M_u`` and
``M_v``, then turned into magnitude and angle. Angles are cv2.cartToPolar's (about 0.3 degree
accurate, exact on the axes): ``atan2(dy, dx)`` in degrees in ``[0, 360)`` in image
coordinates, 0 = +x (right), 90 = +y (down): they turn CLOCKWISE on the screen (the thesis
numbers its eight pieces counter-clockwise). The reference
code filters with ``scipy.ndimage.convolve``, which flips the kernels, so its boundaries are
the NEGATED derivatives and its angles are ours + 180 degrees: its 1-based direction label is
``(ours + 4) % 8 + 1``. We follow the thesis's eq. 2.1 (true derivatives).

* location: the region with the largest MEAN magnitude (thesis: "average magnitude"). The
  reference sums the magnitude in grid blocks and triangles, which ranks the same because
  its regions there have equal areas (its triangles count the diagonal pixels in both
  triangles of a quadrant), and uses the mean for the rings.
* direction: eight 45-degree bins, bin ``k`` centred on ``45 k`` degrees (same clockwise
  convention; 0 = right, 2 = down, 4 = left, 6 = up). Every pixel of the chosen region votes
  with its magnitude, split linearly between the two nearest bin centres (HOG-style, as the
  reference ``cell_gradient``); the label is the heaviest bin. The direction is that of the
  boundary gradient, not of the motion: at the edge of an object moving with ``u < 0`` over a
  still background, ``grad u`` points out of the object; with ``u > 0`` it points in.
* frame: the index ``t`` in ``0..T-2`` of the flow frame whose boundary magnitude sum
  ``sum |m_u^t|`` (resp. ``|m_v^t|``) is the largest. The reference loops over 15 of its 16
  flow frames; here every flow frame of the clip counts.

Appearance (:func:`appearance_labels`). Per region and channel, a 256-bin histogram per frame;
IoU = sum over bins of the minimum over frames / sum over bins of the maximum over frames,
averaged over R, G, B (eq. 2.3). Diverse = the region with the smallest IoU, stable = the
largest. Colours are the eight octants of the RGB cube (each channel split at 128), numbered
as the reference code: ``4 * (b < 128) + 2 * (r >= 128) + (g >= 128)``, i.e. 0 blue, 1 cyan,
2 magenta, 3 white, 4 black, 5 green, 6 red, 7 yellow (:data:`OCTANT_NAMES`,
:data:`OCTANT_RGB`). The dominant colour of a region is the octant holding most of its pixels
over all frames (thesis). The reference instead takes the single most frequent exact RGB
value and reports its octant.

Horizontal flips: the labels of a flipped clip (flow recomputed, or mirrored with ``u``
negated) follow from the unflipped ones: grid block ``4r + c`` -> ``4r + 3 - c`` (when the
width is a multiple of 4), rings unchanged, triangles 0<->3, 1<->2, 4<->7, 5<->6, u-direction
``k`` -> ``(8 - k) % 8``, v-direction ``k`` -> ``(4 - k) % 8``, frames and colours unchanged
(up to ties, and to cv2's angle rounding at bin boundaries).

Ties and empty motion: every argmax/argmin takes the lowest index. A clip without motion
(all boundaries zero) gets location 0, direction 0 and frame 0 for every pattern; a clip whose
frames are all identical gets diverse = stable = region 0.

The reference regresses 1-based labels (and uses 0 for "no motion" in the grid); these are
0-based class indices, ``label_classes(clip_len)`` gives the number of classes of each.

Curriculum (:func:`difficulty`): eq. 3.1, ``f = max(sum B_u / sum M_u, sum B_v / sum M_v)``
where ``B`` is the largest-motion grid block (the location label's block) and the sums are of
boundary magnitude: the share of the clip's motion boundaries inside that block, between
1/16 for motion spread evenly and 1 for motion in one block. Large ``f`` = easy.

Everything is vectorised numpy/OpenCV (one cv2.calcHist per frame and channel over the
patterns' common refinement, 48 cells at 112x112): the 27 labels and ``f`` of a 16x112x112
clip take 6-8 ms on one core, flow excluded (``benchmarks/flow_agreement.py`` times them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

__all__ = [
    "APPEARANCE_LABEL_NAMES",
    "LABEL_NAMES",
    "MOTION_LABEL_NAMES",
    "NUM_COLOURS",
    "NUM_DIRECTIONS",
    "NUM_LABELS",
    "OCTANT_NAMES",
    "OCTANT_RGB",
    "PATTERNS",
    "PATTERN_SIZES",
    "MotionBoundaries",
    "appearance_labels",
    "colour_octants",
    "difficulty",
    "label_classes",
    "motion_boundaries",
    "motion_labels",
    "pattern_masks",
    "region_maps",
    "statistics_labels",
]

PATTERNS = ("grid", "rings", "triangles")
PATTERN_SIZES = (16, 4, 8)
NUM_DIRECTIONS = 8
NUM_COLOURS = 8
_BIN_DEGREES = 360.0 / NUM_DIRECTIONS

OCTANT_NAMES = ("blue", "cyan", "magenta", "white", "black", "green", "red", "yellow")
#: (8, 3) uint8: the RGB corner of the cube each colour label stands for.
OCTANT_RGB = np.array(
    [
        [0, 0, 255],
        [0, 255, 255],
        [255, 0, 255],
        [255, 255, 255],
        [0, 0, 0],
        [0, 255, 0],
        [255, 0, 0],
        [255, 255, 0],
    ],
    dtype=np.uint8,
)
OCTANT_RGB.setflags(write=False)

MOTION_LABEL_NAMES = tuple(
    f"motion_{p}_{c}_{k}" for p in PATTERNS for c in ("u", "v") for k in ("location", "direction")
) + ("motion_u_frame", "motion_v_frame")
APPEARANCE_LABEL_NAMES = tuple(
    f"appearance_{p}_{k}"
    for p in PATTERNS
    for k in ("diverse_location", "diverse_colour", "stable_location", "stable_colour")
) + ("appearance_dominant_colour",)
LABEL_NAMES = MOTION_LABEL_NAMES + APPEARANCE_LABEL_NAMES
NUM_MOTION_LABELS = len(MOTION_LABEL_NAMES)  # 14
NUM_APPEARANCE_LABELS = len(APPEARANCE_LABEL_NAMES)  # 13
NUM_LABELS = len(LABEL_NAMES)  # 27

# Prewitt kernels for cv2.filter2D (correlation): d/dx and d/dy, y pointing down.
_PREWITT_X = np.array([[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]], dtype=np.float32)
_PREWITT_Y = np.ascontiguousarray(_PREWITT_X.T)
_MIN_SIZE = 8


def label_classes(clip_len: int) -> np.ndarray:
    """Number of classes of each of the 27 labels for clips of ``clip_len`` frames.

    Returns:
        ``(27,)`` int64, in :data:`LABEL_NAMES` order.
    """
    if isinstance(clip_len, bool) or int(clip_len) != clip_len or clip_len < 2:
        raise ValueError(f"clip_len must be an integer >= 2, got {clip_len!r}")
    motion = [c for n in PATTERN_SIZES for c in (n, NUM_DIRECTIONS, n, NUM_DIRECTIONS)]
    appearance = [c for n in PATTERN_SIZES for c in (n, NUM_COLOURS, n, NUM_COLOURS)]
    frames = [int(clip_len) - 1] * 2
    return np.array(motion + frames + appearance + [NUM_COLOURS], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# partition patterns
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Everything about one frame size that the labels need, computed once."""

    maps: np.ndarray  # (3, H, W) int64 region index of every pixel, per pattern
    counts: tuple[np.ndarray, ...]  # per pattern (R,) float64 pixels per region
    num_cells: int  # C: cells of the common refinement of the three patterns
    cell_map: np.ndarray  # (H, W) intp cell of every pixel
    cell_map_u8: np.ndarray  # the same as uint8 (for cv2.calcHist)
    cell_regions: tuple[np.ndarray, ...]  # per pattern (C,) intp region of every cell


def _check_size(height: int, width: int) -> tuple[int, int]:
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or int(v) != v or v < _MIN_SIZE:
            raise ValueError(f"{name} must be an integer >= {_MIN_SIZE}, got {v!r}")
    return int(height), int(width)


def _build_maps(height: int, width: int) -> np.ndarray:
    y = np.arange(height, dtype=np.int64)[:, None]
    x = np.arange(width, dtype=np.int64)[None, :]
    grid = (4 * y // height) * 4 + 4 * x // width

    ring = np.full((height, width), 3, dtype=np.int64)
    for k in (1, 2, 3):  # squares [kH/8, H - kH/8) x [kW/8, W - kW/8), nested inwards
        a, b = k * height // 8, k * width // 8
        inside = (y >= a) & (y < height - a) & (x >= b) & (x < width - b)
        ring[inside] = 3 - k

    # Exact integer tests on pixel centres (y + 0.5, x + 0.5): main diagonal y/H = x/W,
    # anti-diagonal y/H + x/W = 1; pixels on a diagonal go to the left/right-edge triangle.
    top = 2 * y + 1 < height
    left = 2 * x + 1 < width
    below_main = (2 * y + 1) * width >= (2 * x + 1) * height  # on or below the main diagonal
    anti = (2 * y + 1) * width + (2 * x + 1) * height  # compare with 2HW
    hw2 = 2 * height * width
    tri = np.select(
        [top & left, top & ~left, ~top & left],
        [
            np.where(below_main, 0, 1),
            np.where(anti < hw2, 2, 3),
            np.where(anti <= hw2, 4, 5),
        ],
        np.where((2 * y + 1) * width > (2 * x + 1) * height, 6, 7),
    )
    return np.stack([grid, ring, tri]).astype(np.int64)


@functools.lru_cache(maxsize=32)
def _layout(height: int, width: int) -> _Layout:
    maps = _build_maps(height, width)
    counts = []
    for p, n in enumerate(PATTERN_SIZES):
        c = np.bincount(maps[p].ravel(), minlength=n).astype(np.float64)
        if c.shape != (n,) or not (c > 0).all():
            raise ValueError(f"frame {height}x{width} is too small for the {PATTERNS[p]} pattern")
        counts.append(c)
    # Cells = the pattern's common refinement (48 at 112x112): histograms are computed per
    # cell once and summed into each pattern's regions.
    combined = (maps[0] * 4 + maps[1]) * 8 + maps[2]
    uniq, inverse = np.unique(combined.ravel(), return_inverse=True)
    if len(uniq) > 256:  # never seen (at most 74 for sizes up to 259); cv2 needs uint8 labels
        raise ValueError(f"frame {height}x{width} has an unsupported aspect ratio")
    cell_map = inverse.reshape(height, width).astype(np.intp)
    cell_regions = []
    for p in range(3):
        regions = np.zeros(len(uniq), np.intp)
        regions[inverse] = maps[p].ravel()
        cell_regions.append(regions)
    cell_map_u8 = cell_map.astype(np.uint8)
    for arr in (maps, cell_map, cell_map_u8, *counts, *cell_regions):
        arr.setflags(write=False)
    return _Layout(maps, tuple(counts), len(uniq), cell_map, cell_map_u8, tuple(cell_regions))


def region_maps(height: int, width: int) -> np.ndarray:
    """Region index of every pixel for the three patterns (see the module docstring).

    Returns:
        ``(3, height, width)`` int64, read-only (cached): ``[0]`` grid in 0..15, ``[1]`` rings
        in 0..3, ``[2]`` triangles in 0..7.
    """
    return _layout(*_check_size(height, width)).maps


@functools.lru_cache(maxsize=32)
def _masks(height: int, width: int) -> tuple[np.ndarray, ...]:
    maps = _layout(height, width).maps
    out = []
    for p, n in enumerate(PATTERN_SIZES):
        m = maps[p][None] == np.arange(n)[:, None, None]
        m.setflags(write=False)
        out.append(m)
    return tuple(out)


def pattern_masks(height: int, width: int) -> list[np.ndarray]:
    """The three partition patterns as boolean masks (module docstring for the numbering).

    Returns:
        ``[grid (16, H, W), rings (4, H, W), triangles (8, H, W)]`` bool, read-only (cached
        per size); each pixel is True in exactly one region of each pattern.

    Raises:
        ValueError: for frames smaller than 8x8.
    """
    return list(_masks(*_check_size(height, width)))


# --------------------------------------------------------------------------------------------
# motion
# --------------------------------------------------------------------------------------------


class MotionBoundaries(NamedTuple):
    """Summed motion boundaries of a clip (eq. 2.2) and per-flow-frame boundary sums.

    Attributes:
        mag_u, mag_v: ``(H, W)`` float32 magnitude of ``M_u``, ``M_v``.
        ang_u, ang_v: ``(H, W)`` float32 angle in degrees in ``[0, 360)``, clockwise on screen
            from +x (module docstring); 0 where the magnitude is 0.
        frame_mag_u, frame_mag_v: ``(T - 1,)`` float64, ``sum |m_u^t|`` / ``sum |m_v^t|`` over
            the pixels of each flow frame ``t``.
    """

    mag_u: np.ndarray
    ang_u: np.ndarray
    mag_v: np.ndarray
    ang_v: np.ndarray
    frame_mag_u: np.ndarray
    frame_mag_v: np.ndarray


def _check_flow(flow: np.ndarray) -> np.ndarray:
    if not isinstance(flow, np.ndarray) or flow.ndim != 4 or flow.shape[-1] != 2:
        shape = getattr(flow, "shape", None)
        raise ValueError(f"flow must be a (T-1, H, W, 2) array, got shape {shape}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise ValueError(f"flow must be floating point, got {flow.dtype}")
    if flow.shape[0] < 1:
        raise ValueError("flow has no frames")
    _check_size(flow.shape[1], flow.shape[2])
    return np.ascontiguousarray(flow, dtype=np.float32)


def _polar(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cv2.cartToPolar in degrees (angle accuracy ~0.3 degrees, exact on the axes)."""
    mag, ang = cv2.cartToPolar(
        np.ascontiguousarray(dx), np.ascontiguousarray(dy), angleInDegrees=True
    )
    ang[ang >= 360.0] = 0.0
    return mag, ang


def motion_boundaries(flow: np.ndarray) -> MotionBoundaries:
    """Motion boundaries of a clip's flow (eqs. 2.1-2.2).

    Args:
        flow: ``(T - 1, H, W, 2)`` float flow, ``[..., 0] = u``, ``[..., 1] = v`` (pixels),
            as :func:`rayssl.clips.flow.compute_flow` returns; ``H, W >= 8``.

    Returns:
        :class:`MotionBoundaries`.

    Raises:
        ValueError: bad shape or dtype, or non-finite flow.
    """
    flow = _check_flow(flow)
    n, h, w, _ = flow.shape
    dx = np.empty_like(flow)
    dy = np.empty_like(flow)
    for t in range(n):  # 2-channel images: u and v filtered together
        cv2.filter2D(flow[t], cv2.CV_32F, _PREWITT_X, dst=dx[t], borderType=cv2.BORDER_REPLICATE)
        cv2.filter2D(flow[t], cv2.CV_32F, _PREWITT_Y, dst=dy[t], borderType=cv2.BORDER_REPLICATE)
    per_pixel = cv2.magnitude(dx.reshape(n * h, w * 2), dy.reshape(n * h, w * 2))
    per_pixel = per_pixel.reshape(n, h, w, 2)
    frame_mag = np.array([cv2.sumElems(per_pixel[i])[:2] for i in range(n)])  # (n, 2) float64
    if not np.isfinite(frame_mag).all():
        raise ValueError("flow has non-finite values")
    sum_dx = dx.sum(axis=0)  # (H, W, 2): x-components of M_u, M_v
    sum_dy = dy.sum(axis=0)
    mag_u, ang_u = _polar(sum_dx[..., 0], sum_dy[..., 0])
    mag_v, ang_v = _polar(sum_dx[..., 1], sum_dy[..., 1])
    return MotionBoundaries(
        mag_u, ang_u, mag_v, ang_v, frame_mag[:, 0].copy(), frame_mag[:, 1].copy()
    )


def _boundaries(flow: np.ndarray | MotionBoundaries) -> MotionBoundaries:
    return flow if isinstance(flow, MotionBoundaries) else motion_boundaries(flow)


def _location_direction(mag: np.ndarray, ang: np.ndarray, layout: _Layout) -> list[int]:
    """[location, direction] for each pattern of one boundary map (6 ints)."""
    m = mag.ravel().astype(np.float64)
    pos = ang.ravel().astype(np.float64) / _BIN_DEGREES
    lo = np.floor(pos)
    frac = pos - lo
    lo_bin = lo.astype(np.intp) % NUM_DIRECTIONS
    hi_bin = (lo_bin + 1) % NUM_DIRECTIONS
    w_lo, w_hi = m * (1.0 - frac), m * frac
    out = []
    for p, n in enumerate(PATTERN_SIZES):
        regions = layout.maps[p].ravel()
        means = np.bincount(regions, weights=m, minlength=n) / layout.counts[p]
        loc = int(np.argmax(means))
        sel = regions == loc
        hist = np.bincount(lo_bin[sel], weights=w_lo[sel], minlength=NUM_DIRECTIONS)
        hist += np.bincount(hi_bin[sel], weights=w_hi[sel], minlength=NUM_DIRECTIONS)
        out += [loc, int(np.argmax(hist))]
    return out


def motion_labels(flow: np.ndarray | MotionBoundaries) -> np.ndarray:
    """The 14 motion labels (:data:`MOTION_LABEL_NAMES`).

    Args:
        flow: ``(T - 1, H, W, 2)`` float flow, or its :func:`motion_boundaries`.

    Returns:
        ``(14,)`` int64: ``[u_loc, u_dir, v_loc, v_dir]`` for grid, rings, triangles, then
        ``[u_frame, v_frame]`` (module docstring for the conventions).
    """
    b = _boundaries(flow)
    layout = _layout(*_check_size(*b.mag_u.shape))
    u = _location_direction(b.mag_u, b.ang_u, layout)
    v = _location_direction(b.mag_v, b.ang_v, layout)
    labels = []
    for p in range(3):
        labels += u[2 * p : 2 * p + 2] + v[2 * p : 2 * p + 2]
    labels += [int(np.argmax(b.frame_mag_u)), int(np.argmax(b.frame_mag_v))]
    return np.array(labels, dtype=np.int64)


def difficulty(flow: np.ndarray | MotionBoundaries) -> float:
    """Curriculum score ``f`` of eq. 3.1 (module docstring); large = easy.

    Args:
        flow: ``(T - 1, H, W, 2)`` float flow, or its :func:`motion_boundaries`.

    Returns:
        ``f`` in ``[0, 1]``: the larger over ``u`` and ``v`` of the share of the boundary
        magnitude inside the largest-motion grid block; a component without any boundary
        counts 0, so a clip without motion scores 0.0.
    """
    b = _boundaries(flow)
    layout = _layout(*_check_size(*b.mag_u.shape))
    grid = layout.maps[0].ravel()
    best = 0.0
    for mag in (b.mag_u, b.mag_v):
        sums = np.bincount(grid, weights=mag.ravel().astype(np.float64), minlength=16)
        total = float(sums.sum())
        if total > 0.0:
            block = int(np.argmax(sums / layout.counts[0]))
            best = max(best, float(sums[block]) / total)
    return best


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------


def _check_clip(clip: np.ndarray) -> None:
    if not isinstance(clip, np.ndarray) or clip.ndim != 4 or clip.shape[-1] != 3:
        shape = getattr(clip, "shape", None)
        raise ValueError(f"clip must be a (T, H, W, 3) array, got shape {shape}")
    if clip.dtype != np.uint8:
        raise ValueError(f"clip must be uint8, got {clip.dtype}")
    if clip.shape[0] < 1:
        raise ValueError("clip has no frames")
    _check_size(clip.shape[1], clip.shape[2])


def colour_octants(pixels: np.ndarray) -> np.ndarray:
    """Colour label of every pixel: ``4 * (b < 128) + 2 * (r >= 128) + (g >= 128)``.

    Args:
        pixels: ``(..., 3)`` uint8 RGB.

    Returns:
        ``(...)`` uint8 in 0..7 (:data:`OCTANT_NAMES`).
    """
    bits = pixels >> 7
    return ((bits[..., 2] ^ 1) << 2) | (bits[..., 0] << 1) | bits[..., 1]


def appearance_labels(clip: np.ndarray) -> np.ndarray:
    """The 13 appearance labels (:data:`APPEARANCE_LABEL_NAMES`).

    Args:
        clip: ``(T, H, W, 3)`` uint8 RGB, ``H, W >= 8``.

    Returns:
        ``(13,)`` int64: ``[diverse_loc, diverse_colour, stable_loc, stable_colour]`` for grid,
        rings, triangles, then the dominant colour of the whole clip.
    """
    _check_clip(clip)
    t, h, w, _ = clip.shape
    layout = _layout(h, w)
    c = layout.num_cells
    # Per cell, frame and channel a 256-bin histogram (cv2.calcHist of the pair (cell label,
    # channel value)); a region's histograms are the sums of its cells'.
    per_frame = np.empty((c, t, 3, 256), np.float32)
    ranges = [0, c, 0, 256]
    for i in range(t):
        frame = clip[i]
        for ch in range(3):
            per_frame[:, i, ch] = cv2.calcHist(
                [layout.cell_map_u8, frame], [0, 1 + ch], None, [c, 256], ranges
            )
    cell_hist = per_frame.reshape(c, t * 768)
    cell_colours = np.bincount(
        (layout.cell_map * NUM_COLOURS + colour_octants(clip)).ravel(), minlength=c * NUM_COLOURS
    ).reshape(c, NUM_COLOURS)

    labels = []
    for regions, n in zip(layout.cell_regions, PATTERN_SIZES, strict=True):
        hist = np.zeros((n, t * 768), np.float32)
        for cell, region in enumerate(regions):
            hist[region] += cell_hist[cell]
        hist = hist.reshape(n, t, 3, 256)
        inter = hist.min(axis=1).sum(axis=-1)  # (n, 3): counts, exact in float32
        union = hist.max(axis=1).sum(axis=-1)
        iou = (inter / union).mean(axis=-1)
        colours = np.zeros((n, NUM_COLOURS), np.int64)
        np.add.at(colours, regions, cell_colours)
        diverse, stable = int(np.argmin(iou)), int(np.argmax(iou))
        labels += [
            diverse,
            int(np.argmax(colours[diverse])),
            stable,
            int(np.argmax(colours[stable])),
        ]
    labels.append(int(np.argmax(cell_colours.sum(axis=0))))
    return np.array(labels, dtype=np.int64)


def statistics_labels(clip: np.ndarray, flow: np.ndarray | MotionBoundaries) -> np.ndarray:
    """All 27 labels of a clip (:data:`LABEL_NAMES`): 14 motion then 13 appearance.

    Args:
        clip: ``(T, H, W, 3)`` uint8 RGB.
        flow: its ``(T - 1, H, W, 2)`` float flow, or the flow's :func:`motion_boundaries`
            (compute those once to get :func:`difficulty` too).

    Returns:
        ``(27,)`` int64, each label in ``0 .. label_classes(T)[i] - 1``.
    """
    _check_clip(clip)
    b = _boundaries(flow)
    t, h, w, _ = clip.shape
    if b.mag_u.shape != (h, w) or len(b.frame_mag_u) != t - 1:
        raise ValueError(
            f"flow of {len(b.frame_mag_u)} frames of {b.mag_u.shape} does not match a clip of "
            f"{t} frames of {(h, w)} (expected {t - 1} flow frames)"
        )
    return np.concatenate([motion_labels(b), appearance_labels(clip)])
