"""Pace prediction (thesis ch. 4): classify the playback pace of a clip.

CPU half: draw a pace and a start that fits (`rayssl.data.sampling.draw_pace_clip`),
the label is the pace's index. GPU half: a linear classifier on the pooled backbone
features, cross-entropy over the valid samples of the batch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayssl.data.sampling import draw_pace_clip
from rayssl.pretext.base import ClipPlan, Pretext, masked_cross_entropy


class PacePretext(Pretext):
    name = "pace"
    accuracy_name = "pace_acc"

    @property
    def paces(self) -> list[float]:
        return [float(p) for p in self.cfg.paces]

    @property
    def num_classes(self) -> int:
        return len(self.paces)

    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        draw = draw_pace_clip(num_frames, self.clip_len, self.paces, rng, self.short_video)
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
        from rayssl.models.heads import ClassifierHead

        return ClassifierHead(feature_dim, self.num_classes, dropout=dropout)

    def compute(self, backbone, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Cross-entropy of the pace label on valid samples (`masked_cross_entropy`).

        batch: "clip" (B, 3, T, H, W) float on device, "label" (B,) int64,
        "valid" (B,) bool.
        """
        logits = head(backbone(batch["clip"]))  # (B, num_classes)
        return masked_cross_entropy(logits, batch["label"], batch["valid"])
