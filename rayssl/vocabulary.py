"""The names a config may choose: backbones, pretexts, feature layers, pacings.

Stdlib only, so the models (which run where only torch is installed) and the config share
them. Each registry is keyed by these names (`rayssl.models.BACKBONES`,
`rayssl.pretext.PRETEXTS`); tests/test_config.py checks that the two agree.
"""

from __future__ import annotations

BACKBONE_NAMES: tuple[str, ...] = ("c3d", "r3d", "r21d", "s3dg")
#: The `VideoBackbone` CNNs: their feature layers are `CNN_FEATURE_LAYERS`, known here
#: without building them (the config checks `monitor.layer` against them at load time).
CNN_BACKBONE_NAMES = ("c3d", "r3d", "r21d", "s3dg")
#: Vision Transformers on transformers' VideoMAE classes (`rayssl.models.vit`).
VIT_BACKBONE_NAMES = ("vit_tiny", "vit_s16", "vit_b16", "vit_l16")
#: torchvision's video models in its layout (`rayssl.models.torchvision_video`): the
#: supervised Kinetics-400 baselines, loaded from the user's own weights file.
TORCHVISION_BACKBONE_NAMES = ("r3d_18", "mc3_18", "r2plus1d_18", "s3d")
BACKBONE_NAMES = BACKBONE_NAMES + VIT_BACKBONE_NAMES + TORCHVISION_BACKBONE_NAMES
PRETEXT_NAMES = (
    "multitask",
    "pace",
    "pace_contrastive",
    "statistics",
    "supervised",
    "videomae",
    "vjepa",
)
#: The pretexts whose targets come from any clip's pixels (`Pretext.labels_any_clip`): in
#: a multitask run they label the clips the first task plans.
CLIP_LABELLING_PRETEXTS = ("statistics",)
#: The pacing functions `rayssl.train.curriculum.stage_at` knows.
PACINGS = ("single_step", "fixed_exp", "varied_exp")

POOL_LAYERS = ("pool1", "pool2", "pool3", "pool4", "pool5", "pool5_vcop")
"""Names of the intermediate outputs of the CNN backbones (`VideoBackbone.forward_features`):
"pool1".."pool4" stage outputs, "pool5" the global average of the last stage, and
"pool5_vcop" the retrieval feature of the VCOP code (Xu et al. 2019, whose retrieval
protocol the thesis's retrieval tables follow): the last stage's convolution output
max-pooled by (1, 2, 2) with stride (1, 2, 2) and flattened (9,216-d for C3D, R3D and
R(2+1)D at 16x112x112: 512 x 2 x 3 x 3).

Every backbone names its own layers (`feature_layers`, the feature-layer interface of
`rayssl.models.heads`): these for the CNNs plus "pool5_map"; a ViT has "block<i>" and
"tokens". A config's layer names are checked against the chosen backbone's list before
anything is extracted (`rayssl.models.heads.check_feature_layers`)."""

CNN_FEATURE_LAYERS = (*POOL_LAYERS, "pool5_map")
"""The layers of every `VideoBackbone`: `POOL_LAYERS` and "pool5_map", the last stage's
output before global pooling as (B, T'H'W', C) tokens (for the attentive probe)."""

TOKEN_LAYERS = ("tokens", "pool5_map")
"""Layers that return token maps (B, N, D) rather than vectors, in the order the
attentive probe picks its default from: a ViT's last-block tokens, a CNN's pool5 map."""
