"""Clip inference shared by the pre-training monitor and the evaluations.

    manifest rows ─► eval rows: one per (video, chunk of its evaluation clips)
        ─► decode (Ray Data tasks): resize, centre crop → uint8 clips
        ─► a model (FeatureModel: {layer: vector}; ProbabilityModel: softmax) → per clip
        ─► per-video mean (`aggregate` → VideoOutputs), unreadable videos counted by reason

It sits in train/ because the monitor runs it inside a train worker (in-process, on the
model being trained); `rayssl.evaluate.features` runs the same pieces with model actors.
A video that cannot be read is a counted skip (by reason), never an error.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import torch
import torch.nn.functional as F
from torch import nn

from rayssl.clips.pipeline import RowSkip, read_row_frames
from rayssl.clips.sampling import clip_indices
from rayssl.clips.transforms import center_crop_params, crop_clip
from rayssl.config import AugmentSettings, ClipSpec, DataConfig, parse_clip_spec
from rayssl.io import storage
from rayssl.models.heads import MEAN, STD, check_feature_layers
from rayssl.train.step import DeviceSettings, clip_to_input

EVAL_ROW_COLUMNS = ("uri", "video_id", "num_frames", "keyframes", "keyframe_pts", "label", "split")


# --------------------------------------------------------------------------- models


#: Default cap on a token map's grid (T', H', W') when features are stored per video.
DEFAULT_TOKEN_GRID = (2, 4, 4)


def pool_tokens(
    tokens: torch.Tensor, grid: Sequence[int] | None, cap: Sequence[int]
) -> torch.Tensor:
    """Token map (B, N, D) pooled to at most prod(`cap`) tokens (B, G, D).

    With the backbone's `grid` (T', H', W'; N = T'H'W', raster order) the map is
    average-pooled adaptively to min(grid, cap) per axis (`adaptive_avg_pool3d`): each
    output token is the mean of a block of neighbouring tokens in space and time. Without
    a grid, runs of consecutive tokens are averaged (`adaptive_avg_pool1d`) down to
    prod(`cap`). A map already that small is returned as is."""
    b, n, d = tokens.shape
    if grid is not None:
        t, h, w = (int(v) for v in grid)
        if t * h * w != n:
            raise ValueError(f"token map of {n} tokens does not fit its grid {(t, h, w)}")
        ct, ch, cw = (int(c) for c in cap)
        out = (min(t, ct), min(h, ch), min(w, cw))
        if out == (t, h, w):
            return tokens
        maps = tokens.transpose(1, 2).reshape(b, d, t, h, w)
        return F.adaptive_avg_pool3d(maps, out).flatten(2).transpose(1, 2)
    size = math.prod(int(c) for c in cap)
    if n <= size:
        return tokens
    return F.adaptive_avg_pool1d(tokens.transpose(1, 2), size).transpose(1, 2)


class FeatureModel(nn.Module):
    """Backbone → {layer: per-clip output}: vectors (B, D) as the backbone returns them
    (pool5, pool5_vcop, a ViT's block<i>); maps (B, C, T', H', W') (pool1-pool4)
    global-average-pooled to (B, C); token maps (B, N, D) (a ViT's tokens, a CNN's
    pool5_map) pooled to at most `token_grid` (T', H', W') tokens (`pool_tokens`), (B, G, D).

    The layers are checked against the backbone's `feature_layers` here, on the driver,
    before any clip is decoded."""

    def __init__(
        self,
        backbone: nn.Module,
        layers: Sequence[str],
        token_grid: Sequence[int] = DEFAULT_TOKEN_GRID,
        normalisation: tuple[Sequence[float], Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        check_feature_layers(backbone, layers)
        self.backbone = backbone
        self.layers = list(layers)
        self.token_grid = tuple(int(v) for v in token_grid)
        # (mean, std) of a backbone trained with another normalisation than the pipeline's
        # (MEAN, STD; e.g. an exported torchvision model): the input is renormalised to it
        self.normalisation = (
            None
            if normalisation is None
            else tuple(tuple(float(v) for v in part) for part in normalisation)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.normalisation is not None:
            shape = (1, 3, 1, 1, 1)
            old_m, old_s = (x.new_tensor(v).view(shape) for v in (MEAN, STD))
            new_m, new_s = (x.new_tensor(v).view(shape) for v in self.normalisation)
            x = (x * old_s + old_m - new_m) / new_s
        maps = cast(Any, self.backbone).forward_features(x, self.layers)
        out = {}
        for k, v in maps.items():
            if v.dim() == 3:
                grid_of = getattr(self.backbone, "token_grid", None)
                grid = grid_of(tuple(x.shape[2:])) if callable(grid_of) else None
                out[k] = pool_tokens(v, grid, self.token_grid)
            else:
                out[k] = v.flatten(2).mean(2) if v.dim() > 2 else v
        return out


class ProbabilityModel(nn.Module):
    """Backbone + classifier head → {"probs": (B, num_classes) softmax}."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"probs": torch.softmax(self.head(self.backbone(x)).float(), dim=1)}


# --------------------------------------------------------------------------- rows


def usable(table: pa.Table) -> pa.Table:
    """Rows that decode (no manifest error, frames > 0)."""
    return table.filter(pc.and_(pc.is_null(table["error"]), pc.greater(table["num_frames"], 0)))


def manifest_skips(table: pa.Table) -> Counter[str]:
    """Videos the manifest already marks as unreadable, by reason."""
    return Counter(str(e) for e in table["error"].to_pylist() if e)


def eval_rows(videos: pa.Table, spec: ClipSpec, clip_len: int, max_clips: int) -> pa.Table:
    """One row per (video, chunk of at most `max_clips` of its evaluation clips)."""
    counts = [len(clip_indices(spec, int(n), clip_len)) for n in videos["num_frames"].to_pylist()]
    chunks = [max(1, math.ceil(c / max_clips)) for c in counts]
    take = np.repeat(np.arange(videos.num_rows), chunks)
    chunk = np.concatenate([np.arange(c) for c in chunks]) if chunks else np.zeros(0, int)
    cols = [c for c in EVAL_ROW_COLUMNS if c in videos.column_names]
    rows = videos.select(cols).take(pa.array(take, pa.int64()))
    if "label" not in cols:
        rows = rows.append_column("label", pa.array(np.full(len(take), -1, np.int64)))
    if "split" not in cols:
        rows = rows.append_column("split", pa.array([""] * len(take)))
    return rows.append_column("chunk", pa.array(chunk.astype(np.int64)))


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs (picklable): clip positions, sizes, storage."""

    clips: ClipSpec
    clip_len: int
    resize: tuple[int, int] | None
    crop: tuple[int, int]
    max_clips: int
    decode_threads: int = 1
    storage_options: storage.StorageOptions | None = None

    @classmethod
    def from_settings(
        cls, clips: str, data: DataConfig, max_clips: int, clip_len: int | None = None
    ) -> DecodeSpec:
        aug: AugmentSettings = data.augment
        spec = parse_clip_spec(clips)
        length = spec.clip_len if spec.kind == "sliding" else (clip_len or data.clip_len)
        if not aug.crop:
            raise ValueError("data.augment.crop: evaluation needs a crop size (centre crop)")
        return cls(
            clips=spec,
            clip_len=length,
            resize=cast("tuple[int, int] | None", tuple(aug.resize) if aug.resize else None),
            crop=cast("tuple[int, int]", tuple(aug.crop)),
            max_clips=max_clips,
            decode_threads=data.decode_threads,
            storage_options=storage.StorageOptions(endpoint_url=data.endpoint_url or None),
        )


def decode_eval_row(row: dict[str, Any], spec: DecodeSpec) -> list[dict[str, Any]]:
    """The centre-cropped clips of one eval row, one dict per clip; a row that cannot be
    read gives one placeholder (`valid` False, `skip_reason`). Never raises for bad video."""
    n = int(row["num_frames"])
    idx = clip_indices(spec.clips, n, spec.clip_len)
    first = int(row["chunk"]) * spec.max_clips
    idx = idx[first : first + spec.max_clips]
    base = {"video_id": str(row["video_id"]), "label": int(row["label"])}
    shape = (spec.clip_len, *spec.crop, 3)
    try:
        frames = read_row_frames(
            row, idx.reshape(-1), spec.resize, spec.storage_options, spec.decode_threads
        )
        clips = frames.reshape(len(idx), spec.clip_len, *frames.shape[1:])
        h, w = clips.shape[2:4]
        if h < spec.crop[0] or w < spec.crop[1]:
            raise RowSkip("augment_error")
        top, left = center_crop_params(h, w, spec.crop)
        return [
            {
                **base,
                "clip": crop_clip(clip, top, left, spec.crop),
                "clip_index": first + i,
                "valid": True,
                "skip_reason": "",
            }
            for i, clip in enumerate(clips)
        ]
    except RowSkip as e:
        return [
            {
                **base,
                "clip": np.zeros(shape, np.uint8),
                "clip_index": first,
                "valid": False,
                "skip_reason": e.reason,
            }
        ]


def _decode_batch(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    n = len(batch["video_id"])
    out: list[dict[str, Any]] = []
    for i in range(n):
        out.extend(decode_eval_row({k: batch[k][i] for k in batch}, spec))
    return {k: np.stack([np.asarray(r[k]) for r in out]) for k in out[0]}


def build_eval_dataset(
    rows: pa.Table, spec: DecodeSpec, data: DataConfig, decode_tasks: int | None = None
):
    """Ray Data dataset of decoded evaluation clips (one output row per clip); each task
    decodes `data.rows_per_task` chunks, one at a time; at most `decode_tasks` run at
    once (None = as many as the cluster's CPUs allow)."""
    step = max(1, data.rows_per_task)
    blocks = [rows.slice(i, step) for i in range(0, rows.num_rows, step)]
    return ray.data.from_arrow(blocks).map_batches(
        _decode_batch,  # type: ignore[arg-type]  # Ray types fn as 1-arg; fn_kwargs passes spec
        fn_kwargs={"spec": spec},
        batch_size=1,
        batch_format="numpy",
        num_cpus=data.num_cpus_per_task,
        zero_copy_batch=True,
        compute=ray.data.TaskPoolStrategy(size=decode_tasks),
    )


# --------------------------------------------------------------------------- inference


def clips_to_input(clips: np.ndarray, device: torch.device) -> torch.Tensor:
    """(B, T, H, W, C) uint8 clips → the backbone's float input on `device`."""
    t = torch.from_numpy(np.ascontiguousarray(clips)).to(device)
    return clip_to_input(t, DeviceSettings(device))


@torch.no_grad()
def infer_batch(
    module: nn.Module, batch: dict[str, np.ndarray], device: torch.device, bf16: bool = False
) -> dict[str, np.ndarray]:
    """Model outputs for the valid clips of a decoded batch (zeros for invalid rows);
    the identity columns pass through."""
    valid = np.asarray(batch["valid"], dtype=bool)
    out = {k: np.asarray(batch[k]) for k in ("video_id", "label", "clip_index", "valid")}
    out["skip_reason"] = np.asarray(batch["skip_reason"])
    if valid.any():
        x = clips_to_input(np.asarray(batch["clip"])[valid], device)
        ctx = (
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
            if bf16
            else torch.autocast(device_type=device.type, enabled=False)
        )
        with ctx:
            outputs = module(x)
        for k, v in outputs.items():
            arr = v.float().cpu().numpy()
            full = np.zeros((len(valid), *arr.shape[1:]), np.float32)
            full[valid] = arr
            out[f"out_{k}"] = full
    return out


def infer_in_process(
    module: nn.Module, ds, device: torch.device, batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """`ds` through `module` in this process (a train worker's monitor)."""
    was_training = module.training
    module.eval()
    try:
        for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            yield infer_batch(module, batch, device)
    finally:
        module.train(was_training)


# --------------------------------------------------------------------------- per video


@dataclass
class VideoOutputs:
    """Per-video means of per-clip model outputs, plus what was skipped and why."""

    video_ids: list[str]
    labels: np.ndarray  # (N,) int64
    splits: list[str]
    num_clips: np.ndarray  # (N,) valid clips averaged per video
    outputs: dict[str, np.ndarray]  # key -> (N, D) float32
    skipped: dict[str, int] = field(default_factory=dict)  # videos skipped, by reason
    clip_correct: int = 0  # clips whose argmax of "probs" is the label (classification)
    clip_total: int = 0

    def split_mask(self, split: str) -> np.ndarray:
        return np.array([s == split for s in self.splits], dtype=bool)

    def to_table(self) -> pa.Table:
        cols: dict[str, Any] = {
            "video_id": pa.array(self.video_ids, pa.string()),
            "label": pa.array(self.labels, pa.int64()),
            "split": pa.array(self.splits, pa.string()),
            "num_clips": pa.array(self.num_clips, pa.int64()),
        }
        for k, v in self.outputs.items():
            cols[k] = _column(np.asarray(v, np.float32))
        meta = {"rayssl.skipped": ",".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))}
        return pa.table(cols).replace_schema_metadata(meta)

    @classmethod
    def from_table(cls, table: pa.Table) -> VideoOutputs:
        fixed = {"video_id", "label", "split", "num_clips"}
        missing = fixed - set(table.column_names)
        if missing:
            raise ValueError(f"not a features table: missing columns {sorted(missing)}")
        outputs = {name: _array(table[name]) for name in table.column_names if name not in fixed}
        meta = (table.schema.metadata or {}).get(b"rayssl.skipped", b"").decode()
        skipped = {k: int(v) for k, v in (p.split("=") for p in meta.split(",") if p)}
        return cls(
            video_ids=table["video_id"].to_pylist(),
            labels=table["label"].to_numpy().astype(np.int64),
            splits=table["split"].to_pylist(),
            num_clips=table["num_clips"].to_numpy().astype(np.int64),
            outputs=outputs,
            skipped=skipped,
        )


def _column(v: np.ndarray) -> pa.Array:
    """A feature column: (N, D) as list<float32> rows; (N, G, D) token maps as lists of
    G fixed-size lists of D floats."""
    if v.ndim == 3:
        n, g, d = v.shape
        inner = pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), d)
        return pa.ListArray.from_arrays(pa.array(np.arange(n + 1) * g, pa.int32()), inner)
    return pa.array(list(v), pa.list_(pa.float32()))


def _array(column: pa.ChunkedArray) -> np.ndarray:
    """The array a `_column` holds: (N, D) or (N, G, D) float32."""
    if pa.types.is_list(column.type) and pa.types.is_fixed_size_list(column.type.value_type):
        n = len(column)
        flat = pa.concat_arrays([c.flatten().flatten() for c in column.chunks]) if n else None
        d = column.type.value_type.list_size
        if flat is None:
            return np.zeros((0, 0, d), np.float32)
        return flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, -1, d)
    return np.array(column.to_pylist(), dtype=np.float32)


def aggregate(
    batches: Iterable[dict[str, np.ndarray]], videos: pa.Table, skipped: Counter[str]
) -> VideoOutputs:
    """Average per-clip outputs (`out_<key>` columns) per video, in manifest order.

    `videos` gives labels and splits; `skipped` starts with the manifest's own skips and
    gains the videos no clip of which could be read.
    """
    sums: dict[str, dict[str, np.ndarray]] = {}
    counts: Counter[str] = Counter()
    failed: dict[str, str] = {}
    clip_correct = clip_total = 0
    for b in batches:
        valid = np.asarray(b["valid"], dtype=bool)
        ids = [str(v) for v in b["video_id"]]
        for i in np.flatnonzero(~valid):
            failed.setdefault(ids[i], str(b["skip_reason"][i]))
        keys = [k for k in b if k.startswith("out_")]
        if "out_probs" in b and valid.any():
            labels = np.asarray(b["label"])[valid]
            clip_correct += int((b["out_probs"][valid].argmax(1) == labels).sum())
            clip_total += int(valid.sum())
        for i in np.flatnonzero(valid):
            acc = sums.setdefault(ids[i], {})
            for k in keys:
                # vectors summed in float64; token maps (G, D) in float32 (half the memory)
                v = b[k][i].astype(np.float64 if b[k][i].ndim == 1 else np.float32)
                acc[k] = acc[k] + v if k in acc else v.copy()
            counts[ids[i]] += 1
    order = [v for v in videos["video_id"].to_pylist() if v in sums]
    lookup = {v: i for i, v in enumerate(videos["video_id"].to_pylist())}
    skipped = Counter(skipped)
    for vid, reason in failed.items():
        if vid not in sums:
            skipped[reason] += 1
    keys = sorted({k for acc in sums.values() for k in acc})
    outputs = {
        k[len("out_") :]: np.stack([sums[v][k] / counts[v] for v in order]).astype(np.float32)
        if order
        else np.zeros((0, 0), np.float32)
        for k in keys
    }
    labels = videos["label"].to_pylist() if "label" in videos.column_names else None
    splits = videos["split"].to_pylist() if "split" in videos.column_names else None
    return VideoOutputs(
        video_ids=order,
        labels=np.array([labels[lookup[v]] if labels else -1 for v in order], np.int64),
        splits=[splits[lookup[v]] if splits else "" for v in order],
        num_clips=np.array([counts[v] for v in order], np.int64),
        outputs=outputs,
        skipped=dict(skipped),
        clip_correct=clip_correct,
        clip_total=clip_total,
    )
