"""`rayssl score`: the curriculum difficulty of every video of a manifest, with Ray Data.

The thesis's curriculum (3.2, Eq. 3.1) sorts the training videos by a score f: the share of
the summed motion-boundary magnitude that lies in the largest-motion block of the 4x4 grid,
the larger of the u and v shares (:func:`rayssl.clips.statistics.difficulty`).  A high f means
one block holds the dominant motion: an *easy* video; training uses them first
(:mod:`rayssl.train.curriculum`).

Per video (:func:`score_video`, one Ray Data task per batch of videos, one CPU each):

1. decode the evaluation clips ``clips`` (default ``uniform:1``: the centre ``clip_len``-frame
   clip; ``uniform:N`` averages f over N uniformly spaced clips; ``sliding:L:O`` also works)
   with the frame-exact reader, resized to ``resize`` (the training resize, 128x171) and
   centre-cropped to ``crop`` (112x112) -- the clips the evaluation decodes;
2. optical flow between consecutive frames (:func:`rayssl.clips.flow.compute_flow`, ``flow`` =
   ``dis`` | ``farneback`` | ``tvl1``): ``(clip_len - 1, crop, crop, 2)`` float32 pixels;
3. f = ``difficulty(flow)``; the video's score is the mean over its clips.

Output: a NEW manifest at ``out`` (local or ``s3://``, a ``.parquet`` path): every row of the
input, in order, with all its columns, plus

* ``difficulty`` (float64, in [0, 1]; NaN when the video could not be scored),
* ``difficulty_clips`` (int64, clips averaged; 0 when not scored),
* ``difficulty_error`` (string, null when scored): ``manifest_error`` (the input row has an
  ``error``; its reason is in ``difficulty_error_detail``), ``too_short`` (fewer frames than
  one clip), ``too_small`` (frames smaller than the crop at native size), a reader reason
  (``missing``, ``storage_error``, ``not_a_video``, ``decode_error``, ...), ``flow_error``,
  ``no_motion`` (f undefined for every clip), ``score_error`` (anything else);
* ``difficulty_error_detail`` (string, "" when scored);
* ``difficulty_settings`` (string): the settings fingerprint, e.g.
  ``v2;clips=uniform:1;clip_len=16;flow=dis;resize=128x171;crop=112x112``.

The input manifest is never modified (``out`` must be another file: real paths are
compared, so a symlink does not hide it), and no row is ever dropped: a video that cannot
be scored is a counted row with NaN.

Resume.  While the pass runs, the driver writes every Ray Data block of results as it arrives
to ``<out>.parts/part-*.parquet`` (``video_id``, ``uri``, ``num_frames``, ``settings``, the
score columns).  A later run with the same arguments reuses, without decoding, every video
whose ``(video_id, uri)`` has a finite score with the same ``settings`` fingerprint and the same
``num_frames`` in (newest last) the input manifest's own score columns, the previous output
manifest at ``out``, and the part files.  Failures are not reused: they are retried.  After
the final manifest is written the parts folder is removed (``keep_parts=True`` keeps it), so
the output manifest alone carries the resume state of a finished run.  Only the top-level
``part-*.parquet`` files of the parts folder are read and deleted: another file there, or
anything behind a symlinked sub-folder, is not the run's own.  ``overwrite=True``
deletes the parts first and rescores everything.  Only the driver writes (parts and the
manifest), so Ray workers need read access to the videos only.
"""

from __future__ import annotations

import io
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayssl.clips.flow import FLOW_ALGORITHMS, available_flow_algorithms, compute_flow
from rayssl.clips.pipeline import RowSkip, read_row_frames
from rayssl.clips.sampling import clip_indices
from rayssl.clips.statistics import difficulty
from rayssl.clips.transforms import center_crop_params, crop_clip
from rayssl.config import ClipSpec, parse_clip_spec
from rayssl.io import storage
from rayssl.io.manifest import ManifestError, read_manifest, write_manifest

__all__ = [
    "PART_SCHEMA",
    "SCORE_COLUMNS",
    "SCORE_VERSION",
    "ScoreSpec",
    "make_score_spec",
    "parts_uri",
    "run_score",
    "score_video",
]

#: Bumped whenever the score of a video could change for the same settings (a new scoring
#: rule): it is part of the fingerprint, so old results are not reused. 2: uniform:1 is the
#: centre clip (it was the first).
SCORE_VERSION = 2

#: Columns `rayssl score` adds to a manifest (replaced if the input already has them).
SCORE_COLUMNS = (
    "difficulty",
    "difficulty_clips",
    "difficulty_error",
    "difficulty_error_detail",
    "difficulty_settings",
)

#: One row per video in the part files of ``<out>.parts/``.
PART_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("uri", pa.string()),
        ("num_frames", pa.int64()),
        ("settings", pa.string()),
        ("difficulty", pa.float64()),
        ("difficulty_clips", pa.int64()),
        ("difficulty_error", pa.string()),
        ("difficulty_error_detail", pa.string()),
    ]
)

#: What a scoring task returns per video: a part row plus its manifest position and timings.
_RESULT_SCHEMA = PART_SCHEMA.append(pa.field("row_index", pa.int64()))
_RESULT_SCHEMA = _RESULT_SCHEMA.append(pa.field("decode_s", pa.float64()))
_RESULT_SCHEMA = _RESULT_SCHEMA.append(pa.field("flow_s", pa.float64()))

#: Manifest columns a scoring task needs.
_ITEM_COLUMNS = ("uri", "video_id", "num_frames", "keyframes", "keyframe_pts")

MANIFEST_ERROR = "manifest_error"
TOO_SHORT = "too_short"
#: Clips of one video decoded (and held) at a time by `score_video`.
SCORE_CHUNK_CLIPS = 8
TOO_SMALL = "too_small"
FLOW_ERROR = "flow_error"
NO_MOTION = "no_motion"
SCORE_ERROR = "score_error"
LOST = "no_result"  # defensive: Ray Data returned nothing for a video


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreSpec:
    """How every video is scored (sent to the Ray tasks; picklable).

    Attributes:
        clips: clip positions (``uniform:N`` or ``sliding:L:O``).
        clip_len: frames per clip for ``uniform`` (``sliding`` has its own length).
        flow: optical-flow algorithm, one of ``rayssl.clips.flow.FLOW_ALGORITHMS``.
        resize: ``(height, width)`` every frame is resized to before the crop, or None
            (native size).
        crop: ``(height, width)`` of the centre crop the flow is computed on.
        decode_threads: decoder threads per video.
        flow_threads: OpenCV threads in a scoring task (``cv2.setNumThreads``).
        storage_options: how tasks read the videos.
    """

    clips: ClipSpec
    clip_len: int
    flow: str
    resize: tuple[int, int] | None
    crop: tuple[int, int]
    decode_threads: int = 1
    flow_threads: int = 1
    storage_options: storage.StorageOptions | None = None

    @property
    def frames_per_clip(self) -> int:
        """Frames of one clip (= flow fields + 1)."""
        return self.clips.clip_len if self.clips.kind == "sliding" else self.clip_len

    @property
    def fingerprint(self) -> str:
        """Everything a score depends on, as one string (results are reused only when equal)."""
        resize = f"{self.resize[0]}x{self.resize[1]}" if self.resize else "native"
        return (
            f"v{SCORE_VERSION};clips={self.clips};clip_len={self.frames_per_clip};"
            f"flow={self.flow};resize={resize};crop={self.crop[0]}x{self.crop[1]}"
        )


def _pair(name: str, value: Any) -> tuple[int, int]:
    """An int (square) or two ints as (height, width), each >= 1; ValueError names ``name``."""
    items = [value, value] if isinstance(value, int | np.integer) else list(value)
    if len(items) != 2 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1 for v in items
    ):
        raise ValueError(f"{name}: expected a positive integer or (height, width), got {value!r}")
    return int(items[0]), int(items[1])


def make_score_spec(
    clips: str = "uniform:1",
    flow: str = "dis",
    resize: tuple[int, int] | None = (128, 171),
    crop: int | tuple[int, int] = 112,
    clip_len: int = 16,
    *,
    decode_threads: int = 1,
    flow_threads: int = 1,
    storage_options: storage.StorageOptions | None = None,
) -> ScoreSpec:
    """Check the scoring settings and build a :class:`ScoreSpec`.

    Raises:
        ValueError: naming the bad argument (``clips``, ``flow``, ``resize``, ``crop``,
            ``clip_len``, ``decode_threads``, ``flow_threads``).
    """

    try:
        spec = parse_clip_spec(clips)
    except ValueError as e:
        raise ValueError(f"clips: {e}") from None
    if flow not in FLOW_ALGORITHMS:
        raise ValueError(f"flow: expected one of {list(FLOW_ALGORITHMS)}, got {flow!r}")
    if flow not in available_flow_algorithms():
        raise ValueError(f"flow: {flow!r} needs OpenCV's contrib build (cv2.optflow)")
    if isinstance(clip_len, bool) or not isinstance(clip_len, int | np.integer) or clip_len < 2:
        raise ValueError(
            f"clip_len: expected an integer >= 2 (flow needs 2 frames), got {clip_len!r}"
        )
    if spec.kind == "sliding" and spec.clip_len < 2:
        raise ValueError(f"clips: a sliding clip needs >= 2 frames for flow, got {clips!r}")
    size = None if resize is None else _pair("resize", resize)
    crop_hw = _pair("crop", crop)
    if size is not None and (crop_hw[0] > size[0] or crop_hw[1] > size[1]):
        raise ValueError(f"crop: {crop_hw} does not fit in the resized frame {size}")
    for name, value in (("decode_threads", decode_threads), ("flow_threads", flow_threads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return ScoreSpec(
        clips=spec,
        clip_len=int(clip_len),
        flow=flow,
        resize=size,
        crop=crop_hw,
        decode_threads=decode_threads,
        flow_threads=flow_threads,
        storage_options=storage_options,
    )


# --------------------------------------------------------------------------------------------
# One video (the task body)
# --------------------------------------------------------------------------------------------


def _short(e: BaseException) -> str:
    return storage.redact(f"{type(e).__name__}: {e}")[:300]


def _result(
    row: dict[str, Any],
    spec: ScoreSpec,
    value: float = math.nan,
    clips: int = 0,
    error: str | None = None,
    detail: str = "",
) -> dict[str, Any]:
    return {
        "video_id": str(row["video_id"]),
        "uri": str(row["uri"]),
        "num_frames": int(row.get("num_frames") or 0),
        "settings": spec.fingerprint,
        "difficulty": float(value) if error is None else math.nan,
        "difficulty_clips": int(clips) if error is None else 0,
        "difficulty_error": error,
        "difficulty_error_detail": "" if error is None else storage.redact(detail)[:500],
        "decode_s": 0.0,
        "flow_s": 0.0,
    }


def score_video(row: dict[str, Any], spec: ScoreSpec) -> dict[str, Any]:
    """Score one manifest row; never raises for a bad video.

    Args:
        row: ``uri``, ``video_id``, ``num_frames`` (frames that decode) and, for seeking,
            ``keyframes`` / ``keyframe_pts`` (as the manifest has them).
        spec: the settings (:func:`make_score_spec`).

    Returns:
        A :data:`PART_SCHEMA` row: ``difficulty`` = mean over the clips of f in [0, 1]
        (``difficulty_clips`` clips with a defined f), or NaN with ``difficulty_error`` /
        ``difficulty_error_detail``; plus ``decode_s`` / ``flow_s``, seconds spent reading and
        decoding (incl. resize and crop) / computing flow and f.
    """

    num_frames = int(row.get("num_frames") or 0)
    length = spec.frames_per_clip
    if num_frames < length:
        return _result(row, spec, error=TOO_SHORT, detail=f"{num_frames} frames < {length}")
    try:
        idx = clip_indices(spec.clips, num_frames, spec.clip_len)
        scores: list[float] = []
        decode_s = flow_s = 0.0
        # Clips are decoded SCORE_CHUNK_CLIPS at a time: memory stays at one chunk of
        # frames whatever the video's length (sliding clips over an hour-long video).
        for first in range(0, len(idx), SCORE_CHUNK_CLIPS):
            chunk = idx[first : first + SCORE_CHUNK_CLIPS]
            t0 = time.perf_counter()
            try:
                frames = read_row_frames(
                    row, chunk.reshape(-1), spec.resize, spec.storage_options, spec.decode_threads
                )
            except RowSkip as e:
                cause = e.__cause__
                return _result(row, spec, error=e.reason, detail=_short(cause) if cause else "")
            clips = frames.reshape(len(chunk), chunk.shape[1], *frames.shape[1:])
            height, width = clips.shape[2:4]
            if height < spec.crop[0] or width < spec.crop[1]:
                return _result(
                    row, spec, error=TOO_SMALL, detail=f"frames {height}x{width} < crop {spec.crop}"
                )
            top, left = center_crop_params(height, width, spec.crop)
            t1 = time.perf_counter()
            decode_s += t1 - t0
            try:
                for clip in clips:
                    flow = compute_flow(
                        np.ascontiguousarray(crop_clip(clip, top, left, spec.crop)), spec.flow
                    )
                    scores.append(float(difficulty(flow)))
            except Exception as e:  # a flow/statistics failure on this video only
                out = _result(row, spec, error=FLOW_ERROR, detail=_short(e))
                out.update(decode_s=decode_s, flow_s=flow_s + time.perf_counter() - t1)
                return out
            flow_s += time.perf_counter() - t1
        finite = [s for s in scores if math.isfinite(s)]
        if not finite:
            out = _result(row, spec, error=NO_MOTION, detail=f"f undefined for {len(scores)} clips")
        else:
            out = _result(row, spec, value=float(np.mean(finite)), clips=len(finite))
        out.update(decode_s=decode_s, flow_s=flow_s)
        return out
    except Exception as e:  # never lose the job for one video
        return _result(row, spec, error=SCORE_ERROR, detail=_short(e))


def _score_block(batch: pa.Table, spec: ScoreSpec) -> pa.Table:
    """Ray Data task: score every video of a block (rows: ``_ITEM_COLUMNS`` + ``row_index``)."""
    import cv2  # lazy: OpenCV is a heavy import that only this path needs

    cv2.setNumThreads(spec.flow_threads)  # a task owns the CPUs Ray gave it, no more
    out = []
    for row in batch.to_pylist():
        result = score_video(row, spec)
        result["row_index"] = int(row["row_index"])
        out.append(result)
    return pa.Table.from_pylist(out, schema=_RESULT_SCHEMA)


# --------------------------------------------------------------------------------------------
# Resume state
# --------------------------------------------------------------------------------------------


def parts_uri(out: str) -> str:
    """The folder of the incremental results of a run writing ``out``: ``<out>.parts``."""
    return out + ".parts"


Key = tuple[str, str]  # (video_id, uri)


def _records(table: pa.Table, settings_column: str) -> dict[Key, dict[str, Any]]:
    """(video_id, uri) -> scored record of a table with score columns (finite scores only)."""
    need = {"video_id", "uri", "num_frames", "difficulty", "difficulty_clips", settings_column}
    if not need <= set(table.column_names):
        return {}
    out: dict[Key, dict[str, Any]] = {}
    cols = table.select(sorted(need)).to_pydict()
    for i in range(table.num_rows):
        value = cols["difficulty"][i]
        if value is None or not math.isfinite(value):
            continue
        out[(str(cols["video_id"][i]), str(cols["uri"][i]))] = {
            "num_frames": int(cols["num_frames"][i] or 0),
            "settings": cols[settings_column][i],
            "difficulty": float(value),
            "difficulty_clips": int(cols["difficulty_clips"][i] or 0),
        }
    return out


def _read_parquet(uri: str, options: storage.StorageOptions) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri, options=options)))


_PART_NAME = re.compile(r"^part-[^/]*\.parquet$")


def _part_files(parts: str, options: storage.StorageOptions) -> list[str]:
    """The part files directly in ``parts`` (``part-*.parquet``): a sub-folder, even a
    symlinked one, or another file is not ours, so never read or deleted."""
    try:
        files = storage.list_files(parts, {".parquet"}, False, options)
    except storage.StorageNotFoundError:
        return []
    return [f.uri for f in files if _PART_NAME.match(storage.basename(f.uri))]


def _previous_results(
    table: pa.Table, out: str, parts: str, options: storage.StorageOptions
) -> tuple[dict[Key, dict[str, Any]], int]:
    """Finite scores known from the input's own score columns, the previous output manifest
    and the part files (later sources win); and the number of part files read."""
    known = _records(table, "difficulty_settings")
    try:
        if storage.exists(out, options):
            known.update(_records(read_manifest(out, options=options), "difficulty_settings"))
    except (ManifestError, storage.StorageError, pa.ArrowException, OSError) as e:
        print(f"score: ignoring unreadable previous output {out}: {_short(e)}", flush=True)
    files = _part_files(parts, options)

    def read(uri: str) -> pa.Table | None:
        try:
            return _read_parquet(uri, options)
        except (storage.StorageError, pa.ArrowException, OSError) as e:
            print(f"score: ignoring unreadable part {uri}: {_short(e)}", flush=True)
            return None

    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(read, sorted(files)))
    for part in tables:
        if part is not None:
            known.update(_records(part, "settings"))
    return known, len(files)


def _write_part(results: pa.Table, parts: str, options: storage.StorageOptions) -> bool:
    """Store one block of results under ``parts``; False (and a message) if it failed."""
    uri = storage.join(parts, f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet")
    sink = io.BytesIO()
    pq.write_table(results.select(PART_SCHEMA.names), sink)
    try:
        storage.write_bytes(uri, sink.getvalue(), options=options)
        return True
    except storage.StorageError as e:
        print(f"score: could not save results to {uri} (not resumable): {_short(e)}", flush=True)
        return False


def _remove_parts(parts: str, options: storage.StorageOptions) -> bool:
    """Delete the part files (and the local folder); False (and a message) if it failed."""
    files = _part_files(parts, options)
    try:
        if storage.is_s3(parts):
            client = storage.s3_client(options)
            bucket = storage.parse_s3(parts)[0]
            keys = [storage.parse_s3(u)[1] for u in files]
            for i in range(0, len(keys), 1000):
                chunk = [{"Key": k} for k in keys[i : i + 1000]]
                client.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
        else:
            for uri in files:
                os.unlink(uri)
            path = storage.get_filesystem(parts)[1]
            if os.path.isdir(path) and not os.listdir(path):
                os.rmdir(path)
        return True
    except Exception as e:  # cleanup only: the manifest is written
        print(f"score: could not remove {parts}: {_short(e)}", flush=True)
        return False


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _same_file(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` name one file (real paths: a symlink does not hide it)."""
    real = storage.real_uris([a, b])
    return real[0] == real[1]


def _cluster_task_slots(num_cpus_per_task: float) -> int:
    import ray  # lazy: Ray is a heavy import that only this path needs

    cpus = float(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 0.0
    cpus = cpus or float(os.cpu_count() or 1)
    return max(1, int(cpus // max(num_cpus_per_task, 1e-6)))


def _score_items(
    items: list[dict[str, Any]],
    spec: ScoreSpec,
    parts: str,
    options: storage.StorageOptions,
    videos_per_part: int,
    num_cpus_per_task: float,
) -> tuple[list[dict[str, Any]], int, int]:
    """Score ``items`` with Ray Data; every block of results is saved as a part as it
    arrives.  Returns the result rows, parts written and parts that could not be written."""
    import ray  # lazy: Ray is a heavy import that only this path needs

    per = max(
        1, min(videos_per_part, math.ceil(len(items) / _cluster_task_slots(num_cpus_per_task)))
    )
    ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per)).map_batches(
        _score_block,  # type: ignore[arg-type]  # Ray types fn as 1-arg; fn_kwargs passes spec
        fn_kwargs={"spec": spec},
        batch_size=per,
        batch_format="pyarrow",
        num_cpus=num_cpus_per_task,
        zero_copy_batch=True,
    )
    results: list[dict[str, Any]] = []
    written = failed = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        block = cast(pa.Table, batch)
        if block.num_rows == 0:
            continue
        if _write_part(block, parts, options):
            written += 1
        else:
            failed += 1
        results.extend(block.to_pylist())
    return results, written, failed


def _output_table(source: pa.Table, rows: list[dict[str, Any]], settings: str) -> pa.Table:
    """``source`` (old score columns dropped) + the score columns, row i from ``rows[i]``."""
    base = source.drop_columns([c for c in SCORE_COLUMNS if c in source.column_names])
    columns = {
        "difficulty": pa.array([r["difficulty"] for r in rows], pa.float64()),
        "difficulty_clips": pa.array([r["difficulty_clips"] for r in rows], pa.int64()),
        "difficulty_error": pa.array([r["difficulty_error"] for r in rows], pa.string()),
        "difficulty_error_detail": pa.array(
            [r["difficulty_error_detail"] for r in rows], pa.string()
        ),
        "difficulty_settings": pa.array([settings] * len(rows), pa.string()),
    }
    for name, values in columns.items():
        base = base.append_column(name, values)
    return base


def run_score(
    manifest: str,
    out: str,
    clips: str = "uniform:1",
    flow: str = "dis",
    resize: tuple[int, int] | None = (128, 171),
    crop: int | tuple[int, int] = 112,
    clip_len: int = 16,
    endpoint_url: str | None = None,
    overwrite: bool = False,
    num_cpus_per_task: float = 1.0,
    *,
    videos_per_part: int = 16,
    keep_parts: bool = False,
    decode_threads: int = 1,
) -> dict[str, Any]:
    """Score every usable video of ``manifest`` and write the scored manifest to ``out``.

    Args:
        manifest: the input manifest (``*.parquet``, local or ``s3://``); not modified.
        out: the output manifest (``*.parquet``, local or ``s3://``), another path.
        clips, flow, resize, crop, clip_len: see :func:`make_score_spec` (module docstring).
        endpoint_url: S3 endpoint (else ``AWS_ENDPOINT_URL_S3``...), resolved here and sent
            to the tasks; credentials are not: Ray workers reading videos from S3 need the AWS
            credential variables themselves.
        overwrite: rescore every video instead of reusing earlier results.
        num_cpus_per_task: CPUs Ray reserves per scoring task (also OpenCV's thread count).
        videos_per_part: at most this many videos per task and per part file (smaller when
            the cluster has more CPUs than that leaves tasks for).
        keep_parts: keep ``<out>.parts/`` after the final manifest is written.
        decode_threads: decoder threads per video.

    Returns:
        Summary: ``ok`` (videos with a score: ``scored`` + ``reused``), ``scored`` (by this
        run), ``reused`` (earlier results), ``failed`` (NaN rows, manifest errors included),
        ``failures_by_reason``, ``total`` (rows), ``seconds``, ``videos_per_s`` (scored per
        second of the whole run), ``decode_s`` / ``flow_s`` (task seconds summed over videos),
        ``settings`` (fingerprint), ``parts_written``, ``parts_failed``, ``parts_removed``,
        ``manifest`` (= ``out``).

    Raises:
        ValueError: bad arguments (named), ``out`` equal to ``manifest`` or not ``.parquet``.
        ManifestError: the input is not a manifest.
    """
    t0 = time.perf_counter()
    options = storage.StorageOptions(endpoint_url=endpoint_url or None)
    task_options = storage.StorageOptions(endpoint_url=storage.resolve_endpoint(options))
    if not str(out).endswith(".parquet"):
        raise ValueError(f"out: expected a manifest path ending in .parquet, got {out!r}")
    if _same_file(str(out), str(manifest)):
        raise ValueError(f"out: must differ from the input manifest {manifest!r} (kept as is)")
    if not (isinstance(videos_per_part, int) and videos_per_part >= 1):
        raise ValueError(f"videos_per_part: expected an integer >= 1, got {videos_per_part!r}")
    if not num_cpus_per_task > 0:
        raise ValueError(f"num_cpus_per_task: expected a number > 0, got {num_cpus_per_task!r}")
    spec = make_score_spec(
        clips,
        flow,
        resize,
        crop,
        clip_len,
        decode_threads=decode_threads,
        flow_threads=max(1, int(num_cpus_per_task)),
        storage_options=task_options,
    )
    settings = spec.fingerprint
    parts = parts_uri(out)

    source = read_manifest(manifest, options=options)
    if overwrite:
        _remove_parts(parts, options)
        known: dict[Key, dict[str, Any]] = {}
    else:
        known, num_old_parts = _previous_results(source, out, parts, options)
        if num_old_parts:
            print(f"score: {num_old_parts} part files of an earlier run in {parts}", flush=True)

    cols = [c for c in _ITEM_COLUMNS if c in source.column_names]
    values = source.select(cols).to_pydict()
    errors = source["error"].to_pylist()
    details = (
        source["error_detail"].to_pylist()
        if "error_detail" in source.column_names
        else [""] * source.num_rows
    )
    rows: list[dict[str, Any] | None] = [None] * source.num_rows
    status = [""] * source.num_rows  # scored | reused | failed
    items: list[dict[str, Any]] = []
    for i in range(source.num_rows):
        row = {c: values[c][i] for c in cols}
        if errors[i]:
            detail = f"{errors[i]}: {details[i]}" if details[i] else str(errors[i])
            rows[i] = _result(row, spec, error=MANIFEST_ERROR, detail=detail)
            status[i] = "failed"
            continue
        prev = known.get((str(row["video_id"]), str(row["uri"])))
        if (
            prev is not None
            and prev["settings"] == settings
            and prev["num_frames"] == int(row["num_frames"] or 0)
        ):
            rows[i] = _result(row, spec, value=prev["difficulty"], clips=prev["difficulty_clips"])
            status[i] = "reused"
            continue
        if int(row["num_frames"] or 0) < spec.frames_per_clip:  # decided here, no task
            rows[i] = score_video(row, spec)
            status[i] = "failed"
            continue
        items.append({**row, "row_index": i})

    print(
        f"score: {source.num_rows} videos in {manifest}; {status.count('reused')} already "
        f"scored, {status.count('failed')} unusable, {len(items)} to score -> {out} ({settings})",
        flush=True,
    )
    written = failed_parts = 0
    if items:
        results, written, failed_parts = _score_items(
            items, spec, parts, options, videos_per_part, num_cpus_per_task
        )
        for r in results:
            i = int(r["row_index"])
            rows[i] = r
            status[i] = "failed" if r["difficulty_error"] else "scored"
        for item in items:  # defensive: a row Ray Data lost is a failure, not a gap
            i = item["row_index"]
            if rows[i] is None:
                rows[i] = _result(item, spec, error=LOST, detail="no result from the Ray task")
                status[i] = "failed"

    done = [r for r in rows if r is not None]
    assert len(done) == source.num_rows
    write_manifest(_output_table(source, done, settings), out, options=options)
    removed = False
    if not keep_parts and (written or failed_parts or _part_files(parts, options)):
        removed = _remove_parts(parts, options)

    seconds = time.perf_counter() - t0
    counts = Counter(status)
    reasons = Counter(str(r["difficulty_error"]) for r in done if r["difficulty_error"])
    summary: dict[str, Any] = {
        "ok": counts["scored"] + counts["reused"],
        "scored": counts["scored"],
        "reused": counts["reused"],
        "failed": counts["failed"],
        "failures_by_reason": dict(sorted(reasons.items())),
        "total": source.num_rows,
        "seconds": round(seconds, 3),
        "videos_per_s": round(counts["scored"] / seconds, 3) if seconds > 0 else 0.0,
        "decode_s": round(sum(float(r.get("decode_s") or 0.0) for r in done), 3),
        "flow_s": round(sum(float(r.get("flow_s") or 0.0) for r in done), 3),
        "settings": settings,
        "parts_written": written,
        "parts_failed": failed_parts,
        "parts_removed": removed,
        "manifest": out,
    }
    _print_summary(summary, [r for r, s in zip(done, status, strict=True) if s == "failed"])
    return summary


def _print_summary(
    summary: dict[str, Any], failed: Iterable[dict[str, Any]], show: int = 10
) -> None:
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_reason"].items()) or "none"
    task = summary["decode_s"] + summary["flow_s"]
    share = f", flow {100 * summary['flow_s'] / task:.0f}% of task time" if task > 0 else ""
    print(
        f"score: {summary['ok']} scored ({summary['scored']} now, {summary['reused']} reused), "
        f"{summary['failed']} failed ({reasons}) in {summary['seconds']:.1f}s, "
        f"{summary['videos_per_s']:.2f} videos/s{share}; manifest {summary['manifest']}",
        flush=True,
    )
    for row in list(failed)[:show]:
        print(f"  failed: {row['uri']}: {row['difficulty_error']} {row['difficulty_error_detail']}")
