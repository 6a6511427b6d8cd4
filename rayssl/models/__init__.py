"""Video backbones and heads (plain torch), and the backbone registry."""

from __future__ import annotations

from collections.abc import Callable

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


def build_backbone(name: str, width: float = 1.0) -> nn.Module:
    """Backbone `name` (a key of `BACKBONES`) with channel multiplier `width`.

    The result maps clips (B, 3, T, H, W) to features (B, model.out_dim).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[name](width=width)


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
    "VideoViT",
    "build_backbone",
    "c3d_bn",
    "r2plus1d_vcop",
    "r3d_vcop",
    "s3dg",
    "set_conv_impl",
]
