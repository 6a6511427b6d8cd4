"""Supervised action classification: fine-tuning behind the same task interface.

CPU half: a clip of `clip_len` consecutive frames at a random start that fits (a video
shorter than the clip repeats its last frame, as the evaluation clips do); the target is
the video's class label, which the pipeline already carries as `class_label`.
GPU half: dropout + a new linear classifier on the pooled backbone features,
cross-entropy over the valid samples. The training loop cannot tell it from a pretext.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayssl.models.heads import ClassifierHead
from rayssl.pretext.base import ClipPlan, Features, Pretext, masked_cross_entropy


class SupervisedTask(Pretext):
    name = "supervised"
    accuracy_name = "acc"
    needs_labels = True  # the launcher checks the manifest's labels before training

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        super().__init__(cfg, clip_len, short_video)
        if int(cfg.num_classes) < 1:
            raise ValueError(
                "pretext.num_classes: the supervised task needs the number of classes "
                "(fine-tuning sets it from the manifest's labels)"
            )
        self.num_classes = int(cfg.num_classes)

    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        if num_frames < 1:
            return None
        start = int(rng.integers(max(num_frames - self.clip_len, 0) + 1))
        indices = np.minimum(start + np.arange(self.clip_len), num_frames - 1).astype(np.int64)
        return ClipPlan(clips=[indices])

    def build_head(self, feature_dim: int, dropout: float = 0.0):

        return ClassifierHead(feature_dim, self.num_classes, dropout=dropout)

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Cross-entropy of the class label on valid samples.

        batch: "clip" (B, 3, T, H, W) float, "class_label" (B,) int64, "valid" (B,) bool.
        """
        logits = head(features.pooled)  # (B, num_classes)
        labels = batch["class_label"].clamp(min=0)  # placeholders carry -1; they are masked
        return masked_cross_entropy(logits, labels, batch["valid"])
