"""The clip pipeline: manifest rows -> Ray Data -> uint8 clips + targets.

Per epoch, the usable manifest rows (no error, in the split, in the data fraction) are
expanded to `clips_per_video` draws per video, shuffled with a generator seeded by
(seed, epoch), and sharded over the training workers (equal length, so every DDP
worker takes the same number of steps). Each draw becomes exactly one output row:

    sample_row(row) : plan (pretext) -> read bytes -> decode only the frames the plan
                      names (one decode for all the clips of a sample) -> augment ->
                      targets (pretext)

A draw whose video cannot be read or is too short yields a masked placeholder row
(`valid` = False, `skip_reason` says why): nothing is silently dropped, the skip is
counted in the training metrics, and epoch boundaries stay exact. All random choices
of a draw come from `clip_rng(seed, video_id, epoch, draw)`.

`sample_row` is plain Python (unit-tested and benchmarked without Ray);
`build_clip_dataset` wraps it in a Ray Data `map_batches`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rayssl import testhooks
from rayssl.config import AugmentSettings, DataConfig
from rayssl.data import storage
from rayssl.data.sampling import clip_rng, fraction_mask
from rayssl.data.transforms import AugmentConfig
from rayssl.data.video import (
    DEFAULT_ACCESS,
    ERROR_REASONS,
    VideoAccess,
    VideoError,
    check_frame_count,
    read_frames,
)


class ClipTask(Protocol):
    """What the pipeline asks of the task whose samples it makes (every
    `rayssl.pretext.base.Pretext` is one; the pipeline imports no pretext)."""

    clip_len: int

    def plan(self, num_frames: int, rng: np.random.Generator) -> Any:
        """The frames to decode for one sample (a ClipPlan with `.clips`), or None."""
        ...

    def make_sample(
        self,
        frames: list[np.ndarray],
        plan: Any,
        rng: np.random.Generator,
        augment: AugmentConfig | None,
        train: bool = True,
    ) -> dict[str, np.ndarray]: ...

    def target_spec(
        self, clip_shape: tuple[int, ...]
    ) -> dict[str, tuple[tuple[int, ...], Any]]: ...


#: Why a draw became a masked placeholder row (counted per reason in training metrics).
SKIP_REASONS = tuple(dict.fromkeys(("too_short", "augment_error", *ERROR_REASONS)))

#: `skip_reason` of the rows that only even out the workers' shards (not a skip: never
#: trained, never counted).
PADDING = "padding"

#: Manifest columns a draw row carries into the sampler.
ROW_COLUMNS = ("uri", "video_id", "num_frames", "keyframes", "keyframe_pts", "height", "width")
#: ... and those an old manifest may lack (then the reader counts frames, skips none).
OPTIONAL_ROW_COLUMNS = ("pts_start", "pts_step", "size_bytes")


def augment_config(settings: AugmentSettings) -> AugmentConfig | None:
    """The transforms' config for the data settings (None = no crop/flip/jitter)."""
    if not settings.enabled:
        return None
    return AugmentConfig(
        # validate() guarantees two entries (height, width)
        resize=cast("tuple[int, int] | None", tuple(settings.resize) if settings.resize else None),
        crop=cast("tuple[int, int]", tuple(settings.crop)),
        flip_prob=settings.flip_prob,
        jitter_prob=settings.jitter_prob,
        brightness=settings.brightness,
        contrast=settings.contrast,
        saturation=settings.saturation,
        hue=settings.hue,
        per_frame_jitter=settings.per_frame_jitter,
    )


@dataclass(frozen=True)
class SamplerSpec:
    """Everything `sample_row` needs besides the row (picklable, sent to workers)."""

    pretext: ClipTask
    settings: AugmentSettings
    seed: int
    train: bool = True
    decode_threads: int = 1
    storage_options: storage.StorageOptions | None = None
    #: Let the reader drop the non-reference frames a clip does not use (rows with a pts
    #: grid only; `read_frames`' `skip_nonref`).
    skip_nonref: bool = True
    #: caps and streaming (`data.max_*`, `data.stream_*`).
    access: VideoAccess = DEFAULT_ACCESS

    @property
    def decode_size(self) -> tuple[int, int] | None:
        """Frames are resized while converting from YUV (one swscale pass)."""
        # validate() guarantees two entries (height, width)
        return cast(
            "tuple[int, int] | None", tuple(self.settings.resize) if self.settings.resize else None
        )

    def output_clip_shape(self, row: dict[str, Any]) -> tuple[int, int, int, int]:
        t = self.pretext.clip_len
        if self.settings.enabled:
            h, w = self.settings.crop
        elif self.settings.resize:
            h, w = self.settings.resize
        else:
            h, w = int(row["height"]), int(row["width"])
        return (t, h, w, 3)


def sampler_spec(
    data: DataConfig,
    pretext: ClipTask,
    seed: int,
    train: bool = True,
    options: storage.StorageOptions | None = None,
) -> SamplerSpec:
    """The sampler of a run's data settings (training draws; `train=False`: held-out)."""
    return SamplerSpec(
        pretext,
        data.augment,
        seed,
        train,
        data.decode_threads,
        options,
        skip_nonref=data.skip_nonref,
        access=VideoAccess.from_config(data),
    )


def _placeholder(spec: SamplerSpec, row: dict[str, Any], reason: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: np.zeros(shape, dtype=dtype)
        for name, (shape, dtype) in spec.pretext.target_spec(spec.output_clip_shape(row)).items()
    }
    out["indices"] = np.full(spec.pretext.clip_len, -1, dtype=np.int64)
    out.update(valid=False, skip_reason=reason, resampled=False)
    return out


class RowSkip(Exception):
    """A manifest row whose frames cannot be read; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_row_frames(
    row: dict[str, Any],
    wanted: np.ndarray,
    size: tuple[int, int] | None,
    options: storage.StorageOptions | None,
    threads: int = 1,
    skip_nonref: bool = True,
    access: VideoAccess = DEFAULT_ACCESS,
) -> np.ndarray:
    """Frames `wanted` ((N,) indices) of a manifest row's video as (N, H, W, 3) uint8, in
    one decode; raises `RowSkip` with the reason when the video cannot be read.

    The file is opened by `video_source` under `access`: a large S3 object is streamed
    (ranged GETs of the blocks the frames lie in), never fetched whole."""
    source = None
    try:
        size_bytes = _size_bytes(row)
        check_frame_count(int(row["num_frames"]), size_bytes)
        source = access.source(str(row["uri"]), options, size_bytes)
        return read_frames(
            source,
            wanted,
            size=size,
            keyframes=_as_list(row.get("keyframes")),
            keyframe_pts=_as_list(row.get("keyframe_pts")),
            threads=threads,
            pts_start=int(row.get("pts_start") or 0),
            pts_step=int(row.get("pts_step") or 0),
            skip_nonref=skip_nonref,
            limits=access.limits,
        )
    except VideoError as e:
        raise RowSkip(e.reason) from e
    except storage.StorageNotFoundError as e:
        raise RowSkip("missing") from e
    except storage.StorageError as e:
        raise RowSkip("storage_error") from e
    finally:
        if isinstance(source, storage.RangedReader):
            source.close()


def _size_bytes(row: dict[str, Any]) -> int:
    """The row's `size_bytes` (-1: unknown, as an old manifest or a failed listing)."""
    value = row.get("size_bytes")
    return -1 if value is None else int(value)


def sample_row(row: dict[str, Any], spec: SamplerSpec) -> dict[str, Any]:
    """Turn one draw row (manifest fields + `epoch`, `draw`) into one sample.

    Returns a dict of arrays: the pretext's targets ("clip" (T, H, W, 3) uint8, ...),
    "indices" (T,) source frame of every output frame of the first clip, "valid",
    "skip_reason" and "resampled". Never raises for a bad video.
    """
    rng = clip_rng(spec.seed, str(row["video_id"]), int(row["epoch"]), int(row["draw"]))
    try:  # before anything is planned (allocated) from the row's frame count
        check_frame_count(int(row["num_frames"]), _size_bytes(row))
    except VideoError as e:
        return _placeholder(spec, row, e.reason)
    plan = spec.pretext.plan(int(row["num_frames"]), rng)
    if plan is None:
        return _placeholder(spec, row, "too_short")
    lengths = [len(c) for c in plan.clips]
    try:
        frames = read_row_frames(
            row,
            np.concatenate(plan.clips),
            spec.decode_size,
            spec.storage_options,
            spec.decode_threads,
            spec.skip_nonref,
            spec.access,
        )
    except RowSkip as e:
        return _placeholder(spec, row, e.reason)
    clips = np.split(frames, np.cumsum(lengths)[:-1])
    augment = augment_config(spec.settings)
    try:
        sample: dict[str, Any] = spec.pretext.make_sample(
            clips, plan, rng, augment, train=spec.train
        )
    except ValueError:  # e.g. a native-size video smaller than the crop
        return _placeholder(spec, row, "augment_error")
    sample["indices"] = plan.clips[0].astype(np.int64)
    sample.update(valid=True, skip_reason="", resampled=plan.resampled)
    return sample


def _as_list(v: Any) -> list[int] | None:
    if v is None:
        return None
    return [int(x) for x in v]


def _sample_batch(batch: dict[str, np.ndarray], spec: SamplerSpec) -> dict[str, np.ndarray]:
    n = len(batch["video_id"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    samples = [
        _placeholder(spec, r, PADDING) if r.get("pad", False) else sample_row(r, spec) for r in rows
    ]
    out: dict[str, np.ndarray] = {}
    for key in samples[0]:
        out[key] = np.stack([np.asarray(s[key]) for s in samples])
    for key in ("video_id", "class_label", "epoch", "draw", "pos", "pad"):
        if key in batch:
            out[key] = np.asarray(batch[key])
    nodes = testhooks.decode_node_column(n)  # tests: where was this decoded?
    if nodes is not None:
        out["decode_node"] = nodes
    return out


# --------------------------------------------------------------------------- rows


def usable_videos(
    table: pa.Table, split: str = "", fraction: float = 1.0, seed: int = 0
) -> pa.Table:
    """Manifest rows that decode, in `split` ('' = all), restricted to a nested fraction."""
    mask = pc.and_(pc.is_null(table["error"]), pc.greater(table["num_frames"], 0))
    if split:
        mask = pc.and_(mask, pc.equal(table["split"], split))
    table = table.filter(mask)
    if fraction < 1.0 and table.num_rows:
        table = table.filter(pa.array(fraction_mask(table["video_id"].to_pylist(), fraction, seed)))
    return table


def epoch_order(n_draws: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The epoch's draw order: a (seed, epoch) permutation of the draws 0..n_draws-1
    (draw k is video k // clips_per_video, draw number k % clips_per_video)."""
    if not shuffle:
        return np.arange(n_draws)
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, 7]).permutation(n_draws)


def epoch_rows(
    videos: pa.Table,
    clips_per_video: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    done: np.ndarray | None = None,
) -> pa.Table:
    """Draw rows of one epoch for worker `rank` of `world_size`.

    The epoch's draws are taken in a (seed, epoch) permutation and dealt round-robin to
    the workers. `pos` is a draw's place in that permutation; `done` (bool, one entry
    per place) marks draws a resumed epoch already trained: they are left out and the
    rest are dealt over the current workers, however many there are now. Every worker
    gets ceil(R / world_size) rows for the R draws left, so DDP workers take the same
    number of steps; the few rows that even out the shards are `pad` rows, which carry
    a real video's fields but are masked out (never trained, never counted).
    """
    n_videos = videos.num_rows
    if n_videos == 0:
        raise ValueError("no usable videos (check the manifest's errors, split and fraction)")
    n_draws = n_videos * clips_per_video
    order = epoch_order(n_draws, seed, epoch, shuffle)
    positions = np.arange(n_draws)
    if done is not None:
        if len(done) != n_draws:
            raise ValueError(
                f"epoch {epoch}: the checkpoint's progress covers {len(done)} draws, but the "
                f"epoch has {n_draws} (did the manifest, split, fraction or "
                "data.clips_per_video change since the checkpoint?)"
            )
        positions = positions[~np.asarray(done, dtype=bool)]
    per_worker = -(-len(positions) // world_size)
    slots = np.arange(per_worker) * world_size + rank
    pad = slots >= len(positions)
    if len(positions):
        pos = positions[np.where(pad, slots % len(positions), slots)]
    else:
        pos = np.zeros(0, dtype=np.int64)
    take = order[pos]
    video_idx, draw = take // clips_per_video, take % clips_per_video
    columns = list(ROW_COLUMNS) + [c for c in OPTIONAL_ROW_COLUMNS if c in videos.column_names]
    rows = videos.select(columns).take(pa.array(video_idx))
    label = videos["label"] if "label" in videos.column_names else pa.array([-1] * n_videos)
    return (
        rows.append_column("class_label", pa.array(np.asarray(label)[video_idx]))
        .append_column("epoch", pa.array(np.full(per_worker, epoch, dtype=np.int64)))
        .append_column("draw", pa.array(draw.astype(np.int64)))
        .append_column("pos", pa.array(pos.astype(np.int64)))
        .append_column("pad", pa.array(pad))
    )


def build_clip_dataset(rows: pa.Table, spec: SamplerSpec, data_cfg: DataConfig):
    """A Ray Data dataset of samples for the draw rows (one output row per draw)."""
    import ray

    block_rows = max(data_cfg.rows_per_task, 1)
    blocks = [rows.slice(i, block_rows) for i in range(0, rows.num_rows, block_rows)]
    source = ray.data.from_arrow(blocks)
    extra: dict[str, Any] = {}
    if data_cfg.decode_resources:
        extra["resources"] = dict(data_cfg.decode_resources)
    ds = source.map_batches(
        _sample_batch,  # type: ignore[arg-type]  # Ray types fn as 1-arg; fn_kwargs passes spec
        fn_kwargs={"spec": spec},
        batch_size=block_rows,
        batch_format="numpy",
        num_cpus=data_cfg.num_cpus_per_task,
        zero_copy_batch=True,
        **extra,
    )
    if data_cfg.decode_cpus_per_worker or data_cfg.object_store_mb_per_worker:
        from ray.data import ExecutionResources

        # this dataset's own context: the limits bind this worker's pipeline only
        ds.context.execution_options.resource_limits = ExecutionResources.for_limits(
            cpu=data_cfg.decode_cpus_per_worker or None,
            object_store_memory=data_cfg.object_store_mb_per_worker * 1024 * 1024 or None,
        )
    return ds
