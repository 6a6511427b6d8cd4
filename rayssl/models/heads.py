"""Heads on top of pooled backbone features, and the pieces every backbone shares.

Shared pieces: `scale_channels` (the `width` option), `init_weights` (the weight
initialisation of every model here) and `VideoBackbone` (five stages, global average
pooling, `forward` / `forward_features`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.vocabulary import POOL_LAYERS

#: The clips' per-channel normalisation after scaling to [0, 1] (the thesis's reference
#: code): every backbone here is trained and evaluated on (x / 255 - MEAN) / STD.
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)

#: Kernel (= stride) of VCOP's max pool on the last convolution output, (T, H, W).
VCOP_POOL = (1, 2, 2)


def scale_channels(num_channels: int, width: float) -> int:
    """Channel count `num_channels` scaled by `width`, rounded, never below 4."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(4, round(num_channels * width))


def init_weights(module: nn.Module) -> None:
    """Initialise `module` in place: Kaiming-normal convs (fan_out, ReLU), zero conv
    biases, BatchNorm weight 1 / bias 0. Linear layers keep PyTorch's default."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class VideoBackbone(nn.Module):
    """Base of the video backbones: five stages, then global average pooling.

    Subclasses set `self.stages` (an `nn.ModuleList` of exactly five modules) and
    `self.out_dim` (channels of the last stage). The output after stage i is
    "pool{i}" for i = 1..4, a (B, C_i, T_i, H_i, W_i) tensor; "pool5" is the last
    stage's output globally average-pooled to (B, out_dim), which is also what
    `forward` returns; "pool5_vcop" is the last stage's convolution output (before a
    pool the stage may end with, `last_stage_parts`) max-pooled by `VCOP_POOL` and
    flattened to (B, out_dim * T' * H' * W').
    """

    stages: nn.ModuleList
    out_dim: int

    def __init__(self) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool3d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, out_dim) of clips x (B, 3, T, H, W)."""
        for stage in self.stages:
            x = stage(x)
        return torch.flatten(self.global_pool(x), 1)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output before global pooling, (B, out_dim, T', H', W'), for
        heads that need to know where things happen (the statistics pretext)."""
        for stage in self.stages:
            x = stage(x)
        return x

    def last_stage_parts(self) -> tuple[nn.Module, nn.Module | None]:
        """The last stage as (its convolutions, the pool it ends with or None)."""
        return self.stages[-1], None

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ("pool5",)
    ) -> dict[str, torch.Tensor]:
        """Intermediate outputs of clips x (B, 3, T, H, W), keyed by the names in
        `layers` (a subset of `POOL_LAYERS`, in the order given). Stages after the
        deepest requested layer are not run."""
        unknown = [name for name in layers if name not in POOL_LAYERS]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; valid: {list(POOL_LAYERS)}")
        wanted = set(layers)
        outputs: dict[str, torch.Tensor] = {}
        for name, stage in zip(POOL_LAYERS[:4], self.stages[:4], strict=True):
            if wanted <= outputs.keys():
                break
            x = stage(x)
            if name in wanted:
                outputs[name] = x
        if wanted & {"pool5", "pool5_vcop"}:
            convs, pool = self.last_stage_parts()
            x = convs(x)
            if "pool5_vcop" in wanted:
                vcop = F.max_pool3d(x, kernel_size=VCOP_POOL, stride=VCOP_POOL)
                outputs["pool5_vcop"] = torch.flatten(vcop, 1)
            if "pool5" in wanted:
                x = pool(x) if pool is not None else x
                outputs["pool5"] = torch.flatten(self.global_pool(x), 1)
        return {name: outputs[name] for name in layers}


class ClassifierHead(nn.Module):
    """Dropout then a linear layer: features (B, in_dim) -> logits (B, num_classes)."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_dim, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of features (B, in_dim)."""
        return self.fc(self.dropout(features))


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Two hidden layers (the thesis's fc6/fc7) then the output layer; hidden_dim 0 = one
    linear layer."""
    if hidden_dim == 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden_dim, out_dim),
    )


class TwoBranchHead(nn.Module):
    """The statistics pretext's head (thesis Fig. 2.7): the backbone's last feature map
    (B, C, T, H, W) is average-pooled to (B, C, 1, g, g) (g = `grid`; 0 = global pool,
    (B, C)), flattened, and fed to two branches of fully connected layers, one per
    label group: returns ((B, out_a), (B, out_b))."""

    def __init__(
        self,
        in_channels: int,
        out_a: int,
        out_b: int,
        hidden_dim: int = 2048,
        grid: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d((1, grid, grid) if grid else 1)
        in_dim = in_channels * max(grid, 1) ** 2
        self.branch_a = _mlp(in_dim, hidden_dim, out_a, dropout)
        self.branch_b = _mlp(in_dim, hidden_dim, out_b, dropout)

    def forward(self, feature_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.flatten(self.pool(feature_map), 1)
        return self.branch_a(x), self.branch_b(x)


class ProjectionHead(nn.Module):
    """Nonlinear projection for contrastive learning: linear -> BN -> ReLU -> linear,
    features (B, in_dim) -> embeddings (B, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
        init_weights(self)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, out_dim) of features (B, in_dim)."""
        return self.net(features)
