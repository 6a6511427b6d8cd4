"""Pace prediction with contrastive learning (thesis 4.2.3): a pace classifier on every
clip and a contrastive loss on the clips' (projected) features.

CPU half, by `contrastive.sampling` (`clips_per_sample`):
  * two clips (`two_clips`, Alg. 3; the default for `same_context`): two pace draws
    from one video, the second at a different pace when another pace fits, planned
    together so the video is opened and decoded once for both (the union of their
    frames). Each clip is augmented independently.
  * one clip (`one_clip`, Alg. 4; the default for `same_pace`): one pace draw per
    sample, as the pace pretext's, so no clip has a partner from its own video at
    another pace; positives are the other clips of the batch at the same pace.

GPU half: the backbone runs on all clips as one batch (2B for two clips). The loss is
`lambda_cls * CE(pace of every clip) + lambda_ctr * InfoNCE`, with the positives of
`contrastive.mode`:
  * `same_context` (Eq. 4.3): clips of the same video (the two clips of a sample, and
    any other sample of the same video in the batch) are positives;
  * `same_pace` (Eq. 4.4): clips at the same pace are positives (with two clips per
    sample a clip's own-video partner is at another pace, so always a negative).
Embeddings are the pooled features through an optional nonlinear projection head
(`projection_hidden` > 0), L2-normalised, divided by `temperature`
(`rayssl.pretext.contrastive_loss.masked_info_nce`: the formulas, and how the thesis's
equations are read). Under DDP the embeddings of all workers are gathered (with
gradients) when `gather` is set, so every clip meets the negatives of the global batch;
video ids are 62-bit hashes of the video id, unique across workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rayssl.io.ids import stable_hash
from rayssl.models.heads import ClassifierHead, ProjectionHead
from rayssl.pretext.base import ClipPlan, Features, Pretext
from rayssl.pretext.contrastive_loss import (
    gather_for_contrastive,
    masked_info_nce,
    same_context_mask,
    same_pace_mask,
)
from rayssl.pretext.pace import draw_pace, num_pace_classes

#: Redraws of the second pace before accepting an equal one (a video where one pace fits).
_PACE_REDRAWS = 8


class PaceContrastiveHead(nn.Module):
    """Pace classifier and projection head on the pooled features (B, D)."""

    def __init__(
        self, in_dim: int, num_paces: int, hidden: int, out_dim: int, dropout: float
    ) -> None:
        super().__init__()

        self.classifier = ClassifierHead(in_dim, num_paces, dropout=dropout)
        self.projection: nn.Module = (
            ProjectionHead(in_dim, hidden, out_dim) if hidden > 0 else nn.Identity()
        )

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(features), self.projection(features)


def video_keys(video_ids: Any, device: torch.device) -> torch.Tensor:
    """(B,) int64 ids from video id strings: the same in every worker and run."""
    keys = [stable_hash(str(v)) >> 1 for v in np.asarray(video_ids).reshape(-1)]
    return torch.tensor(keys, dtype=torch.int64, device=device)


class PaceContrastivePretext(Pretext):
    name = "pace_contrastive"
    accuracy_name = "pace_acc"

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        super().__init__(cfg, clip_len, short_video)
        self.settings = cfg.contrastive
        self.paces = [float(p) for p in cfg.paces]
        self.two_clips = self.settings.clips_per_sample == 2

    # ---------------------------------------------------------------- CPU half
    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        first = draw_pace(self.cfg, num_frames, self.clip_len, rng, self.short_video)
        if first is None:
            return None
        if not self.two_clips:
            return ClipPlan(
                clips=[first.indices],
                targets={"label": np.int64(first.label), "pace": np.float32(first.pace)},
                resampled=first.resampled,
            )
        second = None
        for _ in range(_PACE_REDRAWS):
            second = draw_pace(self.cfg, num_frames, self.clip_len, rng, self.short_video)
            if second is None or second.label != first.label:
                break
        if second is None:
            return None
        return ClipPlan(
            clips=[first.indices, second.indices],
            targets={
                "label": np.int64(first.label),
                "label2": np.int64(second.label),
                "pace": np.float32(first.pace),
                "pace2": np.float32(second.pace),
            },
            resampled=first.resampled or second.resampled,
        )

    def target_spec(self, clip_shape):
        spec = {
            "clip": (clip_shape, np.uint8),
            "label": ((), np.int64),
            "pace": ((), np.float32),
        }
        if self.two_clips:
            spec |= {
                "clip2": (clip_shape, np.uint8),
                "label2": ((), np.int64),
                "pace2": ((), np.float32),
            }
        return spec

    # ---------------------------------------------------------------- GPU half
    def build_head(self, feature_dim: int, dropout: float = 0.0):
        s = self.settings
        return PaceContrastiveHead(
            feature_dim, num_pace_classes(self.cfg), s.projection_hidden, s.projection_dim, dropout
        )

    def inputs(self, batch: dict):
        """The clips of every sample as one batch: with two clips, rows 0..B-1 are the
        first clips and rows B..2B-1 the second."""
        if not self.two_clips:
            return batch["clip"]
        return torch.cat([batch["clip"], batch["clip2"]])

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """batch: "clip" (and "clip2" with two clips) (B, 3, T, H, W) float, "label"
        (and "label2") (B,) int64, "valid" (B,) bool, "video_id" (B,) strings (host)."""
        import torch.nn.functional as F  # lazy: torch is a heavy import that only this path needs

        s = self.settings
        n = batch["clip"].shape[0]
        copies = 2 if self.two_clips else 1
        logits, z = head(features.pooled)
        label_keys = ("label", "label2")[:copies]
        labels = torch.cat([batch[k] for k in label_keys]).clamp(min=0)
        valid = batch["valid"].repeat(copies)
        ce = F.cross_entropy(logits.float(), labels, reduction="none")  # (copies * B,)
        per_sample_ce = ce.view(copies, n).mean(0)
        num_valid = batch["valid"].sum()
        ce_loss = (per_sample_ce * batch["valid"]).sum() / num_valid.clamp(min=1)

        keys = video_keys(batch["video_id"], labels.device).repeat(copies)
        groups = keys if s.mode == "same_context" else labels
        z_all, groups_all, valid_all, local_rows = (
            gather_for_contrastive(z.float(), groups, valid)
            if s.gather
            else (z.float(), groups, valid, None)
        )
        mask = (
            same_context_mask(groups_all)
            if s.mode == "same_context"
            else same_pace_mask(groups_all)
        )
        ctr_loss, ctr = masked_info_nce(
            z_all, mask, s.temperature, valid_all, metric_rows=local_rows
        )
        loss = s.lambda_cls * ce_loss + s.lambda_ctr * ctr_loss
        with torch.no_grad():
            hits = (logits.argmax(1) == labels).float()
            correct = (hits.view(copies, n).mean(0) * batch["valid"]).sum()
            anchors = ctr["num_anchors"].clamp(min=1)
            metrics = {
                "loss_sum": loss.detach() * num_valid,
                "correct": correct,
                "num_valid": num_valid.float(),
                "cls_loss_sum": (per_sample_ce.detach() * batch["valid"]).sum(),
                # contrastive loss / top-1 of this worker's anchors, per valid sample
                "ctr_loss_sum": ctr["loss_sum"].detach() / anchors * num_valid,
                "ctr_acc_sum": ctr["correct"].detach() / anchors * num_valid,
            }
        return loss, metrics
