"""Which clip geometry (frames, resize, crop) and normalisation features are extracted at.

A backbone is evaluated on the clips it was trained on: `rayssl features --checkpoint X`
and `rayssl evaluate` take the checkpoint's own geometry when the checkpoint records it
(its training config: a `state.pt`, a `backbone.pt`, a `runs:/` run's config.yaml, an
export's config.json; else an export's settings JSON, `rayssl_model.json`), and a key the
command's config or overrides set explicitly wins over it. Without either the defaults
apply (112 px crops of 16 frames), and the line printed says so.

`choose_geometry` decides (a pure function, no Ray, no I/O); `explicit_keys` tells which
geometry keys a config file's values and the command line's overrides set.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rayssl.checkpoint import BackboneSource
from rayssl.config import ConfigError, DataConfig, parse_override
from rayssl.models.heads import MEAN, STD

CLIP_LEN, RESIZE, CROP = "data.clip_len", "data.augment.resize", "data.augment.crop"
GEOMETRY_KEYS = (CLIP_LEN, RESIZE, CROP)


def _lookup(values: Any, key: str) -> tuple[bool, Any]:
    node = values
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def explicit_keys(values: Mapping[str, Any] | None, overrides: Sequence[str] = ()) -> set[str]:
    """The geometry keys (`GEOMETRY_KEYS`) a config file's `values` or the `overrides`
    (key=value, a parent key with a mapping value too: data.augment={crop: [64, 64]}) set."""
    found = {k for k in GEOMETRY_KEYS if _lookup(values or {}, k)[0]}
    for text in overrides:
        path, value = parse_override(text)
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        found |= {k for k in GEOMETRY_KEYS if _lookup(nested, k)[0]}
    return found


@dataclass(frozen=True)
class ClipGeometry:
    """The geometry and normalisation features are extracted at, and where they came from."""

    clip_len: int
    resize: tuple[int, ...]
    crop: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    origin: str

    def apply(self, data: DataConfig) -> DataConfig:
        """`data` with this geometry."""
        augment = replace(data.augment, resize=list(self.resize), crop=list(self.crop))
        return replace(data, clip_len=self.clip_len, augment=augment)

    @property
    def renormalise(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) when they differ from the pipeline's (`MEAN`, `STD`), else None."""
        same = _close(self.mean, MEAN) and _close(self.std, STD)
        return None if same else (self.mean, self.std)

    def line(self) -> str:
        """One line saying which geometry is used and where it came from."""
        size = "x".join(str(v) for v in self.resize) if self.resize else "native"
        crop = "x".join(str(v) for v in self.crop)
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return (
            f"clip geometry: {self.clip_len} frames, resize {size}, centre crop {crop}, "
            f"normalisation mean ({mean}) std ({std}): {self.origin}"
        )


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        abs(float(x) - float(y)) < 1e-6 for x, y in zip(a, b, strict=True)
    )


def _ints(value: Any, key: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise ConfigError(f"{where}: {key} {value!r} is not a list of positive integers")
    return tuple(int(v) for v in value)


def checkpoint_geometry(source: BackboneSource) -> tuple[dict[str, Any], str] | None:
    """({key: value} of `GEOMETRY_KEYS`, where from) that `source` records, or None.
    A training config records all three (its defaults where it was silent: what it
    trained on); an export's settings JSON records its `clip`."""
    where = f"checkpoint {source.label}"
    data = (source.config or {}).get("data")
    if isinstance(data, Mapping):
        d = DataConfig()
        found = {
            CLIP_LEN: data.get("clip_len", d.clip_len),
            RESIZE: _lookup(data, "augment.resize")[1]
            if _lookup(data, "augment.resize")[0]
            else d.augment.resize,
            CROP: _lookup(data, "augment.crop")[1]
            if _lookup(data, "augment.crop")[0]
            else d.augment.crop,
        }
        return found, f"{where}'s training config"
    clip = (source.settings or {}).get("clip")
    if isinstance(clip, Mapping) and "frames" in clip:
        found = {CLIP_LEN: clip.get("frames"), RESIZE: clip.get("resize"), CROP: clip.get("crop")}
        return found, f"{where}'s export settings (rayssl_model.json)"
    return None


def checkpoint_normalisation(source: BackboneSource) -> tuple[tuple[float, ...], ...] | None:
    """(mean, std) an export's settings record, or None (every rayssl-trained backbone
    uses the pipeline's `MEAN` / `STD`)."""
    norm = (source.settings or {}).get("normalisation")
    if not isinstance(norm, Mapping):
        return None
    mean, std = norm.get("mean"), norm.get("std")
    ok = all(
        isinstance(v, list)
        and len(v) == 3
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
        for v in (mean, std)
    )
    if not ok or not all(float(x) > 0 for x in std):  # type: ignore[union-attr]
        raise ConfigError(
            f"checkpoint {source.label}: rayssl_model.json normalisation {norm!r} is not "
            "3 means and 3 positive standard deviations"
        )
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)  # type: ignore[union-attr]


def choose_geometry(
    source: BackboneSource, data: DataConfig, explicit: Collection[str] = (), backbone: Any = None
) -> ClipGeometry:
    """The geometry to extract `source`'s features at: each of `GEOMETRY_KEYS` from `data`
    (the command's config) where `explicit` names it, else from the checkpoint where it
    records it, else `data`'s (the defaults unless a config set them). The normalisation:
    an export's, else the built `backbone`'s own `input_mean` / `input_std` (torchvision's
    Kinetics models), else the pipeline's."""
    configured = {CLIP_LEN: data.clip_len, RESIZE: data.augment.resize, CROP: data.augment.crop}
    known = checkpoint_geometry(source)
    values = dict(configured)
    from_ckpt: list[str] = []
    if known is not None:
        found, where = known
        for key in GEOMETRY_KEYS:
            if key not in explicit and found.get(key) is not None:
                values[key] = found[key]
                from_ckpt.append(key)
    given = [k for k in GEOMETRY_KEYS if k in explicit]
    if known is not None and from_ckpt:
        origin = f"from the {where}"
        if given:
            origin += f"; {', '.join(given)} from the command's config/overrides"
    elif given:
        origin = f"{', '.join(given)} from the command's config/overrides"
        if len(given) < len(GEOMETRY_KEYS):
            origin += ", the rest defaults"
    else:
        origin = (
            f"defaults: checkpoint {source.label} records no clip geometry "
            "(pass --config or data.clip_len / data.augment.* overrides to choose)"
        )
    if known is not None:  # say where an explicit key departs from what it trained on
        differ = [
            f"{k.rsplit('.', 1)[1]} {known[0][k]}"
            for k in given
            if known[0].get(k) is not None and _plain(known[0][k]) != _plain(values[k])
        ]
        if differ:
            origin += f" (the checkpoint was trained at {', '.join(differ)})"
    where_ = f"checkpoint {source.label}"
    clip_len = values[CLIP_LEN]
    if not isinstance(clip_len, int) or isinstance(clip_len, bool) or clip_len < 1:
        raise ConfigError(f"{where_}: {CLIP_LEN} {clip_len!r} is not a positive integer")
    resize = _ints(values[RESIZE] or [], RESIZE, where_)
    crop = _ints(values[CROP], CROP, where_)
    fits = len(crop) == 2 and (
        not resize or (len(resize) == 2 and crop[0] <= resize[0] and crop[1] <= resize[1])
    )
    if not fits:
        raise ConfigError(f"{where_}: crop {list(crop)} does not fit resize {list(resize)}")
    norm = checkpoint_normalisation(source)
    if norm is None and hasattr(backbone, "input_mean") and hasattr(backbone, "input_std"):
        norm = (
            tuple(float(v) for v in backbone.input_mean),
            tuple(float(v) for v in backbone.input_std),
        )
    mean, std = norm if norm is not None else (tuple(MEAN), tuple(STD))
    return ClipGeometry(clip_len, resize, crop, mean, std, origin)
