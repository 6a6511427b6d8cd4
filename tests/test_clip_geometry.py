"""A checkpoint knows its clips (`rayssl.clip_geometry`): no Ray, real checkpoint files.

A backbone.pt / export that carries a 40 px training config gives 40 px clips; one that
carries none gives the defaults and says so; an explicit config key or override wins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rayssl.checkpoint import backbone_file_payload, resolve_checkpoint, save
from rayssl.clip_geometry import (
    CLIP_LEN,
    CROP,
    GEOMETRY_KEYS,
    RESIZE,
    choose_geometry,
    explicit_keys,
)
from rayssl.config import Config, ConfigError, DataConfig, load_config
from rayssl.export import SETTINGS_FILE, export_backbone
from rayssl.models import build_backbone
from rayssl.models.heads import MEAN, STD
from rayssl.train.inference import FeatureModel

SMALL = ["data.clip_len=8", "data.augment.crop=[40,40]", "data.augment.resize=[48,64]"]
WIDTH = 0.0625


def _cfg(overrides=()) -> Config:
    return load_config(None, ["model.backbone=r21d", f"model.width={WIDTH}", *overrides])


def _backbone_file(path: Path, config: Config | None) -> str:
    cfg = config or _cfg()
    net = build_backbone("r21d", width=WIDTH)
    extra = {"config": config.to_dict()} if config is not None else {}
    return str(save(backbone_file_payload(net, cfg.model, extra), path))


def _export(path: Path, config: Config | None) -> str:
    net = build_backbone("r21d", width=WIDTH)
    export_backbone(net, "r21d", WIDTH, path, config=config.to_dict() if config else None)
    return str(path)


def test_a_backbone_file_with_a_40px_config_gives_its_clips(tmp_path):
    spec = _backbone_file(tmp_path / "backbone.pt", _cfg(SMALL))
    source = resolve_checkpoint(spec, _cfg())  # the command's config: the defaults
    g = choose_geometry(source, DataConfig(), explicit=set())
    assert (g.clip_len, g.resize, g.crop) == (8, (48, 64), (40, 40))
    assert g.renormalise is None  # rayssl-trained: the pipeline's normalisation
    assert "40x40" in g.line() and "training config" in g.line()
    data = g.apply(DataConfig())
    assert (data.clip_len, data.augment.crop, data.augment.resize) == (8, [40, 40], [48, 64])


def test_a_backbone_file_without_a_config_gives_the_defaults_and_says_so(tmp_path):
    spec = _backbone_file(tmp_path / "backbone.pt", None)
    g = choose_geometry(resolve_checkpoint(spec, _cfg()), DataConfig(), explicit=set())
    d = DataConfig()
    assert (g.clip_len, list(g.crop), list(g.resize)) == (d.clip_len, d.augment.crop, [128, 171])
    assert "defaults" in g.line() and "records no clip geometry" in g.line()


def test_an_explicit_key_wins_over_the_checkpoint(tmp_path):
    spec = _backbone_file(tmp_path / "backbone.pt", _cfg(SMALL))
    overrides = ["data.augment.crop=[32,32]"]
    command = _cfg(overrides)
    explicit = explicit_keys({}, overrides)
    assert explicit == {CROP}
    g = choose_geometry(resolve_checkpoint(spec, command), command.data, explicit)
    assert (g.clip_len, g.resize, g.crop) == (8, (48, 64), (32, 32))
    assert "data.augment.crop from the command's config/overrides" in g.line()
    assert g.line().endswith("(the checkpoint was trained at crop [40, 40])")
    same = choose_geometry(resolve_checkpoint(spec, command), _cfg(SMALL).data, {CLIP_LEN})
    assert "trained at" not in same.line()  # an explicit key equal to the checkpoint's


def test_explicit_keys_of_a_config_file_and_of_nested_overrides():
    values = {"data": {"clip_len": 4, "augment": {"flip": False}}, "model": {"width": 1}}
    assert explicit_keys(values) == {CLIP_LEN}
    assert explicit_keys({}, ["data.augment={resize: [64, 80], crop: [56, 56]}"]) == {RESIZE, CROP}
    assert explicit_keys({}, ["data={clip_len: 4}", "run.seed=3"]) == {CLIP_LEN}
    assert explicit_keys({"data": {"augment": {"crop": [1, 1], "resize": []}}}, []) == {
        RESIZE,
        CROP,
    }
    assert set(GEOMETRY_KEYS) == {CLIP_LEN, RESIZE, CROP}


def test_an_export_with_a_40px_config_gives_its_clips(tmp_path):
    spec = _export(tmp_path / "exported", _cfg(SMALL))
    g = choose_geometry(resolve_checkpoint(spec, _cfg()), DataConfig(), explicit=set())
    assert (g.clip_len, g.resize, g.crop) == (8, (48, 64), (40, 40))
    assert "training config" in g.line()


def test_an_export_without_a_config_gives_its_settings_clip(tmp_path):
    spec = _export(tmp_path / "exported", None)
    settings_file = Path(spec) / SETTINGS_FILE
    settings = json.loads(settings_file.read_text())
    settings["clip"].update(frames=8, resize=[48, 64], crop=[40, 40])
    settings["normalisation"].update(mean=[0.43, 0.39, 0.37], std=[0.23, 0.22, 0.21])
    settings_file.write_text(json.dumps(settings))
    g = choose_geometry(resolve_checkpoint(spec, _cfg()), DataConfig(), explicit=set())
    assert (g.clip_len, g.resize, g.crop) == (8, (48, 64), (40, 40))
    assert "export settings (rayssl_model.json)" in g.line()
    assert g.renormalise == ((0.43, 0.39, 0.37), (0.23, 0.22, 0.21))
    assert "mean (0.43, 0.39, 0.37)" in g.line()


@pytest.mark.parametrize(
    "clip, norm, message",
    [
        ({"frames": 8, "resize": [48, 64], "crop": [80, 80]}, None, "does not fit resize"),
        ({"frames": "8", "resize": [48, 64], "crop": [40, 40]}, None, "not a positive integer"),
        ({"frames": 8, "resize": [48, -1], "crop": [40, 40]}, None, "positive integers"),
        (None, {"mean": [0.4, 0.4, 0.4], "std": [0.2, 0.0, 0.2]}, "positive standard"),
        (None, {"mean": [0.4], "std": [0.2, 0.2, 0.2]}, "3 means"),
        (None, {"mean": [0.4, float("nan"), 0.4], "std": [0.2, 0.2, 0.2]}, "3 means"),
        (None, {"mean": [0.4, 0.4, 0.4], "std": [0.2, float("inf"), 0.2]}, "3 means"),
    ],
)
def test_a_hostile_export_geometry_is_a_one_line_error(tmp_path, clip, norm, message):
    spec = _export(tmp_path / "exported", None)
    settings_file = Path(spec) / SETTINGS_FILE
    settings = json.loads(settings_file.read_text())
    if clip is not None:
        settings["clip"] = clip
    if norm is not None:
        settings["normalisation"] = norm
    settings_file.write_text(json.dumps(settings))
    source = resolve_checkpoint(spec, _cfg())
    with pytest.raises(ConfigError, match=message) as e:
        choose_geometry(source, DataConfig(), explicit=set())
    assert "\n" not in str(e.value)


def test_feature_model_renormalises_to_the_backbones_statistics():
    torch.manual_seed(0)
    net = build_backbone("r21d", width=WIDTH).eval()
    pixels = torch.rand(2, 3, 8, 40, 40)  # x / 255
    mean, std = (0.43, 0.39, 0.37), (0.23, 0.22, 0.21)

    def norm(m, s):
        return (pixels - torch.tensor(m).view(1, 3, 1, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1, 1)

    with torch.no_grad():
        want = net.forward_features(norm(mean, std), ["pool5"])["pool5"]
        got = FeatureModel(net, ["pool5"], normalisation=(mean, std))(norm(MEAN, STD))["pool5"]
        plain = FeatureModel(net, ["pool5"])(norm(MEAN, STD))["pool5"]
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(plain, want, atol=1e-3)


def test_features_command_says_which_geometry_before_any_work(tiny_manifest, tmp_path, capsys):
    """Through the command line, stopped by a bad layer before Ray starts: the line says
    the checkpoint's 40 px clips, or the defaults; an override wins."""
    from rayssl.cli import main as cli_main

    small = _backbone_file(tmp_path / "small" / "backbone.pt", _cfg(SMALL))
    bare = _backbone_file(tmp_path / "bare" / "backbone.pt", None)
    base = ["features", "--manifest", str(tiny_manifest), "--layers", "block3"]
    base += ["--out", str(tmp_path / "f.parquet")]
    for spec, extra, want in (
        (small, [], "8 frames, resize 48x64, centre crop 40x40"),
        (bare, [], "16 frames, resize 128x171, centre crop 112x112"),
        (small, ["data.augment.crop=[32,32]"], "8 frames, resize 48x64, centre crop 32x32"),
    ):
        assert cli_main([*base, "--checkpoint", spec, *extra]) == 2  # block3: not a CNN layer
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and out[0].startswith("clip geometry: ") and want in out[0], out
        assert ("defaults" in out[0]) == (spec == bare)
    assert not (tmp_path / "f.parquet").exists()


@pytest.mark.slow
def test_features_of_a_40px_checkpoint_are_extracted_at_40px(
    ray_local, tiny_manifest, tmp_path, capsys
):
    """The whole command on the session's Ray: no --config, no override; the checkpoint's
    8 x 40 x 40 clips are what the backbone is fed."""
    from rayssl.cli import main as cli_main
    from rayssl.evaluate.features import read_features

    spec = _backbone_file(tmp_path / "ckpt" / "backbone.pt", _cfg(SMALL))
    out = tmp_path / "f.parquet"
    argv = ["features", "--checkpoint", spec, "--manifest", str(tiny_manifest)]
    argv += ["--layers", "pool5", "--clips", "uniform:1", "--out", str(out)]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("clip geometry: 8 frames, resize 48x64, centre crop 40x40")
    summary = json.loads(lines[-1])
    assert (summary["clip_len"], summary["crop"]) == (8, [40, 40])
    assert len(read_features(str(out)).video_ids) == summary["videos"] > 0


def test_a_torchvision_model_is_fed_its_kinetics_normalisation(tmp_path):
    """A `torchvision:` checkpoint records no geometry (the defaults: torchvision's own
    16 x 112 x 112 clips) but its backbone declares Kinetics statistics: used."""
    from rayssl.checkpoint import build_backbone_from
    from rayssl.models.torchvision_video import KINETICS_MEAN, KINETICS_STD
    from tests.models.test_torchvision_backbones import _reference, reference_state

    keys = {k: tuple(v) for k, v in _reference()["r3d_18"]["keys"].items()}
    path = tmp_path / "r3d_18.pth"
    torch.save(reference_state(keys), path)  # torchvision's layout (no torchvision here)
    source = resolve_checkpoint(f"torchvision:r3d_18={path}", _cfg())
    assert source.kind == "torchvision"
    g = choose_geometry(source, DataConfig(), set(), backbone=build_backbone_from(source))
    assert g.renormalise == (tuple(KINETICS_MEAN), tuple(KINETICS_STD))
    assert (g.clip_len, g.crop) == (16, (112, 112)) and "defaults" in g.line()
