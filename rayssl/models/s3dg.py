"""S3D-G (Xie et al. 2018): separable 3D convs with feature gating, the backbone of
the pace prediction chapter's best results (64-frame 224x224 clips).

The layout is that of the PyTorch S3D-G of S3D_HowTo100M / video-pace without the
space-to-depth trick: a plain (3,7,7) first conv, then Inception ("mixed") blocks whose
3x3x3 convs are separable, (1,3,3) spatial -> BN -> ReLU -> (3,1,1) temporal -> BN ->
ReLU, and whose every branch output is gated by a `SelfGating` layer.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.models.heads import VideoBackbone, init_weights, scale_channels

Triple = tuple[int, int, int]


def _conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel: Triple = (1, 1, 1),
    stride: Triple = (1, 1, 1),
    padding: Triple = (0, 0, 0),
) -> nn.Sequential:
    """Bias-free conv -> BatchNorm3d -> ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _sep_conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """A 3x3x3 conv (padding 1) made separable: (1,3,3) conv -> BN -> ReLU -> (3,1,1)
    conv -> BN -> ReLU, both convs bias-free and `out_channels` wide."""
    return nn.Sequential(
        OrderedDict(
            spatial=_conv_bn_relu(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1)),
            temporal=_conv_bn_relu(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0)),
        )
    )


class SelfGating(nn.Module):
    """Feature gating of S3D-G: x (B, C, T, H, W) times sigmoid(fc(mean of x over
    T, H, W)), a per-sample, per-channel weight in (0, 1). `fc` is Linear(C, C)."""

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(num_channels, num_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return x * weights[:, :, None, None, None]


class MaxPool3dSame(nn.Module):
    """Max pool with TensorFlow's "SAME" padding (as in the original S3D-G): each of
    T, H, W of size n becomes ceil(n / stride); the padding, split as evenly as possible
    with the extra one after, never wins the max."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        dims = zip(x.shape[2:], self.kernel, self.stride, strict=True)
        for n, k, s in reversed(list(dims)):  # F.pad wants the last dim first
            total = max((math.ceil(n / s) - 1) * s + k - n, 0)
            pad += [total // 2, total - total // 2]
        if any(pad):
            x = F.pad(x, pad, value=float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride)


class MixedBlock(nn.Module):
    """Inception block of S3D-G: four branches concatenated along channels,

        branch 0: 1x1x1 conv (c0)
        branch 1: 1x1x1 conv (c1a) -> separable 3x3x3 conv (c1b)
        branch 2: 1x1x1 conv (c2a) -> separable 3x3x3 conv (c2b)
        branch 3: 3x3x3 max pool (stride 1, padding 1) -> 1x1x1 conv (c3)

    each conv followed by BN and ReLU and each branch by `SelfGating` (if `gating`).
    Keeps T, H, W; `out_channels` = c0 + c1b + c2b + c3.
    """

    def __init__(
        self,
        in_channels: int,
        c0: int,
        c1a: int,
        c1b: int,
        c2a: int,
        c2b: int,
        c3: int,
        gating: bool = True,
    ) -> None:
        super().__init__()

        def gate(c: int) -> nn.Module:
            return SelfGating(c) if gating else nn.Identity()

        self.branch0 = nn.Sequential(_conv_bn_relu(in_channels, c0), gate(c0))
        self.branch1 = nn.Sequential(
            _conv_bn_relu(in_channels, c1a), _sep_conv_bn_relu(c1a, c1b), gate(c1b)
        )
        self.branch2 = nn.Sequential(
            _conv_bn_relu(in_channels, c2a), _sep_conv_bn_relu(c2a, c2b), gate(c2b)
        )
        self.branch3 = nn.Sequential(
            nn.MaxPool3d(3, stride=1, padding=1), _conv_bn_relu(in_channels, c3), gate(c3)
        )
        self.out_channels = c0 + c1b + c2b + c3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        return torch.cat([branch(x) for branch in branches], dim=1)


# (c0, c1a, c1b, c2a, c2b, c3) of each mixed block at width 1.0, per stage.
_MIXED_3 = {"mixed_3b": (64, 96, 128, 16, 32, 32), "mixed_3c": (128, 128, 192, 32, 96, 64)}
_MIXED_4 = {
    "mixed_4b": (192, 96, 208, 16, 48, 64),
    "mixed_4c": (160, 112, 224, 24, 64, 64),
    "mixed_4d": (128, 128, 256, 24, 64, 64),
    "mixed_4e": (112, 144, 288, 32, 64, 64),
    "mixed_4f": (256, 160, 320, 32, 128, 128),
}
_MIXED_5 = {"mixed_5b": (256, 160, 320, 32, 128, 128), "mixed_5c": (384, 192, 384, 48, 128, 128)}


class S3DG(VideoBackbone):
    """S3D-G backbone, split into five stages (channels at width 1.0):

        stage 1: conv_1a 3 -> 64, (3,7,7) stride 2 padding (1,3,3), BN, ReLU (not
                 separable); maxpool_2a (1,3,3) stride (1,2,2)
        stage 2: conv_2b 1x1x1 64; conv_2c separable 3x3x3 192; gating_2c;
                 maxpool_3a (1,3,3) stride (1,2,2)
        stage 3: mixed_3b, mixed_3c (-> 480); maxpool_4a (3,3,3) stride 2
        stage 4: mixed_4b .. mixed_4f (-> 832); maxpool_5a (2,2,2) stride 2
        stage 5: mixed_5b, mixed_5c (-> 1024) + global average pool

    The max pools use TensorFlow "SAME" padding (size n -> ceil(n / stride)).
    `forward_features` "pool1".."pool4" are the outputs of stages 1..4, (C, T, H, W):

        (B, 3, 64, 224, 224): (64, 32, 56, 56), (192, 32, 28, 28), (480, 16, 14, 14),
                              (832, 8, 7, 7); stage 5 map (1024, 8, 7, 7)
        (B, 3, 16, 112, 112): (64, 8, 28, 28), (192, 8, 14, 14), (480, 4, 7, 7),
                              (832, 2, 4, 4); stage 5 map (1024, 2, 4, 4)

    and "pool5" is the (B, 1024) pooled vector. 9,125,072 parameters at width 1.0; the
    reference's 1024 -> 512 embedding fc, not part of the backbone, would add 524,800
    (9,649,872: the thesis's "9.6M"); without gating 7,900,064.

    Args:
        width: multiplier of every channel count (each branch rounded, at least 4).
        gating: gate the output of conv_2c and of every mixed-block branch (S3D-G);
            False gives plain S3D.
    """

    def __init__(self, width: float = 1.0, gating: bool = True) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return scale_channels(c, width)

        c1, c2 = ch(64), ch(192)
        stem = nn.Sequential(
            OrderedDict(
                conv_1a=_conv_bn_relu(3, c1, (3, 7, 7), (2, 2, 2), (1, 3, 3)),
                maxpool_2a=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            )
        )
        stage2 = nn.Sequential(
            OrderedDict(
                conv_2b=_conv_bn_relu(c1, c1),
                conv_2c=_sep_conv_bn_relu(c1, c2),
                gating_2c=SelfGating(c2) if gating else nn.Identity(),
                maxpool_3a=MaxPool3dSame((1, 3, 3), (1, 2, 2)),
            )
        )
        stages: list[nn.Module] = [stem, stage2]
        in_channels = c2
        pools: list[tuple[str, MaxPool3dSame] | None] = [
            ("maxpool_4a", MaxPool3dSame((3, 3, 3), (2, 2, 2))),
            ("maxpool_5a", MaxPool3dSame((2, 2, 2), (2, 2, 2))),
            None,
        ]
        for blocks, pool in zip((_MIXED_3, _MIXED_4, _MIXED_5), pools, strict=True):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for name, channels in blocks.items():
                c0, c1a, c1b, c2a, c2b, c3 = (ch(c) for c in channels)
                block = MixedBlock(in_channels, c0, c1a, c1b, c2a, c2b, c3, gating=gating)
                layers[name] = block
                in_channels = block.out_channels
            if pool is not None:
                layers[pool[0]] = pool[1]
            stages.append(nn.Sequential(layers))
        self.stages = nn.ModuleList(stages)
        self.out_dim = in_channels
        init_weights(self)


def s3dg(width: float = 1.0) -> S3DG:
    """S3D-G of the pace prediction chapter (video-pace / S3D_HowTo100M layout, no
    space-to-depth): 9,125,072 parameters at width 1.0."""
    return S3DG(width=width)
