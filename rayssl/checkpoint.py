"""The checkpoint format: what rayssl writes (`state.pt`, `backbone.pt`) and how it reads it.

A checkpoint is read from shared storage (a local folder, S3, an MLflow server), so anyone
who can write there could hand every node a file. Nothing here runs code from a file:

* every read is `torch.load(..., weights_only=True)`: tensors, numbers, strings, bytes,
  lists, tuples and dicts only; a pickle that names any other global (a function to call,
  a class to build) is refused with a one-line `CheckpointError` naming the file, before
  anything in it runs;
* every write type-checks its payload first (`check_plain`), so rayssl never writes a file
  it could not read back (the scheduler state, the config and the mid-epoch progress are
  plain dicts);
* `convert` rewrites an old checkpoint whose values include numpy scalars or arrays into
  the plain format: `rayssl checkpoint convert SRC --out DST`. It too reads with
  `weights_only=True`, allowing numpy's reconstructors and nothing else: a file naming any
  other global is refused, so no command runs code from a checkpoint.

`latest_state_uri` finds the checkpoint a run folder resumes from: the one Ray Train's own
snapshot (`checkpoint_manager_snapshot.json`) names, else the direct `checkpoint_*` child
with the highest number; a folder holding several runs is an error listing them.

The one owner of the format: training writes and restores its state here
(`save_training_state`, `load_training_state`, `restore_training_state`), and every
`--checkpoint X` / `model.init` is resolved here (`resolve_checkpoint`), which takes

* ``random`` — the configured backbone (`model.*`), initialised with `run.seed` exactly as
  pre-training initialises it: the baseline row of every table;
* a local path or ``s3://`` URI of a Ray Train checkpoint (a folder with ``state.pt``), of
  a Ray Train run folder (``<storage_path>/<run.name>``: its latest checkpoint is used), or
  of a ``backbone.pt`` written at the end of pre-training;
* ``runs:/<mlflow_run_id>`` — that run's ``weights/backbone.pt`` artifact and the backbone
  settings of its ``config.yaml`` (``runs:/<id>/<artifact path>`` names another artifact);
* a local folder written by ``rayssl export`` (``rayssl_model.json`` + ``model.safetensors``,
  `rayssl.export`), and ``models:/<name>@<alias>``, ``models:/<name>/<version>`` or
  ``models:/<model id>`` — an MLflow logged or registered model, which is such a folder;
* ``torchvision:<model>=<file>`` — torchvision's Kinetics-400 video model (r3d_18, mc3_18,
  r2plus1d_18, s3d) with its published weights, a file the user provides.

A checkpoint carries the backbone settings it was trained with (`model.backbone`,
`model.width`), so `--checkpoint` alone is enough; they override the config's. A state
whose keys or shapes do not fit the backbone is a `CheckpointError` naming the mismatch:
nothing is ever silently left at random initialisation.

Plain torch, storage and (for runs:/ only) MLflow; no Ray.
"""

from __future__ import annotations

import io
import json
import pickle
import posixpath
import re
import tempfile
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from rayssl import export as exported
from rayssl.config import Config, ModelConfig
from rayssl.io import storage
from rayssl.models import build_backbone
from rayssl.pretext import PRETEXTS
from rayssl.tracking_uri import default_tracking_uri

STATE_FILE = "state.pt"
BACKBONE_FILE = "backbone.pt"
#: Ray Train V2's record of a run's checkpoints (its `latest_checkpoint_result` resumes).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_PREFIX = "checkpoint_"
CONVERT_COMMAND = "rayssl checkpoint convert"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, is refused, or does not fit the backbone."""


_SCALARS = (bool, int, float, str, bytes, type(None))
_CONTAINERS = (list, tuple)
_DICTS = (dict, OrderedDict)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value of `obj` that `torch.load(weights_only=True)`
    could not read back: only tensors, bool/int/float/str/bytes/None, lists, tuples and
    dicts with str/int keys are allowed (numpy scalars, though floats, are not)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where}: a {type(obj).__name__}, not a plain tensor")
        return
    if type(obj) in _SCALARS:
        return
    if type(obj) in _CONTAINERS:
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if type(obj) in _DICTS:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a "
        "checkpoint (only tensors, numbers, strings, bytes, lists and dicts)"
    )


def to_bytes(payload: dict[str, Any]) -> bytes:
    """`payload` as a torch file, after `check_plain`."""
    check_plain(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` (checked by `check_plain`) to a local file."""
    data = to_bytes(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


_GLOBAL_RE = re.compile(r"(?:GLOBAL|Unsupported class) ([\w.]+)")
_WEIGHTS_ERROR_RE = re.compile(r"(?:WeightsUnpickler error:\s*)?(Unsupported [^\n]+)")


def _refusal(where: str, e: pickle.UnpicklingError) -> CheckpointError:
    text = str(e)
    found = _GLOBAL_RE.search(text)
    what = f"its pickle names {found.group(1) if found else 'a global'}"
    return CheckpointError(
        f"{where}: refused: {what}, which a checkpoint may not load (rayssl reads "
        f"checkpoints with torch.load(weights_only=True), so no code in one runs); if it "
        f"holds numpy values, convert it once: {CONVERT_COMMAND} {where} --out NEW.pt"
    )


def load_bytes(data: bytes, where: str) -> Any:
    """Unpickle a checkpoint's bytes with `weights_only=True`; `where` (redacted) names it
    in every error: refused (a global in its pickle) or not a torch file."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _GLOBAL_RE.search(str(e)):
            raise _refusal(where, e) from None
        found = _WEIGHTS_ERROR_RE.search(str(e))
        detail = found.group(1).strip() if found else "UnpicklingError"
        raise CheckpointError(f"{where}: not a torch checkpoint ({detail})") from None
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{where}: not a torch checkpoint ({type(e).__name__}: {detail})"
        ) from None


def read(uri: str, options: storage.StorageOptions | None = None) -> Any:
    """Read and safely unpickle the checkpoint file at `uri` (local path or s3://)."""
    where = storage.redact(uri)
    try:
        data = storage.read_bytes(uri, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {where!r} does not exist") from e
    return load_bytes(data, where)


# ------------------------------------------------------------------------------ conversion


def to_plain(obj: Any) -> Any:
    """`obj` with what an older writer left in it made plain: numpy arrays become tensors,
    numpy scalars Python numbers, dataclasses and other objects with `to_state()` or
    `__dict__` dicts. Raises TypeError for anything else."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone() if type(obj) is not torch.Tensor else obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, (list, tuple)):
        return (
            type(obj)(to_plain(v) for v in obj)
            if type(obj) in _CONTAINERS
            else list(to_plain(v) for v in obj)
        )
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k if type(k) in (str, int) else str(k)] = to_plain(v)
        return out
    if hasattr(obj, "to_state"):
        return to_plain(obj.to_state())
    if hasattr(obj, "__dict__"):
        return to_plain(dict(vars(obj)))
    raise TypeError(f"cannot convert a {type(obj).__name__} to plain checkpoint data")


#: The only globals an old checkpoint may name for `convert`: numpy's array and scalar
#: reconstructors (values a careless writer left). They build arrays from bytes and call
#: nothing else; any other global is refused, so even `convert` runs no code from a file.
OLD_FORMAT_GLOBALS = {
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
}


def _load_old(data: bytes, src: str) -> Any:
    """`torch.load(weights_only=True)` of an old checkpoint, with numpy's reconstructors
    (and numpy's dtype classes) allowed and nothing else."""
    import importlib

    names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    allowed = []
    for name in names:
        module, _, attr = name.rpartition(".")
        numpy_dtype = module == "numpy.dtypes" and attr.endswith("DType")
        if name not in OLD_FORMAT_GLOBALS and not numpy_dtype:
            raise CheckpointError(
                f"convert {src}: refused: its pickle names {name}, which is not plain data "
                "or a numpy value (nothing in it was run)"
            )
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            raise CheckpointError(f"convert {src}: names {name}, unknown here") from None
    if allowed:  # a numpy dtype is rebuilt from its class, which the scan does not list
        import numpy.dtypes

        allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def convert(src: str, dst: str, options: storage.StorageOptions | None = None) -> dict[str, Any]:
    """Rewrite the old checkpoint `src` (plain data and numpy values, read with
    `weights_only=True`; any other global is refused) as plain data at `dst`; returns what
    was done. `dst` must differ from `src` and not exist."""
    if storage.redact(src) != src or storage.redact(dst) != dst:
        raise CheckpointError("convert: give URIs without credentials (use the environment)")
    if src == dst:
        raise CheckpointError(f"convert: --out must differ from {src} (keep the original)")
    if storage.exists(dst, options=options):
        raise CheckpointError(f"convert: {dst} exists; choose a new --out")
    try:
        data = storage.read_bytes(src, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {src!r} does not exist") from e
    payload = _load_old(data, src)
    try:
        plain = to_plain(payload)
        out = to_bytes(plain)
    except TypeError as e:
        raise CheckpointError(f"convert {src}: {e}") from None
    storage.write_bytes(dst, out, options=options)
    return {"src": src, "out": dst, "bytes": len(out)}


# ------------------------------------------------------------------- finding the latest one


def _checkpoint_number(name: str) -> tuple[int, ...]:
    """`checkpoint_2026-01-02_03-04-05.000006` -> (2026, 1, 2, 3, 4, 5, 6);
    `checkpoint_000012` -> (12,)."""
    return tuple(int(x) for x in re.findall(r"\d+", name[len(CHECKPOINT_PREFIX) :]))


def _snapshot_choice(uri: str, names: set[str], options) -> str | None:
    """The checkpoint folder Ray Train's snapshot names as its latest, if it is one of
    `names` (a broken or foreign snapshot is ignored: the numbers decide)."""
    snap = storage.join(uri, SNAPSHOT_FILE)
    try:
        state = json.loads(storage.read_bytes(snap, options=options))
        name = state["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (storage.StorageError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name in names else None


def latest_state_uri(uri: str, options: storage.StorageOptions | None = None) -> str:
    """`uri/state.pt` if it exists; else, in a run folder, the state.pt of the checkpoint
    Ray Train's snapshot names as latest, else of the direct `checkpoint_*` child with the
    highest number. A folder holding runs (folders of checkpoints) is an error naming them."""
    where = storage.redact(uri)
    direct = storage.join(uri, STATE_FILE)
    if storage.exists(direct, options=options):
        return direct
    try:
        files = storage.list_files(uri, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {where!r} does not exist") from e
    root = storage.listing_root(uri)
    rels = [f.uri[len(root) :].lstrip("/") for f in files if f.uri.startswith(root)]
    names = {
        r.split("/")[0]
        for r in rels
        if r.count("/") == 1 and r.endswith("/" + STATE_FILE) and r.startswith(CHECKPOINT_PREFIX)
    }
    if names:
        chosen = _snapshot_choice(uri, names, options) or max(names, key=_checkpoint_number)
        return storage.join(uri, chosen, STATE_FILE)
    runs = sorted(
        {
            r.split("/")[0]
            for r in rels
            if r.count("/") == 2
            and r.endswith("/" + STATE_FILE)
            and r.split("/")[1].startswith(CHECKPOINT_PREFIX)
        }
    )
    if runs:
        shown = ", ".join(runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")
        raise CheckpointError(
            f"{where!r} holds {len(runs)} run folder(s), not one run's checkpoints: {shown}; "
            f"name one (e.g. {posixpath.join(where, runs[0])})"
        )
    raise CheckpointError(
        f"{where!r} holds no Ray Train checkpoint ({STATE_FILE} or "
        f"{CHECKPOINT_PREFIX}*/{STATE_FILE}) and is not a {BACKBONE_FILE}"
    )


def run_folder_checkpoint(
    run_uri: str, options: storage.StorageOptions | None = None
) -> str | None:
    """The state.pt a run folder resumes from, or None when it has no checkpoint yet."""
    try:
        if not storage.list_files(run_uri, options=options):
            return None
    except storage.StorageNotFoundError:
        return None
    try:
        return latest_state_uri(run_uri, options)
    except CheckpointError as e:
        if "holds no Ray Train checkpoint" in str(e):
            return None
        raise


def read_latest_state(uri: str, options: storage.StorageOptions | None = None) -> dict:
    """The training state (`state.pt`) of a checkpoint folder, or of a run folder's latest
    checkpoint, read as plain data."""
    state = read(latest_state_uri(uri, options), options)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{storage.redact(uri)}: a {STATE_FILE} without a model state")
    return state


# --------------------------------------------------------------------------- training state


FORMAT_VERSION = 1


def save_training_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    sampler: dict[str, Any],
    extra: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write the state after `epoch` finished; resuming starts at epoch + 1.

    `sampler` holds what the data pipeline needs to continue the same stream
    (seed, next epoch, and for a mid-epoch checkpoint the `in_epoch` progress of
    epoch + 1, see `EpochProgress`); every clip's randomness derives from
    (seed, video, epoch, draw).
    `config` is the run's config as a dict: evaluations rebuild the backbone from it.
    """
    path = Path(directory) / STATE_FILE
    return save(
        {
            "format_version": FORMAT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "sampler": sampler,
            "extra": extra or {},
            "config": config or {},
        },
        path,
    )


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The state in `directory`, read as plain data (`rayssl.checkpoint.read`: a pickle
    that would run code is a `CheckpointError`)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    state = read(str(path))
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {directory}: unsupported format "
            f"{state.get('format_version') if isinstance(state, dict) else type(state).__name__}"
        )
    return state


#: Optimizer param-group keys that say how the update runs, not what it is.
OPTIMIZER_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def restore_training_state(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Load a state into the objects; returns the epoch to start from. The optimizer
    keeps how it runs (fused, foreach, ...: `OPTIMIZER_IMPL_KEYS`) as built from the
    current config; `load_state_dict` alone would bring back the saved run's."""
    model.load_state_dict(state["model"])
    impl = [{k: g[k] for k in OPTIMIZER_IMPL_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, keep in zip(optimizer.param_groups, impl, strict=True):
        group.update(keep)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1


@dataclass
class EpochProgress:
    """How far a mid-epoch checkpoint got into its epoch.

    `done` marks, per place in the epoch's draw order (`pipeline.epoch_order`), the
    draws already trained by any worker; a resumed run deals out only the others. `sums`
    and `skips` are the epoch's metric sums so far, reduced over workers, so the epoch's
    logged metrics cover the whole epoch, not only the part after the restart.
    """

    epoch: int
    steps: int
    done: np.ndarray
    sums: dict[str, float] = field(default_factory=dict)
    skips: dict[str, float] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        done = np.asarray(self.done, dtype=bool)
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "num_draws": len(done),
            "done_bits": np.packbits(done).tobytes(),
            "sums": dict(self.sums),
            "skips": dict(self.skips),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        bits = np.frombuffer(state["done_bits"], dtype=np.uint8)
        done = np.unpackbits(bits, count=int(state["num_draws"])).astype(bool)
        return cls(
            epoch=int(state["epoch"]),
            steps=int(state["steps"]),
            done=done,
            sums={k: float(v) for k, v in state["sums"].items()},
            skips={k: float(v) for k, v in state["skips"].items()},
        )


def epoch_progress(state: dict[str, Any]) -> EpochProgress | None:
    """The mid-epoch progress of a loaded training state (None: an epoch-end state)."""
    progress = state.get("sampler", {}).get("in_epoch")
    return EpochProgress.from_state(progress) if progress else None


# --------------------------------------------------------------------------- backbones in


BACKBONE_FORMAT = "rayssl.backbone/1"
RANDOM = "random"
MLFLOW_PREFIX = "runs:/"
MODELS_PREFIX = "models:/"
TORCHVISION_PREFIX = "torchvision:"
DEFAULT_ARTIFACT = "weights/backbone.pt"


@dataclass
class BackboneSource:
    """Resolved `--checkpoint`: which backbone, its weights, and where they came from."""

    spec: str
    kind: str  # "random" | "ray_checkpoint" | "backbone_file" | "mlflow_run" | "exported"
    #   | "mlflow_model" | "torchvision" | "pretrained_folder"
    model: ModelConfig
    seed: int
    backbone_state: dict[str, torch.Tensor] | None = None  # None = random init
    head_state: dict[str, torch.Tensor] | None = None  # a Ray Train checkpoint's task head
    pretrain_run_id: str = ""  # the MLflow run that trained it ('' if unknown)
    config: dict[str, Any] = field(default_factory=dict)  # its training config, if known
    model_id: str = ""  # the MLflow LoggedModel it is (models:/), '' if none or unknown
    settings: dict[str, Any] = field(default_factory=dict)  # an export's rayssl_model.json

    @property
    def label(self) -> str:
        """A short name for tables: 'random' or the checkpoint's kind and run id."""
        if self.kind == RANDOM:
            return RANDOM
        return f"{self.kind}:{self.pretrain_run_id}" if self.pretrain_run_id else self.kind


def backbone_file_payload(
    backbone: nn.Module, model: ModelConfig, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What `backbone.pt` holds: the state dict and the settings that rebuild the backbone."""
    return {
        "format": BACKBONE_FORMAT,
        "model": {"backbone": model.backbone, "width": model.width},
        "state_dict": backbone.state_dict(),
        **(extra or {}),
    }


def _model_settings(values: dict[str, Any] | None, fallback: ModelConfig) -> ModelConfig:
    if not values:
        return fallback
    known: dict[str, Any] = {}
    if "backbone" in values:
        known["backbone"] = str(values["backbone"])
    if "width" in values:
        known["width"] = float(values["width"])
    return replace(fallback, **known)


def _split_prefixed(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def encoder_prefix(config: dict[str, Any]) -> str:
    """Where the run's result lives in a training state of `config` (a saved config as
    data): `Pretext.encoder_prefix` of its pretext (vjepa: the EMA target encoder), the
    backbone for an unknown or missing pretext name."""
    name = (config.get("pretext") or {}).get("name") if isinstance(config, dict) else None
    cls = PRETEXTS.get(name) if isinstance(name, str) else None
    return cls.encoder_prefix if cls is not None else "backbone."


def _from_training_state(spec: str, where: str, state: dict, cfg: Config) -> BackboneSource:
    model_state = state.get("model")
    if not isinstance(model_state, dict):
        raise CheckpointError(f"{where}: a {STATE_FILE} without a model state")
    config = state.get("config") or {}
    prefix = encoder_prefix(config)
    backbone_state = _split_prefixed(model_state, prefix)
    if not backbone_state:
        raise CheckpointError(f"{where}: the model state has no '{prefix}*' weights")
    return BackboneSource(
        spec=spec,
        kind="ray_checkpoint",
        model=_model_settings(config.get("model"), cfg.model),
        seed=int(config.get("run", {}).get("seed", cfg.run.seed)),
        backbone_state=backbone_state,
        head_state=_split_prefixed(model_state, "head.") or None,
        pretrain_run_id=str(state.get("extra", {}).get("mlflow_run_id") or ""),
        config=config,
    )


def _from_backbone_file(
    spec: str, kind: str, where: str, payload: Any, cfg: Config, run_id: str = ""
) -> BackboneSource:
    if isinstance(payload, dict) and payload.get("format") == BACKBONE_FORMAT:
        return BackboneSource(
            spec=spec,
            kind=kind,
            model=_model_settings(payload.get("model"), cfg.model),
            seed=cfg.run.seed,
            backbone_state=payload["state_dict"],
            pretrain_run_id=run_id or str(payload.get("mlflow_run_id") or ""),
            config=payload.get("config") or {},
        )
    if isinstance(payload, dict) and "format_version" in payload and "model" in payload:
        return _from_training_state(spec, where, payload, cfg)
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        # A bare state dict (older backbone.pt): the settings come from the config.
        return BackboneSource(spec, kind, cfg.model, cfg.run.seed, payload, pretrain_run_id=run_id)
    raise CheckpointError(f"{where}: neither a backbone.pt nor a Ray Train {STATE_FILE}")


def _from_mlflow(spec: str, cfg: Config) -> BackboneSource:
    import mlflow  # lazy: a heavy import that only runs:/ checkpoints need
    from mlflow.exceptions import (  # lazy: mlflow is a heavy import that only this path needs
        MlflowException,  # lazy: mlflow is a heavy import that only this path needs
    )

    rest = spec[len(MLFLOW_PREFIX) :].strip("/")
    run_id, _, artifact = rest.partition("/")
    if not run_id:
        raise CheckpointError(f"{spec!r}: expected runs:/<run_id>[/<artifact path>]")
    uri = default_tracking_uri(cfg)
    artifact = artifact or DEFAULT_ARTIFACT
    try:
        mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(
            f"{spec!r}: no such MLflow run in {storage.redact(uri)} "
            "(set run.tracking_uri or MLFLOW_TRACKING_URI)"
        ) from e
    with tempfile.TemporaryDirectory() as d:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=d, tracking_uri=uri
            )
        except (MlflowException, OSError) as e:
            raise CheckpointError(
                f"{spec!r}: the run has no artifact {artifact!r} (did it finish?)"
            ) from e
        payload = load_bytes(Path(path).read_bytes(), f"{spec} ({artifact})")
        config: dict[str, Any] = {}
        try:
            cpath = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config.yaml", dst_path=d, tracking_uri=uri
            )
            config = yaml.safe_load(Path(cpath).read_text()) or {}
        except (MlflowException, OSError):
            config = {}
    source = _from_backbone_file(spec, "mlflow_run", spec, payload, cfg, run_id=run_id)
    if config:
        source.config = config
        source.model = _model_settings(config.get("model"), source.model)
        source.seed = int(config.get("run", {}).get("seed", source.seed))
    return source


def _from_exported(
    spec: str, kind: str, folder: str | Path, cfg: Config, model_id: str = ""
) -> BackboneSource:
    """An exported folder (`rayssl.export`): settings and weights, shapes checked."""
    try:
        settings, state = exported.read_exported(folder)
    except exported.ExportError as e:
        raise CheckpointError(f"{storage.redact(spec)}: {e}") from None
    model = _model_settings(settings, cfg.model)
    config = exported.load_config(folder)
    return BackboneSource(
        spec=spec,
        kind=kind,
        model=model,
        seed=int(config.get("run", {}).get("seed", cfg.run.seed)),
        backbone_state=state,
        pretrain_run_id=str(settings.get("pretrain_run_id") or ""),
        config=config,
        model_id=model_id,
        settings=settings,
    )


def _from_mlflow_model(spec: str, cfg: Config) -> BackboneSource:
    """``models:/<name>@<alias>``, ``models:/<name>/<version>`` or ``models:/<model id>``:
    the logged model's artifacts, an exported folder (weights only, nothing run)."""
    import mlflow  # lazy: a heavy import that only models:/ checkpoints need
    from mlflow.exceptions import MlflowException  # lazy: as above

    rest = spec[len(MODELS_PREFIX) :].strip("/")
    if not rest:
        raise CheckpointError(f"{spec!r}: expected models:/<name>@<alias> or models:/<id>")
    uri = default_tracking_uri(cfg)
    client = mlflow.MlflowClient(uri)
    model_id = ""
    try:
        if "@" in rest:
            name, _, alias = rest.partition("@")
            version = client.get_model_version_by_alias(name, alias)
        elif "/" in rest:
            name, _, number = rest.partition("/")
            version = client.get_model_version(name, number)
        else:
            version = None
            model_id = rest
        if version is not None:
            # MLflow 3.17's registry returns model_id None; rayssl's versions carry it as a
            # tag (`rayssl.train.tracking.register_logged_model`)
            model_id = version.model_id or (version.tags or {}).get("rayssl.model_id", "")
            source = str(version.source or "")
            if not model_id and source.startswith(MODELS_PREFIX):
                model_id = source[len(MODELS_PREFIX) :].strip("/")
        # the artifacts' own location: MLflow 3.17 resolves a models:/<id> URI through the
        # process's global tracking URI, not `uri`
        location = client.get_logged_model(model_id).artifact_location if model_id else source
    except MlflowException as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{spec!r}: no such MLflow model in {storage.redact(uri)} ({detail})"
        ) from None
    with tempfile.TemporaryDirectory() as d:
        try:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=d, tracking_uri=uri
            )
        except (MlflowException, OSError) as e:
            detail = " ".join(str(e).split())[:200]
            raise CheckpointError(f"{spec!r}: its artifacts cannot be read ({detail})") from None
        if not exported.is_exported(path):
            raise CheckpointError(
                f"{spec!r}: not a rayssl backbone (no {exported.SETTINGS_FILE} in its "
                "artifacts); rayssl loads weights only, never a pickled model"
            )
        return _from_exported(spec, "mlflow_model", path, cfg, model_id=model_id)


def _from_torchvision(spec: str, cfg: Config) -> BackboneSource:
    """``torchvision:<model>=<weights file>``: torchvision's Kinetics-400 video model
    `<model>` (r3d_18, mc3_18, r2plus1d_18, s3d) with the state dict torchvision publishes
    for it, a file the user downloaded (nothing is fetched here), read with
    `weights_only=True`; its classifier is dropped."""
    from rayssl.models.torchvision_video import TORCHVISION_BACKBONES, from_torchvision_state

    name, sep, path = spec[len(TORCHVISION_PREFIX) :].partition("=")
    if name not in TORCHVISION_BACKBONES:
        raise CheckpointError(
            f"{spec!r}: unknown torchvision video model {name!r}; "
            f"valid: {sorted(TORCHVISION_BACKBONES)}"
        )
    if not sep or not path.strip():
        raise CheckpointError(
            f"{spec!r}: give the weights file: torchvision:{name}=<file> (torchvision's "
            "Kinetics-400 .pth, downloaded once by you; nothing is downloaded at run time)"
        )
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    payload = read(path.strip(), options)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{storage.redact(path)}: not a torchvision state dict")
    return BackboneSource(
        spec=spec,
        kind="torchvision",
        model=replace(cfg.model, backbone=name, width=1.0),
        seed=cfg.run.seed,
        backbone_state=from_torchvision_state(state),
    )


def resolve_checkpoint(spec: str, cfg: Config) -> BackboneSource:
    """Resolve `--checkpoint spec` (see the module docstring) without building a model."""
    spec = spec.strip()
    if not spec:
        raise CheckpointError("--checkpoint: expected a path, s3:// URI, runs:/<id> or 'random'")
    if spec == RANDOM:
        return BackboneSource(spec, RANDOM, cfg.model, cfg.run.seed)
    if spec.startswith(MLFLOW_PREFIX):
        return _from_mlflow(spec, cfg)
    if spec.startswith(MODELS_PREFIX):
        return _from_mlflow_model(spec, cfg)
    if spec.startswith(TORCHVISION_PREFIX):
        return _from_torchvision(spec, cfg)
    if "://" not in spec and exported.is_exported(spec):
        return _from_exported(spec, "exported", spec, cfg)
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    where = storage.redact(spec)
    if spec.endswith(".pt") or spec.endswith(".pth"):
        return _from_backbone_file(spec, "backbone_file", where, read(spec, options), cfg)
    if not storage.is_s3(spec) and not Path(storage.listing_root(spec)).exists():
        raise CheckpointError(f"checkpoint {where!r} does not exist")
    if _is_pretrained_folder(spec, options):
        return _from_pretrained_folder(spec, where, cfg, options)
    state_uri = latest_state_uri(spec, options)
    state = read(state_uri, options)
    return _from_training_state(spec, storage.redact(state_uri), state, cfg)


def _is_pretrained_folder(spec: str, options: storage.StorageOptions) -> bool:
    """A folder (local or S3) holding a model in the `transformers` format."""
    from rayssl.models.vit import PRETRAINED_FILES

    return all(storage.exists(storage.join(spec, f), options) for f in PRETRAINED_FILES)


def _from_pretrained_folder(
    spec: str, where: str, cfg: Config, options: storage.StorageOptions
) -> BackboneSource:
    """A VideoMAE encoder saved by `transformers` (config.json + model.safetensors; an S3
    folder is copied to a temporary one first): no pickle is read, nothing downloaded
    from the hub. The backbone is the ViT preset of the folder's shape."""
    from rayssl.models.vit import PRETRAINED_FILES, load_videomae_state, preset_of

    with tempfile.TemporaryDirectory() as d:
        folder = spec
        if storage.is_s3(spec):
            folder = d
            for name in PRETRAINED_FILES:
                (Path(d) / name).write_bytes(storage.read_bytes(storage.join(spec, name), options))
        try:
            state, config = load_videomae_state(folder)
            backbone = preset_of(config)
        except (ValueError, OSError) as e:
            raise CheckpointError(f"model.init {where!r}: {e}") from e
    model = replace(cfg.model, backbone=backbone, width=1.0)
    return BackboneSource(spec, "pretrained_folder", model, cfg.run.seed, state)


def load_state_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load `state` into `module`, or raise `CheckpointError` listing every key that is
    missing, unexpected or of another shape (nothing is left at its initial value)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {unexpected[:5]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches {shapes[:3]}")
        raise CheckpointError(f"{what}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


def build_backbone_from(source: BackboneSource) -> nn.Module:
    """The backbone `source` names, with its weights (or the seeded random init)."""
    torch.manual_seed(source.seed)  # what pre-training's initialisation starts from
    backbone = build_backbone(source.model.backbone, width=source.model.width)
    if source.backbone_state is not None:
        what = (
            f"checkpoint {storage.redact(source.spec)!r} does not fit backbone "
            f"{source.model.backbone} (width {source.model.width:g})"
        )
        load_state_strict(backbone, source.backbone_state, what)
    return backbone


def with_checkpoint_model(cfg: Config, source: BackboneSource) -> Config:
    """`cfg` with the backbone settings the checkpoint was trained with."""
    return replace(cfg, model=replace(cfg.model, **_settings_dict(source.model)))


def _settings_dict(model: ModelConfig) -> dict[str, Any]:
    return {"backbone": model.backbone, "width": model.width}
