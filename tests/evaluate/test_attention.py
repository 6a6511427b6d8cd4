"""Activation-based attention: the map follows the activations, uses conv5 (before C3D's
pool5), shows each video's centre clip, and the grid PNG is written for real videos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.config import DataConfig
from rayssl.evaluate.attention import (
    attention_from_activations,
    attention_grid_png,
    attention_maps,
    centre_clip,
    grid_image,
    overlay,
)
from rayssl.io.manifest import build_manifest, list_entries, read_manifest
from rayssl.models import build_backbone
from rayssl.tools.synthetic import index_pattern_frames, read_index_pattern, write_video
from rayssl.train.inference import usable


def test_attention_peaks_where_the_activations_are():
    act = torch.zeros(1, 8, 2, 4, 4)
    act[0, :, 1, 3, 0] = 2.0  # late in time, bottom-left
    act[0, 0, 0, 0, 3] = -1.0  # squared: counts as activation too, but smaller (1 vs 4*8)
    a = attention_from_activations(act, (16, 32, 32))
    assert a.shape == (1, 16, 32, 32)
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0
    t, y, x = np.unravel_index(int(a[0].argmax()), a.shape[1:])
    assert t >= 8 and y >= 24 and x < 8
    assert float(a[0, 0, 0:8, 24:32].mean()) > float(a[0, 0, 12:20, 12:20].mean())


def test_constant_activations_give_a_zero_map():
    a = attention_from_activations(torch.ones(2, 3, 1, 2, 2), (4, 8, 8))
    assert torch.equal(a, torch.zeros(2, 4, 8, 8))


def test_c3d_attention_uses_conv5_before_pool5():
    backbone = build_backbone("c3d", width=0.0625).eval()
    seen = {}
    conv5 = backbone.stages[4].conv5b

    def hook(module, inputs, output):
        seen["conv5b"] = output.shape

    conv5.register_forward_hook(hook)
    x = torch.randn(1, 3, 16, 112, 112)
    maps = attention_maps(backbone, x)
    assert maps.shape == (1, 16, 112, 112)
    assert seen["conv5b"][2:] == (2, 7, 7)  # 7x7 before pool5, not pool5's 4x4


@pytest.mark.parametrize("name", ["r3d", "r21d"])
def test_resnet_attention_shape(name):
    maps = attention_maps(build_backbone(name, width=0.0625).eval(), torch.randn(2, 3, 8, 64, 64))
    assert maps.shape == (2, 8, 64, 64) and float(maps.max()) <= 1.0


def test_overlay_and_grid():
    frame = np.full((8, 8, 3), 100, np.uint8)
    hot = overlay(frame, np.ones((8, 8)))
    cold = overlay(frame, np.zeros((8, 8)))
    assert hot[..., 0].mean() > cold[..., 0].mean()  # JET: red where attention is high
    assert cold[..., 2].mean() > hot[..., 2].mean()
    clips = np.zeros((2, 16, 32, 32, 3), np.uint8)
    img = grid_image(clips, np.zeros((2, 16, 32, 32)), ["a", "b"], num_frames=3)
    # Tiles are enlarged to >= 96 px: 3 frames x (frame + overlay) x 32 px x 3.
    assert img.shape[1] == 3 * 2 * 32 * 3 and img.shape[0] == 2 * (16 + 96 + 2)


def test_attention_shows_the_centre_clip(tmp_path):
    """The clip attention maps are drawn on is the video's centre clip (frames 27-42 of
    70), decoded as the features are."""
    write_video(tmp_path / "c" / "v.mp4", index_pattern_frames(70, 64, 96), fps=25.0)
    [row] = build_manifest(list_entries(str(tmp_path), "folder"), use_ray=False).to_pylist()
    data = DataConfig()
    data.augment.resize, data.augment.crop = [], [64, 96]
    sample = centre_clip(row, data)
    assert sample["valid"]
    assert [read_index_pattern(f) for f in sample["clip"]] == list(range(27, 43))


def test_attention_grid_png_on_real_videos(tiny_manifest, tmp_path):
    data = DataConfig()
    data.augment.resize, data.augment.crop = [32, 43], [32, 32]
    table = usable(read_manifest(str(tiny_manifest)))
    path = tmp_path / "att.png"
    shown = attention_grid_png(
        build_backbone("c3d", width=0.0625), table, data, path, num_videos=3, split="train"
    )
    assert len(shown) == 3 and len(set(shown)) == 3
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = table["video_id"].to_pylist()[:2]
    assert attention_grid_png(
        build_backbone("c3d", width=0.0625), table, data, path, video_ids=chosen
    ) == [c.split(" ")[0] for c in chosen]
    with pytest.raises(ValueError, match="not usable"):
        attention_grid_png(build_backbone("c3d", 0.0625), table, data, path, video_ids=["nope"])


def test_unreadable_chosen_videos_are_named_with_their_reason(tmp_path):
    """A grid with no readable video is an error naming each video and why (here: a
    file overwritten after it was indexed)."""
    video = tmp_path / "c" / "gone.mp4"
    write_video(video, index_pattern_frames(40, 64, 96), fps=25.0)
    table = build_manifest(list_entries(str(tmp_path), "folder"), use_ray=False)
    video.write_bytes(b"\x00" * 4096)
    data = DataConfig()
    data.augment.resize, data.augment.crop = [], [64, 96]
    with pytest.raises(ValueError, match=r"could be read \(c/gone: \w+"):
        attention_grid_png(build_backbone("c3d", 0.0625), table, data, tmp_path / "a.png")
