"""The run plan: every fact a training run needs, derived once on the driver.

`rayssl.launch.plan_run` reads the manifest once, checks it against the task, resolves
`model.init` (its weights loaded once), fills `pretext.num_classes`, orders the videos for
the curriculum and picks the monitor's videos; the result is one `RunPlan` that Ray puts
in its object store and every worker takes from there (no worker reads the manifest or
the init checkpoint again; a restarted worker gets the same plan).

It holds only what workers use: the usable training videos (not the whole manifest),
the validation videos, the monitor's, the counts of the split's unreadable videos (a
metric), and the resolved init weights.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from rayssl.checkpoint import BackboneSource
from rayssl.config import Config
from rayssl.io import storage


@dataclass(frozen=True)
class RunPlan:
    """What a training run needs, resolved once (`rayssl.launch.plan_run`)."""

    #: The config as run: paths absolute, the tracking URI redacted, `pretext.num_classes`
    #: from the manifest when it was 0, the backbone settings of `model.init`.
    cfg: Config
    #: The usable training videos of `data.split` and `data.fraction`, easiest first when
    #: the curriculum is on (`rayssl.train.curriculum.order_by_difficulty`).
    videos: pa.Table
    #: The usable videos of `data.val_split` (None without one).
    val_videos: pa.Table | None = None
    #: The monitor's labelled query + gallery videos (None when the monitor is off).
    monitor_videos: pa.Table | None = None
    #: `data/bad_videos` and `data/bad_<reason>`: the split's unreadable manifest rows.
    bad_counts: dict[str, float] | None = None
    #: `model.init` resolved, weights included (None: random init).
    init: BackboneSource | None = None

    @property
    def options(self) -> storage.StorageOptions:
        """Storage options of the run's data (endpoint from the config, credentials from
        the environment)."""
        return storage.StorageOptions(endpoint_url=self.cfg.data.endpoint_url or None)


def manifest_bad_counts(table: pa.Table, split: str) -> dict[str, float]:
    """The run's split's videos that the manifest found unreadable, by reason
    (`data/bad_<reason>`) and in all (`data/bad_videos`): never drawn, but counted."""
    if split and "split" in table.column_names:
        table = table.filter(pc.equal(table["split"], split))
    reasons = Counter(str(r) for r in table["error"].to_pylist() if r is not None)
    return {
        "data/bad_videos": float(sum(reasons.values())),
        **{f"data/bad_{r}": float(n) for r, n in sorted(reasons.items())},
    }
