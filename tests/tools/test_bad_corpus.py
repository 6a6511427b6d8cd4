"""Bad data at scale: a generated corpus of good files mixed with every kind of bad one
(`rayssl.tools.badcorpus`) goes through `rayssl manifest`, `rayssl prepare` and a
pre-training run. Every bad file is skipped with its reason (a manifest `error`, or a
masked draw counted in MLflow's `train/skipped_<reason>`), no job fails, and every good
file -- odd codecs, 1080p, rotated, VFR, time-lapse, unseekable, damaged but decodable --
is trained on, from its original and from its prepared copy.

The skip-rate stop (`data.max_skip_fraction`) on a corpus of real broken files is
tests/train/test_skip_rate.py.
"""

from __future__ import annotations

import time
from collections import Counter

import av
import mlflow
import numpy as np
import pyarrow as pa
import pytest

from rayssl.cli import main as cli_main
from rayssl.clips.pipeline import SamplerSpec, sample_row
from rayssl.config import load_config
from rayssl.io.manifest import read_manifest, write_manifest
from rayssl.io.video import VideoError, probe_video, read_all_frames, read_frames
from rayssl.pretext import build_pretext
from rayssl.tools.badcorpus import CATEGORIES, MAX_VIDEO_BYTES, TRAIN, generate_bad_corpus
from rayssl.tools.prepare import transcode_video
from tests.conftest import ROOT, tiny_overrides


def _outcome(error: str | None, skip: str | None) -> str:
    """One stage's outcome for the table: `ok`, or the reason."""
    return error or skip or "ok"


def _train_outcomes(rows: dict[str, dict], spec: SamplerSpec) -> dict[str, str | None]:
    """video_id -> skip reason (None: a valid clip) of the epoch-0 draw of every usable
    row: the same draw a 1-worker, 1-clip-per-video epoch 0 makes (`clip_rng` seeds it)."""
    out = {}
    for vid, row in rows.items():
        if row["error"] is None and row["num_frames"] > 0:
            sample = sample_row({**row, "epoch": 0, "draw": 0}, spec)
            out[vid] = None if sample["valid"] else str(sample["skip_reason"])
    return out


def _table(lines: dict[str, tuple[str, ...]]) -> str:
    head = ("category", "files", "expected", "manifest", "prepare", "train (raw)", "train (prep)")
    widths = [max(len(head[i]), *(len(v[i]) for v in lines.values())) for i in range(len(head))]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), *(fmt.format(*v) for v in lines.values())])


@pytest.mark.slow
def test_bad_corpus_through_manifest_prepare_and_pretraining(ray_local, tmp_path, capsys):
    from rayssl.launch import pretrain

    seconds: dict[str, float] = {}
    t0 = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        seconds[name], last = time.perf_counter() - last, time.perf_counter()

    corpus = tmp_path / "corpus"
    files = generate_bad_corpus(corpus, seed=0, per_codec=2)
    lap("generate")
    assert {f.category.name for f in files} == set(CATEGORIES)
    by_id = {f.video_id: f for f in files}
    good = [f for f in files if f.expected == TRAIN]

    # 1. rayssl manifest (Ray Data tasks): every file is a row; bad ones carry their reason.
    manifest = tmp_path / "manifest.parquet"
    cap = ["--max-video-bytes", str(MAX_VIDEO_BYTES)]
    assert cli_main(["manifest", str(corpus), "--out", str(manifest), *cap]) == 0
    lap("manifest")
    raw = {r["video_id"]: r for r in read_manifest(str(manifest)).to_pylist()}
    assert set(raw) == set(by_id)
    for vid, f in by_id.items():
        row, cat = raw[vid], f.category
        assert row["error"] == cat.manifest_error, (vid, row["error"], row["error_detail"])
        if row["error"] is None:
            n = row["num_frames"]
            assert n == f.frames_written if cat.exact_frames else n >= cat.min_frames, (vid, n)
    for vid in ("corrupt_break/corrupt_break_0", "truncated_tail/truncated_tail_0"):
        assert raw[vid]["num_frames"] < by_id[vid].frames_written  # the tail is lost
    # Rotation metadata is not applied: frames are used as coded (64x48, not 48x64).
    rotated = raw["rotated/rotated_0"]
    assert (rotated["width"], rotated["height"]) == (64, 48)
    assert raw["hires/hires_0"]["height"] == 1080
    # A resolution change mid-stream reads as one size at native size too (across the seam).
    change = raw["size_change/size_change_0"]
    clip = read_frames(change["uri"], [15, 25, 35], keyframes=change["keyframes"])
    assert clip.shape == (3, 48, 64, 3)

    for f in files:
        if f.delete_after_manifest:
            f.path.unlink()

    # 2. rayssl prepare (Ray Data tasks): the good files are transcoded, no task fails.
    prepared = tmp_path / "prepared"
    argv = ["prepare", str(manifest), "--out", str(prepared), "--short-side", "48", *cap]
    assert cli_main(argv) == 0
    lap("prepare")
    prep = {r["video_id"]: r for r in read_manifest(str(prepared / "manifest.parquet")).to_pylist()}
    assert set(prep) == set(by_id)
    for vid, f in by_id.items():
        row = prep[vid]
        assert row["error"] == f.category.prepare_error, (vid, row["error"], row["error_detail"])
        if row["error"] is None:  # frame i of the output is frame i of the source
            assert row["num_frames"] == raw[vid]["num_frames"] and row["codec"] == "h264"

    # 3. Pre-training on the original rows and the prepared ones together (ids repeat):
    # every reader path (seek, fallback, odd codecs) and the prepared MP4s in one run.
    both = tmp_path / "train.parquet"
    original = read_manifest(str(manifest))
    write_manifest(
        pa.concat_tables([original, read_manifest(str(prepared / "manifest.parquet"))]), str(both)
    )
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        *tiny_overrides(both, tmp_path / "runs", "badcorpus", tracking),
        "train.num_workers=0",
        "data.val_split=",
        "optim.epochs=1",
    ]
    cfg = load_config(ROOT / "configs" / "debug.yaml", overrides)
    result = pretrain(cfg)
    lap("pretrain")
    assert result["metrics"]["epoch"] == 0

    # What each row's draw became, from the sampler the Ray Data tasks ran.
    spec = SamplerSpec(
        build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video),
        cfg.data.augment,
        cfg.run.seed,
    )
    train_raw, train_prep = _train_outcomes(raw, spec), _train_outcomes(prep, spec)
    for outcomes in (train_raw, train_prep):
        for vid, skip in outcomes.items():
            assert skip == by_id[vid].category.train_skip, (vid, skip)
    for f in good:  # every good file gave a clip, from the original and the prepared copy
        assert train_raw[f.video_id] is None and train_prep[f.video_id] is None, f.video_id

    # MLflow counted exactly those draws: one per usable row, the skips by reason.
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.run_name = 'badcorpus'"
    ).iloc[0]
    assert run["status"] == "FINISHED"
    usable = len(train_raw) + len(train_prep)
    skips = Counter(s for s in [*train_raw.values(), *train_prep.values()] if s)
    assert skips == {"too_short": 4, "missing": 1}  # image + too_short, twice; missing once
    assert run["metrics.data/videos"] == usable
    assert run["metrics.train/clips"] == usable
    assert run["metrics.train/videos_skipped"] == sum(skips.values())
    logged = {
        k.removeprefix("metrics.train/skipped_"): int(v)
        for k, v in run.items()
        if k.startswith("metrics.train/skipped_") and not np.isnan(v)
    }
    assert logged == skips
    # the files the manifests already found unreadable are never drawn, but counted too
    found_bad = Counter(r["error"] for r in [*raw.values(), *prep.values()] if r["error"])
    assert run["metrics.data/bad_videos"] == sum(found_bad.values()) > 0
    bad_logged = {
        k.removeprefix("metrics.data/bad_"): int(v)
        for k, v in run.items()
        if k.startswith("metrics.data/bad_") and k != "metrics.data/bad_videos" and not np.isnan(v)
    }
    assert bad_logged == found_bad
    assert usable - sum(skips.values()) == 2 * len(good)

    # The per-category table the issue asks for.
    lines: dict[str, tuple[str, ...]] = {}
    for f in files:
        name, vid = f.category.name, f.video_id
        stages = (
            _outcome(raw[vid]["error"], None),
            _outcome(prep[vid]["error"], None),
            _outcome(None, train_raw.get(vid)) if vid in train_raw else "-",
            _outcome(None, train_prep.get(vid)) if vid in train_prep else "-",
        )
        count = int(lines[name][1]) + 1 if name in lines else 1
        lines[name] = (name, str(count), f.expected, *stages)
    with capsys.disabled():
        print(f"\nbad-data corpus: {len(files)} files, {len(good)} good; MLflow: {logged}")
        print(_table(lines))
        laps = ", ".join(f"{k} {v:.1f}s" for k, v in seconds.items())
        print(f"{time.perf_counter() - t0:.1f}s: {laps}")
    # Each category's files behaved alike (the table's one line per category is true).
    for name in lines:
        members = [f for f in files if f.category.name == name]
        assert len({(raw[f.video_id]["error"], prep[f.video_id]["error"]) for f in members}) == 1


def test_files_that_broke_the_reader_and_the_transcoder(tmp_path):
    """The odd files behind the fixed bugs, without Ray (runs in `make test-fast`)."""
    files = {f.category.name: f.path for f in generate_bad_corpus(tmp_path, 1, per_codec=0)}
    # A codec FFmpeg has no decoder for: a decode_error, not an AttributeError that
    # failed the whole manifest job.
    with pytest.raises(VideoError) as e:
        probe_video(files["unknown_codec"])
    assert (e.value.reason, e.value.detail) == (
        "decode_error",
        "no decoder for the video stream's codec",
    )
    # A broken AVI header: FFmpeg refuses every seek (EPERM), which escaped read_frames
    # and failed the training job; now such reads decode from the start, frame-exact.
    path = files["unseekable"]
    with av.open(str(path)) as container, pytest.raises(av.error.FFmpegError):
        container.seek(0)
    probe = probe_video(path)
    assert probe.keyframes[1:], "the file should have keyframes to seek to"
    every = read_all_frames(path)
    for wanted in ([20, 3], [probe.keyframes[1] + 1, probe.keyframes[1] + 2]):
        got = read_frames(path, wanted, keyframes=probe.keyframes, keyframe_pts=probe.keyframe_pts)
        assert np.array_equal(got, every[wanted])
    # A time-lapse (a frame every 50 minutes): its rate used to round to 0 fps in prepare.
    assert probe_video(files["timelapse"]).fps < 1 / 2002
    assert probe_video(transcode_video(files["timelapse"].read_bytes(), 48)).num_frames == 32
    # A resolution change mid-stream at native size (no resize): one size per clip.
    assert read_frames(files["size_change"], [15, 25]).shape == (2, 48, 64, 3)
    # The odd-but-good files are what they claim to be.
    with av.open(str(files["rotated"])) as container:
        assert next(container.decode(video=0)).rotation == 90
    with av.open(str(files["vfr"])) as container:
        pts = [f.pts for f in container.decode(video=0)]
    assert len(set(np.diff(pts))) > 2
    assert probe_video(files["hires"]).height == 1080
