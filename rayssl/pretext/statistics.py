"""Spatio-temporal statistics (thesis ch. 2-3): regress where and how things move and
what colours stay or change, from labels computed on the clip the network sees.

CPU half (`make_sample`, in the Ray Data tasks): the clip is augmented (crop, flip,
jitter as configured); optical flow is computed between the consecutive frames of the
clip as cropped and flipped, BEFORE colour jitter (`pretext.statistics.flow`; nothing is
precomputed or stored), and the 27 labels come from
`rayssl.clips.statistics.statistics_labels`: 14 motion labels from the summed motion
boundaries of that flow, 13 appearance labels from the same un-jittered pixels. Jitter,
when on, changes only what the network sees: per-frame jitter would otherwise change
about 40% of the motion and 80% of the appearance labels. Because the flow is computed
on the flipped clip, a flipped clip's horizontal flow is negated as it must be (the
reference code mirrors precomputed flow without negating u). Labels are 0-based
integers.

GPU half: the backbone's last feature map, average-pooled to 1 x g x g so the head can
tell locations apart (`spatial_grid`), feeds two branches of fully connected layers
(the thesis's fc6/fc7, `hidden_dim`), one for the motion labels, one for appearance.

* `head: regression` (default, the thesis's): each label is scaled to [0, 1] by its
  number of classes, y / (C - 1), and the loss is
  lambda_m * mean_j (y_hat_j - y_j)^2 over the motion labels
  + lambda_a * the same over the appearance labels (thesis eq. 3.3 with the squared
  norm averaged over labels). Scaling keeps a 16-block location from outweighing a
  2-value one, and makes the loss independent of the clip length (frame labels); the
  reference code regresses raw 1-based integers, where the grid locations dominate.
* `head: classification`: one softmax per label, cross-entropy averaged over the labels
  of a branch, with the same lambdas. The labels are categories (block 16 is not
  "close" to block 15 in any sense a regression can use), so this is the better-posed
  loss; it is an option, not the default, to stay faithful to the thesis.

Metrics: `label_acc` is the mean over the 27 labels of exact hits (for regression the
prediction is rounded to the nearest class), and `motion_acc` / `appearance_acc` /
`motion_loss` / `appearance_loss` per group.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rayssl.clips.flow import available_flow_algorithms, compute_flow
from rayssl.clips.statistics import label_classes, statistics_labels
from rayssl.clips.transforms import AugmentConfig, augment_clip_stages
from rayssl.config import ConfigError
from rayssl.models.heads import TwoBranchHead
from rayssl.pretext.base import ClipPlan, Features, Pretext

NUM_MOTION = 14
NUM_APPEARANCE = 13
NUM_LABELS = NUM_MOTION + NUM_APPEARANCE


def consecutive_clip(num_frames: int, clip_len: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `clip_len` consecutive frames at a random start that fits; a video
    shorter than the clip repeats its last frame (those pairs carry no motion)."""
    start = int(rng.integers(max(num_frames - clip_len, 0) + 1))
    return np.minimum(start + np.arange(clip_len), num_frames - 1).astype(np.int64)


class StatisticsPretext(Pretext):
    name = "statistics"
    accuracy_name = "label_acc"
    labels_any_clip = True
    uses_map = True

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        super().__init__(cfg, clip_len, short_video)
        if clip_len < 2:
            raise ValueError("data.clip_len: the statistics pretext needs at least 2 frames")
        flow = cfg.statistics.flow
        if flow not in available_flow_algorithms():
            raise ConfigError(
                f"pretext.statistics.flow: {flow!r} is not available in the installed OpenCV "
                f"(available: {available_flow_algorithms()}; tvl1 needs "
                "opencv-contrib-python-headless)"
            )
        self.settings = cfg.statistics
        self.classes = np.asarray(label_classes(clip_len), dtype=np.int64)  # (27,)

    # ---------------------------------------------------------------- CPU half
    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        if num_frames < 1 or (self.short_video == "skip" and num_frames < self.clip_len):
            return None
        return ClipPlan(clips=[consecutive_clip(num_frames, self.clip_len, rng)])

    def make_sample(
        self,
        frames: list[np.ndarray],
        plan: ClipPlan,
        rng: np.random.Generator,
        augment: AugmentConfig | None,
        train: bool = True,
    ) -> dict[str, np.ndarray]:
        if augment is None:
            return {"clip": frames[0], **self.label_clip(frames[0])}
        a = augment_clip_stages(frames[0], augment, rng, train=train)
        return {"clip": a.clip, **self.label_clip(a.geometric)}

    def label_clip(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """{"stats": (27,) int64}: flow between the clip's consecutive frames, then the
        labels of `rayssl.clips.statistics.statistics_labels`. `clip` is the clip before
        colour jitter (`AugmentedClip.geometric`)."""

        flow = compute_flow(clip, self.settings.flow)
        return {"stats": statistics_labels(clip, flow).astype(np.int64)}

    def target_spec(self, clip_shape):
        return {"clip": (clip_shape, np.uint8), "stats": ((NUM_LABELS,), np.int64)}

    # ---------------------------------------------------------------- GPU half
    @property
    def classification(self) -> bool:
        return self.settings.head == "classification"

    def build_head(self, feature_dim: int, dropout: float = 0.0):

        if self.classification:
            out_m = int(self.classes[:NUM_MOTION].sum())
            out_a = int(self.classes[NUM_MOTION:].sum())
        else:
            out_m, out_a = NUM_MOTION, NUM_APPEARANCE
        return TwoBranchHead(
            feature_dim,
            out_m,
            out_a,
            hidden_dim=self.settings.hidden_dim,
            grid=self.settings.spatial_grid,
            dropout=dropout,
        )

    def predict(self, head_out: tuple[Any, Any]):
        """Predicted 0-based labels (B, 27) int64 from the head's two outputs."""
        import torch  # lazy: torch is a heavy import that only this path needs

        out_m, out_a = (o.float() for o in head_out)
        classes = torch.as_tensor(self.classes, device=out_m.device)
        if self.classification:
            logits = torch.cat([out_m, out_a], dim=1)
            parts = torch.split(logits, self.classes.tolist(), dim=1)
            return torch.stack([p.argmax(1) for p in parts], dim=1)
        scaled = torch.cat([out_m, out_a], dim=1)
        return torch.round(scaled * (classes - 1)).clamp(min=0).minimum(classes - 1).long()

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """batch: "clip" (B, 3, T, H, W) float, "stats" (B, 27) int64, "valid" (B,) bool."""
        import torch  # lazy: torch is a heavy import that only this path needs
        import torch.nn.functional as F  # lazy: torch is a heavy import that only this path needs

        out_m, out_a = head(features.map)
        labels = batch["stats"].long().clamp(min=0)  # placeholders are masked below
        valid = batch["valid"].float()
        classes = torch.as_tensor(self.classes, device=labels.device)
        if self.classification:
            per_label = []
            logits = torch.cat([out_m.float(), out_a.float()], dim=1)
            for j, part in enumerate(torch.split(logits, self.classes.tolist(), dim=1)):
                per_label.append(F.cross_entropy(part, labels[:, j], reduction="none"))
            losses = torch.stack(per_label, dim=1)  # (B, 27)
        else:
            target = labels.float() / (classes - 1).clamp(min=1).float()
            pred = torch.cat([out_m.float(), out_a.float()], dim=1)
            losses = (pred - target) ** 2  # (B, 27)
        motion = losses[:, :NUM_MOTION].mean(1)
        appearance = losses[:, NUM_MOTION:].mean(1)
        per_sample = (
            self.settings.lambda_motion * motion + self.settings.lambda_appearance * appearance
        )
        num_valid = valid.sum()
        loss = (per_sample * valid).sum() / num_valid.clamp(min=1)
        with torch.no_grad():
            hits = (self.predict((out_m, out_a)) == labels).float()  # (B, 27)
            metrics = {
                "loss_sum": (per_sample.detach() * valid).sum(),
                "correct": (hits.mean(1) * valid).sum(),
                "num_valid": num_valid,
                "motion_loss_sum": (motion.detach() * valid).sum(),
                "appearance_loss_sum": (appearance.detach() * valid).sum(),
                "motion_acc_sum": (hits[:, :NUM_MOTION].mean(1) * valid).sum(),
                "appearance_acc_sum": (hits[:, NUM_MOTION:].mean(1) * valid).sum(),
            }
        return loss, metrics
