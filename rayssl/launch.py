"""Builds the Ray Train job from a config: the only place that wires Ray together.

`pretrain(cfg)` resolves paths (so a job submitted with `ray job submit` writes where
the user expects, not into Ray's copy of the working directory), connects to Ray (the
cluster of `RAY_ADDRESS` / `ray job submit`, or a local one), and runs a
`TorchTrainer`. Re-running with the same `run.name` and `run.storage_path` resumes
from the latest checkpoint (Ray Train V2 restores it); `train.max_failures` restarts
dead workers from the latest checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from rayssl.config import Config
from rayssl.data import storage
from rayssl.train.tracking import default_tracking_uri, git_commit


def _absolute(uri: str) -> str:
    if not uri or storage.is_s3(uri) or "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


def resolve_paths(cfg: Config) -> Config:
    """Make local paths absolute and fix the MLflow URI where the job is launched."""
    data = replace(cfg.data, manifest=_absolute(cfg.data.manifest))
    tracking_uri = default_tracking_uri(cfg)
    artifacts = _absolute(cfg.run.artifact_location)
    if not artifacts and tracking_uri.startswith("sqlite:///"):
        # Without a tracking server MLflow would put artifacts in ./mlruns of the
        # rank-0 worker, i.e. inside Ray's temporary session directory.
        artifacts = str(Path(tracking_uri[len("sqlite:///") :]).parent / "mlartifacts")
    run = replace(
        cfg.run,
        storage_path=_absolute(cfg.run.storage_path),
        tracking_uri=tracking_uri,
        artifact_location=artifacts,
    )
    return replace(cfg, data=data, run=run)


def _init_ray() -> None:
    import ray

    if ray.is_initialized():
        return
    # Inside `ray job submit` (or with RAY_ADDRESS / a `ray start` cluster) ray.init()
    # connects to that cluster. RAY_ADDRESS=local forces a fresh local one, whose
    # logical CPU count RAYSSL_NUM_CPUS may raise (decode tasks and train workers
    # share a small machine's cores).
    address = os.environ.get("RAY_ADDRESS", "")
    num_cpus = os.environ.get("RAYSSL_NUM_CPUS")
    if num_cpus and address in ("", "local"):
        ray.init(address="local", num_cpus=int(num_cpus), log_to_driver=True)
    else:
        ray.init(log_to_driver=True)


def build_trainer(cfg: Config):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayssl.train.loop import train_loop_per_worker

    resources = {"CPU": cfg.train.cpus_per_worker}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    fs, path = storage.get_filesystem(
        cfg.run.storage_path, storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "commit": git_commit()},
        scaling_config=ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=cfg.train.use_gpu,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.num_checkpoints_to_keep),
        ),
    )


def pretrain(cfg: Config) -> dict[str, Any]:
    """Run (or resume) a pre-training job; returns the final metrics and locations."""
    cfg = resolve_paths(cfg)
    if not cfg.data.manifest:
        raise ValueError("data.manifest: set it to a manifest URI (rayssl manifest ... --out M)")
    _init_ray()
    result = build_trainer(cfg).fit()
    metrics = dict(result.metrics or {})
    return {
        "run_name": cfg.run.name,
        "storage_path": cfg.run.storage_path,
        "tracking_uri": storage.redact(cfg.run.tracking_uri),
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
    }
