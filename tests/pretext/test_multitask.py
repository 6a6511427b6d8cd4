"""Multi-task pretexts (`pretext.name: multitask`): pace (or pace + contrastive) and
statistics in one run with per-task weights, one backbone pass, the loop unaware."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from rayssl.clips.flow import compute_flow
from rayssl.clips.statistics import statistics_labels
from rayssl.clips.transforms import AugmentConfig
from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.base import Features
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
            "pretext.name=multitask",
            "model.backbone=c3d",
            "model.width=0.0625",
            "pretext.statistics.hidden_dim=32",
            "pretext.statistics.spatial_grid=2",
            "pretext.contrastive.projection_hidden=32",
            "pretext.contrastive.projection_dim=16",
            "optim.name=adamw",
            "optim.lr=3e-3",
            "optim.weight_decay=0",
            *overrides,
        ],
    )


def test_config_checks():
    with pytest.raises(ConfigError, match="first task plans the clips"):
        _cfg("pretext.multitask.tasks=[statistics,pace]")
    with pytest.raises(ConfigError, match="plan their own clips"):
        _cfg("pretext.multitask.tasks=[pace,pace_contrastive]", "pretext.multitask.weights=[1,1]")
    with pytest.raises(ConfigError, match="unknown or unsupported"):
        _cfg("pretext.multitask.tasks=[pace,supervised]")
    with pytest.raises(ConfigError, match="one weight per task"):
        _cfg("pretext.multitask.weights=[1.0]")
    with pytest.raises(ConfigError, match="at least two tasks"):
        _cfg("pretext.multitask.tasks=[pace]", "pretext.multitask.weights=[1]")
    with pytest.raises(ConfigError, match=r"weights\[1\]"):
        _cfg("pretext.multitask.weights=[1,-1]")


def test_sample_has_the_labels_of_every_task_on_the_first_clip():
    task = build_pretext(_cfg("pretext.backwards=same_class").pretext, 16)
    rng = np.random.default_rng(0)
    plan = task.plan(120, rng)
    frames = [np.random.default_rng(1).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)]
    sample = task.make_sample(frames, plan, rng, augment=None)
    assert (
        set(sample)
        == set(task.target_spec((16, 32, 32, 3)))
        == {
            "clip",
            "label",
            "pace",
            "stats",
        }
    )
    assert int(sample["label"]) == int(plan.targets["label"])
    expected = statistics_labels(sample["clip"], compute_flow(sample["clip"], "dis"))
    assert np.array_equal(sample["stats"], expected)


def _moving_frames(seed: int, num_frames: int = 16) -> list[np.ndarray]:
    """A generated video (textured objects rotating over a textured background)."""
    from rayssl.tools.synthetic import render_video

    return [render_video(num_frames, 48, 64, "rotate_cw", np.random.default_rng(seed))]


# per-frame jitter on (the thesis's, p 0.8), as in configs/pace_stats_r21d_k400.yaml
JITTER = AugmentConfig(resize=(48, 64), crop=(40, 40), flip_prob=0.5, jitter_prob=0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_statistics_labels_are_those_of_the_clip_before_colour_jitter(seed):
    """The multitask sample's statistics labels equal the statistics pretext's own labels
    for the same clip, crop and flip (same rng draws), computed before colour jitter;
    its clip is the pace task's clip, jittered."""
    multi = build_pretext(_cfg().pretext, 16)
    alone = build_pretext(_cfg("pretext.name=statistics").pretext, 16)
    pace = build_pretext(_cfg("pretext.name=pace").pretext, 16)
    frames = _moving_frames(seed)
    plan = multi.plan(16, np.random.default_rng(seed))
    sample = multi.make_sample(frames, plan, np.random.default_rng(100 + seed), JITTER)
    # The statistics pretext with the same augmentation and the same rng state: the same
    # crop and flip, then the same jitter draws.
    own = alone.make_sample(frames, plan, np.random.default_rng(100 + seed), JITTER)
    unjittered = replace(JITTER, jitter_prob=0.0)
    plain = alone.make_sample(frames, plan, np.random.default_rng(100 + seed), unjittered)
    assert np.array_equal(sample["stats"], own["stats"])
    assert np.array_equal(sample["stats"], plain["stats"])
    assert np.array_equal(sample["stats"], alone.label_clip(plain["clip"])["stats"])
    # the network sees the pace task's clip, jittered like the pace task's own
    pace_sample = pace.make_sample(frames, plan, np.random.default_rng(100 + seed), JITTER)
    assert np.array_equal(sample["clip"], pace_sample["clip"])
    assert np.array_equal(sample["clip"], own["clip"])
    assert not np.array_equal(sample["clip"], plain["clip"])  # the jitter did apply


def test_labels_computed_after_jitter_would_differ():
    """Why the order matters: on these clips per-frame jitter changes labels."""
    alone = build_pretext(_cfg("pretext.name=statistics").pretext, 16)
    changed = 0
    for seed in range(3):
        frames = _moving_frames(seed)
        plan = alone.plan(16, np.random.default_rng(seed))
        own = alone.make_sample(frames, plan, np.random.default_rng(100 + seed), JITTER)
        changed += int((alone.label_clip(own["clip"])["stats"] != own["stats"]).sum())
    assert changed > 0


def _batch(n=4, size=32, seed=0, pair=False):
    rng = np.random.default_rng(seed)
    batch = {
        "clip": rng.integers(0, 256, (n, 16, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 4, n).astype(np.int64),
        "pace": np.ones(n, np.float32),
        "stats": rng.integers(0, 2, (n, 27)).astype(np.int64),
        "valid": np.array([True] * (n - 1) + [False]),
        "video_id": np.array([f"v{i}" for i in range(n)]),
    }
    if pair:
        batch["clip2"] = rng.integers(0, 256, (n, 16, size, size, 3), dtype=np.uint8)
        batch["label2"] = rng.integers(0, 4, n).astype(np.int64)
        batch["pace2"] = np.ones(n, np.float32)
    return batch


class CountingBackbone(torch.nn.Module):
    """Wraps a backbone and counts its forward passes."""

    def __init__(self, backbone):
        super().__init__()
        self.inner = backbone
        self.global_pool = backbone.global_pool
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)

    def forward_map(self, x):
        self.calls += 1
        return self.inner.forward_map(x)


@pytest.mark.parametrize("first", ["pace", "pace_contrastive"])
def test_loss_is_the_weighted_sum_of_the_tasks_losses_from_one_pass(first):
    """loss = w_first * first task's loss + w_stats * statistics loss on the first clips,
    each equal to the loss the task alone computes with the same weights."""
    cfg = _cfg(f"pretext.multitask.tasks=[{first},statistics]", "pretext.multitask.weights=[0.7,2]")
    task = build_pretext(cfg.pretext, 16)
    torch.manual_seed(0)
    model = build_model(cfg, task)
    model.eval()
    batch = batch_to_device(
        _batch(pair=first == "pace_contrastive"), DeviceSettings(torch.device("cpu"))
    )
    counting = CountingBackbone(model.backbone)
    with torch.no_grad():
        loss, metrics = task.compute(counting, model.head, batch)
        alone = {
            name: t.compute(model.backbone, model.head.heads[name], batch)
            for name, t in task.tasks.items()
        }
    assert counting.calls == 1
    expected = 0.7 * alone[first][0] + 2.0 * alone["statistics"][0]
    assert torch.allclose(loss, expected, atol=1e-6)
    assert float(metrics["num_valid"]) == 3.0
    assert torch.allclose(metrics["correct"], alone[first][1]["correct"])
    assert torch.allclose(metrics["statistics_acc_sum"], alone["statistics"][1]["correct"])
    assert torch.allclose(
        metrics["statistics_motion_loss_sum"], alone["statistics"][1]["motion_loss_sum"]
    )
    weighted = 0.7 * alone[first][1]["loss_sum"] + 2.0 * alone["statistics"][1]["loss_sum"]
    assert torch.allclose(metrics["loss_sum"], weighted, atol=1e-5)


def test_features_rows_share_one_pass():
    backbone = CountingBackbone(build_model(_cfg(), build_pretext(_cfg().pretext, 16)).backbone)
    x = torch.randn(4, 3, 16, 32, 32)
    feats = Features(backbone, x)
    first = feats.head(2)
    assert first.map.shape[0] == 2 and feats.map.shape[0] == 4
    assert torch.allclose(first.pooled, feats.pooled[:2])
    with torch.no_grad():
        assert torch.allclose(feats.pooled, backbone.inner(x), atol=1e-5)
    assert backbone.calls == 1  # the map, once; pooled is its pool


def test_model_fits_a_fixed_batch():
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg, build_pretext(cfg.pretext, 16))
    opt, _ = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(), settings)
    first = eval_step(model, batch, settings)
    for _ in range(40):
        train_step(model, batch, opt, settings)
    last = eval_step(model, batch, settings)
    assert float(last["pace_loss_sum"]) < 0.5 * float(first["pace_loss_sum"])
    assert float(last["statistics_loss_sum"]) < 0.5 * float(first["statistics_loss_sum"])
    assert float(last["correct"]) == 3.0


def test_local_mode_run_logs_every_task(ray_local, tiny_manifest, tmp_path):
    """The real loop and pipeline on configs/pace_stats_debug.yaml: each task's loss and
    accuracy logged under its name, the run's accuracy the first task's."""
    import mlflow

    from rayssl.launch import pretrain
    from tests.conftest import ROOT, tiny_overrides

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    cfg = load_config(
        ROOT / "configs" / "pace_stats_debug.yaml",
        [
            *tiny_overrides(tiny_manifest, tmp_path / "runs", "multi", tracking),
            "train.num_workers=0",
            "data.val_split=val",
        ],
    )
    pretrain(cfg)
    mlflow.set_tracking_uri(tracking)
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    client = mlflow.MlflowClient(tracking)
    for key in (
        "train/pace_loss",
        "train/statistics_loss",
        "train/statistics_acc",
        "train/statistics_motion_loss",
        "val/pace_acc",
        "val/statistics_acc",
    ):
        assert len(client.get_metric_history(run["run_id"], key)) == 2, key
