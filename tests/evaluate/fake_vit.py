"""A small ViT-like backbone with the feature-layer interface, for the evaluation tests
(the real ViTs live in rayssl.models.vit; these tests must not depend on them).

Tubelets of 2x8x8 pixels are embedded by a Conv3d, then `depth` residual MLP blocks mix
each token's channels; "block<i>" is the mean over tokens after block i (B, D), "tokens"
the last block's tokens (B, N, D) in raster order (time, rows, columns), and
`token_grid` their (T', H', W'). In an importable module so Ray workers can unpickle it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

TUBELET = (2, 8, 8)


class FakeViT(nn.Module):
    def __init__(self, dim: int = 16, depth: int = 2) -> None:
        super().__init__()
        self.embed = nn.Conv3d(3, dim, kernel_size=TUBELET, stride=TUBELET)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)
        )
        self.out_dim = dim
        self.feature_layers = (*(f"block{i + 1}" for i in range(depth)), "tokens")

    def token_grid(self, clip_shape: Sequence[int]) -> tuple[int, int, int]:
        t, h, w = clip_shape
        return t // TUBELET[0], h // TUBELET[1], w // TUBELET[2]

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ("tokens",)
    ) -> dict[str, torch.Tensor]:
        bad = [name for name in layers if name not in self.feature_layers]
        if bad:
            raise ValueError(f"{bad} not layers of FakeViT; it has {list(self.feature_layers)}")
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D), raster order
        out = {}
        for i, block in enumerate(self.blocks):
            tokens = tokens + block(tokens)
            out[f"block{i + 1}"] = tokens.mean(dim=1)
        out["tokens"] = tokens
        return {name: out[name] for name in layers}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x, [f"block{len(self.blocks)}"])[f"block{len(self.blocks)}"]
