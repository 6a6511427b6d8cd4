"""What a pretext task is: both halves of it.

CPU half (runs in Ray Data workers, numpy only):
  * `plan(num_frames, rng)` says which frames to decode, as one index array per clip
    (a contrastive task asks for two clips of one video, decoded together), plus the
    targets known before decoding (e.g. the pace label); None skips the clip.
  * `make_sample(frames, plan, rng, augment, train)` turns the decoded frames into
    the arrays a batch holds: by default it augments each clip and adds the targets.
    Tasks whose targets depend on the pixels (motion statistics) override it.
  * `target_spec(clip_shape)` gives every array's shape and dtype, so the pipeline
    can emit a masked placeholder for a clip that failed to decode (every planned clip
    yields exactly one row, which keeps DDP workers in step and epochs exact).

GPU half (plain torch):
  * `build_head(feature_dim, dropout)` and `compute(backbone, head, batch)` -> (loss, metrics)
    where metrics are detached scalar tensors (summed over valid samples, with a
    `num_valid` count, so they can be all-reduced exactly).

The training loop never branches on a task's name; `rayssl.pretext.PRETEXTS` maps
names to classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from rayssl.data.transforms import AugmentConfig, augment_clip


@dataclass
class ClipPlan:
    """Frames to decode for one sample, and the targets known before decoding."""

    clips: list[np.ndarray]  # one (clip_len,) int64 index array per clip
    targets: dict[str, Any] = field(default_factory=dict)
    resampled: bool = False  # the short-video policy changed the first draw


def masked_cross_entropy(logits, labels, valid) -> tuple[Any, dict[str, Any]]:
    """Cross-entropy of logits (B, C) against labels (B,) over the valid samples (B,) bool.

    Returns the mean loss over valid samples (0 if none, still connected to the graph so
    DDP's gradient sync happens) and the summed metrics every task reports: `loss_sum`,
    `correct`, `num_valid`.
    """
    import torch
    import torch.nn.functional as F

    per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
    num_valid = valid.sum()
    loss = (per_sample * valid).sum() / num_valid.clamp(min=1)
    with torch.no_grad():
        correct = ((logits.argmax(1) == labels) & valid).sum()
    return loss, {
        "loss_sum": (per_sample.detach() * valid).sum(),
        "correct": correct.float(),
        "num_valid": num_valid.float(),
    }


class Pretext(ABC):
    """Base class; subclasses set `name` and implement plan / head / compute."""

    name: ClassVar[str] = ""

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        self.cfg = cfg
        self.clip_len = clip_len
        self.short_video = short_video

    # ---------------------------------------------------------------- CPU half
    @abstractmethod
    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        """Frames to decode for one sample of a video of `num_frames`, or None."""

    def make_sample(
        self,
        frames: list[np.ndarray],
        plan: ClipPlan,
        rng: np.random.Generator,
        augment: AugmentConfig | None,
        train: bool = True,
    ) -> dict[str, np.ndarray]:
        """Augment each decoded clip ((T, H, W, 3) uint8) and attach the targets."""
        clips = [augment_clip(f, augment, rng, train=train) if augment else f for f in frames]
        sample = {"clip": clips[0]}
        for i, c in enumerate(clips[1:], start=2):
            sample[f"clip{i}"] = c
        for k, v in plan.targets.items():
            sample[k] = np.asarray(v)
        return sample

    def target_spec(self, clip_shape: tuple[int, ...]) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Shape and dtype of every array `make_sample` returns."""
        return {"clip": (clip_shape, np.uint8)}

    # ---------------------------------------------------------------- GPU half
    @abstractmethod
    def build_head(self, feature_dim: int, dropout: float = 0.0):  # -> torch.nn.Module
        """The task's head on top of the pooled backbone features (`model.dropout`)."""

    @abstractmethod
    def compute(self, backbone, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Loss (mean over valid samples) and summed metrics with `num_valid`."""
