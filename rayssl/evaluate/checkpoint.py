"""Checkpoints in, from anywhere: every evaluation's `--checkpoint X`.

X is one of

* ``random`` — the configured backbone (`model.*`), initialised with `run.seed` exactly as
  pre-training initialises it: the baseline row of every table;
* a local path or ``s3://`` URI of a Ray Train checkpoint (a folder with ``state.pt``), of a
  Ray Train run folder (``<storage_path>/<run.name>``: its latest checkpoint is used), or of
  a ``backbone.pt`` written at the end of pre-training;
* ``runs:/<mlflow_run_id>`` — that run's ``weights/backbone.pt`` artifact and the backbone
  settings of its ``config.yaml`` (``runs:/<id>/<artifact path>`` names another artifact).

A checkpoint carries the backbone settings it was trained with (`model.backbone`,
`model.width`), so `--checkpoint` alone is enough; they override the config's. A state
whose keys or shapes do not fit the backbone is a `CheckpointError` naming the mismatch:
nothing is ever silently left at random initialisation.

Every file is read as plain data (`rayssl.checkpoint`: `torch.load(weights_only=True)`):
a checkpoint whose pickle would run code is refused with a one-line `CheckpointError`.

Plain torch plus storage and MLflow; no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from rayssl import checkpoint as ckpt
from rayssl.checkpoint import STATE_FILE, CheckpointError, latest_state_uri
from rayssl.config import Config, ModelConfig
from rayssl.data import storage

__all__ = ["CheckpointError", "STATE_FILE", "latest_state_uri"]  # re-exported

BACKBONE_FORMAT = "rayssl.backbone/1"
RANDOM = "random"
MLFLOW_PREFIX = "runs:/"
DEFAULT_ARTIFACT = "weights/backbone.pt"


@dataclass
class BackboneSource:
    """Resolved `--checkpoint`: which backbone, its weights, and where they came from."""

    spec: str
    kind: str  # "random" | "ray_checkpoint" | "backbone_file" | "mlflow_run"
    model: ModelConfig
    seed: int
    backbone_state: dict[str, torch.Tensor] | None = None  # None = random init
    head_state: dict[str, torch.Tensor] | None = None  # a Ray Train checkpoint's task head
    pretrain_run_id: str = ""  # the MLflow run that trained it ('' if unknown)
    config: dict[str, Any] = field(default_factory=dict)  # its training config, if known

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


def _from_training_state(spec: str, where: str, state: dict, cfg: Config) -> BackboneSource:
    model_state = state.get("model")
    if not isinstance(model_state, dict):
        raise CheckpointError(f"{where}: a {STATE_FILE} without a model state")
    config = state.get("config") or {}
    backbone_state = _split_prefixed(model_state, "backbone.")
    if not backbone_state:
        raise CheckpointError(f"{where}: the model state has no 'backbone.*' weights")
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


def _tracking_uri(cfg: Config) -> str:
    from rayssl.train.tracking import default_tracking_uri

    return default_tracking_uri(cfg)


def _from_mlflow(spec: str, cfg: Config) -> BackboneSource:
    import mlflow
    from mlflow.exceptions import MlflowException

    rest = spec[len(MLFLOW_PREFIX) :].strip("/")
    run_id, _, artifact = rest.partition("/")
    if not run_id:
        raise CheckpointError(f"{spec!r}: expected runs:/<run_id>[/<artifact path>]")
    uri = _tracking_uri(cfg)
    artifact = artifact or DEFAULT_ARTIFACT
    try:
        mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException as e:
        raise CheckpointError(
            f"{spec!r}: no such MLflow run in {storage.redact(uri)} "
            "(set run.tracking_uri or MLFLOW_TRACKING_URI)"
        ) from e
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact, dst_path=d, tracking_uri=uri
            )
        except (MlflowException, OSError) as e:
            raise CheckpointError(
                f"{spec!r}: the run has no artifact {artifact!r} (did it finish?)"
            ) from e
        payload = ckpt.load_bytes(Path(path).read_bytes(), f"{spec} ({artifact})")
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


def resolve_checkpoint(spec: str, cfg: Config) -> BackboneSource:
    """Resolve `--checkpoint spec` (see the module docstring) without building a model."""
    spec = spec.strip()
    if not spec:
        raise CheckpointError("--checkpoint: expected a path, s3:// URI, runs:/<id> or 'random'")
    if spec == RANDOM:
        return BackboneSource(spec, RANDOM, cfg.model, cfg.run.seed)
    if spec.startswith(MLFLOW_PREFIX):
        return _from_mlflow(spec, cfg)
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    where = storage.redact(spec)
    if spec.endswith(".pt") or spec.endswith(".pth"):
        return _from_backbone_file(spec, "backbone_file", where, ckpt.read(spec, options), cfg)
    if not storage.is_s3(spec) and not Path(storage.listing_root(spec)).exists():
        raise CheckpointError(f"checkpoint {where!r} does not exist")
    state_uri = latest_state_uri(spec, options)
    state = ckpt.read(state_uri, options)
    return _from_training_state(spec, storage.redact(state_uri), state, cfg)


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
    from rayssl.models import build_backbone

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
