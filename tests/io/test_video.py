"""Tests for rayssl.io.video: probing and frame-exact random access.

Every read is checked against a sequential decode of the same file and against the frame
index painted into each frame (`index_pattern_frames`), so a reader that lands on the
wrong frame after a seek cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from rayssl.io.video import (
    ERROR_REASONS,
    VideoError,
    _segments,
    probe_video,
    read_all_frames,
    read_frames,
)
from rayssl.tools.synthetic import (
    index_pattern_frames,
    read_index_pattern,
    write_corrupt_files,
    write_video,
)

NUM_FRAMES, HEIGHT, WIDTH = 120, 64, 96

# (codec, gop): a small GOP (many keyframes, many seeks) and the codec default.
VARIANTS = [
    ("mpeg4-bframes", 12),
    ("mpeg4-bframes", None),
    ("h264", 10),
    ("h264", None),
]
IDS = [f"{c}-gop{g or 'default'}" for c, g in VARIANTS]


class Video:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.probe = probe_video(path)
        self.all = read_all_frames(path)
        with av.open(str(path)) as c:
            self.pts = [int(f.pts) for f in c.decode(c.streams.video[0])]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[tuple[str, int | None], Video]:
    root = tmp_path_factory.mktemp("videos")
    frames = index_pattern_frames(NUM_FRAMES, HEIGHT, WIDTH)
    out = {}
    for codec, gop in VARIANTS:
        ext = ".avi" if codec.startswith("mpeg4") else ".mp4"
        path = root / f"{codec}_gop{gop}{ext}"
        assert write_video(path, frames, fps=25.0, codec=codec, gop=gop) == NUM_FRAMES
        out[(codec, gop)] = Video(path)
    return out


@pytest.fixture(params=VARIANTS, ids=IDS)
def video(request, videos) -> Video:
    return videos[request.param]


def index_sets(num_frames: int, seed: int = 0) -> list[np.ndarray]:
    """Index sets a clip sampler produces, plus awkward ones."""
    rng = np.random.default_rng(seed)
    sets: list[np.ndarray] = [
        np.array([0]),
        np.array([num_frames - 1]),
        np.array([0, num_frames - 1]),
        np.array([num_frames - 1, 0]),
        np.arange(num_frames - 16, num_frames),  # clip ending at the very last frame
        np.arange(16),  # clip starting at frame 0
        np.array([5, 5, 5, 3, 3, 100, 7]),  # unsorted with repeats
        np.array([59, 60, 61, 11, 12, 13, 119, 118]),
    ]
    for _ in range(12):  # fast paces
        pace = int(rng.integers(1, 5))
        span = 15 * pace + 1
        start = int(rng.integers(num_frames - span + 1))
        sets.append(start + np.arange(16) * pace)
    for _ in range(6):  # slow paces: each frame repeated k times
        k = int(rng.integers(2, 5))
        start = int(rng.integers(num_frames - 16 // k))
        sets.append(start + np.floor(np.arange(16) / k).astype(np.int64))
    for _ in range(6):  # arbitrary unsorted sets with repeats
        sets.append(rng.integers(0, num_frames, size=int(rng.integers(1, 12))))
    return [s.astype(np.int64) for s in sets]


def check_exact(video: Video, out: np.ndarray, idx: np.ndarray) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (len(idx), HEIGHT, WIDTH, 3)
    assert np.array_equal(out, video.all[idx]), f"frames differ from a sequential decode: {idx}"
    got = [read_index_pattern(f) for f in out]
    assert got == idx.tolist()


# --------------------------------------------------------------------------- probing


def test_probe(video):
    p = video.probe
    assert p.num_frames == NUM_FRAMES
    assert len(video.all) == NUM_FRAMES
    assert p.fps == pytest.approx(25.0)
    assert (p.height, p.width) == (HEIGHT, WIDTH)
    assert p.keyframes and p.keyframes[0] == 0
    assert len(p.keyframes) == len(p.keyframe_pts)
    assert p.keyframes == sorted(set(p.keyframes))
    assert all(0 <= k < NUM_FRAMES for k in p.keyframes)
    # keyframe_pts are the pts of the frames the keyframes name.
    assert [video.pts[k] for k in p.keyframes] == p.keyframe_pts


def test_probe_small_gop_has_many_keyframes(videos):
    assert len(videos[("mpeg4-bframes", 12)].probe.keyframes) >= NUM_FRAMES // 12
    assert len(videos[("h264", 10)].probe.keyframes) >= NUM_FRAMES // 10
    assert videos[("mpeg4-bframes", 12)].probe.codec == "mpeg4"
    assert videos[("h264", 10)].probe.codec == "h264"


def test_sequential_decode_is_in_order(video):
    assert [read_index_pattern(f) for f in video.all] == list(range(NUM_FRAMES))


# --------------------------------------------------------------------------- exact reads


def test_read_frames_with_keyframes_exact(video):
    p = video.probe
    for idx in index_sets(NUM_FRAMES, seed=1):
        out = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
        check_exact(video, out, idx)


def test_read_frames_sequential_exact(video):
    for idx in index_sets(NUM_FRAMES, seed=2)[::2]:
        check_exact(video, read_frames(video.path, idx), idx)


def test_read_frames_accepts_list_and_numpy(video):
    p = video.probe
    kw = {"keyframes": p.keyframes, "keyframe_pts": p.keyframe_pts}
    a = read_frames(video.path, [30, 31, 30], **kw)
    b = read_frames(str(video.path), np.array([30, 31, 30], dtype=np.int32), **kw)
    assert np.array_equal(a, b)
    check_exact(video, a, np.array([30, 31, 30]))


def test_wrong_keyframe_pts_past_the_last_keyframe(video):
    """A seek whose target is beyond the last frame's pts (the last keyframe's pts off by
    one) ends the stream before landing: that is a failed landing, not an empty read."""
    p = video.probe
    wrong = [t + 1 for t in p.keyframe_pts]
    for idx in ([NUM_FRAMES - 1], [3, NUM_FRAMES - 1], [p.keyframes[-1]]):
        out = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=wrong)
        check_exact(video, out, np.asarray(idx))


def test_segments_split_where_a_keyframe_lies_between_wanted_frames():
    keys = [0, 12, 24, 36, 48, 60]
    split = [s.tolist() for s in _segments(np.array([3, 4, 30, 31, 33]), keys, min_skip=0)]
    assert split == [[3, 4], [30, 31, 33]]
    assert [s.tolist() for s in _segments(np.array([11, 12]), keys, 0)] == [[11], [12]]
    assert [s.tolist() for s in _segments(np.array([13, 20, 23]), keys, 0)] == [[13, 20, 23]]
    assert [s.tolist() for s in _segments(np.array([5, 40]), [], 0)] == [[5, 40]]
    # by default a seek must skip more than SEEK_MIN_SKIP frames
    assert len(_segments(np.array([3, 30]), keys)) == 1
    assert [s.tolist() for s in _segments(np.array([3, 60]), keys)] == [[3], [60]]


def test_pair_of_distant_clips_in_one_open_is_exact(video):
    """The two clips of a contrastive pair far apart in the video: one open, a seek over
    the gap (gap_seek, the default) or one pass through it; both exact."""
    p = video.probe
    kw = {"keyframes": p.keyframes, "keyframe_pts": p.keyframe_pts}
    for a, b, pace in [(0, 90, 2), (10, 100, 1), (70, 2, 3), (40, 44, 4)]:
        span = 15 * pace + 1
        b = min(b, NUM_FRAMES - span)
        idx = np.concatenate([a + np.arange(16), b + np.arange(16) * pace])
        check_exact(video, read_frames(video.path, idx, **kw), idx)
        check_exact(video, read_frames(video.path, idx, gap_seek=False, **kw), idx)


def test_wrong_keyframe_pts_shifted_by_one_still_exact(video):
    """keyframe_pts off by one tick: the reader must notice it did not land on the
    keyframe it expected and decode from the start instead."""
    p = video.probe
    wrong = [t + 1 for t in p.keyframe_pts]
    for idx in index_sets(NUM_FRAMES, seed=3)[::2]:
        out = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=wrong)
        check_exact(video, out, idx)


def test_wrong_keyframe_pts_naming_non_keyframes_still_exact(video):
    """keyframe_pts that are the pts of the frame *after* each keyframe (a real frame,
    but not a keyframe): landing there is not landing on the keyframe."""
    p = video.probe
    wrong = [video.pts[min(k + 1, NUM_FRAMES - 1)] for k in p.keyframes]
    for idx in index_sets(NUM_FRAMES, seed=4)[::2]:
        out = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=wrong)
        check_exact(video, out, idx)


def test_mismatched_keyframe_lists_ignored(video):
    p = video.probe
    idx = np.arange(60, 76)
    out = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts[:1])
    check_exact(video, out, idx)


def test_read_from_bytes_equals_path(video):
    data = video.path.read_bytes()
    p = video.probe
    for idx in index_sets(NUM_FRAMES, seed=5)[::3]:
        from_path = read_frames(video.path, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
        from_bytes = read_frames(data, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
        assert np.array_equal(from_bytes, from_path)
        check_exact(video, from_bytes, idx)
    assert probe_video(data) == p


def test_read_from_file_object(video):
    idx = np.array([99, 3, 50])
    p = video.probe
    with open(video.path, "rb") as f:
        out = read_frames(f, idx, keyframes=p.keyframes, keyframe_pts=p.keyframe_pts)
    check_exact(video, out, idx)


def test_resize_on_read(video):
    p = video.probe
    idx = np.array([0, 17, 17, 64, 119])
    out = read_frames(
        video.path, idx, size=(32, 48), keyframes=p.keyframes, keyframe_pts=p.keyframe_pts
    )
    assert out.shape == (5, 32, 48, 3) and out.dtype == np.uint8
    ref = read_all_frames(video.path, size=(32, 48))
    assert ref.shape == (NUM_FRAMES, 32, 48, 3)
    assert np.array_equal(out, ref[idx])


# --------------------------------------------------------------------------- errors


def test_index_past_end_is_decode_error(video):
    p = video.probe
    for kw in ({}, {"keyframes": p.keyframes, "keyframe_pts": p.keyframe_pts}):
        with pytest.raises(VideoError) as info:
            read_frames(video.path, [NUM_FRAMES], **kw)
        assert info.value.reason == "decode_error"
        with pytest.raises(VideoError) as info:
            read_frames(video.path, [3, NUM_FRAMES + 20], **kw)
        assert info.value.reason == "decode_error"


def test_negative_index_is_value_error(video):
    with pytest.raises(ValueError):
        read_frames(video.path, [3, -1])
    with pytest.raises(ValueError):
        read_frames(video.path, [])


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> dict[str, Path]:
    return write_corrupt_files(tmp_path_factory.mktemp("broken"))


def test_probe_corrupt_files(corrupt):
    assert set(corrupt) == {"empty.mp4", "text.avi", "truncated.mp4", "garbage.mp4"}
    for name, path in corrupt.items():
        with pytest.raises(VideoError) as info:
            probe_video(path)
        assert info.value.reason in ERROR_REASONS, (name, info.value.reason)
        with pytest.raises(VideoError) as info_bytes:
            probe_video(path.read_bytes())
        assert info_bytes.value.reason in ERROR_REASONS
    with pytest.raises(VideoError) as info:
        probe_video(corrupt["empty.mp4"])
    assert info.value.reason == "empty_file"
    with pytest.raises(VideoError) as info:
        probe_video(b"")
    assert info.value.reason == "empty_file"


def test_read_corrupt_files(corrupt):
    for path in corrupt.values():
        with pytest.raises(VideoError) as info:
            read_frames(path, [0])
        assert info.value.reason in ERROR_REASONS


def test_missing_path(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoError) as info:
        probe_video(missing)
    assert info.value.reason == "missing"
    with pytest.raises(VideoError) as info:
        read_frames(str(missing), [0])
    assert info.value.reason == "missing"


def test_error_reasons_are_known():
    e = VideoError("decode_error", "detail")
    assert e.reason == "decode_error" and e.detail == "detail"
    assert "decode_error" in str(e)
    assert len(set(ERROR_REASONS)) == len(ERROR_REASONS)
