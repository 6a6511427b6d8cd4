"""Shared fixtures: tiny generated datasets, one moto S3 server and one Ray head for the
session (this process joined to it), subprocess helpers."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/s3server.py

# Local clusters in tests never use token auth (NOTES: Ray 2.59+), and never report usage.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

if TYPE_CHECKING:
    from rayssl.localhead import Head


#: The session head's fixed size: the same on a 2-core CI runner, a laptop and a GPU host.
#: 4 logical CPUs (train workers at 0.5 CPU beside decode tasks, NOTES), no GPU.
SESSION_CPUS = 4


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server (a child process on loopback) for the whole session.

    Tests share it and keep apart by bucket: each test makes buckets with names of its
    own (`make_bucket` fails on a name another test already made), so no test sees
    another's objects. The session's Ray head has its address and fake credentials in
    its environment (`s3_env`), so every Ray worker reaches it, as on a real cluster."""
    from s3server import moto_s3_server

    with moto_s3_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="session")
def ray_head_session(moto_endpoint, tmp_path_factory) -> Iterator[Head]:
    """One local Ray head (`ray start --head`, dashboard and job server) for the session.

    Pinned to SESSION_CPUS CPUs and 0 GPUs, with CUDA hidden from its workers, so CPU
    tests see the same cluster on a GPU host. Its environment carries the session moto
    server's S3 variables (workers of every job and of the in-process driver reach that
    server) and the short Ray Train health-check interval. Tests use it through
    `ray_local` (this process joined to it) or `ray_head` (jobs submitted to it; each
    test waits for its jobs to end).

    Tests that must own a cluster keep their own and say why:
    tests/train/test_node_loss.py (it kills worker nodes of its cluster),
    tests/train/test_two_clusters.py (runs its job here, but starts a second cluster:
    a cluster starting beside a running job is its subject),
    tests/tune/test_sweep.py's 2-CPU test (a 2-CPU head is its subject),
    tests/test_demo_script.py (`make demo` starts and stops its own head, as users run it).
    """
    from s3server import s3_env

    from rayssl.localhead import local_ray_head

    with s3_env(moto_endpoint) as aws:
        pass  # only the variables: this process's own environment stays as it was
    env = {
        **aws,
        # Ray does not hide a GPU from a worker that asked for none: hidden here, a model
        # actor runs on the CPU in float32 on a GPU host too
        "CUDA_VISIBLE_DEVICES": "",
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    with local_ray_head(
        num_cpus=SESSION_CPUS, num_gpus=0, env=env, log_path=log, stop_grace_s=2
    ) as head:
        yield head


@pytest.fixture(scope="session")
def ray_local(ray_head_session):
    """This process joined to the session's Ray head (`ray` module; in-process work such
    as local-mode training and Ray Data pipelines runs on that cluster)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_head_session.address, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_head(ray_head_session) -> Iterator[Head]:
    """The session's Ray head for a test that submits jobs to it (`submit_job`).

    Afterwards every job submitted during the test has reached a terminal state (one
    still running is stopped), and no actor of those jobs holding resources is alive:
    nothing a test left running can take the next test's CPUs."""
    before = {j.submission_id for j in _submitted_jobs(ray_head_session)}
    yield ray_head_session
    settle_jobs(ray_head_session, ignore=before)


def _submitted_jobs(head: Head) -> list:
    from ray.job_submission import JobSubmissionClient, JobType

    client = JobSubmissionClient(head.dashboard_url)
    return [j for j in client.list_jobs() if j.type == JobType.SUBMISSION]


def settle_jobs(head: Head, ignore: set | frozenset = frozenset(), timeout_s: float = 300) -> None:
    """Stop the head's submitted jobs that still run (except `ignore`d ones), then wait
    until each has a terminal status and none of their actors that hold resources (CPU,
    GPU, ...) is alive."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_actors

    client = JobSubmissionClient(head.dashboard_url)
    jobs = [j for j in _submitted_jobs(head) if j.submission_id not in ignore]
    for job in jobs:
        if not job.status.is_terminal():
            client.stop_job(job.submission_id)
    deadline = time.monotonic() + timeout_s
    ids = {j.job_id for j in jobs if j.job_id}
    while True:
        live = [
            j.submission_id
            for j in _submitted_jobs(head)
            if j.submission_id not in ignore and not j.status.is_terminal()
        ]
        actors = [  # Ray Data's detached per-cluster actors hold nothing: not counted
            a.class_name
            for a in list_actors(
                address=head.dashboard_url,
                filters=[("state", "!=", "DEAD")],
                detail=True,
                raise_on_missing_output=False,
            )
            if a.job_id in ids and any(v > 0 for v in (a.required_resources or {}).values())
        ]
        if not live and not actors:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"the session's Ray head did not settle: jobs {live}, actors {actors}")
        time.sleep(0.5)


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


def run_vit_debug(config: Path, manifest: Path, tmp_path: Path, name: str, *overrides: str):
    """A masked pretext's ViT debug config on the tiny manifest (one clip a video, batch 4,
    2 epochs, then `overrides`): (pretrain's result, the run's row of `mlflow.search_runs`,
    an MlflowClient on the run's sqlite store)."""
    import mlflow

    from rayssl.config import load_config
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        config,
        [
            f"data.manifest={manifest}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"run.name={name}",
            f"run.tracking_uri={tracking}",
            "data.clips_per_video=1",
            "train.batch_size=4",
            "optim.epochs=2",
            *overrides,
        ],
    )
    result = pretrain(cfg)
    mlflow.set_tracking_uri(tracking)
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.run_name = '{name}'"
    )
    return result, runs.iloc[0], mlflow.MlflowClient(tracking)


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
