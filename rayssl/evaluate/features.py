"""Video features as a Ray Data job, and the clip inference every evaluation shares.

    manifest rows ─► eval rows: one per (video, chunk of its evaluation clips)
        ─► decode (CPU tasks): one decode per chunk, resize, centre crop → uint8 clips
        ─► model (actors: on GPUs when the cluster has them, else on CPU) → per-clip outputs
        ─► per-video mean (on the driver) ─► Parquet: video_id, label, split, num_clips,
           one float list column per layer, named as the layer (pool3, pool5, ...)

Clip positions are `uniform:N` (N uniformly spaced clips: retrieval and the fine-tuning
test) or `sliding:L:O` (L-frame clips overlapping by O: dynamic scenes, action
similarity). The layers are the backbone's (`feature_layers`): maps (pool1-pool4) are
global-average-pooled to vectors before averaging over the clips (pool5 is the backbone's
global average; pool5_vcop VCOP's max-pooled, flattened conv5; a ViT's block<i> its
mean-pooled tokens); token maps (a ViT's tokens, a CNN's pool5_map) are pooled to at most
a (T', H', W') grid per clip, then averaged over the clips: a (G, D) array per video,
stored as a list of G fixed-size lists. A video that cannot be read is a counted skip
(by reason), never an error.

The pieces (eval rows, decoding, FeatureModel, per-video means) are in
`rayssl.train.inference`, which the pre-training monitor shares; the fine-tuning test
protocol runs them with a softmax model instead of the feature model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from torch import nn

from rayssl.clips import schedule
from rayssl.config import DataConfig, InferenceSettings
from rayssl.io import storage
from rayssl.io.manifest import read_manifest
from rayssl.raystart import quiet_ray_data
from rayssl.train.inference import (
    DEFAULT_TOKEN_GRID,
    DecodeSpec,
    FeatureModel,
    VideoOutputs,
    aggregate,
    build_eval_dataset,
    eval_rows,
    infer_batch,
    manifest_skips,
    usable,
)


#: Manifest columns an eval row carries into the decode task.
class ModelActor:
    """A Ray Data actor holding one model (on its GPU when it has one)."""

    def __init__(self, module: nn.Module, bf16: bool = True, torch_threads: int = 0) -> None:
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.bf16 = bf16 and self.device.type == "cuda"
        self.module = module.to(self.device).eval()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return infer_batch(self.module, batch, self.device, self.bf16)


def actor_resources(inference: InferenceSettings) -> tuple[int, float, float]:
    """(num_actors, cpus, gpus) per actor for this cluster: one actor per GPU when the
    cluster has GPUs (unless num_actors is set), else CPU actors."""
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if gpus > 0 and inference.gpus_per_actor > 0:
        n = inference.num_actors or max(1, int(gpus // inference.gpus_per_actor))
        return n, inference.cpus_per_actor, inference.gpus_per_actor
    return inference.num_actors or 1, inference.cpus_per_actor, 0.0


def decode_concurrency(inference: InferenceSettings, num_actors: int, num_blocks: int) -> int:
    """How many decode tasks run at once: `inference.decode_tasks`, or the cluster's CPUs,
    at most one per input block.

    It differs from the number of model actors when there is more than one block: Ray
    Data fuses a task map into the following actor map when the task pool's size equals
    the actor pool's, and decoding would then run inside the actors one chunk at a time
    instead of in parallel tasks."""
    n = inference.decode_tasks or max(1, int(ray.cluster_resources().get("CPU", 1)))
    n = max(1, min(n, num_blocks))
    if n == num_actors and num_blocks > 1:
        n = n + 1 if n < num_blocks else n - 1
    return n


def infer_with_actors(module: nn.Module, ds, inference: InferenceSettings):
    """`ds` (decoded clips) through `module` in an actor pool; a Ray Dataset of outputs."""
    num, cpus, gpus = actor_resources(inference)
    return ds.map_batches(
        ModelActor,
        fn_constructor_kwargs={"module": module, "torch_threads": inference.torch_threads},
        batch_size=inference.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num),
        num_cpus=cpus,
        num_gpus=gpus,
    )


# --------------------------------------------------------------------------- the job


def run_inference(
    module: nn.Module,
    table: pa.Table,
    data: DataConfig,
    inference: InferenceSettings,
    clip_len: int | None = None,
) -> VideoOutputs:
    """Every usable video of `table` through `module` with Ray Data (decode tasks and
    model actors); per-video mean outputs. Unreadable videos are counted skips."""
    quiet_ray_data(data.progress_logs)
    videos = usable(table)
    spec = DecodeSpec.from_settings(
        inference.clips, data, inference.max_clips_per_task, clip_len=clip_len
    )
    skipped = manifest_skips(table)
    if videos.num_rows == 0:
        return aggregate([], videos, skipped)
    rows = eval_rows(videos, spec.clips, spec.clip_len, spec.max_clips)
    demands = stage_demands(inference, data)
    schedule.check_fits(demands, "evaluation inference")
    num_actors = actor_resources(inference)[0]
    num_blocks = math.ceil(rows.num_rows / max(1, data.rows_per_task))
    ds = build_eval_dataset(rows, spec, data, decode_concurrency(inference, num_actors, num_blocks))
    ds = infer_with_actors(module, ds, inference)
    watchdog = schedule.StallWatchdog(
        "evaluation inference", demands, schedule.stall_seconds(inference.stall_s)
    )
    batches = watchdog.iterate(lambda: ds.iter_batches(batch_size=256, batch_format="numpy"))
    return aggregate(batches, videos, skipped)


def stage_demands(inference: InferenceSettings, data: DataConfig) -> list[schedule.Demand]:
    """What the inference pipeline needs at once: its model actors and one decode task."""
    num, cpus, gpus = actor_resources(inference)
    decode = {"CPU": data.num_cpus_per_task}
    return [
        schedule.Demand("model actors", {"CPU": cpus, "GPU": gpus}, num),
        schedule.Demand("decode tasks", decode, 1),
    ]


def extract_features(
    backbone: nn.Module,
    table: pa.Table,
    data: DataConfig,
    inference: InferenceSettings,
    layers: Sequence[str],
    token_grid: Sequence[int] = DEFAULT_TOKEN_GRID,
    normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
) -> VideoOutputs:
    """Per-video features of every usable video of a manifest `table`, per layer (token
    layers pooled to at most `token_grid` tokens per clip, `FeatureModel`). The layers
    are checked against the backbone's `feature_layers` before anything runs.
    `normalisation`: the backbone's (mean, std) when not the pipeline's
    (`rayssl.clip_geometry.ClipGeometry.renormalise`)."""
    model = FeatureModel(backbone, layers, token_grid, normalisation)
    return run_inference(model, table, data, inference)


def write_features(features: VideoOutputs, uri: str, options=None) -> None:
    """Write the features Parquet (local path or s3://)."""
    sink = io.BytesIO()
    pq.write_table(features.to_table(), sink)
    storage.write_bytes(uri, sink.getvalue(), options=options)


def read_features(uri: str, options=None) -> VideoOutputs:
    """Read a features Parquet written by `write_features`."""
    return VideoOutputs.from_table(pq.read_table(io.BytesIO(storage.read_bytes(uri, options))))


def load_manifest(uri: str, data: DataConfig) -> pa.Table:
    """The manifest at `uri` with the data settings' storage options."""
    return read_manifest(
        uri, options=storage.StorageOptions(endpoint_url=data.endpoint_url or None)
    )
