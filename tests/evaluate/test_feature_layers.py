"""The feature-layer interface downstream: layer names checked against the chosen
backbone, token maps pooled and stored per video, and every evaluation of the suite
running on a ViT-like backbone (`fake_vit.FakeViT`) through the same code as the CNNs."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch import nn

from rayssl.cli import main as cli_main
from rayssl.config import ConfigError
from rayssl.evaluate.attention import attention_maps, token_activations
from rayssl.evaluate.features import load_manifest, read_features
from rayssl.evaluate.registry import RunContext, RunFiles
from rayssl.evaluate.suite import (
    FeatureStore,
    bind_to_backbone,
    load_suite,
    needed_videos,
    run_evaluations,
)
from rayssl.models import build_backbone
from rayssl.train.inference import FeatureModel, VideoOutputs, aggregate, pool_tokens
from tests.conftest import ROOT
from tests.evaluate.fake_vit import FakeViT

SUITE = ROOT / "configs" / "eval_debug.yaml"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_feature_model_on_a_vit_like_backbone_pools_tokens_to_the_grid():
    vit = FakeViT(dim=6).eval()
    x = torch.randn(2, 3, 8, 32, 32)  # grid 4 x 4 x 4 = 64 tokens
    out = FeatureModel(vit, ["tokens", "block1"], token_grid=(2, 2, 4))(x)
    raw = vit.forward_features(x, ["tokens", "block1"])
    assert torch.equal(out["block1"], raw["block1"])  # a vector layer passes through
    assert out["tokens"].shape == (2, 2 * 2 * 4, 6)
    grid = raw["tokens"].reshape(2, 4, 4, 4, 6)  # (B, T', H', W', D), raster order
    for t in range(2):
        for h in range(2):
            for w in range(4):
                block = grid[:, 2 * t : 2 * t + 2, 2 * h : 2 * h + 2, w, :]
                expected = block.reshape(2, -1, 6).mean(dim=1)
                got = out["tokens"][:, (t * 2 + h) * 4 + w]
                torch.testing.assert_close(got, expected)


def test_pool_tokens_without_a_grid_averages_runs_of_tokens():
    tokens = torch.arange(12.0).reshape(1, 6, 2)
    pooled = pool_tokens(tokens, None, (1, 1, 3))
    assert torch.equal(pooled, torch.tensor([[[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]]))
    assert pool_tokens(tokens, None, (2, 2, 2)) is tokens  # already small enough
    assert pool_tokens(tokens, (1, 2, 3), (4, 4, 4)) is tokens
    with pytest.raises(ValueError, match="does not fit its grid"):
        pool_tokens(tokens, (2, 2, 2), (1, 1, 1))


def test_cnn_pool5_map_goes_through_the_feature_model_as_tokens():
    c3d = build_backbone("c3d", width=0.125).eval()
    x = torch.randn(2, 3, 16, 64, 64)
    out = FeatureModel(c3d, ["pool5_map", "pool5"], token_grid=(1, 1, 1))(x)
    assert out["pool5_map"].shape == (2, 1, c3d.out_dim)
    torch.testing.assert_close(out["pool5_map"][:, 0], out["pool5"])  # one token = the mean


def test_feature_model_refuses_layers_the_backbone_lacks():
    with pytest.raises(ValueError, match=r"\['pool5'\] not a layer.*block1.*tokens"):
        FeatureModel(FakeViT(), ["pool5"])
    with pytest.raises(ValueError, match=r"block1.*it has.*pool5_map"):
        FeatureModel(build_backbone("c3d", width=0.125), ["block1"])
    with pytest.raises(ValueError, match="no feature layers"):
        FeatureModel(nn.Linear(2, 2), ["pool5"])


def test_token_columns_round_trip_through_parquet():
    tokens = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    vectors = np.random.default_rng(1).random((3, 5)).astype(np.float32)
    out = VideoOutputs(
        ["a", "b", "c"],
        np.array([0, 1, 0]),
        ["train", "test", "train"],
        np.array([2, 1, 3]),
        {"tokens": tokens, "block2": vectors},
        skipped={"decode_error": 1},
    )
    table = out.to_table()
    assert table.schema.field("tokens").type == pa.list_(pa.list_(pa.float32(), 5))
    back = VideoOutputs.from_table(table)
    assert np.array_equal(back.outputs["tokens"], tokens)
    assert np.array_equal(back.outputs["block2"], vectors)
    assert back.skipped == {"decode_error": 1}
    empty = VideoOutputs([], np.zeros(0, np.int64), [], np.zeros(0, np.int64), {})
    empty.outputs["tokens"] = np.zeros((0, 4, 5), np.float32)
    back_empty = VideoOutputs.from_table(empty.to_table()).outputs["tokens"]
    assert back_empty.ndim == 3 and back_empty.shape[0] == 0 and back_empty.shape[2] == 5


def test_aggregate_averages_token_maps_over_a_videos_clips():
    videos = pa.table({"video_id": ["a", "b"], "label": [0, 1], "split": ["train", "test"]})
    tok = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2)
    batch = {
        "video_id": np.array(["a", "a", "b"]),
        "valid": np.array([True, True, True]),
        "label": np.array([0, 0, 1]),
        "clip_index": np.arange(3),
        "skip_reason": np.array(["", "", ""]),
        "out_tokens": tok,
    }
    out = aggregate([batch], videos, Counter())
    assert out.outputs["tokens"].shape == (2, 2, 2)
    assert np.array_equal(out.outputs["tokens"][0], (tok[0] + tok[1]) / 2)
    assert np.array_equal(out.outputs["tokens"][1], tok[2])


def _suite(*overrides: str):
    return load_suite(SUITE, ["data.manifest=m.parquet", *overrides])


def test_suite_layers_are_checked_against_the_chosen_backbone():
    vit = FakeViT()
    # eval_debug's default layers are the CNN's: refused for the ViT, naming the key
    with pytest.raises(ConfigError, match=r"features.layers: \['pool3', 'pool4', 'pool5'\].*"):
        bind_to_backbone(_suite(), vit)
    with pytest.raises(ConfigError, match=r"similarity.layers: .*it has \['block1', 'block2'"):
        bind_to_backbone(_suite("features.layers=[block1,block2]"), vit)
    ok = bind_to_backbone(
        _suite(
            "features.layers=[block1,block2]",
            "similarity.layers=[block1,block2]",
            "knn.enabled=true",
            "attentive_probe.enabled=true",
        ),
        vit,
    )
    assert ok.attentive_probe.layer == "tokens" and ok.attention.layer == "tokens"
    # the CNN: its own names, pool5_map for the probe, conv5 for the attention maps
    c3d = build_backbone("c3d", width=0.125)
    cnn = bind_to_backbone(_suite("attentive_probe.enabled=true"), c3d)
    assert cnn.attentive_probe.layer == "pool5_map" and cnn.attention.layer == ""
    with pytest.raises(ConfigError, match=r"linear.layers: \['pool9'\].*pool5_vcop"):
        bind_to_backbone(_suite("linear.layers=[pool9]"), c3d)
    with pytest.raises(ConfigError, match=r"attentive_probe.layer: \['tokens'\]"):
        bind_to_backbone(
            _suite("attentive_probe.enabled=true", "attentive_probe.layer=tokens"), c3d
        )
    with pytest.raises(ConfigError, match="attentive_probe.heads: 3 does not divide the width 64"):
        bind_to_backbone(_suite("attentive_probe.enabled=true", "attentive_probe.heads=3"), c3d)
    # a disabled evaluation's layers are not checked
    bind_to_backbone(_suite("linear.layers=[pool9]", "linear.enabled=false"), c3d)


def test_a_backbone_without_token_layers_or_grid_is_named():
    class VectorsOnly(nn.Module):
        feature_layers = ("emb",)

        def forward_features(self, x, layers):
            return {"emb": x.flatten(1)}

    suite = _suite(
        "features.layers=[emb]", "similarity.enabled=false", "attentive_probe.enabled=false"
    )
    with pytest.raises(ConfigError, match="attention: backbone VectorsOnly has no conv stages"):
        bind_to_backbone(suite, VectorsOnly())
    with pytest.raises(ConfigError, match=r"attentive_probe.layer: .* no token layer.*\['emb'\]"):
        bind_to_backbone(
            load_suite(
                SUITE,
                [
                    "data.manifest=m",
                    "features.layers=[emb]",
                    "similarity.enabled=false",
                    "attention.enabled=false",
                    "attentive_probe.enabled=true",
                ],
            ),
            VectorsOnly(),
        )


def test_attention_of_a_vit_lays_its_tokens_on_the_grid():
    vit = FakeViT(dim=4).eval()
    x = torch.randn(1, 3, 8, 16, 24)  # grid 4 x 2 x 3
    with torch.no_grad():
        act = token_activations(vit, x, "tokens")
        tokens = vit.forward_features(x, ["tokens"])["tokens"]
    assert act.shape == (1, 4, 4, 2, 3)
    for n, (t, h, w) in enumerate(np.ndindex(4, 2, 3)):
        assert torch.equal(act[0, :, t, h, w], tokens[0, n])
    maps = attention_maps(vit, x)
    assert maps.shape == (1, 8, 16, 24) and maps.min() == 0 and maps.max() == 1


def test_features_command_refuses_a_layer_before_any_work(tiny_manifest, tmp_path, capsys):
    argv = ["features", "--checkpoint", "random", "--manifest", str(tiny_manifest)]
    argv += ["--layers", "block3", "--out", str(tmp_path / "f.parquet"), "model.width=0.0625"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "--layers (features.layers): ['block3'] not a layer of backbone r21d" in err
    assert "pool5_map" in err and not (tmp_path / "f.parquet").exists()


@pytest.mark.slow
def test_every_evaluation_runs_on_a_vit_like_backbone(ray_local, tiny_manifest, tmp_path):
    """The suite's evaluations on FakeViT through Ray Data (decode tasks, model actors):
    its block layers for retrieval, linear, kNN and similarity, its tokens for the
    attentive probe (pooled to the grid per clip, averaged per video) and the maps."""
    suite = load_suite(
        SUITE,
        [
            f"data.manifest={tiny_manifest}",
            "data.augment.resize=[32,43]",
            "data.augment.crop=[32,32]",
            "features.inference.clips=uniform:2",
            "features.layers=[block1,block2]",
            "features.token_grid=[2,2,2]",
            "similarity.layers=[block1,block2]",
            "similarity.clips=uniform:2",
            "similarity.num_pairs=24",
            "similarity.num_folds=2",
            "knn.enabled=true",
            "knn.ks=[1,3]",
            "attentive_probe.enabled=true",
            "attentive_probe.epochs=3",
            "attentive_probe.heads=4",
            "attentive_probe.train_split=train",
            "attentive_probe.test_split=val",
            "finetune.enabled=false",
        ],
    )
    vit = FakeViT(dim=16).eval()
    suite = bind_to_backbone(suite, vit)
    table = needed_videos(suite, load_manifest(suite.data.manifest, suite.data))
    out = RunFiles(Path(tmp_path))
    ctx = RunContext(suite, FeatureStore(suite, vit, table, out), vit, table, None, out)  # type: ignore[arg-type]
    results, report = run_evaluations(ctx)
    expected = {
        "retrieval/block2/top1",
        "linear/block1/accuracy",
        "knn/block2/k3_top1",
        "knn/block1/k1_top5",
        "attentive_probe/tokens/accuracy",
        "similarity/block1-block2/accuracy",
    }
    assert expected <= set(results), set(results)
    assert all(0.0 <= v <= 1.0 for v in results.values()), results
    assert (tmp_path / "attention.png").exists() and (tmp_path / "knn.txt").exists()
    feats = read_features(str(tmp_path / "features-uniform-2.parquet"))
    assert set(feats.outputs) == {"block1", "block2", "tokens"}
    # 32 px crops of 16 frames: an 8 x 4 x 4 grid, pooled to 2 x 2 x 2 tokens of 16
    assert feats.outputs["tokens"].shape == (len(feats.video_ids), 8, 16)
    # a video's block2 is the mean of its clips' mean tokens = the mean of its stored
    # tokens (average pooling and averaging over clips commute with the token mean)
    np.testing.assert_allclose(
        feats.outputs["tokens"].mean(axis=1), feats.outputs["block2"], rtol=1e-4, atol=1e-5
    )
    assert any(line.startswith("attentive probe (tokens: 8 tokens of 16") for line in report)


def test_monitor_layer_of_a_cnn_is_checked_when_the_config_loads():
    from rayssl.config import load_config

    cfg = ROOT / "configs" / "debug.yaml"
    assert load_config(cfg, ["monitor.layer=pool4"]).monitor.layer == "pool4"
    for bad in ("pool9", "pool5_map"):  # unknown; a token map is no retrieval vector
        with pytest.raises(ConfigError, match=rf"monitor.layer: '{bad}' is not a vector layer"):
            load_config(cfg, [f"monitor.layer={bad}"])


def test_vector_evaluations_average_a_token_layer_over_its_tokens():
    from rayssl.evaluate.registry import vectors

    tokens = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    f = VideoOutputs(
        ["a", "b"], np.zeros(2), ["", ""], np.ones(2), {"tokens": tokens, "v": tokens[:, 0]}
    )
    assert np.array_equal(vectors(f, "tokens"), tokens.mean(axis=1))
    assert vectors(f, "v") is f.outputs["v"]
