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
`build_clip_dataset` wraps it in a Ray Data `map_batches` over a fixed table of rows.

One dataset per worker per run (`build_run_dataset`). Training does not build a
dataset per epoch: every Ray Data execution pays ~1 s before its first batch (the
executor, its operators and tasks start again) and leaves per-dataset metric series
and stats in Ray's own processes that are never freed (ray-project/ray 65029, 43924).
Iterating one dataset once per epoch, Ray's documented pattern, does not avoid the
second cost in Ray 2.60: every `iter_batches` call is a new execution with its own
dataset id (`Dataset.get_dataset_id()` counts executions). So a worker's training data
is ONE execution for many epochs (the training loop starts a new one at the first epoch
boundary after `loop.ROWS_PER_STREAM` rows: a long execution keeps per-block state in
the iterating process, docs/PERFORMANCE.md section 6), and the epoch reaches the
sampling through the rows themselves: each draw row carries its `epoch` (and `part`:
training draws, then the epoch's validation draws), so `sample_row` seeds
`clip_rng(seed, video, epoch, draw)` exactly as before and nothing in a task needs to
ask anyone which epoch it is.

The rows come from `DrawPlan`, a picklable description of the worker's remaining epochs
(the videos, or the curriculum's per-epoch subset; seed; rank and world size; the
resumed epoch's already-trained draws; the step cap). A one-task Ray Data source
(`DrawSource`: a streaming generator, 0 CPUs, pinned to the worker's node) walks it
epoch by epoch, calling the same `epoch_rows` as before, and yields its draw rows;
Ray's streaming backpressure keeps it a bounded distance ahead of training (it never
materialises all epochs). The dataset's `target_max_block_size` is one byte, so Ray
Data does not coalesce the source's small rows into one block (by default it would
buffer them up to 128 MiB before the first decode task starts). The decode
`map_batches` runs separately (never fused into the source: the source's remote
arguments differ) with `preserve_order`, so rows arrive in `epoch_rows` order.
`RunStream` cuts the stream into the loop's batches at every (epoch, part) boundary
using the row counts the plan gives (it never waits for the next epoch's first block
to end an epoch). A resumed or restarted worker builds a new plan from its checkpoint:
the same rows as an uninterrupted run minus the draws already trained.

Chosen over: a source whose tasks ask an actor for the current epoch (one more actor to
lose, and read tasks planned ahead of time would race the epoch switch); a per-epoch
seed table, or one table over all (epoch, row) pairs sliced per epoch (every slice is
again a new execution, and a table of all epochs' rows grows with the run's length).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from rayssl import testhooks
from rayssl.clips.sampling import clip_rng, fraction_mask
from rayssl.clips.transforms import AugmentConfig
from rayssl.config import AugmentSettings, DataConfig
from rayssl.io import storage
from rayssl.io.video import (
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

#: `part` of a draw row in a run's stream: a training draw, or a validation draw (sampled
#: with the held-out settings, `SamplerSpec.train` False).
TRAIN, VAL = 0, 1

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


def _sample_batch(
    batch: dict[str, np.ndarray], spec: SamplerSpec, val_spec: SamplerSpec | None = None
) -> dict[str, np.ndarray]:
    n = len(batch["video_id"])
    rows = [{k: batch[k][i] for k in batch} for i in range(n)]
    samples = []
    for r in rows:
        row_spec = val_spec if val_spec is not None and r.get("part", TRAIN) == VAL else spec
        samples.append(
            _placeholder(row_spec, r, PADDING) if r.get("pad", False) else sample_row(r, row_spec)
        )
    out: dict[str, np.ndarray] = {}
    for key in samples[0]:
        out[key] = np.stack([np.asarray(s[key]) for s in samples])
    for key in ("video_id", "class_label", "epoch", "draw", "pos", "pad", "part", "run_epoch"):
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
    """A Ray Data dataset of samples for a fixed table of draw rows (one output row per
    draw; previews and benchmarks: training uses `build_run_dataset`)."""
    import ray

    block_rows = max(data_cfg.rows_per_task, 1)
    blocks = [rows.slice(i, block_rows) for i in range(0, rows.num_rows, block_rows)]
    return _decode(ray.data.from_arrow(blocks), data_cfg, {"spec": spec})


def _decode(source, data_cfg: DataConfig, fn_kwargs: dict[str, Any]):
    """`source`'s draw rows -> samples (`_sample_batch` tasks of `data.rows_per_task`
    rows), under the worker's decode limits."""
    extra: dict[str, Any] = {}
    if data_cfg.decode_resources:
        extra["resources"] = dict(data_cfg.decode_resources)
    ds = source.map_batches(
        _sample_batch,  # type: ignore[arg-type]  # Ray types fn as 1-arg; fn_kwargs passes spec
        fn_kwargs=fn_kwargs,
        batch_size=max(data_cfg.rows_per_task, 1),
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


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class DrawPlan:
    """The draw rows of one worker's remaining epochs (see the module docstring).

    Picklable and cheap: the run's source task expands it epoch by epoch, and the
    training loop asks it for the row counts that end each epoch's batches.
    """

    #: usable training videos (in easy-first order under a curriculum)
    videos: pa.Table
    clips_per_video: int
    seed: int
    rank: int
    world_size: int
    start_epoch: int
    epochs: int
    #: the epoch's videos under a curriculum (epoch -> a prefix of `videos`); None: all
    curriculum: Callable[[int], pa.Table] | None = None
    #: a resumed epoch: which one, the draws it already trained (per place), its steps
    resumed_epoch: int = -1
    resumed_done: np.ndarray | None = None
    resumed_steps: int = 0
    #: `train.max_steps_per_epoch` (0: none) and the worker's batch size
    max_steps: int = 0
    batch_size: int = 1
    #: validation videos and draws per video (None: no validation part)
    val_videos: pa.Table | None = None
    val_clips_per_video: int = 1

    def epoch_videos(self, epoch: int) -> pa.Table:
        return self.curriculum(epoch) if self.curriculum is not None else self.videos

    def done(self, epoch: int) -> np.ndarray | None:
        return self.resumed_done if epoch == self.resumed_epoch else None

    def train_rows(self, epoch: int) -> pa.Table:
        """This worker's draw rows of `epoch` (`epoch_rows`), cut to the step cap."""
        rows = epoch_rows(
            self.epoch_videos(epoch),
            self.clips_per_video,
            self.seed,
            epoch,
            self.rank,
            self.world_size,
            done=self.done(epoch),
        )
        if self.max_steps:
            steps = self.resumed_steps if epoch == self.resumed_epoch else 0
            rows = rows.slice(0, max(self.max_steps - steps, 0) * self.batch_size)
        return rows

    def val_rows(self) -> pa.Table | None:
        """This worker's validation rows (the same every epoch: epoch 0's, unshuffled)."""
        if self.val_videos is None or not self.val_videos.num_rows:
            return None
        return epoch_rows(
            self.val_videos,
            self.val_clips_per_video,
            self.seed,
            0,
            self.rank,
            self.world_size,
            shuffle=False,
        )

    def parts(self) -> Iterator[tuple[int, int, pa.Table]]:
        """(epoch, part, rows) of the remaining epochs, in training order."""
        val = self.val_rows()
        for epoch in range(self.start_epoch, self.epochs):
            yield epoch, TRAIN, self.train_rows(epoch)
            if val is not None:
                yield epoch, VAL, val

    def blocks(self, rows_per_task: int) -> Iterator[pa.Table]:
        """The stream's source blocks: every part's rows with their `part` and the
        training epoch they belong to (`run_epoch`; a validation row's `epoch`, its
        sampling epoch, is always 0), in slices of `rows_per_task` rows (a block never
        mixes two parts)."""
        step = max(rows_per_task, 1)
        for epoch, part, rows in self.parts():
            n = rows.num_rows
            tagged = rows.append_column(
                "part", pa.array(np.full(n, part, dtype=np.int64))
            ).append_column("run_epoch", pa.array(np.full(n, epoch, dtype=np.int64)))
            for i in range(0, tagged.num_rows, step):
                yield tagged.slice(i, step)


class DrawSource(Datasource):
    """A Ray Data source of one read task, a streaming generator of `DrawPlan.blocks`."""

    def __init__(self, plan: DrawPlan, rows_per_task: int) -> None:
        self.plan = plan
        self.rows_per_task = rows_per_task

    def get_name(self) -> str:
        return "Draws"

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        plan, step = self.plan, self.rows_per_task
        meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: plan.blocks(step), meta)]


def build_run_dataset(
    plan: DrawPlan, spec: SamplerSpec, val_spec: SamplerSpec | None, data_cfg: DataConfig
):
    """A worker's one dataset for the whole run: the plan's draw rows, decoded in order."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    source = ray.data.read_datasource(
        DrawSource(plan, data_cfg.rows_per_task),
        override_num_blocks=1,
        ray_remote_args={
            # the generator only slices tables: no CPU; it lives and dies with this node;
            # max_retries also keeps it unfused from the decode tasks (other remote args)
            "num_cpus": 0,
            "max_retries": 3,
            "scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=False),
        },
    )
    ds = _decode(source, data_cfg, {"spec": spec, "val_spec": val_spec})
    ds.context.execution_options.preserve_order = True
    # Ray Data coalesces a read task's small blocks up to `target_max_block_size`
    # (128 MiB): the generator's draw rows would wait in one block until then (for ever,
    # in a long run). One byte makes every output a block of one row (a read's, so the
    # decode tasks bundle `rows_per_task` of them; a decode task's output too, which
    # costs an object per sample, nothing more).
    ds.context.target_max_block_size = 1
    return ds


class RunStream:
    """The loop's batches of a run dataset, part by part.

    `batches(epoch, part, n)` yields the next `n` rows as batches of `batch_size` rows
    (the last one shorter), checking that every row belongs to (epoch, part); rows of
    the next part stay buffered for the next call.
    """

    def __init__(self, ds, batch_size: int, prefetch_rows: int) -> None:
        self.batch_size = max(batch_size, 1)
        self._ds = ds
        self._prefetch = max(1, prefetch_rows)  # blocks of one row (`build_run_dataset`)
        self._blocks: Iterator[dict[str, np.ndarray]] | None = None
        self._pending: dict[str, np.ndarray] | None = None

    def close(self) -> None:
        """Stop the run's execution (its tasks and buffered blocks) now."""
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()
        self._blocks, self._pending = None, None

    def _next_block(self) -> dict[str, np.ndarray] | None:
        if self._pending is not None:
            block, self._pending = self._pending, None
            return block
        if self._blocks is None:  # the execution starts with the first epoch's first batch
            self._blocks = iter(
                self._ds.iter_batches(
                    batch_size=None, batch_format="numpy", prefetch_batches=self._prefetch
                )
            )
        return next(self._blocks, None)

    def batches(self, epoch: int, part: int, n: int) -> Iterator[dict[str, np.ndarray]]:
        pieces: list[dict[str, np.ndarray]] = []
        have = 0
        while n > 0:
            block = self._next_block()
            if block is None:
                raise RuntimeError(
                    f"the run's data stream ended {n} rows before the end of epoch "
                    f"{epoch + 1} (part {part})"
                )
            size = len(block["run_epoch"])
            take = min(size, n)
            head = _rows(block, 0, take)
            if not (np.all(head["run_epoch"] == epoch) and np.all(head["part"] == part)):
                got = sorted({(int(e) + 1, int(p)) for e, p in zip(*_keys(head), strict=True)})
                raise RuntimeError(
                    f"the run's data stream is out of step: expected epoch {epoch + 1} part "
                    f"{part}, got (epoch, part) {got}"
                )
            if take < size:
                self._pending = _rows(block, take, size)
            n -= take
            pieces.append(head)
            have += take
            while have >= self.batch_size:
                batch, rest = _split(_concat(pieces), self.batch_size)
                yield batch
                pieces, have = ([rest] if rest else []), have - self.batch_size
        if have:
            yield _concat(pieces)


def _keys(block: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return block["run_epoch"], block["part"]


def _rows(block: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in block.items()}


def _concat(pieces: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(pieces) == 1:
        return pieces[0]
    return {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}


def _split(
    batch: dict[str, np.ndarray], n: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    size = len(batch["run_epoch"])
    if size == n:
        return batch, None
    return _rows(batch, 0, n), _rows(batch, n, size)
