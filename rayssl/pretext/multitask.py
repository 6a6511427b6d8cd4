"""Several pretexts in one run (`pretext.name: multitask`), e.g. pace + statistics, or
pace + contrastive + statistics: one clip plan, one backbone pass, a weighted loss.

`pretext.multitask.tasks` names the tasks; the first plans the clips (pace or
pace_contrastive: the pace, the backwards option and the contrastive settings are the
run's `pretext.*` as for a single task), every other one labels the first clip of each
sample from its pixels (`labels_any_clip`: statistics). The labels are computed on that
clip as cropped and flipped, before the colour jitter the first task applies (the same
crop and flip the network sees, the same draws from the sample's rng as the statistics
pretext alone would make): per-frame jitter would change about 40% of the motion and 80%
of the appearance labels. So a statistics label describes the motion of the clip the
network sees, at the clip's pace: a pace-3 clip's flow is three times a pace-1 clip's.

The backbone runs once on the first task's inputs (both clips for a two-clip
pace_contrastive).
Every task computes its loss from the shared `Features`; statistics reads the first
clip's rows of the feature map. The loss is sum_t weight_t * loss_t, each loss_t the
task's own (mean over valid samples). Metrics: the first task's accuracy is the run's
(`<task>_acc` of the first task, e.g. `pace_acc`), and each task adds
`<task>_loss`, `<task>_acc` (its own accuracy: label_acc for statistics) and its other
metrics under `<task>_<metric>`. The loop never sees a task's name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from rayssl.clips.transforms import AugmentConfig, augment_clip_stages
from rayssl.config import check_tasks
from rayssl.pretext.base import ClipPlan, Features, Pretext
from rayssl.pretext.pace import PacePretext
from rayssl.pretext.pace_contrastive import PaceContrastivePretext
from rayssl.pretext.statistics import StatisticsPretext

#: The tasks a multitask run can combine (`check_tasks` allows these names).
TASKS: dict[str, type[Pretext]] = {
    "pace": PacePretext,
    "pace_contrastive": PaceContrastivePretext,
    "statistics": StatisticsPretext,
}


class MultitaskHead(nn.Module):
    """One head per task, by task name."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)


class MultitaskPretext(Pretext):
    name = "multitask"

    def __init__(self, cfg: Any, clip_len: int, short_video: str = "resample_pace") -> None:
        super().__init__(cfg, clip_len, short_video)
        settings = cfg.multitask
        check_tasks(list(settings.tasks))
        self.tasks: dict[str, Pretext] = {
            t: TASKS[t](dataclasses.replace(cfg, name=t), clip_len, short_video)
            for t in settings.tasks
        }
        self.weights = dict(zip(settings.tasks, (float(w) for w in settings.weights), strict=True))
        self.primary_name = settings.tasks[0]
        self.primary = self.tasks[self.primary_name]
        if type(self.primary).make_sample is not Pretext.make_sample:
            raise TypeError(
                f"multitask: {self.primary_name} has its own make_sample; the first task must "
                "use the default one (augment each clip, attach the plan's targets)"
            )
        self.accuracy_name = getattr(self.primary, "accuracy_name", "acc")
        self.uses_map = any(t.uses_map for t in self.tasks.values())  # type: ignore[misc]

    @property
    def labellers(self) -> list[Pretext]:
        return [t for name, t in self.tasks.items() if name != self.primary_name]

    # ---------------------------------------------------------------- CPU half
    def plan(self, num_frames: int, rng: np.random.Generator) -> ClipPlan | None:
        return self.primary.plan(num_frames, rng)

    def make_sample(
        self,
        frames: list[np.ndarray],
        plan: ClipPlan,
        rng: np.random.Generator,
        augment: AugmentConfig | None,
        train: bool = True,
    ) -> dict[str, np.ndarray]:
        # The clips are augmented here, in the order and with the draws the first task's
        # own (default) make_sample would use, so the labellers can see the first clip
        # before colour jitter.
        if augment is None:
            clips, geometric = list(frames), frames[0]
        else:
            staged = [augment_clip_stages(f, augment, rng, train=train) for f in frames]
            clips, geometric = [a.clip for a in staged], staged[0].geometric
        sample = self.primary.make_sample(clips, plan, rng, None, train=train)
        for task in self.labellers:
            sample.update(task.label_clip(geometric))
        return sample

    def target_spec(self, clip_shape):
        spec = {}
        for task in self.tasks.values():
            spec.update(task.target_spec(clip_shape))
        return spec

    # ---------------------------------------------------------------- GPU half
    def build_head(self, feature_dim: int, dropout: float = 0.0):
        return MultitaskHead(
            {name: t.build_head(feature_dim, dropout) for name, t in self.tasks.items()}
        )

    def inputs(self, batch: dict):
        return self.primary.inputs(batch)

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        import torch  # lazy: torch is a heavy import that only this path needs

        if self.uses_map:
            _ = features.map  # one backbone pass for every task: pooled = pool(map)
        n = batch["clip"].shape[0]
        total = None
        metrics: dict[str, Any] = {}
        num_valid = batch["valid"].sum().float()
        for name, task in self.tasks.items():
            feats = features if task is self.primary else features.head(n)
            loss, m = task.loss(feats, head.heads[name], batch)
            weighted = self.weights[name] * loss
            total = weighted if total is None else total + weighted
            for key, value in m.items():
                if key == "num_valid":
                    continue
                if key == "correct":
                    metrics[f"{name}_acc_sum"] = value
                else:
                    metrics[f"{name}_{key}" if key.endswith("_sum") else f"{name}_{key}_sum"] = (
                        value
                    )
        with torch.no_grad():
            metrics["loss_sum"] = sum(
                self.weights[name] * metrics[f"{name}_loss_sum"] for name in self.tasks
            )
            metrics["correct"] = metrics[f"{self.primary_name}_acc_sum"]
            metrics["num_valid"] = num_valid
        return total, metrics
