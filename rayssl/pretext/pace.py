"""Pace prediction (thesis ch. 4): classify the playback pace of a clip.

CPU half: draw a pace and a start that fits (`rayssl.clips.sampling.draw_pace_clip`),
the label is the pace's index; with `pretext.backwards` some clips play backwards
(`rayssl.clips.sampling.maybe_backwards`: same label, or K + label as extra classes).
GPU half: a linear classifier on the pooled backbone features, cross-entropy over the
valid samples of the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayssl.clips.sampling import draw_pace_clip, maybe_backwards
from rayssl.models.heads import ClassifierHead
from rayssl.pretext.base import ClipPlan, Features, Pretext, masked_cross_entropy


class PacePretext(Pretext):
    name = "pace"
    accuracy_name = "pace_acc"

    @property
    def paces(self) -> list[float]:
        return [float(p) for p in self.cfg.paces]

    @property
    def num_classes(self) -> int:
        return num_pace_classes(self.cfg)

    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        draw = draw_pace(self.cfg, num_frames, self.clip_len, rng, self.short_video)
        if draw is None:
            return None
        return ClipPlan(
            clips=[draw.indices],
            targets={"label": np.int64(draw.label), "pace": np.float32(draw.pace)},
            resampled=draw.resampled,
        )

    def target_spec(self, clip_shape):
        return {
            "clip": (clip_shape, np.uint8),
            "label": ((), np.int64),
            "pace": ((), np.float32),
        }

    def build_head(self, feature_dim: int, dropout: float = 0.0):

        return ClassifierHead(feature_dim, self.num_classes, dropout=dropout)

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Cross-entropy of the pace label on valid samples (`masked_cross_entropy`).

        batch: "clip" (B, 3, T, H, W) float on device, "label" (B,) int64,
        "valid" (B,) bool.
        """
        logits = head(features.pooled)  # (B, num_classes)
        return masked_cross_entropy(logits, batch["label"], batch["valid"])


def num_pace_classes(cfg: Any) -> int:
    """Pace classes of a PretextConfig: one per pace, twice that with backwards clips
    as extra classes."""
    return len(cfg.paces) * (2 if cfg.backwards == "extra_classes" else 1)


def draw_pace(cfg: Any, num_frames: int, clip_len: int, rng, short_video: str):
    """A pace clip of a PretextConfig's paces, played backwards as `cfg.backwards` says."""
    paces = [float(p) for p in cfg.paces]
    draw = draw_pace_clip(num_frames, clip_len, paces, rng, short_video)
    if draw is None:
        return None
    return maybe_backwards(draw, cfg.backwards, cfg.backwards_prob, len(paces), rng)
