"""Tests for rayssl.clips.pipeline: draw rows -> exact, reproducible samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rayssl.clips.pipeline import (
    SamplerSpec,
    build_clip_dataset,
    epoch_rows,
    sample_row,
    usable_videos,
)
from rayssl.clips.sampling import pace_indices, pace_span
from rayssl.config import AugmentSettings, DataConfig, PretextConfig
from rayssl.io.manifest import build_manifest, list_entries
from rayssl.io.video import read_all_frames
from rayssl.pretext import build_pretext
from rayssl.tools.synthetic import (
    index_pattern_frames,
    read_index_pattern,
    write_corrupt_files,
    write_video,
)

H, W = 48, 64
CLIP_LEN = 16
LENGTHS = {"alpha/a0": 64, "alpha/a1": 72, "beta/b0": 80, "beta/b1": 96}
EXACT = AugmentSettings(enabled=False, resize=[])
AUGMENT = AugmentSettings(resize=[64, 86], crop=[56, 56])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    frames = index_pattern_frames(max(LENGTHS.values()), H, W)
    for vid, n in LENGTHS.items():
        write_video(root / f"{vid}.avi", frames[:n], fps=25.0, codec="mpeg4-bframes", gop=12)
    table = build_manifest(list_entries(str(root), "folder"), use_ray=False)
    reference = {r["video_id"]: read_all_frames(r["uri"]) for r in table.to_pylist()}
    return root, table, reference


def spec_for(paces=(1, 2, 3, 4), settings=EXACT, seed=0, train=True, short="resample_pace"):
    pretext = build_pretext(
        PretextConfig(paces=[float(p) for p in paces]), clip_len=CLIP_LEN, short_video=short
    )
    return SamplerSpec(pretext=pretext, settings=settings, seed=seed, train=train)


def draw_row(table: pa.Table, video_id: str, epoch: int = 0, draw: int = 0, **extra) -> dict:
    rows = [r for r in table.to_pylist() if r["video_id"] == video_id]
    assert len(rows) == 1
    row = dict(rows[0], epoch=epoch, draw=draw)
    row.update(extra)
    return row


def check_pace_rule(sample: dict, paces) -> None:
    idx = sample["indices"]
    pace = float(paces[int(sample["label"])])
    assert float(sample["pace"]) == pytest.approx(pace)
    np.testing.assert_array_equal(idx, pace_indices(int(idx[0]), CLIP_LEN, pace))
    steps = np.diff(idx)
    if pace >= 1:
        assert np.all(steps == pace)
    else:
        k = round(1 / pace)
        assert np.all(steps[np.arange(len(steps)) % k != k - 1] == 0)  # repeats
        assert np.all(steps[np.arange(len(steps)) % k == k - 1] == 1)


# --------------------------------------------------------------------------- sample_row


@pytest.mark.parametrize("paces", [(1, 2, 3, 4), (0.25, 1 / 3, 0.5, 1, 3)], ids=["fast", "slow"])
def test_sample_row_frames_exact(dataset, paces):
    _, table, reference = dataset
    spec = spec_for(paces)
    labels = set()
    for vid, n in LENGTHS.items():
        for epoch in range(3):
            for draw in range(2):
                s = sample_row(draw_row(table, vid, epoch, draw), spec)
                assert s["valid"] is True and s["skip_reason"] == ""
                idx = s["indices"]
                assert idx.dtype == np.int64 and idx.shape == (CLIP_LEN,)
                assert idx.min() >= 0 and idx.max() < n
                clip = s["clip"]
                assert clip.shape == (CLIP_LEN, H, W, 3) and clip.dtype == np.uint8
                assert np.array_equal(clip, reference[vid][idx])
                assert [read_index_pattern(f) for f in clip] == idx.tolist()
                check_pace_rule(s, paces)
                assert s["label"].dtype == np.int64
                labels.add(int(s["label"]))
    assert len(labels) >= 3


def test_sample_row_deterministic(dataset):
    _, table, _ = dataset
    for settings in (EXACT, AUGMENT):
        spec = spec_for(settings=settings, seed=7)
        row = draw_row(table, "beta/b1", epoch=2, draw=1)
        a, b = sample_row(row, spec), sample_row(dict(row), spec)
        assert set(a) == set(b)
        for k in a:
            assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k
        # Another spec object with the same seed gives the same sample too.
        c = sample_row(row, spec_for(settings=settings, seed=7))
        assert np.array_equal(a["clip"], c["clip"])


def test_sample_row_changes_with_epoch_draw_seed(dataset):
    _, table, _ = dataset
    spec = spec_for(settings=AUGMENT, seed=7)
    base = sample_row(draw_row(table, "beta/b1", epoch=2, draw=1), spec)
    others = [
        sample_row(draw_row(table, "beta/b1", epoch=3, draw=1), spec),
        sample_row(draw_row(table, "beta/b1", epoch=2, draw=0), spec),
        sample_row(draw_row(table, "beta/b1", epoch=2, draw=1), spec_for(settings=AUGMENT, seed=8)),
    ]
    for o in others:
        assert not np.array_equal(o["clip"], base["clip"])
    # Over several epochs the frames drawn differ too.
    starts = {
        int(sample_row(draw_row(table, "beta/b1", epoch=e), spec)["indices"][0]) for e in range(6)
    }
    assert len(starts) > 1


def test_sample_row_augmented_shape(dataset):
    _, table, _ = dataset
    spec = spec_for(settings=AUGMENT)
    s = sample_row(draw_row(table, "alpha/a0", epoch=1), spec)
    assert s["valid"] is True
    assert s["clip"].shape == (CLIP_LEN, 56, 56, 3) and s["clip"].dtype == np.uint8
    assert spec.output_clip_shape(draw_row(table, "alpha/a0")) == (CLIP_LEN, 56, 56, 3)
    check_pace_rule(s, (1, 2, 3, 4))


def test_sample_row_resize_only(dataset):
    _, table, _ = dataset
    spec = spec_for(settings=AugmentSettings(enabled=False, resize=[32, 40]))
    s = sample_row(draw_row(table, "alpha/a1", epoch=1), spec)
    assert s["clip"].shape == (CLIP_LEN, 32, 40, 3)
    ref = read_all_frames(draw_row(table, "alpha/a1")["uri"], size=(32, 40))
    assert np.array_equal(s["clip"], ref[s["indices"]])


def _check_placeholder(s: dict, shape, reason: str) -> None:
    assert s["valid"] is False
    assert s["skip_reason"] == reason
    assert s["clip"].shape == shape and s["clip"].dtype == np.uint8
    assert not s["clip"].any()
    assert s["indices"].shape == (CLIP_LEN,) and np.all(s["indices"] == -1)
    assert s["label"].shape == () and s["label"].dtype == np.int64
    assert s["resampled"] is False


def test_broken_and_missing_videos_give_placeholders(dataset, tmp_path):
    _, table, _ = dataset
    broken = write_corrupt_files(tmp_path / "broken")
    base = draw_row(table, "alpha/a0")
    for settings, shape in ((EXACT, (CLIP_LEN, H, W, 3)), (AUGMENT, (CLIP_LEN, 56, 56, 3))):
        spec = spec_for(settings=settings)
        for name in ("garbage.mp4", "text.avi", "truncated.mp4", "empty.mp4"):
            row = dict(base, uri=str(broken[name]), keyframes=[], keyframe_pts=[])
            s = sample_row(row, spec)
            assert s["valid"] is False and s["skip_reason"], name
            _check_placeholder(s, shape, s["skip_reason"])
        s = sample_row(dict(base, uri=str(tmp_path / "gone.avi")), spec)
        _check_placeholder(s, shape, "missing")


def test_manifest_lies_about_length(dataset):
    """A row claiming more frames than decode: a draw past the end is a decode_error
    placeholder, never a wrong or partial clip."""
    _, table, _ = dataset
    spec = spec_for(paces=(4,))
    reasons = set()
    for epoch in range(10):
        row = draw_row(table, "alpha/a0", epoch=epoch, num_frames=400)
        s = sample_row(row, spec)
        if s["valid"]:
            assert s["indices"].max() < LENGTHS["alpha/a0"]
        else:
            reasons.add(s["skip_reason"])
            assert not s["clip"].any()
    assert reasons == {"decode_error"}


@pytest.fixture(scope="module")
def short_video(tmp_path_factory):
    root = tmp_path_factory.mktemp("short")
    path = root / "cls" / "short.avi"
    write_video(path, index_pattern_frames(10, H, W), fps=25.0, codec="mpeg4-bframes")
    table = build_manifest(list_entries(str(root), "folder"), use_ray=False)
    assert table["num_frames"].to_pylist() == [10]
    return table, read_all_frames(path)


def test_too_short_video(short_video):
    table, _ = short_video
    row = dict(table.to_pylist()[0], epoch=0, draw=0)
    for short in ("resample_pace", "skip"):
        s = sample_row(row, spec_for(paces=(1, 2, 3, 4), short=short))
        _check_placeholder(s, (CLIP_LEN, H, W, 3), "too_short")


def test_short_video_resamples_slow_pace(short_video):
    table, reference = short_video
    assert pace_span(CLIP_LEN, 0.5) == 8
    spec = spec_for(paces=(0.5, 1))
    resampled = 0
    for epoch in range(20):
        row = dict(table.to_pylist()[0], epoch=epoch, draw=0)
        s = sample_row(row, spec)
        assert s["valid"] is True
        assert int(s["label"]) == 0 and float(s["pace"]) == 0.5
        assert s["indices"].max() < 10
        assert np.array_equal(s["clip"], reference[s["indices"]])
        check_pace_rule(s, (0.5, 1))
        resampled += bool(s["resampled"])
    assert 0 < resampled < 20
    # The skip policy skips the draws whose pace does not fit.
    skip = spec_for(paces=(0.5, 1), short="skip")
    reasons = {
        sample_row(dict(table.to_pylist()[0], epoch=e, draw=0), skip)["skip_reason"]
        for e in range(20)
    }
    assert reasons == {"", "too_short"}


# --------------------------------------------------------------------------- rows


def test_usable_videos(dataset, tmp_path):
    _, table, _ = dataset
    assert usable_videos(table).num_rows == 4
    assert usable_videos(table, split="train").num_rows == 4
    assert usable_videos(table, split="val").num_rows == 0
    half = usable_videos(table, fraction=0.5, seed=0)
    assert half.num_rows == 2
    assert set(half["video_id"].to_pylist()) <= set(table["video_id"].to_pylist())
    broken = write_corrupt_files(tmp_path / "b" / "cls")
    bad = build_manifest(list_entries(str(tmp_path / "b"), "folder"), use_ray=False)
    assert usable_videos(pa.concat_tables([table, bad])).num_rows == 4
    assert len(broken) == bad.num_rows


def _pairs(rows: pa.Table) -> list[tuple[str, int]]:
    return list(zip(rows["video_id"].to_pylist(), rows["draw"].to_pylist(), strict=True))


@pytest.mark.parametrize("clips_per_video, n_videos", [(3, 4), (1, 3), (2, 4)])
def test_epoch_rows_shards(dataset, clips_per_video, n_videos):
    _, table, _ = dataset
    videos = table.slice(0, n_videos)
    total = n_videos * clips_per_video
    shards = [epoch_rows(videos, clips_per_video, 0, 1, rank=r, world_size=2) for r in range(2)]
    assert shards[0].num_rows == shards[1].num_rows == -(-total // 2)
    union = set(_pairs(shards[0])) | set(_pairs(shards[1]))
    expected = {(v, d) for v in videos["video_id"].to_pylist() for d in range(clips_per_video)}
    assert union == expected
    for s in shards:
        assert set(s["epoch"].to_pylist()) == {1}
        for r in s.to_pylist():
            src = [x for x in videos.to_pylist() if x["video_id"] == r["video_id"]][0]
            assert r["uri"] == src["uri"] and r["num_frames"] == src["num_frames"]
            assert r["class_label"] == src["label"]
    if total % 2 == 0:  # no wrap-around: the shards are disjoint
        assert not set(_pairs(shards[0])) & set(_pairs(shards[1]))


def test_epoch_rows_single_worker_covers_all(dataset):
    _, table, _ = dataset
    rows = epoch_rows(table, 3, seed=0, epoch=0)
    assert rows.num_rows == 12
    assert sorted(_pairs(rows)) == sorted(
        (v, d) for v in table["video_id"].to_pylist() for d in range(3)
    )


def test_epoch_rows_order(dataset):
    _, table, _ = dataset
    a = _pairs(epoch_rows(table, 4, seed=1, epoch=0))
    assert a == _pairs(epoch_rows(table, 4, seed=1, epoch=0))
    assert a != _pairs(epoch_rows(table, 4, seed=1, epoch=1))
    assert a != _pairs(epoch_rows(table, 4, seed=2, epoch=0))
    assert sorted(a) == sorted(_pairs(epoch_rows(table, 4, seed=1, epoch=1)))
    plain = _pairs(epoch_rows(table, 2, seed=1, epoch=0, shuffle=False))
    assert plain == [(v, d) for v in table["video_id"].to_pylist() for d in range(2)]


def test_epoch_rows_no_videos(dataset):
    _, table, _ = dataset
    with pytest.raises(ValueError):
        epoch_rows(table.slice(0, 0), 1, 0, 0)


def test_paths_are_files(dataset):
    root, table, _ = dataset
    for uri in table["uri"].to_pylist():
        assert Path(uri).is_file() and Path(uri).is_relative_to(root)


# --------------------------------------------------------------------------- Ray Data


def test_build_clip_dataset_matches_sample_row(ray_local, dataset, tmp_path):
    _, table, _ = dataset
    rows = epoch_rows(table, 2, seed=3, epoch=1)
    # One extra draw row for a missing video: still exactly one output row.
    gone = rows.slice(0, 1).to_pylist()[0]
    gone.update(uri=str(tmp_path / "gone.avi"), video_id="alpha/gone")
    rows = pa.concat_tables([rows, pa.Table.from_pylist([gone], schema=rows.schema)])
    spec = spec_for(settings=AUGMENT, seed=3)
    out = build_clip_dataset(rows, spec, DataConfig(rows_per_task=2)).take_all()
    assert len(out) == rows.num_rows == 9
    got = {(str(r["video_id"]), int(r["draw"])): r for r in out}
    assert len(got) == 9
    for row in rows.to_pylist():
        o = got[(row["video_id"], row["draw"])]
        ref = sample_row(row, spec)
        assert int(o["epoch"]) == 1
        assert int(o["class_label"]) == row["class_label"]
        for key in ("clip", "label", "pace", "indices", "valid", "skip_reason", "resampled"):
            assert np.array_equal(np.asarray(o[key]), np.asarray(ref[key])), key
    missing = got[("alpha/gone", gone["draw"])]
    assert not bool(missing["valid"]) and missing["skip_reason"] == "missing"
    assert sum(bool(o["valid"]) for o in out) == 8
