"""`rayssl preview`: run the training clip pipeline on a few clips and save them.

Writes DIR/clips.npz (clips, indices, labels, paces, videos, class_labels; stats for
tasks with statistics; clips2, labels2, paces2 for contrastive pairs; a backwards clip
has a negative pace) and DIR/preview.png, a contact sheet with one row per clip (and
one for a pair's second clip), so a user can check exactly what the model is fed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from rayssl.clips.pipeline import build_clip_dataset, epoch_rows, sampler_spec, usable_videos
from rayssl.clips.statistics import pattern_masks
from rayssl.config import Config
from rayssl.io import storage
from rayssl.io.manifest import build_manifest, list_entries, read_manifest
from rayssl.pretext import build_pretext


def load_or_build_manifest(src: str, options: storage.StorageOptions | None, use_ray: bool = True):
    """A manifest URI (*.parquet) is read; a folder is indexed on the fly."""
    if src.endswith(".parquet"):
        return read_manifest(src, options=options)
    return build_manifest(list_entries(src, "folder", options=options), options, use_ray=use_ray)


def run_preview(
    cfg: Config,
    src: str,
    out_dir: str,
    num_clips: int = 16,
    epoch: int = 0,
) -> dict[str, Any]:
    """Sample `num_clips` clips with the training pipeline and write them to `out_dir`.

    Returns a summary: clips written and skipped draws by reason.
    """
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    table = load_or_build_manifest(src, options)
    videos = usable_videos(table, split="", fraction=cfg.data.fraction, seed=cfg.run.seed)
    if videos.num_rows == 0:
        raise ValueError(f"{src}: no usable video ({table.num_rows} rows, all with errors)")
    per_video = max(1, math.ceil(num_clips / videos.num_rows))
    rows = epoch_rows(videos, per_video, cfg.run.seed, epoch).slice(0, num_clips)
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    spec = sampler_spec(cfg.data, pretext, cfg.run.seed, True, options)
    sizes_vary = not cfg.data.augment.enabled and not cfg.data.augment.resize
    data_cfg = replace(cfg.data, rows_per_task=1) if sizes_vary else cfg.data
    samples = build_clip_dataset(rows, spec, data_cfg).take_all()
    valid = [s for s in samples if bool(s["valid"])]
    skipped: dict[str, int] = {}
    for s in samples:
        if not bool(s["valid"]):
            skipped[str(s["skip_reason"])] = skipped.get(str(s["skip_reason"]), 0) + 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    uri_of = dict(zip(videos["video_id"].to_pylist(), videos["uri"].to_pylist(), strict=True))
    arrays = {
        "clips": _stack([s["clip"] for s in valid]),
        "indices": np.stack([s["indices"] for s in valid]) if valid else np.zeros((0, 0), int),
        "labels": _labels(valid),
        "paces": np.array([float(s.get("pace", np.nan)) for s in valid], dtype=np.float32),
        "videos": np.array([uri_of[str(s["video_id"])] for s in valid]),
        "class_labels": np.array([int(s["class_label"]) for s in valid], dtype=np.int64),
    }
    if valid and "stats" in valid[0]:
        arrays["stats"] = np.stack([np.asarray(s["stats"], dtype=np.int64) for s in valid])
    if valid and "clip2" in valid[0]:  # contrastive pairs
        arrays["clips2"] = _stack([s["clip2"] for s in valid])
        arrays["labels2"] = np.array([int(s["label2"]) for s in valid], dtype=np.int64)
        arrays["paces2"] = np.array([float(s["pace2"]) for s in valid], dtype=np.float32)
    # numpy's stub types **kwds as the allow_pickle bool
    np.savez_compressed(out / "clips.npz", **arrays)  # type: ignore[arg-type]
    _contact_sheet(valid, out / "preview.png")
    return {"written": len(valid), "skipped": skipped, "out": str(out)}


def _labels(samples: list[dict[str, Any]]) -> np.ndarray:
    """The task's labels: (N,) for pace (its index; multi-task runs too, which also
    write "stats"), (N, 27) for statistics alone."""
    if samples and "stats" in samples[0] and "label" not in samples[0]:
        return np.stack([np.asarray(s["stats"], dtype=np.int64) for s in samples])
    return np.array([int(s.get("label", -1)) for s in samples], dtype=np.int64)


def _stack(clips: list[np.ndarray]) -> np.ndarray:
    if not clips:
        return np.zeros((0,), np.uint8)
    shapes = {c.shape for c in clips}
    if len(shapes) == 1:
        return np.stack(clips)
    # Native sizes differ between videos: pad to the largest (bottom/right, black).
    t = max(s[0] for s in shapes)
    h = max(s[1] for s in shapes)
    w = max(s[2] for s in shapes)
    out = np.zeros((len(clips), t, h, w, 3), np.uint8)
    for i, c in enumerate(clips):
        out[i, : c.shape[0], : c.shape[1], : c.shape[2]] = c
    return out


def _contact_sheet(samples: list[dict[str, Any]], path: Path, max_frames: int = 16) -> None:
    """One row per clip: its frames side by side, thumbnails 64 px high, a text label."""
    if not samples:
        cv2.imwrite(str(path), np.zeros((32, 32, 3), np.uint8))
        return
    thumb_h = 112 if "stats" in samples[0] else 64  # room to draw the statistics
    rows = []
    for s in samples:
        strip = _strip(s["clip"], thumb_h, max_frames)
        parts = [str(s["video_id"])]
        if "pace" in s:
            parts.append(_pace_caption(s, ""))
        if "stats" in s:
            parts.append(_statistics_caption(np.asarray(s["stats"])))
            strip = np.concatenate(
                [strip, _statistics_panels(s["clip"], np.asarray(s["stats"]), thumb_h)], axis=1
            )
        rows.append(_captioned(strip, "  ".join(parts)))
        if "clip2" in s:  # the second clip of a contrastive pair, from the same decode
            caption = f"{s['video_id']}  second clip: {_pace_caption(s, '2')}"
            rows.append(_captioned(_strip(s["clip2"], thumb_h, max_frames), caption))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    sheet = np.concatenate(rows, axis=0)
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def _strip(clip: np.ndarray, thumb_h: int, max_frames: int) -> np.ndarray:
    """A clip's frames side by side (at most max_frames), thumb_h pixels high."""
    step = max(1, math.ceil(clip.shape[0] / max_frames))
    frames = clip[::step]
    thumb_w = max(1, int(round(frames.shape[2] * thumb_h / frames.shape[1])))
    return np.concatenate([cv2.resize(f, (thumb_w, thumb_h)) for f in frames], axis=1)


def _captioned(strip: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((18, strip.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[:160], (2, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return np.concatenate([bar, strip], axis=0)


def _pace_caption(sample: dict[str, Any], suffix: str) -> str:
    """'pace=2 label=1', with 'backwards' for a reversed clip (its pace is negative)."""
    pace = float(sample.get(f"pace{suffix}", 0))
    label = int(sample.get(f"label{suffix}", -1))
    direction = " backwards" if pace < 0 else ""
    return f"pace={abs(pace):g}{direction} label={label}"


# ----------------------------------------------------------- statistics annotations
_PATTERNS = ("grid", "rings", "triangles")
# RGB colours: u motion red, v motion blue, most diverse yellow, most stable green.
_U, _V, _DIVERSE, _STABLE = (230, 30, 30), (40, 90, 255), (250, 220, 0), (0, 200, 60)


def _statistics_caption(labels: np.ndarray) -> str:
    """The frame and global colour labels (the panels show the rest)."""
    return (
        f"largest-motion frame u={int(labels[12])} v={int(labels[13])}  "
        f"global colour={int(labels[26])}  [red u, blue v: region + boundary orientation; "
        "yellow most diverse, green most stable colour]"
    )


def _outline(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
    m = mask.astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, colour, 1)


def _arrow(img, mask: np.ndarray, direction: int, colour) -> None:
    """An arrow at the region's centre along orientation bin `direction` (bin k is
    centred on 45 k degrees in image coordinates: 0 right, 2 down, 4 left, 6 up)."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    cx, cy = float(xs.mean()), float(ys.mean())
    angle = np.deg2rad(45.0 * direction)
    r = 0.3 * min(img.shape[:2])
    end = (int(round(cx + r * np.cos(angle))), int(round(cy + r * np.sin(angle))))
    cv2.arrowedLine(img, (int(round(cx)), int(round(cy))), end, colour, 1, tipLength=0.3)


def _statistics_panels(clip: np.ndarray, labels: np.ndarray, height: int) -> np.ndarray:
    """One panel per partition pattern: the clip's middle frame with the chosen regions
    outlined and the dominant boundary orientations drawn, `height` pixels high."""

    h, w = clip.shape[1:3]
    size = (max(1, int(round(w * height / h))), height)  # cv2 order: (width, height)
    masks = pattern_masks(h, w)
    panels = []
    for p, name in enumerate(_PATTERNS):
        img = cv2.resize(np.ascontiguousarray(clip[len(clip) // 2]), size)
        up = [
            cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
            for m in masks[p]
        ]
        u_loc, u_dir, v_loc, v_dir = (int(x) for x in labels[4 * p : 4 * p + 4])
        d_loc, _, s_loc, _ = (int(x) for x in labels[14 + 4 * p : 14 + 4 * p + 4])
        _outline(img, up[s_loc], _STABLE)
        _outline(img, up[d_loc], _DIVERSE)
        _outline(img, up[v_loc], _V)
        _outline(img, up[u_loc], _U)
        _arrow(img, up[u_loc], u_dir, _U)
        _arrow(img, up[v_loc], v_dir, _V)
        cv2.putText(img, name, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (255, 255, 255))
        panels.append(img)
    return np.concatenate(panels, axis=1)
