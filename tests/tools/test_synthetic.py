"""Tests for rayssl.tools.synthetic: procedurally generated, really encoded video datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from av.video.frame import PictureType

from rayssl.tools.synthetic import (
    CODECS,
    MOTION_CLASSES,
    CodecSpec,
    SynthVideo,
    generate_dataset,
    index_pattern_frames,
    read_index_pattern,
    render_video,
    write_corrupt_files,
    write_video,
)

H, W, T = 64, 96, 16
SMALL = {"num_frames": T, "height": H, "width": W}


def decode(path: Path) -> tuple[np.ndarray, list[str], list[bool], str]:
    """All frames (T, H, W, 3) RGB, their picture types, key-frame flags and the codec name."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec_name = stream.codec_context.name
        frames, types, keys = [], [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            types.append(PictureType(frame.pict_type).name)
            keys.append(frame.key_frame)
    return np.stack(frames), types, keys, codec_name


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def object_flow(video: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean object displacement (dx, dy) per frame and mean curl of the object flow.

    Dense Farneback flow between consecutive frames; the background (camera pan) is removed by
    subtracting the median flow, and only pixels that move relative to it are averaged.
    """
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in video]
    shifts, curls = [], []
    for a, b in zip(gray[:-1], gray[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 9, 3, 5, 1.1, 0)
        res = flow - np.median(flow.reshape(-1, 2), axis=0)
        moving = np.linalg.norm(res, axis=2) > 0.25
        if not moving.any():
            continue
        curl = np.gradient(res[..., 1], axis=1) - np.gradient(res[..., 0], axis=0)
        shifts.append(res[moving].mean(axis=0))
        curls.append(curl[moving].mean())
    return np.mean(shifts, axis=0), float(np.mean(curls))


# ------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------


def test_codec_registry() -> None:
    assert {"h264", "mpeg4-bframes", "mpeg4"} <= set(CODECS)
    assert all(isinstance(spec, CodecSpec) for spec in CODECS.values())
    h264 = CODECS["h264"]
    assert (h264.encoder, h264.extension, h264.container_format) == ("libx264", ".mp4", "mp4")
    bf = CODECS["mpeg4-bframes"]
    assert (bf.encoder, bf.extension, bf.container_format) == ("mpeg4", ".avi", "avi")
    assert bf.codec_tag == "XVID" and bf.options["bf"] == "2" and bf.default_gop == 12
    assert CODECS["mpeg4"].options.get("bf", "0") == "0"
    with pytest.raises(AttributeError):
        h264.encoder = "x"  # type: ignore[misc]
    assert len(set(MOTION_CLASSES)) == len(MOTION_CLASSES) >= 8
    assert MOTION_CLASSES[:2] == ("translate_right", "translate_left")


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("motion", MOTION_CLASSES)
def test_render_video_shape_and_determinism(motion: str) -> None:
    a = render_video(T, H, W, motion, np.random.default_rng([0, 1]))
    b = render_video(T, H, W, motion, np.random.default_rng([0, 1]))
    c = render_video(T, H, W, motion, np.random.default_rng([1, 1]))
    assert a.shape == (T, H, W, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Something moves and the frames are textured, not flat.
    assert np.abs(a[1:].astype(np.int16) - a[:-1]).mean() > 0.5
    assert a[0].std() > 10


def _mean_object_flow(motion: str, seeds: range) -> tuple[np.ndarray, float]:
    results = [
        object_flow(render_video(T, H, W, motion, np.random.default_rng([s, 0]))) for s in seeds
    ]
    return np.mean([r[0] for r in results], axis=0), float(np.mean([r[1] for r in results]))


def test_translation_classes_move_in_their_direction() -> None:
    seeds = range(3)  # same seeds -> same appearance; only the motion differs
    right, _ = _mean_object_flow("translate_right", seeds)
    left, _ = _mean_object_flow("translate_left", seeds)
    up, _ = _mean_object_flow("translate_up", seeds)
    down, _ = _mean_object_flow("translate_down", seeds)
    assert right[0] > 0.3 and left[0] < -0.3
    assert abs(right[0]) > abs(right[1]) and abs(left[0]) > abs(left[1])
    assert down[1] > 0.3 and up[1] < -0.3
    assert abs(down[1]) > abs(down[0]) and abs(up[1]) > abs(up[0])


def test_rotation_classes_have_opposite_curl() -> None:
    seeds = range(4)
    _, curl_cw = _mean_object_flow("rotate_cw", seeds)
    _, curl_ccw = _mean_object_flow("rotate_ccw", seeds)
    # Image y points down, so clockwise on screen is positive curl.
    assert curl_cw > 0 > curl_ccw


def test_speed_varies_between_videos() -> None:
    speeds = [
        abs(
            object_flow(render_video(T, H, W, "translate_right", np.random.default_rng([s, 0])))[0][
                0
            ]
        )
        for s in range(8)
    ]
    assert max(speeds) / min(speeds) > 1.2


# ------------------------------------------------------------------------------------------
# Encoding
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "codec_name"), [("h264", "h264"), ("mpeg4-bframes", "mpeg4"), ("mpeg4", "mpeg4")]
)
def test_write_video_decodes_to_same_frames(tmp_path: Path, codec: str, codec_name: str) -> None:
    frames = render_video(20, H, W, "rotate_cw", np.random.default_rng(5))
    path = tmp_path / f"v{CODECS[codec].extension}"
    n = write_video(path, iter(frames), fps=25.0, codec=codec)
    assert n == 20
    decoded, _, keys, name = decode(path)
    assert name == codec_name
    assert decoded.shape == frames.shape
    assert keys[0]
    assert psnr(decoded, frames) > 22.0
    with av.open(str(path)) as container:
        assert container.streams.video[0].average_rate == 25


def test_mpeg4_bframes_really_has_b_frames(tmp_path: Path) -> None:
    frames = render_video(24, H, W, "translate_left", np.random.default_rng(3))
    write_video(tmp_path / "b.avi", frames, fps=25.0, codec="mpeg4-bframes")
    write_video(tmp_path / "p.avi", frames, fps=25.0, codec="mpeg4")
    _, types_b, _, _ = decode(tmp_path / "b.avi")
    _, types_p, _, _ = decode(tmp_path / "p.avi")
    assert "B" in types_b
    assert "B" not in types_p and "P" in types_p
    with av.open(str(tmp_path / "b.avi")) as container:
        ctx = container.streams.video[0].codec_context
        assert ctx.has_b_frames
        assert ctx.codec_tag == "XVID"


@pytest.mark.parametrize("codec", ["mpeg4", "h264"])
def test_gop_sets_keyframe_interval(tmp_path: Path, codec: str) -> None:
    frames = render_video(24, H, W, "oscillate_horizontal", np.random.default_rng(2))
    path = tmp_path / f"g{CODECS[codec].extension}"
    write_video(path, frames, fps=25.0, codec=codec, gop=4)
    _, _, keys, _ = decode(path)
    key_idx = np.flatnonzero(keys)
    assert key_idx[0] == 0
    assert len(key_idx) >= 24 // 4
    assert np.diff(key_idx).max() <= 4


@pytest.mark.parametrize("codec", ["h264", "mpeg4-bframes", "mpeg4"])
def test_index_pattern_roundtrip_through_codec(tmp_path: Path, codec: str) -> None:
    frames = index_pattern_frames(40)
    assert frames.shape == (40, 64, 96, 3)
    path = tmp_path / f"idx{CODECS[codec].extension}"
    write_video(path, frames, fps=25.0, codec=codec, gop=8)
    decoded, _, _, _ = decode(path)
    assert len(decoded) == 40
    assert [read_index_pattern(f) for f in decoded] == list(range(40))


def test_index_pattern_raw_and_rejects_non_patterns() -> None:
    frames = index_pattern_frames(300, height=32, width=40)  # smallest size: 8x8 cells
    assert [read_index_pattern(f) for f in frames] == list(range(300))
    assert read_index_pattern(frames[123, :, :, 0]) == 123  # gray input works too
    assert len({f.tobytes() for f in frames}) == 300
    for level in (0, 128, 255):
        with pytest.raises(ValueError, match="not an index pattern"):
            read_index_pattern(np.full((32, 40, 3), level, np.uint8))
    corrupted = frames[5].copy()
    corrupted[:8, :8] = 255 - corrupted[:8, :8]  # flip bit 0 -> parity fails
    with pytest.raises(ValueError, match="parity"):
        read_index_pattern(corrupted)


# ------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------


def test_generate_dataset_layout_and_labels(tmp_path: Path) -> None:
    videos = generate_dataset(tmp_path, num_videos=7, num_classes=3, codec="mpeg4-bframes", **SMALL)
    assert len(videos) == 7 and all(isinstance(v, SynthVideo) for v in videos)
    for i, v in enumerate(videos):
        assert v.label == i % 3
        assert v.label_name == MOTION_CLASSES[v.label]
        assert v.num_frames == T
        assert v.path == tmp_path / v.label_name / f"{v.label_name}_{i:04d}.avi"
        assert v.path.is_file() and v.path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(MOTION_CLASSES[:3])
    assert Counter(v.label for v in videos) == {0: 3, 1: 2, 2: 2}
    decoded, _, _, _ = decode(videos[0].path)
    assert decoded.shape == (T, H, W, 3)


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", num_videos=3, seed=7, **SMALL)
    b = generate_dataset(tmp_path / "b", num_videos=3, seed=7, **SMALL)
    c = generate_dataset(tmp_path / "c", num_videos=3, seed=8, **SMALL)
    for va, vb, vc in zip(a, b, c, strict=True):
        assert va.path.read_bytes() == vb.path.read_bytes()
        np.testing.assert_array_equal(decode(va.path)[0], decode(vb.path)[0])
        assert not np.array_equal(decode(va.path)[0], decode(vc.path)[0])
    # Video i depends only on (seed, i): it matches a direct render with that rng.
    rendered = render_video(T, H, W, MOTION_CLASSES[1], np.random.default_rng([7, 1]))
    assert psnr(decode(a[1].path)[0], rendered) > 22.0


def test_generate_dataset_h264(tmp_path: Path) -> None:
    videos = generate_dataset(tmp_path, num_videos=2, codec="h264", **SMALL)
    assert [v.path.suffix for v in videos] == [".mp4", ".mp4"]
    decoded, _, _, name = decode(videos[1].path)
    assert name == "h264" and decoded.shape == (T, H, W, 3)


# ------------------------------------------------------------------------------------------
# Bad arguments and broken files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": len(MOTION_CLASSES) + 1}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"num_videos": 0}, "num_videos"),
        ({"num_frames": 0}, "num_frames"),
        ({"height": 63}, "height"),
        ({"width": 0}, "width"),
        ({"codec": "vp9"}, "vp9"),
        ({"seed": -1}, "seed"),
        ({"fps": 0.0}, "fps"),
        ({"gop": 0}, "gop"),
    ],
)
def test_generate_dataset_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"num_videos": 2, **SMALL, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path, **args)
    assert not any(tmp_path.rglob("*.*"))


def test_write_video_and_render_reject_bad_input(tmp_path: Path) -> None:
    frames = np.zeros((2, H, W, 3), np.uint8)
    with pytest.raises(ValueError, match="vp9"):
        write_video(tmp_path / "x.mp4", frames, fps=25.0, codec="vp9")
    with pytest.raises(ValueError, match="empty"):
        write_video(tmp_path / "x.mp4", [], fps=25.0)
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 63, 96, 3), np.uint8), fps=25.0)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", frames.astype(np.float32), fps=25.0)
    with pytest.raises(ValueError, match="frame 1"):
        write_video(tmp_path / "x.mp4", [frames[0], frames[1, :32]], fps=25.0)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", frames, fps=-1.0)
    with pytest.raises(ValueError, match="motion"):
        render_video(T, H, W, "teleport", np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_frames"):
        render_video(0, H, W, "rotate_cw", np.random.default_rng(0))
    with pytest.raises(ValueError, match="height"):
        index_pattern_frames(4, height=16, width=96)


def test_write_corrupt_files(tmp_path: Path) -> None:
    files = write_corrupt_files(tmp_path)
    assert set(files) == {"empty.mp4", "text.avi", "truncated.mp4", "garbage.mp4"}
    assert files["empty.mp4"].stat().st_size == 0
    assert files["text.avi"].read_text().strip()
    assert files["truncated.mp4"].stat().st_size > 0
    assert files["garbage.mp4"].stat().st_size > 0
    for path in files.values():
        assert path.parent == tmp_path and path.is_file()
        with pytest.raises(av.error.FFmpegError), av.open(str(path)) as container:
            list(container.decode(video=0))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files)  # no leftovers


def test_family_classes_draw_a_kind_per_video(tmp_path):
    from rayssl.tools.synthetic import MOTION_FAMILIES

    videos = generate_dataset(
        tmp_path,
        num_videos=8,
        num_frames=4,
        height=32,
        width=32,
        codec="h264",
        classes=["translate", "zoom_in"],
    )
    assert [v.label_name for v in videos] == ["translate", "zoom_in"] * 4
    assert all(v.path.parent.name == v.label_name for v in videos)
    # A family's videos differ in kind: same seed and index render as that kind would.
    again = generate_dataset(
        tmp_path / "b",
        num_videos=8,
        num_frames=4,
        height=32,
        width=32,
        codec="h264",
        classes=["translate", "zoom_in"],
    )
    assert [v.path.read_bytes() for v in videos] == [v.path.read_bytes() for v in again]
    assert set(MOTION_FAMILIES["translate"]) <= set(MOTION_CLASSES)
    with pytest.raises(ValueError, match="classes must be distinct"):
        generate_dataset(tmp_path, num_videos=2, classes=["spin"])
