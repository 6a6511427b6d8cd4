"""Pre-training end to end: real Ray Train, real videos, a real MLflow sqlite store.

The local-mode tests run in-process. A job submitted the way users do (`ray job submit
-- python jobs/pretrain.py`, 2 workers), with a worker killed mid-epoch and the job
resubmitted, is tests/train/test_midepoch.py. Stopping and resubmitting a `ray job
submit` job (its driver killed) and resuming from the checkpoint is
tests/train/test_pretrain_s3.py.
"""

from __future__ import annotations

import json

import mlflow
import pytest

from rayssl.config import load_config
from tests.conftest import ROOT, tiny_overrides

DEBUG = str(ROOT / "configs" / "debug.yaml")


def _runs(tracking: str, name: str):
    mlflow.set_tracking_uri(tracking)
    return mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.run_name = '{name}'"
    )


def _history(tracking: str, run_id: str, key: str) -> list[float]:
    client = mlflow.MlflowClient(tracking)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_local_mode_pretrain_logs_run_to_mlflow(ray_local, tiny_manifest, tmp_path):
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "local", tracking),
            "train.num_workers=0",
        ],
    )
    result = pretrain(cfg)
    assert result["metrics"]["epoch"] == 1
    runs = _runs(tracking, "local")
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["params.model.backbone"] == "c3d"
    assert run["params.optim.epochs"] == "2"
    assert run["tags.pretext"] == "pace" and run["tags.dataset"] == "manifest"
    # Per-epoch metrics: one value per epoch; every clip of the epoch accounted for.
    losses = _history(tracking, run["run_id"], "train/loss")
    assert len(losses) == 2 and all(v > 0 for v in losses)
    clips = _history(tracking, run["run_id"], "train/clips")
    assert clips[0] == 9  # 9 train videos x 1 clip
    assert len(_history(tracking, run["run_id"], "val/pace_acc")) == 2
    # the worker's system metrics sit beside the training metrics (step 5 of 6)
    rss = _history(tracking, run["run_id"], "system/worker0/rss_mb")
    assert len(rss) == 1 and 50 < rss[0] < 20_000
    assert 0 < _history(tracking, run["run_id"], "system/worker0/node_mem_pct")[0] <= 100
    assert 0 <= _history(tracking, run["run_id"], "system/worker0/data_wait_frac")[0] <= 1
    artifacts = {
        a.path for a in mlflow.MlflowClient(tracking).list_artifacts(run["run_id"], "weights")
    }
    assert "weights/backbone.pt" in artifacts


def _result_line(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def test_local_mode_monitor_logs_retrieval_and_prints_progress(
    ray_local, tiny_manifest, tmp_path, capsys
):
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "monitored", tracking),
            "train.num_workers=0",
            "monitor.every_epochs=1",
            "monitor.clips=uniform:2",
        ],
    )
    pretrain(cfg)
    run = _runs(tracking, "monitored").iloc[0]
    top1 = _history(tracking, run["run_id"], "monitor/retrieval_top1")
    assert len(top1) == 2 and all(0.0 <= v <= 1.0 for v in top1)
    assert _history(tracking, run["run_id"], "monitor/videos") == [12.0, 12.0]
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[rayssl] epoch")]
    assert [x.split(" |")[0] for x in lines] == ["[rayssl] epoch 1/2", "[rayssl] epoch 2/2"]
    assert "retrieval top1" in lines[-1] and "val loss" in lines[-1]


def test_monitor_settings_are_checked_before_training(tiny_manifest, tmp_path):
    from rayssl.io.manifest import ManifestError
    from rayssl.launch import prepare_config

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "bad-monitor", tracking),
            "monitor.every_epochs=1",
            "monitor.query_split=test",
        ],
    )
    with pytest.raises(ManifestError, match="monitor: split 'test' has no usable video"):
        prepare_config(cfg)


STATS_DEBUG = str(ROOT / "configs" / "stats_debug.yaml")


# The statistics run also compiles its backbone (train.compile; dynamo's eager backend: the
# tracing and guards without a compiler): the pretext reaches it through forward_map, in
# train and eval (aot_eager: tests/train/test_step.py; inductor is too slow for a 2-core CI).
COMPILED = ["train.compile=true", "train.compile_backend=eager"]


@pytest.mark.parametrize(
    ("config", "pretext", "acc", "extra"),
    [(STATS_DEBUG, "statistics", "label_acc", COMPILED), (DEBUG, "pace", "pace_acc", [])],
)
def test_local_mode_curriculum(scored_manifest, tmp_path, capsys, config, pretext, acc, extra):
    """Either pretext in the real loop on a scored manifest with a single-step curriculum:
    the easiest half of the 9 training videos first, then all; stages logged."""
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        config,
        [
            *tiny_overrides(scored_manifest, tmp_path / "runs", "curriculum", tracking),
            "train.num_workers=0",
            "pretext.statistics.hidden_dim=32",
            "curriculum.enabled=true",
            "curriculum.step_epochs=1",
            *extra,
        ],
    )
    pretrain(cfg)
    run = _runs(tracking, "curriculum").iloc[0]
    assert run["tags.pretext"] == pretext
    assert _history(tracking, run["run_id"], "curriculum/stage") == [0.0, 1.0]
    assert _history(tracking, run["run_id"], "curriculum/videos") == [5.0, 9.0]
    assert _history(tracking, run["run_id"], "train/clips") == [5.0, 9.0]
    keys = [f"val/{acc}"]
    if pretext == "statistics":
        keys += ["train/motion_loss", "train/appearance_loss", "train/motion_acc"]
    for key in keys:
        values = _history(tracking, run["run_id"], key)
        assert len(values) == 2 and all(v >= 0 for v in values), key
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[rayssl] epoch")]
    assert lines[0].startswith("[rayssl] epoch 1/2 (curriculum stage 0: 5 videos)")
    assert acc in lines[0]


def test_curriculum_needs_a_scored_manifest(tiny_manifest, tmp_path):
    from rayssl.launch import prepare_config

    cfg = load_config(
        STATS_DEBUG,
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "unscored", "sqlite:///x.db"),
            "curriculum.enabled=true",
        ],
    )
    with pytest.raises(ValueError, match="no 'difficulty' column; score it first: rayssl score"):
        prepare_config(cfg)
