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
  * `build_head(feature_dim, dropout)`;
  * `inputs(batch)`: the clips the backbone runs on, stacked (default: "clip");
  * `loss(features, head, batch)` -> (loss, metrics) from `Features` of those inputs,
    where metrics are detached scalar tensors (summed over valid samples, with a
    `num_valid` count, so they can be all-reduced exactly). `compute(backbone, head,
    batch)` runs the backbone once and calls `loss`; a multi-task run shares one
    `Features` between its tasks.

The training loop never branches on a task's name; `rayssl.pretext.PRETEXTS` maps
names to classes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from rayssl.clips.transforms import AugmentConfig, augment_clip


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
    import torch  # lazy: torch is a heavy import that only this path needs
    import torch.nn.functional as F  # lazy: torch is a heavy import that only this path needs

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


class Features:
    """The backbone's outputs for a batch of clips (N, 3, T, H, W), each computed once.

    `map` is the last stage's output (N, C, T', H', W') (`VideoBackbone.forward_map`),
    `pooled` the global average (N, C). Asking for `pooled` first runs the plain forward
    pass; once `map` exists `pooled` is its pool, so a multi-task run asks for `map`
    first and every task shares one backbone pass. `head(n)` is the view of the first
    n rows (the first clip of every sample when the inputs stack two clips).
    """

    def __init__(self, backbone, clips, rows: int | None = None) -> None:
        self._backbone = backbone
        self._clips = clips
        self._rows = rows
        self._map = None
        self._pooled = None

    def _take(self, t):
        return t if self._rows is None else t[: self._rows]

    @property
    def map(self):
        if self._map is None:
            self._map = self._backbone.forward_map(self._clips)
        return self._take(self._map)

    @property
    def pooled(self):
        import torch  # lazy: torch is a heavy import that only this path needs

        if self._pooled is None:
            if self._map is None:
                self._pooled = self._backbone(self._clips)
            else:
                pool = getattr(self._backbone, "global_pool", None)
                self._pooled = (
                    torch.flatten(pool(self._map), 1) if pool else self._map.mean(dim=(2, 3, 4))
                )
        return self._take(self._pooled)

    def head(self, n: int) -> Features:
        """The first n rows; computing either output computes it for all rows."""
        return _FeatureRows(self, n)


class _FeatureRows(Features):
    def __init__(self, parent: Features, rows: int) -> None:
        self._parent = parent
        self._n = rows

    @property
    def map(self):
        return self._parent.map[: self._n]

    @property
    def pooled(self):
        return self._parent.pooled[: self._n]


class Pretext(ABC):
    """Base class; subclasses set `name` and implement plan / build_head / loss."""

    name: ClassVar[str] = ""
    #: the accuracy the loop logs as `train/<name>`, `val/<name>` (from the loss's
    #: `correct` sums); None: the task has none (masked modelling), nothing is logged
    accuracy_name: str | None = "acc"
    #: the task's targets can be computed from the pixels of any clip (`label_clip`),
    #: so a multi-task run can add it to another task's clips
    labels_any_clip: ClassVar[bool] = False
    #: the head reads the spatial feature map, not only the pooled features
    uses_map: ClassVar[bool] = False
    #: where, in the pre-training model's state (`PretextModel`: `backbone.*`, `head.*`),
    #: the encoder whose features are the run's result lives: what `backbone.pt`, the
    #: logged models, the retrieval monitor and a `state.pt` given as `--checkpoint`
    #: read. The trained backbone, except where the method evaluates another encoder
    #: (vjepa: its EMA target encoder, `head.target.`).
    encoder_prefix: ClassVar[str] = "backbone."

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

    def label_clip(self, clip: np.ndarray) -> dict[str, np.ndarray]:
        """Targets computed from a clip's pixels (tasks with `labels_any_clip`): the clip
        as cropped and flipped, before colour jitter (`AugmentedClip.geometric`)."""
        raise TypeError(
            f"{self.name}: its targets do not come from a clip's pixels "
            "(labels_any_clip is False); it cannot label another task's clips"
        )

    # ---------------------------------------------------------------- GPU half
    @abstractmethod
    def build_head(self, feature_dim: int, dropout: float = 0.0):  # -> torch.nn.Module
        """The task's head on top of the pooled backbone features (`model.dropout`)."""

    def attach(self, backbone, head) -> None:
        """Called once the backbone and the head exist (`train.step.build_model`), before
        any weights are loaded: a task whose head holds a copy of the backbone (vjepa's
        EMA target encoder) makes it here. Default: nothing."""
        return None

    def encoder(self, backbone, head):  # -> torch.nn.Module
        """The encoder at `encoder_prefix`: the run's result."""
        return backbone

    def inputs(self, batch: dict):
        """The clips the backbone runs on, (N, 3, T, H, W)."""
        return batch["clip"]

    @abstractmethod
    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Loss (mean over valid samples) and summed metrics with `num_valid`."""

    def compute(self, backbone, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """Run the backbone once on `inputs(batch)` and return `loss`."""
        return self.loss(Features(backbone, self.inputs(batch)), head, batch)
