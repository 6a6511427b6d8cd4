"""3D ResNets of the VCOP / video-pace reference code: R3D and R(2+1)D.

Both share one layout (`ResNet3d`) and differ only in how a conv with kernel
(t, k, k) is built: a plain `nn.Conv3d` (R3D) or the factorised `Conv2Plus1d`
(R(2+1)D).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from rayssl.models.heads import VideoBackbone, init_weights, scale_channels

Triple = tuple[int, int, int]
ConvBuilder = Callable[[int, int, Triple, Triple, Triple], nn.Module]
"""(in_channels, out_channels, kernel, stride, padding) -> a bias-free conv module."""


def conv3d(
    in_channels: int, out_channels: int, kernel: Triple, stride: Triple, padding: Triple
) -> nn.Conv3d:
    """Plain bias-free 3D conv (the R3D conv)."""
    return nn.Conv3d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)


CONV_IMPLS = ("conv3d", "conv2d")
"""How `Conv2Plus1d` runs its two convs (same weights, same result up to float rounding):

- "conv3d": two `nn.Conv3d` calls, (1, k, k) then (t, 1, 1), as the reference code;
- "conv2d": the spatial conv as a 2D conv over the B*T frames and the temporal conv as a
  (t, 1) 2D conv over (T, H*W), on views of the same memory when the input is
  channels_last_3d (no copies), so they run as 2D kernels, which cuDNN and oneDNN tune
  far more than their 3D ones (measured in benchmarks/train_throughput.py).
"""


class Conv2Plus1d(nn.Sequential):
    """A (t, k, k) conv factorised as in R(2+1)D: spatial (1, k, k) conv with stride
    (1, s, s) -> BN -> ReLU -> temporal (t, 1, 1) conv with stride (s_t, 1, 1), both
    bias-free. The middle width keeps the parameter count of the full conv:
    floor(t*k*k*Cin*Cout / (k*k*Cin + t*Cout)) (at least 1), rounded up to a multiple
    of `mid_multiple` (1 = the reference code's width).

    The parameters are the two `nn.Conv3d` modules' whatever `impl` (one of
    `CONV_IMPLS`, switched with `set_conv_impl`) runs them, so checkpoints do not
    depend on it."""

    impl: str = "conv3d"

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple,
        stride: Triple,
        padding: Triple,
        mid_multiple: int = 1,
    ) -> None:
        t, kh, kw = kernel
        mid_channels = max(
            1,
            (t * kh * kw * in_channels * out_channels)
            // (kh * kw * in_channels + t * out_channels),
        )
        mid_channels = -(-mid_channels // mid_multiple) * mid_multiple
        super().__init__()
        self.spatial = nn.Conv3d(
            in_channels,
            mid_channels,
            (1, kh, kw),
            stride=(1, stride[1], stride[2]),
            padding=(0, padding[1], padding[2]),
            bias=False,
        )
        self.bn = nn.BatchNorm3d(mid_channels)
        self.relu = nn.ReLU(inplace=True)
        self.temporal = nn.Conv3d(
            mid_channels,
            out_channels,
            (t, 1, 1),
            stride=(stride[0], 1, 1),
            padding=(padding[0], 0, 0),
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, T, H, W) -> (B, Cout, T', H', W')."""
        if self.impl == "conv3d":
            return super().forward(x)
        return self.temporal_2d(self.relu(self.bn(self.spatial_2d(x))))

    def spatial_2d(self, x: torch.Tensor) -> torch.Tensor:
        """The (1, k, k) conv as a 2D conv over the B*T frames (B*T, Cin, H, W)."""
        b, c, t, h, w = x.shape
        conv = self.spatial
        layout = _layout_2d(x)
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # a view when channels_last_3d
        y = _conv2d(
            frames.contiguous(memory_format=layout),
            conv.weight.squeeze(2),
            stride=conv.stride[1:],
            padding=conv.padding[1:],  # type: ignore[arg-type]
        )
        return y.view(b, t, *y.shape[1:]).transpose(1, 2)

    def temporal_2d(self, x: torch.Tensor) -> torch.Tensor:
        """The (t, 1, 1) conv as a (t, 1) 2D conv over (B, Cmid, T, H*W)."""
        b, c, t, h, w = x.shape
        conv = self.temporal
        layout = _layout_2d(x)
        y = _conv2d(
            x.reshape(b, c, t, h * w).contiguous(memory_format=layout),  # a view when CL
            conv.weight.squeeze(-1),
            stride=(conv.stride[0], 1),
            padding=(conv.padding[0], 0),  # type: ignore[arg-type]
        )
        return y.view(b, y.shape[1], y.shape[2], h, w)


def _layout_2d(x: torch.Tensor) -> torch.memory_format:
    """The 2D memory format whose views of the 5D `x` need no copy: channels_last for a
    channels_last_3d `x` (so is a clip straight from `clip_to_input`), else contiguous."""
    if x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last
    return torch.contiguous_format


def _conv2d(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, ...], padding: tuple[int, ...]
) -> torch.Tensor:
    """F.conv2d, except a strided 1x1 conv of a channels_last CPU tensor, whose backward
    crashes the process in torch 2.13's CPU kernels (heap corruption: a segfault or a
    glibc abort); there it runs as the same 1x1 conv on the strided subsample."""
    if (
        x.device.type == "cpu"
        and weight.shape[2:] == (1, 1)
        and any(s > 1 for s in stride)
        and x.is_contiguous(memory_format=torch.channels_last)
        and not any(padding)
    ):
        sub = x[:, :, :: stride[0], :: stride[1]].contiguous(memory_format=torch.channels_last)
        return nn.functional.conv2d(sub, weight)
    return nn.functional.conv2d(x, weight, stride=stride, padding=padding)


def set_conv_impl(module: nn.Module, impl: str) -> int:
    """Run every `Conv2Plus1d` in `module` with `impl` (one of `CONV_IMPLS`); returns
    how many there are (0 for backbones without factorised convs)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv impl {impl!r}; one of {list(CONV_IMPLS)}")
    convs = [m for m in module.modules() if isinstance(m, Conv2Plus1d)]
    for m in convs:
        m.impl = impl
    return len(convs)


class BasicBlock(nn.Module):
    """Residual block: conv(3x3x3, stride) -> BN -> ReLU -> conv(3x3x3) -> BN, plus the
    shortcut, then ReLU. Where the shape changes the shortcut is conv(1x1x1, stride)
    -> BN, with `conv` building every conv (including the shortcut one)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, conv: ConvBuilder) -> None:
        super().__init__()
        strides = (stride, stride, stride)
        self.conv1 = conv(in_channels, out_channels, (3, 3, 3), strides, (1, 1, 1))
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv(in_channels, out_channels, (1, 1, 1), strides, (0, 0, 0)),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, T, H, W) -> (B, Cout, T/s, H/s, W/s)."""
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet3d(VideoBackbone):
    """3D ResNet of VCOP / video-pace, with every conv built by `conv`.

    Layout (channels at width 1.0):

        stem:    conv(3 -> 64, kernel (3,7,7), stride (1,2,2), padding (1,3,3)) -> BN -> ReLU
        stage 1: layer_sizes[0] BasicBlocks, 64 channels, stride 1
        stage 2: layer_sizes[1] BasicBlocks, 128 channels, first block stride 2 (T, H, W)
        stage 3: layer_sizes[2] BasicBlocks, 256 channels, first block stride 2
        stage 4: layer_sizes[3] BasicBlocks, 512 channels, first block stride 2
        global average pool -> (B, 512)

    There is no max pool after the stem. `forward_features`: "pool1" is the stem
    output, "pool2".."pool4" the outputs of stages 1..3, "pool5" the globally pooled
    output of stage 4, (B, out_dim). For a (B, 3, 16, 112, 112) clip pool1..pool4 have
    (T, H, W) = (16, 56, 56), (16, 56, 56), (8, 28, 28), (4, 14, 14).

    Args:
        conv: builds each conv; `conv3d` (R3D) or `Conv2Plus1d` (R(2+1)D).
        layer_sizes: blocks per stage; (1, 1, 1, 1) is the 10-layer net the VCOP and
            pace papers call "R3D-18".
        width: multiplier of every channel count (rounded, at least 4).
    """

    def __init__(
        self, conv: ConvBuilder, layer_sizes: Sequence[int] = (1, 1, 1, 1), width: float = 1.0
    ) -> None:
        super().__init__()
        if len(layer_sizes) != 4:
            raise ValueError(f"layer_sizes needs 4 entries, got {layer_sizes}")
        channels = [scale_channels(c, width) for c in (64, 128, 256, 512)]
        stem = nn.Sequential(
            conv(3, channels[0], (3, 7, 7), (1, 2, 2), (1, 3, 3)),
            nn.BatchNorm3d(channels[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = [stem]
        in_channels = channels[0]
        for i, (num_blocks, out_channels) in enumerate(zip(layer_sizes, channels, strict=True)):
            blocks = []
            for j in range(num_blocks):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride, conv))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_dim = channels[-1]
        init_weights(self)


def r3d_vcop(width: float = 1.0) -> ResNet3d:
    """R3D ("R3D-18") of VCOP / video-pace: `ResNet3d` with plain 3D convs and one
    block per stage. 14,361,792 parameters at width 1.0."""
    return ResNet3d(conv3d, layer_sizes=(1, 1, 1, 1), width=width)


def r2plus1d_vcop(width: float = 1.0, mid_multiple: int = 1) -> ResNet3d:
    """R(2+1)D of VCOP / video-pace: `ResNet3d` with one block per stage and EVERY
    conv factorised by `Conv2Plus1d` (spatial -> BN -> ReLU -> temporal), namely:

    - stem: (1,7,7) stride (1,2,2), 3 -> 83 -> BN -> ReLU -> (3,1,1) -> 64, then BN, ReLU;
    - block convs: (1,3,3) -> BN -> ReLU -> (3,1,1), then the block's own BN;
    - downsample shortcut: (1,1,1) conv stride (1,2,2) -> BN -> ReLU -> (1,1,1) conv
      stride (2,1,1), then the shortcut BN (middle widths 42, 85, 170).

    Every factorised conv's inner BN counts: 14,365,303 parameters at width 1.0 (with a
    plain 1x1x1 shortcut conv instead it would be 14,365,477).

    `mid_multiple` > 1 rounds every middle width up to a multiple of it (8: what bf16
    tensor-core kernels want); that is a different, slightly larger network, offered to
    measure what the reference widths (83, 42, 230, ...) cost, not the thesis's model.
    """
    conv: ConvBuilder = Conv2Plus1d
    if mid_multiple != 1:
        conv = functools.partial(Conv2Plus1d, mid_multiple=mid_multiple)
    return ResNet3d(conv, layer_sizes=(1, 1, 1, 1), width=width)
