"""Tests for rayssl.io.manifest: importers (folder, UCF101, HMDB51, Kinetics), probing,
Parquet round trip and the `rayssl manifest` command."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayssl.cli import main as cli_main
from rayssl.io.manifest import (
    SCHEMA,
    Entry,
    ManifestError,
    build_manifest,
    list_entries,
    read_manifest,
    summarize,
    write_manifest,
)
from rayssl.io.video import ERROR_REASONS, read_all_frames
from rayssl.tools.synthetic import (
    generate_dataset,
    index_pattern_frames,
    write_corrupt_files,
    write_video,
)

FRAMES = index_pattern_frames(24, 48, 64)


def tiny_video(path: Path, codec: str = "mpeg4-bframes", n: int = 24) -> Path:
    write_video(path, FRAMES[:n], fps=25.0, codec=codec)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    videos = generate_dataset(
        root, num_videos=6, num_frames=40, height=48, width=64, codec="mpeg4-bframes"
    )
    broken = write_corrupt_files(root / "broken")
    (root / "notes.txt").write_text("not a video\n")
    (root / videos[0].label_name / "readme.txt").write_text("not a video either\n")
    return root, videos, broken


@pytest.fixture(scope="module")
def folder_table(folder):
    root, _, _ = folder
    return build_manifest(list_entries(str(root), "folder"), use_ray=False)


# --------------------------------------------------------------------------- folder


def test_folder_manifest_rows(folder, folder_table):
    root, videos, broken = folder
    table = folder_table
    assert table.schema.equals(SCHEMA)
    rows = {Path(r["uri"]).resolve(): r for r in table.to_pylist()}
    assert len(rows) == len(videos) + len(broken) == table.num_rows
    assert all(not str(u).endswith(".txt") for u in rows)
    for v in videos:
        r = rows[v.path.resolve()]
        assert r["error"] is None, r
        assert r["num_frames"] == len(read_all_frames(v.path)) == 40
        assert (r["height"], r["width"]) == (48, 64)
        assert r["fps"] == pytest.approx(25.0)
        assert r["codec"] == "mpeg4"
        assert r["size_bytes"] == v.path.stat().st_size
        assert r["keyframes"] and r["keyframes"][0] == 0
        assert len(r["keyframes"]) == len(r["keyframe_pts"])
        assert r["label_name"] == v.label_name
        assert r["split"] == "train"
    for name, path in broken.items():
        r = rows[path.resolve()]
        assert r["error"], (name, r)
        assert r["error"] in ERROR_REASONS
        assert r["num_frames"] == 0
    assert rows[broken["empty.mp4"].resolve()]["error"] == "empty_file"
    s = summarize(table)
    assert s["ok"] == len(videos) and s["bad"] == len(broken)
    assert sum(s["by_reason"].values()) == len(broken)


def test_folder_labels_follow_sorted_class_folders(folder, folder_table):
    root, videos, _ = folder
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert "broken" in classes
    for r in folder_table.to_pylist():
        cls = Path(r["uri"]).parent.name
        assert r["label_name"] == cls
        assert r["label"] == classes.index(cls)
    # Video ids are relative paths without extension, unique.
    ids = folder_table["video_id"].to_pylist()
    assert len(set(ids)) == len(ids)
    v = videos[0]
    assert f"{v.label_name}/{v.path.stem}" in ids


def test_folder_val_fraction(folder):
    root, _, _ = folder
    a = list_entries(str(root), "folder", val_fraction=0.5)
    b = list_entries(str(root), "folder", val_fraction=0.5)
    assert a == b
    splits = [e.split for e in a]
    assert set(splits) == {"train", "val"}
    assert all(e.split == "train" for e in list_entries(str(root), "folder"))
    assert all(e.split == "val" for e in list_entries(str(root), "folder", val_fraction=1.0))
    # A different seed gives a different (still deterministic) choice of val videos.
    choices = {
        tuple(e.split for e in list_entries(str(root), "folder", val_fraction=0.5, seed=s))
        for s in (0, 1, 2, 3)
    }
    assert len(choices) > 1


def test_unknown_format(folder):
    root, _, _ = folder
    with pytest.raises(ManifestError):
        list_entries(str(root), "something")


def test_empty_entries():
    table = build_manifest([], use_ray=False)
    assert table.num_rows == 0 and table.schema.equals(SCHEMA)


# --------------------------------------------------------------------------- UCF101


def test_ucf101_layout(tmp_path):
    root = tmp_path / "ucf"
    for cls in ("ClassA", "ClassB"):
        for g in ("g01", "g02"):
            tiny_video(root / "UCF-101" / cls / f"v_{cls}_{g}_c01.avi")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    # As released: CRLF line endings, labels only in the train lists.
    (lists / "classInd.txt").write_bytes(b"1 ClassA\r\n2 ClassB\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ClassA/v_ClassA_g01_c01.avi 1\r\nClassB/v_ClassB_g01_c01.avi 2\r\n"
    )
    (lists / "testlist01.txt").write_bytes(
        b"ClassA/v_ClassA_g02_c01.avi\r\nClassB/v_ClassB_g02_c01.avi\r\n"
    )
    entries = list_entries(str(root), "ucf101")
    got = {e.video_id: (e.split, e.label, e.label_name) for e in entries}
    assert got == {
        "v_ClassA_g01_c01": ("train", 0, "ClassA"),
        "v_ClassB_g01_c01": ("train", 1, "ClassB"),
        "v_ClassA_g02_c01": ("test", 0, "ClassA"),
        "v_ClassB_g02_c01": ("test", 1, "ClassB"),
    }
    for e in entries:
        assert Path(e.uri).exists()
        assert Path(e.uri).parent.name == e.label_name
    table = build_manifest(entries, use_ray=False)
    assert table.num_rows == 4
    assert table["error"].null_count == 4
    assert set(table["num_frames"].to_pylist()) == {24}
    # The explicit --splits folder gives the same entries.
    assert list_entries(str(root), "ucf101", splits_dir=str(lists)) == entries


def test_ucf101_missing_split_files(tmp_path):
    tiny_video(tmp_path / "UCF-101" / "ClassA" / "v_ClassA_g01_c01.avi")
    with pytest.raises(ManifestError):
        list_entries(str(tmp_path), "ucf101")


# --------------------------------------------------------------------------- HMDB51


def test_hmdb51_layout(tmp_path):
    root = tmp_path / "hmdb"
    names = {
        "brush_hair": [
            "April_09_brush_hair_u_nm_np1_ba_goo_0",
            "Blonde_brush_hair_f_nm_np2_ri_med_1",
            "Brushing_hair_h_nm_np1_fr_goo_2",
        ],
        "cartwheel": [
            "Acrobacias_cartwheel_f_cm_np1_ba_med_0",
            "Bodenturnen_cartwheel_f_cm_np1_le_med_1",
            "Cartwheel_cartwheel_f_cm_np1_ri_med_2",
        ],
    }
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for cls, vids in names.items():
        for v in vids:
            tiny_video(root / "videos" / cls / f"{v}.avi")
        # As released: "name.avi 1 " with a trailing space; 1 train, 2 test, 0 unused.
        text = f"{vids[0]}.avi 1 \n{vids[1]}.avi 2 \n{vids[2]}.avi 0 \n"
        (splits / f"{cls}_test_split1.txt").write_text(text)
        (splits / f"{cls}_test_split2.txt").write_text(
            f"{vids[0]}.avi 2 \n{vids[1]}.avi 1 \n{vids[2]}.avi 1 \n"
        )
    entries = list_entries(str(root), "hmdb51")
    got = {e.video_id: (e.split, e.label, e.label_name) for e in entries}
    assert got == {
        names["brush_hair"][0]: ("train", 0, "brush_hair"),
        names["brush_hair"][1]: ("test", 0, "brush_hair"),
        names["cartwheel"][0]: ("train", 1, "cartwheel"),
        names["cartwheel"][1]: ("test", 1, "cartwheel"),
    }
    for e in entries:
        assert Path(e.uri).exists()
    table = build_manifest(entries, use_ray=False)
    assert table["error"].null_count == 4
    split2 = {e.video_id: e.split for e in list_entries(str(root), "hmdb51", split_id=2)}
    assert len(split2) == 6
    assert split2[names["cartwheel"][2]] == "train"
    assert split2[names["cartwheel"][0]] == "test"


def test_hmdb51_missing_split_files(tmp_path):
    tiny_video(tmp_path / "brush_hair" / "a.avi")
    with pytest.raises(ManifestError):
        list_entries(str(tmp_path), "hmdb51")


# --------------------------------------------------------------------------- Kinetics


def test_kinetics_layout(tmp_path):
    root = tmp_path / "k400"
    rows = [
        ("abseiling", "-abc_DEF123", 10, 20, "train"),
        ("air drumming", "xyz98765432", 10, 20, "train"),
        ("abseiling", "q1w2e3r4t5y", 10, 20, "validate"),
        ("air drumming", "absent00000", 10, 20, "train"),  # video not downloaded
    ]
    for label, yid, t0, t1, split in rows[:3]:
        sub = "train" if split == "train" else "val"
        tiny_video(root / sub / label / f"{yid}_{t0:06d}_{t1:06d}.mp4", codec="h264")
    ann = root / "annotations"
    ann.mkdir()
    lines = ["label,youtube_id,time_start,time_end,split"]
    lines += [f"{label},{yid},{t0},{t1},{split}" for label, yid, t0, t1, split in rows]
    (ann / "train.csv").write_text("\n".join(lines) + "\n")

    entries = list_entries(str(root), "kinetics")
    by_id = {e.video_id: e for e in entries}
    assert set(by_id) == {f"{yid}_000010_000020" for _, yid, *_ in rows}
    assert by_id["-abc_DEF123_000010_000020"].label == 0
    assert by_id["-abc_DEF123_000010_000020"].label_name == "abseiling"
    assert by_id["xyz98765432_000010_000020"].label == 1
    assert by_id["xyz98765432_000010_000020"].label_name == "air drumming"
    assert by_id["q1w2e3r4t5y_000010_000020"].split == "val"
    assert by_id["-abc_DEF123_000010_000020"].split == "train"

    table = build_manifest(entries, use_ray=False)
    result = {r["video_id"]: r for r in table.to_pylist()}
    assert result["absent00000_000010_000020"]["error"] == "missing"
    assert result["absent00000_000010_000020"]["label"] == 1
    for vid in ("-abc_DEF123_000010_000020", "xyz98765432_000010_000020"):
        assert result[vid]["error"] is None
        assert result[vid]["num_frames"] == 24
        assert result[vid]["codec"] == "h264"
    # Passing the CSV explicitly gives the same entries.
    assert list_entries(str(root), "kinetics", annotations=[str(ann / "train.csv")]) == entries


def test_kinetics_bad_csv(tmp_path):
    (tmp_path / "a.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(ManifestError):
        list_entries(str(tmp_path), "kinetics")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError):
        list_entries(str(empty), "kinetics")


# --------------------------------------------------------------------------- unsafe ids


def test_cli_manifest_kinetics_id_that_leaves_the_folder(tmp_path, capsys):
    """A Kinetics CSV row with youtube_id "../../x": the row is an `unsafe_video_id` error,
    and the file it points at (planted outside the source folder) is never read."""
    src = tmp_path / "data" / "k400"
    tiny_video(src / "train" / "abseiling" / "good0000000_000000_000010.mp4", codec="h264")
    planted = tiny_video(tmp_path / "x_000000_000010.mp4", codec="h264")  # src/../../x...
    csv = src / "train.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,good0000000,0,10,train\n"
        "abseiling,../../x,0,10,train\n"
    )
    out = tmp_path / "m.parquet"
    argv = ["manifest", str(src), "--format", "kinetics", "--out", str(out), "--no-ray"]
    assert cli_main([*argv, "--annotations", str(csv)]) == 0
    assert "ok 1, bad 1 (unsafe_video_id: 1)" in capsys.readouterr().out
    rows = {r["video_id"]: r for r in read_manifest(str(out)).to_pylist()}
    bad = rows["../../x_000000_000010"]
    assert bad["error"] == "unsafe_video_id" and "'..' component" in bad["error_detail"]
    assert (bad["num_frames"], bad["size_bytes"]) == (0, -1)  # not probed
    assert rows["good0000000_000000_000010"]["error"] is None and planted.exists()


def test_split_lists_naming_files_outside_the_folder(tmp_path):
    """UCF101 / HMDB51 split files are data too: a line that climbs out of the source
    folder gives an `unsafe_video_id` entry, never a read outside it."""
    ucf = tmp_path / "ucf"
    tiny_video(ucf / "UCF-101" / "ClassA" / "v_ClassA_g01_c01.avi")
    tiny_video(tmp_path / "v_ClassA_g09_c01.avi")  # where the hostile line points
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ClassA\n")
    (lists / "trainlist01.txt").write_text(
        "ClassA/v_ClassA_g01_c01.avi 1\nClassA/../../v_ClassA_g09_c01.avi 1\n"
    )
    (lists / "testlist01.txt").write_text("")
    entries = {e.video_id: e for e in list_entries(str(ucf), "ucf101")}
    assert entries["v_ClassA_g01_c01"].error == ""
    assert entries["v_ClassA_g09_c01"].error == "unsafe_video_id"
    assert "outside" in entries["v_ClassA_g09_c01"].error_detail

    hmdb = tmp_path / "hmdb"
    tiny_video(hmdb / "jump" / "a.avi")
    (hmdb / "jump_test_split1.txt").write_text("a.avi 1 \n../../v_ClassA_g09_c01.avi 1 \n")
    table = build_manifest(list_entries(str(hmdb), "hmdb51"), use_ray=False)
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert rows["a"]["error"] is None
    assert rows["v_ClassA_g09_c01"]["error"] == "unsafe_video_id"
    assert rows["v_ClassA_g09_c01"]["num_frames"] == 0  # not read


HOSTILE_IDS = {
    "traversal": "../../escaped/x",
    "absolute": "/tmp/abs/x",
    "backslash": "..\\..\\x",
    "nul": "a\x00b",
}


def test_build_manifest_does_not_read_entries_with_unsafe_ids(tmp_path):
    video = tiny_video(tmp_path / "v.avi")
    entries = [Entry(str(video), "ok")] + [Entry(str(video), v) for v in HOSTILE_IDS.values()]
    table = build_manifest(entries, use_ray=False)
    rows = {r["video_id"]: r for r in table.to_pylist()}
    assert rows.pop("ok")["num_frames"] == 24
    assert {r["error"] for r in rows.values()} == {"unsafe_video_id"}
    assert all(r["num_frames"] == 0 and r["size_bytes"] == -1 for r in rows.values())
    assert summarize(table)["by_reason"] == {"unsafe_video_id": len(HOSTILE_IDS)}


def test_read_manifest_marks_unsafe_ids(folder_table, tmp_path):
    """Any manifest read (written by anyone) gets `unsafe_video_id` on rows whose id could
    name a path outside an output folder; an earlier error is kept."""
    n = len(HOSTILE_IDS) + 1
    table = folder_table.filter(folder_table["error"].is_null()).slice(0, n + 1)
    ids = table["video_id"].to_pylist()
    ids[:n] = [*HOSTILE_IDS.values(), None]
    errors = table["error"].to_pylist()
    errors[n - 1] = "not_a_video"  # the null id row: already broken, reason kept
    table = table.set_column(table.column_names.index("video_id"), "video_id", pa.array(ids))
    table = table.set_column(table.column_names.index("error"), "error", pa.array(errors))
    path = tmp_path / "hostile.parquet"
    pq.write_table(table, path)
    back = read_manifest(str(path)).to_pylist()
    assert [r["error"] for r in back] == ["unsafe_video_id"] * (n - 1) + ["not_a_video", None]
    details = [r["error_detail"] for r in back[: n - 1]]
    for detail, word in zip(details, ["'..'", "absolute", "backslash", "control"], strict=True):
        assert word in detail
    assert summarize(read_manifest(str(path)))["by_reason"] == {
        "unsafe_video_id": n - 1,
        "not_a_video": 1,
    }


# --------------------------------------------------------------------------- Parquet and CLI


def test_write_read_round_trip(folder_table, tmp_path):
    out = tmp_path / "sub" / "m.parquet"
    write_manifest(folder_table, str(out))
    back = read_manifest(str(out))
    assert back.equals(folder_table)
    assert back.schema.equals(SCHEMA)


def test_read_manifest_rejects_other_parquet(tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"]}), path)
    with pytest.raises(ManifestError):
        read_manifest(str(path))


def test_cli_manifest(folder, tmp_path, capsys):
    root, videos, broken = folder
    out = tmp_path / "m.parquet"
    assert cli_main(["manifest", str(root), "--out", str(out), "--no-ray"]) == 0
    table = read_manifest(str(out))
    assert table.num_rows == len(videos) + len(broken)
    assert table["error"].null_count == len(videos)
    text = capsys.readouterr().out
    assert f"ok {len(videos)}" in text and f"bad {len(broken)}" in text


def test_cli_manifest_val_fraction(folder, tmp_path):
    root, _, _ = folder
    out = tmp_path / "m.parquet"
    argv = ["manifest", str(root), "--out", str(out), "--no-ray", "--val-fraction", "0.5"]
    assert cli_main(argv) == 0
    assert set(read_manifest(str(out))["split"].to_pylist()) == {"train", "val"}


def test_cli_manifest_only_broken(tmp_path, capsys):
    src = tmp_path / "src"
    write_corrupt_files(src / "cls")
    out = tmp_path / "m.parquet"
    assert cli_main(["manifest", str(src), "--out", str(out), "--no-ray"]) == 1
    assert "no usable video" in capsys.readouterr().err


# --------------------------------------------------------------------------- path forms


def _labels_by_id(entries) -> dict[str, tuple[int, str]]:
    return {e.video_id: (e.label, e.label_name) for e in entries}


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """Two class folders holding a video of the same file name (ids must not collide)."""
    root = tmp_path_factory.mktemp("paths") / "videos"
    for cls in ("jump", "run"):
        tiny_video(root / cls / "clip_0001.avi", n=8)
    (root / "jump" / "clip_0002.avi").write_bytes((root / "jump" / "clip_0001.avi").read_bytes())
    return root


EXPECTED = {
    "jump/clip_0001": (0, "jump"),
    "jump/clip_0002": (0, "jump"),
    "run/clip_0001": (1, "run"),
}


@pytest.mark.parametrize("form", ["relative", "relative_dot_slash", "absolute", "file_uri"])
def test_folder_labels_for_every_local_path_form(two_classes, form, monkeypatch):
    monkeypatch.chdir(two_classes.parent)
    src = {
        "relative": "videos",
        "relative_dot_slash": "./videos/",
        "absolute": str(two_classes),
        "file_uri": two_classes.as_uri(),
    }[form]
    assert _labels_by_id(list_entries(src, "folder")) == EXPECTED


def test_folder_labels_on_s3(two_classes, moto_endpoint):
    from tests.s3server import make_bucket, s3_env, upload_dir

    endpoint = moto_endpoint
    with s3_env(endpoint):
        make_bucket(endpoint, "labels")
        upload_dir(endpoint, two_classes, "labels", "data/videos")
        for src in ("s3://labels/data/videos", "s3://labels/data/videos/"):
            assert _labels_by_id(list_entries(src, "folder")) == EXPECTED


def test_cli_manifest_relative_folder_is_labelled(two_classes, monkeypatch):
    """The bug a new user hit: a relative folder gave every video label -1."""
    monkeypatch.chdir(two_classes.parent)
    assert cli_main(["manifest", "videos", "--out", "m.parquet", "--no-ray"]) == 0
    table = read_manifest("m.parquet")
    got = {r["video_id"]: (r["label"], r["label_name"]) for r in table.to_pylist()}
    assert got == EXPECTED


def test_require_labels(folder_table):
    from rayssl.io.manifest import require_labels

    assert require_labels(folder_table, "retrieval").num_rows > 0
    unlabelled = folder_table.set_column(
        folder_table.schema.get_field_index("label"),
        "label",
        pa.array([-1] * folder_table.num_rows, pa.int64()),
    )
    with pytest.raises(ManifestError, match="no class labels"):
        require_labels(unlabelled, "retrieval")
    with pytest.raises(ManifestError, match="split 'test'"):
        require_labels(folder_table, "retrieval", split="test")
