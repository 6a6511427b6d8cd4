"""`rayssl prepare`: transcode a dataset to training-ready H.264 MP4 with Ray Data.

Raw datasets are stored for archiving, not for training: UCF101 is MPEG-4 part 2 with
B-frames at 320x240, Kinetics is H.264 at up to 1080p with 10 s GOPs.  Decoding a 16-frame
clip then costs a decode of everything since the previous keyframe, at full resolution.
Preparing the dataset once fixes both:

* every frame that decodes is re-encoded (libx264, yuv420p, CRF, preset ``veryfast``) at
  training resolution -- the short side becomes ``short_side``, aspect kept, both sides
  rounded to even -- with a keyframe *exactly* every ``gop`` frames (no scene-cut
  keyframes), so a clip never needs more than ``gop - 1`` frames decoded before it;
* frame ``i`` of the output is frame ``i`` of the source (display order), and the output
  has exactly as many frames as the source decodes: timestamps are re-assigned (frame
  ``i`` gets pts ``i`` in a ``1/fps`` time base), so VFR or broken source timestamps can
  neither drop nor duplicate frames;
* the MP4 has its index (``moov``) before the data (``faststart``) for ranged reads.

:func:`transcode_video` does one video in memory (no Ray, no storage).  :func:`run_prepare`
runs it over a manifest (or a folder, indexed first) with one Ray Data task per video and
one CPU per task, reading and writing through :mod:`rayssl.io.storage` (local or S3 on
either side), then writes ``<out>/manifest.parquet`` whose rows describe the outputs (probed
from the bytes just written) with ``source`` = the original URI.

Resumable: an output that already exists and is valid (same frame count as the source row,
the expected size and keyframes) is skipped.  When the previous run's manifest lists the
output with the size the listing reports, that costs nothing (one listing of ``out``);
otherwise the existing output is read and probed in its task.

Failures never stop the job: a source row with an ``error``, a video that cannot be read,
decoded or encoded, or an output that cannot be written becomes a manifest row with an
``error`` reason (``VideoError`` reasons, ``missing``, ``storage_error``, plus
``transcode_error`` and ``duplicate_video_id`` from this module, and ``unsafe_video_id``
for an id that would put its output outside ``out``: every output path is built by
:func:`rayssl.io.storage.child`).

A job never overwrites its input: a run where an output (a video or the manifest) is the
same file as a source video or the input manifest (compared by real path, symlinks
resolved, or by S3 URI) is refused with :class:`PrepareError` before anything is written.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import pyarrow as pa
from av.video.frame import PictureType
from av.video.reformatter import VideoReformatter

from rayssl.io import storage
from rayssl.io.manifest import (
    UNSAFE_ID,
    ManifestError,
    build_manifest,
    list_entries,
    probe_columns,
    read_manifest,
    rows_to_table,
    write_manifest,
)
from rayssl.io.video import (
    DEFAULT_ACCESS,
    NO_LIMITS,
    Source,
    VideoAccess,
    VideoError,
    VideoLimits,
    VideoProbe,
    open_container,
    probe_video,
)

__all__ = [
    "MANIFEST_NAME",
    "PrepareError",
    "PrepareParams",
    "output_size",
    "prepare_item",
    "run_prepare",
    "transcode_video",
]

MANIFEST_NAME = "manifest.parquet"
OUTPUT_EXTENSION = ".mp4"
TRANSCODE_ERROR = "transcode_error"
DUPLICATE_ERROR = "duplicate_video_id"
_DEFAULT_FPS = Fraction(25)  # when the source stream states no frame rate at all
_MAX_FPS_DENOMINATOR = 1001  # 30000/1001 stays exact; odd averages are rounded


class PrepareError(ValueError):
    """The run is refused before anything is written (it would overwrite its own input)."""


# --------------------------------------------------------------------------------------------
# One video
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrepareParams:
    """How every video is re-encoded (sent to the Ray tasks).

    Attributes:
        short_side: the output's shorter side in pixels (see :func:`output_size`).
        gop: keyframe interval in frames.
        crf: x264 constant rate factor, 0-51.
        preset: x264 preset (``ultrafast`` ... ``veryslow``).
        threads: decoder and encoder threads per video.
    """

    short_side: int = 128
    gop: int = 16
    crf: int = 23
    preset: str = "veryfast"
    threads: int = 1

    def check(self) -> None:
        """Raise ValueError for settings the encoder cannot honour."""
        if self.short_side < 2:
            raise ValueError(f"short_side must be >= 2, got {self.short_side}")
        if self.gop < 1:
            raise ValueError(f"gop must be >= 1, got {self.gop}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def _even(x: float) -> int:
    """Nearest even integer >= 2 (halves round up)."""
    return max(2, 2 * int(x / 2.0 + 0.5))


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) of a ``height x width`` video resized to short side ``short_side``.

    The aspect ratio is kept and both sides are rounded to even (yuv420p needs it), so an
    odd ``short_side`` becomes the next even number.  Example: (240, 320), 128 -> (128, 170).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"video size must be positive, got {height}x{width}")
    if height <= width:
        return _even(short_side), _even(width * short_side / height)
    return _even(height * short_side / width), _even(short_side)


def _frame_rate(stream: av.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        return _DEFAULT_FPS
    # Rounded to a denominator <= 1001, but at least 1/1001 fps: a time-lapse slower than
    # 1/2002 fps (a frame every 33 minutes) would round to 0 fps, a 1/0 time base.
    return max(
        Fraction(rate).limit_denominator(_MAX_FPS_DENOMINATOR),
        Fraction(1, _MAX_FPS_DENOMINATOR),
    )


def _decoded_frames(
    source: Source, threads: int, limits: VideoLimits = NO_LIMITS
) -> Generator[tuple[av.VideoFrame, Fraction], None, None]:
    """Every frame of the first video stream that decodes, in display order, with the
    stream's frame rate.  Mirrors :func:`rayssl.io.video.probe_video`: opened by
    ``open_container`` under ``limits`` (size, pixels, frames, time), and a decode error
    after at least one frame is a truncated tail (the frames before it are kept)."""
    deadline = limits.deadline()
    container = open_container(source, limits)
    try:
        if not container.streams.video:
            raise VideoError("no_video_stream", "container has no video stream")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # as rayssl.io.video._video_stream
            raise VideoError("decode_error", "no decoder for the video stream's codec")
        ctx = stream.codec_context
        if limits.max_pixels and ctx.height * ctx.width > limits.max_pixels:
            raise VideoError(
                "too_many_pixels", f"{ctx.width}x{ctx.height} > {limits.max_pixels} pixels"
            )
        ctx.thread_type = "AUTO" if threads > 1 else "NONE"
        ctx.thread_count = threads
        rate = _frame_rate(stream)
        count = 0
        try:
            for frame in container.decode(stream):
                if deadline is not None and time.monotonic() > deadline:
                    raise VideoError("decode_timeout", f"time limit reached after {count} frames")
                if limits.max_frames and count >= limits.max_frames:
                    raise VideoError("too_many_frames", f"more than {limits.max_frames}")
                if limits.max_pixels and frame.height * frame.width > limits.max_pixels:
                    raise VideoError("too_many_pixels", f"a {frame.width}x{frame.height} frame")
                count += 1
                yield frame, rate
        except (av.error.FFmpegError, ValueError) as e:
            if count == 0:
                raise VideoError("decode_error", _short(e)) from e
        if count == 0:
            raise VideoError("zero_frames", "no frame decoded")
    finally:
        container.close()


def _short(e: BaseException) -> str:
    return storage.redact(f"{type(e).__name__}: {e}")[:300]


def _x264_options(gop: int, crf: int, preset: str, threads: int) -> dict[str, str]:
    return {
        "preset": preset,
        "crf": str(crf),
        "g": str(gop),
        "keyint_min": str(gop),
        "sc_threshold": "0",
        # The same through x264 itself (authoritative: keyframes exactly every `gop`).
        "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
        "threads": str(threads),
    }


class _Mp4Writer:
    """An MP4 file at ``path`` with one libx264 yuv420p stream of ``height x width`` frames.

    Frames are resized by one reused swscale context and numbered in order: the i-th frame
    written gets pts i in a 1/rate time base, whatever its own timestamp said. Written to
    a local (temporary) file, so memory does not grow with the output.
    """

    def __init__(
        self, path: str, height: int, width: int, rate: Fraction, params: PrepareParams
    ) -> None:
        self.height, self.width = height, width
        self.time_base = 1 / rate
        self.count = 0
        self._reformatter = VideoReformatter()
        self._container = av.open(
            path, mode="w", format="mp4", container_options={"movflags": "+faststart"}
        )
        self._stream = self._container.add_stream(
            "libx264",
            rate=rate,
            options=_x264_options(params.gop, params.crf, params.preset, params.threads),
        )
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        self._stream.codec_context.thread_count = params.threads

    def write(self, frame: av.VideoFrame) -> None:
        scaled = self._reformatter.reformat(
            frame,
            width=self.width,
            height=self.height,
            format="yuv420p",
            interpolation="BILINEAR",
        )
        # The decoder's picture type would force x264 keyframes where the source had them
        # (and reformat returns the frame itself when there is nothing to convert).
        scaled.pict_type = PictureType.NONE
        scaled.pts = self.count
        scaled.time_base = self.time_base
        self._container.mux(self._stream.encode(scaled))
        self.count += 1

    def finish(self) -> None:
        """Flush the encoder, write the index (moov moved to the front)."""
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, ValueError, OSError):
            self._container.close()


def _transcode(
    source: Source, params: PrepareParams, out_path: str, limits: VideoLimits = NO_LIMITS
) -> int:
    """:func:`transcode_video` into the local file ``out_path``; returns the frames encoded."""
    params.check()
    writer: _Mp4Writer | None = None
    try:
        with contextlib.closing(_decoded_frames(source, params.threads, limits)) as frames:
            for frame, rate in frames:
                if writer is None:
                    height, width = output_size(frame.height, frame.width, params.short_side)
                    writer = _Mp4Writer(out_path, height, width, rate, params)
                writer.write(frame)
        if writer is None:  # _decoded_frames raises first; kept for type checkers
            raise VideoError("zero_frames", "no frame decoded")
        writer.finish()
        count, writer = writer.count, None
        return count
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as e:
        done = writer.count if writer is not None else 0
        raise VideoError(TRANSCODE_ERROR, f"encoding frame {done}: {_short(e)}") from e
    finally:
        if writer is not None:
            writer.abort()


def transcode_video(
    data: bytes,
    short_side: int = 128,
    gop: int = 16,
    crf: int = 23,
    *,
    preset: str = "veryfast",
    threads: int = 1,
) -> bytes:
    """Re-encode one video (the file's bytes) as training-ready H.264 MP4 (bytes).

    Args:
        data: the source file (any container/codec FFmpeg decodes).
        short_side: the output's shorter side in pixels (see :func:`output_size`).
        gop: keyframe interval: frames 0, gop, 2*gop, ... are keyframes, no others.
        crf: x264 constant rate factor (0-51, lower = better).
        preset: x264 preset.
        threads: decoder and encoder threads (1 = one core; Ray runs one video per core).

    Returns:
        An MP4 (``moov`` first) with one libx264 yuv420p stream of N frames of size
        ``output_size(H, W, short_side)``, where N is the number of frames the source decodes
        (as :func:`rayssl.io.video.probe_video` counts them) and output frame i is the
        resized source frame i; frame i has pts i in a 1/fps time base (fps: the source's).

    Raises:
        VideoError: the source cannot be used (``empty_file``, ``not_a_video``,
            ``no_video_stream``, ``decode_error``, ``zero_frames``) or encoding failed
            (``transcode_error``).
        ValueError: bad parameters.
    """
    params = PrepareParams(short_side=short_side, gop=gop, crf=crf, preset=preset, threads=threads)
    with tempfile.TemporaryDirectory(prefix="rayssl-prepare-") as tmp:
        out = os.path.join(tmp, "out.mp4")
        _transcode(data, params, out)
        with open(out, "rb") as f:
            return f.read()


# --------------------------------------------------------------------------------------------
# One manifest row (the Ray task body)
# --------------------------------------------------------------------------------------------


def _expected_keyframes(num_frames: int, gop: int) -> list[int]:
    return list(range(0, num_frames, gop))


def _output_problem(probe: VideoProbe, item: dict[str, Any], params: PrepareParams) -> str | None:
    """Why an output (as probed, or as the previous manifest recorded it) is not what
    ``item`` should become; None when it is valid."""
    want_frames = int(item["num_frames"])
    if probe.num_frames != want_frames:
        return f"output has {probe.num_frames} frames, the source {want_frames}"
    want = output_size(int(item["height"]), int(item["width"]), params.short_side)
    if (probe.height, probe.width) != want:
        return f"output is {probe.width}x{probe.height}, expected {want[1]}x{want[0]}"
    if list(probe.keyframes) != _expected_keyframes(probe.num_frames, params.gop):
        return f"output keyframes {list(probe.keyframes)[:6]}... are not every {params.gop}"
    if probe.codec != "h264":
        return f"output codec {probe.codec!r} is not h264"
    return None


def _row_probe(row: dict[str, Any]) -> VideoProbe:
    """A manifest row's probe fields as a VideoProbe."""
    return VideoProbe(
        num_frames=int(row.get("num_frames") or 0),
        fps=float(row.get("fps") or 0.0),
        height=int(row.get("height") or 0),
        width=int(row.get("width") or 0),
        codec=str(row.get("codec") or ""),
        keyframes=[int(k) for k in row.get("keyframes") or []],
        keyframe_pts=[int(k) for k in row.get("keyframe_pts") or []],
        pts_start=int(row.get("pts_start") or 0),
        pts_step=int(row.get("pts_step") or 0),
    )


def _base_row(item: dict[str, Any]) -> dict[str, Any]:
    return {
        "uri": item["dest"],
        "video_id": item["video_id"],
        "num_frames": 0,
        "fps": 0.0,
        "height": 0,
        "width": 0,
        "codec": "",
        "size_bytes": -1,
        "label": int(item["label"]),
        "label_name": item.get("label_name") or "",
        "split": item.get("split") or "",
        "error": None,
        "error_detail": "",
        "keyframes": [],
        "keyframe_pts": [],
        "source": item["source"],
        "pts_start": 0,
        "pts_step": 0,
        "status": "failed",
        "bytes_in": 0,
        "bytes_out": 0,
    }


def _failure(item: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    row = _base_row(item)
    row.update(error=reason, error_detail=storage.redact(detail)[:500])
    return row


def _probed_row(item: dict[str, Any], probe: VideoProbe, size: int, status: str) -> dict:
    row = _base_row(item)
    row.update(probe_columns(probe), size_bytes=size, status=status)
    return row


def _source_bytes(source: Source) -> int:
    """Bytes read from a source: all of a path or a fetched object, the fetched blocks of
    a stream."""
    if isinstance(source, storage.RangedReader):
        return source.bytes_fetched
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    return os.path.getsize(source) if isinstance(source, str | os.PathLike) else 0


def prepare_item(
    item: dict[str, Any],
    params: PrepareParams,
    options: storage.StorageOptions | None = None,
    access: VideoAccess = DEFAULT_ACCESS,
) -> dict[str, Any]:
    """Prepare one video; never raises for a bad video or a storage failure.

    Args:
        item: ``source`` and ``dest`` URIs, ``video_id``, ``label``, ``label_name``,
            ``split`` and the source row's ``num_frames``, ``height``, ``width``;
            ``check_existing``: first probe an existing ``dest`` and keep it if valid.
        params: the encoding settings.
        options: storage settings for both URIs.
        access: caps and streaming of the source (``VideoAccess``): a large S3 source
            is streamed, the output is written to a local temporary file and uploaded.

    Returns:
        The output's manifest row (:data:`rayssl.io.manifest.SCHEMA` columns, ``uri`` =
        ``dest``) plus ``status`` (``transcoded`` | ``skipped`` | ``failed``) and
        ``bytes_in`` / ``bytes_out`` (bytes read from the source / written).
    """
    try:
        if item.get("check_existing"):
            row = _existing_output(item, params, options, access)
            if row is not None:
                return row
        try:
            source = access.source(item["source"], options, int(item.get("size_bytes", -1)))
        except storage.StorageNotFoundError as e:
            return _failure(item, "missing", f"source: {e}")
        try:
            with tempfile.TemporaryDirectory(prefix="rayssl-prepare-") as tmp:
                out = os.path.join(tmp, "out.mp4")
                count = _transcode(source, params, out, access.limits)
                probe = probe_video(out)
                problem = _output_problem(probe, item, params)
                if problem is None and probe.num_frames != count:
                    problem = f"encoded {count} frames but the output decodes {probe.num_frames}"
                if problem is not None:
                    return _failure(item, TRANSCODE_ERROR, problem)
                written = os.path.getsize(out)
                storage.upload_file(out, item["dest"], options=options)
        finally:
            if isinstance(source, storage.RangedReader):
                source.close()
        row = _probed_row(item, probe, written, "transcoded")
        row.update(bytes_in=_source_bytes(source), bytes_out=written)
        return row
    except VideoError as e:
        return _failure(item, e.reason, e.detail)
    except storage.StorageNotFoundError as e:
        return _failure(item, "missing", str(e))
    except storage.StorageError as e:
        return _failure(item, "storage_error", str(e))
    except Exception as e:  # never lose the job for one video
        return _failure(item, TRANSCODE_ERROR, _short(e))


def _existing_output(
    item: dict[str, Any],
    params: PrepareParams,
    options: storage.StorageOptions | None,
    access: VideoAccess = DEFAULT_ACCESS,
) -> dict[str, Any] | None:
    """The row of a valid existing output, else None (it will be replaced)."""
    source: Source | None = None
    try:
        source = access.source(item["dest"], options)
        probe = probe_video(source, limits=access.limits)
        size = storage.size(item["dest"], options)
    except (VideoError, storage.StorageError):
        return None
    finally:
        if isinstance(source, storage.RangedReader):
            source.close()
    if _output_problem(probe, item, params) is not None:
        return None
    return _probed_row(item, probe, size, "skipped")


# --------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------


def _load_source(
    src: str, options: storage.StorageOptions, access: VideoAccess = DEFAULT_ACCESS
) -> pa.Table:
    """A manifest URI (*.parquet) is read; a folder (SRC/<class>/<video>) is indexed."""
    if src.endswith(".parquet"):
        return read_manifest(src, options=options)
    entries = list_entries(src, "folder", options=options)
    print(f"prepare: indexing {len(entries)} videos under {src}", flush=True)
    return build_manifest(entries, options, use_ray=True, access=access)


def _normalise_out(out: str) -> str:
    if storage.is_s3(out):
        return out.rstrip("/")
    return storage.get_filesystem(out)[1]  # absolute local path (file:// stripped)


def _existing_outputs(out: str, options: storage.StorageOptions) -> dict[str, int]:
    """URI -> size of every MP4 already under ``out`` (one listing)."""
    try:
        return {f.uri: f.size for f in storage.list_files(out, {OUTPUT_EXTENSION}, True, options)}
    except storage.StorageNotFoundError:
        return {}


def _previous_rows(manifest_uri: str, options: storage.StorageOptions) -> dict[str, dict]:
    """video_id -> row of the previous run's output manifest (empty if none/unreadable)."""
    try:
        if not storage.exists(manifest_uri, options):
            return {}
        table = read_manifest(manifest_uri, options=options)
    except (ManifestError, storage.StorageError, pa.ArrowException, OSError) as e:
        print(f"prepare: ignoring unreadable previous manifest: {storage.redact(str(e))}")
        return {}
    if "source" not in table.column_names:
        return {}
    return {row["video_id"]: row for row in table.to_pylist()}


def _reusable(
    prev: dict[str, Any] | None, item: dict[str, Any], size: int, params: PrepareParams
) -> dict[str, Any] | None:
    """The previous manifest's row for ``item``, relabelled, if it still describes the file."""
    if (
        prev is None
        or prev.get("error")
        or prev.get("uri") != item["dest"]
        or prev.get("source") != item["source"]
        or int(prev.get("size_bytes") or -1) != size
    ):
        return None
    probe = _row_probe(prev)
    if _output_problem(probe, item, params) is not None:
        return None
    return _probed_row(item, probe, size, "skipped")


def run_prepare(
    src: str,
    out: str,
    short_side: int = 128,
    gop: int = 16,
    crf: int = 23,
    endpoint_url: str | None = None,
    preset: str = "veryfast",
    overwrite: bool = False,
    *,
    threads: int = 1,
    num_cpus_per_task: float = 1.0,
    access: VideoAccess = DEFAULT_ACCESS,
) -> dict[str, Any]:
    """Transcode every usable video of ``src`` to ``out/<video_id>.mp4`` with Ray Data.

    Args:
        src: a manifest (``*.parquet``, local or ``s3://``) or a folder-per-class folder
            (indexed with ``list_entries(src, "folder")`` + ``build_manifest`` first).
        out: output folder or ``s3://`` prefix; gets the videos and ``manifest.parquet``.
        short_side, gop, crf, preset: see :func:`transcode_video`.
        endpoint_url: S3 endpoint for both sides (else ``AWS_ENDPOINT_URL_S3``...).  It is
            resolved here and sent to the tasks; credentials are not: Ray workers must have
            the AWS credential variables themselves (e.g. ``runtime_env={"env_vars": ...}``).
        overwrite: re-transcode outputs that exist and are valid instead of skipping them.
        threads: decoder/encoder threads per video.
        num_cpus_per_task: CPUs Ray reserves per video.
        access: caps (`too_large`, `too_many_pixels`, ...) and S3 streaming of the sources.

    Returns:
        Summary: ``ok`` (usable outputs in the new manifest: ``transcoded`` +
        ``skipped_existing``), ``transcoded``, ``skipped_existing``, ``failed`` (source rows
        with an error included), ``failures_by_reason``, ``bytes_in`` / ``bytes_out`` (read /
        written by this run's transcodes), ``seconds``, ``videos_per_s`` (transcoded per
        second of the whole run), ``total`` (source rows) and ``manifest`` (its URI).

    Raises:
        PrepareError: before anything is written, when ``out`` lies inside the video folder
            ``src``, or an output would replace an input (a source video or the input
            manifest, compared by real path / URI).
        ValueError: bad encoding settings.
    """
    import ray  # lazy: Ray is a heavy import that only this path needs

    params = PrepareParams(short_side, gop, crf, preset, threads)
    params.check()
    t0 = time.perf_counter()
    options = storage.StorageOptions(endpoint_url=endpoint_url or None)
    # Resolved once, here: tasks get the same endpoint whatever their environment says.
    task_options = storage.StorageOptions(endpoint_url=storage.resolve_endpoint(options))
    out = _normalise_out(out)
    if not src.endswith(".parquet") and (out + "/").startswith(_normalise_out(src) + "/"):
        # The next run would index the outputs as videos of a class of their own.
        raise PrepareError(f"out {out!r} must not be inside the video folder {src!r}")
    manifest_uri = storage.child(out, MANIFEST_NAME)
    if src.endswith(".parquet") and storage.real_uris([src]) == storage.real_uris([manifest_uri]):
        raise PrepareError(
            f"refusing to overwrite the input: output {manifest_uri} is the input manifest "
            f"{src}; choose another --out"
        )

    source = _load_source(src, options, access)
    existing = {} if overwrite else _existing_outputs(out, options)
    previous = _previous_rows(manifest_uri, options) if existing else {}

    rows: list[dict[str, Any]] = []  # decided without a task
    items: list[dict[str, Any]] = []
    seen: set[str] = set()
    for src_row in source.to_pylist():
        video_id = str(src_row["video_id"])
        try:
            dest, unsafe = storage.child(out, video_id + OUTPUT_EXTENSION), ""
        except storage.UnsafePathError as e:  # read_manifest marks most; symlinks land here
            dest, unsafe = "", str(e)
        item = {
            "source": src_row["uri"],
            "dest": dest,
            "video_id": video_id,
            "label": -1 if src_row.get("label") is None else int(src_row["label"]),
            "label_name": src_row.get("label_name") or "",
            "split": src_row.get("split") or "",
            "num_frames": int(src_row.get("num_frames") or 0),
            "height": int(src_row.get("height") or 0),
            "width": int(src_row.get("width") or 0),
            "size_bytes": -1 if src_row.get("size_bytes") is None else int(src_row["size_bytes"]),
        }
        if src_row.get("error"):
            rows.append(_failure(item, src_row["error"], src_row.get("error_detail") or ""))
            continue
        if unsafe:
            rows.append(_failure(item, UNSAFE_ID, unsafe))
            continue
        if item["dest"] in seen:
            rows.append(_failure(item, DUPLICATE_ERROR, f"another video maps to {item['dest']}"))
            continue
        seen.add(item["dest"])
        size = existing.get(item["dest"])
        if size is not None:
            reused = _reusable(previous.get(video_id), item, size, params)
            if reused is not None:
                rows.append(reused)
                continue
        item["check_existing"] = size is not None
        items.append(item)
    _refuse_overwriting_inputs(source, [i["dest"] for i in items], src, manifest_uri)

    print(
        f"prepare: {source.num_rows} videos in {src}; {len(rows)} decided without decoding "
        f"(already prepared or broken in the source), {len(items)} to transcode or check -> "
        f"{out} (short side {short_side}, gop {gop}, crf {crf}, {preset})",
        flush=True,
    )
    if items:
        task = functools.partial(prepare_item, params=params, options=task_options, access=access)
        results = (
            ray.data.from_items(items, override_num_blocks=min(len(items), 512))
            .map(task, num_cpus=num_cpus_per_task)
            .take_all()
        )
        done = {r["uri"] for r in results}
        rows.extend(results)
        for item in items:  # defensive: a row Ray Data lost is a failure, not a gap
            if item["dest"] not in done:
                rows.append(_failure(item, TRANSCODE_ERROR, "no result from the Ray task"))

    table = rows_to_table(rows)
    write_manifest(table, manifest_uri, options=options)
    seconds = time.perf_counter() - t0
    status = Counter(r["status"] for r in rows)
    reasons = Counter(r["error"] for r in rows if r["status"] == "failed")
    summary = {
        "ok": status["transcoded"] + status["skipped"],
        "transcoded": status["transcoded"],
        "skipped_existing": status["skipped"],
        "failed": status["failed"],
        "failures_by_reason": dict(sorted(reasons.items())),
        "bytes_in": sum(int(r["bytes_in"]) for r in rows),
        "bytes_out": sum(int(r["bytes_out"]) for r in rows),
        "seconds": round(seconds, 3),
        "videos_per_s": round(status["transcoded"] / seconds, 3) if seconds > 0 else 0.0,
        "total": source.num_rows,
        "manifest": manifest_uri,
    }
    _print_summary(summary, rows)
    return summary


def _refuse_overwriting_inputs(
    source: pa.Table, dests: list[str], src: str, manifest_uri: str
) -> None:
    """Raise PrepareError when an output (``dests``, ``manifest_uri``) is the same file as
    an input (a source video, or the ``src`` manifest): compared by real path / URI."""
    uris = [str(u) for u in source["uri"].to_pylist() if u]
    inputs = dict(zip(storage.real_uris(uris), uris, strict=True))
    if src.endswith(".parquet"):
        inputs.update(zip(storage.real_uris([src]), [src], strict=True))
    outputs = [*dests, manifest_uri]
    clashes = [
        (dest, inputs[real])
        for real, dest in zip(storage.real_uris(outputs), outputs, strict=True)
        if real in inputs
    ]
    if clashes:
        dest, input_uri = clashes[0]
        what = "the input manifest" if input_uri == src else "the source video"
        raise PrepareError(
            f"refusing to overwrite the input: output {dest} is {what} {input_uri} "
            f"({len(clashes)} of {len(outputs)} outputs would replace inputs); choose an "
            "--out that holds no source video"
        )


def _print_summary(summary: dict[str, Any], rows: list[dict[str, Any]], show: int = 10) -> None:
    reasons = ", ".join(f"{k}: {v}" for k, v in summary["failures_by_reason"].items()) or "none"
    mib = 2.0**20
    print(
        f"prepare: {summary['ok']} ok ({summary['transcoded']} transcoded, "
        f"{summary['skipped_existing']} already prepared), {summary['failed']} failed "
        f"({reasons}) in {summary['seconds']:.1f}s, {summary['videos_per_s']:.2f} videos/s; "
        f"{summary['bytes_in'] / mib:.1f} MiB in -> {summary['bytes_out'] / mib:.1f} MiB out; "
        f"manifest {summary['manifest']}",
        flush=True,
    )
    for row in [r for r in rows if r["status"] == "failed"][:show]:
        print(f"  failed: {row['source']}: {row['error']} {row['error_detail']}")
