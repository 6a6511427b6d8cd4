"""VideoMAE (Tong et al. 2022): masked video modelling by pixel reconstruction on a ViT.

CPU half: one clip of `data.clip_len` frames `videomae.frame_stride` apart (a pace-`stride`
draw, `rayssl.clips.sampling.draw_pace_clip`); VideoMAE's multi-scale crop + flip (or
the thesis pipeline: `videomae.thesis_augment`); then the tube mask
(`rayssl.pretext.masks.tube_mask`), drawn from the draw's seeded generator after the
augmentation: a "mask" row (N,) bool, so a draw's mask is as reproducible and resumable
as its frames.

GPU half: the encoder runs on the visible tokens only (`VideoViT.tokens(x, keep)`); a
narrow decoder (`videomae.decoder_*`: VideoMAE's layer class) sees them projected to its
width plus a learnt mask token at every masked place, each with the fixed position
table, and predicts the masked tubelets' pixels; the loss is the MSE against each
masked patch's pixels normalised by the patch's own mean and (unbiased) std per channel
(`patch_targets`), averaged over the masked tokens of each valid sample, then over
valid samples. The target is computed from the model input (the clip normalised by
fixed per-channel constants): per-patch normalisation removes any per-channel affine
map, so it equals the target of the raw pixels (up to the 1e-6 in the denominator).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from rayssl.models.vit import PATCH, TUBELET, sincos_table, transformer_blocks
from rayssl.pretext.base import Features
from rayssl.pretext.masks import MaskedPretext, grid_of, masked_clip, masked_per_frame, tube_mask


def patch_targets(x: torch.Tensor, normalise: bool = True) -> torch.Tensor:
    """Pixels of every tubelet of clips x (B, C, T, H, W) as (B, N, 2*16*16*C): token
    order (t, h, w), inside a token (frame, row, column, channel). With `normalise`,
    each token's pixels of each channel minus their mean over the 2*16*16 pixels, divided
    by their unbiased std + 1e-6 (VideoMAE's `norm_pix_loss`)."""
    b, c, t, h, w = x.shape
    p = x.reshape(b, c, t // TUBELET, TUBELET, h // PATCH, PATCH, w // PATCH, PATCH)
    # (b, t', h', w', p0, p1, p2, c) -> (b, N, P, c)
    p = p.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, -1, TUBELET * PATCH * PATCH, c)
    if normalise:
        p = (p - p.mean(dim=2, keepdim=True)) / (
            p.var(dim=2, unbiased=True, keepdim=True).sqrt() + 1e-6
        )
    return p.reshape(b, p.shape[1], -1)


def fill_invalid_masks(
    mask: torch.Tensor, valid: torch.Tensor, default: torch.Tensor
) -> torch.Tensor:
    """Masks (B, N) with the rows of invalid samples (placeholders of clips that failed to
    decode: all False) replaced by `default` (N,), so every row masks a valid number of
    tokens; those rows carry no loss."""
    return torch.where(valid.view(-1, 1), mask, default.to(mask.device).view(1, -1))


def split_tokens(mask: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visible, masked) token indices (B, keep) and (B, N - keep) of masks (B, N) that
    each leave exactly `keep` tokens visible, each in ascending order."""
    order = torch.argsort(mask.to(torch.uint8), dim=1, stable=True)
    return order[:, :keep], order[:, keep:]


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens (B, N, D) at index (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class VideoMAEDecoder(nn.Module):
    """Encoder tokens (B, K, D) -> predicted pixels (B, M, 2*16*16*3) of the M masked
    tokens: a linear map to the decoder width, mask tokens, position table, blocks,
    LayerNorm, linear."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.encoder_to_decoder = nn.Linear(in_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.blocks = transformer_blocks(dim, depth, heads, 4 * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, 3 * TUBELET * PATCH * PATCH)
        self.dim = dim

    def forward(
        self, encoded: torch.Tensor, visible: torch.Tensor, masked: torch.Tensor, n: int
    ) -> torch.Tensor:
        table = (
            sincos_table(n, self.dim)
            .to(encoded.device, encoded.dtype)
            .expand(encoded.shape[0], -1, -1)
        )
        h_vis = self.encoder_to_decoder(encoded) + gather_tokens(table, visible)
        h_mask = self.mask_token.to(h_vis.dtype) + gather_tokens(table, masked)
        h = torch.cat([h_vis, h_mask], dim=1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h[:, -masked.shape[1] :]))


class VideoMAEPretext(MaskedPretext):
    name = "videomae"
    accuracy_name = None  # a regression: no accuracy to log

    # ---------------------------------------------------------------- CPU half

    def make_sample(self, frames, plan, rng, augment, train=True) -> dict[str, np.ndarray]:
        s = self.settings
        clip = masked_clip(frames[0], augment, rng, train, s.thesis_augment, s.scales)
        return {"clip": clip, "mask": tube_mask(grid_of(clip.shape), s.mask_ratio, rng)}

    def target_spec(self, clip_shape):
        t, h, w = grid_of(clip_shape)
        return {"clip": (clip_shape, np.uint8), "mask": ((t * h * w,), np.bool_)}

    # ---------------------------------------------------------------- GPU half
    def build_head(self, feature_dim: int, dropout: float = 0.0):
        s = self.settings
        return VideoMAEDecoder(feature_dim, s.decoder_dim, s.decoder_depth, s.decoder_heads)

    def loss(self, features: Features, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        raise TypeError("videomae runs the encoder on the visible tokens: use compute()")

    def compute(self, backbone, head, batch: dict) -> tuple[Any, dict[str, Any]]:
        """batch: "clip" (B, 3, T, H, W) float, "mask" (B, N) bool, "valid" (B,) bool."""
        x, valid = batch["clip"], batch["valid"]
        grid = (x.shape[2] // TUBELET, x.shape[3] // PATCH, x.shape[4] // PATCH)
        n = grid[0] * grid[1] * grid[2]
        default = torch.from_numpy(
            tube_mask(grid, self.settings.mask_ratio, np.random.default_rng(0))
        )
        mask = fill_invalid_masks(batch["mask"], valid, default)
        keep = n - grid[0] * masked_per_frame(grid, self.settings.mask_ratio)
        counts = (~mask).sum(1)
        if bool((counts != keep).any()):
            raise ValueError(
                f"videomae: masks leave {sorted(set(counts.tolist()))} tokens visible, "
                f"expected {keep} (mask_ratio {self.settings.mask_ratio} of a {grid} grid)"
            )
        visible, masked = split_tokens(mask, keep)
        pred = head(backbone.tokens(x, visible), visible, masked, n)  # (B, M, P)
        with torch.no_grad():
            target = gather_tokens(patch_targets(x.float(), self.settings.norm_pix), masked)
        per_sample = ((pred.float() - target) ** 2).mean(dim=(1, 2))
        num_valid = valid.sum()
        loss = (per_sample * valid).sum() / num_valid.clamp(min=1)
        return loss, {
            "loss_sum": (per_sample.detach() * valid).sum(),
            "num_valid": num_valid.float(),
            # no accuracy: the loop logs every task's "acc"; 0 here
            "correct": torch.zeros((), device=loss.device),
        }
