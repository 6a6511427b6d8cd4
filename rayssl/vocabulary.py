"""The names a config may choose: backbones, pretexts, feature layers, pacings.

Stdlib only, so the models (which run where only torch is installed) and the config share
them. Each registry is keyed by these names (`rayssl.models.BACKBONES`,
`rayssl.pretext.PRETEXTS`); tests/test_config.py checks that the two agree.
"""

from __future__ import annotations

BACKBONE_NAMES = ("c3d", "r3d", "r21d", "s3dg", "vit_tiny", "vit_s16", "vit_b16", "vit_l16")
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
"""Names of the intermediate outputs `VideoBackbone.forward_features` can return:
"pool1".."pool4" stage outputs, "pool5" the global average of the last stage, and
"pool5_vcop" the retrieval feature of the VCOP code (Xu et al. 2019, whose retrieval
protocol the thesis's retrieval tables follow): the last stage's convolution output
max-pooled by (1, 2, 2) with stride (1, 2, 2) and flattened (9,216-d for C3D, R3D and
R(2+1)D at 16x112x112: 512 x 2 x 3 x 3)."""
