"""Backbones: parameter counts against the reference code, shapes, width, gradients."""

from __future__ import annotations

import pytest
import torch

from rayssl.models import (
    BACKBONES,
    POOL_LAYERS,
    ClassifierHead,
    ProjectionHead,
    build_backbone,
    c3d_bn,
    r2plus1d_vcop,
    r3d_vcop,
    s3dg,
)

#: the CNNs (the ViTs have no width multiplier: tests/models/test_vit.py)
NAMES = sorted(n for n in BACKBONES if not n.startswith("vit"))
TINY_WIDTH = 0.125


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def clips() -> torch.Tensor:
    return torch.randn(2, 3, 16, 32, 32)  # (B, C, T, H, W): the smallest C3D accepts


@pytest.mark.parametrize(
    ("preset", "expected"),
    [(c3d_bn, 27_661_440), (r3d_vcop, 14_361_792), (r2plus1d_vcop, 14_365_303)],
)
def test_parameter_counts_match_reference(preset, expected) -> None:
    assert num_params(preset()) == expected


def test_registry_names_presets() -> None:
    from rayssl.models.torchvision_video import TORCHVISION_BACKBONES

    expected = {"c3d": c3d_bn, "r3d": r3d_vcop, "r21d": r2plus1d_vcop, "s3dg": s3dg}
    vits = {n: b for n, b in BACKBONES.items() if n.startswith("vit")}
    assert {**expected, **TORCHVISION_BACKBONES, **vits} == BACKBONES
    assert sorted(vits) == ["vit_b16", "vit_l16", "vit_s16", "vit_tiny"]


def test_unknown_name_raises_with_valid_names() -> None:
    with pytest.raises(ValueError, match="c3d.*r21d.*r3d"):
        build_backbone("resnet50")


@pytest.mark.parametrize("name", NAMES)
def test_width_scales_parameters_down(name: str) -> None:
    full, half, tiny = (num_params(build_backbone(name, width=w)) for w in (1.0, 0.5, TINY_WIDTH))
    assert full > half > tiny
    # Conv weights dominate and scale with width**2.
    assert 0.2 < half / full < 0.3
    # The last stage's channels scaled (S3D-G's 1024 = four branches, each >= 4).
    last = {"s3dg": (128, 16), "s3d": (128, 16)}.get(name, (64, 4))
    assert build_backbone(name, width=TINY_WIDTH).out_dim == last[0]
    assert build_backbone(name, width=0.001).out_dim == last[1]


@pytest.mark.parametrize("name", NAMES)
def test_forward_shape(name: str, clips: torch.Tensor) -> None:
    model = build_backbone(name, width=TINY_WIDTH)
    out = model(clips)
    assert out.shape == (2, model.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # (C, T, H, W) for a (2, 3, 16, 32, 32) clip at width 0.125; pool5 is (C,),
        # pool5_vcop (C * 2 * 1 * 1,): the (64, 2, 2, 2) last conv output max-pooled (1, 2, 2).
        ("c3d", [(8, 16, 16, 16), (16, 8, 8, 8), (32, 4, 4, 4), (64, 2, 2, 2), (64,), (128,)]),
        ("r3d", [(8, 16, 16, 16), (8, 16, 16, 16), (16, 8, 8, 8), (32, 4, 4, 4), (64,), (128,)]),
        ("r21d", [(8, 16, 16, 16), (8, 16, 16, 16), (16, 8, 8, 8), (32, 4, 4, 4), (64,), (128,)]),
    ],
)
def test_forward_features_shapes(name: str, expected: list, clips: torch.Tensor) -> None:
    model = build_backbone(name, width=TINY_WIDTH).eval()
    with torch.no_grad():
        feats = model.forward_features(clips, layers=POOL_LAYERS)
        assert list(feats) == list(POOL_LAYERS)
        assert [tuple(f.shape[1:]) for f in feats.values()] == expected
        assert all(f.shape[0] == 2 for f in feats.values())
        torch.testing.assert_close(feats["pool5"], model(clips))
        # Only the requested layers, in the requested order.
        assert list(model.forward_features(clips, layers=("pool4", "pool3"))) == ["pool4", "pool3"]
        assert list(model.forward_features(clips)) == ["pool5"]


@pytest.mark.parametrize("name", ["c3d", "r3d", "r21d"])
def test_pool5_vcop_is_vcops_max_pool_of_the_last_conv_output(name: str) -> None:
    """VCOP's retrieval feature (retrieve_clips.py with return_conv): conv5's output
    (2 x 7 x 7 at 16x112x112) max-pooled over non-overlapping (1, 2, 2) windows (the odd
    last row and column dropped) and flattened in (C, T, H, W) order; checked against a
    loop over the windows."""
    model = build_backbone(name, width=0.0625).eval()
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        feats = model.forward_features(x, ["pool5_vcop", "pool5"])
        h = x
        for stage in model.stages[:4]:
            h = stage(h)
        last = model.stages[4]
        conv = last.conv5b(last.conv5a(h)) if name == "c3d" else last(h)  # C3D: before pool5
    c, t, height, width = conv.shape[1:]
    assert (t, height, width) == (2, 7, 7)
    expected = torch.empty(c, t, height // 2, width // 2)
    for ci in range(c):
        for ti in range(t):
            for i in range(height // 2):
                for j in range(width // 2):
                    window = conv[0, ci, ti, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
                    expected[ci, ti, i, j] = window.max()
    assert torch.equal(feats["pool5_vcop"][0], expected.flatten())
    torch.testing.assert_close(feats["pool5"], model(x))  # the global pool is unchanged


@pytest.mark.parametrize("name", ["c3d", "r3d", "r21d"])
def test_pool5_vcop_has_vcops_9216_dims(name: str) -> None:
    """512 x 2 x 3 x 3 at full width and 16x112x112 (shapes only: the meta device)."""
    with torch.device("meta"):
        model = build_backbone(name)
        feats = model.forward_features(torch.empty(2, 3, 16, 112, 112), ["pool5_vcop"])
    assert tuple(feats["pool5_vcop"].shape) == (2, 9216)


def test_forward_features_rejects_unknown_layer(clips: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"\['fc6'\] not a layer of backbone ResNet3d; it has"):
        build_backbone("r3d", width=TINY_WIDTH).forward_features(clips, layers=("fc6",))


@pytest.mark.parametrize("name", NAMES)
def test_every_backbone_offers_the_feature_layer_interface(name: str) -> None:
    """feature_layers names what forward_features gives; "pool5_map" is the map "pool5"
    averages, as (B, T'H'W', C) tokens in raster order on the grid `token_grid` gives."""
    model = build_backbone(name, width=TINY_WIDTH).eval()
    assert set(POOL_LAYERS) | {"pool5_map"} <= set(model.feature_layers)
    x = torch.randn(2, 3, 16, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x, ["pool5_map", "pool5"])
        fmap = model.forward_map(x)
    b, c, t, h, w = fmap.shape
    assert model.token_grid((16, 64, 64)) == (t, h, w)
    assert feats["pool5_map"].shape == (b, t * h * w, c)
    for i, (ti, hi, wi) in enumerate(torch.cartesian_prod(*map(torch.arange, (t, h, w)))):
        assert torch.equal(feats["pool5_map"][:, i], fmap[:, :, ti, hi, wi])
    torch.testing.assert_close(feats["pool5_map"].mean(dim=1), feats["pool5"])
    if model.training is False:  # token_grid left the mode (and running stats) alone
        model.train()
        before = [b.clone() for b in model.buffers()]
        model.token_grid((16, 48, 48))
        assert model.training
        assert all(torch.equal(x, y) for x, y in zip(before, model.buffers(), strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_gradient_reaches_first_conv(name: str, clips: torch.Tensor) -> None:
    model = build_backbone(name, width=TINY_WIDTH)
    head = ClassifierHead(model.out_dim, num_classes=4, dropout=0.5)
    loss = torch.nn.functional.cross_entropy(head(model(clips)), torch.tensor([0, 3]))
    loss.backward()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 3
    assert first_conv.weight.grad is not None
    assert first_conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_matches_contiguous(name: str, clips: torch.Tensor) -> None:
    model = build_backbone(name, width=TINY_WIDTH).eval()
    with torch.no_grad():
        expected = model(clips)
        model = model.to(memory_format=torch.channels_last_3d)
        actual = model(clips.to(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_runs(name: str, clips: torch.Tensor) -> None:
    model = build_backbone(name, width=TINY_WIDTH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(clips)
    assert out.shape == (2, model.out_dim)
    assert torch.isfinite(out.float()).all()


def test_init_weights() -> None:
    model = r3d_vcop(width=TINY_WIDTH)
    bn = model.stages[0][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    conv = model.stages[0][0]
    # Kaiming normal, fan_out mode: std = sqrt(2 / (out_channels * kernel volume)).
    expected_std = (2.0 / (conv.out_channels * 3 * 7 * 7)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)
    c3d_conv = c3d_bn(width=TINY_WIDTH).stages[0].conv1a[0]
    assert torch.equal(c3d_conv.bias, torch.zeros_like(c3d_conv.bias))


def test_heads_shapes() -> None:
    features = torch.randn(5, 64)
    assert ClassifierHead(64, 101, dropout=0.3)(features).shape == (5, 101)
    projection = ProjectionHead(64, 32, 16)
    assert projection(features).shape == (5, 16)
    assert isinstance(projection.net[1], torch.nn.BatchNorm1d)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_formulation_matches_conv3d(channels_last: bool) -> None:
    """R(2+1)D's factorised convs run as 2D convs give the reference's outputs and
    gradients with the same weights, strided and padded layers included."""
    from rayssl.models import set_conv_impl

    torch.manual_seed(0)
    model = build_backbone("r21d", width=0.125).train()
    # batch 4: at batch 2 the last stage's BN normalises 8 values per channel and the
    # gradients are so ill-conditioned that fp32 rounding alone moves them by 4%
    x = torch.randn(4, 3, 8, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    results = []
    for impl in ("conv3d", "conv2d"):
        assert set_conv_impl(model, impl) == 12  # stem + 2 per block x 4 + 3 shortcuts
        model.zero_grad()
        xi = x.clone().requires_grad_(True)
        feats = model.forward_features(xi, ("pool3", "pool5"))
        (feats["pool3"].square().mean() + feats["pool5"].square().sum()).backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((feats, xi.grad, grads))
    (f3, gx3, g3), (f2, gx2, g2) = results

    def close(a: torch.Tensor, b: torch.Tensor) -> bool:  # fp32 rounding, relative to scale
        return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())

    for name in ("pool3", "pool5"):
        assert f2[name].shape == f3[name].shape and close(f2[name], f3[name])
    assert close(gx2, gx3)
    assert all(close(a, b) for a, b in zip(g2, g3, strict=True))
    # the BN running statistics moved the same way (both passes trained)
    assert any(m.num_batches_tracked == 2 for m in model.modules() if hasattr(m, "running_mean"))


def test_conv2d_formulation_keeps_channels_last_without_copies() -> None:
    """On a channels_last_3d input the 2D formulation's reshapes are views: the output
    keeps channels_last_3d, so the next layer gets the layout it was given."""
    from rayssl.models import Conv2Plus1d

    torch.manual_seed(0)
    conv = Conv2Plus1d(8, 16, (3, 3, 3), (2, 2, 2), (1, 1, 1)).to(
        memory_format=torch.channels_last_3d
    )
    conv.impl = "conv2d"
    x = torch.randn(2, 8, 8, 12, 12).contiguous(memory_format=torch.channels_last_3d)
    y = conv(x)
    assert y.shape == (2, 16, 4, 6, 6)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)


def test_set_conv_impl_rejects_unknown_and_counts_none_on_plain_3d() -> None:
    from rayssl.models import set_conv_impl

    assert set_conv_impl(build_backbone("r3d", width=0.125), "conv2d") == 0
    with pytest.raises(ValueError, match="conv3d"):
        set_conv_impl(build_backbone("r21d", width=0.125), "conv1d")


def test_aligned_mid_channels_are_multiples() -> None:
    from rayssl.models import Conv2Plus1d, r2plus1d_vcop

    mids = [
        m.spatial.out_channels
        for m in r2plus1d_vcop(mid_multiple=8).modules()
        if isinstance(m, Conv2Plus1d)
    ]
    reference = [
        m.spatial.out_channels for m in r2plus1d_vcop().modules() if isinstance(m, Conv2Plus1d)
    ]
    assert 83 in reference and 230 in reference  # the reference's odd widths
    assert all(m % 8 == 0 for m in mids)
    assert all(0 <= a - r < 8 for a, r in zip(mids, reference, strict=True))
