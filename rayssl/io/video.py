"""Open a video (path or bytes), probe it, and read exactly the frames asked for.

Random access in video files is where clip samplers go wrong: decord returns wrong
frames on MPEG-4 part 2 AVI files with B-frames (the way UCF101 is stored), and
container frame counts lie. This module therefore

* probes a video by decoding it once, recording the frames that really decode and,
  for every keyframe, its display index and presentation timestamp (pts);
* reads a clip by seeking to the last keyframe at or before the first frame needed
  (using the recorded pts), checking that the decoder landed exactly there, and
  decoding forward in display order, counting frames. If the landing cannot be
  verified (or the demuxer refuses to seek) it decodes from the start instead. Either
  way the frames returned are the frames the indices name, which tests check against
  a sequential decode;
* when the probe found every frame's pts on a grid (frame i at `pts_start + i *
  pts_step`, one packet per frame), identifies frames by pts instead of by counting,
  and tells the decoder to drop the non-reference frames (B-frames nothing else is
  predicted from) that the clip does not use: a pace-p clip decodes fewer frames.

Only the frames a clip needs are converted to RGB (and resized, when a size is given).
"""

from __future__ import annotations

import io
import os
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import VideoReformatter

from rayssl.io import storage

Source = str | os.PathLike | bytes | io.RawIOBase | io.BufferedIOBase

#: Error reasons recorded in the manifest's `error` column.
ERROR_REASONS = (
    "missing",
    "empty_file",
    "not_a_video",
    "no_video_stream",
    "decode_error",
    "zero_frames",
    "storage_error",
    # the caps of `VideoLimits` and the container allow-list (hostile or huge files)
    "too_large",
    "too_many_pixels",
    "too_many_frames",
    "implausible_frames",
    "decode_timeout",
    "unsafe_format",
)

#: Demuxers a video may be opened with (FFmpeg's names, `format_whitelist`). Playlist and
#: reference formats (hls, dash, concat, image2 patterns, ...) are left out on purpose:
#: they open further files or URLs named inside the file.
ALLOWED_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "avi",
    "matroska,webm",
    "mpeg",
    "mpegts",
    "mpegvideo",
    "m4v",
    "h264",
    "hevc",
    "flv",
    "asf",
    "ogg",
    "ivf",
    "nut",
    "mjpeg",
    "gif",
    "yuv4mpegpipe",
    "jpeg_pipe",
    "png_pipe",
)

#: Protocols FFmpeg may use: `file` for a local path; a stream (bytes, a ranged S3
#: reader) goes through Python I/O and needs none. Nothing a file names is fetched.
PROTOCOL_WHITELIST = "file"

#: Text formats that name other files or URLs (checked on the first bytes, whatever the
#: file's extension): refused before FFmpeg sees them.
_PLAYLIST_MAGIC = (b"#EXTM3U", b"ffconcat", b"<?xml", b"<MPD", b"[playlist]")

#: The fewest bytes one frame can take in any container we read (a sample-size entry
#: plus a packet): a frame count above size / this is not believed.
MIN_BYTES_PER_FRAME = 4


class VideoError(Exception):
    """A video that cannot be used; `reason` is one of ERROR_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class VideoProbe:
    """What a full decode of a video found.

    `keyframes` are display indices of decodable keyframes and `keyframe_pts` their
    presentation timestamps in the stream's time base; both empty when the stream
    carries no usable timestamps (then readers decode from the start).

    `pts_step` > 0 says that frame i (display order) has pts `pts_start + i * pts_step`
    for every frame, and that the demuxer's packets carry exactly these pts, one packet
    per frame; then a reader can name a frame, and the packet that codes it, by its pts
    (and drop unused non-reference frames). 0 when that does not hold.
    """

    num_frames: int
    fps: float
    height: int
    width: int
    codec: str
    keyframes: list[int] = field(default_factory=list)
    keyframe_pts: list[int] = field(default_factory=list)
    pts_start: int = 0
    pts_step: int = 0


@dataclass(frozen=True)
class VideoLimits:
    """Caps on one video (0 = no cap); `DataConfig` holds the configured values.

    Attributes:
        max_bytes: file size; larger files are `too_large` (checked before reading).
        max_pixels: height x width of the video stream (`too_many_pixels`, checked before
            the first frame is decoded).
        max_frames: frames a probe decodes, and frame indices a reader is asked for
            (`too_many_frames`).
        decode_timeout_s: wall time of one probe or one read (`decode_timeout`; checked
            between frames, so a single frame is never cut).
    """

    max_bytes: int = 0
    max_pixels: int = 0
    max_frames: int = 0
    decode_timeout_s: float = 0.0

    @classmethod
    def from_config(cls, data) -> VideoLimits:  # noqa: ANN001 -- rayssl.config.DataConfig
        """The caps of the data settings (`data.max_*`)."""
        return cls(
            max_bytes=data.max_video_bytes,
            max_pixels=data.max_pixels,
            max_frames=data.max_frames,
            decode_timeout_s=data.decode_timeout_s,
        )

    def check_size(self, size: int, what: str = "") -> None:
        """`too_large` if `size` bytes exceed `max_bytes`."""
        if self.max_bytes and size > self.max_bytes:
            raise VideoError(
                "too_large", f"{what + ': ' if what else ''}{size} bytes > {self.max_bytes}"
            )

    def deadline(self) -> float | None:
        return time.monotonic() + self.decode_timeout_s if self.decode_timeout_s > 0 else None


NO_LIMITS = VideoLimits()


@dataclass(frozen=True)
class VideoAccess:
    """How a task opens a video: the caps, and above which size an S3 object is
    streamed (`video_source`). Picklable; `from_config` takes a `DataConfig`."""

    limits: VideoLimits = NO_LIMITS
    stream_threshold_bytes: int = 16 << 20
    stream_block_bytes: int = 1 << 20

    @classmethod
    def from_config(cls, data) -> VideoAccess:  # noqa: ANN001 -- rayssl.config.DataConfig
        return cls(
            VideoLimits.from_config(data), data.stream_threshold_bytes, data.stream_block_bytes
        )

    def source(self, uri: str, options=None, size_bytes: int = -1) -> Source:  # noqa: ANN001
        """`video_source` of `uri` under these settings."""
        return video_source(
            uri,
            options,
            limits=self.limits,
            size_bytes=size_bytes,
            stream_threshold_bytes=self.stream_threshold_bytes,
            stream_block_bytes=self.stream_block_bytes,
        )


#: Caps off, the default streaming threshold (tests, benchmarks, old callers).
DEFAULT_ACCESS = VideoAccess()


def _check_deadline(deadline: float | None, done: int) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise VideoError("decode_timeout", f"time limit reached after {done} frames")


def check_frame_count(num_frames: int, size_bytes: int, what: str = "") -> None:
    """`implausible_frames` when `num_frames` (a manifest's or a container's claim) cannot
    fit in a file of `size_bytes` (< 0: unknown, not checked): callers check before
    allocating anything from the count."""
    if size_bytes >= 0 and num_frames > max(size_bytes, 0) // MIN_BYTES_PER_FRAME:
        raise VideoError(
            "implausible_frames",
            f"{what + ': ' if what else ''}{num_frames} frames claimed in {size_bytes} bytes",
        )


def _source_size(source: Source) -> int:
    """Bytes of `source` (-1 when unknown); `missing` / `empty_file` checked here."""
    if isinstance(source, bytes | bytearray | memoryview):
        n = len(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.exists():
            raise VideoError("missing", str(path))
        n = path.stat().st_size
    else:
        size_fn = getattr(source, "size", None)
        n = int(size_fn()) if callable(size_fn) else -1
        if n < 0 and source.seekable():
            pos = source.tell()
            n = source.seek(0, io.SEEK_END)
            source.seek(pos)
    if n == 0:
        raise VideoError("empty_file", "0 bytes")
    return n


def _head(source: Source, n: int = 64) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:n])
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            return f.read(n)
    pos = source.tell()
    try:
        return source.read(n) or b""
    finally:
        source.seek(pos)


def open_container(source: Source, limits: VideoLimits = NO_LIMITS) -> av.container.InputContainer:
    """The only way this project opens a video for reading.

    `source`: a local path, the file's bytes, or a seekable binary file object (e.g.
    `rayssl.io.storage.RangedReader` over an S3 object). The file size is checked
    against `limits.max_bytes` first; playlist-like text (HLS, concat, DASH) is refused
    whatever its extension; FFmpeg may only use the demuxers in `ALLOWED_FORMATS` and the
    `file` protocol, so a file cannot make it fetch a URL or read another local file.

    Raises:
        VideoError: `missing`, `empty_file`, `too_large`, `unsafe_format` or `not_a_video`.
    """
    size = _source_size(source)
    limits.check_size(size)
    head = _head(source).lstrip()
    if head.startswith(_PLAYLIST_MAGIC):
        raise VideoError("unsafe_format", f"a playlist or reference file ({head[:12]!r}...)")
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(source)
    elif isinstance(source, str | os.PathLike):
        source = str(source)
    options = {
        "format_whitelist": ",".join(ALLOWED_FORMATS),
        "protocol_whitelist": PROTOCOL_WHITELIST,
    }
    try:
        return av.open(source, mode="r", metadata_errors="ignore", container_options=options)
    except av.error.ArgumentError as e:
        # FFmpeg recognised a format that is not allowed (or found nothing at all and
        # a low-score guess was not allowed): tell the two apart without the allow-list
        # and with no protocol, so nothing the file names can be opened.
        raise _diagnose(source, e) from e
    except av.error.FFmpegError as e:
        raise VideoError("not_a_video", _short(e)) from e


def _diagnose(source: str | io.IOBase, error: BaseException) -> VideoError:
    f = open(source, "rb") if isinstance(source, str) else source  # noqa: SIM115
    try:
        f.seek(0)
        with av.open(
            f, mode="r", metadata_errors="ignore", container_options={"protocol_whitelist": "none"}
        ) as container:
            name = container.format.name
        return VideoError("unsafe_format", f"container format {name!r} is not allowed")
    except av.error.ArgumentError:
        return VideoError("unsafe_format", "the demuxer tried to open another file or URL")
    except av.error.FFmpegError:
        return VideoError("not_a_video", _short(error))
    finally:
        if isinstance(source, str):
            f.close()


def _open(source: Source, limits: VideoLimits = NO_LIMITS) -> av.container.InputContainer:
    return open_container(source, limits)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _video_stream(
    container: av.container.InputContainer, threads: int, limits: VideoLimits = NO_LIMITS
) -> av.VideoStream:
    if not container.streams.video:
        raise VideoError("no_video_stream", "container has no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if ctx is None:  # FFmpeg knows no decoder for this codec (or its header is broken)
        raise VideoError("decode_error", "no decoder for the video stream's codec")
    _check_pixels(ctx.height, ctx.width, limits)
    if threads > 1:
        ctx.thread_type = "AUTO"
        ctx.thread_count = threads
    else:
        ctx.thread_type = "NONE"
        ctx.thread_count = 1
    return stream


def _check_pixels(height: int, width: int, limits: VideoLimits) -> None:
    if limits.max_pixels and height * width > limits.max_pixels:
        raise VideoError(
            "too_many_pixels", f"{width}x{height} > {limits.max_pixels} pixels per frame"
        )


def _fps(stream: av.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(source: Source, threads: int = 1, limits: VideoLimits = NO_LIMITS) -> VideoProbe:
    """Decode a whole video once and report what really decodes.

    Args:
        source: a local path, the file's bytes, or a binary file object.
        threads: decoder threads (1 = one core; parallelism comes from workers).
        limits: caps (`VideoLimits`): size, pixels, frames, decode time. A container
            that claims more frames than its size can hold is `implausible_frames`.

    Returns:
        VideoProbe with the true number of decoded frames (not the container's claim).

    Raises:
        VideoError: with a reason from ERROR_REASONS. A file whose decode breaks part
            way keeps the frames decoded before the break only if at least one frame
            decoded and the break was at the end (a truncated tail); anything else is
            `decode_error`.
    """
    deadline = limits.deadline()
    size = _source_size(source)
    container = _open(source, limits)
    try:
        stream = _video_stream(container, threads, limits)
        if stream.frames:
            check_frame_count(int(stream.frames), size, "the container")
        num_frames = 0
        height = width = 0
        keyframes: list[int] = []
        keyframe_pts: list[int] = []
        last_pts: int | None = None
        pts_ok = True
        frame_pts: list[int] = []
        packet_pts: list[int] = []
        packets_ok = True
        try:
            for packet in container.demux(stream):
                if packet.size:
                    if packet.pts is None:
                        packets_ok = False
                    else:
                        packet_pts.append(int(packet.pts))
                for frame in packet.decode():
                    _check_deadline(deadline, num_frames)
                    if limits.max_frames and num_frames >= limits.max_frames:
                        raise VideoError("too_many_frames", f"more than {limits.max_frames}")
                    _check_pixels(frame.height, frame.width, limits)
                    if num_frames == 0:
                        height, width = frame.height, frame.width
                    pts = frame.pts
                    if pts is None or (last_pts is not None and pts <= last_pts):
                        pts_ok = False
                    else:
                        frame_pts.append(int(pts))
                    last_pts = pts
                    if frame.key_frame and pts is not None:
                        keyframes.append(num_frames)
                        keyframe_pts.append(int(pts))
                    num_frames += 1
        except (av.error.FFmpegError, ValueError) as e:
            if num_frames == 0:
                raise VideoError("decode_error", _short(e)) from e
            # A truncated tail: the frames before the break decode and are kept.
        if num_frames == 0:
            raise VideoError("zero_frames", "no frame decoded")
        if not pts_ok:
            keyframes, keyframe_pts = [], []
        pts_start, pts_step = _pts_grid(frame_pts, packet_pts) if pts_ok and packets_ok else (0, 0)
        return VideoProbe(
            num_frames=num_frames,
            fps=_fps(stream),
            height=height,
            width=width,
            codec=stream.codec_context.name,
            keyframes=keyframes,
            keyframe_pts=keyframe_pts,
            pts_start=pts_start,
            pts_step=pts_step,
        )
    finally:
        container.close()


def _pts_grid(frame_pts: list[int], packet_pts: list[int]) -> tuple[int, int]:
    """(pts_start, pts_step) when frame i has pts start + i * step and the packets carry
    exactly the frames' pts (one packet per frame); else (0, 0)."""
    if len(frame_pts) < 2 or sorted(packet_pts) != frame_pts:
        return 0, 0
    start, step = frame_pts[0], frame_pts[1] - frame_pts[0]
    if step <= 0 or any(p != start + i * step for i, p in enumerate(frame_pts)):
        return 0, 0
    return start, step


def _to_rgb(
    frame: av.VideoFrame, size: tuple[int, int] | None, reformatter: VideoReformatter
) -> np.ndarray:
    """YUV -> RGB at native size (swscale), then cv2 bilinear resize if asked.

    The reformatter keeps its swscale context between the frames of a clip (building
    one per frame, as `frame.reformat` does, cost more than decoding the frame), and
    cv2.INTER_LINEAR is both the reference code's resize and ~2x cheaper than a
    scaling swscale pass.
    """
    rgb = reformatter.reformat(frame, format="rgb24").to_ndarray()
    if size is None or (rgb.shape[0], rgb.shape[1]) == tuple(size):
        return rgb
    height, width = size
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)


def read_frames(
    source: Source,
    indices: Sequence[int] | np.ndarray,
    *,
    size: tuple[int, int] | None = None,
    keyframes: Sequence[int] | None = None,
    keyframe_pts: Sequence[int] | None = None,
    threads: int = 1,
    gap_seek: bool = True,
    pts_start: int | None = None,
    pts_step: int | None = None,
    skip_nonref: bool = True,
    limits: VideoLimits = NO_LIMITS,
) -> np.ndarray:
    """Return exactly the frames at `indices` (display order, 0-based), as RGB uint8.

    Args:
        source: a local path, the file's bytes, or a binary file object.
        indices: frame indices, any order, repeats allowed (slow paces repeat frames).
        size: optional (height, width) to resize to (cv2 bilinear, as the reference code).
        keyframes, keyframe_pts: from `probe_video` (the manifest stores them). With
            them the reader seeks to the keyframe before the first index; without them
            it decodes from the start.
        threads: decoder threads.
        gap_seek: with keyframes, where a keyframe lies between two wanted frames (the
            two clips of a contrastive pair far apart), seek to it instead of decoding
            the gap; all in one open of the file. False decodes from the keyframe before
            the first index through the last, in one pass.
        pts_start, pts_step: from `probe_video` (the manifest's `pts_start`, `pts_step`).
            With pts_step > 0 and `skip_nonref`, frames are named by pts and the decoder
            drops the non-reference frames that are not asked for (a pace clip's
            B-frames between its frames). None / 0 (an old manifest): frames are counted
            from the keyframe and every frame is decoded.
        skip_nonref: False decodes every frame even with a pts grid.
        limits: caps (`VideoLimits`); an index at or past `max_frames` is
            `too_many_frames` before anything is opened, and the whole read must finish
            within `decode_timeout_s` (`decode_timeout`).

    Returns:
        (len(indices), H, W, 3) uint8 array; row i is frame indices[i]. Without `size`,
        H x W is the size of the lowest index (frames of a stream whose resolution
        changes are resized to it).

    Raises:
        VideoError: `decode_error` if the video ends or breaks before a requested
            frame; ValueError for negative indices.
    """
    idx = np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise ValueError("indices is empty")
    if idx.min() < 0:
        raise ValueError(f"negative frame index {int(idx.min())}")
    wanted = np.unique(idx)
    last = int(wanted[-1])
    if limits.max_frames and last >= limits.max_frames:
        raise VideoError("too_many_frames", f"frame {last} asked, limit {limits.max_frames}")
    deadline = limits.deadline()

    have_keys = bool(keyframes and keyframe_pts and len(keyframes) == len(keyframe_pts))
    key_list = [int(k) for k in keyframes] if have_keys and keyframes else []
    pts_list = [int(p) for p in keyframe_pts] if have_keys and keyframe_pts else []
    segments = _segments(wanted, key_list) if gap_seek and have_keys else [wanted]
    grid: tuple[int, int] | None = None
    if skip_nonref and pts_step and int(pts_step) > 0:
        grid = (int(pts_start or 0), int(pts_step))
        # The grid must name every keyframe as the keyframe lists do: a grid shifted by a
        # frame would otherwise be consistent with every pts and name the wrong frames.
        if any(p != grid[0] + k * grid[1] for k, p in zip(key_list, pts_list, strict=True)):
            grid = None

    container = _open(source, limits)
    try:
        stream = _video_stream(container, threads, limits)
        frames: dict[int, np.ndarray] | None = {}
        for segment in segments:
            k = bisect_right(key_list, int(segment[0])) - 1
            if k > 0:
                got = _decode_range(
                    container, stream, segment, key_list[k], pts_list[k], size, grid, deadline
                )
            else:  # no keyframe info, or the segment starts in the first GOP
                got = (
                    _decode_range(container, stream, segment, 0, None, size, grid, deadline)
                    if _seek(container, 0)
                    else None
                )
            if got is None:  # the seek failed or could not be verified
                frames = None
                break
            assert frames is not None
            frames.update(got)
    finally:
        container.close()
    if frames is None:
        # A seek could not be verified: decode everything from the start, in one pass,
        # with a fresh demuxer and decoder.
        if hasattr(source, "seek"):
            source.seek(0)
        container = _open(source, limits)
        try:
            stream = _video_stream(container, threads, limits)
            frames = _decode_range(container, stream, wanted, 0, None, size, None, deadline)
        finally:
            container.close()
        if frames is None:
            raise VideoError("decode_error", "decoder could not restart at frame 0")

    missing = [int(i) for i in wanted if int(i) not in frames]
    if missing:
        raise VideoError(
            "decode_error",
            f"frames {missing[:4]}{'...' if len(missing) > 4 else ''} not decodable "
            f"(asked up to {last})",
        )
    # A stream whose resolution changes mid-way (and no `size`): one clip, one size.
    first = frames[int(wanted[0])]
    shape = (first.shape[1], first.shape[0])
    return np.stack(
        [
            f if f.shape == first.shape else cv2.resize(f, shape, interpolation=cv2.INTER_LINEAR)
            for f in (frames[int(i)] for i in idx)
        ]
    )


def _seek(container: av.container.InputContainer, *args, **kwargs) -> bool:
    """`container.seek`; False when the demuxer cannot seek (a broken AVI header makes
    FFmpeg refuse every seek with EPERM although the file decodes from the start)."""
    try:
        container.seek(*args, **kwargs)
    except av.error.FFmpegError:
        return False
    return True


#: Seek over a gap between wanted frames only when it skips more than this many frames:
#: a seek (demuxer seek, decoder flush, restart at a keyframe) costs about as much as
#: decoding one or two GOPs of frames. Measured on pairs of pace clips of 300-frame
#: 240x320 videos (MPEG-4 GOP 12, H.264): thresholds 12-24 decoded 25-45% more clips per
#: core than never seeking and ~20% more than always seeking; 96 lost most of the gain.
SEEK_MIN_SKIP = 24


def _segments(
    wanted: np.ndarray, keyframes: list[int], min_skip: int = SEEK_MIN_SKIP
) -> list[np.ndarray]:
    """Split sorted `wanted` indices where a keyframe lies more than `min_skip` frames
    after one wanted frame and at or before the next: seeking to it skips decoding the
    frames between."""
    if len(keyframes) < 2 or len(wanted) < 2:
        return [wanted]
    keys = np.asarray(keyframes, dtype=np.int64)
    # keyframe at or before each wanted frame
    pos = np.searchsorted(keys, wanted, side="right") - 1
    before = np.where(pos >= 0, keys[np.maximum(pos, 0)], -1)
    cuts = np.nonzero(before[1:] - wanted[:-1] > min_skip)[0] + 1
    return np.split(wanted, cuts)


def _decode_range(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: np.ndarray,
    start_index: int,
    start_pts: int | None,
    size: tuple[int, int] | None,
    grid: tuple[int, int] | None = None,
    deadline: float | None = None,
) -> dict[int, np.ndarray] | None:
    """Decode forward from a keyframe, counting display indices (or, with a pts `grid`,
    naming frames by pts and dropping unwanted non-reference frames).

    Returns the decoded frames by index, or None when the landing after the seek
    could not be verified (the caller then decodes from the start).
    """
    if grid is not None:
        return _decode_range_skip(
            container, stream, wanted, start_index, start_pts, size, grid, deadline
        )
    wanted_set = set(int(i) for i in wanted)
    last = int(wanted[-1])
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    if start_pts is not None and not _seek(
        container, start_pts, stream=stream, backward=True, any_frame=False
    ):
        return None
    index = None if start_pts is not None else start_index
    try:
        for frame in container.decode(stream):
            _check_deadline(deadline, len(out))
            if index is None:
                assert start_pts is not None  # index starts as None only after a seek
                # Find the keyframe we seeked to; frames before it (an earlier
                # landing) are skipped; passing it means we cannot know where we are.
                if frame.pts is None:
                    return None
                if frame.pts < start_pts:
                    continue
                if frame.pts != start_pts or not frame.key_frame:
                    return None
                index = start_index
            if index in wanted_set:
                out[index] = _to_rgb(frame, size, reformatter)
            if index >= last:
                break
            index += 1
    except (av.error.FFmpegError, ValueError):
        # A broken tail: whatever was decoded is kept; missing frames are reported.
        pass
    if index is None:  # the stream ended before the keyframe we seeked to: not landed
        return None
    return out


def read_all_frames(source: Source, size: tuple[int, int] | None = None) -> np.ndarray:
    """Sequentially decode every frame (the reference for frame-exactness tests)."""
    container = _open(source)
    try:
        stream = _video_stream(container, 1)
        reformatter = VideoReformatter()
        return np.stack([_to_rgb(f, size, reformatter) for f in container.decode(stream)])
    finally:
        container.close()


def _decode_range_skip(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    wanted: np.ndarray,
    start_index: int,
    start_pts: int | None,
    size: tuple[int, int] | None,
    grid: tuple[int, int],
    deadline: float | None = None,
) -> dict[int, np.ndarray] | None:
    """`_decode_range` for a stream whose frame i has pts `pts0 + i * step` (the probe
    checked it, and that each packet carries its frame's pts).

    Each packet whose pts names a frame that is not wanted is sent with
    `skip_frame = NONREF`: the decoder drops it if nothing is predicted from it (a
    B-frame) and decodes it otherwise, so the frames that are decoded are decoded
    exactly as in a sequential decode. Decoded frames are named by pts, not by counting,
    so a dropped frame cannot shift the index of the next one. Any surprise (a frame off
    the grid or out of order, a wanted frame that did not come out although a later one
    did, a landing elsewhere than expected) returns None: the caller decodes from the
    start without dropping anything.
    """
    pts0, step = grid
    # The landing anchors the grid: the keyframe seeked to (or frame 0 from the start)
    # must be where the grid puts it.
    expect = start_pts if start_pts is not None else pts0
    if expect != pts0 + start_index * step:
        return None
    wanted_set = set(int(i) for i in wanted)
    last = int(wanted[-1])
    out: dict[int, np.ndarray] = {}
    reformatter = VideoReformatter()
    ctx = stream.codec_context
    if start_pts is not None and not _seek(
        container, start_pts, stream=stream, backward=True, any_frame=False
    ):
        return None
    # After a seek the first frame at or after the keyframe's pts must be that keyframe;
    # from the start (seek(0)) it must be frame 0.
    landed = False
    index = -1  # display index of the last decoded frame
    skipping = False
    try:
        for packet in container.demux(stream):
            skip = False
            if packet.pts is not None:
                i, r = divmod(int(packet.pts) - pts0, step)
                skip = r == 0 and i not in wanted_set
            if skip != skipping:
                ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                skipping = skip
            for frame in packet.decode():
                _check_deadline(deadline, len(out))
                pts = frame.pts
                if pts is None:
                    return None
                if not landed:
                    if pts < expect and start_pts is not None:
                        continue  # an earlier landing (or leading frames): not ours
                    if pts != expect or (start_pts is not None and not frame.key_frame):
                        return None
                    landed = True
                i, r = divmod(int(pts) - pts0, step)
                if r or i <= index:
                    return None
                index = i
                if i in wanted_set:
                    out[i] = _to_rgb(frame, size, reformatter)
                if i >= last:
                    break
            if index >= last:
                break
    except (av.error.FFmpegError, ValueError):
        # A broken tail: whatever was decoded is kept; missing frames are reported.
        pass
    finally:
        if skipping:
            ctx.skip_frame = "DEFAULT"
    if not landed:
        return None
    if any(i <= index and i not in out for i in wanted_set):
        return None  # a wanted frame was dropped or never came out: do not guess
    return out


def video_source(
    uri: str,
    options: storage.StorageOptions | None = None,
    *,
    limits: VideoLimits = NO_LIMITS,
    size_bytes: int = -1,
    stream_threshold_bytes: int = 16 << 20,
    stream_block_bytes: int = 1 << 20,
) -> Source:
    """What to hand `probe_video` / `read_frames` for a video URI, in bounded memory.

    A local path (or ``file://`` URI) is returned as a path: FFmpeg reads it. An S3 object
    of at most `stream_threshold_bytes` is fetched whole (one GET); a larger one is a
    `storage.RangedReader` fetching `stream_block_bytes` blocks by ranged GETs, so a
    clip of a long video costs the blocks its frames lie in, not the whole object.
    `size_bytes` (a manifest's, when >= 0) saves the HEAD request; the size is checked
    against `limits.max_bytes` before anything is fetched (`too_large`).

    Raises:
        VideoError: `too_large`; storage errors pass through (`storage.StorageError`).
    """
    if not storage.is_s3(uri):
        return uri[len("file://") :] if uri.startswith("file://") else uri
    n = size_bytes if size_bytes is not None and size_bytes >= 0 else storage.size(uri, options)
    limits.check_size(n, uri)
    if n <= stream_threshold_bytes:
        return storage.read_bytes(uri, options=options)
    return storage.RangedReader(uri, options, size=n, block_bytes=stream_block_bytes)
