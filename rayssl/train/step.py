"""Plain-torch training pieces: model, optimiser, schedule, batch conversion, one step.

No Ray here: the per-worker loop (`loop.py`) wires these to Ray Train, and tests use
them directly.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from rayssl.config import Config
from rayssl.models import build_backbone, set_conv_impl
from rayssl.models.heads import MEAN, STD
from rayssl.pretext.base import Pretext
from rayssl.train.memory import checkpoint_blocks
from rayssl.train.prefetch import Convert, convert_batch, copy_batch
from rayssl.train.schedule import WarmupCosine, param_groups

#: Pixel normalisation applied on the device (Kinetics statistics, RGB order).


class PretextModel(nn.Module):
    """Backbone + the pretext's head; `forward` returns (loss, metric sums)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, pretext: Pretext) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pretext = pretext

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        return self.pretext.compute(self.backbone, self.head, batch)

    @property
    def encoder(self) -> nn.Module:
        """The encoder that is the run's result (`Pretext.encoder`): the backbone, or
        vjepa's EMA target encoder."""
        return cast(nn.Module, self.pretext.encoder(self.backbone, self.head))


def build_model(cfg: Config, pretext: Pretext) -> PretextModel:
    # drop_path only when set: the CNN builders take no such option (config validation
    # refuses a rate for them)
    options = {"drop_path": cfg.model.drop_path} if cfg.model.drop_path else {}
    backbone = build_backbone(cfg.model.backbone, width=cfg.model.width, **options)
    # every backbone sets out_dim: int
    head = pretext.build_head(cast(int, backbone.out_dim), dropout=cfg.model.dropout)
    pretext.attach(backbone, head)  # e.g. vjepa's target encoder: a copy of the backbone
    return PretextModel(backbone, head, pretext)


def build_optimizer(model: nn.Module, cfg: Config):
    """The optimiser and its lr schedule, at the lr scaled for the global batch
    (`optim.lr_scaling`), fused if `optim.fused`.

    SGD (momentum) or AdamW (`optim.betas`), over one group of every parameter, or over
    the groups of `rayssl.train.schedule.param_groups` when `optim.no_decay_bias_norm`
    or `optim.layer_decay` asks for them (each group at lr * its `lr_scale`). The
    schedule: the thesis's step schedule (StepLR, stepped per epoch) or `WarmupCosine`
    (set before every step)."""
    o = cfg.optim
    lr = o.scaled_lr(cfg.train.batch_size)
    # fused=None leaves torch's default (foreach on CUDA); fused=False would force it off
    fused = True if o.fused else None
    params = param_groups(model, o.weight_decay, o.no_decay_bias_norm, o.layer_decay)
    for group in params:
        if isinstance(group, dict):
            group["lr"] = lr * group["lr_scale"]
    if o.name == "adamw":
        betas = (o.betas[0], o.betas[1])
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            params, lr=lr, betas=betas, weight_decay=o.weight_decay, fused=fused
        )
    else:
        opt = torch.optim.SGD(
            params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=fused
        )
    if o.schedule == "warmup_cosine":
        sched: Any = WarmupCosine(opt, lr, o.epochs, o.warmup_epochs, o.min_lr)
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_epochs, gamma=o.gamma)
    return opt, sched


@dataclass(frozen=True)
class DeviceSettings:
    device: torch.device
    bf16: bool = False
    channels_last: bool = False

    @classmethod
    def for_device(cls, device: torch.device, cfg: Config) -> DeviceSettings:
        cuda = device.type == "cuda"
        return cls(
            device, bf16=cuda and cfg.train.bf16, channels_last=cuda and cfg.train.channels_last
        )

    def autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def place_model(model: PretextModel, settings: DeviceSettings, cfg: Config) -> PretextModel:
    """`model` ready to train on `settings.device` with the config's speed settings, in
    place: moved to the device, channels_last_3d (CUDA), R(2+1)D's conv formulation
    (`train.conv_impl`), and the backbone compiled (`train.compile`). Returns `model`.

    Compiling the backbone's entry points (`forward` and `forward_map`: one graph each)
    rather than the whole model keeps the pretexts' Python (dict batches, per-task
    losses) out of the graphs. Shapes are static (`dynamic=False`): clip shapes are
    fixed, and a dynamic-shape graph of the 2D conv formulation fails in inductor.
    `nn.Module.compile` keeps the state-dict keys, so checkpoints are the same with or
    without compiling.
    """
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    set_conv_impl(model, cfg.train.conv_impl)
    if cfg.train.activation_checkpointing:
        checkpoint_blocks(cast(nn.Module, model.backbone))
    if cfg.train.compile:
        mode, backend = cfg.train.compile_mode, cfg.train.compile_backend
        backbone = cast(nn.Module, model.backbone)
        backbone.compile(mode=mode, backend=backend, dynamic=False)
        forward_map = getattr(backbone, "forward_map", None)
        if forward_map is not None:
            # an instance attribute: not a parameter or buffer, so not in the state dict
            compiled = torch.compile(forward_map, mode=mode, backend=backend, dynamic=False)
            setattr(backbone, "forward_map", compiled)  # noqa: B010
    return model


def clip_to_input(clip_BTHWC: torch.Tensor, settings: DeviceSettings) -> torch.Tensor:
    """uint8 (B, T, H, W, C) on the device -> normalised float (B, C, T, H, W)."""
    x = clip_BTHWC.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1, 1)
    x = (x - mean) / std
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def input_converter(settings: DeviceSettings) -> Convert:
    """What each device column becomes: clips (uint8, BTHWC) model input, others as
    they are."""

    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        return clip_to_input(t, settings) if name.startswith("clip") else t

    return convert


def batch_to_device(batch: dict[str, np.ndarray], settings: DeviceSettings) -> dict[str, Any]:
    """Move a numpy batch from the data pipeline to the device; clips become model input.
    (The training loop overlaps this with the previous step: `prefetch.device_batches`.)"""
    non_blocking = settings.device.type == "cuda"
    copied = copy_batch(batch, settings.device, non_blocking=non_blocking)
    return convert_batch(copied, input_converter(settings))


def train_step(
    model: nn.Module,
    batch: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    settings: DeviceSettings,
) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the detached metric sums of the batch."""
    model.train()
    with settings.autocast():
        loss, metrics = model(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return metrics


@torch.no_grad()
def eval_step(model: nn.Module, batch: dict[str, Any], settings: DeviceSettings) -> dict:
    model.eval()
    with settings.autocast():
        _, metrics = model(batch)
    return metrics


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (or the model itself)."""
    return cast(nn.Module, model.module) if hasattr(model, "module") else model
