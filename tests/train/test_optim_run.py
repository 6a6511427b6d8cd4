"""The ViT training options through the real loop (Ray Train local mode, real videos,
MLflow sqlite): the warm-up + cosine lr set before every step, with AdamW's betas, the
weight-decay split and activation checkpointing on."""

from __future__ import annotations

import math

import mlflow
import pytest

from rayssl.config import load_config
from tests.conftest import ROOT, tiny_overrides

DEBUG = str(ROOT / "configs" / "debug.yaml")


@pytest.mark.slow
def test_local_mode_warmup_cosine_sets_the_lr_every_step(ray_local, tiny_manifest, tmp_path):
    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        DEBUG,
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "cosine", tracking),
            "train.num_workers=0",
            "train.log_every_steps=1",
            "train.activation_checkpointing=true",
            "optim.name=adamw",
            "optim.betas=[0.9,0.95]",
            "optim.no_decay_bias_norm=true",
            "optim.schedule=warmup_cosine",
            "optim.warmup_epochs=1",
            "optim.lr=1e-3",
            "optim.min_lr=1e-5",
        ],
    )
    result = pretrain(cfg)
    assert result["metrics"]["epoch"] == 1
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.run_name = 'cosine'"
    ).iloc[0]
    history = mlflow.MlflowClient(tracking).get_metric_history(run["run_id"], "step/lr")
    lrs = [m.value for m in sorted(history, key=lambda m: m.step)]
    # 9 train videos, batch 4: 3 steps an epoch; the lr before step k of epoch e is
    # lr(e + k/3): warm-up 0, 1/3, 2/3 of 1e-3, then the cosine from 1e-3 to 1e-5 over epoch 1
    cosine = [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 1 / 3, 2 / 3)]
    assert lrs == pytest.approx([0.0, 1e-3 / 3, 2e-3 / 3, *cosine], rel=1e-6)
    epoch_lr = mlflow.MlflowClient(tracking).get_metric_history(run["run_id"], "lr")
    assert [m.value for m in sorted(epoch_lr, key=lambda m: m.step)] == pytest.approx([0, 1e-3])


@pytest.mark.slow
def test_fsdp_two_cpu_workers_train_checkpoint_and_resume(ray_local, tiny_manifest, tmp_path):
    """train.fsdp on CPU (gloo), 2 workers, with activation checkpointing: the run
    trains, its checkpoint holds the whole (unsharded) state in the usual format, the
    logged backbone loads into a plain backbone, and a resubmitted run resumes from it."""
    import torch

    from rayssl.checkpoint import latest_state_uri, load_state_strict, read
    from rayssl.launch import pretrain
    from rayssl.pretext import build_pretext
    from rayssl.train.step import build_model

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [
        *tiny_overrides(tiny_manifest, tmp_path / "runs", "fsdp", tracking),
        "train.num_workers=2",
        "train.fsdp=true",
        "train.activation_checkpointing=true",
        "optim.epochs=1",
    ]
    cfg = load_config(DEBUG, overrides)
    result = pretrain(cfg)
    assert result["metrics"]["epoch"] == 0
    state = read(latest_state_uri(str(tmp_path / "runs" / "fsdp")))
    plain = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video))
    load_state_strict(plain, state["model"], "the fsdp run's checkpoint")  # whole tensors
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert state["optimizer"]["state"]  # AdamW's moments, gathered
    client = mlflow.MlflowClient(tracking)
    run_id = result["mlflow_run_id"]
    assert "weights/backbone.pt" in {a.path for a in client.list_artifacts(run_id, "weights")}

    cfg2 = load_config(DEBUG, [*overrides, "optim.epochs=2", "run.resume=force"])
    result2 = pretrain(cfg2)
    assert result2["metrics"]["epoch"] == 1
    starts = client.get_metric_history(result2["mlflow_run_id"], "data/start_epoch")
    assert [m.value for m in starts][-1] == 1  # resumed after epoch 0, not from scratch
