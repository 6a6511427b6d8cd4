"""C3D with batch normalisation, as in the VCOP and video-pace reference code."""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

from torch import nn

from rayssl.models.heads import VideoBackbone, init_weights, scale_channels


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3x3 conv (with bias, padding 1) -> BatchNorm3d -> ReLU."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _max_pool(kernel: tuple[int, int, int]) -> nn.MaxPool3d:
    """Non-overlapping max pool: kernel = stride, no padding."""
    return nn.MaxPool3d(kernel, stride=kernel)


class C3D(VideoBackbone):
    """C3D-BN backbone: 8 conv-BN-ReLU layers, 5 max pools, global average pool.

    Structure (channels at width 1.0; each conv is 3x3x3, bias, padding 1):

        stage 1: conv1a 64,              pool1 MaxPool3d k=s=(1,2,2)
        stage 2: conv2a 128,             pool2 MaxPool3d k=s=(2,2,2)
        stage 3: conv3a 256, conv3b 256, pool3 MaxPool3d k=s=(2,2,2)
        stage 4: conv4a 512, conv4b 512, pool4 MaxPool3d k=s=(2,2,2)
        stage 5: conv5a 512, conv5b 512, pool5 MaxPool3d k=s=(2,2,2) + global avg pool

    27,661,440 parameters at width 1.0. `forward_features` "pool1".."pool4" are the
    outputs of those max pools; "pool5" is the pooled (B, out_dim) vector. For a
    (B, 3, 16, 112, 112) clip pool1..pool4 are (B, C, T, H, W) with (T, H, W) =
    (16, 56, 56), (8, 28, 28), (4, 14, 14), (2, 7, 7); conv5b's output is (512, 2, 7, 7)
    and "pool5_vcop" (VCOP's retrieval feature) max-pools it by (1, 2, 2) to
    512 x 2 x 3 x 3 = 9,216 values. Inputs need T >= 16 and H, W >= 32.

    Args:
        width: multiplier of every channel count (rounded, at least 4).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4 = (scale_channels(c, width) for c in (64, 128, 256, 512))
        self.stages = nn.ModuleList(
            [
                nn.Sequential(OrderedDict(conv1a=_conv_bn_relu(3, c1), pool1=_max_pool((1, 2, 2)))),
                nn.Sequential(
                    OrderedDict(conv2a=_conv_bn_relu(c1, c2), pool2=_max_pool((2, 2, 2)))
                ),
                nn.Sequential(
                    OrderedDict(
                        conv3a=_conv_bn_relu(c2, c3),
                        conv3b=_conv_bn_relu(c3, c3),
                        pool3=_max_pool((2, 2, 2)),
                    )
                ),
                nn.Sequential(
                    OrderedDict(
                        conv4a=_conv_bn_relu(c3, c4),
                        conv4b=_conv_bn_relu(c4, c4),
                        pool4=_max_pool((2, 2, 2)),
                    )
                ),
                nn.Sequential(
                    OrderedDict(
                        conv5a=_conv_bn_relu(c4, c4),
                        conv5b=_conv_bn_relu(c4, c4),
                        pool5=_max_pool((2, 2, 2)),
                    )
                ),
            ]
        )
        self.out_dim = c4
        init_weights(self)

    def last_stage_parts(self) -> tuple[nn.Module, nn.Module | None]:
        """(conv5a + conv5b, pool5): VCOP's retrieval feature pools conv5b's output."""
        stage = cast(nn.Sequential, self.stages[-1])
        return stage[:-1], stage[-1]


def c3d_bn(width: float = 1.0) -> C3D:
    """C3D with BN of VCOP / video-pace (27,661,440 parameters at width 1.0)."""
    return C3D(width=width)
