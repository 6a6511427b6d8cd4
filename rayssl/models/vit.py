"""Video Vision Transformers (ViT-S/16, ViT-B/16, ViT-L/16 and a tiny CPU one) built from
`transformers`' VideoMAE classes (Apache-2.0), so the blocks are a maintained
implementation and public weights in that library's format load as `model.init`.

A clip (B, 3, T, H, W) is cut into 2x16x16 tubelets (a Conv3d), each becomes a token of
width D; a fixed sine-cosine position table (VideoMAE's, over the tokens in (t, h, w)
row-major order) is added, then the pre-norm transformer blocks run, then a final
LayerNorm. The table is built for the clip the model is given (the run's `data.clip_len`
and `data.augment.crop`, each a multiple of the tubelet / patch size), so one set of
weights runs at any clip size; a model pre-trained at one size should be evaluated at
that size, because the 1D table ties a position to its place in the flattened grid.

Feature layers (`feature_layers`, `forward_features`): "block{i}" is the mean over tokens
after block i (1-based, (B, D)); "tokens" is the last block's normalised tokens (B, N, D)
for the attentive probe. `forward` returns the mean of the last block's normalised tokens
(B, out_dim); `forward_map` the same tokens as a (B, D, T', H', W') map (heads that read
the feature map, attention maps). The masked pretexts run the encoder on a subset of the
tokens (`tokens(x, keep)`).

`transformers` is imported lazily (inside the builders): importing it takes about 5 s,
which every CLI command and Ray worker that never builds a ViT would otherwise pay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayssl.models.droppath import add_block_drop_path

#: Tubelet (frames) and patch (pixels) size of every preset: VideoMAE's 2x16x16.
TUBELET = 2
PATCH = 16


@dataclass(frozen=True)
class ViTPreset:
    """The shape of a ViT: width D, blocks, heads, MLP width, and the clip size the
    published models use (documentation of the nominal input; any size runs)."""

    hidden: int
    depth: int
    heads: int
    mlp: int
    frames: int = 16
    size: int = 224


VIT_PRESETS: dict[str, ViTPreset] = {
    # 4 blocks of width 192 at 8x112x112 (4x7x7 = 196 tokens): CPU tests, debug runs
    "vit_tiny": ViTPreset(hidden=192, depth=4, heads=3, mlp=768, frames=8, size=112),
    "vit_s16": ViTPreset(hidden=384, depth=12, heads=6, mlp=1536),
    "vit_b16": ViTPreset(hidden=768, depth=12, heads=12, mlp=3072),
    "vit_l16": ViTPreset(hidden=1024, depth=24, heads=16, mlp=4096),
}


def videomae_config(preset: ViTPreset, **overrides: Any):
    """A `transformers.VideoMAEConfig` for `preset` (final LayerNorm kept:
    use_mean_pooling False; eps 1e-6 as the original VideoMAE; SDPA attention)."""
    from transformers import VideoMAEConfig  # lazy: importing transformers takes ~5 s

    values: dict[str, Any] = {
        "image_size": preset.size,
        "patch_size": PATCH,
        "num_frames": preset.frames,
        "tubelet_size": TUBELET,
        "hidden_size": preset.hidden,
        "num_hidden_layers": preset.depth,
        "num_attention_heads": preset.heads,
        "intermediate_size": preset.mlp,
        "layer_norm_eps": 1e-6,
        "use_mean_pooling": False,
        "attn_implementation": "sdpa",
    }
    values.update(overrides)
    return VideoMAEConfig(**values)


def transformer_blocks(dim: int, depth: int, heads: int, mlp: int) -> nn.ModuleList:
    """`depth` pre-norm transformer blocks of width `dim` (VideoMAE's layer class): the
    masked pretexts' narrow decoder and predictor."""
    from transformers.models.videomae.modeling_videomae import (  # lazy: ~5 s import
        VideoMAELayer,
    )

    preset = ViTPreset(hidden=dim, depth=depth, heads=heads, mlp=mlp)
    config = videomae_config(preset)
    return nn.ModuleList([VideoMAELayer(config) for _ in range(depth)])


def sincos_table(num_tokens: int, dim: int) -> torch.Tensor:
    """VideoMAE's fixed position table (1, num_tokens, dim): position p, channel 2i is
    sin(p / 10000^(2i/dim)), channel 2i+1 its cosine. Computed here in torch (the
    library's numpy version loops in Python over every entry); a test checks they agree."""
    pos = torch.arange(num_tokens, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty(num_tokens, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angle[:, 0::2])
    table[:, 1::2] = torch.cos(angle[:, 1::2])
    return table.float().unsqueeze(0)


def token_grid(clip_shape: Sequence[int]) -> tuple[int, int, int]:
    """Tokens (T', H', W') of a clip of shape (..., T, H, W): a clip whose sides are not
    multiples of the tubelet / patch size is a ValueError naming them."""
    t, h, w = (int(v) for v in clip_shape[-3:])
    if t % TUBELET or h % PATCH or w % PATCH:
        raise ValueError(
            f"a ViT needs clips of a multiple of {TUBELET} frames and {PATCH}-pixel sides; "
            f"got {t}x{h}x{w} (set data.clip_len and data.augment.crop)"
        )
    return t // TUBELET, h // PATCH, w // PATCH


class VideoViT(nn.Module):
    """A video ViT on clips (B, 3, T, H, W); see the module docstring."""

    #: a transformers VideoMAEModel (typed Any: the library's classes are untyped here)
    model: Any

    def __init__(self, model: nn.Module, name: str = "vit") -> None:
        super().__init__()
        self.model = model
        self.name = name
        config: Any = model.config
        self.out_dim: int = int(config.hidden_size)
        self.depth: int = int(config.num_hidden_layers)
        self.feature_layers: tuple[str, ...] = (
            *(f"block{i}" for i in range(1, self.depth + 1)),
            "tokens",
        )
        #: recompute each block's activations in the backward pass (memory for time);
        #: the hook a training config's activation-checkpointing key sets
        self.activation_checkpointing = False
        self._tables: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    @property
    def norm(self) -> nn.Module:
        # a VideoMAEModel saved with use_mean_pooling has no final norm (see load_videomae)
        norm = self.model.layernorm
        return norm if norm is not None else nn.Identity()

    def _table(self, n: int, like: torch.Tensor) -> torch.Tensor:
        key = (n, like.device, like.dtype)
        if key not in self._tables:
            self._tables[key] = sincos_table(n, self.out_dim).to(like.device, like.dtype)
        return self._tables[key]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens with positions (B, N, D) of clips (B, 3, T, H, W), N = T'H'W'."""
        token_grid(x.shape)
        tokens = self.model.embeddings.patch_embeddings.projection(x).flatten(2).transpose(1, 2)
        return tokens + self._table(tokens.shape[1], tokens)

    def _run_block(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, use_reentrant=False)
        return block(h)

    def tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The last block's normalised tokens (B, K, D) of the tokens `keep` (B, K) int64
        indices into the N tokens (None: all, K = N), the others never entering a block."""
        h = self.embed(x)
        if keep is not None:
            h = torch.gather(h, 1, keep.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        for block in self.blocks:
            h = self._run_block(block, h)
        return self.norm(h)

    def token_grid(self, clip_shape: Sequence[int]) -> tuple[int, int, int]:
        """(T', H', W') of the "tokens" layer for clips of `clip_shape` (..., T, H, W): the
        tokens are that grid in raster order (the feature-layer interface)."""
        return token_grid(clip_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the last block's normalised tokens, (B, out_dim)."""
        return self.tokens(x).mean(1)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's normalised tokens as a map (B, D, T', H', W')."""
        t, h, w = token_grid(x.shape)
        tok = self.tokens(x)
        return tok.transpose(1, 2).reshape(tok.shape[0], self.out_dim, t, h, w)

    def forward_features(
        self, x: torch.Tensor, layers: Sequence[str] = ("tokens",)
    ) -> dict[str, torch.Tensor]:
        """Outputs keyed by the names in `layers` (a subset of `feature_layers`, in the
        order given); blocks after the deepest requested one are not run."""
        unknown = [name for name in layers if name not in self.feature_layers]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; valid: {list(self.feature_layers)}")
        wanted = set(layers)
        last = self.depth if "tokens" in wanted else max(int(n[5:]) for n in wanted)
        outputs: dict[str, torch.Tensor] = {}
        h = self.embed(x)
        for i, block in enumerate(self.blocks[:last], start=1):
            h = self._run_block(block, h)
            if f"block{i}" in wanted:
                outputs[f"block{i}"] = h.mean(1)
        if "tokens" in wanted:
            outputs["tokens"] = self.norm(h)
        return {name: outputs[name] for name in layers}


def build_vit(name: str, width: float = 1.0) -> VideoViT:
    """The ViT preset `name` (a key of `VIT_PRESETS`), randomly initialised (the
    library's truncated-normal init, seeded by the caller's torch seed). ViTs have no
    channel multiplier: `width` must be 1."""
    from transformers import VideoMAEModel  # lazy: importing transformers takes ~5 s

    if width != 1.0:
        raise ValueError(
            f"{name}: ViTs have no width multiplier (model.width {width:g}); pick a size "
            f"instead: {sorted(VIT_PRESETS)}"
        )
    preset = VIT_PRESETS[name]
    # built for one tubelet: the library's embeddings would fill a position table for
    # the nominal clip in a Python loop (~4 s for ViT-B) that `VideoViT` never reads
    # (it builds its own for the clip it is given); the config then states the nominal
    # clip again
    model = VideoMAEModel(videomae_config(preset, image_size=PATCH, num_frames=TUBELET))
    model.config.image_size, model.config.num_frames = preset.size, preset.frames
    return VideoViT(model, name=name)


def _preset_builder(name: str):
    def build(width: float = 1.0, drop_path: float = 0.0) -> VideoViT:
        vit = build_vit(name, width)
        if drop_path > 0:
            # transformers' VideoMAE blocks have no stochastic depth: added from outside
            add_block_drop_path(vit.blocks, drop_path)
        return vit

    build.__name__ = name
    build.__doc__ = f"{name}: {VIT_PRESETS[name]} (see `build_vit`)."
    return build


vit_tiny = _preset_builder("vit_tiny")
vit_s16 = _preset_builder("vit_s16")
vit_b16 = _preset_builder("vit_b16")
vit_l16 = _preset_builder("vit_l16")

#: Files of a model folder in the library's format (`save_pretrained`).
PRETRAINED_FILES = ("config.json", "model.safetensors")


def is_pretrained_folder(path: str | Path) -> bool:
    """Whether a local folder holds a model in the library's format."""
    p = Path(path)
    return p.is_dir() and all((p / f).is_file() for f in PRETRAINED_FILES)


def preset_of(config: dict[str, Any]) -> str:
    """The `VIT_PRESETS` name whose shape a VideoMAE config dict has, or a ValueError."""
    shape = tuple(
        int(config.get(k, -1))
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    )
    for name, p in VIT_PRESETS.items():
        if (p.hidden, p.depth, p.heads, p.mlp) == shape and (
            int(config.get("patch_size", PATCH)),
            int(config.get("tubelet_size", TUBELET)),
        ) == (PATCH, TUBELET):
            return name
    raise ValueError(
        f"no ViT preset has this shape (hidden, blocks, heads, mlp) {shape} with "
        f"{TUBELET}x{PATCH}x{PATCH} tubelets; presets: {sorted(VIT_PRESETS)}"
    )


def load_videomae_state(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The encoder weights of a VideoMAE model saved in the library's format
    (config.json + model.safetensors: a VideoMAEModel, or a pre-training / classification
    model whose encoder is under `videomae.`), keyed as `VideoViT.state_dict()` keys
    them, and the folder's config as a dict. Read with local files only: nothing is
    downloaded. A model saved without a final norm (use_mean_pooling) gets an identity
    LayerNorm (weight 1, bias 0), the norm's initial value."""
    from transformers import VideoMAEConfig, VideoMAEModel  # lazy: ~5 s import

    folder = Path(folder)
    config = VideoMAEConfig.from_pretrained(folder, local_files_only=True)
    if getattr(config, "model_type", "videomae") != "videomae":
        raise ValueError(f"{folder}: a {config.model_type!r} model, not a VideoMAE one")
    loaded: Any = VideoMAEModel.from_pretrained(
        folder, config=config, local_files_only=True, output_loading_info=True
    )
    model, info = loaded
    # the library would leave weights it did not find at their random init, with a
    # warning: here that is an error naming them
    missing = sorted(info.get("missing_keys", ()))
    shapes = list(info.get("mismatched_keys", ()))
    if missing or shapes:
        raise ValueError(
            f"{folder}: the saved model lacks {len(missing)} encoder weights {missing[:5]}"
            + (f" and {len(shapes)} have other shapes {shapes[:3]}" if shapes else "")
        )
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    if model.layernorm is None:
        dim = int(config.hidden_size)
        state["model.layernorm.weight"] = torch.ones(dim)
        state["model.layernorm.bias"] = torch.zeros(dim)
    return state, config.to_dict()


__all__ = [
    "PATCH",
    "TUBELET",
    "VIT_PRESETS",
    "VideoViT",
    "build_vit",
    "is_pretrained_folder",
    "preset_of",
    "load_videomae_state",
    "sincos_table",
    "token_grid",
    "transformer_blocks",
    "videomae_config",
    "vit_b16",
    "vit_l16",
    "vit_s16",
    "vit_tiny",
]
