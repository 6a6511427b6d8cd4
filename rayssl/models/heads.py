"""Heads on top of pooled backbone features, and the pieces every backbone shares.

Shared pieces: `scale_channels` (the `width` option), `init_weights` (the weight
initialisation of every model here) and `VideoBackbone` (five stages, global average
pooling, `forward` / `forward_features`).

The feature-layer interface every backbone offers (CNNs here, ViTs in `vit.py`), on
which the evaluations rely and nothing else:
  * `feature_layers: tuple[str, ...]`: the names of the outputs it can produce;
  * `forward_features(x, layers) -> {name: tensor}` for clips x (B, 3, T, H, W), in the
    order asked: a vector (B, D), a map (B, C, T', H', W') (averaged to a vector by the
    feature extraction) or a token map (B, N, D) (the attentive probe's input);
  * optionally `token_grid(clip_shape) -> (T', H', W')`: the grid of its token maps'
    N = T'H'W' tokens (raster order: time, then rows, then columns) for clips of
    `clip_shape` = (T, H, W), so they can be pooled to a coarser grid in space and time.
`check_feature_layers` refuses names a backbone does not have, listing the ones it has.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rayssl.vocabulary import CNN_FEATURE_LAYERS, POOL_LAYERS

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


def feature_layers_of(backbone: nn.Module) -> tuple[str, ...]:
    """The layer names `backbone` can produce (its `feature_layers`); ValueError for a
    module without the feature-layer interface."""
    layers = getattr(backbone, "feature_layers", None)
    if layers is None or not callable(getattr(backbone, "forward_features", None)):
        raise ValueError(
            f"backbone {type(backbone).__name__} has no feature layers (it needs "
            "`feature_layers` and `forward_features(x, layers)`)"
        )
    return tuple(layers)


def check_feature_layers(
    backbone: nn.Module,
    layers: Sequence[str],
    key: str = "layers",
    allow_empty: bool = False,
    name: str = "",
) -> None:
    """ValueError naming `key` when `layers` is empty (unless `allow_empty`) or names a
    layer `backbone` (called `name`, default its class) does not produce; the message
    lists the layers it has."""
    have = feature_layers_of(backbone)
    name = name or type(backbone).__name__
    if not layers and not allow_empty:
        raise ValueError(f"{key}: no layer named; backbone {name} has {list(have)}")
    bad = [x for x in layers if x not in have]
    if bad:
        raise ValueError(f"{key}: {bad} not a layer of backbone {name}; it has {list(have)}")


class VideoBackbone(nn.Module):
    """Base of the video backbones: five stages, then global average pooling.

    Subclasses set `self.stages` (an `nn.ModuleList` of exactly five modules) and
    `self.out_dim` (channels of the last stage). The output after stage i is
    "pool{i}" for i = 1..4, a (B, C_i, T_i, H_i, W_i) tensor; "pool5" is the last
    stage's output globally average-pooled to (B, out_dim), which is also what
    `forward` returns; "pool5_vcop" is the last stage's convolution output (before a
    pool the stage may end with, `last_stage_parts`) max-pooled by `VCOP_POOL` and
    flattened to (B, out_dim * T' * H' * W'); "pool5_map" is the last stage's output
    before global pooling (what "pool5" averages) as tokens, (B, T'H'W', out_dim).
    """

    stages: nn.ModuleList
    out_dim: int
    feature_layers: tuple[str, ...] = CNN_FEATURE_LAYERS

    def __init__(self) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool3d(1)
        self._token_grids: dict[tuple[int, ...], tuple[int, int, int]] = {}

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
        `layers` (a subset of `feature_layers`, in the order given). Stages after the
        deepest requested layer are not run."""
        check_feature_layers(self, layers, allow_empty=True)
        wanted = set(layers)
        outputs: dict[str, torch.Tensor] = {}
        for name, stage in zip(POOL_LAYERS[:4], self.stages[:4], strict=True):
            if wanted <= outputs.keys():
                break
            x = stage(x)
            if name in wanted:
                outputs[name] = x
        if wanted & {"pool5", "pool5_vcop", "pool5_map"}:
            convs, pool = self.last_stage_parts()
            x = convs(x)
            if "pool5_vcop" in wanted:
                vcop = F.max_pool3d(x, kernel_size=VCOP_POOL, stride=VCOP_POOL)
                outputs["pool5_vcop"] = torch.flatten(vcop, 1)
            x = pool(x) if pool is not None else x
            if "pool5_map" in wanted:
                outputs["pool5_map"] = x.flatten(2).transpose(1, 2)
            if "pool5" in wanted:
                outputs["pool5"] = torch.flatten(self.global_pool(x), 1)
        return {name: outputs[name] for name in layers}

    def token_grid(self, clip_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T', H', W') of "pool5_map" for clips of `clip_shape` = (T, H, W): its tokens
        are that grid in raster order. Found once per shape by a forward pass of a
        blank clip in eval mode (the running statistics are left alone)."""
        return map_grid(self, clip_shape, self._token_grids)


def map_grid(
    model: nn.Module, clip_shape: Sequence[int], cache: dict[tuple[int, ...], tuple[int, int, int]]
) -> tuple[int, int, int]:
    """(T', H', W') of `model.forward_map` for clips of `clip_shape` = (T, H, W), found once
    per shape (kept in `cache`) by a blank clip in eval mode (running statistics untouched)."""
    key = tuple(int(v) for v in clip_shape)
    if key not in cache:
        param = next(model.parameters())
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                x = torch.zeros(1, 3, *key, device=param.device, dtype=param.dtype)
                t, h, w = model.forward_map(x).shape[2:]  # type: ignore[operator]
        finally:
            model.train(was_training)
        cache[key] = (int(t), int(h), int(w))
    return cache[key]


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
