"""A generated corpus that mixes good videos with every kind of bad file we can make.

Long runs over real datasets meet files that are broken, odd or gone. This module writes
them on purpose -- every file is produced by code (PyAV / FFmpeg encoders, then byte
surgery), nothing is checked in -- and says for each what the tools should do with it:

* ``train``: the file is usable, perhaps unusual (VP8/WebM, MPEG-2, MJPEG, 1080p, a
  rotation flag, variable or time-lapse frame rate, a resolution change, a broken but
  decodable container) -- ``rayssl manifest`` indexes it, ``rayssl prepare`` transcodes
  it, and pre-training makes clips of it;
* ``skip``: the file cannot be trained on -- it is a row with an ``error`` reason in the
  manifest (and in ``prepare``'s output), or, when the problem only shows when clips
  are drawn (too short, deleted after indexing), a masked draw counted in
  ``train/skipped_<reason>``.

Used by ``tests/tools/test_bad_corpus.py``; :data:`CATEGORIES` documents every case.

Example::

    files = generate_bad_corpus("/tmp/bad", seed=0)
    for f in files:
        print(f.category.name, f.path.name, f.expected, f.category.manifest_error)
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from rayssl.tools.synthetic import MOTION_CLASSES, render_video

__all__ = ["CATEGORIES", "Category", "CorpusFile", "generate_bad_corpus"]

TRAIN, SKIP = "train", "skip"
#: Frames of a good file: every pace of {1, 2} fits a 16-frame clip (3 and 4 are redrawn).
GOOD_FRAMES = 32
HEIGHT, WIDTH = 48, 64
#: The `--max-video-bytes` (`data.max_video_bytes`) the corpus is meant to be run with:
#: every good file is far below it, the ``oversized`` file above it.
MAX_VIDEO_BYTES = 2 << 20


@dataclass(frozen=True)
class Category:
    """What a category of file is and what should happen to it.

    Attributes:
        name: the category (also the file's class folder).
        expected: ``train`` or ``skip``.
        manifest_error: the manifest's ``error`` for it (None: a usable row).
        prepare_error: the ``error`` of its row in ``rayssl prepare``'s output manifest
            (None: transcoded).
        train_skip: the ``skip_reason`` of the draws of its usable rows (original or
            prepared) in pre-training (None: valid clips).
        exact_frames: the manifest counts exactly the frames written (False: the decode
            stops early or drops frames, at least ``min_frames`` remain).
        min_frames: the fewest frames a usable row of it may have.
        what: one line for the docs.
    """

    name: str
    expected: str
    manifest_error: str | None = None
    prepare_error: str | None = None
    train_skip: str | None = None
    exact_frames: bool = True
    min_frames: int = 1
    what: str = ""


def _good(name: str, what: str, exact: bool = True) -> Category:
    return Category(name, TRAIN, exact_frames=exact, min_frames=16, what=what)


def _bad(name: str, error: str, what: str) -> Category:
    return Category(name, SKIP, manifest_error=error, prepare_error=error, what=what)


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        _good("h264", "H.264 MP4, a keyframe every 8 frames"),
        _good("mpeg4", "MPEG-4 part 2 AVI with B-frames (UCF101's format)"),
        _good("vp8", "VP8 in WebM"),
        _good("mpeg2", "MPEG-2 in an MPEG program stream (.mpg)"),
        _good("mjpeg", "Motion JPEG AVI (every frame a keyframe)"),
        _good("hires", "1920x1080 H.264, 16 frames"),
        _good("rotated", "H.264 MP4 with a 90-degree display matrix (phone video)"),
        _good("vfr", "H.264 MP4 with variable frame durations (20-100 ms)"),
        _good("timelapse", "H.264 MP4, one frame every 50 minutes (0.0003 fps)"),
        _good(
            "size_change",
            "two MPEG-2 streams of different sizes back to back (48x64, then 64x96)",
            exact=False,
        ),
        _good(
            "unseekable",
            "MPEG-4 AVI whose header chunk size is garbage: FFmpeg refuses every seek "
            "but decodes it from the start",
        ),
        _good(
            "corrupt_concealed",
            "MPEG-4 AVI with 256 random bytes mid-file: the decoder conceals the damage",
            exact=False,
        ),
        _good(
            "corrupt_break",
            "H.264 MP4 with 256 random bytes at 70% of its frames: decoding breaks there, "
            "the frames before it are kept",
            exact=False,
        ),
        _good(
            "truncated_tail",
            "MPEG-4 AVI cut at 70%: the frames before the cut are kept",
            exact=False,
        ),
        _bad("truncated", "not_a_video", "H.264 MP4 cut at 60%: its index (moov) is lost"),
        _bad(
            "oversized",
            "too_large",
            "a good H.264 MP4 padded (a `free` atom) past MAX_VIDEO_BYTES: refused before "
            "a byte is read",
        ),
        _bad(
            "huge_frame_count",
            "implausible_frames",
            "MPEG-4 AVI whose headers claim 2^31-1 frames in 10 KB",
        ),
        _bad(
            "concat_playlist",
            "unsafe_format",
            "an FFmpeg concat list named .mp4 naming a good video of the corpus: would make "
            "the reader open other local files",
        ),
        _bad(
            "hls_playlist",
            "unsafe_format",
            "an HLS playlist named .mp4 naming an http:// URL: would make the reader fetch it",
        ),
        _bad("empty", "empty_file", "0 bytes, .mp4"),
        _bad("text", "not_a_video", "a text file named .avi"),
        _bad("audio_only", "no_video_stream", "an AAC-only .mp4"),
        _bad(
            "zero_frames",
            "zero_frames",
            "Matroska H.264 whose every packet is zeroed: opens, decodes no frame",
        ),
        _bad(
            "unknown_codec",
            "decode_error",
            "Matroska whose codec id names no codec FFmpeg knows",
        ),
        Category(
            "image",
            SKIP,
            train_skip="too_short",
            min_frames=1,
            what="a JPEG named .mp4: a 1-frame video, too short for any pace",
        ),
        Category(
            "too_short",
            SKIP,
            train_skip="too_short",
            min_frames=1,
            what="H.264 MP4 of 6 frames: too short for any pace (16 frames at pace 1)",
        ),
        Category(
            "missing",
            SKIP,
            prepare_error="missing",
            train_skip="missing",
            min_frames=16,
            what="a good H.264 MP4 deleted after the manifest was made",
        ),
    )
}


@dataclass(frozen=True)
class CorpusFile:
    """One generated file.

    Attributes:
        path: the file, ``out_dir/<category>/<category>_<i><ext>``.
        category: its :class:`Category`.
        frames_written: frames encoded (0 for a file that is not a video).
        delete_after_manifest: delete it once the manifest is made (category ``missing``).
    """

    path: Path
    category: Category
    frames_written: int
    delete_after_manifest: bool = False

    @property
    def video_id(self) -> str:
        """Its ``video_id`` in a ``--format folder`` manifest of ``out_dir``."""
        return f"{self.path.parent.name}/{self.path.stem}"

    @property
    def expected(self) -> str:
        return self.category.expected


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _encode(
    frames: Sequence[np.ndarray],
    container_format: str,
    encoder: str,
    options: dict[str, str] | None = None,
    *,
    pix_fmt: str = "yuv420p",
    pts: Sequence[int] | None = None,
    time_base: Fraction | None = None,
    rotation: int | None = None,
) -> bytes:
    """RGB frames -> an encoded file (bytes). ``pts`` in ``time_base`` for irregular
    timestamps (else frame i has pts i at 25 fps); ``rotation`` writes a display matrix."""
    height, width = frames[0].shape[:2]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container_format) as container:
        stream = container.add_stream(
            encoder, rate=None if time_base else 25, options=dict(options or {})
        )
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i if pts is None else int(pts[i])
            if time_base is not None:
                frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _h264(frames: Sequence[np.ndarray], **kw) -> bytes:
    return _encode(frames, "mp4", "libx264", {"preset": "veryfast", "g": "8"}, **kw)


def _mpeg4_avi(frames: Sequence[np.ndarray]) -> bytes:
    options = {"bf": "2", "g": "12", "flags": "+qscale", "global_quality": str(4 * 118)}
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=25, options=options)
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt, stream.codec_tag = "yuv420p", "XVID"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


#: libvpx in one thread, real-time mode: 10x faster than its defaults on tiny frames.
_VP8 = {"g": "8", "threads": "1", "deadline": "realtime", "cpu-used": "8"}


def _mpeg2(frames: Sequence[np.ndarray]) -> bytes:
    return _encode(frames, "mpeg", "mpeg2video", {"g": "8", "bf": "2"})


def _mkv_h264(frames: Sequence[np.ndarray]) -> bytes:
    return _encode(frames, "matroska", "libx264", {"preset": "veryfast", "g": "8"})


def _packets(data: bytes) -> list[tuple[int, int]]:
    """(byte offset, size) of every video packet of a file, in decode order."""
    with av.open(io.BytesIO(data), mode="r") as container:
        return [
            (int(p.pos), int(p.size))
            for p in container.demux(video=0)
            if p.size and p.pos is not None and p.pos >= 0
        ]


def _hires(frames: Sequence[np.ndarray], height: int = 1080, width: int = 1920) -> bytes:
    """Small RGB frames upscaled to ``height x width`` H.264. The planes are upscaled in
    YUV 4:2:0, which costs a third of upscaling RGB and converting at full size."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i, rgb in enumerate(frames):
            h, w = rgb.shape[:2]
            yuv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
            luma = cv2.resize(yuv[:h], (width, height), interpolation=cv2.INTER_LINEAR)
            chroma = [
                cv2.resize(
                    plane.reshape(h // 2, w // 2),
                    (width // 2, height // 2),
                    interpolation=cv2.INTER_LINEAR,
                ).reshape(height // 4, width)
                for plane in (yuv[h : h + h // 4], yuv[h + h // 4 :])
            ]
            frame = av.VideoFrame.from_ndarray(np.concatenate([luma, *chroma]), format="yuv420p")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _rng(seed: int, key: int) -> np.random.Generator:
    """The generator of damage and timing choices (frames use ``[seed, 0, clip]``)."""
    return np.random.default_rng([seed, 1, key])


def _random(seed: int, key: int, n: int) -> bytes:
    return _rng(seed, key).bytes(n)


# --------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------


def _files(seed: int, per_codec: int) -> list[tuple[str, str, bytes, int]]:
    """(category, extension, bytes, frames written) of every file."""
    clip_no = iter(range(1_000_000))

    def frames(n: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
        k = next(clip_no)
        rng = np.random.default_rng([seed, 0, k])
        return list(render_video(n, height, width, MOTION_CLASSES[k % len(MOTION_CLASSES)], rng))

    out: list[tuple[str, str, bytes, int]] = []
    for _ in range(per_codec):
        out += [
            ("h264", ".mp4", _h264(frames(GOOD_FRAMES)), GOOD_FRAMES),
            ("mpeg4", ".avi", _mpeg4_avi(frames(GOOD_FRAMES)), GOOD_FRAMES),
            (
                "vp8",
                ".webm",
                _encode(frames(GOOD_FRAMES), "webm", "libvpx", _VP8),
                GOOD_FRAMES,
            ),
            ("mpeg2", ".mpg", _mpeg2(frames(GOOD_FRAMES)), GOOD_FRAMES),
            (
                "mjpeg",
                ".avi",
                _encode(frames(GOOD_FRAMES), "avi", "mjpeg", pix_fmt="yuvj420p"),
                GOOD_FRAMES,
            ),
        ]

    # Odd but good.
    out.append(("hires", ".mp4", _hires(frames(16)), 16))
    out.append(("rotated", ".mp4", _h264(frames(GOOD_FRAMES), rotation=90), GOOD_FRAMES))
    durations = _rng(seed, 1).integers(1, 6, GOOD_FRAMES)  # x 20 ms
    pts = np.concatenate([[0], np.cumsum(durations)[:-1]])
    vfr = _h264(frames(GOOD_FRAMES), pts=pts, time_base=Fraction(1, 50))
    out.append(("vfr", ".mp4", vfr, GOOD_FRAMES))
    lapse = _h264(frames(GOOD_FRAMES), pts=np.arange(GOOD_FRAMES) * 3000, time_base=Fraction(1, 1))
    out.append(("timelapse", ".mp4", lapse, GOOD_FRAMES))
    # MPEG program streams concatenate: the decoder meets a new sequence header, new size.
    two = _mpeg2(frames(20)) + _mpeg2(frames(20, 64, 96))
    out.append(("size_change", ".mpg", two, 40))

    avi = bytearray(_mpeg4_avi(frames(GOOD_FRAMES)))
    junk = avi.find(b"JUNK")
    avi[junk + 4 : junk + 8] = _random(seed, 2, 4)  # the chunk's size field
    out.append(("unseekable", ".avi", bytes(avi), GOOD_FRAMES))

    avi = bytearray(_mpeg4_avi(frames(GOOD_FRAMES)))
    at = len(avi) // 2
    avi[at : at + 256] = _random(seed, 3, 256)
    out.append(("corrupt_concealed", ".avi", bytes(avi), GOOD_FRAMES))

    mp4 = bytearray(_h264(frames(48)))
    pos, size = _packets(bytes(mp4))[int(0.7 * 48)]
    mp4[pos + 4 : pos + size] = _random(seed, 4, size - 4)  # a frame's NAL units, not its length
    out.append(("corrupt_break", ".mp4", bytes(mp4), 48))

    whole = _mpeg4_avi(frames(48))
    out.append(("truncated_tail", ".avi", whole[: int(0.7 * len(whole))], 48))

    # Bad.
    whole = _h264(frames(GOOD_FRAMES))
    out.append(("truncated", ".mp4", whole[: int(0.6 * len(whole))], GOOD_FRAMES))
    out.append(("empty", ".mp4", b"", 0))
    out.append(("text", ".avi", b"This is not a video file.\nJust some text.\n" * 8, 0))
    out.append(("audio_only", ".mp4", _audio_only(), 0))

    mkv = bytearray(_mkv_h264(frames(GOOD_FRAMES)))
    for pos, size in _packets(bytes(mkv)):
        mkv[pos : pos + size] = bytes(size)
    out.append(("zero_frames", ".mkv", bytes(mkv), GOOD_FRAMES))

    mkv = bytearray(_mkv_h264(frames(GOOD_FRAMES)))
    at = mkv.find(b"V_MPEG4/ISO/AVC")
    mkv[at : at + 15] = b"V_RAYSSL/NO/DEC"  # same length: the EBML sizes stay right
    out.append(("unknown_codec", ".mkv", bytes(mkv), GOOD_FRAMES))

    ok, jpeg = cv2.imencode(".jpg", frames(1)[0])
    assert ok
    out.append(("image", ".mp4", jpeg.tobytes(), 1))
    out.append(("too_short", ".mp4", _h264(frames(6)), 6))

    padding = MAX_VIDEO_BYTES + (1 << 20)
    free = struct.pack(">I", padding + 8) + b"free" + bytes(padding)
    out.append(("oversized", ".mp4", _h264(frames(GOOD_FRAMES)) + free, GOOD_FRAMES))
    avi = bytearray(_mpeg4_avi(frames(GOOD_FRAMES)))
    at = avi.find(b"strh")  # AVISTREAMHEADER.dwLength, then AVIMAINHEADER.dwTotalFrames
    struct.pack_into("<I", avi, at + 8 + 32, 2**31 - 1)
    at = avi.find(b"avih")
    struct.pack_into("<I", avi, at + 8 + 16, 2**31 - 1)
    out.append(("huge_frame_count", ".avi", bytes(avi), GOOD_FRAMES))
    concat = b"ffconcat version 1.0\nfile ../h264/h264_0.mp4\nfile ../h264/h264_0.mp4\n"
    out.append(("concat_playlist", ".mp4", concat, 0))
    hls = (
        b"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/seg.ts\n"
        b"#EXTINF:10,\n../h264/h264_0.mp4\n#EXT-X-ENDLIST\n"
    )
    out.append(("hls_playlist", ".mp4", hls, 0))
    out.append(("missing", ".mp4", _h264(frames(GOOD_FRAMES)), GOOD_FRAMES))
    return out


def _audio_only() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def generate_bad_corpus(out_dir: str | Path, seed: int = 0, per_codec: int = 2) -> list[CorpusFile]:
    """Write the corpus: ``per_codec`` good files of each codec (H.264, MPEG-4 part 2,
    VP8, MPEG-2, MJPEG) and one file of every other category of :data:`CATEGORIES`.

    Layout ``out_dir/<category>/<category>_<i><ext>`` (``rayssl manifest --format
    folder`` indexes it; existing files are overwritten). Frames are 48x64 (the
    ``hires`` file 1080x1920, ``size_change`` switches to 64x96); deterministic for a seed.
    The ``missing`` file is written like a good one: delete it after making the manifest
    (``delete_after_manifest``).

    Returns:
        One :class:`CorpusFile` per file, with what should happen to it.
    """
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    files = []
    for name, ext, data, written in _files(seed, per_codec):
        i = counts[name] = counts.get(name, -1) + 1
        path = out_dir / name / f"{name}_{i}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append(CorpusFile(path, CATEGORIES[name], written, name == "missing"))
    return files
