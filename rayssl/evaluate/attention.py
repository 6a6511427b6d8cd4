"""Activation-based attention maps (Zagoruyko & Komodakis 2017), as in thesis Fig. 2.8,
3.7 and 4.8: the sum over channels of the squared conv5 activations, upsampled to the
clip (trilinear in time and space), min-max normalised per clip, overlaid on frames.
On a backbone without conv stages (a ViT) the activations are a token layer's (`tokens`)
laid out on the backbone's token grid (`token_grid`): the same sum over channels per token.

`attention_from_activations` and `overlay` are plain numpy/torch (unit-tested);
`attention_grid_png` decodes the chosen videos' centre clips in-process (a handful of
videos, no Ray) and writes one PNG: a row per video, frames across the clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import cv2
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from rayssl.config import ConfigError, DataConfig, _check_layers, _in_range
from rayssl.evaluate.registry import Evaluation, Outcome, RunContext, register
from rayssl.train.inference import DecodeSpec, clips_to_input, decode_eval_row, usable


def attention_from_activations(act: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """(B, C, T', H', W') activations -> (B, T, H, W) attention in [0, 1].

    A = sum_c act_c^2, upsampled to `size` = (T, H, W), then min-max normalised per clip
    (a constant map becomes 0)."""
    a = act.float().pow(2).sum(dim=1, keepdim=True)  # (B, 1, T', H', W')
    a = F.interpolate(a, size=size, mode="trilinear", align_corners=False)[:, 0]
    flat = a.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    scale = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return ((a - lo.view(-1, 1, 1, 1)) / scale.view(-1, 1, 1, 1)).clamp(0, 1)


def has_conv_stages(backbone: nn.Module) -> bool:
    """Whether `backbone` is a five-stage CNN (`VideoBackbone`: stages, last_stage_parts)."""
    return hasattr(backbone, "stages") and callable(getattr(backbone, "last_stage_parts", None))


def token_activations(backbone: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Token layer `layer` of clips x as activations on the backbone's token grid,
    (B, D, T', H', W'); ValueError when the backbone has no grid for its tokens."""
    model = cast(Any, backbone)
    grid_of = getattr(model, "token_grid", None)
    if not callable(grid_of):
        raise ValueError(
            f"attention: backbone {type(backbone).__name__} has no conv stages and no "
            "token_grid to lay its tokens out in space and time"
        )
    tokens = model.forward_features(x, [layer])[layer]
    if tokens.dim() != 3:
        raise ValueError(f"attention.layer: {layer} gives {tuple(tokens.shape)}, not tokens")
    t, h, w = grid_of(tuple(x.shape[2:]))
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], t, h, w)


@torch.no_grad()
def attention_maps(backbone: nn.Module, x: torch.Tensor, layer: str = "") -> torch.Tensor:
    """Attention of clips x (B, 3, T, H, W) at the last conv stage (conv5), or with a
    `layer` of tokens at that layer: (B, T, H, W)."""
    if layer or not has_conv_stages(backbone):
        act = token_activations(backbone, x, layer or "tokens")
        return attention_from_activations(act, tuple(x.shape[2:]))  # type: ignore[arg-type]
    model = cast(Any, backbone)
    h = x
    for stage in list(model.stages)[:-1]:
        h = stage(h)
    convs, _ = model.last_stage_parts()  # C3D's stage 5 ends with pool5: attend before it
    h = convs(h)
    return attention_from_activations(h, tuple(x.shape[2:]))  # type: ignore[arg-type]


def overlay(frame: np.ndarray, attention: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB uint8 frame (H, W, 3) blended with a JET heat map of attention (H, W) in
    [0, 1] (red = high)."""
    heat = cv2.applyColorMap((attention * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)


MIN_TILE_HEIGHT = 96


def _label(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((16, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[:80], (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
    return np.concatenate([bar, img], axis=0)


def grid_image(
    clips: np.ndarray, maps: np.ndarray, titles: Sequence[str], num_frames: int = 4
) -> np.ndarray:
    """Rows of [frame, overlay] pairs at `num_frames` times across each clip.

    clips (N, T, H, W, 3) uint8, maps (N, T, H, W) in [0, 1] -> (rows, cols, 3) uint8 RGB."""
    rows = []
    scale = max(1, -(-MIN_TILE_HEIGHT // clips.shape[2]))  # small crops are enlarged
    for clip, amap, title in zip(clips, maps, titles, strict=True):
        times = [int(t) for t in np.round(np.linspace(0, len(clip) - 1, num_frames))]
        tiles = []
        for t in times:
            tiles += [clip[t], overlay(clip[t], amap[t])]
        strip = np.concatenate(tiles, axis=1)
        if scale > 1:
            strip = cv2.resize(
                strip,
                (strip.shape[1] * scale, strip.shape[0] * scale),
                interpolation=cv2.INTER_NEAREST,
            )
        rows.append(_label(strip, f"{title}  frames {times}: frame | attention"))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate(rows, axis=0)


def choose_videos(table: pa.Table, video_ids: Sequence[str], num_videos: int, split: str) -> list:
    """The rows to show: `video_ids` if given, else the first video of each class of
    `split` ('' = all), up to `num_videos`."""
    rows = table.to_pylist()
    if video_ids:
        by_id = {r["video_id"]: r for r in rows}
        missing = [v for v in video_ids if v not in by_id]
        if missing:
            raise ValueError(f"attention: videos {missing[:3]} are not usable in the manifest")
        return [by_id[v] for v in video_ids]
    chosen: dict[int, dict] = {}
    for r in rows:
        if split and r.get("split") != split:
            continue
        chosen.setdefault(int(r.get("label", -1)), r)
    return [chosen[k] for k in sorted(chosen)][:num_videos]


def centre_clip(row: dict[str, Any], data: DataConfig) -> dict[str, Any]:
    """The centre `data.clip_len`-frame clip of a manifest row's video (`uniform:1`),
    resized and centre-cropped as the features are: `decode_eval_row`'s sample."""
    spec = DecodeSpec.from_settings("uniform:1", data, max_clips=1)
    [sample] = decode_eval_row({**row, "chunk": 0}, spec)
    return sample


def attention_grid_png(
    backbone: nn.Module,
    table: pa.Table,
    data: DataConfig,
    path: str | Path,
    *,
    video_ids: Sequence[str] = (),
    num_videos: int = 4,
    split: str = "",
    num_frames: int = 4,
    layer: str = "",
) -> list[str]:
    """Write the attention grid of the chosen usable videos of `table` to `path`; returns
    the video ids shown (videos that cannot be read are left out)."""

    clips, titles, unread = [], [], []
    for row in choose_videos(table, video_ids, num_videos, split):
        sample = centre_clip(row, data)
        if sample["valid"]:
            clips.append(sample["clip"])
            titles.append(f"{row['video_id']} ({row.get('label_name') or row.get('label')})")
        else:
            unread.append(f"{row['video_id']}: {sample.get('skip_reason') or 'unknown'}")
    if not clips:
        why = "; ".join(unread) or "no video chosen"
        raise ValueError(f"attention: none of the chosen videos could be read ({why})")
    batch = np.stack(clips)
    backbone.eval()
    maps = attention_maps(backbone, clips_to_input(batch, torch.device("cpu")), layer).numpy()
    img = grid_image(batch, maps, titles, num_frames)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return [t.split(" ")[0] for t in titles]


# --------------------------------------------------------------------------- the suite's


@dataclass
class AttentionSettings:
    """Activation-based attention maps of conv5 overlaid on frames (a PNG grid)."""

    enabled: bool = True
    layer: str = ""
    """'' = the last conv stage (conv5) of a CNN, the "tokens" of a backbone without
    conv stages (a ViT); or a token layer of the backbone (e.g. pool5_map)."""
    videos: list[str] = field(default_factory=list)
    """Video ids to show; [] = the first video of each class of `split`."""
    num_videos: int = 4
    split: str = "test"
    num_frames: int = 4

    def validate(self, prefix: str) -> None:
        if self.layer:
            _check_layers(f"{prefix}.layer", [self.layer])
        _in_range(f"{prefix}.num_videos", self.num_videos, 1, None)
        _in_range(f"{prefix}.num_frames", self.num_frames, 1, None)


@register
class Attention(Evaluation):
    """A picture, no results: DIR/attention.png."""

    name = "attention"
    settings = AttentionSettings
    order = 40
    files = ("attention.png",)

    def splits(self, s: AttentionSettings) -> set[str] | None:
        return {s.split} if s.split else None

    def bind(self, s: AttentionSettings, backbone: Any) -> AttentionSettings:
        if s.layer or has_conv_stages(backbone):
            return s
        if not callable(getattr(backbone, "token_grid", None)):
            raise ConfigError(
                f"attention: backbone {type(backbone).__name__} has no conv stages and no "
                "token_grid to lay its tokens out (attention.enabled=false to skip it)"
            )
        return replace(s, layer="tokens")

    def layer_keys(self, s: AttentionSettings, suite: Any) -> dict[str, list[str]]:
        return {"attention.layer": [s.layer]} if s.layer else {}

    def run(self, s: AttentionSettings, ctx: RunContext) -> Outcome:
        path = ctx.out.path("attention.png")
        shown = attention_grid_png(
            ctx.backbone,
            usable(ctx.table),
            ctx.suite.data,
            path,
            video_ids=s.videos,
            num_videos=s.num_videos,
            split=s.split,
            num_frames=s.num_frames,
            layer=s.layer,
        )
        return Outcome({}, [f"attention maps of {len(shown)} videos: {path}"])
