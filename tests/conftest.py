"""Shared fixtures: tiny generated datasets, an in-process Ray, subprocess helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/s3server.py

# Local clusters in tests never use token auth (NOTES: Ray 2.59+), and never report usage.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="session")
def ray_local():
    """One in-process Ray for the session (saves ~5 s per test)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def make_dataset(
    out: Path,
    num_videos: int = 12,
    num_frames: int = 40,
    codec: str = "h264",
    val_fraction: float = 0.25,
) -> Path:
    """Generate tiny videos and write their manifest; returns the manifest path."""
    from rayssl.io.manifest import build_manifest, list_entries, write_manifest
    from rayssl.tools.synthetic import generate_dataset

    generate_dataset(
        out / "videos",
        num_videos=num_videos,
        num_frames=num_frames,
        height=64,
        width=86,
        codec=codec,
        num_classes=4,
        seed=0,
    )
    entries = list_entries(str(out / "videos"), "folder", val_fraction=val_fraction)
    table = build_manifest(entries, use_ray=False)
    manifest = out / "manifest.parquet"
    write_manifest(table, str(manifest))
    return manifest


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def tiny_overrides(manifest: Path, storage: Path, name: str, tracking: str) -> list[str]:
    """Config overrides for a pre-training run that takes seconds on a CPU."""
    return [
        f"data.manifest={manifest}",
        f"run.storage_path={storage}",
        f"run.name={name}",
        f"run.tracking_uri={tracking}",
        "data.clips_per_video=1",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        "model.width=0.0625",
        "train.batch_size=4",
        "optim.epochs=2",
    ]


def load_benchmark(name: str):
    """The module of benchmarks/<name>.py (benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
