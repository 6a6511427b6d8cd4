"""Builds the Ray Train job from a config: the only place that wires Ray together.

`pretrain(cfg)` resolves paths (so a job submitted with `ray job submit` writes where
the user expects, not into Ray's copy of the working directory), connects to Ray (the
cluster of `RAY_ADDRESS` / `ray job submit`, or a local one), and runs a
`TorchTrainer`. Re-running with the same `run.name` and `run.storage_path` resumes
from the latest checkpoint (Ray Train V2 restores it); `train.max_failures` restarts
dead workers from the latest checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pyarrow as pa
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from rayssl import checkpoint as ckpt
from rayssl import preflight
from rayssl.checkpoint import (
    build_backbone_from,
    resolve_checkpoint,
    with_checkpoint_model,
)
from rayssl.clips.pipeline import usable_videos
from rayssl.config import Config, ConfigError, config_from_dict, flatten
from rayssl.io import storage
from rayssl.io.manifest import require_labels
from rayssl.preflight import resolve_paths
from rayssl.pretext import PRETEXTS
from rayssl.raystart import start_ray
from rayssl.train.curriculum import order_by_difficulty
from rayssl.train.loop import train_loop_per_worker
from rayssl.train.monitor import monitor_videos
from rayssl.train.plan import RunPlan, manifest_bad_counts
from rayssl.train.tracking import git_commit

#: Config keys a resumed run may change (`run.resume=auto`): the resources it runs on,
#: its checkpoint cadence and its logging; what is trained stays the saved run's. A key
#: ending in "." covers its section.
RESUME_MAY_CHANGE = (
    # resources
    "train.num_workers",
    "train.min_workers",
    "train.use_gpu",
    "train.cpus_per_worker",
    "train.gpus_per_worker",
    "train.worker_resources",
    "train.torch_threads",
    "train.device_prefetch",
    "train.max_failures",
    "data.decode_threads",
    "data.num_cpus_per_task",
    "data.decode_resources",
    "data.decode_cpus_per_worker",
    "data.object_store_mb_per_worker",
    "data.rows_per_task",
    "data.prefetch_batches",
    "data.endpoint_url",
    # checkpoint cadence
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.num_checkpoints_to_keep",
    # logging
    "train.log_every_steps",
    "data.progress_logs",
    "run.log_models",
    "run.tracking_uri",
    "run.experiment",
    "run.artifact_location",
    "run.dataset_name",
    "run.parent_run_id",
    "run.resume",
    "monitor.",
)


def build_trainer(plan: RunPlan):
    """The TorchTrainer of `plan`: the plan goes into Ray's object store once and every
    worker (restarted ones too) takes it from there."""
    cfg = plan.cfg
    resources = {"CPU": cfg.train.cpus_per_worker, **cfg.train.worker_resources}
    if cfg.train.use_gpu:
        resources["GPU"] = cfg.train.gpus_per_worker
    fs, path = storage.get_filesystem(
        cfg.run.storage_path, storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    )
    # Elastic training (Ray Train V2: num_workers=(min, max)) when train.min_workers is
    # set below train.num_workers: a group that lost nodes restarts with the workers the
    # cluster can hold, down to the minimum, and grows back when nodes return.
    num_workers: int | tuple[int, int] = cfg.train.num_workers
    if 0 < cfg.train.min_workers < cfg.train.num_workers:
        num_workers = (cfg.train.min_workers, cfg.train.num_workers)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"plan": ray.put(plan), "commit": git_commit()},
        scaling_config=ScalingConfig(
            # Ray Train V2's ScalingConfig (what ray.train exports at run time) takes a
            # (min, max) tuple; mypy reads ray.train's V1 import of the same name.
            num_workers=num_workers,  # type: ignore[arg-type]
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


def plan_run(cfg: Config) -> RunPlan:
    """Resolve paths and everything a run needs, once, on the driver, checking it before
    anything starts on the cluster (`rayssl.train.plan`):

    * `model.init` (fine-tuning) exists and fits; its backbone settings replace the
      config's and its weights travel in the plan;
    * the manifest is read once: its usable training videos (`preflight.check_data`),
      validation videos, unreadable-row counts;
    * a task that trains on class labels gets a labelled split (and `pretext.num_classes`
      from the manifest when 0);
    * the monitor's manifest has its labelled query and gallery splits;
    * the curriculum's videos are scored, and put in its order;
    * a run.name that has a checkpoint resumes it with the same config (`check_resume`).
    """
    cfg = resolve_paths(cfg)
    if not cfg.data.manifest:
        raise ConfigError("data.manifest: set it to a manifest URI (rayssl manifest ... --out M)")
    init = None
    if cfg.model.init not in ("", "random"):
        init = resolve_checkpoint(cfg.model.init, cfg)
        build_backbone_from(init)  # a checkpoint that does not fit fails here, not on workers
        cfg = with_checkpoint_model(cfg, init)
    check_resume(cfg)  # a checkpoint of this run.name is read (as plain data) before the data

    table = preflight.read_run_manifest(cfg)
    if getattr(PRETEXTS[cfg.pretext.name], "needs_labels", False):
        cfg = _with_num_classes(cfg, table)
    videos = preflight.check_data(cfg, table)
    monitor = monitor_videos(cfg, table) if cfg.monitor.every_epochs else None
    if cfg.curriculum.enabled:
        _check_difficulty(cfg, table, videos)
        videos = order_by_difficulty(videos)
    split = cfg.data.val_split
    return RunPlan(
        cfg=cfg,
        videos=videos,
        val_videos=usable_videos(table, split) if split else None,
        monitor_videos=monitor,
        bad_counts=manifest_bad_counts(table, cfg.data.split),
        init=init,
    )


def prepare_config(cfg: Config) -> Config:
    """The config as `plan_run` resolves it (paths, init's backbone, number of classes)."""
    return plan_run(cfg).cfg


def _check_difficulty(cfg: Config, table: pa.Table, videos: pa.Table) -> None:
    """Curriculum learning needs every training video scored (`rayssl score`)."""
    if "difficulty" not in table.column_names:
        raise ValueError(
            f"curriculum.enabled: {cfg.data.manifest} has no 'difficulty' column; score it "
            "first: rayssl score MANIFEST --out SCORED.parquet, then data.manifest=SCORED.parquet"
        )
    unscored = sum(1 for d in videos["difficulty"].to_pylist() if d is None or not math.isfinite(d))
    if unscored:
        print(
            f"curriculum: {unscored} of {videos.num_rows} training videos have no difficulty "
            "score; they count as the hardest and come last"
        )


def _with_num_classes(cfg: Config, table: pa.Table) -> Config:
    train = require_labels(table, f"pretext {cfg.pretext.name}", split=cfg.data.split or None)
    if cfg.data.val_split:
        require_labels(table, f"pretext {cfg.pretext.name} (data.val_split)", cfg.data.val_split)
    labelled = require_labels(table, f"pretext {cfg.pretext.name}")
    found = int(max(labelled["label"].to_pylist())) + 1
    if cfg.pretext.num_classes == 0:
        return replace(cfg, pretext=replace(cfg.pretext, num_classes=found))
    if found > cfg.pretext.num_classes:
        raise ValueError(
            f"pretext.num_classes: {cfg.pretext.num_classes}, but the manifest has labels up "
            f"to {found - 1} ({train.num_rows} training videos)"
        )
    return cfg


def pretrain(cfg: Config) -> dict[str, Any]:
    """Run (or resume) a pre-training job; returns the final metrics and locations."""
    return run_training(cfg)[0]


def run_training(cfg: Config) -> tuple[dict[str, Any], Config]:
    """Run (or resume) a training job of `cfg`'s task (a pretext, or supervised
    fine-tuning). Returns the final metrics and locations, and the config as run."""

    plan = plan_run(cfg)
    cfg = plan.cfg
    preflight.check_outputs(cfg)
    start_ray()
    preflight.check_cluster(cfg)
    result = build_trainer(plan).fit()
    metrics = dict(result.metrics or {})
    summary = {
        "run_name": cfg.run.name,
        "storage_path": cfg.run.storage_path,
        "tracking_uri": storage.redact(cfg.run.tracking_uri),
        # local mode (train.num_workers 0) persists no checkpoint: Ray Train hands back the
        # last reported one, a temporary folder already gone
        "checkpoint": _checkpoint_uri(cfg, result.checkpoint.path)
        if result.checkpoint and cfg.train.num_workers > 0
        else None,
        "mlflow_run_id": str(metrics.get("mlflow_run_id") or ""),
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
    }
    return summary, cfg


def _checkpoint_uri(cfg: Config, path: str) -> str:
    """Ray reports a checkpoint path relative to its filesystem: give S3 ones back their
    scheme, so the result can be passed on as `--checkpoint`."""
    if storage.is_s3(cfg.run.storage_path) and not storage.is_s3(path):
        return "s3://" + path.lstrip("/")
    return path


def _may_change(key: str) -> bool:
    return any(
        key == k or (k.endswith(".") and key.startswith(k)) or key.startswith(k + ".")
        for k in RESUME_MAY_CHANGE
    )


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_differences(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The keys (outside `RESUME_MAY_CHANGE`) whose value in the saved config `saved`
    differs from `cfg`'s, sorted."""

    try:
        old = config_from_dict(saved).flat()  # fills keys added since with their defaults
    except (ConfigError, TypeError, ValueError, KeyError):
        old = flatten(saved)
    new = cfg.flat()
    if new.get("pretext.num_classes") == 0:  # 0: the manifest's, filled in by `plan_run`
        new.pop("pretext.num_classes")
        old.pop("pretext.num_classes", None)
    missing = object()
    return sorted(
        k
        for k in set(old) | set(new)
        if not _may_change(k) and _plain(old.get(k, missing)) != _plain(new.get(k, missing))
    )


def check_resume(cfg: Config) -> str | None:
    """Before anything starts: when `run.name` already has a checkpoint, read it (as plain
    data: a pickle that would run code is a CheckpointError naming it) and compare its
    config with `cfg`. A difference outside `RESUME_MAY_CHANGE` is a ConfigError listing
    the keys, unless `run.resume=force`. Returns the state.pt resumed from, or None."""
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    run_uri = storage.join(cfg.run.storage_path, cfg.run.name)
    try:
        if not storage.list_files(run_uri, options=options):
            return None  # a new run: nothing to compare (and torch need not load here)
    except storage.StorageNotFoundError:
        return None

    state_uri = ckpt.run_folder_checkpoint(run_uri, options)
    if state_uri is None:
        return None
    where = storage.redact(state_uri)
    state = ckpt.read(state_uri, options)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ckpt.CheckpointError(f"{where}: not a rayssl training state")
    saved = state.get("config")
    if not isinstance(saved, dict) or not saved:
        raise ckpt.CheckpointError(f"{where}: holds no config to compare with the new run")
    changed = config_differences(saved, cfg)
    if changed and cfg.run.resume != "force":
        shown = ", ".join(changed[:20]) + (
            f" and {len(changed) - 20} more" if len(changed) > 20 else ""
        )
        raise ConfigError(
            f"run.name {cfg.run.name!r} resumes {where}, whose config differs in {shown}; "
            "run it with its saved config, choose a new run.name, or set run.resume=force "
            "to continue under the new settings"
        )
    if changed:
        print(f"rayssl: run.resume=force: resuming {where} with changed {', '.join(changed)}")
    return state_uri
