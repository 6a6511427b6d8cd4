"""S3D-G: parameter count against the reference, stage shapes, width, gating."""

from __future__ import annotations

import pytest
import torch

from rayssl.models import BACKBONES, POOL_LAYERS, S3DG, build_backbone, s3dg
from rayssl.models.s3dg import MaxPool3dSame, SelfGating

SMALL_WIDTH = 0.25


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def clip() -> torch.Tensor:
    return torch.randn(1, 3, 16, 64, 64)  # (B, C, T, H, W)


def test_parameter_count_matches_reference() -> None:
    with torch.device("meta"):
        model = s3dg()
    # The backbone: S3D-G of S3D_HowTo100M / video-pace (no space-to-depth) without its
    # final 1024 -> 512 embedding fc; with that fc it is the thesis's "9.6M".
    assert num_params(model) == 9_125_072
    assert model.out_dim == 1024
    assert num_params(model) + 1024 * 512 + 512 == 9_649_872  # the reference with its fc
    # The only linear layers are the gates' (no classifier / embedding fc inside).
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    gate_fcs = [m.fc for m in model.modules() if isinstance(m, SelfGating)]
    assert len(linears) == len(gate_fcs) == 1 + 9 * 4  # conv_2c + 4 branches x 9 blocks


def test_without_gating_is_plain_s3d() -> None:
    with torch.device("meta"):
        model = S3DG(gating=False)
    assert not any(isinstance(m, SelfGating) for m in model.modules())
    assert num_params(model) == 7_900_064


def test_registered() -> None:
    assert BACKBONES["s3dg"] is s3dg
    assert isinstance(build_backbone("s3dg", width=SMALL_WIDTH), S3DG)


def test_width_scales_parameters_down() -> None:
    with torch.device("meta"):
        full, half, small = (s3dg(width=w) for w in (1.0, 0.5, SMALL_WIDTH))
    assert num_params(full) > num_params(half) > num_params(small)
    assert 0.2 < num_params(half) / num_params(full) < 0.3
    assert small.out_dim == 256  # 384 + 384 + 128 + 128 channels of mixed_5c, / 4


@pytest.mark.parametrize(
    ("clip_shape", "expected"),
    [
        # (C, T, H, W) after each stage at width 1.0, as in the S3DG docstring.
        (
            (2, 3, 64, 224, 224),
            [(64, 32, 56, 56), (192, 32, 28, 28), (480, 16, 14, 14), (832, 8, 7, 7)],
        ),
        ((2, 3, 16, 112, 112), [(64, 8, 28, 28), (192, 8, 14, 14), (480, 4, 7, 7), (832, 2, 4, 4)]),
    ],
)
def test_documented_stage_shapes(clip_shape: tuple, expected: list) -> None:
    with torch.device("meta"):  # shapes only: no memory, no compute
        model = s3dg()
        feats = model.forward_features(torch.empty(clip_shape), layers=POOL_LAYERS)
        feature_map = model.forward_map(torch.empty(clip_shape))
    c, t, h, w = feature_map.shape[1:]
    vcop = (c * t * (h // 2) * (w // 2),)  # the stage 5 map max-pooled (1, 2, 2), flattened
    assert [tuple(f.shape[1:]) for f in feats.values()] == [*expected, (1024,), vcop]
    assert tuple(feature_map.shape[1:]) == (1024, *expected[-1][1:])


def test_forward_shapes(clip: torch.Tensor) -> None:
    model = s3dg(width=SMALL_WIDTH).eval()
    with torch.no_grad():
        out = model(clip)
        feats = model.forward_features(clip, layers=POOL_LAYERS)
        feature_map = model.forward_map(clip)
    assert out.shape == (1, 256)
    assert torch.isfinite(out).all()
    assert list(feats) == list(POOL_LAYERS)
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (16, 8, 16, 16),
        (48, 8, 8, 8),
        (120, 4, 4, 4),
        (208, 2, 2, 2),
        (256,),
        (256 * 2 * 1 * 1,),  # pool5_vcop: the (256, 2, 2, 2) map max-pooled (1, 2, 2)
    ]
    assert feature_map.shape == (1, 256, 2, 2, 2)
    torch.testing.assert_close(feats["pool5"], out)
    torch.testing.assert_close(feature_map.mean(dim=(2, 3, 4)), out)


def test_gates_change_the_output(clip: torch.Tensor) -> None:
    model = s3dg(width=SMALL_WIDTH).eval()
    gate = model.stages[1].gating_2c
    assert isinstance(gate, SelfGating)
    with torch.no_grad():
        before = model(clip)
        torch.nn.init.zeros_(gate.fc.weight)
        torch.nn.init.zeros_(gate.fc.bias)  # every weight now sigmoid(0) = 0.5
        after = model(clip)
    assert not torch.allclose(before, after)


def test_self_gating_scales_channels() -> None:
    gate = SelfGating(3)
    x = torch.randn(2, 3, 2, 4, 4)
    with torch.no_grad():
        torch.nn.init.zeros_(gate.fc.weight)
        gate.fc.bias.copy_(torch.tensor([-1e4, 0.0, 1e4]))
        y = gate(x)
    torch.testing.assert_close(y[:, 0], torch.zeros_like(x[:, 0]))
    torch.testing.assert_close(y[:, 1], x[:, 1] / 2)
    torch.testing.assert_close(y[:, 2], x[:, 2])


def test_same_max_pool_matches_tensorflow_padding() -> None:
    pool = MaxPool3dSame((3, 3, 3), (2, 2, 2))
    # Size n -> ceil(n / 2); the padding never wins the max, even for negative inputs.
    out = pool(-torch.ones(1, 1, 4, 7, 8))
    assert out.shape == (1, 1, 2, 4, 4)
    assert torch.equal(out, -torch.ones_like(out))
    # Even size: TF pads (0, 1), so windows start at 0, 2, ...
    x = torch.arange(4.0).view(1, 1, 1, 1, 4)
    assert MaxPool3dSame((1, 1, 3), (1, 1, 2))(x).flatten().tolist() == [2.0, 3.0]
