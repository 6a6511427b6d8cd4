"""Checks a run's config against the world before anything starts on the cluster.

`rayssl.config` checks what a config says on its own (keys, types, ranges, a batch that
divides). This module checks it against what it names, on the driver, before Ray Train
starts a worker:

* `check_data`: the manifest can be read, its split and fraction hold usable videos,
  and the task's clips fit them (paces no video can hold, or so few that the skip limit
  would stop the run anyway);
* `check_outputs`: `run.storage_path` takes a write, and the MLflow tracking URI is
  writable (a sqlite file's folder) or answers (a tracking server);
* `check_cluster`: the connected Ray cluster has the GPUs and CPUs the workers ask for,
  unless an autoscaler may still add them.

`resolve_paths` runs first: local paths made absolute and the MLflow URI fixed where the
job is launched (a job submitted with `ray job submit` must write where the user expects,
not into Ray's copy of the working directory).

Every failure is a `ConfigError` naming the key, so every entry point reports it in one
line and exits non-zero (2).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.clips.pipeline import usable_videos
from rayssl.config import Config, ConfigError
from rayssl.io import storage
from rayssl.io.manifest import read_manifest
from rayssl.pretext import build_pretext
from rayssl.tracking_uri import default_tracking_uri

#: Frame counts of the manifest probed with this many plans each (skip-rate estimate).
_PLANS_PER_LENGTH = 8


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
        tracking_uri=storage.redact(tracking_uri),  # credentials stay in the environment
        artifact_location=artifacts,
    )
    return replace(cfg, data=data, run=run)


def _options(cfg: Config) -> storage.StorageOptions:
    return storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)


def read_run_manifest(cfg: Config) -> Any:
    """`data.manifest` as a pyarrow Table; any failure is a ConfigError naming the key."""
    try:
        return read_manifest(cfg.data.manifest, options=_options(cfg))
    except storage.StorageNotFoundError as e:
        raise ConfigError(f"data.manifest: {cfg.data.manifest} does not exist ({e})") from e
    except storage.StorageError as e:
        raise ConfigError(f"data.manifest: cannot read {cfg.data.manifest}: {e}") from e
    except Exception as e:  # a file that is not Parquet, a manifest without its columns
        raise ConfigError(f"data.manifest: {cfg.data.manifest} is not a manifest: {e}") from e


def check_data(cfg: Config, table: Any = None) -> Any:
    """Check the training videos of the manifest (`table`, read here when None) against
    the task; returns the usable training videos (a pyarrow Table)."""

    if table is None:
        table = read_run_manifest(cfg)
    videos = usable_videos(table, cfg.data.split, cfg.data.fraction, cfg.run.seed)
    if videos.num_rows == 0:
        splits = (
            sorted({str(s) for s in table["split"].to_pylist()})
            if "split" in (table.column_names)
            else []
        )
        raise ConfigError(
            f"data.split: no usable video in split {cfg.data.split!r} of {cfg.data.manifest} "
            f"(data.fraction {cfg.data.fraction}; {table.num_rows} rows, splits {splits}, "
            f"{sum(e is not None for e in table['error'].to_pylist())} unreadable)"
        )
    check_clips_fit(cfg, np.asarray(videos["num_frames"].to_numpy(), dtype=np.int64))
    return videos


def check_clips_fit(cfg: Config, num_frames: np.ndarray) -> float:
    """The task's plans against the videos' lengths: an error when no video can hold a
    clip, or when the share of draws that would be skipped as too short passes
    `data.max_skip_fraction`. Returns that share (estimated with a few plans per
    distinct length, exact for deterministic plans)."""

    pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    rng = np.random.default_rng(cfg.run.seed)
    counts = Counter(int(n) for n in num_frames)
    skipped = 0.0
    for length, n in counts.items():
        fails = sum(pretext.plan(length, rng) is None for _ in range(_PLANS_PER_LENGTH))
        skipped += n * fails / _PLANS_PER_LENGTH
    share = skipped / max(len(num_frames), 1)
    longest = max(counts)
    what = (
        f"pretext {cfg.pretext.name} (paces {list(cfg.pretext.paces)}, data.clip_len "
        f"{cfg.data.clip_len}, data.short_video {cfg.data.short_video})"
    )
    if share >= 1.0:
        raise ConfigError(
            f"pretext.paces: no training video is long enough for {what}: the longest has "
            f"{longest} frames. Shorten data.clip_len, use smaller paces, or use longer videos"
        )
    if share > cfg.data.max_skip_fraction:
        raise ConfigError(
            f"pretext.paces: about {share:.0%} of the draws would be skipped as too short "
            f"for {what} (> data.max_skip_fraction {cfg.data.max_skip_fraction}); the run "
            "would stop after its first epoch. Shorten data.clip_len, use smaller paces or "
            "data.short_video=resample_pace"
        )
    return share


def check_outputs(cfg: Config) -> None:
    """`run.storage_path` takes a write; the MLflow tracking URI can be written."""

    check_writable("run.storage_path", cfg.run.storage_path, _options(cfg))
    check_tracking_uri(default_tracking_uri(cfg))


def check_writable(key: str, uri: str, options: storage.StorageOptions | None = None) -> None:
    """Write and remove a small probe object under `uri` (a folder or prefix)."""
    probe = storage.join(uri, f".rayssl-write-check-{uuid.uuid4().hex[:12]}")
    made = None if storage.is_s3(uri) else _first_missing(uri.removeprefix("file://"))
    try:
        storage.write_bytes(probe, b"rayssl write check\n", options=options)
    except (storage.StorageError, OSError) as e:
        raise ConfigError(f"{key}: cannot write under {storage.redact(uri)}: {e}") from e
    try:
        if storage.is_s3(probe):
            bucket, name = storage.parse_s3(probe)
            storage.s3_client(options).delete_object(Bucket=bucket, Key=name)
        else:
            os.unlink(probe.removeprefix("file://"))
            if made:  # the folders the probe made: a failed check later leaves nothing
                folder = os.path.dirname(probe.removeprefix("file://"))
                while len(folder) >= len(made):
                    os.rmdir(folder)
                    folder = os.path.dirname(folder)
    except Exception:  # noqa: BLE001  (a probe left behind is harmless; the write worked)
        pass


def _first_missing(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (None: it exists)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def check_tracking_uri(uri: str, timeout_s: float = 10.0) -> None:
    """A sqlite or file store's folder must be writable; a tracking server must answer
    its /health endpoint. Other schemes (databricks, ...) are left to MLflow."""
    key = "run.tracking_uri"
    if uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        _check_local_folder(key, uri, folder)
    elif uri.startswith("file:") or "://" not in uri:
        path = uri[len("file://") :] if uri.startswith("file://") else uri.removeprefix("file:")
        _check_local_folder(key, uri, path if os.path.isdir(path) else os.path.dirname(path))
    elif uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:  # noqa: S310 (http(s) only)
                if r.status >= 400:
                    raise ConfigError(f"{key}: {storage.redact(url)} answered {r.status}")
        except (urllib.error.URLError, OSError) as e:
            raise ConfigError(
                f"{key}: no MLflow tracking server answers at {storage.redact(uri)} ({e}); "
                "start it, or fix run.tracking_uri / MLFLOW_TRACKING_URI"
            ) from e


def _check_local_folder(key: str, uri: str, folder: str) -> None:
    folder = os.path.abspath(folder or ".")
    existing = folder
    while not os.path.exists(existing):  # created on first use: its first existing parent
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: {uri} is not writable ({existing} does not take new files)")


def check_cluster(cfg: Config) -> None:
    """After ray.init(): the cluster has what the train workers ask for, or an
    autoscaler that may add it. Without one a run asking for more waits forever."""
    import ray  # lazy: Ray is a heavy import that only this path needs

    total = ray.cluster_resources()
    workers = cfg.train.min_workers or cfg.train.num_workers  # elastic: the minimum
    need_cpu = cfg.train.cpus_per_worker * max(workers, 1)
    need_gpu = cfg.train.gpus_per_worker * workers if cfg.train.use_gpu else 0.0
    if _has_autoscaler():
        return
    if need_gpu and total.get("GPU", 0.0) == 0:
        raise ConfigError(
            "train.use_gpu: the Ray cluster has no GPU (and no autoscaler to add one); set "
            "train.use_gpu=false or submit to a cluster with GPU nodes"
        )
    if need_gpu > total.get("GPU", 0.0):
        raise ConfigError(
            f"train.num_workers: {workers} workers x {cfg.train.gpus_per_worker} "
            f"GPUs = {need_gpu:g}, but the cluster has {total.get('GPU', 0.0):g} GPUs"
        )
    if workers and need_cpu > total.get("CPU", 0.0):
        raise ConfigError(
            f"train.num_workers: {workers} workers x {cfg.train.cpus_per_worker} "
            f"CPUs = {need_cpu:g}, but the cluster has {total.get('CPU', 0.0):g} CPUs "
            "(lower train.cpus_per_worker or the worker count)"
        )


def _has_autoscaler() -> bool:
    """Whether an autoscaler with node types of its own runs on this cluster (then the
    missing resources may still come). Every head runs Ray's monitor; on a cluster of
    fixed nodes (`ray init` / `ray start`) it only knows the live nodes, named
    `node_<id>`, while a launcher or KubeRay config names its types (`ray.worker.gpu`)."""

    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
    except Exception:  # noqa: BLE001  (another Ray layout: do not block the run)
        return True
    if not raw:
        return False
    report = json.loads(raw).get("autoscaler_report") or {}
    names = (report.get("node_type_mapping") or {}).values()
    availability = (report.get("node_availability_summary") or {}).get("node_availabilities")
    return bool(
        report.get("pending_launches")
        or availability
        or any(not str(n).startswith("node_") for n in names)
    )
