"""ViT video backbones: published parameter counts, feature layers, visible-token
encoding, and public weights in the `transformers` format as `model.init`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from rayssl.checkpoint import CheckpointError, build_backbone_from, resolve_checkpoint
from rayssl.config import load_config
from rayssl.models import build_backbone
from rayssl.models.vit import VIT_PRESETS, sincos_table, videomae_config


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_backbone("vit_tiny").eval()


@pytest.mark.parametrize(
    ("name", "low", "high"),
    # ViT-B/16 encoder of VideoMAE: 86-87M; ViT-S/16 22M; ViT-L/16 304M (meta device:
    # shapes only, no memory)
    [("vit_b16", 86.0e6, 87.0e6), ("vit_s16", 21.5e6, 22.5e6), ("vit_l16", 303e6, 305e6)],
)
def test_parameter_counts_match_the_published_encoders(name, low, high) -> None:
    with torch.device("meta"):
        model = build_backbone(name)
    assert low <= num_params(model) <= high
    assert model.out_dim == VIT_PRESETS[name].hidden


def test_vit_b16_runs_16x224x224_into_1568_tokens() -> None:
    with torch.device("meta"):
        model = build_backbone("vit_b16")
        feats = model.forward_features(torch.empty(2, 3, 16, 224, 224), ["tokens", "block6"])
    assert tuple(feats["tokens"].shape) == (2, 8 * 14 * 14, 768)
    assert tuple(feats["block6"].shape) == (2, 768)


def test_vits_have_no_width_multiplier() -> None:
    with pytest.raises(ValueError, match="no width multiplier"):
        build_backbone("vit_tiny", width=0.5)


def test_feature_layers_and_forward_agree(tiny) -> None:
    x = torch.randn(2, 3, 8, 64, 64)
    assert tiny.feature_layers == ("block1", "block2", "block3", "block4", "tokens")
    with torch.no_grad():
        feats = tiny.forward_features(x, ["tokens", "block2", "block4"])
        pooled = tiny(x)
        fmap = tiny.forward_map(x)
    assert list(feats) == ["tokens", "block2", "block4"]
    assert feats["tokens"].shape == (2, 4 * 4 * 4, 192)
    assert feats["block2"].shape == (2, 192)
    torch.testing.assert_close(pooled, feats["tokens"].mean(1))
    # "tokens" is normalised, "block4" is not: the same tokens before the final norm
    assert not torch.allclose(feats["block4"], pooled)
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), feats["tokens"])
    # block i is the mean over tokens after i blocks
    h = tiny.embed(x)
    with torch.no_grad():
        for block in tiny.blocks[:2]:
            h = block(h)
    torch.testing.assert_close(feats["block2"], h.mean(1))


def test_unknown_layer_and_bad_clip_size_are_one_line_errors(tiny) -> None:
    with pytest.raises(ValueError, match="pool5"):
        tiny.forward_features(torch.randn(1, 3, 8, 32, 32), ["pool5"])
    with pytest.raises(ValueError, match=r"got 8x40x40"):
        tiny(torch.randn(1, 3, 8, 40, 40))
    with pytest.raises(ValueError, match=r"got 7x32x32"):
        tiny(torch.randn(1, 3, 7, 32, 32))


def test_visible_tokens_only_never_see_the_others(tiny) -> None:
    """Encoding a subset `keep`: the same as the blocks on those tokens alone, and the
    dropped tokens' pixels do not change the result."""
    x = torch.randn(2, 3, 8, 64, 64)
    keep = torch.tensor([[0, 3, 17, 40], [5, 6, 33, 60]])
    with torch.no_grad():
        out = tiny.tokens(x, keep)
        assert out.shape == (2, 4, 192)
        y = x.clone()
        y[:, :, 4:, 32:, 32:] += 5.0  # tokens (t >= 2, h >= 2, w >= 2): none kept
        torch.testing.assert_close(tiny.tokens(y, keep), out)
        all_tokens = torch.arange(64).expand(2, -1)
        torch.testing.assert_close(tiny.tokens(x, all_tokens), tiny.tokens(x))


def test_position_table_is_the_librarys() -> None:
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    torch.testing.assert_close(sincos_table(37, 48), get_sinusoid_encoding_table(37, 48))


def test_matches_the_librarys_model_at_its_clip_size(tiny) -> None:
    """At the configured clip size our forward is the library's VideoMAEModel forward."""
    from transformers import VideoMAEModel

    config = videomae_config(VIT_PRESETS["vit_tiny"], image_size=32, num_frames=4)
    ref = VideoMAEModel(config).eval()
    ref.load_state_dict(tiny.model.state_dict())
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = ref(pixel_values=x.transpose(1, 2)).last_hidden_state
        torch.testing.assert_close(tiny.tokens(x), expected, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients() -> None:
    model = build_backbone("vit_tiny").train()
    x = torch.randn(2, 3, 4, 32, 32)
    model(x).sum().backward()
    expected = model.model.embeddings.patch_embeddings.projection.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing = True
    model(x).sum().backward()
    actual = model.model.embeddings.patch_embeddings.projection.weight.grad
    torch.testing.assert_close(actual, expected)


# ------------------------------------------------------------------ weights as model.init


def _save_tiny(folder: Path, **overrides) -> torch.nn.Module:
    """A tiny VideoMAE saved by the library itself (config.json + model.safetensors)."""
    from transformers import VideoMAEModel

    torch.manual_seed(1)
    model = VideoMAEModel(videomae_config(VIT_PRESETS["vit_tiny"], **overrides))
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    return model


def test_a_model_saved_in_the_librarys_format_loads_as_model_init(tmp_path) -> None:
    saved = _save_tiny(tmp_path / "videomae_tiny")
    cfg = load_config(None, ["model.backbone=vit_b16", f"model.init={tmp_path / 'videomae_tiny'}"])
    source = resolve_checkpoint(cfg.model.init, cfg)
    assert source.kind == "pretrained_folder"
    assert source.model.backbone == "vit_tiny"  # the folder's shape decides
    backbone = build_backbone_from(source)
    for key, value in saved.state_dict().items():
        assert torch.equal(backbone.state_dict()[f"model.{key}"], value), key


def test_a_model_saved_without_final_norm_gets_the_identity_norm(tmp_path) -> None:
    _save_tiny(tmp_path / "m", use_mean_pooling=True)
    cfg = load_config(None, [f"model.init={tmp_path / 'm'}"])
    backbone = build_backbone_from(resolve_checkpoint(cfg.model.init, cfg))
    assert torch.equal(backbone.model.layernorm.weight, torch.ones(192))
    assert torch.equal(backbone.model.layernorm.bias, torch.zeros(192))


def test_a_pretrained_folder_on_s3_loads(tmp_path) -> None:
    from tests.s3server import make_bucket, moto_s3_server, s3_env, upload_dir

    saved = _save_tiny(tmp_path / "m")
    with moto_s3_server() as endpoint, s3_env(endpoint):
        make_bucket(endpoint, "models")
        upload_dir(endpoint, tmp_path / "m", "models", "videomae/tiny")
        cfg = load_config(None, ["model.init=s3://models/videomae/tiny"])
        cfg = replace(cfg, data=replace(cfg.data, endpoint_url=endpoint))
        backbone = build_backbone_from(resolve_checkpoint(cfg.model.init, cfg))
    key = "encoder.layer.3.output.dense.weight"
    assert torch.equal(backbone.state_dict()[f"model.{key}"], saved.state_dict()[key])


def test_hostile_pretrained_folders_are_one_line_errors(tmp_path) -> None:
    # a shape no preset has
    _save_tiny(tmp_path / "odd", hidden_size=96, num_attention_heads=3)
    cfg = load_config(None, [f"model.init={tmp_path / 'odd'}"])
    with pytest.raises(CheckpointError, match="no ViT preset"):
        resolve_checkpoint(cfg.model.init, cfg)
    # weights that are not there: the library would leave them at random init
    from safetensors.torch import load_file, save_file

    _save_tiny(tmp_path / "cut")
    weights = load_file(tmp_path / "cut" / "model.safetensors")
    del weights["encoder.layer.2.attention.attention.query.weight"]
    save_file(weights, tmp_path / "cut" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="lacks 1 encoder weights"):
        resolve_checkpoint(str(tmp_path / "cut"), cfg)
    # another model type
    (tmp_path / "other").mkdir()
    _save_tiny(tmp_path / "other")
    conf = json.loads((tmp_path / "other" / "config.json").read_text())
    conf["model_type"] = "bert"
    (tmp_path / "other" / "config.json").write_text(json.dumps(conf))
    with pytest.raises(CheckpointError, match="not a VideoMAE"):
        resolve_checkpoint(str(tmp_path / "other"), cfg)


def test_the_cnn_pretexts_run_on_a_vit() -> None:
    """pace reads the pooled features, statistics the feature map: both on a ViT."""
    from rayssl.pretext import build_pretext
    from rayssl.pretext.base import Features
    from rayssl.train.step import build_model

    for name in ("pace", "statistics"):
        cfg = load_config(
            None,
            [
                "model.backbone=vit_tiny",
                f"pretext.name={name}",
                "data.clip_len=4",
                "data.augment.crop=[32,32]",
                "data.augment.resize=[32,43]",
            ],
        )
        model = build_model(cfg, build_pretext(cfg.pretext, 4))
        x = torch.randn(2, 3, 4, 32, 32)
        with torch.no_grad():
            direct = Features(model.backbone, x).pooled  # the plain forward
            features = Features(model.backbone, x)
            assert features.map.shape == (2, 192, 2, 2, 2)
            torch.testing.assert_close(features.pooled, direct)
