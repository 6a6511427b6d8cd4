"""Dense optical flow between the consecutive frames of a clip, computed on the fly.

The statistics pretext (thesis ch. 2) derives its motion labels from optical flow. The thesis
and the reference code read TV-L1 flow that was computed once per video and stored as JPEG
images (clipped to +-20 px, quantised to 40/255 px). Here flow is computed inside the Ray Data
CPU tasks from the clip exactly as the network sees it (after crop and flip) and never stored.

Conventions: ``flow[t]`` is the flow from frame ``t`` to frame ``t + 1``, given at the pixels of
frame ``t``; ``flow[t, y, x] = (u, v)`` in pixels, ``u > 0`` to the right, ``v > 0`` downwards
(OpenCV's convention): the content at ``(x, y)`` in frame ``t`` is near ``(x + u, y + v)`` in
frame ``t + 1``. Flow is float32 and neither clipped nor quantised.

Horizontal flips: computing flow on the flipped clip gives the flow of the mirrored scene, with
``u`` negated, as it must be. The reference code mirrors precomputed flow images without
negating ``u``, so its motion labels of flipped clips describe motion in the wrong horizontal
direction; computing flow after the augmentation avoids that by construction.

Algorithms (:data:`FLOW_ALGORITHMS`), CPU time on one core per 16-frame 112x112 clip (15 pairs)
and the share of the 14 motion labels equal to TV-L1's on 40 generated / 40 real clips, from
this repository's ``benchmarks/flow_agreement.py`` (chance level 0.14):

* ``"dis"`` -- DIS (Kroeger et al. 2016), ``cv2.DISOpticalFlow`` with the MEDIUM preset
  (finest scale 1, 8x8 patches, stride 3, 25 gradient-descent and 5 variational refinement
  iterations): ~27 ms, agreement 0.35 / 0.42. The FAST and ULTRAFAST presets (finest scale 2:
  a 28x28 flow grid at 112x112) take 7 and 3 ms but agree less (0.25 / 0.36, 0.24 / 0.35);
  finest scale 0 costs 4x for a few points more. The default.
* ``"farneback"`` -- Farneback polynomial expansion, ``cv2.calcOpticalFlowFarneback`` with the
  OpenCV sample's parameters (pyramid scale 0.5, 3 levels, 15x15 window, 3 iterations,
  polynomial neighbourhood 5 with sigma 1.2): ~51 ms, agreement 0.35 / 0.38.
* ``"tvl1"`` -- Dual TV-L1 (Zach et al. 2007), the thesis's algorithm,
  ``cv2.optflow.DualTVL1OpticalFlow`` with OpenCV's default parameters: ~3 s per clip, too
  slow for training on CPUs; the reference the others are measured against. Needs the
  contrib build of OpenCV (``opencv-contrib-python-headless``).

The motion labels are argmaxes over regions with close scores, so they are fragile: even
TV-L1's own flow, quantised to 8 bits as the thesis stored it, changes 35% / 12% of them.

A new flow object is made for every clip: OpenCV's DIS keeps settings derived from the first
image it saw, so a reused object made the flow (and the fragile labels) depend on the clips a
worker had seen before -- a 32x32 clip first changed a later 64x64 clip's flow by up to 0.85 px.
Objects are cheap (~20 us for DIS) next to the flow itself, and none is shared between threads.
As for any OpenCV code, do not run it in a child forked from a process whose OpenCV thread
pool is already running (the child can hang in its first parallel call): start worker
processes with "spawn" (Ray's workers are fresh processes).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

__all__ = [
    "FLOW_ALGORITHMS",
    "FlowError",
    "available_flow_algorithms",
    "compute_flow",
]

FLOW_ALGORITHMS = ("dis", "farneback", "tvl1")

_DIS_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM


class FlowError(ValueError):
    """An unknown flow algorithm, or one this OpenCV build does not provide."""


def _has_optflow() -> bool:
    return hasattr(cv2, "optflow") and hasattr(cv2.optflow, "DualTVL1OpticalFlow")


def available_flow_algorithms() -> list[str]:
    """The algorithms of :data:`FLOW_ALGORITHMS` this OpenCV build can run.

    ``"tvl1"`` is listed only when ``cv2.optflow`` exists (opencv-contrib builds).
    """
    return [a for a in FLOW_ALGORITHMS if a != "tvl1" or _has_optflow()]


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in FLOW_ALGORITHMS:
        raise FlowError(
            f"unknown flow algorithm {algorithm!r}; expected one of {list(FLOW_ALGORITHMS)}"
        )
    if algorithm == "tvl1" and not _has_optflow():
        raise FlowError(
            "flow algorithm 'tvl1' needs cv2.optflow, which this OpenCV build lacks: install "
            "the contrib build (pip package opencv-contrib-python-headless) instead of "
            "opencv-python(-headless)"
        )


def _make_pair_fn(algorithm: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    # flow=None everywhere: OpenCV allocates the output (its stubs insist on an array).
    if algorithm in ("dis", "tvl1"):
        if algorithm == "dis":
            method: cv2.DenseOpticalFlow = cv2.DISOpticalFlow.create(_DIS_PRESET)
        else:
            method = cv2.optflow.DualTVL1OpticalFlow.create()

        def dense(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
            return method.calc(prev, nxt, None)  # type: ignore[call-overload]

        return dense

    def farneback(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        # The parameters of OpenCV's own Farneback sample.
        return cv2.calcOpticalFlowFarneback(  # type: ignore[call-overload]
            prev,
            nxt,
            None,
            pyr_scale=0.5,
            levels=3,
            winsize=15,
            iterations=3,
            poly_n=5,
            poly_sigma=1.2,
            flags=0,
        )

    return farneback


def compute_flow(frames: np.ndarray, algorithm: str = "dis") -> np.ndarray:
    """Optical flow between every pair of consecutive frames.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB clip, ``T >= 2``.
        algorithm: one of :data:`FLOW_ALGORITHMS`.

    Returns:
        ``(T - 1, H, W, 2)`` float32; ``[..., 0]`` = u (px, + = right), ``[..., 1]`` = v (px,
        + = down); ``flow[t]`` goes from frame ``t`` to frame ``t + 1`` (module docstring).

    Raises:
        FlowError: unknown algorithm, or ``"tvl1"`` without ``cv2.optflow``.
        ValueError: frames of the wrong shape or dtype.
    """
    _check_algorithm(algorithm)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    num_frames, height, width = frames.shape[:3]
    if num_frames < 2:
        raise ValueError(f"flow needs at least 2 frames, got {num_frames}")
    # A new flow object per clip: DIS keeps settings it derived from the first image it
    # saw (a 32x32 clip changed every later 64x64 flow by up to 0.85 px), so a shared
    # object made labels depend on what the worker computed before. Creating one costs
    # ~20 us (DIS) and ~0.2 ms (TV-L1), against 27 ms / 3 s of flow per clip.
    fn = _make_pair_fn(algorithm)
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    out = np.empty((num_frames - 1, height, width, 2), np.float32)
    for t in range(num_frames - 1):
        out[t] = fn(gray[t], gray[t + 1])
    return out
