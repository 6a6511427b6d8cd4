"""The CPU half the masked pretexts share (numpy / OpenCV, run in the data tasks): token
masks drawn from a draw's seeded generator, and VideoMAE's multi-scale crop.

Tokens are numbered as the ViT numbers them: (t, h, w) row-major over the token grid
(T', H', W') = (T / 2, H / 16, W / 16) (`rayssl.models.vit.token_grid`). A mask is a
(T' * H' * W',) bool array, True = masked (hidden from the encoder).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from rayssl.clips.sampling import draw_pace_clip
from rayssl.clips.transforms import AugmentConfig, augment_clip, hflip_clip
from rayssl.pretext.base import ClipPlan, Pretext

#: Draws of a multi-block mask before leaving one token visible (every token masked).
_MASK_REDRAWS = 20


def masked_per_frame(grid: tuple[int, int, int], ratio: float) -> int:
    """Patches masked on each token frame by a tube mask: int(ratio * H' * W') (VideoMAE's
    rounding), at most H' * W' - 1 so one stays visible."""
    hw = grid[1] * grid[2]
    return min(int(ratio * hw), hw - 1)


def tube_mask(grid: tuple[int, int, int], ratio: float, rng: np.random.Generator) -> np.ndarray:
    """VideoMAE's tube mask: `masked_per_frame` spatial positions drawn without
    replacement, masked on every token frame. Returns (T' * H' * W',) bool."""
    t, h, w = grid
    frame = np.zeros(h * w, dtype=bool)
    frame[rng.permutation(h * w)[: masked_per_frame(grid, ratio)]] = True
    return np.tile(frame, t)


def block_shape(
    grid: tuple[int, int, int], scale: float, aspect: float, temporal_scale: float
) -> tuple[int, int, int]:
    """(t, h, w) token extent of one block covering `scale` of a frame's H' x W' tokens
    with height / width `aspect` (V-JEPA's rounding: h = round(sqrt(n * aspect)),
    w = round(sqrt(n / aspect)), n = int(scale * H' * W'), each at least 1 and at most
    the side) over `temporal_scale` of the T' token frames."""
    t, h, w = grid
    n = max(1, int(scale * h * w))
    bh = min(h, max(1, round(math.sqrt(n * aspect))))
    bw = min(w, max(1, round(math.sqrt(n / aspect))))
    bt = min(t, max(1, int(temporal_scale * t)))
    return bt, bh, bw


def multiblock_mask(
    grid: tuple[int, int, int],
    num_blocks: int,
    scale: float,
    aspect_ratio: Sequence[float],
    temporal_scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """V-JEPA's 3D multi-block mask: the union of `num_blocks` blocks (`block_shape`,
    aspect drawn log-uniformly in `aspect_ratio`) at uniform positions. A union that
    covers every token is drawn again (up to 20 times), then its first token is left
    visible, so the context is never empty. Returns (T' * H' * W',) bool."""
    t, h, w = grid
    lo, hi = (float(a) for a in aspect_ratio)
    mask = np.zeros(grid, dtype=bool)
    for _ in range(_MASK_REDRAWS):
        mask[:] = False
        for _ in range(num_blocks):
            aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            bt, bh, bw = block_shape(grid, scale, aspect, temporal_scale)
            t0 = int(rng.integers(0, t - bt + 1))
            h0 = int(rng.integers(0, h - bh + 1))
            w0 = int(rng.integers(0, w - bw + 1))
            mask[t0 : t0 + bt, h0 : h0 + bh, w0 : w0 + bw] = True
        if not mask.all():
            break
    else:
        mask.flat[0] = False
    return mask.reshape(-1)


def multiscale_crop_flip(
    clip: np.ndarray,
    cfg: AugmentConfig,
    scales: Sequence[float],
    rng: np.random.Generator,
) -> np.ndarray:
    """VideoMAE's training augmentation (`GroupMultiScaleCrop` + flip) on a (T, H, W, 3)
    uint8 clip: resize to `cfg.resize` (if set), crop a region whose height and width
    are `scales` shares of the short side (drawn independently, at most one step
    apart), at a uniform position; resize it to `cfg.crop`, flip it horizontally with
    `cfg.flip_prob`. No colour jitter. (VideoMAE places the crop at one of 13 fixed
    offsets; here any offset.) Draws from `rng`: crop height, width, top, left, flip."""
    if cfg.resize is not None and clip.shape[1:3] != tuple(cfg.resize):
        clip = np.stack(
            [
                cv2.resize(f, (cfg.resize[1], cfg.resize[0]), interpolation=cv2.INTER_LINEAR)
                for f in clip
            ]
        )
    _, height, width, _ = clip.shape
    short = min(height, width)
    sizes = [max(1, int(short * s)) for s in scales]
    pairs = [(a, b) for i, a in enumerate(sizes) for j, b in enumerate(sizes) if abs(i - j) <= 1]
    ch, cw = pairs[int(rng.integers(len(pairs)))]
    top = int(rng.integers(0, height - ch + 1))
    left = int(rng.integers(0, width - cw + 1))
    out_h, out_w = cfg.crop
    out = np.empty((clip.shape[0], out_h, out_w, 3), dtype=np.uint8)
    for i, frame in enumerate(clip):
        out[i] = cv2.resize(
            frame[top : top + ch, left : left + cw], (out_w, out_h), interpolation=cv2.INTER_LINEAR
        )
    if rng.random() < cfg.flip_prob:
        out = hflip_clip(out)
    return out


def masked_clip(
    frames: np.ndarray,
    augment: AugmentConfig | None,
    rng: np.random.Generator,
    train: bool,
    thesis_augment: bool,
    scales: Sequence[float],
) -> np.ndarray:
    """The clip a masked pretext trains on: the thesis pipeline (`augment_clip`) when
    `thesis_augment` or at evaluation (resize + centre crop), else the multi-scale crop
    + flip; as decoded when augmentation is off (`augment` None)."""
    if augment is None:
        return frames
    if thesis_augment or not train:
        return augment_clip(frames, augment, rng, train=train)
    return multiscale_crop_flip(frames, augment, scales, rng)


def grid_of(clip_shape: Sequence[int]) -> tuple[int, int, int]:
    """Token grid of a (T, H, W, 3) clip (`rayssl.models.vit.token_grid`, numpy side)."""
    from rayssl.models.vit import token_grid

    t, h, w = clip_shape[:3]
    return token_grid((t, h, w))


class MaskedPretext(Pretext):
    """What the masked pretexts share: their settings (`pretext.<name>`) and one clip per
    sample at `frame_stride` (a pace clip at that one pace)."""

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        super().__init__(cfg, clip_len, short_video)
        self.settings = getattr(cfg, self.name)

    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        stride = float(self.settings.frame_stride)
        draw = draw_pace_clip(num_frames, self.clip_len, [stride], rng, self.short_video)
        if draw is None:
            return None
        return ClipPlan(clips=[draw.indices], resampled=draw.resampled)
