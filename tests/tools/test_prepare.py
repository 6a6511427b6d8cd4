"""Tests of rayssl.tools.prepare (transcoding to training-ready H.264) and of the data path
against a real (moto) S3 server: `rayssl manifest` / `rayssl preview` on s3://, prepare
s3 -> s3, missing and corrupt objects, and transient errors through a flaky proxy."""

from __future__ import annotations

import io
import json
import os
import struct
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from rayssl.cli import main as cli_main
from rayssl.clips.pipeline import SamplerSpec, sample_row
from rayssl.config import AugmentSettings, Config
from rayssl.io import storage
from rayssl.io.manifest import (
    build_manifest,
    list_entries,
    probe_entry,
    read_manifest,
    rows_to_table,
    write_manifest,
)
from rayssl.io.video import VideoError, probe_video, read_all_frames, read_frames
from rayssl.pretext import build_pretext
from rayssl.tools.prepare import (
    PrepareParams,
    output_size,
    prepare_item,
    run_prepare,
    transcode_video,
)
from rayssl.tools.synthetic import (
    generate_dataset,
    index_pattern_frames,
    read_index_pattern,
    write_video,
)
from tests.s3server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    boto3_client,
    flaky_s3_proxy,
    make_bucket,
    s3_env,
    upload_dir,
)

NUM_VIDEOS, NUM_FRAMES, HEIGHT, WIDTH = 4, 40, 48, 64
SHORT_SIDE, GOP = 32, 8
GARBAGE = np.random.default_rng(7).bytes(3000)


def mp4_boxes(data: bytes) -> list[str]:
    """Top-level MP4 box types in file order."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        boxes.append(kind.decode("latin-1"))
        pos += size if size >= 8 else len(data)
    return boxes


def decoded_indices(frames: np.ndarray) -> list[int]:
    return [read_index_pattern(f) for f in frames]


# --------------------------------------------------------------------------- one video


@pytest.fixture(scope="module")
def index_avi(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ip") / "ip.avi"
    write_video(path, index_pattern_frames(60, 96, 128), fps=25.0, codec="mpeg4-bframes")
    return path.read_bytes()


@pytest.mark.parametrize(("short_side", "gop"), [(64, 16), (64, 7), (96, 16)])
def test_transcode_is_frame_exact_with_fixed_gop(index_avi, short_side, gop):
    """The source is MPEG-4 with B-frames and a keyframe every 12 frames; the output has
    them every `gop` frames only (the decoder's picture types must not leak into x264)."""
    out = transcode_video(index_avi, short_side=short_side, gop=gop, crf=23)
    probe = probe_video(out)
    assert probe.codec == "h264" and probe.num_frames == 60
    assert (probe.height, probe.width) == output_size(96, 128, short_side)
    assert probe.height == short_side and probe.width in (86, 128)
    assert probe.fps == pytest.approx(25.0)
    assert probe.keyframes == list(range(0, 60, gop))  # exactly every gop, no others
    assert mp4_boxes(out).index("moov") < mp4_boxes(out).index("mdat")  # faststart
    assert decoded_indices(read_all_frames(out)) == list(range(60))
    # Random access on the output through the manifest's keyframe index.
    wanted = np.random.default_rng(gop).integers(0, 60, size=24)
    frames = read_frames(out, wanted, keyframes=probe.keyframes, keyframe_pts=probe.keyframe_pts)
    assert decoded_indices(frames) == wanted.tolist()


def test_transcode_reassigns_timestamps_of_vfr_sources():
    """Irregular source timestamps (gaps, a VFR mp4) neither drop nor duplicate frames."""
    frames = index_pattern_frames(30, 48, 64)
    pts = np.cumsum([0] + [1 if i % 5 else 7 for i in range(1, 30)])
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25, options={"bf": "2"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame, t in zip(frames, pts, strict=True):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = int(t), Fraction(1, 25)
            container.mux(stream.encode(vf))
        container.mux(stream.encode(None))
    source = buf.getvalue()
    assert probe_video(source).num_frames == 30
    out = transcode_video(source, short_side=48, gop=4, crf=18)
    probe = probe_video(out)
    assert probe.num_frames == 30 and probe.keyframes == list(range(0, 30, 4))
    assert decoded_indices(read_all_frames(out)) == list(range(30))
    assert np.diff(probe.keyframe_pts).tolist() == [probe.keyframe_pts[1]] * 7  # constant rate


@pytest.mark.parametrize(("data", "reason"), [(b"", "empty_file"), (GARBAGE, "not_a_video")])
def test_transcode_bad_input(data, reason):
    with pytest.raises(VideoError) as info:
        transcode_video(data, 32, 8, 23)
    assert info.value.reason == reason


def test_output_size_keeps_aspect_and_even_sides():
    assert output_size(240, 320, 128) == (128, 170)
    assert output_size(320, 240, 128) == (170, 128)  # portrait
    assert output_size(100, 100, 31) == (32, 32)
    with pytest.raises(ValueError):
        transcode_video(b"x", short_side=1)


# --------------------------------------------------------------------------- local corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SimpleNamespace:
    """4 MPEG-4 B-frame AVIs in class folders plus one corrupt file, and their manifest."""
    root = tmp_path_factory.mktemp("corpus")
    videos = root / "videos"
    generated = generate_dataset(
        videos, NUM_VIDEOS, NUM_FRAMES, HEIGHT, WIDTH, codec="mpeg4-bframes", seed=3
    )
    bad = videos / generated[0].label_name / "corrupt.avi"
    bad.write_bytes(GARBAGE)
    table = build_manifest(list_entries(str(videos), "folder"), use_ray=False)
    manifest = root / "manifest.parquet"
    write_manifest(table, str(manifest))
    return SimpleNamespace(root=root, videos=videos, manifest=manifest, table=table, bad=bad)


def file_ids(folder: Path) -> dict[str, tuple[int, int]]:
    """mp4 path -> (inode, mtime_ns): write_bytes replaces files, so both change on rewrite."""
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*.mp4")}


def test_run_prepare_local_is_resumable(ray_local, corpus, tmp_path):
    out = tmp_path / "prepared"
    first = run_prepare(str(corpus.videos), str(out), short_side=SHORT_SIDE, gop=GOP)
    assert (first["ok"], first["transcoded"], first["skipped_existing"]) == (4, 4, 0)
    assert first["failed"] == 1 and first["failures_by_reason"] == {"not_a_video": 1}
    assert first["bytes_in"] > first["bytes_out"] > 0 and first["total"] == 5
    assert first["manifest"] == str(out / "manifest.parquet")

    table = read_manifest(first["manifest"])
    assert table.num_rows == 5
    sources = {r["video_id"]: r for r in corpus.table.to_pylist()}
    for row in table.to_pylist():
        src = sources[row["video_id"]]
        assert row["source"] == src["uri"]
        assert row["uri"] == str(out / f"{row['video_id']}.mp4")
        assert (row["label"], row["label_name"], row["split"]) == (
            src["label"],
            src["label_name"],
            src["split"],
        )
        if src["error"]:
            assert row["error"] == "not_a_video" and not Path(row["uri"]).exists()
            continue
        assert row["error"] is None and Path(row["uri"]).is_file()
        assert row["num_frames"] == src["num_frames"] == NUM_FRAMES
        assert (row["height"], row["width"]) == (SHORT_SIDE, 42)
        assert row["keyframes"] == list(range(0, NUM_FRAMES, GOP))
        assert row["size_bytes"] == Path(row["uri"]).stat().st_size
        assert probe_video(row["uri"]).keyframe_pts == row["keyframe_pts"]
    before = file_ids(out)
    assert len(before) == 4

    # Second run (from the manifest this time): everything is skipped, nothing rewritten.
    again = run_prepare(str(corpus.manifest), str(out), short_side=SHORT_SIDE, gop=GOP)
    assert (again["ok"], again["transcoded"], again["skipped_existing"]) == (4, 0, 4)
    assert again["failures_by_reason"] == {"not_a_video": 1} and again["bytes_out"] == 0
    assert file_ids(out) == before
    assert read_manifest(again["manifest"]).to_pylist() == table.to_pylist()

    # Without the previous manifest the outputs are probed in their tasks: still skipped.
    (out / "manifest.parquet").unlink()
    probed = run_prepare(str(corpus.manifest), str(out), short_side=SHORT_SIDE, gop=GOP)
    assert (probed["transcoded"], probed["skipped_existing"]) == (0, 4)
    assert file_ids(out) == before

    # One output deleted, one damaged: exactly those two are transcoded again.
    gone, damaged, *kept = sorted(before)
    Path(gone).unlink()
    Path(damaged).write_bytes(Path(damaged).read_bytes()[:500])
    third = run_prepare(str(corpus.manifest), str(out), short_side=SHORT_SIDE, gop=GOP)
    assert (third["ok"], third["transcoded"], third["skipped_existing"]) == (4, 2, 2)
    after = file_ids(out)
    assert set(after) == set(before) and all(after[k] == before[k] for k in kept)
    assert probe_video(gone).num_frames == probe_video(damaged).num_frames == NUM_FRAMES

    # A different geometry is not "already prepared".
    other = run_prepare(str(corpus.manifest), str(out), short_side=SHORT_SIDE, gop=4)
    assert (other["transcoded"], other["skipped_existing"]) == (4, 0)


def test_run_prepare_refuses_out_inside_the_video_folder(corpus):
    with pytest.raises(ValueError, match="inside"):
        run_prepare(str(corpus.videos), str(corpus.videos / "prepared"))


def tree_state(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` (links not followed) -> (content, mtime_ns)."""
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


def test_cli_prepare_ids_that_leave_out_write_nothing_outside(ray_local, corpus, tmp_path, capsys):
    """`rayssl prepare bad.parquet --out a/b/prep` where video ids climb out of --out (the
    reproduced '../../escaped/x'), are absolute, hold a backslash or NUL, come from a
    Kinetics youtube_id '../../x', or lead through a symlink in --out to another folder:
    each is a counted `unsafe_video_id` failure, the good video is prepared, and no file
    appears or changes anywhere but in --out."""
    good = corpus.table.filter(corpus.table["error"].is_null()).slice(0, 1).to_pylist()[0]
    ids = {
        "traversal": "../../escaped/x",
        "absolute": str(tmp_path / "abs" / "x"),
        "backslash": "..\\..\\bs",
        "nul": "a\x00b",
        "kinetics": "../../x_000000_000010",
        "symlink": "linked/x",
        "good": "cls/good",
    }
    table = rows_to_table([{**good, "video_id": v} for v in ids.values()])
    write_manifest(table, str(tmp_path / "bad.parquet"))
    out = tmp_path / "a" / "b" / "prep"
    out.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (out / "linked").symlink_to(tmp_path / "elsewhere")
    before = tree_state(tmp_path)

    argv = ["prepare", str(tmp_path / "bad.parquet"), "--out", str(out), "--short-side", "32"]
    assert cli_main([*argv, "--gop", str(GOP)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed.strip().splitlines()[-1])
    assert (summary["ok"], summary["failed"]) == (1, len(ids) - 1)
    assert summary["failures_by_reason"] == {"unsafe_video_id": len(ids) - 1}
    assert f"{len(ids) - 1} failed (unsafe_video_id: {len(ids) - 1})" in printed
    after = tree_state(tmp_path)
    written = {p for p in after if before.get(p) != after[p]}
    assert written == {str(out / "cls" / "good.mp4"), str(out / "manifest.parquet")}
    assert not list((tmp_path / "elsewhere").iterdir())
    assert not (tmp_path / "a" / "escaped").exists()
    rows = {r["video_id"]: r for r in read_manifest(str(out / "manifest.parquet")).to_pylist()}
    assert {v: rows[v]["error"] for v in ids.values()} == {
        **{v: "unsafe_video_id" for v in ids.values()},
        "cls/good": None,
    }
    assert "symlink" in rows["linked/x"]["error_detail"]


def test_cli_prepare_refuses_to_overwrite_its_input(ray_local, tmp_path, capsys):
    """The reproduced `rayssl prepare src/m.parquet --out src` (H.264 sources, manifest in
    the folder) replaced every source with its transcode: now every run whose output is an
    input -- a source video, or the input manifest, also through a symlink -- is refused
    with one line, rc 2, and nothing is written or touched."""
    from tests.conftest import make_dataset

    manifest = make_dataset(tmp_path / "src", num_videos=4, num_frames=24, val_fraction=0.0)
    videos = tmp_path / "src" / "videos"
    (videos / "m.parquet").write_bytes(manifest.read_bytes())
    (tmp_path / "videos-link").symlink_to(videos)
    (tmp_path / "src-link").symlink_to(tmp_path / "src")
    before = tree_state(tmp_path)
    cases = [
        (videos / "m.parquet", videos, "is the source video"),  # as reproduced
        (manifest, tmp_path / "videos-link", "is the source video"),  # out: a symlink
        (manifest, tmp_path / "src", "is the input manifest"),  # out/manifest.parquet = input
        (tmp_path / "src-link" / "manifest.parquet", tmp_path / "src", "the input manifest"),
    ]
    for src, out, message in cases:
        assert cli_main(["prepare", str(src), "--out", str(out), "--short-side", "32"]) == 2
        captured = capsys.readouterr()
        [line] = captured.err.strip().splitlines()
        assert line.startswith("error: refusing to overwrite the input") and message in line
        assert "prepare:" not in captured.out  # refused before any work was announced
        assert tree_state(tmp_path) == before, (src, out)


def test_prepare_item_failures_are_rows(corpus, tmp_path):
    row = corpus.table.filter(corpus.table["error"].is_null()).to_pylist()[0]
    item = {
        "source": str(tmp_path / "nope.avi"),
        "dest": str(tmp_path / "out.mp4"),
        "video_id": row["video_id"],
        "label": row["label"],
        "num_frames": row["num_frames"],
        "height": row["height"],
        "width": row["width"],
    }
    params = PrepareParams(short_side=SHORT_SIDE, gop=GOP)
    missing = prepare_item(item, params)
    assert (missing["status"], missing["error"]) == ("failed", "missing")
    # A manifest that disagrees with the file (stale row) is caught, and nothing is written.
    stale = prepare_item({**item, "source": row["uri"], "num_frames": 39}, params)
    assert (stale["status"], stale["error"]) == ("failed", "transcode_error")
    assert "40 frames" in stale["error_detail"] and not (tmp_path / "out.mp4").exists()


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="module")
def s3(corpus, moto_endpoint, ray_local):
    """The session's moto S3 with the corpus under s3://bucket/videos, and the session's
    Ray (its head's workers carry the same S3 environment; nothing is restarted)."""
    with s3_env(moto_endpoint) as env:
        make_bucket(moto_endpoint, "bucket")
        uris = upload_dir(moto_endpoint, corpus.videos, "bucket", "videos")
        yield SimpleNamespace(endpoint=moto_endpoint, env=env, uris=uris)


def local_copy(corpus, uri: str) -> Path:
    return corpus.videos / uri.removeprefix("s3://bucket/videos/")


def test_ray_workers_see_the_s3_environment(s3, corpus):
    import ray

    @ray.remote
    def worker_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID")}

    assert ray.get(worker_env.remote()) == {
        "AWS_ENDPOINT_URL_S3": s3.endpoint,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
    }
    sizes = (
        ray.data.from_items([{"uri": u} for u in s3.uris])
        .map(lambda r: {"uri": r["uri"], "n": len(storage.read_bytes(r["uri"]))})
        .take_all()
    )
    assert {r["uri"]: r["n"] for r in sizes} == {
        u: local_copy(corpus, u).stat().st_size for u in s3.uris
    }


def test_cli_manifest_and_preview_on_s3(s3, corpus, tmp_path):
    assert cli_main(["manifest", "s3://bucket/videos", "--out", "s3://bucket/m.parquet"]) == 0
    table = read_manifest("s3://bucket/m.parquet")
    assert sorted(table["uri"].to_pylist()) == s3.uris
    for row in table.to_pylist():
        local = local_copy(corpus, row["uri"])
        if local == corpus.bad:
            assert row["error"] == "not_a_video"
            continue
        assert row["error"] is None and row["num_frames"] == NUM_FRAMES
        assert row["keyframes"] == probe_video(local).keyframes

    out = tmp_path / "preview"
    argv = ["preview", "s3://bucket/m.parquet", "--pretext", "pace", "--no-augment"]
    assert cli_main([*argv, "--num-clips", "4", "--out", str(out)]) == 0
    saved = np.load(out / "clips.npz")
    assert saved["clips"].shape == (4, 16, HEIGHT, WIDTH, 3)
    for clip, indices, uri in zip(saved["clips"], saved["indices"], saved["videos"], strict=True):
        reference = read_all_frames(local_copy(corpus, str(uri)))
        np.testing.assert_array_equal(clip, reference[indices])


def test_run_prepare_s3_to_s3(s3, corpus):
    if not storage.exists("s3://bucket/m.parquet"):
        write_manifest(build_manifest(list_entries("s3://bucket/videos")), "s3://bucket/m.parquet")
    summary = run_prepare(
        "s3://bucket/m.parquet", "s3://bucket/prepared", short_side=SHORT_SIDE, gop=GOP
    )
    assert (summary["ok"], summary["transcoded"], summary["failed"]) == (4, 4, 1)
    assert summary["failures_by_reason"] == {"not_a_video": 1}
    assert summary["manifest"] == "s3://bucket/prepared/manifest.parquet"
    table = read_manifest(summary["manifest"])
    for row in table.filter(table["error"].is_null()).to_pylist():
        assert row["uri"].startswith("s3://bucket/prepared/") and row["source"] in s3.uris
        data = storage.read_bytes(row["uri"])
        probe = probe_video(data)
        assert probe.num_frames == row["num_frames"] == NUM_FRAMES
        assert probe.keyframes == list(range(0, NUM_FRAMES, GOP))
        # Same content as the source, in the same order (exactness: see the index tests).
        source = read_all_frames(local_copy(corpus, row["source"]), size=(probe.height, 42))
        diff = np.abs(read_all_frames(data).astype(np.int16) - source).mean(axis=(1, 2, 3))
        flipped = np.abs(read_all_frames(data).astype(np.int16) - source[::-1]).mean()
        assert diff.max() < 20 and diff.mean() < flipped
    again = run_prepare(
        "s3://bucket/m.parquet", "s3://bucket/prepared", short_side=SHORT_SIDE, gop=GOP
    )
    assert (again["transcoded"], again["skipped_existing"]) == (0, 4)


def test_run_prepare_s3_folder_is_frame_exact(s3, index_avi):
    boto3_client(s3.endpoint).put_object(Bucket="bucket", Key="ip/pattern/ip.avi", Body=index_avi)
    summary = run_prepare("s3://bucket/ip", "s3://bucket/ip-out", short_side=64, gop=16)
    assert (summary["ok"], summary["failed"]) == (1, 0)
    (row,) = read_manifest("s3://bucket/ip-out/manifest.parquet").to_pylist()
    assert row["uri"] == "s3://bucket/ip-out/pattern/ip.mp4"
    assert row["source"] == "s3://bucket/ip/pattern/ip.avi"
    data = storage.read_bytes(row["uri"])
    assert decoded_indices(read_all_frames(data)) == list(range(60))
    assert row["keyframes"] == list(range(0, 60, 16)) and row["height"] == 64


def test_missing_and_corrupt_objects(s3, corpus):
    upload_dir(s3.endpoint, corpus.videos, "bucket", "set2")
    boto3_client(s3.endpoint).put_object(Bucket="bucket", Key="set2/junk/garbage.mp4", Body=GARBAGE)
    entries = list_entries("s3://bucket/set2", "folder")
    before = {r["uri"]: r for r in build_manifest(entries, use_ray=False).to_pylist()}
    gone = sorted(u for u, r in before.items() if r["error"] is None)[0]
    boto3_client(s3.endpoint).delete_object(Bucket="bucket", Key=gone.removeprefix("s3://bucket/"))

    after = {r["uri"]: r for r in build_manifest(entries).to_pylist()}  # through Ray
    assert after[gone]["error"] == "missing"
    assert after["s3://bucket/set2/junk/garbage.mp4"]["error"] == "not_a_video"
    assert sum(r["error"] is None for r in after.values()) == NUM_VIDEOS - 1

    # The training sampler skips the vanished video with reason "missing".
    spec = SamplerSpec(
        pretext=build_pretext(Config().pretext, clip_len=8),
        settings=AugmentSettings(enabled=False, resize=[]),
        seed=0,
    )
    sample = sample_row({**before[gone], "epoch": 0, "draw": 0}, spec)
    assert not sample["valid"] and sample["skip_reason"] == "missing"


def test_transient_errors_are_retried_then_reported_redacted(s3):
    uri = s3.uris[1]
    key = uri.removeprefix("s3://bucket/")
    entry = {"uri": uri, "video_id": "v"}
    with flaky_s3_proxy(s3.endpoint, fail_first=2, fail_keys=key) as (proxy, stats):
        row = probe_entry(entry, storage.StorageOptions(endpoint_url=proxy))
    assert row["error"] is None and row["num_frames"] == NUM_FRAMES
    assert stats.failures_served == 2

    # 500 (InternalError): retried like SlowDown, with botocore's shorter non-throttling backoff
    with flaky_s3_proxy(s3.endpoint, fail_first=100, status=500, fail_keys=key) as (proxy, stats):
        options = storage.StorageOptions(endpoint_url=proxy, max_attempts=3)
        row = probe_entry(entry, options)
    assert row["error"] == "storage_error" and stats.failures_served == 3
    assert "InternalError" in row["error_detail"] and key in row["error_detail"]
    assert FAKE_SECRET_ACCESS_KEY not in row["error_detail"]
    assert FAKE_ACCESS_KEY_ID not in row["error_detail"]


def test_prepare_job_entry_point_runs(ray_head, tmp_path):
    """`python jobs/prepare.py` as users run it on a cluster (RAY_ADDRESS: the session's
    head), on a tiny corpus."""
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, make_dataset

    manifest = make_dataset(tmp_path / "src", num_videos=4, num_frames=24, val_fraction=0.0)
    env = dict(os.environ, RAY_ADDRESS=ray_head.address, RAY_AUTH_MODE="disabled")
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "prepare.py"),
            str(manifest),
            "--out",
            str(tmp_path / "prepared"),
            "--short-side",
            "32",
            "--gop",
            "8",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert result["ok"] == 4 and result["failed"] == 0
    assert (tmp_path / "prepared" / "manifest.parquet").exists()
