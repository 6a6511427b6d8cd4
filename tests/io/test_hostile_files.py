"""Hostile and huge files: the container allow-list, the caps (`data.max_*`, the decode
time limit), frame counts checked against the file size, and large S3 objects streamed
by ranged GETs instead of fetched whole -- frame-exact either way. No Ray here; the
corpus run through manifest, prepare and pre-training is tests/tools/test_bad_corpus.py."""

from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pyarrow as pa
import pytest

from rayssl.clips.pipeline import RowSkip, read_row_frames
from rayssl.config import ConfigError, DataConfig
from rayssl.io import storage
from rayssl.io.manifest import (
    Entry,
    build_manifest,
    read_manifest,
    write_manifest,
)
from rayssl.io.video import (
    ERROR_REASONS,
    VideoAccess,
    VideoError,
    VideoLimits,
    open_container,
    probe_video,
    read_all_frames,
    read_frames,
    video_source,
)
from rayssl.tools.badcorpus import GOOD_FRAMES, _encode, _h264, _mpeg4_avi
from rayssl.tools.prepare import PrepareParams, prepare_item
from tests.s3server import make_bucket, put_objects, s3_env


def _frames(n: int, height: int = 48, width: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    return [np.roll(base, 2 * i, axis=1) for i in range(n)]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.mp4"
    path.write_bytes(_h264(_frames(GOOD_FRAMES)))
    return path


class _Listener:
    """A TCP listener on loopback that counts the connections made to it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_playlists_disguised_as_videos_are_refused_and_open_nothing(tmp_path, good):
    """A concat list or HLS playlist (named .mp4 or not) is `unsafe_format`: no local file
    it names is read and no URL it names is fetched (before: the concat list decoded as
    two copies of the good video)."""
    listener = _Listener()
    try:
        concat = tmp_path / "concat.mp4"
        concat.write_text(f"ffconcat version 1.0\nfile {good}\nfile {good}\n")
        playlist = (
            "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:10,\nhttp://127.0.0.1:{listener.port}/seg.ts\n#EXT-X-ENDLIST\n"
        )
        hls_mp4, hls_m3u8 = tmp_path / "hls.mp4", tmp_path / "hls.m3u8"
        hls_mp4.write_text(playlist)
        hls_m3u8.write_text(playlist)
        for path in (concat, hls_mp4, hls_m3u8):
            for source in (path, path.read_bytes()):
                with pytest.raises(VideoError) as e:
                    probe_video(source)
                assert e.value.reason == "unsafe_format", (path.name, e.value)
                with pytest.raises(VideoError) as e:
                    read_frames(source, [0])
                assert e.value.reason == "unsafe_format"
        # Whitespace or a byte-order mark in front does not hide the playlist.
        with pytest.raises(VideoError, match="unsafe_format"):
            probe_video(b"\n\n  " + concat.read_bytes())
    finally:
        listener.close()
    assert listener.connections == 0


def test_a_format_off_the_allow_list_is_unsafe_format(tmp_path):
    """The allow-list itself (not the playlist sniffing): a WAV file opens with FFmpeg's
    `wav` demuxer, which is not allowed; a text file is still `not_a_video`."""
    import av

    wav = tmp_path / "sound.mp4"
    with av.open(str(wav), mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError) as e:
        open_container(wav)
    assert e.value.reason == "unsafe_format" and "wav" in e.value.detail
    text = tmp_path / "notes.avi"
    text.write_text("just some text, not a video at all\n" * 20)
    with pytest.raises(VideoError) as e:
        probe_video(text)
    assert e.value.reason == "not_a_video"


@pytest.mark.parametrize(
    "limits, reason",
    [
        (VideoLimits(max_bytes=1000), "too_large"),
        (VideoLimits(max_pixels=48 * 64 - 1), "too_many_pixels"),
        (VideoLimits(max_frames=GOOD_FRAMES - 1), "too_many_frames"),
        (VideoLimits(decode_timeout_s=1e-9), "decode_timeout"),
    ],
    ids=["bytes", "pixels", "frames", "timeout"],
)
def test_caps_have_their_own_reasons(good, tmp_path, limits, reason):
    with pytest.raises(VideoError) as e:
        probe_video(good, limits=limits)
    assert e.value.reason == reason
    if reason != "too_many_frames":  # a reader is only refused indices past the cap
        with pytest.raises(VideoError) as e:
            read_frames(good, [5, 6], limits=limits)
        assert e.value.reason == reason
    # prepare: the source is refused with the same reason, nothing is written
    item = {
        "source": str(good),
        "dest": str(tmp_path / reason / "out.mp4"),
        "video_id": "v",
        "label": 0,
        "num_frames": GOOD_FRAMES,
        "height": 48,
        "width": 64,
    }
    row = prepare_item(item, PrepareParams(short_side=32), access=VideoAccess(limits))
    assert (row["status"], row["error"]) == ("failed", reason)
    assert not (tmp_path / reason).exists()
    # at the cap (not past it) everything passes
    loose = VideoLimits(max_bytes=good.stat().st_size, max_pixels=48 * 64, max_frames=GOOD_FRAMES)
    assert probe_video(good, limits=loose).num_frames == GOOD_FRAMES
    with pytest.raises(VideoError, match="too_many_frames"):
        read_frames(good, [GOOD_FRAMES], limits=VideoLimits(max_frames=GOOD_FRAMES))


def test_reasons_are_known():
    for reason in (
        "too_large",
        "too_many_pixels",
        "too_many_frames",
        "implausible_frames",
        "decode_timeout",
        "unsafe_format",
    ):
        assert reason in ERROR_REASONS


def test_claimed_huge_frame_count(tmp_path, good):
    """A container claiming 2^31-1 frames in a few KB, and a manifest row claiming 10^12
    frames: `implausible_frames` before anything is allocated from the count."""
    avi = bytearray(_mpeg4_avi(_frames(GOOD_FRAMES)))
    at = avi.find(b"strh")
    struct.pack_into("<I", avi, at + 8 + 32, 2**31 - 1)
    with pytest.raises(VideoError) as e:
        probe_video(bytes(avi))
    assert e.value.reason == "implausible_frames"

    table = build_manifest(
        [Entry(str(good), "good", good.stat().st_size, 0, "c", "train")], use_ray=False
    )
    row = table.to_pylist()[0]
    assert row["error"] is None and row["num_frames"] == GOOD_FRAMES
    row["num_frames"] = 10**12
    uri = tmp_path / "tampered.parquet"
    write_manifest(pa.Table.from_pylist([row], schema=table.schema), str(uri))
    read = read_manifest(str(uri)).to_pylist()[0]
    assert read["error"] == "implausible_frames"
    with pytest.raises(RowSkip) as skip:
        read_row_frames(row, np.arange(4), None, None)
    assert skip.value.reason == "implausible_frames"


def test_config_caps_validate():
    DataConfig(max_video_bytes=0, max_pixels=0, max_frames=0, decode_timeout_s=0).validate("data")
    with pytest.raises(ConfigError, match="max_frames"):
        DataConfig(max_frames=-1).validate("data")
    with pytest.raises(ConfigError, match="stream_block_bytes"):
        DataConfig(stream_block_bytes=10).validate("data")
    limits = VideoLimits.from_config(DataConfig(max_pixels=7))
    assert limits.max_pixels == 7


@pytest.fixture(scope="module")
def s3_video(tmp_path_factory, moto_endpoint):
    """A ~0.6 MB 300-frame H.264 video (keyframe every 30) on the session's moto server."""
    folder = tmp_path_factory.mktemp("s3v")
    path = folder / "long.mp4"
    options = {"g": "30", "keyint_min": "30", "sc_threshold": "0", "bf": "2"}
    rng = np.random.default_rng(1)  # grain: ~2 KB a frame
    frames = [
        np.clip(f + rng.integers(-24, 24, f.shape), 0, 255).astype(np.uint8)
        for f in _frames(300, 120, 160)
    ]
    path.write_bytes(_encode(frames, "mp4", "libx264", options))
    endpoint = moto_endpoint
    with s3_env(endpoint):
        make_bucket(endpoint, "hostile-videos")
        put_objects(endpoint, "hostile-videos", {"long.mp4": path.read_bytes()})
        yield path, "s3://hostile-videos/long.mp4", storage.StorageOptions(endpoint_url=endpoint)


def test_large_s3_object_is_streamed_frame_exact(s3_video):
    path, uri, options = s3_video
    size = path.stat().st_size
    # below the threshold: one GET, the bytes
    assert isinstance(video_source(uri, options, stream_threshold_bytes=size), bytes)
    # above it: a seekable reader of 64 KiB ranged GETs
    source = video_source(uri, options, stream_threshold_bytes=size - 1, stream_block_bytes=1 << 16)
    assert isinstance(source, storage.RangedReader) and source.size() == size
    probe = probe_video(source)
    assert probe == probe_video(path)
    every = read_all_frames(path)
    reader = storage.RangedReader(uri, options, size=size, block_bytes=1 << 14)
    wanted = [250, 252, 254, 256]
    got = read_frames(
        reader,
        wanted,
        keyframes=probe.keyframes,
        keyframe_pts=probe.keyframe_pts,
        pts_start=probe.pts_start,
        pts_step=probe.pts_step,
    )
    assert np.array_equal(got, every[wanted])
    # a clip near the end fetched a fraction of the object, in bounded blocks
    assert reader.bytes_fetched < size / 4, (reader.bytes_fetched, size)
    assert len(reader._cache) <= reader.cache_blocks
    # the manifest row path (sizes known: no HEAD) reads the same frames
    row = {
        "uri": uri,
        "num_frames": probe.num_frames,
        "keyframes": probe.keyframes,
        "keyframe_pts": probe.keyframe_pts,
        "size_bytes": size,
    }
    access = VideoAccess(stream_threshold_bytes=0, stream_block_bytes=1 << 16)
    assert np.array_equal(
        read_row_frames(row, np.array(wanted), None, options, access=access), every[wanted]
    )
    # too large for the cap: refused before any GET
    with pytest.raises(VideoError, match="too_large"):
        video_source(uri, options, limits=VideoLimits(max_bytes=size - 1), size_bytes=size)


def test_prepare_streams_an_s3_source_and_uploads_from_a_file(s3_video):
    path, uri, options = s3_video
    probe = probe_video(path)
    item = {
        "source": uri,
        "dest": "s3://hostile-videos/prepared/long.mp4",
        "video_id": "long",
        "label": 0,
        "num_frames": probe.num_frames,
        "height": probe.height,
        "width": probe.width,
        "size_bytes": path.stat().st_size,
    }
    access = VideoAccess(stream_threshold_bytes=0, stream_block_bytes=1 << 16)
    row = prepare_item(item, PrepareParams(short_side=48, gop=16), options, access)
    assert row["error"] is None, row["error_detail"]
    assert row["status"] == "transcoded" and row["num_frames"] == 300
    assert row["bytes_in"] >= path.stat().st_size  # read through once, block by block
    out = storage.read_bytes(item["dest"], options)
    assert len(out) == row["bytes_out"] and probe_video(out).num_frames == 300
