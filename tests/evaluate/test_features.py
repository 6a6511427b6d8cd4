"""Evaluation clips and features: exact frames, skips counted, per-video means, the
`rayssl features` command writing Parquet locally and to S3 (moto), on real Ray Data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayssl.cli import main as cli_main
from rayssl.clips.sampling import clip_indices
from rayssl.config import DataConfig, InferenceSettings, parse_clip_spec
from rayssl.evaluate.features import decode_concurrency, read_features
from rayssl.io.manifest import build_manifest, list_entries, write_manifest
from rayssl.models import build_backbone
from rayssl.tools.synthetic import index_pattern_frames, read_index_pattern, write_video
from rayssl.train.inference import (
    DecodeSpec,
    FeatureModel,
    VideoOutputs,
    aggregate,
    decode_eval_row,
    eval_rows,
    usable,
)


def test_parse_clip_spec():
    assert str(parse_clip_spec("uniform:10")) == "uniform:10"
    s = parse_clip_spec("sliding:16:8")
    assert (s.kind, s.clip_len, s.overlap) == ("sliding", 16, 8)
    for bad in ("uniform:0", "sliding:16:16", "sliding:16", "every:3", "uniform:x"):
        with pytest.raises(ValueError, match="bad clip spec"):
            parse_clip_spec(bad)


def test_clip_positions():
    uni = clip_indices(parse_clip_spec("uniform:3"), 40, 16)
    assert uni[:, 0].tolist() == [0, 12, 24] and uni[-1, -1] == 39
    sl = clip_indices(parse_clip_spec("sliding:16:8"), 40, 16)
    assert sl[:, 0].tolist() == [0, 8, 16, 24]
    assert (np.diff(sl, axis=1) == 1).all()
    short = clip_indices(parse_clip_spec("sliding:16:8"), 10, 16)
    assert short.shape == (1, 16) and short[0].tolist() == [*range(10), *[9] * 6]


@pytest.fixture(scope="module")
def pattern_video(tmp_path_factory) -> dict:
    """A B-frame MPEG-4 AVI whose frames show their own index."""
    root = tmp_path_factory.mktemp("pattern")
    path = root / "cls" / "pattern.avi"
    write_video(path, index_pattern_frames(70, 64, 96), fps=25.0, codec="mpeg4-bframes")
    [entry] = list_entries(str(root), "folder")
    return build_manifest([entry], use_ray=False).to_pylist()[0]


@pytest.mark.parametrize("clips", ["uniform:10", "sliding:16:8", "uniform:1"])
def test_decode_eval_row_returns_exactly_the_named_frames(pattern_video, clips):
    data = DataConfig()
    data.augment.resize, data.augment.crop = [], [64, 96]  # centre crop = the whole frame
    spec = DecodeSpec.from_settings(clips, data, max_clips=4)
    want = clip_indices(spec.clips, pattern_video["num_frames"], spec.clip_len)
    rows = eval_rows(pa.Table.from_pylist([pattern_video]), spec.clips, spec.clip_len, 4)
    assert rows.num_rows == -(-len(want) // 4)  # chunks of at most 4 clips
    got = []
    for row in rows.to_pylist():
        samples = decode_eval_row(row, spec)
        assert all(s["valid"] for s in samples)
        got += [[read_index_pattern(f) for f in s["clip"]] for s in samples]
        assert [s["clip_index"] for s in samples] == list(
            range(row["chunk"] * 4, row["chunk"] * 4 + len(samples))
        )
    assert got == want.tolist()
    if clips == "uniform:1":  # the centre clip of the 70-frame video
        assert got == [list(range(27, 43))]


def test_decode_eval_row_bad_video_is_a_counted_placeholder(tmp_path):
    data = DataConfig()
    spec = DecodeSpec.from_settings("uniform:2", data, max_clips=4)
    (tmp_path / "x.mp4").write_bytes(b"\x00" * 100)
    row = {"uri": str(tmp_path / "x.mp4"), "video_id": "x", "num_frames": 40, "label": 1}
    [sample] = decode_eval_row({**row, "chunk": 0}, spec)
    assert not sample["valid"] and sample["skip_reason"]
    assert sample["clip"].shape == (16, 112, 112, 3)
    [missing] = decode_eval_row({**row, "uri": str(tmp_path / "gone.mp4"), "chunk": 0}, spec)
    assert missing["skip_reason"] == "missing"


@pytest.mark.parametrize("name", ["c3d", "r3d", "r21d"])
def test_feature_model_pools_maps_to_vectors(name):
    backbone = build_backbone(name, width=0.125).eval()
    x = torch.randn(2, 3, 16, 32, 32)
    layers = ["pool1", "pool3", "pool5", "pool5_vcop"]
    out = FeatureModel(backbone, layers)(x)
    maps = backbone.forward_features(x, layers)
    for k in ("pool1", "pool3"):
        assert out[k].shape == maps[k].shape[:2]
        assert torch.allclose(out[k], maps[k].mean(dim=(2, 3, 4)), atol=1e-6)
    assert torch.equal(out["pool5"], maps["pool5"])
    assert torch.equal(out["pool5_vcop"], maps["pool5_vcop"])  # VCOP's feature, not averaged


def _batch(ids, valid, feats, labels, reasons=None, probs=None):
    b = {
        "video_id": np.array(ids),
        "valid": np.array(valid),
        "label": np.array(labels),
        "clip_index": np.arange(len(ids)),
        "skip_reason": np.array(reasons or [""] * len(ids)),
        "out_pool5": np.array(feats, np.float32),
    }
    if probs is not None:
        b["out_probs"] = np.array(probs, np.float32)
    return b


def test_aggregate_means_skips_and_clip_accuracy():
    videos = pa.table(
        {"video_id": ["a", "b", "c"], "label": [0, 1, 1], "split": ["train", "test", "test"]}
    )
    batches = [
        _batch(
            ["a", "a", "b"],
            [True, True, True],
            [[1, 0], [3, 2], [5, 5]],
            [0, 0, 1],
            probs=[[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]],
        ),
        _batch(
            ["c", "b"],
            [False, True],
            [[0, 0], [7, 7]],
            [1, 1],
            ["decode_error", ""],
            probs=[[0, 0], [0.7, 0.3]],
        ),
    ]
    out = aggregate(batches, videos, Counter({"not_a_video": 2}))
    assert out.video_ids == ["a", "b"]
    np.testing.assert_allclose(out.outputs["pool5"], [[2, 1], [6, 6]])
    assert out.num_clips.tolist() == [2, 2] and out.labels.tolist() == [0, 1]
    assert out.splits == ["train", "test"]
    assert out.skipped == {"not_a_video": 2, "decode_error": 1}
    assert (out.clip_correct, out.clip_total) == (2, 4)  # a0 right, a1 wrong, b0 right, b1 wrong
    back = VideoOutputs.from_table(out.to_table())
    assert back.video_ids == out.video_ids and back.skipped == out.skipped
    np.testing.assert_array_equal(back.outputs["pool5"], out.outputs["pool5"])


def test_decode_concurrency_keeps_decoding_out_of_the_actors(ray_local):
    inf = InferenceSettings(decode_tasks=2)
    assert decode_concurrency(inf, num_actors=2, num_blocks=10) != 2
    assert decode_concurrency(inf, num_actors=1, num_blocks=10) == 2
    assert decode_concurrency(inf, num_actors=1, num_blocks=1) == 1  # one block: nothing to fuse
    auto = InferenceSettings()
    for actors in (1, 2, 4):
        assert decode_concurrency(auto, actors, num_blocks=50) != actors


@pytest.fixture(scope="module")
def manifest_with_bad(tmp_path_factory, tiny_manifest) -> Path:
    """The tiny manifest plus a corrupt file and a missing one (both must be skips)."""
    from rayssl.io.manifest import read_manifest

    root = tmp_path_factory.mktemp("bad")
    (root / "bad.mp4").write_bytes(b"garbage" * 50)
    table = read_manifest(str(tiny_manifest))
    good = table.slice(0, 1).to_pylist()[0]
    gone = {**good, "uri": str(root / "gone.mp4"), "video_id": "gone/x"}
    bad = build_manifest(list_entries(str(root), "folder"), use_ray=False)
    merged = pa.concat_tables(
        [table, bad.cast(table.schema), pa.Table.from_pylist([gone], table.schema)]
    )
    out = root / "m.parquet"
    write_manifest(merged, str(out))
    return out


def _features_cmd(manifest: Path | str, out: str, *extra: str) -> list[str]:
    return [
        "features",
        "--checkpoint",
        "random",
        "--manifest",
        str(manifest),
        "--layers",
        "pool3",
        "pool5",
        "--clips",
        "uniform:3",
        "--out",
        out,
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        "model.backbone=c3d",
        "model.width=0.0625",
        *extra,
    ]


def test_features_command_writes_parquet(ray_local, manifest_with_bad, tmp_path, capsys):
    out = tmp_path / "f.parquet"
    assert cli_main(_features_cmd(manifest_with_bad, str(out))) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    feats = read_features(str(out))
    table = pa.parquet.read_table(out)
    assert table.column_names == ["video_id", "label", "split", "num_clips", "pool3", "pool5"]
    assert len(feats.video_ids) == 12 == summary["videos"]  # every good video, once
    assert summary["skipped"] == {"not_a_video": 1, "missing": 1}
    assert (feats.num_clips == 3).all()
    # C3D at width 1/16: pool3 has 256/16 channels, pool5 512/16.
    assert feats.outputs["pool3"].shape == (12, 16) and feats.outputs["pool5"].shape == (12, 32)
    assert set(feats.splits) == {"train", "val"} and (feats.labels >= 0).all()
    # Deterministic: the same checkpoint and clips give the same features.
    again = tmp_path / "g.parquet"
    assert cli_main(_features_cmd(manifest_with_bad, str(again))) == 0
    np.testing.assert_allclose(read_features(str(again)).outputs["pool5"], feats.outputs["pool5"])


def test_features_command_to_s3(ray_local, tiny_manifest, capsys, moto_endpoint):
    from tests.s3server import make_bucket, s3_env, upload_dir

    endpoint = moto_endpoint  # the session's: its Ray workers have its address
    with s3_env(endpoint):
        make_bucket(endpoint, "feats")
        upload_dir(endpoint, tiny_manifest.parent, "feats", "data")
        # Videos stay local (the manifest names local paths); manifest and output are S3.
        assert (
            cli_main(_features_cmd("s3://feats/data/manifest.parquet", "s3://feats/out/f.parquet"))
            == 0
        )
        feats = read_features("s3://feats/out/f.parquet")
        assert len(feats.video_ids) == 12 and "pool5" in feats.outputs


def test_usable_drops_error_rows(manifest_with_bad):
    from rayssl.io.manifest import read_manifest

    table = read_manifest(str(manifest_with_bad))
    assert usable(table).num_rows == table.num_rows - 1  # the corrupt file; missing is probed ok
