"""Take a backbone away: an exported folder (safetensors + a settings JSON) and loading it.

    rayssl export --checkpoint X --out DIR [--format safetensors|torchscript|onnx ...]

An exported folder holds

* ``model.safetensors``: the backbone's state dict (safetensors: tensors only, no pickle,
  so reading it runs no code);
* ``rayssl_model.json`` (`SETTINGS_FILE`): what rebuilds and feeds the backbone: its
  registry name and width, the clip geometry it was trained on (frames, resize, crop),
  the input normalisation, its feature layers and output size, the pre-training MLflow
  run id, a hash of the training config, and the name, shape and dtype of every tensor;
* ``config.json``: the training config, when the checkpoint carries one;
* ``backbone.torchscript.pt`` / ``backbone.onnx`` when asked for (`--format`).

Loading (`load_exported`, `read_exported`) checks the settings, then every tensor's name
and shape against them and against the backbone the settings build, and raises
`ExportError` naming the first key that does not fit; nothing is left at its random
initialisation. Plain torch, safetensors and rayssl's model classes are all it needs::

    from rayssl.export import load_exported
    backbone = load_exported("exported/")        # eval mode, on the CPU
    features = backbone(clips)                   # (B, 3, T, H, W) normalised -> (B, out_dim)

Which backbones trace: every registered backbone whose forward has no data-dependent
Python control flow traces to TorchScript and exports to ONNX at the exported clip
geometry (rayssl's CNNs do); a backbone that does not is refused with its tracing error,
and the safetensors folder is still the portable format. ONNX export needs the optional
``onnx`` extra (``pip install 'rayssl[onnx]'``: onnx and onnxscript, which torch's
exporter uses); without it `--format onnx` is a one-line error.

This module sits just above `rayssl.models` (no Ray, no MLflow): `rayssl.checkpoint`
reads exported folders (``--checkpoint DIR``, ``models:/<name>@<alias>``) through it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayssl.models import BACKBONES, build_backbone
from rayssl.models.heads import MEAN, STD
from rayssl.vocabulary import POOL_LAYERS

EXPORT_FORMAT = "rayssl.export/1"
SETTINGS_FILE = "rayssl_model.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TORCHSCRIPT_FILE = "backbone.torchscript.pt"
ONNX_FILE = "backbone.onnx"
FORMATS = ("safetensors", "torchscript", "onnx")
#: A settings JSON larger than this is not one rayssl wrote (its tensor list is ~100 B/key).
MAX_SETTINGS_BYTES = 8 << 20
#: Largest output difference between the traced (TorchScript / ONNX) and eager backbone.
TRACE_TOLERANCE = 1e-4


class ExportError(ValueError):
    """An export that cannot be written, or an exported folder that cannot be loaded."""


# --------------------------------------------------------------------------- settings


def config_hash(config: dict[str, Any] | None) -> str:
    """A short, stable hash of a training config (sorted JSON, sha256, 16 hex digits);
    '' when there is none."""
    if not config:
        return ""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _normalisation(backbone: nn.Module) -> dict[str, Any]:
    mean = getattr(backbone, "input_mean", MEAN)
    std = getattr(backbone, "input_std", STD)
    return {"scale": 1.0 / 255.0, "mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _geometry(config: dict[str, Any] | None) -> dict[str, Any]:
    """The clip geometry of a training config (its defaults where it is silent)."""
    from rayssl.config import AugmentSettings, DataConfig

    data = (config or {}).get("data") or {}
    augment = data.get("augment") or {}
    d, a = DataConfig(), AugmentSettings()
    return {
        "frames": int(data.get("clip_len", d.clip_len)),
        "resize": [int(v) for v in augment.get("resize", a.resize)],
        "crop": [int(v) for v in augment.get("crop", a.crop)],
        "layout": "B,3,T,H,W",
    }


def feature_layers(backbone: nn.Module) -> list[str]:
    """The named layers `forward_features` of `backbone` gives."""
    return [str(x) for x in getattr(backbone, "feature_layers", POOL_LAYERS)]


def make_settings(
    backbone: nn.Module,
    name: str,
    width: float,
    config: dict[str, Any] | None = None,
    pretrain_run_id: str = "",
    source: str = "",
) -> dict[str, Any]:
    """The settings JSON of `backbone` (registry `name`, `width`) trained with `config`."""
    state = backbone.state_dict()
    return {
        "format": EXPORT_FORMAT,
        "backbone": name,
        "width": float(width),
        "out_dim": int(getattr(backbone, "out_dim", 0)),
        "clip": _geometry(config),
        "normalisation": _normalisation(backbone),
        "feature_layers": feature_layers(backbone),
        "pretrain_run_id": pretrain_run_id,
        "config_hash": config_hash(config),
        "source": source,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in state.items()},
    }


# --------------------------------------------------------------------------- writing


def check_out_dir(out: str | Path, inputs: Iterable[str | Path] = ()) -> Path:
    """`out` as a local folder an export may create: not an S3 URI, not existing (or an
    empty folder), and neither one of `inputs` (a checkpoint file or folder), nor inside
    one, nor holding one: no export overwrites or writes into what it reads."""
    text = str(out)
    if not text.strip():
        raise ExportError("--out: expected a folder")
    if "://" in text:
        raise ExportError(f"--out {text}: an export goes to a local folder (copy it anywhere)")
    path = Path(text).expanduser().resolve()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ExportError(f"--out {path}: exists and is not an empty folder; choose a new one")
    for given in inputs:
        if "://" in str(given) or not str(given).strip():
            continue
        src = Path(given).expanduser().resolve()
        folder = src.parent if src.is_file() or src.suffix in (".pt", ".pth") else src
        if path == folder or folder in path.parents or path in folder.parents:
            raise ExportError(
                f"--out {path}: is, is inside or holds the checkpoint's folder {folder}; "
                "an export never writes into its input"
            )
    return path


def _example(settings: dict[str, Any], batch: int = 1) -> torch.Tensor:
    clip = settings["clip"]
    h, w = clip["crop"] if clip.get("crop") else clip["resize"]
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, clip["frames"], h, w, generator=gen)


def _check_traced(what: str, eager: torch.Tensor, traced: torch.Tensor) -> None:
    diff = float((eager - traced).abs().max()) if eager.shape == traced.shape else math.inf
    if not diff <= TRACE_TOLERANCE:
        raise ExportError(
            f"{what}: the traced backbone's output differs from the eager one by {diff:g} "
            f"(> {TRACE_TOLERANCE:g}): its forward depends on the input, so it does not trace"
        )


def _torchscript(backbone: nn.Module, settings: dict[str, Any], path: Path) -> None:
    x = _example(settings)
    name = settings["backbone"]
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # a backbone that computes padding from the input size (s3dg) warns here: its
            # trace holds for the exported clip geometry, which `_check_traced` verifies
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(backbone, (x,), check_trace=False)
            _check_traced(f"torchscript export of {name}", backbone(x), traced(x))
    except ExportError:
        raise
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ExportError(
            f"torchscript export of {name}: does not trace ({type(e).__name__}: {detail})"
        ) from None
    traced.save(str(path))


def _onnx(backbone: nn.Module, settings: dict[str, Any], path: Path) -> None:
    import importlib.util

    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ExportError(
            f"onnx export needs the optional packages {missing} (torch's exporter uses "
            "them): pip install 'rayssl[onnx]'"
        )
    x = _example(settings)
    name = settings["backbone"]
    try:
        with torch.no_grad():
            torch.onnx.export(
                backbone,
                (x,),
                str(path),
                input_names=["clips"],
                output_names=["features"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                external_data=False,
            )
    except Exception as e:
        detail = " ".join(str(e).split())[:300]
        raise ExportError(f"onnx export of {name}: failed ({type(e).__name__}: {detail})") from None


def write_exported(
    backbone: nn.Module,
    settings: dict[str, Any],
    out: str | Path,
    formats: Sequence[str] = ("safetensors",),
    config: dict[str, Any] | None = None,
    inputs: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """Write `backbone` as an exported folder `out` (`check_out_dir`); the safetensors and
    settings are always written, `formats` may add torchscript and onnx. The folder
    appears whole or not at all (written beside it, then renamed). Returns what was
    written."""
    from safetensors.torch import save_file

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"--format: unknown {unknown}; valid: {list(FORMATS)}")
    path = check_out_dir(out, inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    training = backbone.training  # a backbone mid-training goes back to training mode
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": EXPORT_FORMAT})
        (tmp / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
        if config:
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=1, default=str) + "\n")
        try:
            backbone.eval()  # traced in inference mode (BatchNorm's running statistics)
            if "torchscript" in formats:
                _torchscript(backbone, settings, tmp / TORCHSCRIPT_FILE)
            if "onnx" in formats:
                _onnx(backbone, settings, tmp / ONNX_FILE)
        finally:
            backbone.train(training)
        _readable(tmp)
        if path.exists():
            path.rmdir()  # an empty folder (check_out_dir): replaced by the whole export
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in path.iterdir())
    return {
        "out": str(path),
        "backbone": settings["backbone"],
        "files": files,
        "bytes": sum((path / f).stat().st_size for f in files),
    }


def _readable(folder: Path) -> None:
    """The folder and its files with the permissions of any new file (the umask's), not
    mkdtemp's owner-only ones: an export is made to be shared."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


# --------------------------------------------------------------------------- reading


def read_settings(path: str | Path) -> dict[str, Any]:
    """The settings JSON of the exported folder `path`, checked."""
    folder = Path(path)
    file = folder / SETTINGS_FILE
    if not file.is_file():
        raise ExportError(f"{folder}: not an exported backbone (no {SETTINGS_FILE})")
    if file.stat().st_size > MAX_SETTINGS_BYTES:
        raise ExportError(f"{file}: larger than {MAX_SETTINGS_BYTES} bytes; not rayssl's")
    try:
        settings = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{file}: not JSON ({e})") from None
    if not isinstance(settings, dict) or settings.get("format") != EXPORT_FORMAT:
        got = settings.get("format") if isinstance(settings, dict) else type(settings).__name__
        raise ExportError(f"{file}: format {got!r}, expected {EXPORT_FORMAT!r}")
    name = settings.get("backbone")
    if not isinstance(name, str) or name not in BACKBONES:
        raise ExportError(f"{file}: unknown backbone {name!r}; valid: {sorted(BACKBONES)}")
    width = settings.get("width")
    if not isinstance(width, (int, float)) or not (math.isfinite(width) and width > 0):
        raise ExportError(f"{file}: width {width!r} is not a positive number")
    tensors = settings.get("tensors")
    if not isinstance(tensors, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("shape"), list) for v in tensors.values()
    ):
        raise ExportError(f"{file}: 'tensors' must map every key to its shape")
    return settings


def _first_mismatch(
    what: str, expected: dict[str, list[int]], found: dict[str, list[int]], names: tuple[str, str]
) -> None:
    for key in sorted(set(expected) | set(found)):
        if key not in found:
            raise ExportError(f"{what}: key {key!r} is in the {names[0]} but not the {names[1]}")
        if key not in expected:
            raise ExportError(f"{what}: key {key!r} is in the {names[1]} but not the {names[0]}")
        if list(expected[key]) != list(found[key]):
            raise ExportError(
                f"{what}: key {key!r} has shape {list(found[key])} in the {names[1]}, "
                f"{list(expected[key])} in the {names[0]}"
            )


def read_exported(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(settings, state dict) of the exported folder `path`; every tensor's name and shape
    checked against the settings (an `ExportError` names the first one that differs)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    settings = read_settings(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ExportError(f"{folder}: no {WEIGHTS_FILE}")
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
            expected = {k: v["shape"] for k, v in settings["tensors"].items()}
            _first_mismatch(str(weights), expected, shapes, (SETTINGS_FILE, WEIGHTS_FILE))
            for k in shapes:
                state[k] = f.get_tensor(k)
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{weights}: not a safetensors file ({e})") from None
    return settings, state


def build_exported(settings: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The backbone `settings` name, with `state` loaded after checking every key and
    shape against it (`ExportError` naming the first mismatch)."""
    backbone = build_backbone(settings["backbone"], width=float(settings["width"]))
    own = {k: list(v.shape) for k, v in backbone.state_dict().items()}
    got = {k: list(v.shape) for k, v in state.items()}
    what = f"backbone {settings['backbone']} (width {float(settings['width']):g})"
    _first_mismatch(what, own, got, ("model", "export"))
    backbone.load_state_dict(state, strict=True)
    return backbone.eval()


def load_exported(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The backbone of the exported folder `path` with its weights, in eval mode."""
    settings, state = read_exported(path)
    return build_exported(settings, state).to(device)


def load_config(path: str | Path) -> dict[str, Any]:
    """The training config saved beside an export ({} when there is none)."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file() or file.stat().st_size > MAX_SETTINGS_BYTES:
        return {}
    try:
        config = json.loads(file.read_text())
    except (ValueError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def is_exported(path: str | Path) -> bool:
    """Whether the local folder `path` holds an exported backbone."""
    return (Path(path) / SETTINGS_FILE).is_file()


_MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_model_name(name: str) -> str:
    """`name` with what MLflow model names and file names should not hold replaced by
    '-' (never empty)."""
    return _MODEL_NAME.sub("-", name).strip("-.") or "rayssl-backbone"


def export_backbone(
    backbone: nn.Module,
    name: str,
    width: float,
    out: str | Path,
    formats: Sequence[str] = ("safetensors",),
    config: dict[str, Any] | None = None,
    pretrain_run_id: str = "",
    source: str = "",
    inputs: Iterable[str | Path] = (),
) -> dict[str, Any]:
    """`make_settings` then `write_exported`: the whole export of one backbone."""
    settings = make_settings(backbone, name, width, config, pretrain_run_id, source)
    return write_exported(backbone, settings, out, formats, config, inputs)
