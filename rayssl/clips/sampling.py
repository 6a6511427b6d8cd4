"""Pure functions that decide which frames a clip holds. No I/O, no Ray.

Pace rule (thesis ch. 4): a clip of `clip_len` frames at pace p holds the frames
`start + floor(i * p)` for i = 0..clip_len-1. Fast paces (p = 2, 3, 4) skip frames;
slow paces (p = 1/2, 1/3, 1/4) repeat each frame 1/p times (the gap is filled with
the preceding frame). The start is drawn so the whole clip fits in the video: unlike
the reference code, a clip never wraps around to the first frame (no temporal cut).

Short-video policy: a video shorter than a pace's span cannot hold that pace.
  * "resample_pace": draw the pace again among the paces that fit (the label is
    always the pace the frames really have); counted as `resampled`.
  * "skip": the clip is skipped; counted.
A video too short for every pace is skipped under both policies.

Backwards clips (thesis table 4.4, `play_backwards`): with probability `backwards_prob`
a clip's indices are reversed (the same frames played in reverse). `same_class` keeps
the pace's label ("random backwards", 4 classes for 4 paces); `extra_classes` gives a
backwards clip at pace p its own class, K + label for K paces (+-p, 8 classes).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rayssl.config import ClipSpec
from rayssl.io.ids import stable_hash

_EPS = 1e-6  # paces within 1e-6 of 1/k count as 1/k (as config validation)


def pace_span(clip_len: int, pace: float) -> int:
    """Number of source frames a clip at `pace` covers (first to last, inclusive)."""
    return int(math.floor((clip_len - 1) * pace + _EPS)) + 1


def pace_indices(start: int, clip_len: int, pace: float) -> np.ndarray:
    """(clip_len,) int64 source-frame indices of a clip starting at `start`."""
    offsets = np.floor(np.arange(clip_len, dtype=np.float64) * pace + _EPS).astype(np.int64)
    return start + offsets


def clip_rng(seed: int, video_id: str, epoch: int, draw: int) -> np.random.Generator:
    """The generator for clip `draw` of `video_id` in `epoch`: all of a clip's random
    choices (start, pace, crop, flip, jitter) come from it, so they are reproducible."""
    return np.random.default_rng([seed & 0xFFFFFFFF, stable_hash(video_id), epoch, draw])


@dataclass(frozen=True)
class PaceDraw:
    """A sampled pace clip: its frame indices, the pace label and how it was drawn."""

    indices: np.ndarray  # (clip_len,) int64
    label: int  # index into the configured paces
    pace: float
    resampled: bool  # the first pace drawn did not fit the video


def fitting_paces(num_frames: int, clip_len: int, paces: Sequence[float]) -> list[int]:
    """Labels of the paces whose span fits in `num_frames`."""
    return [i for i, p in enumerate(paces) if pace_span(clip_len, p) <= num_frames]


def draw_pace_clip(
    num_frames: int,
    clip_len: int,
    paces: Sequence[float],
    rng: np.random.Generator,
    short_video: str = "resample_pace",
) -> PaceDraw | None:
    """Draw a pace uniformly, then a start so the clip fits.

    Returns None when the clip must be skipped (see the module's short-video policy).
    """
    if short_video not in ("resample_pace", "skip"):
        raise ValueError(f"short_video: unknown policy {short_video!r}")
    label = int(rng.integers(len(paces)))
    resampled = False
    if pace_span(clip_len, paces[label]) > num_frames:
        if short_video == "skip":
            return None
        fits = fitting_paces(num_frames, clip_len, paces)
        if not fits:
            return None
        label = int(fits[rng.integers(len(fits))])
        resampled = True
    pace = float(paces[label])
    span = pace_span(clip_len, pace)
    start = int(rng.integers(num_frames - span + 1))
    return PaceDraw(pace_indices(start, clip_len, pace), label, pace, resampled)


BACKWARDS_MODES = ("none", "same_class", "extra_classes")


def maybe_backwards(
    draw: PaceDraw, mode: str, prob: float, num_paces: int, rng: np.random.Generator
) -> PaceDraw:
    """Reverse `draw` with probability `prob` under `mode` (see the module docstring).

    A backwards draw has reversed indices, `pace` negated, and under `extra_classes` the
    label `num_paces + label`. Mode "none" consumes no random number (forward-only runs
    draw exactly the clips they drew before backwards clips existed).
    """
    if mode not in BACKWARDS_MODES:
        raise ValueError(f"backwards: unknown mode {mode!r}; one of {list(BACKWARDS_MODES)}")
    if mode == "none" or rng.random() >= prob:
        return draw
    label = draw.label + num_paces if mode == "extra_classes" else draw.label
    return PaceDraw(draw.indices[::-1].copy(), label, -draw.pace, draw.resampled)


def eval_clip_starts(num_frames: int, clip_len: int, num_clips: int = 10) -> np.ndarray:
    """Starts of `num_clips` uniformly spaced clips (evaluation protocol: 10 per video).

    Two or more clips: the first starts at frame 0, the last ends at the last frame, the
    others evenly between (VCOP's positions). One clip: the centre clip, start
    (num_frames - clip_len) // 2 (what scoring and attention maps use; a one-point
    linspace would give the first clip). Clips of a video shorter than `clip_len` all
    start at 0 (the reader then pads by repeating the last frame, see
    `eval_clip_indices`).
    """
    last_start = max(num_frames - clip_len, 0)
    if num_clips == 1:
        return np.array([last_start // 2], dtype=np.int64)
    return np.round(np.linspace(0, last_start, num_clips)).astype(np.int64)


def eval_clip_indices(num_frames: int, clip_len: int, num_clips: int = 10) -> np.ndarray:
    """(num_clips, clip_len) indices of the evaluation clips, clamped to the video."""
    starts = eval_clip_starts(num_frames, clip_len, num_clips)
    idx = starts[:, None] + np.arange(clip_len)[None, :]
    return np.minimum(idx, num_frames - 1)


def fraction_mask(video_ids: Sequence[str], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask choosing round(fraction * N) videos (at least 1).

    Videos are ranked by a seeded hash of their id, so subsets are nested: the videos
    of fraction 0.1 are inside those of 0.5 (what a data-scaling sweep needs), and the
    choice does not depend on row order.
    """
    n = len(video_ids)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    keep = max(1, int(round(fraction * n))) if n else 0
    ranks = np.argsort([stable_hash(f"{seed}:{v}") for v in video_ids], kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[ranks[:keep]] = True
    return mask


def sliding_clip_indices(num_frames: int, clip_len: int, overlap: int) -> np.ndarray:
    """(num_clips, clip_len) indices of clip_len-frame clips every clip_len - overlap
    frames, all inside the video; a video shorter than clip_len gives one clip padded by
    repeating its last frame (as `eval_clip_indices`)."""
    stride = clip_len - overlap
    last_start = max(num_frames - clip_len, 0)
    starts = np.arange(0, last_start + 1, stride, dtype=np.int64)
    idx = starts[:, None] + np.arange(clip_len)[None, :]
    return np.minimum(idx, num_frames - 1)


def clip_indices(spec: ClipSpec, num_frames: int, clip_len: int) -> np.ndarray:
    """(num_clips, frames per clip) source-frame indices of a video's evaluation clips."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if spec.kind == "uniform":
        return eval_clip_indices(num_frames, clip_len, spec.num_clips)
    return sliding_clip_indices(num_frames, spec.clip_len, spec.overlap)
