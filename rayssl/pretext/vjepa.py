"""V-JEPA-style latent prediction (Bardes et al. 2024) on a ViT.

CPU half: one clip (`vjepa.frame_stride` apart), augmented as videomae's; then two 3D
multi-block masks drawn from the draw's seeded generator (`rayssl.pretext.masks.
multiblock_mask`): "mask_short" (`short_blocks` blocks of `short_scale` of the frame)
and "mask_long" (`long_blocks` of `long_scale`), each spanning `temporal_scale` of the
clip's token frames.

GPU half, per mask: the context encoder (the backbone, trained) runs on the tokens the
mask leaves visible; a narrow predictor (`vjepa.predictor_*`) sees them projected to its
width plus a learnt mask token at every masked place, each with the fixed position
table, and predicts the masked tokens' features; the target is the EMA target
encoder's output on the whole clip, layer-normalised (no affine), at the masked places;
the loss is L1, averaged over tokens and channels, over the two masks, then over valid
samples. A batch's masks hide different numbers of tokens: every sample keeps the
batch's smallest number of context and of target tokens (the first ones in token order),
as V-JEPA's collator does.

The target encoder is a copy of the backbone (`attach`), never trained by the
optimiser: at the start of every training step it moves towards the backbone,
target = m * target + (1 - m) * backbone, with m rising linearly from
`momentum_start` to `momentum_end` over `momentum_steps` steps (`momentum`); the first
step copies the backbone (so a `model.init` loaded after the model was built is the
start). Its weights and the step count are part of the head's state, so checkpoints
carry them and a resumed run continues the same sequence exactly. (Updating before a
step's forward pass with the weights the previous step left is the same sequence as
updating after each optimiser step.)
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rayssl.models.vit import PATCH, TUBELET, sincos_table, transformer_blocks
from rayssl.pretext.base import Features
from rayssl.pretext.masks import MaskedPretext, grid_of, masked_clip, multiblock_mask
from rayssl.pretext.videomae import gather_tokens

#: The batch columns of the two masks, in the order the loss averages them.
MASK_KEYS = ("mask_short", "mask_long")


def momentum(step: int, start: float, end: float, steps: int) -> float:
    """EMA momentum at optimiser step `step` (0-based): start + (end - start) *
    min(1, step / steps); `start` throughout when steps is 0."""
    if steps <= 0:
        return start
    return start + (end - start) * min(1.0, step / steps)


class VJEPAHead(nn.Module):
    """The predictor and the EMA target encoder (set by `attach`)."""

    ema_steps: torch.Tensor

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = transformer_blocks(dim, depth, heads, 4 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, in_dim)
        self.dim = dim
        self.target: nn.Module | None = None
        #: EMA updates done (optimiser steps seen); in the state dict, so in checkpoints
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.int64))

    def set_target(self, backbone: nn.Module) -> None:
        """The target encoder: a copy of `backbone`, excluded from gradients."""
        self.target = copy.deepcopy(backbone)
        for p in self.target.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def ema_update(self, backbone: nn.Module, m: float) -> None:
        """target = m * target + (1 - m) * backbone, parameters and buffers; the first
        update (ema_steps 0) copies the backbone. Counts the step."""
        assert self.target is not None, "VJEPAHead.set_target was not called"
        online = dict(backbone.named_parameters()) | dict(backbone.named_buffers())
        first = int(self.ema_steps) == 0
        for name, t in [*self.target.named_parameters(), *self.target.named_buffers()]:
            o = online[name].detach()
            if first or not t.is_floating_point():
                t.copy_(o)
            else:
                t.mul_(m).add_(o.to(t.dtype), alpha=1.0 - m)
        self.ema_steps.add_(1)

    def forward(
        self, context: torch.Tensor, ctx_idx: torch.Tensor, tgt_idx: torch.Tensor, n: int
    ) -> torch.Tensor:
        """Predicted features (B, Kt, in_dim) at tgt_idx from context tokens (B, Kc, D)."""
        b = context.shape[0]
        table = sincos_table(n, self.dim).to(context.device, context.dtype).expand(b, -1, -1)
        h_ctx = self.embed(context) + gather_tokens(table, ctx_idx)
        h_tgt = self.mask_token.to(h_ctx.dtype) + gather_tokens(table, tgt_idx)
        h = torch.cat([h_ctx, h_tgt], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.proj(self.norm(h[:, -tgt_idx.shape[1] :]))


def context_and_targets(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, target) token indices (B, Kc), (B, Kt) of masks (B, N): every row keeps
    the batch's smallest count of visible (Kc) and masked (Kt) tokens, the first ones in
    token order."""
    kc = int((~mask).sum(1).min())
    kt = int(mask.sum(1).min())
    order_ctx = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)  # visible first
    order_tgt = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)  # masked first
    return order_ctx[:, :kc], order_tgt[:, :kt]


class VJEPAPretext(MaskedPretext):
    name = "vjepa"
    accuracy_name = None  # a regression: no accuracy to log
    encoder_prefix = "head.target."

    # ---------------------------------------------------------------- CPU half

    def masks(self, grid: tuple[int, int, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The short- and long-range masks of one sample."""
        s = self.settings
        specs = {
            "mask_short": (s.short_blocks, s.short_scale),
            "mask_long": (s.long_blocks, s.long_scale),
        }
        out = {}
        for key, (blocks, scale) in specs.items():
            if blocks:
                out[key] = multiblock_mask(
                    grid, blocks, scale, s.aspect_ratio, s.temporal_scale, rng
                )
        return out

    def make_sample(self, frames, plan, rng, augment, train=True) -> dict[str, np.ndarray]:
        s = self.settings
        clip = masked_clip(frames[0], augment, rng, train, s.thesis_augment, s.scales)
        return {"clip": clip, **self.masks(grid_of(clip.shape), rng)}

    def mask_keys(self) -> tuple[str, ...]:
        s = self.settings
        return tuple(
            k for k, b in zip(MASK_KEYS, (s.short_blocks, s.long_blocks), strict=True) if b
        )

    def target_spec(self, clip_shape):
        t, h, w = grid_of(clip_shape)
        spec: dict[str, tuple[tuple[int, ...], Any]] = {"clip": (clip_shape, np.uint8)}
        for key in self.mask_keys():
            spec[key] = ((t * h * w,), np.bool_)
        return spec

    # ---------------------------------------------------------------- GPU half
    def build_head(self, feature_dim: int, dropout: float = 0.0):
        s = self.settings
        return VJEPAHead(feature_dim, s.predictor_dim, s.predictor_depth, s.predictor_heads)

    def attach(self, backbone: nn.Module, head: VJEPAHead) -> None:  # type: ignore[override]
        """The target encoder starts as a copy of the backbone."""
        head.set_target(backbone)

    def encoder(self, backbone: nn.Module, head: VJEPAHead) -> nn.Module:  # type: ignore[override]
        """The EMA target encoder: what V-JEPA evaluates (its frozen evaluations load the
        checkpoint's `target_encoder`), the average of the context encoder's recent
        weights."""
        assert head.target is not None, "VJEPAHead.set_target was not called"
        return head.target

    def momentum_at(self, step: int) -> float:
        s = self.settings
        return momentum(step, s.momentum_start, s.momentum_end, s.momentum_steps)

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        raise TypeError("vjepa runs the encoder on the context tokens: use compute()")

    def compute(self, backbone, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """batch: "clip" (B, 3, T, H, W) float, "mask_short" / "mask_long" (B, N) bool,
        "valid" (B,) bool."""
        x, valid = batch["clip"], batch["valid"]
        if head.training and torch.is_grad_enabled():
            head.ema_update(backbone, self.momentum_at(int(head.ema_steps)))
        grid = (x.shape[2] // TUBELET, x.shape[3] // PATCH, x.shape[4] // PATCH)
        n = grid[0] * grid[1] * grid[2]
        with torch.no_grad():
            target = head.target.tokens(x)
            target = F.layer_norm(target.float(), (target.shape[-1],))
        default_rng = np.random.default_rng(0)
        losses = []
        for key in self.mask_keys():
            default = torch.from_numpy(self.masks(grid, default_rng)[key]).to(x.device)
            mask = torch.where(valid.view(-1, 1), batch[key], default.view(1, -1))
            ctx_idx, tgt_idx = context_and_targets(mask)
            pred = head(backbone.tokens(x, ctx_idx), ctx_idx, tgt_idx, n)
            losses.append((pred.float() - gather_tokens(target, tgt_idx)).abs().mean(dim=(1, 2)))
        per_sample = torch.stack(losses).mean(0)
        num_valid = valid.sum()
        loss = (per_sample * valid).sum() / num_valid.clamp(min=1)
        with torch.no_grad():
            m = torch.tensor(self.momentum_at(max(int(head.ema_steps) - 1, 0)), device=x.device)
        return loss, {
            "loss_sum": (per_sample.detach() * valid).sum(),
            "num_valid": num_valid.float(),
            # no accuracy: the loop logs every task's "acc"; 0 here
            "correct": torch.zeros((), device=loss.device),
            # the momentum of this step's EMA update, per valid sample ("train/ema_momentum")
            "ema_momentum_sum": m * num_valid,
        }
