"""Video backbones and heads (plain torch), and the backbone registry."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from rayssl.models.c3d import C3D, c3d_bn
from rayssl.models.heads import POOL_LAYERS, ClassifierHead, ProjectionHead, VideoBackbone
from rayssl.models.resnet3d import (
    CONV_IMPLS,
    Conv2Plus1d,
    ResNet3d,
    r2plus1d_vcop,
    r3d_vcop,
    set_conv_impl,
)
from rayssl.models.s3dg import S3DG, s3dg
from rayssl.models.torchvision_video import TORCHVISION_BACKBONES
from rayssl.models.vit import VideoViT, vit_b16, vit_l16, vit_s16, vit_tiny

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "c3d": c3d_bn,
    "r3d": r3d_vcop,
    "r21d": r2plus1d_vcop,
    "s3dg": s3dg,
    "vit_tiny": vit_tiny,
    "vit_s16": vit_s16,
    "vit_b16": vit_b16,
    "vit_l16": vit_l16,
}
BACKBONES.update(TORCHVISION_BACKBONES)  # r3d_18, mc3_18, r2plus1d_18, s3d (Kinetics baselines)


def build_backbone(name: str, width: float = 1.0, **options: Any) -> nn.Module:
    """Backbone `name` (a key of `BACKBONES`) with channel multiplier `width` and the
    builder's other keyword `options` (e.g. `drop_path` for the backbones whose builder
    takes it: `backbone_options`).

    The result maps clips (B, 3, T, H, W) to features (B, model.out_dim).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    unknown = sorted(set(options) - backbone_options(name))
    if unknown:
        raise ValueError(f"backbone {name!r} takes no option {unknown}")
    return BACKBONES[name](width=width, **options)


def backbone_options(name: str) -> set[str]:
    """The keyword options backbone `name`'s builder takes besides `width`."""
    params = inspect.signature(BACKBONES[name]).parameters
    return {p for p in params if p != "width"}


__all__ = [
    "BACKBONES",
    "CONV_IMPLS",
    "C3D",
    "POOL_LAYERS",
    "ClassifierHead",
    "Conv2Plus1d",
    "ProjectionHead",
    "ResNet3d",
    "S3DG",
    "VideoBackbone",
    "backbone_options",
    "VideoViT",
    "build_backbone",
    "c3d_bn",
    "r2plus1d_vcop",
    "r3d_vcop",
    "s3dg",
    "set_conv_impl",
]
