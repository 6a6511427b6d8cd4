"""The reader's non-reference-frame skipping (`read_frames(..., pts_start, pts_step)`).

With a pts grid from the probe the reader names frames by pts and lets the decoder drop
the B-frames a clip does not use. Every read here is compared with a sequential decode
(`read_all_frames`) and with the frame index painted into each frame, on MPEG-4 AVI with
B-frames (the UCF101 format), H.264 MP4 with B-frames (some of them references) and
MPEG-4 AVI without B-frames. Old manifests (no pts columns) keep the counting path.
"""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayssl.clips.pipeline import SamplerSpec, epoch_rows, sample_row, usable_videos
from rayssl.config import AugmentSettings, PretextConfig
from rayssl.io.manifest import build_manifest, list_entries, read_manifest
from rayssl.io.video import (
    VideoError,
    _decode_range_skip,
    probe_video,
    read_all_frames,
    read_frames,
)
from rayssl.pretext import build_pretext
from rayssl.tools.synthetic import index_pattern_frames, read_index_pattern, write_video

NUM_FRAMES, HEIGHT, WIDTH = 120, 64, 96

# (codec, gop, has non-reference frames)
VARIANTS = [
    ("mpeg4-bframes", 12, True),
    ("h264", None, True),
    ("h264", 10, True),
    ("mpeg4", 12, False),
]
IDS = [f"{c}-gop{g or 'default'}" for c, g, _ in VARIANTS]


class Video:
    def __init__(self, path: Path, has_nonref: bool) -> None:
        self.path = path
        self.has_nonref = has_nonref
        self.probe = probe_video(path)
        self.all = read_all_frames(path)
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            self.pts = [int(f.pts) for f in c.decode(s)]
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.codec_context.skip_frame = "NONREF"
            kept = {int(f.pts) for f in c.decode(s)}
        self.droppable = [i for i, p in enumerate(self.pts) if p not in kept]

    def kw(self, **extra) -> dict:
        p = self.probe
        return {
            "keyframes": p.keyframes,
            "keyframe_pts": p.keyframe_pts,
            "pts_start": p.pts_start,
            "pts_step": p.pts_step,
            **extra,
        }


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Video]:
    root = tmp_path_factory.mktemp("skipvideos")
    frames = index_pattern_frames(NUM_FRAMES, HEIGHT, WIDTH)
    out = {}
    for (codec, gop, has_nonref), name in zip(VARIANTS, IDS, strict=True):
        ext = ".avi" if codec.startswith("mpeg4") else ".mp4"
        path = root / f"{name}{ext}"
        assert write_video(path, frames, fps=25.0, codec=codec, gop=gop) == NUM_FRAMES
        out[name] = Video(path, has_nonref)
    return out


@pytest.fixture(params=IDS)
def video(request, videos) -> Video:
    return videos[request.param]


def check_exact(video: Video, out: np.ndarray, idx: np.ndarray) -> None:
    assert out.shape == (len(idx), HEIGHT, WIDTH, 3) and out.dtype == np.uint8
    assert np.array_equal(out, video.all[idx]), f"frames differ from a sequential decode: {idx}"
    assert [read_index_pattern(f) for f in out] == idx.tolist()


def pace_clip(rng: np.random.Generator, pace: int, length: int = 16) -> np.ndarray:
    start = int(rng.integers(NUM_FRAMES - (length - 1) * pace))
    idx = start + np.arange(length) * pace
    return idx[::-1].copy() if rng.random() < 0.3 else idx  # sometimes played backwards


def clip_sets(seed: int, n: int) -> list[np.ndarray]:
    """Pace clips (paces 1..5, random starts, some backwards) and pairs of them
    (overlapping, far apart, in either order)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        a = pace_clip(rng, int(rng.integers(1, 6)))
        if k % 3 == 0:
            out.append(a)
        elif k % 3 == 1:  # a pair: two paces of one video, anywhere
            out.append(np.concatenate([a, pace_clip(rng, int(rng.integers(1, 6)))]))
        else:  # an overlapping pair: the second starts inside the first
            pace = int(rng.integers(1, 4))
            start = int(rng.integers(a.min(), a.max() + 1))
            start = min(start, NUM_FRAMES - 1 - 15 * pace)
            out.append(np.concatenate([a, start + np.arange(16) * pace]))
    return out


# --------------------------------------------------------------------------- probe


def test_probe_finds_the_pts_grid(video):
    p = video.probe
    assert p.pts_step > 0
    assert video.pts == [p.pts_start + i * p.pts_step for i in range(NUM_FRAMES)]


def test_the_streams_have_droppable_frames_where_expected(video):
    """The test streams are what they claim: B-frames that a NONREF decode drops (and
    then the reader has something to skip), none in the I/P-only stream."""
    if video.has_nonref:
        assert len(video.droppable) >= NUM_FRAMES // 4
    else:
        assert video.droppable == []


# --------------------------------------------------------------------------- exact reads


def test_skip_path_exact_for_random_pace_clips(video):
    for k, idx in enumerate(clip_sets(seed=11, n=40)):
        out = read_frames(video.path, idx, **video.kw(gap_seek=k % 4 != 3))
        check_exact(video, out, idx)


def test_skip_path_exact_resized(video):
    ref = read_all_frames(video.path, size=(32, 48))
    for idx in clip_sets(seed=12, n=12):
        out = read_frames(video.path, idx, **video.kw(size=(32, 48)))
        assert np.array_equal(out, ref[idx])


def test_skip_path_exact_with_decoder_threads(video):
    for idx in clip_sets(seed=13, n=12):
        check_exact(video, read_frames(video.path, idx, **video.kw(threads=2)), idx)


def test_skip_path_lands_without_falling_back(video):
    """The skip decode itself (not the decode-from-start fallback) returns the exact
    frames, from a keyframe and from the start, for clips whose frames between are
    droppable."""
    p = video.probe
    grid = (p.pts_start, p.pts_step)
    rng = np.random.default_rng(14)
    for _ in range(25):
        pace = int(rng.integers(2, 6))
        wanted = np.unique(pace_clip(rng, pace))
        k = int(np.searchsorted(p.keyframes, wanted[0], side="right")) - 1
        with av.open(str(video.path)) as c:
            s = c.streams.video[0]
            if k > 0:
                got = _decode_range_skip(
                    c, s, wanted, p.keyframes[k], p.keyframe_pts[k], None, grid
                )
            else:
                c.seek(0)
                got = _decode_range_skip(c, s, wanted, 0, None, None, grid)
        assert got is not None, wanted
        assert sorted(got) == wanted.tolist()
        for i, frame in got.items():
            assert np.array_equal(frame, video.all[i])


def test_wrong_grid_is_noticed(video):
    """A pts grid that does not fit the file (shifted, wrong step) must not name frames
    wrongly: the reader notices and decodes from the start."""
    p = video.probe
    for start, step in [
        (p.pts_start + 1, p.pts_step),
        (p.pts_start, p.pts_step * 2),
        (p.pts_start - p.pts_step, p.pts_step),  # consistent with every pts, one frame off
        (p.pts_start + p.pts_step, p.pts_step),
    ]:
        for idx in clip_sets(seed=15, n=9):
            out = read_frames(video.path, idx, **video.kw(pts_start=start, pts_step=step))
            check_exact(video, out, idx)
            # without keyframes (frames from the start) the first frame anchors the grid
            out = read_frames(video.path, idx, pts_start=start, pts_step=step)
            check_exact(video, out, idx)


def test_index_past_end_with_grid_is_decode_error(video):
    for idx in ([NUM_FRAMES], [3, NUM_FRAMES + 20], [NUM_FRAMES - 3, NUM_FRAMES + 1]):
        with pytest.raises(VideoError) as info:
            read_frames(video.path, idx, **video.kw())
        assert info.value.reason == "decode_error"


def test_skip_off_and_no_grid_read_the_same_frames(video):
    """skip_nonref=False and a missing grid (an old manifest) use the counting path."""
    p = video.probe
    for idx in clip_sets(seed=16, n=9):
        a = read_frames(video.path, idx, **video.kw(skip_nonref=False))
        b = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
        c = read_frames(video.path, idx, **video.kw(pts_step=0))
        check_exact(video, a, idx)
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_no_grid_when_pts_are_irregular(tmp_path):
    """A variable-frame-rate stream has no pts grid (the reader counts frames there)."""
    frames = index_pattern_frames(30, HEIGHT, WIDTH)
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), mode="w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.codec_context.time_base = pa_fraction(1, 1000)
        t = 0
        for i, f in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = t
            vf.time_base = pa_fraction(1, 1000)
            t += 40 if i % 3 else 90
            c.mux(s.encode(vf))
        c.mux(s.encode(None))
    p = probe_video(path)
    assert p.num_frames == 30 and p.keyframes
    assert (p.pts_start, p.pts_step) == (0, 0)
    idx = np.array([29, 3, 6, 9, 12, 15])
    out = read_frames(path, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
    assert [read_index_pattern(f) for f in out] == idx.tolist()


def pa_fraction(num: int, den: int):
    from fractions import Fraction

    return Fraction(num, den)


# --------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, videos):
    root = tmp_path_factory.mktemp("skipmanifest")
    frames = index_pattern_frames(80, HEIGHT, WIDTH)
    for name, codec in (("a/v0.avi", "mpeg4-bframes"), ("b/v1.mp4", "h264")):
        write_video(root / name, frames, fps=25.0, codec=codec, gop=12)
    table = build_manifest(list_entries(str(root), "folder"), use_ray=False)
    return root, table


def test_manifest_has_the_grid(manifest):
    _, table = manifest
    for r in table.to_pylist():
        assert r["pts_step"] > 0
        assert probe_video(r["uri"]).pts_start == r["pts_start"]


def test_old_manifest_without_pts_columns_still_reads_exactly(manifest, tmp_path):
    """A manifest written before the pts columns: read_manifest adds them as 0 (no
    grid), epoch rows and samples work, and the frames are exact."""
    _, table = manifest
    old = table.drop_columns(["pts_start", "pts_step"])
    path = tmp_path / "old.parquet"
    pq.write_table(old, path)
    migrated = read_manifest(str(path))
    assert migrated["pts_step"].to_pylist() == [0] * table.num_rows
    assert migrated["pts_start"].to_pylist() == [0] * table.num_rows
    # null pts columns (rows written by a tool that left them out) mean the same
    nulls = table.set_column(
        table.column_names.index("pts_step"), "pts_step", pa.nulls(table.num_rows, pa.int64())
    )
    sink = io.BytesIO()
    pq.write_table(nulls, sink)
    path2 = tmp_path / "nulls.parquet"
    path2.write_bytes(sink.getvalue())
    assert read_manifest(str(path2))["pts_step"].to_pylist() == [0] * table.num_rows

    pretext = build_pretext(PretextConfig(paces=[1.0, 2.0, 3.0, 4.0]), clip_len=16)
    spec = SamplerSpec(pretext=pretext, settings=AugmentSettings(enabled=False, resize=[]), seed=0)
    for source in (old, migrated, table):  # no columns, migrated, with the grid
        rows = epoch_rows(usable_videos(source), 6, seed=0, epoch=0).to_pylist()
        assert len(rows) == 2 * 6
        for row in rows:
            sample = sample_row(row, spec)
            assert sample["valid"]
            ref = read_all_frames(row["uri"])
            idx = np.asarray(sample["indices"])
            assert np.array_equal(sample["clip"], ref[idx])
