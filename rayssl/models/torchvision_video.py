"""torchvision's Kinetics-400 video models as rayssl backbones: r3d_18, mc3_18,
r2plus1d_18 and s3d, the supervised baselines self-supervised models are compared with.

The modules here have torchvision's layout (the same state-dict keys and shapes as
`torchvision.models.video.*`, checked against keys recorded from torchvision 0.28 in
tests/models/torchvision_video_reference.json), without importing torchvision: a
Kinetics-400 ``.pth`` file torchvision publishes loads into them with
``torch.load(weights_only=True)`` after its classifier (``fc.*`` / ``classifier.*``) is
dropped (`from_torchvision_state`). Nothing is downloaded: the user gives the file,
``--checkpoint torchvision:r2plus1d_18=/path/r2plus1d_18-91a641e6.pth``.

Feature layers (`feature_layers`): pool1 = the stem (R3D family) or the first separable
conv (S3D), pool2..pool4 = the outputs of the next three stages, pool5 = the last stage
globally average-pooled, (B, 512) for the ResNets and (B, 1024) for S3D, pool5_vcop = that
stage's output max-pooled (1, 2, 2) and flattened (as rayssl's backbones). `width` scales
every channel count as for rayssl's own backbones (1.0 = torchvision's model, the only
width its weights fit).

These models expect torchvision's Kinetics normalisation (`KINETICS_MEAN`,
`KINETICS_STD`), exposed as `input_mean` / `input_std` and written into an export's
settings.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn

from rayssl.models.heads import VCOP_POOL, map_grid, scale_channels
from rayssl.vocabulary import CNN_FEATURE_LAYERS

#: torchvision's Kinetics-400 input normalisation (RGB, after scaling to [0, 1]).
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
FEATURE_LAYERS = CNN_FEATURE_LAYERS  # pool1..pool5, pool5_vcop, pool5_map: as rayssl's CNNs
#: torchvision's classifier keys, dropped when its state dict becomes a backbone's.
CLASSIFIER_PREFIXES = ("fc.", "classifier.")


class _TorchvisionBackbone(nn.Module, abc.ABC):
    """Five named stages (`_stage_names`, attributes with torchvision's names), then a
    global average pool: `forward` -> (B, out_dim); `forward_features` -> pool1..pool5."""

    feature_layers: tuple[str, ...] = FEATURE_LAYERS
    input_mean = KINETICS_MEAN
    input_std = KINETICS_STD
    out_dim: int

    @abc.abstractmethod
    def _stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The five stages in order (each subclass names its own modules)."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output before global pooling, (B, out_dim, T', H', W')."""
        for stage in self._stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_dim) of clips x (B, 3, T, H, W)."""
        return torch.flatten(nn.functional.adaptive_avg_pool3d(self.forward_map(x), 1), 1)

    @property
    def stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The five stages in order (as `VideoBackbone.stages`; a property, so the state
        dict keeps torchvision's keys only)."""
        return self._stages()

    def last_stage_parts(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], None]:
        """The last stage as (its convolutions, no closing pool), as `VideoBackbone`."""
        return self._stages()[-1], None

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ("pool5",)
    ) -> dict[str, torch.Tensor]:
        """Outputs of clips x keyed by the names in `layers` (of `feature_layers`, as
        `VideoBackbone.forward_features`: pool5_vcop is the last stage's output max-pooled
        by `VCOP_POOL` and flattened); stages after the deepest requested one are not run."""
        unknown = [name for name in layers if name not in self.feature_layers]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; valid: {list(self.feature_layers)}")
        wanted = set(layers)
        outputs: dict[str, torch.Tensor] = {}
        for name, stage in zip(FEATURE_LAYERS[:5], self._stages(), strict=True):
            if wanted <= outputs.keys():
                break
            x = stage(x)
            if name in wanted:
                outputs[name] = x
        if "pool5_vcop" in wanted:
            vcop = nn.functional.max_pool3d(x, kernel_size=VCOP_POOL, stride=VCOP_POOL)
            outputs["pool5_vcop"] = torch.flatten(vcop, 1)
        if "pool5_map" in wanted:
            outputs["pool5_map"] = x.flatten(2).transpose(1, 2)
        if "pool5" in wanted:
            outputs["pool5"] = torch.flatten(nn.functional.adaptive_avg_pool3d(x, 1), 1)
        return {name: outputs[name] for name in layers}

    def token_grid(self, clip_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T', H', W') of "pool5_map" for clips of `clip_shape` = (T, H, W), found once per
        shape by a blank clip in eval mode (as `VideoBackbone.token_grid`)."""
        return map_grid(self, clip_shape, self.__dict__.setdefault("_token_grids", {}))


# ------------------------------------------------------------------------- VideoResNet


def _conv3d_simple(cin: int, cout: int, mid: int, stride: int = 1) -> nn.Module:
    return nn.Conv3d(cin, cout, (3, 3, 3), stride=stride, padding=1, bias=False)


def _conv3d_no_temporal(cin: int, cout: int, mid: int, stride: int = 1) -> nn.Module:
    return nn.Conv3d(
        cin, cout, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
    )


def _conv2plus1d(cin: int, cout: int, mid: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(cin, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False),
    )


#: conv builder -> its downsample stride for a block stride s (torchvision's
#: `get_downsample_stride`): spatial-only convs keep the time axis.
_TEMPORAL_STRIDE = {_conv3d_simple: True, _conv2plus1d: True, _conv3d_no_temporal: False}


class _BasicBlock(nn.Module):
    def __init__(
        self, cin: int, planes: int, conv: Callable[..., nn.Module], stride: int = 1
    ) -> None:
        super().__init__()
        mid = (cin * planes * 3 * 3 * 3) // (cin * 3 * 3 + 3 * planes)
        self.conv1 = nn.Sequential(
            conv(cin, planes, mid, stride), nn.BatchNorm3d(planes), nn.ReLU(inplace=True)
        )
        self.conv2 = nn.Sequential(conv(planes, planes, mid), nn.BatchNorm3d(planes))
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            t = stride if _TEMPORAL_STRIDE[conv] else 1
            self.downsample = nn.Sequential(
                nn.Conv3d(cin, planes, 1, stride=(t, stride, stride), bias=False),
                nn.BatchNorm3d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + residual)


class VideoResNet18(_TorchvisionBackbone):
    """torchvision's `VideoResNet` with BasicBlocks [2, 2, 2, 2], without its `fc`."""

    def __init__(
        self, convs: Sequence[Callable[..., nn.Module]], stem: str, width: float = 1.0
    ) -> None:
        super().__init__()
        c = partial(scale_channels, width=width)
        if stem == "r2plus1d":
            self.stem = nn.Sequential(
                nn.Conv3d(3, c(45), (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
                nn.BatchNorm3d(c(45)),
                nn.ReLU(inplace=True),
                nn.Conv3d(c(45), c(64), (3, 1, 1), stride=1, padding=(1, 0, 0), bias=False),
                nn.BatchNorm3d(c(64)),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv3d(3, c(64), (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                nn.BatchNorm3d(c(64)),
                nn.ReLU(inplace=True),
            )
        cin = c(64)
        layers = []
        for i, (planes, conv) in enumerate(zip((64, 128, 256, 512), convs, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = [
                _BasicBlock(cin, c(planes), conv, stride),
                _BasicBlock(c(planes), c(planes), conv),
            ]
            layers.append(nn.Sequential(*blocks))
            cin = c(planes)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_dim = cin
        _init_like_torchvision(self)

    def _stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _init_like_torchvision(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def r3d_18(width: float = 1.0) -> VideoResNet18:
    """torchvision's r3d_18 (Tran et al. 2018): 3x3x3 convs throughout."""
    return VideoResNet18([_conv3d_simple] * 4, "basic", width)


def mc3_18(width: float = 1.0) -> VideoResNet18:
    """torchvision's mc3_18: 3D convs in layer1, spatial-only (1x3x3) in layers 2-4."""
    return VideoResNet18([_conv3d_simple] + [_conv3d_no_temporal] * 3, "basic", width)


def r2plus1d_18(width: float = 1.0) -> VideoResNet18:
    """torchvision's r2plus1d_18: every 3x3x3 conv factorised as (1x3x3, 3x1x1)."""
    return VideoResNet18([_conv2plus1d] * 4, "r2plus1d", width)


# ------------------------------------------------------------------------------- S3D


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=0.001, momentum=0.001)


def _cna(cin: int, cout: int, kernel, stride=1, padding=None) -> nn.Sequential:
    """torchvision's Conv3dNormActivation: conv (no bias), BN, ReLU."""
    if padding is None:
        padding = (
            (kernel - 1) // 2 if isinstance(kernel, int) else tuple((k - 1) // 2 for k in kernel)
        )
    return nn.Sequential(
        nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), _bn(cout), nn.ReLU(inplace=True)
    )


def _sep(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
    """torchvision's TemporalSeparableConv: (1,k,k) then (k,1,1)."""
    return nn.Sequential(
        _cna(cin, cout, (1, k, k), (1, s, s), (0, p, p)),
        _cna(cout, cout, (k, 1, 1), (s, 1, 1), (p, 0, 0)),
    )


class _SepInception(nn.Module):
    def __init__(self, cin: int, b0: int, b1m: int, b1: int, b2m: int, b2: int, b3: int) -> None:
        super().__init__()
        self.branch0 = _cna(cin, b0, 1)
        self.branch1 = nn.Sequential(_cna(cin, b1m, 1), _sep(b1m, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(_cna(cin, b2m, 1), _sep(b2m, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), _cna(cin, b3, 1))
        self.out_channels = b0 + b1 + b2 + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


#: torchvision S3D's inception blocks (b0, b1 mid, b1, b2 mid, b2, b3), by stage.
_S3D_BLOCKS = {
    3: [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)],
    4: [
        (192, 96, 208, 16, 48, 64),
        (160, 112, 224, 24, 64, 64),
        (128, 128, 256, 24, 64, 64),
        (112, 144, 288, 32, 64, 64),
        (256, 160, 320, 32, 128, 128),
    ],
    5: [(256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)],
}


class S3D(_TorchvisionBackbone):
    """torchvision's S3D (`features` with the same indices), without its classifier and
    its fixed (2, 7, 7) average pool (a global pool instead, any clip size)."""

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = partial(scale_channels, width=width)
        mods: list[nn.Module] = [
            _sep(3, c(64), 7, 2, 3),
            nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            _cna(c(64), c(64), 1),
            _sep(c(64), c(192), 3, 1, 1),
        ]
        cin = c(192)
        pools = {
            3: nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            4: nn.MaxPool3d(3, stride=2, padding=1),
            5: nn.MaxPool3d(2, stride=2, padding=0),
        }
        self.bounds = [1, 4]  # features[:1] = pool1, [1:4] = pool2, then one per stage
        for stage in (3, 4, 5):
            mods.append(pools[stage])
            for b in _S3D_BLOCKS[stage]:
                block = _SepInception(cin, *(c(v) for v in b))
                mods.append(block)
                cin = block.out_channels
            self.bounds.append(len(mods))
        self.features = nn.Sequential(*mods)
        self.out_dim = cin

    def _stages(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        edges = [0, *self.bounds]
        return [self.features[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]


def s3d(width: float = 1.0) -> S3D:
    """torchvision's s3d (Xie et al. 2018)."""
    return S3D(width)


#: Registry entries (`rayssl.models.BACKBONES`), by torchvision's names.
TORCHVISION_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "r3d_18": r3d_18,
    "mc3_18": mc3_18,
    "r2plus1d_18": r2plus1d_18,
    "s3d": s3d,
}


def from_torchvision_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision video model's state dict as the backbone's: the classifier dropped."""
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}
