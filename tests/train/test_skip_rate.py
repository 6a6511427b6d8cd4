"""A run whose videos mostly fail to decode stops with a clear error (after logging the
epoch's skip reasons) instead of training on what is left: `data.max_skip_fraction`."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from rayssl.config import ConfigError, load_config
from rayssl.io.manifest import read_manifest
from tests.conftest import ROOT, make_dataset, tiny_overrides


def test_skip_rate_limit_is_validated():
    with pytest.raises(ConfigError, match="data.max_skip_fraction"):
        load_config(None, ["data.max_skip_fraction=1.5"])


def test_run_stops_when_most_clips_are_skipped(ray_local, tmp_path):
    from rayssl.launch import pretrain

    manifest = make_dataset(tmp_path / "data", num_videos=8, num_frames=40, val_fraction=0.0)
    uris = read_manifest(str(manifest))["uri"].to_pylist()
    for uri in uris[:6]:  # 6 of 8 videos broken after indexing: bytes gone mid-file
        path = Path(uri)
        path.write_bytes(path.read_bytes()[:200])
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        *tiny_overrides(manifest, tmp_path / "runs", "skips", tracking),
        "train.num_workers=0",
        "data.val_split=",
        "optim.epochs=3",
    ]
    with pytest.raises(Exception, match=r"epoch 1: 6 of 8 training clips skipped \(75% > "):
        pretrain(load_config(ROOT / "configs" / "debug.yaml", overrides))
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert run["status"] == "FAILED" and run["tags.failure"] == "skip_rate"
    assert run["metrics.train/videos_skipped"] == 6  # the epoch's reasons were logged first
    assert run["metrics.epoch"] == 0  # it stopped after the first epoch
