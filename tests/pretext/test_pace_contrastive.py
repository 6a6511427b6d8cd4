"""Pace + contrastive learning behind the task interface: two clips of one video at two
paces decoded together, both losses, and a model that fits a fixed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.contrastive_loss import masked_info_nce, same_context_mask
from rayssl.pretext.pace_contrastive import video_keys
from rayssl.train.step import (
    DeviceSettings,
    batch_to_device,
    build_model,
    build_optimizer,
    eval_step,
    train_step,
)


def _cfg(*overrides):
    return load_config(
        None,
        [
            "pretext.name=pace_contrastive",
            "model.backbone=c3d",
            "model.width=0.0625",
            "pretext.contrastive.projection_hidden=32",
            "pretext.contrastive.projection_dim=16",
            "optim.name=adamw",
            "optim.lr=3e-3",
            "optim.weight_decay=0",
            *overrides,
        ],
    )


def test_plan_draws_two_paces_of_one_video():
    task = build_pretext(_cfg().pretext, 16)
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = task.plan(100, rng)
        first, second = plan.clips
        assert plan.targets["label"] != plan.targets["label2"]
        for idx, label in ((first, plan.targets["label"]), (second, plan.targets["label2"])):
            pace = task.paces[int(label)]
            assert np.array_equal(np.diff(idx), np.full(15, int(pace))) and idx[-1] < 100
    # Only pace 1 fits a 16-frame video: both clips at pace 1 rather than no sample.
    plan = task.plan(16, rng)
    assert plan.targets["label"] == plan.targets["label2"] == 0
    assert set(task.target_spec((16, 8, 8, 3))) == {
        "clip",
        "clip2",
        "label",
        "label2",
        "pace",
        "pace2",
    }


def _batch(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "clip": rng.integers(0, 256, (n, 16, size, size, 3), dtype=np.uint8),
        "clip2": rng.integers(0, 256, (n, 16, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 4, n).astype(np.int64),
        "label2": rng.integers(0, 4, n).astype(np.int64),
        "valid": np.array([True] * (n - 1) + [False]),
        "video_id": np.array([f"v{i}" for i in range(n)]),
        "skip_reason": np.array([""] * n),
        "resampled": np.zeros(n, bool),
    }


@pytest.mark.parametrize("mode", ["same_context", "same_pace"])
def test_model_fits_a_fixed_batch(mode):
    cfg = _cfg(f"pretext.contrastive.mode={mode}", "pretext.contrastive.lambda_ctr=1.0")
    torch.manual_seed(0)
    model = build_model(cfg, build_pretext(cfg.pretext, 16))
    opt, _ = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(), settings)
    first = eval_step(model, batch, settings)
    assert float(first["num_valid"]) == 3.0  # the placeholder row does not count
    for _ in range(40):
        train_step(model, batch, opt, settings)
    last = eval_step(model, batch, settings)
    # InfoNCE has a floor (5 candidates per clip at temperature 0.5): not 0
    assert float(last["loss_sum"]) < 0.6 * float(first["loss_sum"])
    assert float(last["ctr_loss_sum"]) < float(first["ctr_loss_sum"])
    assert float(last["correct"]) == 3.0


def test_loss_is_the_weighted_sum_of_its_parts():
    """loss = lambda_cls * mean CE over both clips + lambda_ctr * InfoNCE with the
    same-context mask over the 2B embeddings (clip i and clip i + B share a video)."""
    cfg = _cfg("pretext.contrastive.lambda_ctr=0.25", "pretext.contrastive.temperature=0.2")
    task = build_pretext(cfg.pretext, 16)
    torch.manual_seed(1)
    model = build_model(cfg, task)
    model.eval()
    batch = batch_to_device(_batch(n=3), DeviceSettings(torch.device("cpu")))
    with torch.no_grad():
        loss, _ = task.compute(model.backbone, model.head, batch)
        feats = model.backbone(torch.cat([batch["clip"], batch["clip2"]]))
        logits, z = model.head(feats)
        labels = torch.cat([batch["label"], batch["label2"]])
        valid = torch.cat([batch["valid"], batch["valid"]])
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        ce = ((ce[:3] + ce[3:]) / 2 * batch["valid"]).sum() / batch["valid"].sum()
        keys = video_keys(batch["video_id"], z.device).repeat(2)
        ctr, _ = masked_info_nce(z, same_context_mask(keys), 0.2, valid)
    assert torch.isclose(loss, ce + 0.25 * ctr)
    mask = same_context_mask(keys)
    assert mask[0, 3] and mask[3, 0] and not mask[0, 1] and not mask[0, 0]


def test_config_checks():
    with pytest.raises(ConfigError, match="pretext.contrastive.mode"):
        _cfg("pretext.contrastive.mode=same_video")
    with pytest.raises(ConfigError, match="pretext.contrastive.temperature"):
        _cfg("pretext.contrastive.temperature=0")


def test_local_mode_run_decodes_both_clips(ray_local, tiny_manifest, tmp_path):
    """The real loop and pipeline: both clips of a sample decoded, both losses logged."""
    import mlflow

    from rayssl.launch import pretrain
    from tests.conftest import ROOT, tiny_overrides

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        ROOT / "configs" / "pace_ctr_debug.yaml",
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "ctr", tracking),
            "train.num_workers=0",
            "data.val_split=val",
        ],
    )
    pretrain(cfg)
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    client = mlflow.MlflowClient(tracking)
    for key in ("train/cls_loss", "train/ctr_loss", "train/ctr_acc", "val/pace_acc"):
        assert len(client.get_metric_history(run["run_id"], key)) == 2, key
    assert [m.value for m in client.get_metric_history(run["run_id"], "train/clips")] == [9, 9]
