"""Watch features improve during pre-training: kNN retrieval top-k every N epochs.

On a small labelled manifest (`monitor.manifest`, else the training manifest), the
videos of `monitor.query_split` query those of `monitor.gallery_split` with cosine
similarity of `monitor.layer` features averaged over `monitor.clips`; top-1 and top-5
are logged to MLflow beside the pretext metrics (`monitor/retrieval_top1`, ...). It runs
in the rank-0 train worker on the model being trained (in-process inference, decoding
with Ray Data tasks), so a long run shows whether its features are still improving.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from rayssl.clips.sampling import fraction_mask
from rayssl.config import Config
from rayssl.io import storage
from rayssl.io.manifest import read_manifest, require_labels
from rayssl.knn import topk_accuracy
from rayssl.train.inference import (
    DecodeSpec,
    FeatureModel,
    aggregate,
    build_eval_dataset,
    eval_rows,
    infer_in_process,
)

MAX_CLIPS_PER_TASK = 32


def monitor_videos(cfg: Config, data_manifest: pa.Table | None = None) -> pa.Table:
    """The labelled query + gallery videos the monitor uses (a deterministic subset of at
    most `monitor.max_videos` per split). Raises ManifestError if either split is missing
    or unlabelled, so a bad monitor setting fails before training starts.

    `data_manifest`: the run's manifest already read (used unless `monitor.manifest` names
    another one)."""
    m = cfg.monitor
    if data_manifest is not None and m.manifest in ("", cfg.data.manifest):
        table = data_manifest
    else:
        table = read_manifest(
            m.manifest or cfg.data.manifest,
            options=storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None),
        )
    parts = []
    for split in (m.query_split, m.gallery_split):
        rows = require_labels(table, "monitor", split=split)
        if rows.num_rows > m.max_videos:
            keep = fraction_mask(
                rows["video_id"].to_pylist(), m.max_videos / rows.num_rows, cfg.run.seed
            )
            rows = rows.filter(pa.array(keep))
        parts.append(rows)
    return pa.concat_tables(parts)


class RetrievalMonitor:
    """Retrieval top-1/top-5 of the current backbone on the monitor videos."""

    def __init__(self, cfg: Config, videos: pa.Table) -> None:
        self.cfg = cfg
        self.videos = videos  # `monitor_videos`, chosen once on the driver (the run plan)
        self.spec = DecodeSpec.from_settings(cfg.monitor.clips, cfg.data, MAX_CLIPS_PER_TASK)
        self.rows = eval_rows(self.videos, self.spec.clips, self.spec.clip_len, MAX_CLIPS_PER_TASK)

    def due(self, epoch: int) -> bool:
        """Whether the monitor runs after `epoch` (0-based): every N, and after the last."""
        every = self.cfg.monitor.every_epochs
        return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == self.cfg.optim.epochs)

    def run(self, backbone: nn.Module, device: torch.device) -> dict[str, float]:
        m = self.cfg.monitor
        ds = build_eval_dataset(self.rows, self.spec, self.cfg.data)
        model = FeatureModel(backbone, [m.layer])
        out = aggregate(infer_in_process(model, ds, device, m.batch_size), self.videos, Counter())
        q, g = out.split_mask(m.query_split), out.split_mask(m.gallery_split)
        if not q.any() or not g.any():
            return {"monitor/videos_skipped": float(sum(out.skipped.values()))}
        feats = out.outputs[m.layer]
        acc = topk_accuracy(feats[q], out.labels[q], feats[g], out.labels[g], ks=(1, 5))
        return {
            "monitor/retrieval_top1": acc[1],
            "monitor/retrieval_top5": acc[5],
            "monitor/videos": float(len(out.video_ids)),
            "monitor/videos_skipped": float(sum(out.skipped.values())),
            "monitor/chance_top1": _chance(out.labels[q], out.labels[g]),
        }


def _chance(query_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    """Expected top-1 of a random neighbour: P(gallery class == query class)."""
    classes, counts = np.unique(gallery_labels, return_counts=True)
    share = dict(zip(classes.tolist(), (counts / counts.sum()).tolist(), strict=True))
    return float(np.mean([share.get(int(c), 0.0) for c in query_labels]))
