"""`train.max_steps_per_epoch` and `train.checkpoint_every_minutes` in a real (local
mode) pre-training run: what each run trained and checkpointed, read back from MLflow.

The tiny manifest has 9 training videos; with one clip per video and batches of 4 an
epoch is 3 steps (4 + 4 + 1 clips)."""

from __future__ import annotations

import mlflow

from rayssl.config import load_config
from tests.conftest import ROOT, tiny_overrides

DEBUG = str(ROOT / "configs" / "debug.yaml")


def _history(tracking: str, name: str, key: str) -> list[float]:
    mlflow.set_tracking_uri(tracking)
    (run_id,) = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.run_name = '{name}'"
    )["run_id"]
    client = mlflow.MlflowClient(tracking)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _pretrain(manifest, tmp_path, name: str, *overrides: str) -> str:
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [
            *tiny_overrides(manifest, tmp_path / "runs", name, tracking),
            "train.num_workers=0",
            *overrides,
        ],
    )
    result = pretrain(cfg)
    assert result["metrics"]["epoch"] == 1
    return tracking


def test_max_steps_per_epoch_ends_each_epoch_after_that_many_steps(
    ray_local, tiny_manifest, tmp_path
):
    tracking = _pretrain(tiny_manifest, tmp_path, "capped", "train.max_steps_per_epoch=1")
    # one batch of 4 per epoch instead of all 9 videos, in both epochs
    assert _history(tracking, "capped", "train/clips") == [4.0, 4.0]


def test_checkpoint_every_minutes_checkpoints_inside_the_epoch(ray_local, tiny_manifest, tmp_path):
    # a period far below one step's time: a checkpoint is due after every step but the
    # last of an epoch (the epoch-end checkpoint follows at once there)
    tracking = _pretrain(
        tiny_manifest, tmp_path, "timed", "train.checkpoint_every_minutes=0.000001"
    )
    assert _history(tracking, "timed", "checkpoint/steps_in_epoch") == [1.0, 2.0, 1.0, 2.0]
    # and without the setting, no mid-epoch checkpoint
    tracking = _pretrain(tiny_manifest, tmp_path, "untimed")
    assert _history(tracking, "untimed", "checkpoint/steps_in_epoch") == []
