"""Typed configuration: dataclasses, YAML files, and `key=value` dotted overrides.

One config object is loaded once and validated strictly: an unknown key, a value of
the wrong type or a value out of range is a `ConfigError` that names the dotted key
and what was expected. YAML only overrides the dataclass defaults.

    cfg = load_config("configs/debug.yaml", ["train.num_workers=2", "data.paces=[1,2]"])
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast, get_args, get_origin, get_type_hints

import numpy as np
import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from rayssl.vocabulary import (
    BACKBONE_NAMES,
    CLIP_LABELLING_PRETEXTS,
    CNN_BACKBONE_NAMES,
    PACINGS,
    POOL_LAYERS,
    PRETEXT_NAMES,
)


class ConfigError(ValueError):
    """A bad config: names the key and what was expected."""


# --------------------------------------------------------------------------- vocabulary
# The names a config may use are in `rayssl.vocabulary` (stdlib only, so the models import
# them without the config's dependencies); config.py imports none of the modules it
# configures, and tests/test_config.py checks that their registries offer those names.

_EXP_PACINGS = ("fixed_exp", "varied_exp")


@dataclass(frozen=True)
class ClipSpec:
    """Evaluation clip positions: `uniform` (num_clips uniformly spaced clips of
    clip_len frames, `eval_clip_starts`; uniform:1 is the centre clip; the retrieval /
    fine-tuning test protocol) or `sliding` (clip_len
    frames every clip_len - overlap frames; the dynamic-scene and ASLAN protocol)."""

    kind: str  # "uniform" | "sliding"
    num_clips: int = 0  # uniform
    clip_len: int = 0  # sliding: frames per clip (uniform uses the run's clip_len)
    overlap: int = 0  # sliding

    def __str__(self) -> str:
        if self.kind == "uniform":
            return f"uniform:{self.num_clips}"
        return f"sliding:{self.clip_len}:{self.overlap}"


def parse_clip_spec(text: str) -> ClipSpec:
    """'uniform:10' or 'sliding:16:8' -> ClipSpec; ValueError explains the format."""
    parts = str(text).strip().split(":")
    try:
        if parts[0] == "uniform" and len(parts) == 2 and int(parts[1]) >= 1:
            return ClipSpec("uniform", num_clips=int(parts[1]))
        if parts[0] == "sliding" and len(parts) == 3:
            length, overlap = int(parts[1]), int(parts[2])
            if length >= 1 and 0 <= overlap < length:
                return ClipSpec("sliding", clip_len=length, overlap=overlap)
    except ValueError:
        pass
    raise ValueError(
        f"bad clip spec {text!r}: expected uniform:N (N >= 1) or sliding:L:O (0 <= O < L)"
    )


def check_tasks(tasks: list[str]) -> None:
    """ValueError unless the first task plans clips and the others label any clip."""
    # the masked pretexts run the encoder on their own token subsets: not combinable
    alone = ("multitask", "supervised", "videomae", "vjepa")
    unknown = [t for t in tasks if t not in PRETEXT_NAMES or t in alone]
    if unknown:
        choices = sorted(set(PRETEXT_NAMES) - set(alone))
        raise ValueError(f"unknown or unsupported tasks {unknown}; choose among {choices}")
    first, *rest = tasks
    if first in CLIP_LABELLING_PRETEXTS:
        raise ValueError(
            f"the first task plans the clips and must be pace or pace_contrastive, got {first!r}"
        )
    planners = [t for t in rest if t not in CLIP_LABELLING_PRETEXTS]
    if planners:
        raise ValueError(
            f"{planners} plan their own clips; only the first task may (the others must "
            "label the first task's clips from the pixels, as statistics does)"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def check_curriculum(settings: Any) -> None:
    """Raise ValueError, naming the dotted key, for settings no pacing function accepts.

    Checked: ``curriculum.pacing`` is one of :data:`PACINGS`; ``curriculum.start_fraction`` is
    in (0, 1]; ``curriculum.step_epochs`` is an integer >= 1; for ``fixed_exp`` and
    ``varied_exp`` ``curriculum.growth`` is a finite number > 1; for ``varied_exp``
    ``curriculum.step_epochs_list`` is a non-empty list of integers >= 1.  Settings that the
    chosen pacing does not use (e.g. ``growth`` for ``single_step``) are not checked.
    """
    pacing = settings.pacing
    if pacing not in PACINGS:
        raise ValueError(f"curriculum.pacing: expected one of {list(PACINGS)}, got {pacing!r}")
    start = settings.start_fraction
    if not _is_number(start) or not 0.0 < float(start) <= 1.0:
        raise ValueError(f"curriculum.start_fraction: expected a number in (0, 1], got {start!r}")
    step = settings.step_epochs
    if not _is_int(step) or step < 1:
        raise ValueError(f"curriculum.step_epochs: expected an integer >= 1, got {step!r}")
    if pacing in _EXP_PACINGS:
        growth = settings.growth
        if not _is_number(growth) or not math.isfinite(growth) or not float(growth) > 1.0:
            raise ValueError(
                f"curriculum.growth: {pacing} needs a finite number > 1, got {growth!r}"
            )
    if pacing == "varied_exp":
        lengths = settings.step_epochs_list
        if (
            isinstance(lengths, str | bytes)
            or not isinstance(lengths, Sequence)
            or len(lengths) == 0
            or not all(_is_int(n) and n >= 1 for n in lengths)
        ):
            raise ValueError(
                "curriculum.step_epochs_list: varied_exp needs a non-empty list of integers "
                f">= 1 (the length in epochs of each stage), got {lengths!r}"
            )


# --------------------------------------------------------------------------- sections


@dataclass
class AugmentSettings:
    """Spatial and colour augmentation of training clips (uint8, on CPU workers)."""

    resize: list[int] = field(default_factory=lambda: [128, 171])
    """(height, width) every frame is resized to before cropping; [] keeps native size."""
    crop: list[int] = field(default_factory=lambda: [112, 112])
    """(height, width) of the random crop (centre crop at evaluation)."""
    flip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    per_frame_jitter: bool = True
    """The thesis jitters every frame independently; False draws once per clip."""
    enabled: bool = True
    """False turns crop, flip and jitter off (resize still applies if set)."""

    def validate(self, prefix: str) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v and (len(v) != 2 or min(v) <= 0):
                raise ConfigError(f"{prefix}.{name}: expected [height, width] > 0, got {v}")
        if (
            self.resize
            and self.crop
            and (self.crop[0] > self.resize[0] or self.crop[1] > self.resize[1])
        ):
            raise ConfigError(
                f"{prefix}.crop: {self.crop} is larger than {prefix}.resize {self.resize}"
            )
        for name in ("flip_prob", "jitter_prob"):
            _in_range(f"{prefix}.{name}", getattr(self, name), 0.0, 1.0)
        for name in ("brightness", "contrast", "saturation"):
            _in_range(f"{prefix}.{name}", getattr(self, name), 0.0, None)
        _in_range(f"{prefix}.hue", self.hue, 0.0, 0.5)


@dataclass
class DataConfig:
    """Where the videos are and how clips are sampled from them."""

    manifest: str = ""
    """Manifest URI (Parquet, one row per video): a local path or s3://bucket/key."""
    split: str = "train"
    """Manifest rows whose `split` equals this are used; '' uses every row."""
    val_split: str = ""
    """Optional held-out split evaluated after every epoch ('' = none)."""
    val_clips_per_video: int = 4
    """Clips per held-out video (a fixed set: drawn as epoch 0, centre crop)."""
    fraction: float = 1.0
    """Deterministic fraction of the videos to use (data-scale sweeps)."""
    clips_per_video: int = 1
    """Clips drawn per video per epoch (the reference code repeats its list 10x)."""
    clip_len: int = 16
    short_video: Literal["resample_pace", "skip"] = "resample_pace"
    """Policy for a video too short for the drawn pace: draw again among the paces
    that fit (counted), or skip the clip (counted). Never a temporal cut in a clip."""
    decode_threads: int = 1
    skip_nonref: bool = True
    """Skip decoding the B-frames (non-reference frames) a clip does not use, on streams
    whose manifest row has a pts grid (docs/data.md): frame-exact, +24% clips/s per core
    measured on B-frame MPEG-4 AVI, +6% on H.264. false = decode every frame."""
    num_cpus_per_task: float = 1.0
    """CPUs each Ray Data decode task reserves."""
    decode_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each decode task also reserves: decoding runs only on nodes
    that advertise them (e.g. {decode: 1} with `ray start --resources '{"decode": 64}'`
    on CPU nodes keeps it off the GPU nodes). {} = anywhere."""
    decode_cpus_per_worker: float = 0.0
    """CPU budget of each train worker's decode pipeline (Ray Data resource limit): N
    workers share the decode CPUs fairly instead of each pipeline planning for the whole
    cluster. 0 = Ray Data's default (the cluster's CPUs, shared first come)."""
    object_store_mb_per_worker: float = 0.0
    """Object store budget of each train worker's decode pipeline (MB of decoded clips in
    flight; uint8 clips: 16x112x112x3 = 0.6 MB). 0 = Ray Data's default."""
    rows_per_task: int = 4
    """Clips decoded per Ray Data batch."""
    prefetch_batches: int = 2
    max_skip_fraction: float = 0.5
    """Stop the run (a clear error, after the epoch's metrics are logged) when more than
    this share of an epoch's training clips were skipped (corrupt, missing or too short
    videos): training on what is left would not be the run you asked for. 1.0 = never."""
    progress_logs: bool = False
    """Ray Data's progress logs for every pipeline (one per epoch and worker): off keeps
    the job log readable; the per-epoch metrics say how the data side keeps up."""
    endpoint_url: str = ""
    """S3 endpoint URL only (e.g. http://minio:9000); credentials come from the
    standard AWS environment, never from configs."""
    max_video_bytes: int = 4 << 30
    """Largest video file read (bytes); a larger one is skipped as `too_large` before a
    byte of it is fetched. 0 = no cap."""
    max_pixels: int = 4096 * 2160
    """Largest frame (height x width) decoded; larger is `too_many_pixels` (8K frames
    take 100 MB each as RGB). 0 = no cap."""
    max_frames: int = 500_000
    """Most frames a video may have (4.6 h at 30 fps); more is `too_many_frames`. 0 = no
    cap."""
    decode_timeout_s: float = 600.0
    """Wall-time limit of one probe or one clip read of one video (`decode_timeout`).
    0 = none."""
    stream_threshold_bytes: int = 16 << 20
    """S3 objects up to this size are fetched whole (one GET); larger ones are read
    through a seekable stream of ranged GETs (only the blocks a clip needs)."""
    stream_block_bytes: int = 1 << 20
    """Size of one ranged GET of the stream (4 of them are cached per open video)."""
    augment: AugmentSettings = field(default_factory=AugmentSettings)

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.fraction", self.fraction, 1e-9, 1.0)
        _in_range(f"{prefix}.clips_per_video", self.clips_per_video, 1, None)
        _in_range(f"{prefix}.val_clips_per_video", self.val_clips_per_video, 1, None)
        _in_range(f"{prefix}.clip_len", self.clip_len, 1, None)
        _in_range(f"{prefix}.decode_threads", self.decode_threads, 1, None)
        _in_range(f"{prefix}.num_cpus_per_task", self.num_cpus_per_task, 0.0, None)
        _in_range(f"{prefix}.decode_cpus_per_worker", self.decode_cpus_per_worker, 0.0, None)
        _in_range(
            f"{prefix}.object_store_mb_per_worker", self.object_store_mb_per_worker, 0.0, None
        )
        _check_custom_resources(
            f"{prefix}.decode_resources", self.decode_resources, f"{prefix}.num_cpus_per_task"
        )
        _in_range(f"{prefix}.rows_per_task", self.rows_per_task, 1, None)
        _in_range(f"{prefix}.prefetch_batches", self.prefetch_batches, 0, None)
        _in_range(f"{prefix}.max_skip_fraction", self.max_skip_fraction, 0.0, 1.0)
        for name in ("max_video_bytes", "max_pixels", "max_frames", "decode_timeout_s"):
            _in_range(f"{prefix}.{name}", getattr(self, name), 0, None)
        _in_range(f"{prefix}.stream_threshold_bytes", self.stream_threshold_bytes, 0, None)
        _in_range(f"{prefix}.stream_block_bytes", self.stream_block_bytes, 4096, None)
        if "@" in self.endpoint_url:
            raise ConfigError(
                f"{prefix}.endpoint_url: must hold only the URL; put credentials in the "
                "standard AWS environment"
            )
        self.augment.validate(f"{prefix}.augment")


@dataclass
class StatisticsSettings:
    """The spatio-temporal statistics pretext (thesis ch. 2-3): 14 motion labels from
    optical flow computed in the data tasks, 13 appearance labels from the pixels."""

    flow: Literal["dis", "farneback", "tvl1"] = "dis"
    """Optical flow between consecutive frames of the augmented clip: dis (fast default),
    farneback, or tvl1 (the thesis's; ~100x slower on CPU)."""
    head: Literal["regression", "classification"] = "regression"
    """regression: the thesis's L2 regression of the labels, each scaled to [0, 1] by its
    number of classes; classification: one softmax per label, cross-entropy."""
    lambda_motion: float = 1.0
    lambda_appearance: float = 0.1
    hidden_dim: int = 2048
    """Width of the two fully connected layers of each branch (thesis: fc6/fc7 2048);
    0 = a single linear layer per branch."""
    spatial_grid: int = 3
    """The backbone's last feature map is average-pooled to 1 x g x g before the heads,
    so the branches see where things happen (the labels are locations); 0 = global
    average pool, as the other tasks use."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.lambda_motion", self.lambda_motion, 0.0, None)
        _in_range(f"{prefix}.lambda_appearance", self.lambda_appearance, 0.0, None)
        if self.lambda_motion + self.lambda_appearance <= 0:
            raise ConfigError(f"{prefix}.lambda_motion: both loss weights are 0")
        _in_range(f"{prefix}.hidden_dim", self.hidden_dim, 0, None)
        _in_range(f"{prefix}.spatial_grid", self.spatial_grid, 0, 16)
        # whether the installed OpenCV runs `flow` is checked where the pretext is built


@dataclass
class ContrastiveSettings:
    """Pace prediction + contrastive learning (thesis 4.2.3, `pace_contrastive`)."""

    mode: Literal["same_context", "same_pace"] = "same_context"
    """same_context (Eq. 4.3): clips of one video are positives; same_pace (Eq. 4.4):
    clips at one pace are positives."""
    sampling: Literal["auto", "one_clip", "two_clips"] = "auto"
    """Clips per sample: two_clips = two clips of one video at two different paces (Alg. 3);
    one_clip = one clip per video (Alg. 4); auto = one_clip for same_pace, two_clips for
    same_context. same_pace with two_clips makes a clip's own-video partner, at another
    pace, a negative of every sample."""
    temperature: float = 0.5
    """InfoNCE temperature on L2-normalised embeddings (the thesis gives none)."""
    projection_hidden: int = 2048
    """Hidden width of the nonlinear projection head; 0 = no head (pooled features)."""
    projection_dim: int = 128
    lambda_cls: float = 1.0
    lambda_ctr: float = 0.1
    gather: bool = True
    """Under DDP, contrast against the embeddings of every worker (with gradients)."""

    @property
    def clips_per_sample(self) -> int:
        """2 for two_clips, 1 for one_clip; auto picks by mode (the thesis's algorithms)."""
        if self.sampling == "auto":
            return 2 if self.mode == "same_context" else 1
        return 2 if self.sampling == "two_clips" else 1

    def validate(self, prefix: str) -> None:
        if self.mode == "same_context" and self.sampling == "one_clip":
            raise ConfigError(
                f"{prefix}.sampling: same_context needs two clips of each video (its "
                "positives); use two_clips or auto"
            )
        _in_range(f"{prefix}.temperature", self.temperature, 1e-4, None)
        _in_range(f"{prefix}.projection_hidden", self.projection_hidden, 0, None)
        _in_range(f"{prefix}.projection_dim", self.projection_dim, 1, None)
        _in_range(f"{prefix}.lambda_cls", self.lambda_cls, 0.0, None)
        _in_range(f"{prefix}.lambda_ctr", self.lambda_ctr, 0.0, None)


@dataclass
class MultitaskSettings:
    """Several pretexts in one run (`pretext.name: multitask`): one clip plan, one
    backbone pass, a weighted sum of the tasks' losses."""

    tasks: list[str] = field(default_factory=lambda: ["pace", "statistics"])
    """The first task plans the clips (pace or pace_contrastive); the others label the
    first clip from its pixels (statistics)."""
    weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """One loss weight per task, in the order of `tasks`."""

    def validate(self, prefix: str) -> None:
        if len(self.tasks) < 2:
            raise ConfigError(f"{prefix}.tasks: expected at least two tasks, got {self.tasks}")
        if len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"{prefix}.tasks: duplicate tasks in {self.tasks}")
        if len(self.weights) != len(self.tasks):
            raise ConfigError(
                f"{prefix}.weights: expected one weight per task ({len(self.tasks)}), "
                f"got {self.weights}"
            )
        for i, w in enumerate(self.weights):
            _in_range(f"{prefix}.weights[{i}]", w, 0.0, None)
        if sum(self.weights) <= 0:
            raise ConfigError(f"{prefix}.weights: all weights are 0")


@dataclass
class VideoMAESettings:
    """Masked video modelling by pixel reconstruction (VideoMAE, Tong et al. 2022):
    tube masking, the encoder on the visible tokens only, a narrow decoder, MSE on the
    per-patch normalised pixels of the masked tubes."""

    mask_ratio: float = 0.9
    """Share of each frame's patches masked (the same patches on every frame: tubes)."""
    decoder_dim: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    norm_pix: bool = True
    """Targets are each patch's pixels normalised by the patch's mean and std (per
    channel); false = the input pixels as they are."""
    frame_stride: int = 4
    """Frames between a clip's frames (VideoMAE on Kinetics: 16 frames, stride 4)."""
    thesis_augment: bool = False
    """true = the thesis pipeline (`data.augment`: crop, flip, colour jitter); false =
    VideoMAE's multi-scale crop (`scales`) + flip, no colour jitter."""
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    """Multi-scale crop: crop sides are these shares of the frame's short side (height
    and width drawn independently, at most one scale step apart), resized to
    `data.augment.crop`."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.mask_ratio", self.mask_ratio, 0.0, 0.99)
        for name in ("decoder_dim", "decoder_depth", "decoder_heads", "frame_stride"):
            _in_range(f"{prefix}.{name}", getattr(self, name), 1, None)
        if self.decoder_dim % self.decoder_heads:
            raise ConfigError(
                f"{prefix}.decoder_dim: {self.decoder_dim} is not a multiple of "
                f"decoder_heads {self.decoder_heads}"
            )
        _check_scales(f"{prefix}.scales", self.scales)


@dataclass
class VJEPASettings:
    """Latent prediction of masked regions (V-JEPA, Bardes et al. 2024): 3D multi-block
    masks, a context encoder on the visible tokens, a narrow predictor, an EMA target
    encoder, L1 loss in latent space."""

    short_blocks: int = 8
    """Short-range mask: this many blocks of `short_scale` of the frame each, union."""
    short_scale: float = 0.15
    long_blocks: int = 2
    """Long-range mask: this many blocks of `long_scale` of the frame each, union."""
    long_scale: float = 0.7
    aspect_ratio: list[float] = field(default_factory=lambda: [0.75, 1.5])
    """A block's height / width is drawn log-uniformly in this range."""
    temporal_scale: float = 1.0
    """Share of the clip's token frames a block spans (1 = all: tubes)."""
    predictor_dim: int = 384
    predictor_depth: int = 12
    predictor_heads: int = 12
    momentum_start: float = 0.998
    """EMA momentum of the target encoder at the first step ..."""
    momentum_end: float = 1.0
    """... rising linearly to this over `momentum_steps` optimiser steps, then constant."""
    momentum_steps: int = 0
    """Steps of the linear rise (0: momentum_start throughout). V-JEPA rises over the
    whole run: set it to epochs x steps per epoch."""
    frame_stride: int = 4
    """Frames between a clip's frames (V-JEPA: 16 frames, stride 4)."""
    thesis_augment: bool = False
    """As videomae.thesis_augment."""
    scales: list[float] = field(default_factory=lambda: [1.0, 0.875, 0.75, 0.66])
    """As videomae.scales."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.short_blocks", self.short_blocks, 0, None)
        _in_range(f"{prefix}.long_blocks", self.long_blocks, 0, None)
        if self.short_blocks + self.long_blocks == 0:
            raise ConfigError(f"{prefix}.short_blocks: no mask blocks at all")
        _in_range(f"{prefix}.short_scale", self.short_scale, 1e-3, 1.0)
        _in_range(f"{prefix}.long_scale", self.long_scale, 1e-3, 1.0)
        _in_range(f"{prefix}.temporal_scale", self.temporal_scale, 1e-3, 1.0)
        if len(self.aspect_ratio) != 2 or not 0 < self.aspect_ratio[0] <= self.aspect_ratio[1]:
            raise ConfigError(
                f"{prefix}.aspect_ratio: expected [low, high] with 0 < low <= high, "
                f"got {self.aspect_ratio}"
            )
        for name in ("predictor_dim", "predictor_depth", "predictor_heads", "frame_stride"):
            _in_range(f"{prefix}.{name}", getattr(self, name), 1, None)
        if self.predictor_dim % self.predictor_heads:
            raise ConfigError(
                f"{prefix}.predictor_dim: {self.predictor_dim} is not a multiple of "
                f"predictor_heads {self.predictor_heads}"
            )
        _in_range(f"{prefix}.momentum_start", self.momentum_start, 0.0, 1.0)
        _in_range(f"{prefix}.momentum_end", self.momentum_end, 0.0, 1.0)
        _in_range(f"{prefix}.momentum_steps", self.momentum_steps, 0, None)
        _check_scales(f"{prefix}.scales", self.scales)


def _check_scales(key: str, scales: list[float]) -> None:
    if not scales:
        raise ConfigError(f"{key}: expected at least one scale")
    for v in scales:
        _in_range(key, v, 0.05, 1.0)


@dataclass
class PretextConfig:
    """The self-supervised task and its settings."""

    name: str = "pace"
    paces: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 4.0])
    """Playback paces; label = index. Values < 1 are slow motion (1/2 repeats frames).
    The thesis's ablations: slow-fast [1/3, 1/2, 1, 2, 3], pace step 2 [1, 3, 5, 7]."""
    backwards: Literal["none", "same_class", "extra_classes"] = "none"
    """Play clips backwards with probability `backwards_prob` (thesis table 4.4):
    same_class keeps the pace's label; extra_classes adds a class per pace (+-p)."""
    backwards_prob: float = 0.5
    num_classes: int = 0
    """supervised (fine-tuning): number of action classes; 0 = from the manifest's labels."""
    statistics: StatisticsSettings = field(default_factory=StatisticsSettings)
    contrastive: ContrastiveSettings = field(default_factory=ContrastiveSettings)
    multitask: MultitaskSettings = field(default_factory=MultitaskSettings)
    videomae: VideoMAESettings = field(default_factory=VideoMAESettings)
    vjepa: VJEPASettings = field(default_factory=VJEPASettings)

    def validate(self, prefix: str) -> None:
        self.videomae.validate(f"{prefix}.videomae")
        self.vjepa.validate(f"{prefix}.vjepa")
        _in_range(f"{prefix}.num_classes", self.num_classes, 0, None)
        _in_range(f"{prefix}.backwards_prob", self.backwards_prob, 0.0, 1.0)
        self.statistics.validate(f"{prefix}.statistics")
        self.contrastive.validate(f"{prefix}.contrastive")
        if self.name == "multitask":
            self.multitask.validate(f"{prefix}.multitask")
            try:
                check_tasks(self.multitask.tasks)
            except ValueError as e:
                raise ConfigError(f"{prefix}.multitask.tasks: {e}") from None

        if self.name not in PRETEXT_NAMES:
            raise ConfigError(
                f"{prefix}.name: unknown pretext {self.name!r}; one of {sorted(PRETEXT_NAMES)}"
            )
        if not self.paces:
            raise ConfigError(f"{prefix}.paces: expected at least one pace")
        if len(set(self.paces)) != len(self.paces):
            raise ConfigError(f"{prefix}.paces: duplicate paces in {self.paces}")
        for p in self.paces:
            if p <= 0:
                raise ConfigError(f"{prefix}.paces: expected paces > 0, got {p}")
            if p < 1 and abs(1 / p - round(1 / p)) > 1e-6:
                raise ConfigError(f"{prefix}.paces: slow pace {p} must be 1/k for integer k")
            if p > 1 and abs(p - round(p)) > 1e-6:
                raise ConfigError(f"{prefix}.paces: fast pace {p} must be an integer")


@dataclass
class ModelConfig:
    backbone: str = "r21d"
    """One of rayssl.models.BACKBONES: c3d, r3d, r21d, s3dg."""
    width: float = 1.0
    """Channel multiplier (tiny CPU configs use 0.125)."""
    dropout: float = 0.0
    """Dropout before the task's classifier (fine-tuning)."""
    init: str = ""
    """Backbone weights to start from (fine-tuning): a checkpoint path, s3:// URI,
    runs:/<mlflow_run_id>, or '' / 'random' for random initialisation. Its backbone
    settings replace backbone and width."""
    drop_path: float = 0.0
    """Stochastic depth: the largest drop-path rate (the last block's; rates grow
    linearly over depth), passed to backbones whose builder takes `drop_path` (the
    ViTs); any other backbone with a rate > 0 is an error. 0 = off."""

    def validate(self, prefix: str) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ConfigError(
                f"{prefix}.backbone: unknown backbone {self.backbone!r}; "
                f"one of {sorted(BACKBONE_NAMES)}"
            )
        _in_range(f"{prefix}.width", self.width, 1e-3, None)
        _in_range(f"{prefix}.dropout", self.dropout, 0.0, 0.99)
        _in_range(f"{prefix}.drop_path", self.drop_path, 0.0, 0.99)
        if self.drop_path:
            from rayssl.models import backbone_options  # lazy: torch, only when asked

            if "drop_path" not in backbone_options(self.backbone):
                raise ConfigError(
                    f"{prefix}.drop_path: backbone {self.backbone!r} has no stochastic depth "
                    "(drop path); set it to 0 or pick a backbone that has (a ViT)"
                )


@dataclass
class OptimConfig:
    """SGD with the thesis's step schedule: lr /10 every `step_epochs` epochs."""

    name: Literal["sgd", "adamw"] = "sgd"
    """sgd is the thesis's; adamw converges faster on tiny CPU configs."""
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-3
    step_epochs: int = 6
    gamma: float = 0.1
    epochs: int = 18
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    """Scale `lr` with the global batch (train.batch_size): "linear" trains at
    lr * batch_size / lr_batch_size (Goyal et al. 2017), "sqrt" at
    lr * sqrt(batch_size / lr_batch_size); "none" trains at `lr` whatever the batch. For
    larger per-GPU batches than the thesis's 30."""
    lr_batch_size: int = 30
    """The global batch `lr` is given for (the thesis: lr 1e-3 at batch 30)."""
    fused: bool = False
    """Fused optimiser kernels (torch.optim's fused=True: one kernel for every parameter
    instead of a loop of small ones); the same update up to float rounding."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW's (beta1, beta2); torch's default. ViT recipes (MAE, VideoMAE, V-JEPA) use
    [0.9, 0.95]."""
    schedule: Literal["step", "warmup_cosine"] = "step"
    """"step": the thesis's (lr * gamma every `step_epochs` epochs, set per epoch);
    "warmup_cosine": linear warm-up from 0 over `warmup_epochs`, then a half cosine to
    `min_lr` at `epochs`, set before every step (rayssl.train.schedule)."""
    warmup_epochs: float = 0.0
    """warmup_cosine: epochs of linear warm-up (fractions allowed)."""
    min_lr: float = 0.0
    """warmup_cosine: the lr at the end of the cosine (absolute: not scaled by lr_scaling)."""
    no_decay_bias_norm: bool = False
    """No weight decay on biases, norm layers' weights, position embeddings and class /
    mask tokens (timm's param_groups_weight_decay rule); false decays every parameter."""
    layer_decay: float = 1.0
    """Layer-wise lr decay (fine-tuning): a parameter of layer i trains at
    lr * layer_decay ** (num_layers - i); embeddings are layer 0, block (CNN stage) k is
    k + 1, the head num_layers (rayssl.train.schedule.layer_ids). 1 = off; VideoMAE's
    ViT-B fine-tuning uses 0.75."""

    def scaled_lr(self, batch_size: int) -> float:
        """The learning rate a run with global batch `batch_size` trains at."""
        ratio = batch_size / self.lr_batch_size
        if self.lr_scaling == "linear":
            return self.lr * ratio
        if self.lr_scaling == "sqrt":
            return self.lr * ratio**0.5
        return self.lr

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.lr", self.lr, 1e-12, None)
        _in_range(f"{prefix}.lr_batch_size", self.lr_batch_size, 1, None)
        _in_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0)
        _in_range(f"{prefix}.weight_decay", self.weight_decay, 0.0, None)
        _in_range(f"{prefix}.step_epochs", self.step_epochs, 1, None)
        _in_range(f"{prefix}.gamma", self.gamma, 0.0, 1.0)
        _in_range(f"{prefix}.epochs", self.epochs, 1, None)
        if len(self.betas) != 2:
            raise ConfigError(f"{prefix}.betas: expected [beta1, beta2], got {self.betas}")
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ConfigError(f"{prefix}.betas[{i}]: expected a value in [0, 1), got {beta}")
        _in_range(f"{prefix}.warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _in_range(f"{prefix}.min_lr", self.min_lr, 0.0, self.lr)
        _in_range(f"{prefix}.layer_decay", self.layer_decay, 1e-6, 1.0)
        if self.schedule == "step" and (self.warmup_epochs or self.min_lr):
            raise ConfigError(
                f"{prefix}.warmup_epochs / min_lr: only for schedule warmup_cosine "
                f"(schedule is {self.schedule!r})"
            )


@dataclass
class TrainConfig:
    """Ray Train settings."""

    batch_size: int = 30
    """Global batch (split over workers), as in the thesis."""
    num_workers: int = 1
    """Ray Train workers (0 = Ray Train local mode: in-process, no DDP)."""
    min_workers: int = 0
    """Elastic training (Ray Train V2): with 0 < min_workers < num_workers, a worker group
    that lost nodes restarts with as many workers as the cluster holds, at least this
    many, and grows back to num_workers when nodes return; each worker then takes
    batch_size // workers clips per step. 0 = a fixed num_workers."""
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    worker_resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources each train worker also reserves (e.g. {trainer: 1} to pin
    training to the nodes that advertise it); GPUs are `use_gpu`/`gpus_per_worker`."""
    bf16: bool = True
    """bf16 autocast on CUDA (ignored on CPU)."""
    channels_last: bool = True
    """channels_last_3d memory format on CUDA (ignored on CPU)."""
    cudnn_benchmark: bool = True
    """cuDNN autotuning of the convolutions on CUDA (clip shapes are fixed, so the
    search runs once; the H100 anchor figures were measured with it)."""
    device_prefetch: int = 1
    """CUDA: batches pinned and copied to the GPU ahead of the step, on a side stream in
    a background thread (0 = pin and copy in the step, as before 2026-11-30)."""
    conv_impl: Literal["conv3d", "conv2d"] = "conv3d"
    """How R(2+1)D's factorised convs run (other backbones have none): "conv3d" as the
    reference code, "conv2d" as 2D convs over views of the same memory (same weights and
    checkpoints, same result up to float rounding; see rayssl.models.CONV_IMPLS)."""
    compile: bool = False
    """torch.compile the backbone in place (forward and forward_map, static shapes;
    checkpoints keep their keys). The first steps of a run, and of the first evaluation,
    pay the compile time (tens of seconds), and so does each new batch shape once (a
    smaller last validation batch); the first epoch's clips/s includes it."""
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = "default"
    """torch.compile mode (max-autotune searches kernels for minutes)."""
    compile_backend: str = "inductor"
    """torch.compile backend ("aot_eager" traces without generating code: for debugging)."""
    max_failures: int = 0
    """Worker-group restarts allowed (resume from the latest checkpoint)."""
    log_every_steps: int = 10
    max_steps_per_epoch: int = 0
    """Cap on steps per epoch (0 = no cap); for smoke tests."""
    num_checkpoints_to_keep: int = 2
    checkpoint_every_steps: int = 0
    """Also checkpoint every this many steps inside an epoch (0 = at epoch ends only). A
    run resumed from such a checkpoint continues that epoch at its next draw: no draw of
    the epoch is trained twice or skipped, even with a different worker count. A kill
    loses at most one interval of work. Each checkpoint costs a pause of all workers."""
    checkpoint_every_minutes: float = 0.0
    """Also checkpoint inside an epoch once this many minutes passed since the last
    checkpoint (0 = off); both may be set. Spot nodes: a few minutes."""
    torch_threads: int = 0
    """CPU threads for torch in each train worker; 0 = Ray's setting (OMP_NUM_THREADS =
    the worker's whole CPUs, 1 for a fractional worker). A CPU run whose decoding is light
    trains faster with more (measured: 19 -> 30 clips/s, C3D/4 at 56 px, 1 -> 2 threads)."""
    activation_checkpointing: bool = False
    """Recompute each backbone block's (a CNN's stage's) activations in the backward pass
    instead of keeping them (torch.utils.checkpoint): less memory for one more forward
    pass. The same loss, gradients and BatchNorm statistics as without."""
    fsdp: bool = False
    """Shard the parameters, gradients and optimiser state over the workers (torch's
    FSDP2 `fully_shard`, each backbone block a unit) instead of replicating them (DDP):
    for models that do not fit one device. Needs num_workers >= 2."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.batch_size", self.batch_size, 1, None)
        _in_range(f"{prefix}.num_workers", self.num_workers, 0, None)
        _in_range(f"{prefix}.min_workers", self.min_workers, 0, max(self.num_workers, 0))
        _in_range(f"{prefix}.cpus_per_worker", self.cpus_per_worker, 0.0, None)
        _in_range(f"{prefix}.gpus_per_worker", self.gpus_per_worker, 0.0, None)
        _check_custom_resources(
            f"{prefix}.worker_resources",
            self.worker_resources,
            f"{prefix}.cpus_per_worker, use_gpu, gpus_per_worker",
        )
        _in_range(f"{prefix}.max_failures", self.max_failures, -1, None)
        _in_range(f"{prefix}.log_every_steps", self.log_every_steps, 1, None)
        _in_range(f"{prefix}.max_steps_per_epoch", self.max_steps_per_epoch, 0, None)
        _in_range(f"{prefix}.num_checkpoints_to_keep", self.num_checkpoints_to_keep, 1, None)
        _in_range(f"{prefix}.torch_threads", self.torch_threads, 0, None)
        _in_range(f"{prefix}.checkpoint_every_steps", self.checkpoint_every_steps, 0, None)
        _in_range(f"{prefix}.checkpoint_every_minutes", self.checkpoint_every_minutes, 0.0, None)
        _in_range(f"{prefix}.device_prefetch", self.device_prefetch, 0, 8)
        if self.fsdp and self.num_workers < 2:
            raise ConfigError(
                f"{prefix}.fsdp: sharding needs train.num_workers >= 2 (got {self.num_workers})"
            )
        if self.compile:
            import torch._dynamo  # lazy: torch is a heavy import that only this path needs

            backends = torch._dynamo.list_backends(exclude_tags=())
            if self.compile_backend not in backends:
                raise ConfigError(
                    f"{prefix}.compile_backend: unknown torch.compile backend "
                    f"{self.compile_backend!r}; one of {backends}"
                )
        if self.num_workers > 0 and self.batch_size % self.num_workers:
            raise ConfigError(
                f"{prefix}.batch_size: {self.batch_size} is not divisible by "
                f"train.num_workers {self.num_workers} (each worker takes an equal share)"
            )


_CLIPS_HELP = "uniform:N (N uniformly spaced clips) or sliding:L:O (L frames, O overlap)"


def _check_clips(key: str, value: str) -> None:
    try:
        parse_clip_spec(value)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


_LAYER_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _check_layers(key: str, layers: list[str], allow_empty: bool = False) -> None:
    """Layer names as names (each backbone has its own: `feature_layers`, checked against
    the chosen backbone before anything is extracted; e.g. the CNNs' POOL_LAYERS)."""
    if not layers and not allow_empty:
        raise ConfigError(f"{key}: expected at least one layer (CNNs: {list(POOL_LAYERS)})")
    bad = [x for x in layers if not isinstance(x, str) or not _LAYER_NAME_RE.match(x)]
    if bad:
        raise ConfigError(
            f"{key}: {bad} are not layer names (letters, digits, '_'; e.g. pool5, block12)"
        )
    if len(set(layers)) != len(layers):
        raise ConfigError(f"{key}: duplicate layers in {layers}")


@dataclass
class InferenceSettings:
    """How evaluation clips are cut and pushed through a model (features, tests)."""

    clips: str = "uniform:10"
    """Clip positions per video: uniform:N (N uniformly spaced clips, the retrieval and
    fine-tuning test protocol) or sliding:L:O (L-frame clips overlapping by O frames)."""
    batch_size: int = 16
    """Clips per forward pass."""
    num_actors: int = 0
    """Model actors; 0 = one per GPU when the cluster has GPUs, else 1 (CPU)."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0
    """GPUs per model actor, used only when the cluster has GPUs."""
    max_clips_per_task: int = 32
    """A long video's clips are decoded in chunks of this many (bounded memory)."""
    decode_tasks: int = 0
    """Decode tasks running at once; 0 = as many as the cluster has CPUs."""
    torch_threads: int = 0
    """CPU threads for torch in each model actor; 0 = Ray's setting (the actor's CPUs)."""
    stall_s: float = 300.0
    """Seconds the pipeline may produce nothing while Ray reports one of its requests
    pending (unschedulable) before it stops with an error naming it; 0 = wait forever.
    $RAYSSL_STALL_S overrides it."""

    def validate(self, prefix: str) -> None:
        _check_clips(f"{prefix}.clips", self.clips)
        _in_range(f"{prefix}.batch_size", self.batch_size, 1, None)
        _in_range(f"{prefix}.num_actors", self.num_actors, 0, None)
        _in_range(f"{prefix}.cpus_per_actor", self.cpus_per_actor, 0.0, None)
        _in_range(f"{prefix}.gpus_per_actor", self.gpus_per_actor, 0.0, None)
        _in_range(f"{prefix}.max_clips_per_task", self.max_clips_per_task, 1, None)
        _in_range(f"{prefix}.decode_tasks", self.decode_tasks, 0, None)
        _in_range(f"{prefix}.torch_threads", self.torch_threads, 0, None)
        _in_range(f"{prefix}.stall_s", self.stall_s, 0.0, None)


@dataclass
class FinetuneSettings:
    """The test protocol that ends a fine-tuning run (thesis: 10 clips, centre crop)."""

    test_split: str = "test"
    """Manifest split evaluated after training; '' skips the test protocol."""
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    def validate(self, prefix: str) -> None:
        self.inference.validate(f"{prefix}.inference")


@dataclass
class MonitorSettings:
    """Watch features improve during pre-training: kNN retrieval on a labelled manifest."""

    every_epochs: int = 0
    """Run the monitor after every N epochs (and after the last); 0 = off."""
    manifest: str = ""
    """A small labelled manifest (local or s3://); '' = data.manifest."""
    query_split: str = "val"
    gallery_split: str = "train"
    layer: str = "pool5"
    clips: str = "uniform:4"
    batch_size: int = 16
    max_videos: int = 400
    """At most this many videos per split (a deterministic subset): the monitor is a
    trend, not the final evaluation."""

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.every_epochs", self.every_epochs, 0, None)
        _check_layers(f"{prefix}.layer", [self.layer])
        _check_clips(f"{prefix}.clips", self.clips)
        _in_range(f"{prefix}.batch_size", self.batch_size, 1, None)
        _in_range(f"{prefix}.max_videos", self.max_videos, 1, None)
        if self.every_epochs and self.query_split == self.gallery_split:
            raise ConfigError(f"{prefix}.query_split: must differ from {prefix}.gallery_split")


@dataclass
class CurriculumSettings:
    """Curriculum learning (thesis 3.2): train on the easiest videos first. Needs a
    manifest with a `difficulty` column (`rayssl score`); stages change at epoch
    boundaries. Pacing (Hacohen & Weinshall 2019): single_step (start_fraction until
    step_epochs, then all), fixed_exp (start_fraction * growth ** (epoch // step_epochs)),
    varied_exp (the same growth, stage lengths from step_epochs_list)."""

    enabled: bool = False
    pacing: Literal["single_step", "fixed_exp", "varied_exp"] = "single_step"
    start_fraction: float = 0.5
    growth: float = 2.0
    step_epochs: int = 1
    step_epochs_list: list[int] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        try:
            check_curriculum(self)
        except ValueError as e:
            message = str(e)
            if not message.startswith(prefix):
                message = f"{prefix}: {message}"
            raise ConfigError(message) from None


@dataclass
class RunSettings:
    """Identity of a run: name, where checkpoints go, seed, tracking."""

    name: str = "rayssl"
    """Running the same name again resumes from its latest checkpoint."""
    storage_path: str = "runs"
    """Local path or s3://bucket/prefix for checkpoints (RunConfig.storage_path)."""
    seed: int = 0
    tracking_uri: str = ""
    """MLflow tracking URI; '' = $MLFLOW_TRACKING_URI or sqlite:///mlruns.db. Never with
    credentials (a config is stored in checkpoints and logged): put a URI with them in
    $MLFLOW_TRACKING_URI (or use MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN); a config
    then holds it redacted (`https://***@host`)."""
    resume: Literal["auto", "force"] = "auto"
    """Running `name` again resumes its latest checkpoint. "auto": only when the saved
    config equals this one except in the keys of `rayssl.launch.RESUME_MAY_CHANGE`
    (resources, checkpoint cadence, logging), else an error lists the differing keys;
    "force": resume anyway, under the new settings."""
    experiment: str = "rayssl"
    artifact_location: str = ""
    """Where a NEW MLflow experiment stores artifacts (e.g. s3://bucket/mlflow); '' =
    the tracking server's default. S3 endpoints come from MLFLOW_S3_ENDPOINT_URL or
    AWS_ENDPOINT_URL_S3."""
    dataset_name: str = ""
    """Tag for MLflow (e.g. ucf101, k400); '' = the manifest's file name."""
    parent_run_id: str = ""
    """MLflow run to nest this run under (a sweep's study run sets it); the run then
    lives in the parent's experiment."""
    log_models: Literal["end", "checkpoints"] = "end"
    """Which backbones become MLflow 3 LoggedModels of the run (weights-only exported
    folders, `rayssl.export`): "end" = the final one; "checkpoints" = also the one of
    every epoch-end checkpoint (step = epochs done; each is a full copy of the weights)."""

    def validate(self, prefix: str) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"{prefix}.name: expected a non-empty name without '/'")
        if not self.storage_path:
            raise ConfigError(f"{prefix}.storage_path: expected a path or s3:// URI")
        check_no_credentials(f"{prefix}.tracking_uri", self.tracking_uri)


_USERINFO_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://(?P<userinfo>[^\s/][^\s]*)@")


def check_no_credentials(key: str, uri: str) -> None:
    """A URI in a config must not carry `user:secret@` (the redacted `***@` is allowed):
    configs are saved in checkpoints and logged as MLflow params."""
    m = _USERINFO_RE.match(uri or "")
    if m and m.group("userinfo") != "***":
        raise ConfigError(
            f"{key}: credentials in a config would be saved and logged; put the URI in "
            "MLFLOW_TRACKING_URI (or use MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) "
            "and leave this empty"
        )


@dataclass
class Config:
    """The whole job config. YAML sections map to these fields."""

    data: DataConfig = field(default_factory=DataConfig)
    pretext: PretextConfig = field(default_factory=PretextConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunSettings = field(default_factory=RunSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    curriculum: CurriculumSettings = field(default_factory=CurriculumSettings)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        if self.train.fsdp and self.monitor.every_epochs:
            raise ConfigError(
                "train.fsdp: the retrieval monitor runs the backbone on rank 0 alone, which a "
                "sharded model cannot; set monitor.every_epochs=0 (evaluate afterwards)"
            )
        if self.model.backbone in CNN_BACKBONE_NAMES and self.monitor.layer not in POOL_LAYERS:
            # other backbones' layers are checked when the monitor builds its model
            raise ConfigError(
                f"monitor.layer: {self.monitor.layer!r} is not a vector layer of backbone "
                f"{self.model.backbone}; one of {list(POOL_LAYERS)}"
            )
        self._check_vit_clips()
        return self

    def _check_vit_clips(self) -> None:
        """A ViT cuts clips into 2x16x16 tubelets; the masked pretexts need a ViT."""
        vit = self.model.backbone.startswith("vit")
        if self.pretext.name in ("videomae", "vjepa") and not vit:
            raise ConfigError(
                f"pretext.name: {self.pretext.name} masks ViT tokens; model.backbone "
                f"{self.model.backbone!r} is not a ViT (vit_tiny, vit_s16, vit_b16, vit_l16)"
            )
        if not vit:
            return
        if self.model.width != 1.0:
            raise ConfigError(
                f"model.width: a ViT has no width multiplier (got {self.model.width:g}); "
                "pick its size by model.backbone"
            )
        if self.data.clip_len % 2:
            raise ConfigError(
                f"data.clip_len: a ViT needs a multiple of its 2-frame tubelets, "
                f"got {self.data.clip_len}"
            )
        crop = self.data.augment.crop if self.data.augment.enabled else self.data.augment.resize
        if crop and (crop[0] % 16 or crop[1] % 16):
            raise ConfigError(
                f"data.augment.crop: a ViT needs sides that are multiples of its 16-pixel "
                f"patches, got {crop}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Flattened dotted keys -> values (for MLflow params)."""
        return flatten(self.to_dict())


# --------------------------------------------------------------------------- loading


def _check_custom_resources(key: str, resources: dict[str, float], builtin_keys: str) -> None:
    """Custom Ray resources: non-negative amounts, and no built-in resource names (those
    have keys of their own, `builtin_keys`)."""
    for name, amount in resources.items():
        _in_range(f"{key}.{name}", amount, 0.0, None)
        if name in ("CPU", "GPU", "memory", "object_store_memory"):
            raise ConfigError(f"{key}.{name}: a custom resource name only (see {builtin_keys})")


def _in_range(key: str, value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key}: expected a value {bounds}, got {value!r}")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Parsing: pydantic v2 validates the stdlib dataclasses above in strict JSON mode (an int
# is a number, a string is never a number, a bool is not an int, no unknown keys, no NaN);
# the errors are rewritten to name the dotted key. Ranges and cross-field checks are the
# sections' own `validate()`.

_PYDANTIC_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False)

#: pydantic error type -> what the key expected.
_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_type": "true/false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
}


def _dataclasses_in(tp: Any) -> typing.Iterator[type]:
    """Every dataclass type reachable from the annotation `tp` (fields, list items, ...)."""
    if dataclasses.is_dataclass(tp):
        yield cast(type, tp)
        for hint in get_type_hints(tp).values():
            yield from _dataclasses_in(hint)
    for arg in get_args(tp):
        yield from _dataclasses_in(arg)


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    for section in _dataclasses_in(cls):
        if "__pydantic_config__" not in vars(section):
            section.__pydantic_config__ = _PYDANTIC_CONFIG  # type: ignore[attr-defined]
    return TypeAdapter(cls)


def _type_at(cls: type, loc: tuple[int | str, ...]) -> Any:
    """The annotation at pydantic error location `loc` below `cls` (Any if unknown)."""
    tp: Any = cls
    for part in loc:
        if dataclasses.is_dataclass(tp):
            tp = get_type_hints(tp).get(str(part), Any)
        elif get_origin(tp) in (list, dict):
            tp = get_args(tp)[-1] if get_args(tp) else Any
        else:
            return Any
    return tp


def _dotted(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _message(cls: type, error: Any) -> str:
    """One pydantic error as today's message: the dotted key, what it expected, the value."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _dotted(loc) or cls.__name__
    if kind == "unexpected_keyword_argument":
        section = _type_at(cls, loc[:-1])
        valid = sorted(f.name for f in dataclasses.fields(section))
        return f"{key}: unknown key; valid keys here: {valid}"
    if kind == "dataclass_type":
        section_name = error.get("ctx", {}).get("class_name", "section")
        return f"{key}: expected a mapping of {section_name} fields, got {value!r}"
    if kind == "literal_error":
        return f"{key}: expected one of {list(get_args(_type_at(cls, loc)))}, got {value!r}"
    if kind in _EXPECTED:
        return f"{key}: expected {_EXPECTED[kind]}, got {value!r}"
    return f"{key}: {error['msg']}, got {value!r}"


def _check_plain(key: str, value: Any) -> None:
    """YAML values JSON can carry: string keys; no dates, sets or other objects."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key} (a key): expected a string, got {k!r}")
            _check_plain(f"{key}.{k}".lstrip("."), v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(f"{key}[{i}]", v)
    elif value is not None and not isinstance(value, str | int | float):
        raise ConfigError(
            f"{key}: expected a number, string, true/false, list or mapping, got {value!r} "
            "(quote it to make it a string)"
        )


def _merged(default: Any, values: Any) -> Any:
    """`values` over the `default` section, section by section: a nested section keeps its
    default's values (even a default_factory's non-class defaults) for keys not given."""
    if not (dataclasses.is_dataclass(default) and isinstance(values, dict)):
        return values
    out = dataclasses.asdict(default)  # type: ignore[arg-type]
    for k, v in values.items():
        out[k] = _merged(getattr(default, k, None), v)
    return out


def _build(cls: type, values: dict[str, Any]) -> Any:
    """`values` over `cls()`'s defaults, type-checked strictly by pydantic."""
    merged = _merged(cls(), values)
    _check_plain("", merged)
    try:
        return _adapter(cls).validate_json(json.dumps(merged), strict=True)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        message = _message(cls, errors[0])
        if len(errors) > 1:
            more = ", ".join(_dotted(tuple(x["loc"])) for x in errors[1:])
            message += f" (and {len(errors) - 1} more: {more})"
        raise ConfigError(message) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML (so 3, 1e-3, [1,2], true work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.load(raw, Loader=_UniqueKeyLoader) if raw.strip() != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from e
    return key.split("."), value


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key set twice in one mapping."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{key}: key set twice in one mapping (line {key_node.start_mark.line + 1})"
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.1 reads 1e-3 (no dot) as a string; configs mean a number.
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def config_from_dict(values: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    return typed_from_dict(Config, values, overrides)


T = typing.TypeVar("T")


def typed_from_dict(
    cls: type[T],
    values: dict[str, Any],
    overrides: typing.Sequence[str] = (),
    patch: dict[str, Any] | None = None,
) -> T:
    """Build any config dataclass `cls` (with a `validate()` method) from a mapping plus
    the command line's `key=value` overrides, then `patch` (a nested mapping of typed
    values: what code sets, e.g. a command's flags, which win), as strictly as `Config`."""
    values = copy.deepcopy(dict(values or {}))
    for text in overrides:
        path, value = parse_override(text)
        node = values
        for part in path[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[path[-1]] = value
    _merge(values, patch or {})
    obj = _build(cls, values)
    obj.validate()
    return cast(T, obj)


def _merge(values: dict[str, Any], patch: dict[str, Any]) -> None:
    """Set `patch`'s leaves in `values` (nested mappings merged, anything else replaced)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            _merge(values[key], value)
        else:
            values[key] = copy.deepcopy(value)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping (keys set twice are an error)."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        values = yaml.load(p.read_text(), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(p)!r}: expected a mapping at the top level")
    return values


def load_config(
    path: str | Path | None,
    overrides: typing.Sequence[str] = (),
    patch: dict[str, Any] | None = None,
) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply the command
    line's overrides, then `patch` (typed values, see `typed_from_dict`)."""
    values: dict[str, Any] = read_yaml(path) if path is not None else {}
    return typed_from_dict(Config, values, overrides, patch)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
