"""Every problem a config names is reported before anything starts on the cluster.

Each case runs the real entry (`launch.pretrain`, `jobs/pretrain.py`) on a config that
names something broken and checks for one clear error naming the key, and that no run
folder, MLflow run or Ray Train job came of it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from rayssl.config import ConfigError, load_config
from rayssl.launch import pretrain
from rayssl.preflight import check_cluster, check_tracking_uri, check_writable
from tests.conftest import ROOT, tiny_overrides

DEBUG = str(ROOT / "configs" / "debug.yaml")


def _cfg(tiny_manifest: Path, tmp_path: Path, *extra: str):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return load_config(
        DEBUG,
        [*tiny_overrides(tiny_manifest, tmp_path / "runs", "pre", tracking), *extra],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["data.manifest={tmp}/nowhere.parquet"],
            r"data\.manifest: .*nowhere\.parquet does not exist",
        ),
        (
            ["data.manifest={tmp}/notes.parquet"],
            r"data\.manifest: .*notes\.parquet is not a manifest",
        ),
        (["data.split=test"], r"data\.split: no usable video in split 'test'"),
        (["pretext.paces=[4]"], r"pretext\.paces: no training video is long enough .* 40 frames"),
        (
            ["data.short_video=skip", "data.max_skip_fraction=0.3"],
            r"pretext\.paces: about \d+% of the draws would be skipped",
        ),
        (["run.storage_path={tmp}/afile/runs"], r"run\.storage_path: cannot write under"),
        (
            ["run.tracking_uri=sqlite:///{tmp}/afile/mlruns.db"],
            r"run\.tracking_uri: sqlite:///.*afile/mlruns\.db is not writable",
        ),
        (
            ["run.tracking_uri=http://127.0.0.1:{port}"],
            r"run\.tracking_uri: no MLflow tracking server answers at http://127\.0\.0\.1",
        ),
    ],
)
def test_pretrain_names_the_key_before_anything_starts(tiny_manifest, tmp_path, extra, message):
    (tmp_path / "notes.parquet").write_text("not parquet\n")
    (tmp_path / "afile").write_text("a file where a folder should be\n")
    port = _free_port()
    cfg = _cfg(tiny_manifest, tmp_path, *(e.format(tmp=tmp_path, port=port) for e in extra))
    with pytest.raises(ConfigError, match=message):
        pretrain(cfg)
    assert not (tmp_path / "runs").exists(), "nothing may start: no run folder"
    assert not (tmp_path / "mlruns.db").exists(), "nothing may start: no MLflow store"


def test_short_videos_under_the_skip_limit_pass(tiny_manifest, tmp_path):
    from rayssl.preflight import check_data

    cfg = _cfg(tiny_manifest, tmp_path, "data.short_video=skip", "data.max_skip_fraction=0.9")
    assert check_data(cfg).num_rows == 9


def test_job_script_prints_one_line_and_exits_2_without_starting_ray(tiny_manifest, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "pretrain.py"),
            "--config",
            DEBUG,
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "pre", tracking),
            "pretext.paces=[4]",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "RAY_ADDRESS": "local", "HOME": str(tmp_path)},
    )
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[0].startswith("config error: pretext.paces:")
    assert "Ray" not in out.stdout + out.stderr  # no Ray instance was started


def test_gpus_or_cpus_the_cluster_lacks_fail_fast(ray_local, tiny_manifest, tmp_path):
    """Against the session's head, pinned to 0 GPUs and a fixed CPU count: the same on a
    GPU host as on a CPU-only one (what check_cluster reads is the cluster's resources)."""
    from tests.conftest import SESSION_CPUS

    resources = ray_local.cluster_resources()
    assert resources.get("GPU", 0.0) == 0.0 and resources["CPU"] == SESSION_CPUS
    cpus = resources["CPU"]
    with pytest.raises(ConfigError, match=r"train\.use_gpu: the Ray cluster has no GPU"):
        check_cluster(_cfg(tiny_manifest, tmp_path, "train.use_gpu=true"))
    with pytest.raises(ConfigError, match=r"train\.num_workers: 2 workers x .* CPUs"):
        check_cluster(
            _cfg(
                tiny_manifest,
                tmp_path,
                "train.num_workers=2",
                f"train.cpus_per_worker={cpus}",
            )
        )
    check_cluster(_cfg(tiny_manifest, tmp_path, "train.num_workers=2", "train.cpus_per_worker=1"))


def test_writable_probe_leaves_nothing_behind(tmp_path):
    check_writable("run.storage_path", str(tmp_path / "new" / "runs"))
    assert not (tmp_path / "new").exists(), "the folders the probe made are removed"
    (tmp_path / "old").mkdir()
    check_writable("run.storage_path", str(tmp_path / "old"))
    assert (tmp_path / "old").is_dir() and list((tmp_path / "old").iterdir()) == []
    check_tracking_uri(f"sqlite:///{tmp_path / 'deep' / 'er' / 'mlruns.db'}")  # made on use


def test_storage_path_in_a_missing_bucket_is_reported(moto_endpoint):
    from rayssl.io.storage import StorageOptions
    from tests.s3server import make_bucket, s3_env

    endpoint = moto_endpoint
    with s3_env(endpoint):
        options = StorageOptions(endpoint_url=endpoint)
        make_bucket(endpoint, "preflight-runs")
        check_writable("run.storage_path", "s3://preflight-runs/pre", options)
        with pytest.raises(
            ConfigError, match=r"run\.storage_path: cannot write under s3://preflight-gone"
        ):
            check_writable("run.storage_path", "s3://preflight-gone/pre", options)
