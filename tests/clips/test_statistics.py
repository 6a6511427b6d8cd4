"""Tests for rayssl.clips.statistics: labels of hand-built clips whose answers are known by
construction, the thesis's Fig. 2.2 worked example, and a slow direct implementation of
the definitions to compare the vectorised one against."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from rayssl.clips.flow import compute_flow
from rayssl.clips.statistics import (
    APPEARANCE_LABEL_NAMES,
    LABEL_NAMES,
    MOTION_LABEL_NAMES,
    OCTANT_NAMES,
    OCTANT_RGB,
    MotionBoundaries,
    appearance_labels,
    colour_octants,
    difficulty,
    label_classes,
    motion_boundaries,
    motion_labels,
    pattern_masks,
    region_maps,
    statistics_labels,
)

S = 112
yy, xx = np.mgrid[0:S, 0:S]
M = {name: i for i, name in enumerate(MOTION_LABEL_NAMES)}
A = {name: i for i, name in enumerate(APPEARANCE_LABEL_NAMES)}
GREEN, BLUE, WHITE = 5, 0, 3  # colour labels (OCTANT_NAMES)


def _triangle(top: int, left: int, size: int = 22) -> np.ndarray:
    """(S, S) bool: the upper-right half of a size x size box (vertices top-left, top-right,
    bottom-right, diagonal included); its hypotenuse faces lower-left."""
    inside = (yy >= top) & (yy < top + size) & (xx >= left) & (xx < left + size)
    return inside & (xx - left >= yy - top)


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    """(S, S) bool: pixels whose centres lie within r of (cy, cx)."""
    return (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 < r * r


def _texture(h: int, w: int, seed: int, lo: float, hi: float) -> np.ndarray:
    """(h, w, 3) float32 smooth random colour texture with values in [lo, hi]."""
    small = np.random.default_rng(seed).random((h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    t = cv2.resize(small, (w + 8, h + 8), interpolation=cv2.INTER_CUBIC)[:h, :w]
    return np.clip(lo + (hi - lo) * t, 0, 255).astype(np.float32)


def _moving_triangle(num_frames: int, top: int, left: int, step: tuple[int, int], size: int = 20):
    """A textured triangle moving by ``step = (dx, dy)`` px per frame over a static textured
    background; returns the clip (T, S, S, 3) uint8 and its exact flow (T-1, S, S, 2): the
    object's displacement at the pixels it covers in the earlier frame, zero elsewhere."""
    background = _texture(S, S, 1, 40, 110)
    foreground = _texture(S + 64, S + 64, 2, 150, 255)
    clip = np.empty((num_frames, S, S, 3), np.uint8)
    flow = np.zeros((num_frames - 1, S, S, 2), np.float32)
    for t in range(num_frames):
        mask = _triangle(top + step[1] * t, left + step[0] * t, size)
        moved = np.roll(foreground, (step[1] * t, step[0] * t), axis=(0, 1))[:S, :S]
        frame = background.copy()
        frame[mask] = moved[mask]
        clip[t] = frame.astype(np.uint8)
        if t < num_frames - 1:
            flow[t][mask] = step
    return clip, flow


def _mirror_flow(flow: np.ndarray) -> np.ndarray:
    """The flow of the horizontally flipped clip: mirrored, with u negated."""
    out = flow[:, :, ::-1].copy()
    out[..., 0] *= -1
    return out


# --------------------------------------------------------------------------------------------
# patterns and label bookkeeping
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(112, 112), (128, 171), (40, 48), (9, 13), (224, 224)])
def test_every_pattern_partitions_the_frame(size):
    masks = pattern_masks(*size)
    assert [m.shape for m in masks] == [(16, *size), (4, *size), (8, *size)]
    maps = region_maps(*size)
    for p, m in enumerate(masks):
        assert m.dtype == bool
        assert (m.sum(axis=0) == 1).all()  # every pixel in exactly one region
        assert m.any(axis=(1, 2)).all()  # no region is empty
        assert (np.argmax(m, axis=0) == maps[p]).all()


def test_patterns_at_112_match_the_reference_geometry():
    grid, rings, tri = pattern_masks(S, S)
    for k in range(16):
        r, c = divmod(k, 4)
        expected = np.zeros((S, S), bool)
        expected[28 * r : 28 * r + 28, 28 * c : 28 * c + 28] = True
        assert (grid[k] == expected).all()
    square = np.zeros((4, S, S), bool)
    for i, (a, b) in enumerate([(42, 70), (28, 84), (14, 98), (0, 112)]):
        square[i, a:b, a:b] = True
    assert (rings[0] == square[0]).all()
    for i in (1, 2, 3):
        assert (rings[i] == (square[i] & ~square[i - 1])).all()
    # Triangle numbering of the reference code: (row, col) of a pixel well inside each one.
    inside = [(20, 2), (2, 20), (2, 90), (20, 109), (90, 2), (109, 20), (109, 90), (90, 109)]
    for k, (r, c) in enumerate(inside):
        assert tri[k, r, c], k
    # The diagonals go to the triangles on the left/right edges.
    assert tri[0, 10, 10] and tri[3, 10, 101] and tri[4, 101, 10] and tri[7, 101, 101]
    assert tri.sum(axis=(1, 2)).tolist() == [1596, 1540, 1540, 1596, 1596, 1540, 1540, 1596]
    # Symmetric under both flips.
    assert (tri[[3, 2, 1, 0, 7, 6, 5, 4]] == tri[:, :, ::-1]).all()
    assert (tri[[4, 5, 6, 7, 0, 1, 2, 3]] == tri[:, ::-1, :]).all()


def test_masks_are_cached_and_read_only():
    a, b = pattern_masks(S, S), pattern_masks(S, S)
    assert all(x is y for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError):
        a[0][0, 0, 0] = False
    with pytest.raises(ValueError, match="height"):
        pattern_masks(4, 112)


def test_label_names_and_classes():
    assert len(LABEL_NAMES) == 27 and len(set(LABEL_NAMES)) == 27
    assert LABEL_NAMES[:14] == MOTION_LABEL_NAMES and LABEL_NAMES[14:] == APPEARANCE_LABEL_NAMES
    assert MOTION_LABEL_NAMES[0] == "motion_grid_u_location"
    assert MOTION_LABEL_NAMES[-2:] == ("motion_u_frame", "motion_v_frame")
    assert APPEARANCE_LABEL_NAMES[-1] == "appearance_dominant_colour"
    classes = label_classes(16)
    assert classes.dtype == np.int64
    assert classes.tolist() == (
        [16, 8, 16, 8, 4, 8, 4, 8, 8, 8, 8, 8, 15, 15] + [16, 8, 16, 8, 4, 8, 4, 8, 8, 8, 8, 8, 8]
    )
    assert label_classes(2)[12:14].tolist() == [1, 1]
    with pytest.raises(ValueError):
        label_classes(1)


def test_colour_octants_follow_the_reference_numbering():
    corners = colour_octants(OCTANT_RGB)
    assert corners.tolist() == list(range(8))
    assert colour_octants(np.array([[127, 128, 128]], np.uint8)).tolist() == [1]  # cyan
    assert OCTANT_NAMES[GREEN] == "green" and OCTANT_NAMES[BLUE] == "blue"


# --------------------------------------------------------------------------------------------
# motion
# --------------------------------------------------------------------------------------------


def test_no_motion_gives_zero_labels_and_zero_difficulty():
    flow = np.zeros((15, S, S, 2), np.float32)
    assert motion_labels(flow).tolist() == [0] * 14
    assert difficulty(flow) == 0.0
    b = motion_boundaries(flow)
    assert b.frame_mag_u.shape == (15,) and not b.frame_mag_u.any() and not b.mag_v.any()


def test_boundary_angles_turn_clockwise_on_screen():
    # u grows to the right -> grad u points right (0 degrees); v grows downwards -> 90.
    flow = np.zeros((1, S, S, 2), np.float32)
    flow[0, :, :, 0] = xx * 0.1
    flow[0, :, :, 1] = yy * 0.1
    b = motion_boundaries(flow)
    inner = (slice(1, -1), slice(1, -1))  # the border is replicated: half the difference
    turn_u = (b.ang_u[inner] + 180) % 360 - 180  # 359.9998 (float noise) is 0 too
    assert np.allclose(turn_u, 0.0, atol=0.01) and np.allclose(b.ang_v[inner], 90.0, atol=0.01)
    assert np.allclose(b.mag_u[inner], 0.6) and np.allclose(b.mag_v[inner], 0.6)  # 3 rows x 0.2
    assert ((b.ang_u >= 0) & (b.ang_u < 360)).all()


@pytest.mark.parametrize("source", ["exact", "dis"])
def test_object_moving_right_in_one_block(source):
    # The triangle (and the 1-px reach of the Prewitt kernels) stays inside grid block 5 (rows
    # and columns 28-55) in every flow frame: columns 31-54, rows 32-51. u > 0 inside and
    # 0 outside, so grad u points INTO the object; the longest edge is the hypotenuse facing
    # lower-left, whose inward normal points upper-right: 315 degrees -> direction bin 7.
    clip, flow = _moving_triangle(4, top=32, left=31, step=(2, 0))
    if source == "dis":
        flow = compute_flow(clip, "dis")
    labels = motion_labels(flow)
    assert labels[M["motion_grid_u_location"]] == 5
    assert labels[M["motion_grid_u_direction"]] == 7
    if source == "exact":
        assert labels[M["motion_grid_v_location"]] == 0  # no vertical motion at all
        assert labels[M["motion_grid_v_direction"]] == 0


@pytest.mark.parametrize("source", ["exact", "dis"])
def test_flipped_clip_mirrors_location_and_direction(source):
    # Mirroring maps block (r, c) to (r, 3 - c) and, since u is negated, an angle theta of
    # grad u to 360 - theta: bin 7 -> bin 1. (Mirroring without negating u, as the reference
    # code does, would give 180 - theta: bin 3.)
    clip, flow = _moving_triangle(4, top=32, left=31, step=(2, 0))
    flipped = np.ascontiguousarray(clip[:, :, ::-1])
    flow = compute_flow(flipped, "dis") if source == "dis" else _mirror_flow(flow)
    labels = motion_labels(flow)
    assert labels[M["motion_grid_u_location"]] == 6
    assert labels[M["motion_grid_u_direction"]] == 1


@pytest.mark.parametrize("source", ["exact", "dis"])
def test_object_moving_up(source):
    # v < 0 inside: grad v points OUT of the object; the hypotenuse's outward normal points
    # lower-left: 135 degrees -> bin 3. The triangle stays inside block 10 (rows and columns
    # 56-83) in every flow frame: rows 59-82, columns 60-79.
    clip, flow = _moving_triangle(4, top=63, left=60, step=(0, -2))
    if source == "dis":
        flow = compute_flow(clip, "dis")
    labels = motion_labels(flow)
    assert labels[M["motion_grid_v_location"]] == 10
    assert labels[M["motion_grid_v_direction"]] == 3
    if source == "exact":
        assert labels[M["motion_grid_u_location"]] == 0


def test_rings_use_the_mean_magnitude():
    # A small moving square inside ring 0 and a long moving bar inside ring 3: the bar's
    # boundary is longer (larger SUM), but ring 3 is 7x larger than ring 0 (smaller MEAN).
    flow = np.zeros((3, S, S, 2), np.float32)
    flow[:, 46:66, 46:66, 0] = 2.0
    flow[:, 3:11, 16:96, 0] = 2.0
    b = motion_boundaries(flow)
    rings = region_maps(S, S)[1]
    sums = np.bincount(rings.ravel(), weights=b.mag_u.ravel(), minlength=4)
    assert sums[3] > sums[0]
    assert motion_labels(flow)[M["motion_rings_u_location"]] == 0


def test_triangle_location():
    # An object inside triangle 6 (bottom-right quadrant, bottom edge).
    flow = np.zeros((2, S, S, 2), np.float32)
    flow[:, 96:106, 62:80] = (1.0, 1.0)
    labels = motion_labels(flow)
    assert labels[M["motion_triangles_u_location"]] == 6
    assert labels[M["motion_triangles_v_location"]] == 6


def test_largest_motion_frame():
    rng = np.random.default_rng(0)
    flow = np.zeros((15, S, S, 2), np.float32)
    flow[2, 30:60, 30:60] = (1.0, -1.0)  # slow
    flow[9, 50:80, 20:50] = (3.0, 2.0)  # fast: the largest boundaries
    flow[12, 10:30, 70:90] = (0.0, 2.5)  # v only
    flow += rng.normal(0, 1e-3, flow.shape).astype(np.float32)
    labels = motion_labels(flow)
    assert labels[M["motion_u_frame"]] == 9
    assert labels[M["motion_v_frame"]] == 9
    flow[12, 10:30, 70:90, 1] = 5.0
    assert motion_labels(flow)[M["motion_v_frame"]] == 12


def test_difficulty_prefers_one_moving_block():
    one = np.zeros((4, S, S, 2), np.float32)
    one[:, 35:50, 35:50] = (2.0, 1.0)  # boundaries wholly inside block 5
    spread = np.zeros_like(one)
    for r in range(4):
        for c in range(4):
            spread[:, 28 * r + 7 : 28 * r + 22, 28 * c + 7 : 28 * c + 22] = (2.0, 1.0)
    assert difficulty(one) == pytest.approx(1.0)
    assert difficulty(spread) == pytest.approx(1 / 16)
    half = spread.copy()
    half[:, :, 56:] = 0.0  # 8 blocks
    assert difficulty(one) > difficulty(half) > difficulty(spread)
    assert difficulty(motion_boundaries(one)) == difficulty(one)


# --------------------------------------------------------------------------------------------
# appearance
# --------------------------------------------------------------------------------------------


def test_colour_change_in_one_ring():
    # Static everywhere except ring 2, which is red in frames 0-2 and blue in frames 3-7.
    rings = region_maps(S, S)[1]
    clip = np.empty((8, S, S, 3), np.uint8)
    clip[:] = (90, 90, 90)  # black octant
    clip[:, rings == 0] = (20, 220, 30)  # a green, static centre
    clip[:3, rings == 2] = (250, 10, 10)
    clip[3:, rings == 2] = (10, 10, 250)
    labels = appearance_labels(clip)
    assert labels[A["appearance_rings_diverse_location"]] == 2
    assert labels[A["appearance_rings_diverse_colour"]] == BLUE  # 5 frames of 8
    # Rings 0, 1 and 3 never change (IoU 1): the lowest index wins the tie.
    assert labels[A["appearance_rings_stable_location"]] == 0
    assert labels[A["appearance_rings_stable_colour"]] == GREEN


def test_static_uniform_region_is_the_stable_one():
    # Fresh noise in every frame, except block 13 (rows 84-111, cols 28-55), a static yellow;
    # block 13 lies wholly inside triangle 5 (bottom-left quadrant, bottom edge), which is
    # then the most stable triangle.
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (6, S, S, 3), dtype=np.uint8)
    tri = region_maps(S, S)[2]
    clip[:, tri == 5] = (230, 200, 40)
    labels = appearance_labels(clip)
    assert labels[A["appearance_grid_stable_location"]] == 13
    assert labels[A["appearance_grid_stable_colour"]] == 7  # yellow
    assert labels[A["appearance_triangles_stable_location"]] == 5
    assert labels[A["appearance_triangles_stable_colour"]] == 7


def test_global_dominant_colour():
    clip = np.zeros((4, S, S, 3), np.uint8)  # black
    clip[:, :60] = (40, 160, 200)  # cyan: 60 of 112 rows
    assert appearance_labels(clip)[A["appearance_dominant_colour"]] == 1
    clip[:, :50] = (200, 160, 40)  # now 50 rows yellow, 10 cyan, 52 black
    assert appearance_labels(clip)[A["appearance_dominant_colour"]] == 4


def test_identical_frames_tie_at_region_zero():
    clip = np.repeat(np.random.default_rng(1).integers(0, 256, (1, S, S, 3), np.uint8), 5, 0)
    labels = appearance_labels(clip)
    for p in ("grid", "rings", "triangles"):
        assert labels[A[f"appearance_{p}_diverse_location"]] == 0
        assert labels[A[f"appearance_{p}_stable_location"]] == 0


# --------------------------------------------------------------------------------------------
# thesis Fig. 2.2
# --------------------------------------------------------------------------------------------


def _fig22():
    """Three frames, white background, 4x4 blocks numbered 1-16 in the thesis (0-15 here).

    The blue triangle moves from block 4 (index 3) to block 7 (index 6) and on, towards the
    lower left: at t it straddles blocks 3 and 4, at t+1 it is wholly inside block 7, at
    t+2 it has left towards blocks 9/10/13/14; it moves faster from t+1 to t+2. The green
    disc moves from block 11 (index 10; at t it pokes 2 px into block 10) to block 12
    (index 11), where it stays, inscribed (radius 14, 616 of the block's 784 pixels).
    Forward flow puts each pair's motion where the object is in the pair's FIRST frame.
    """
    triangles = [_triangle(2, 80, 20), _triangle(32, 60, 20), _triangle(76, 16, 20)]
    discs = [_disc(70, 68, 14), _disc(70, 98, 14), _disc(70, 98, 14)]
    clip = np.full((3, S, S, 3), 255, np.uint8)
    flow = np.zeros((2, S, S, 2), np.float32)
    for t in range(3):
        clip[t][discs[t]] = (0, 200, 0)
        clip[t][triangles[t]] = (0, 0, 255)
    flow[0][triangles[0]] = (-20, 30)
    flow[0][discs[0]] = (30, 0)
    flow[1][triangles[1]] = (-44, 44)
    return clip, flow


def test_thesis_fig_2_2_worked_example():
    clip, flow = _fig22()
    labels = statistics_labels(clip, flow)
    mot, app = labels[:14], labels[14:]
    # "The largest motion lies in block 7": the triangle is wholly inside block 7 while it
    # makes its faster move (t+1 -> t+2); at t it moves slower and straddles blocks 3/4.
    # For u the disc also moves (+30 px) from block 11, but its u-boundary there is weaker.
    assert mot[M["motion_grid_u_location"]] == 6
    assert mot[M["motion_grid_v_location"]] == 6  # only the triangle moves vertically
    # Direction: the thesis's "lower-left = piece 5" is the motion's direction, with pieces
    # numbered 1-8 counter-clockwise on screen. The algorithm bins the motion boundary's
    # orientation instead, 0-7 clockwise on screen from +x (bin k centred on 45k degrees with
    # y pointing down). With u < 0 inside the triangle, grad u points out of it; the longest
    # edge is the hypotenuse facing lower-left (the leading edge), so the dominant bin is
    # 135 degrees = lower-left on screen = bin 3: the same direction as the thesis's 5. For v
    # (> 0 inside) grad v points into the triangle: upper-right, 315 degrees = bin 7. The
    # reference code (kernels flipped by ndimage.convolve) would give 3 + 4 = 7 and 7 + 4 = 3.
    assert mot[M["motion_grid_u_direction"]] == 3
    assert mot[M["motion_grid_v_direction"]] == 7
    # Per flow frame: for u, pair 0 holds both objects' motion (triangle 20 px, disc 30 px),
    # more than pair 1's triangle alone (44 px); for v, pair 1 (44 px) beats pair 0 (30 px).
    assert mot[M["motion_u_frame"]] == 0
    assert mot[M["motion_v_frame"]] == 1
    # "The largest color diversity lies in block 12 and the dominant color is green": block 12
    # goes from all background to 616 disc pixels (block 11 only to 596, the disc poking
    # into block 10 at t; block 7's triangle is smaller and blue keeps the B channel at 255).
    assert app[A["appearance_grid_diverse_location"]] == 11
    assert app[A["appearance_grid_diverse_colour"]] == GREEN  # 2 x 616 > 3 x 784 - 2 x 616
    assert app[A["appearance_dominant_colour"]] == WHITE


# --------------------------------------------------------------------------------------------
# against a direct (slow) implementation of the definitions
# --------------------------------------------------------------------------------------------


def _direct_motion(flow: np.ndarray, flip_kernels: bool = False) -> list[int]:
    """Eqs. 2.1-2.2 with scipy filters, numpy angles and explicit loops per region."""
    ndimage = pytest.importorskip("scipy.ndimage")
    kx = np.array([[-1, 0, 1]] * 3, np.float64)
    filt = ndimage.convolve if flip_kernels else ndimage.correlate
    labels: dict[str, list[int]] = {"u": [], "v": []}
    frames: list[int] = []
    for comp, name in ((0, "u"), (1, "v")):
        f = flow[..., comp].astype(np.float64)
        dx = np.stack([filt(x, kx, mode="nearest") for x in f])
        dy = np.stack([filt(x, kx.T, mode="nearest") for x in f])
        frames.append(int(np.argmax(np.hypot(dx, dy).sum(axis=(1, 2)))))
        mag = np.hypot(dx.sum(0), dy.sum(0))
        ang = np.degrees(np.arctan2(dy.sum(0), dx.sum(0))) % 360
        for masks in pattern_masks(S, S):
            loc = int(np.argmax([mag[m].mean() for m in masks]))
            m_, a_ = mag[masks[loc]], ang[masks[loc]]
            lo, w = (a_ // 45).astype(int) % 8, (a_ % 45) / 45
            hist = np.zeros(8)
            np.add.at(hist, lo, m_ * (1 - w))
            np.add.at(hist, (lo + 1) % 8, m_ * w)
            labels[name] += [loc, int(np.argmax(hist))]
    out = []
    for p in range(3):
        out += labels["u"][2 * p : 2 * p + 2] + labels["v"][2 * p : 2 * p + 2]
    return out + frames


def _direct_appearance(clip: np.ndarray) -> list[int]:
    """Eq. 2.3 and the octant counts with np.histogram and boolean masks."""
    octants = colour_octants(clip)
    out = []
    for masks in pattern_masks(S, S):
        ious = []
        for m in masks:
            per_channel = []
            for ch in range(3):
                h = np.stack([np.histogram(f[m, ch], 256, (0, 256))[0] for f in clip])
                per_channel.append(h.min(0).sum() / h.max(0).sum())
            ious.append(np.mean(per_channel))
        diverse, stable = int(np.argmin(ious)), int(np.argmax(ious))
        for region in (diverse, stable):
            out += [region, int(np.argmax(np.bincount(octants[:, masks[region]].ravel(), None, 8)))]
    return out + [int(np.argmax(np.bincount(octants.ravel(), None, 8)))]


def _structured_clip(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random coloured rectangles with random motions, and a random smooth-ish flow."""
    rng = np.random.default_rng(seed)
    clip = np.empty((6, S, S, 3), np.uint8)
    clip[:] = rng.integers(0, 256, 3)
    flow = np.zeros((5, S, S, 2), np.float32)
    for _ in range(5):
        h, w = rng.integers(8, 40, 2)
        y, x = rng.integers(0, S - 40, 2)
        dy, dx = rng.integers(-4, 5, 2)
        colour = rng.integers(0, 256, 3)
        for t in range(6):
            yt, xt = np.clip(y + dy * t, 0, S - h), np.clip(x + dx * t, 0, S - w)
            clip[t, yt : yt + h, xt : xt + w] = colour
            if t < 5:
                flow[t, yt : yt + h, xt : xt + w] = (dx, dy)
    clip = np.clip(clip + rng.integers(-3, 4, clip.shape), 0, 255).astype(np.uint8)
    flow += rng.normal(0, 0.05, flow.shape).astype(np.float32)
    return clip, flow


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_match_a_direct_implementation(seed):
    clip, flow = _structured_clip(seed)
    labels = statistics_labels(clip, flow)
    assert labels.dtype == np.int64 and labels.shape == (27,)
    assert ((labels >= 0) & (labels < label_classes(6))).all()
    # Equal here; in general a direction could differ where cv2.cartToPolar's ~0.3 degree
    # angles split a near tie of two bins.
    assert labels[:14].tolist() == _direct_motion(flow)
    assert labels[14:].tolist() == _direct_appearance(clip)


_HFLIP = {  # label maps of a horizontal flip (module docstring)
    "grid": [4 * (k // 4) + 3 - k % 4 for k in range(16)],
    "rings": [0, 1, 2, 3],
    "triangles": [3, 2, 1, 0, 7, 6, 5, 4],
    "u_direction": [(8 - k) % 8 for k in range(8)],
    "v_direction": [(4 - k) % 8 for k in range(8)],
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_horizontal_flip_maps_the_labels(seed):
    clip, flow = _structured_clip(seed)
    labels = statistics_labels(clip, flow)
    flipped = statistics_labels(np.ascontiguousarray(clip[:, :, ::-1]), _mirror_flow(flow))
    expected = labels.copy()
    for i, name in enumerate(LABEL_NAMES):
        for key in ("u_direction", "v_direction", "grid", "rings", "triangles"):
            if key in name and ("location" in name or "direction" in name):
                expected[i] = _HFLIP[key][labels[i]]
                break
    assert flipped.tolist() == expected.tolist()


def test_reference_kernels_shift_directions_by_four_bins():
    # scipy.ndimage.convolve flips the Prewitt kernels (the reference code's boundaries are
    # negated derivatives): the same locations, directions rotated by 180 degrees.
    _, flow = _moving_triangle(4, top=32, left=30, step=(2, 1))
    ours = motion_labels(flow).tolist()
    reference = _direct_motion(flow, flip_kernels=True)
    for i, name in enumerate(MOTION_LABEL_NAMES):
        if "direction" in name and ours[i - 1] == reference[i - 1]:
            assert reference[i] == (ours[i] + 4) % 8, name
        elif "direction" not in name:
            assert reference[i] == ours[i], name


def test_statistics_labels_checks_shapes():
    clip = np.zeros((4, S, S, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 3 flow frames"):
        statistics_labels(clip, np.zeros((4, S, S, 2), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        appearance_labels(clip.astype(np.float32))
    with pytest.raises(ValueError, match="floating"):
        motion_boundaries(np.zeros((3, S, S, 2), np.int32))
    with pytest.raises(ValueError, match="non-finite"):
        motion_boundaries(np.full((3, S, S, 2), np.nan, np.float32))
    b = motion_boundaries(np.zeros((3, S, S, 2), np.float32))
    assert isinstance(b, MotionBoundaries) and b.mag_u.dtype == np.float32
    assert statistics_labels(clip, b).shape == (27,)
