"""Learning-rate schedules beside the thesis's step schedule, and the optimiser's param groups.

`WarmupCosine` is the schedule ViT pre-training and fine-tuning use (MAE, VideoMAE, V-JEPA):
a linear warm-up from 0 over `optim.warmup_epochs`, then a half cosine from the lr down to
`optim.min_lr` at `optim.epochs`, set before every step at the fractional epoch
``epoch + steps_done / steps_in_epoch`` (as MAE's `lr_sched.adjust_learning_rate`). The lr
is a function of that position only, so a run resumed from any checkpoint (an epoch end
or the middle of an epoch) trains at exactly the lrs of the uninterrupted run: the state
in the checkpoint is the position and the step count of the epoch in progress.

`param_groups` splits the parameters for weight decay and layer-wise lr decay:

* weight decay (`optim.no_decay_bias_norm`) skips the parameters timm's
  `param_groups_weight_decay` (MAE's / VideoMAE's `optim_factory`) skips — every
  parameter with at most one dimension (biases, the weights of norm layers) — and the
  embeddings a ViT learns as tokens: position embeddings, class / mask tokens, any
  `nn.Embedding`, and the names a module lists in its `no_weight_decay()`;
* layer-wise lr decay (`optim.layer_decay`, fine-tuning) scales a parameter's lr by
  ``decay ** (num_layers - layer_id)`` (BEiT, MAE, VideoMAE fine-tuning), with the layer
  ids of `layer_ids`.

Plain torch; no Ray.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch
from torch import nn

#: ModuleList names that hold a backbone's blocks: the CNNs' five `stages`, a timm-style
#: ViT's `blocks`, a transformers ViT's `encoder.layer` (`layer`), others' `layers`.
BLOCK_LISTS = ("stages", "blocks", "layer", "layers")

#: Parameter names (last part) that are learned tokens or position embeddings.
TOKEN_NAMES = frozenset(
    {"pos_embed", "position_embeddings", "cls_token", "mask_token", "dist_token", "pos_embedding"}
)


# --------------------------------------------------------------------------- schedules


class WarmupCosine:
    """Linear warm-up from 0 over `warmup_epochs`, then a half cosine from `base_lr` to
    `min_lr` at `epochs`; every param group trains at the lr times its ``lr_scale`` (1
    when it has none: layer-wise decay sets it).

    The loop calls `at(epoch, steps_done, steps_in_epoch)` before every step and `step()`
    at every epoch end (like `torch.optim.lr_scheduler.StepLR`, which it stands beside).
    `state_dict()` is plain data (a checkpoint holds only plain values)."""

    per_step = True

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        base_lr: float,
        epochs: int,
        warmup_epochs: float = 0.0,
        min_lr: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.epochs = int(epochs)
        self.warmup_epochs = float(warmup_epochs)
        self.min_lr = float(min_lr)
        self.epoch = 0
        self.steps_in_epoch = 0  # of `epoch`, once known (0: not started)
        self.position = 0.0
        self._apply()

    def lr_at(self, position: float) -> float:
        """The (unscaled) lr at fractional epoch `position`."""
        if position < self.warmup_epochs:
            return self.base_lr * position / self.warmup_epochs
        span = max(self.epochs - self.warmup_epochs, 1e-12)
        progress = min(max((position - self.warmup_epochs) / span, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    def at(self, epoch: int, steps_done: int, steps_in_epoch: int) -> float:
        """Set every group's lr for the step after `steps_done` steps of `epoch`; returns
        the unscaled lr. An epoch keeps the step count it started with: a run resumed in
        its middle (by fewer or more workers) continues the same curve."""
        if epoch != self.epoch or not self.steps_in_epoch:
            self.epoch, self.steps_in_epoch = epoch, max(int(steps_in_epoch), 1)
        self.position = epoch + min(steps_done, self.steps_in_epoch) / self.steps_in_epoch
        return self._apply()

    def step(self) -> None:
        """The epoch ended: the lr of the next epoch's start."""
        self.epoch, self.steps_in_epoch = self.epoch + 1, 0
        self.position = float(self.epoch)
        self._apply()

    def _apply(self) -> float:
        lr = self.lr_at(self.position)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "warmup_cosine",
            "epoch": self.epoch,
            "steps_in_epoch": self.steps_in_epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "warmup_cosine":
            raise ValueError(
                "the checkpoint's lr schedule is not warmup_cosine (optim.schedule differs "
                "from the run that wrote it)"
            )
        self.epoch = int(state["epoch"])
        self.steps_in_epoch = int(state["steps_in_epoch"])
        self.position = float(state["position"])
        self._apply()


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The lr to log: the largest of the groups' (the head's under layer-wise decay;
    the one lr when all groups share it)."""
    return max(float(g["lr"]) for g in optimizer.param_groups)


# --------------------------------------------------------------------------- layer ids


def _backbone(model: nn.Module) -> tuple[nn.Module, str]:
    """The backbone inside `model` (a `PretextModel`'s, or `model` itself) and its name
    prefix in `model.named_parameters()`."""
    inner = getattr(model, "module", model)  # DDP
    backbone = getattr(inner, "backbone", None)
    if isinstance(backbone, nn.Module):
        prefix = "module.backbone." if inner is not model else "backbone."
        return backbone, prefix
    return inner, "module." if inner is not model else ""


def find_blocks(backbone: nn.Module) -> tuple[str, nn.ModuleList]:
    """The backbone's sequence of blocks: the first `nn.ModuleList` (in module order)
    named one of `BLOCK_LISTS` (the CNNs' `stages`, a ViT's `blocks` or
    `encoder.layer`), with its dotted name. A backbone without one is a ValueError."""
    for name, module in backbone.named_modules():
        if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS:
            return name, module
    raise ValueError(
        f"{type(backbone).__name__} has no block list (an nn.ModuleList named one of "
        f"{list(BLOCK_LISTS)}): layer-wise lr decay and activation checkpointing need one"
    )


def _is_embedding_name(name: str) -> bool:
    return any(part in TOKEN_NAMES or "embed" in part for part in name.split("."))


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: layer id}, num_layers) for layer-wise lr decay (BEiT / MAE's
    `get_layer_id_for_vit`): in the backbone, block i of its block list is i + 1;
    parameters outside the blocks whose name has an embedding in it (patch and position
    embeddings, class / mask tokens) are 0, the others (a final norm) num_layers; every
    parameter outside the backbone (the task's head) is num_layers, with
    num_layers = blocks + 1. For the CNNs the blocks are the five stages (stage 0 is the
    stem), so stage i is i + 1 and the head 6."""
    backbone, prefix = _backbone(model)
    blocks_name, blocks = find_blocks(backbone)
    num_layers = len(blocks) + 1
    block_re = re.compile(rf"^{re.escape(blocks_name)}\.(\d+)\.")
    backbone_names = {prefix + n for n, _ in backbone.named_parameters()}
    ids: dict[str, int] = {}
    for name, _ in model.named_parameters():
        if name not in backbone_names:
            ids[name] = num_layers
            continue
        local = name[len(prefix) :]
        match = block_re.match(local)
        if match:
            ids[name] = int(match.group(1)) + 1
        elif _is_embedding_name(local):
            ids[name] = 0
        else:
            ids[name] = num_layers
    return ids, num_layers


# --------------------------------------------------------------------------- param groups


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters weight decay skips (see the module docstring)."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names.update(prefix + n for n in listed())
        if isinstance(module, nn.Embedding):
            names.update(prefix + n for n, _ in module.named_parameters(recurse=False))
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias") or name.rsplit(".", 1)[-1] in TOKEN_NAMES:
            names.add(name)
    return names


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_bias_norm: bool, layer_decay: float
) -> list[dict[str, Any]] | list[nn.Parameter]:
    """The optimiser's parameters: a plain list (one group, as before these options)
    when neither split is asked for; else groups with their `weight_decay`, `lr_scale`
    (layer-wise decay) and a `name` ("layer<id>_decay" / "layer<id>_no_decay")."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not no_decay_bias_norm and layer_decay == 1.0:
        return [p for _, p in trainable]
    skip = _no_decay_names(model) if no_decay_bias_norm else set()
    if layer_decay != 1.0:
        ids, num_layers = layer_ids(model)
    else:
        ids, num_layers = {}, 0
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in trainable:
        layer = ids.get(name, num_layers)
        decay = name not in skip
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "name": f"layer{layer}_{'decay' if decay else 'no_decay'}",
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (num_layers - layer),
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]
