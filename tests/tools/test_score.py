"""Tests of rayssl.tools.score (`rayssl score`): curriculum difficulty of real encoded videos with
a real local Ray, failures as counted NaN rows, resuming, S3 output (moto), CLI and job."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from rayssl.cli import main as cli_main
from rayssl.io import storage
from rayssl.io.manifest import build_manifest, list_entries, read_manifest, write_manifest
from rayssl.io.video import probe_video
from rayssl.tools.score import SCORE_COLUMNS, make_score_spec, parts_uri, run_score, score_video
from rayssl.tools.synthetic import generate_dataset, write_video
from rayssl.train.curriculum import order_by_difficulty
from tests.conftest import ROOT
from tests.s3server import make_bucket, s3_env

NUM_GOOD, NUM_FRAMES = 6, 20
GARBAGE = np.random.default_rng(11).bytes(3000)
#: Small frames keep the flow cheap: 64x86 -> centre 56x56, 4x4 blocks of 14 px.
FAST = {"resize": (64, 86), "crop": 56}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SimpleNamespace:
    """6 good H.264 videos, one too short for a 16-frame clip, one broken before the manifest
    was built (a manifest error), then one overwritten with garbage and one deleted after it
    was built (a stale manifest: only the scoring finds out)."""
    root = tmp_path_factory.mktemp("score")
    videos = root / "videos"
    made = generate_dataset(videos, NUM_GOOD + 2, NUM_FRAMES, 64, 86, codec="h264", seed=5)
    rng = np.random.default_rng(0)
    short = rng.integers(0, 255, (8, 64, 86, 3), dtype=np.uint8)
    write_video(videos / made[0].label_name / "short.mp4", short, fps=25.0)
    (videos / made[1].label_name / "broken.mp4").write_bytes(GARBAGE)
    table = build_manifest(list_entries(str(videos), "folder"), use_ray=False)
    manifest = root / "manifest.parquet"
    write_manifest(table, str(manifest))
    corrupted, deleted = made[-2].path, made[-1].path
    corrupted.write_bytes(GARBAGE)
    deleted.unlink()
    ids = {str(p.relative_to(videos).with_suffix("")) for p in (corrupted, deleted)}
    good = [
        r["video_id"]
        for r in table.to_pylist()
        if not r["error"] and r["num_frames"] == NUM_FRAMES and r["video_id"] not in ids
    ]
    assert len(good) == NUM_GOOD and table.num_rows == NUM_GOOD + 4
    return SimpleNamespace(root=root, manifest=manifest, table=table, good=good)


def by_id(table: pa.Table) -> dict[str, dict]:
    return {r["video_id"]: r for r in table.to_pylist()}


# --------------------------------------------------------------------------- one video


def _moving_squares(path: Path, corners: list[tuple[int, int]], frames: int = 16) -> dict:
    """A 112x112 video: a static smooth texture with 8x8 textured squares (top-left corners
    ``corners``) shaking left and right by 2 px every frame.  Returns its manifest-like row."""
    rng = np.random.default_rng(3)
    bg = cv2.GaussianBlur(rng.uniform(60, 190, (112, 112, 3)).astype(np.float32), (0, 0), 3)
    patch = rng.choice([20.0, 235.0], (8, 8, 1)) * np.ones((1, 1, 3))
    video = []
    for t in range(frames):
        frame = bg.copy()
        for top, left in corners:
            x = left + 2 * (t % 2)
            frame[top : top + 8, x : x + 8] = patch
        video.append(frame.astype(np.uint8))
    write_video(path, video, fps=25.0)
    probe = probe_video(path)
    return {
        "uri": str(path),
        "video_id": path.stem,
        "num_frames": probe.num_frames,
        "keyframes": probe.keyframes,
        "keyframe_pts": probe.keyframe_pts,
    }


@pytest.mark.parametrize("flow", ["dis", "farneback"])
def test_concentrated_motion_scores_higher_than_spread_motion(tmp_path, flow):
    # One square inside block (1, 1) for all 16 frames, against one square per block.
    one = _moving_squares(tmp_path / "one.mp4", [(38, 38)])
    spread = _moving_squares(
        tmp_path / "spread.mp4",
        [(28 * by + 10, 28 * bx + 2) for by in range(4) for bx in range(4)],
    )
    spec = make_score_spec("uniform:1", flow, resize=None, crop=112)
    easy, hard = score_video(one, spec), score_video(spread, spec)
    assert easy["difficulty_error"] is None and hard["difficulty_error"] is None
    assert easy["difficulty_clips"] == hard["difficulty_clips"] == 1
    # f is the share of the motion in the busiest block: ~1 versus ~1/16.
    assert easy["difficulty"] > 0.5, easy
    assert hard["difficulty"] < 0.25, hard
    assert easy["flow_s"] > 0 and easy["decode_s"] > 0


def test_default_clip_is_the_centre_clip(tmp_path):
    """uniform:1 (the default) scores the centre clip: a 48-frame video whose only motion
    (one shaking square) is in frames 16-31 scores as concentrated motion; its first 16
    frames hold only codec noise, spread over the frame."""
    rng = np.random.default_rng(3)
    bg = cv2.GaussianBlur(rng.uniform(60, 190, (112, 112, 3)).astype(np.float32), (0, 0), 3)
    patch = rng.choice([20.0, 235.0], (8, 8, 1)) * np.ones((1, 1, 3))
    video = []
    for t in range(48):
        frame = bg.copy()
        x = 40 + (2 * (t % 2) if 16 <= t < 32 else 0)
        frame[40:48, x : x + 8] = patch
        video.append(frame.astype(np.uint8))
    path = tmp_path / "centre.mp4"
    write_video(path, video, fps=25.0)
    probe = probe_video(path)
    row = {
        "uri": str(path),
        "video_id": path.stem,
        "num_frames": probe.num_frames,
        "keyframes": probe.keyframes,
        "keyframe_pts": probe.keyframe_pts,
    }
    assert row["num_frames"] == 48
    spec = make_score_spec(resize=None, crop=112)
    centre = score_video(row, spec)
    assert centre["difficulty_error"] is None and centre["difficulty"] > 0.5, centre
    # the first clip (what uniform:1 used to be): frames 0-15 of the same file
    first = score_video({**row, "num_frames": 16}, spec)
    assert first["difficulty"] < 0.35, first


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"clips": "uniform:0"}, "clips"),
        ({"clips": "sliding:1:0"}, "clips"),
        ({"flow": "lucas-kanade"}, "flow"),
        ({"resize": (0, 10)}, "resize"),
        ({"crop": 200}, "crop"),
        ({"crop": (56, 56, 3)}, "crop"),
        ({"clip_len": 1}, "clip_len"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        make_score_spec(**kwargs)


# --------------------------------------------------------------------------- Ray Data job


def test_run_score_scores_every_row_and_counts_failures(ray_local, corpus, tmp_path):
    before = corpus.manifest.read_bytes()
    out = tmp_path / "scored.parquet"
    summary = run_score(str(corpus.manifest), str(out), clips="uniform:2", **FAST)
    assert corpus.manifest.read_bytes() == before  # the input is left alone
    assert (summary["ok"], summary["scored"], summary["reused"]) == (NUM_GOOD, NUM_GOOD, 0)
    assert summary["failed"] == 4 and summary["total"] == NUM_GOOD + 4
    assert summary["failures_by_reason"] == {
        "manifest_error": 1,
        "missing": 1,
        "not_a_video": 1,
        "too_short": 1,
    }
    assert summary["settings"] == "v2;clips=uniform:2;clip_len=16;flow=dis;resize=64x86;crop=56x56"
    assert summary["parts_written"] >= 1 and summary["parts_removed"]
    assert not Path(parts_uri(str(out))).exists()

    scored = read_manifest(str(out))
    # Every input row and column, in order, then the score columns.
    assert scored.column_names == corpus.table.column_names + list(SCORE_COLUMNS)
    assert scored.select(corpus.table.column_names).equals(corpus.table)
    rows = by_id(scored)
    for vid in corpus.good:
        row = rows[vid]
        assert 0.0 < row["difficulty"] <= 1.0 and row["difficulty_clips"] == 2, row
        assert row["difficulty_error"] is None and row["difficulty_error_detail"] == ""
    bad = {r["video_id"]: r for r in rows.values() if r["video_id"] not in corpus.good}
    assert all(math.isnan(r["difficulty"]) and r["difficulty_clips"] == 0 for r in bad.values())
    reasons = {Path(v).name: r["difficulty_error"] for v, r in bad.items()}
    assert reasons["short"] == "too_short" and reasons["broken"] == "manifest_error"
    assert (
        "8 frames < 16"
        in bad[next(v for v in bad if v.endswith("short"))]["difficulty_error_detail"]
    )
    assert {r["difficulty_settings"] for r in rows.values()} == {summary["settings"]}

    # The curriculum reads it: easy first, the unscored four last.
    ordered = order_by_difficulty(scored)["video_id"].to_pylist()
    assert set(ordered[:NUM_GOOD]) == set(corpus.good) and set(ordered[NUM_GOOD:]) == set(bad)


def test_run_score_resumes_from_parts_and_from_its_output(ray_local, corpus, tmp_path):
    subset = tmp_path / "subset.parquet"
    first_three = corpus.table.filter(
        pa.array([v in corpus.good[:3] for v in corpus.table["video_id"].to_pylist()])
    )
    write_manifest(first_three, str(subset))
    out = tmp_path / "scored.parquet"

    # A run that got as far as its part files, then died before writing the manifest.
    partial = run_score(str(subset), str(out), keep_parts=True, **FAST)
    assert (partial["scored"], partial["reused"], partial["parts_removed"]) == (3, 0, False)
    early = by_id(read_manifest(str(out)))
    out.unlink()
    assert list(Path(parts_uri(str(out))).glob("part-*.parquet"))

    # Re-run on the whole manifest: only the new videos are decoded.
    full = run_score(str(corpus.manifest), str(out), **FAST)
    assert (full["scored"], full["reused"], full["ok"]) == (NUM_GOOD - 3, 3, NUM_GOOD)
    assert full["failed"] == 4  # failures are retried, never reused
    assert not Path(parts_uri(str(out))).exists()
    rows = by_id(read_manifest(str(out)))
    for vid in corpus.good[:3]:
        assert rows[vid]["difficulty"] == early[vid]["difficulty"]  # bit-identical

    # Finished: the output manifest alone is enough to skip everything.
    again = run_score(str(corpus.manifest), str(out), **FAST)
    assert (again["scored"], again["reused"]) == (0, NUM_GOOD)
    assert by_id(read_manifest(str(out))).keys() == rows.keys()
    assert all(
        by_id(read_manifest(str(out)))[v]["difficulty"] == rows[v]["difficulty"]
        for v in corpus.good
    )

    # A video whose manifest row changed (here its frame count) is scored again.
    changed = tmp_path / "changed.parquet"
    counts = corpus.table["num_frames"].to_pylist()
    counts[corpus.table["video_id"].to_pylist().index(corpus.good[0])] = NUM_FRAMES - 1
    write_manifest(
        corpus.table.set_column(
            corpus.table.schema.get_field_index("num_frames"), "num_frames", pa.array(counts)
        ),
        str(changed),
    )
    stale = run_score(str(changed), str(out), **FAST)
    assert (stale["scored"], stale["reused"]) == (1, NUM_GOOD - 1)

    # Other settings are not "already scored"; --overwrite rescores everything, and a
    # rescore gives the values that are reused.
    other = run_score(str(corpus.manifest), str(out), flow="farneback", **FAST)
    assert (other["scored"], other["reused"]) == (NUM_GOOD, 0)
    first = by_id(read_manifest(str(out)))
    redo = run_score(str(corpus.manifest), str(out), flow="farneback", overwrite=True, **FAST)
    assert (redo["scored"], redo["reused"]) == (NUM_GOOD, 0)
    second = by_id(read_manifest(str(out)))
    assert [first[v]["difficulty"] for v in corpus.good] == [
        second[v]["difficulty"] for v in corpus.good
    ]


def test_run_score_refuses_to_overwrite_its_input(corpus):
    with pytest.raises(ValueError, match="^out: must differ"):
        run_score(str(corpus.manifest), str(corpus.manifest))
    with pytest.raises(ValueError, match=r"^out: expected .*\.parquet"):
        run_score(str(corpus.manifest), str(corpus.root / "scored"))


def test_run_score_writes_to_s3(ray_local, corpus, moto_endpoint):
    # The manifest and the output on S3 (the videos stay local: workers only read them).
    endpoint = moto_endpoint  # the session's: its Ray workers have its address
    with s3_env(endpoint):
        make_bucket(endpoint, "score-bucket")
        write_manifest(corpus.table, "s3://score-bucket/in/manifest.parquet")
        out = "s3://score-bucket/out/scored.parquet"
        summary = run_score("s3://score-bucket/in/manifest.parquet", out, **FAST)
        assert (summary["ok"], summary["failed"], summary["manifest"]) == (NUM_GOOD, 4, out)
        assert summary["parts_written"] >= 1 and summary["parts_removed"]
        assert storage.list_files("s3://score-bucket/out") == [
            storage.FileInfo(out, storage.size(out))
        ]  # the parts are gone
        scored = read_manifest(out)
        assert scored.num_rows == corpus.table.num_rows
        assert np.isfinite(scored["difficulty"].to_numpy()).sum() == NUM_GOOD
        again = run_score("s3://score-bucket/in/manifest.parquet", out, **FAST)
        assert (again["scored"], again["reused"]) == (0, NUM_GOOD)


# --------------------------------------------------------------------------- CLI and job


def test_cli_score_and_its_errors(ray_local, corpus, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    argv = ["score", str(corpus.manifest), "--out", str(out), "--resize", "64", "86"]
    assert cli_main([*argv, "--crop", "56", "--clips", "uniform:1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] == NUM_GOOD and summary["settings"].endswith("crop=56x56")
    assert cli_main([*argv, "--flow", "magic"]) == 2
    assert "flow: expected one of" in capsys.readouterr().err
    assert cli_main(["score", str(corpus.manifest), "--out", str(corpus.manifest)]) == 2
    assert "out: must differ" in capsys.readouterr().err


def test_cli_score_symlinked_output_and_foreign_files_in_parts(ray_local, corpus, tmp_path, capsys):
    """`--out` through a symlinked folder that is the input manifest's folder is refused
    (real paths compared: `abspath` differed); and the part cleanup deletes only its own
    top-level part-*.parquet, not a file beside them nor one behind a symlinked sub-folder."""
    good = corpus.table.filter(pc.is_in(corpus.table["video_id"], pa.array(corpus.good)))
    manifest = tmp_path / "in" / "manifest.parquet"
    write_manifest(good.slice(0, 2), str(manifest))
    (tmp_path / "in-link").symlink_to(tmp_path / "in")
    original = (manifest.read_bytes(), manifest.stat().st_mtime_ns)
    argv = ["score", str(manifest), "--resize", "64", "86", "--crop", "56"]
    assert cli_main([*argv, "--out", str(tmp_path / "in-link" / "manifest.parquet")]) == 2
    assert "out: must differ from the input manifest" in capsys.readouterr().err
    assert (manifest.read_bytes(), manifest.stat().st_mtime_ns) == original
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["manifest.parquet"]

    out = tmp_path / "scored.parquet"
    parts = Path(parts_uri(str(out)))
    keep = tmp_path / "keep"
    keep.mkdir()
    pq.write_table(pa.table({"a": [1]}), keep / "part-precious.parquet")
    parts.mkdir()
    (parts / "linked").symlink_to(keep)
    pq.write_table(pa.table({"a": [1]}), parts / "notes.parquet")
    assert cli_main([*argv, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["ok"] == 2 and summary["parts_written"] >= 1 and summary["parts_removed"]
    assert (keep / "part-precious.parquet").exists()
    assert sorted(p.name for p in parts.iterdir()) == ["linked", "notes.parquet"]


def test_score_job_entry_point(ray_local, corpus, tmp_path, monkeypatch, capsys):
    """`python jobs/score.py` as `ray job submit` runs it, in-process (the session's Ray)."""
    out = tmp_path / "job.parquet"
    argv = [str(corpus.manifest), "--out", str(out), "--resize", "64", "86", "--crop", "56"]
    monkeypatch.setattr(sys, "argv", ["jobs/score.py", *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "jobs" / "score.py"), run_name="__main__")
    assert done.value.code == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT ") :])
    assert (result["ok"], result["failed"]) == (NUM_GOOD, 4)
    assert read_manifest(str(out)).num_rows == corpus.table.num_rows
    assert not Path(parts_uri(str(out))).exists()
