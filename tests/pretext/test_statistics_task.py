"""The statistics pretext behind the task interface: plan, labels computed on the
augmented clip, heads, both losses, and a model that fits a fixed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.clips.statistics import label_classes, statistics_labels
from rayssl.clips.transforms import AugmentConfig
from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.statistics import NUM_LABELS, StatisticsPretext
from rayssl.tools.synthetic import render_video
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
            "pretext.name=statistics",
            "model.backbone=c3d",
            "model.width=0.0625",
            "pretext.statistics.hidden_dim=32",
            "pretext.statistics.spatial_grid=2",
            "optim.name=adamw",
            "optim.lr=3e-3",
            "optim.weight_decay=0",
            *overrides,
        ],
    )


def _clip(seed: int = 0, t: int = 16, size: int = 64) -> np.ndarray:
    return render_video(t, size, size, "translate_right", np.random.default_rng(seed))


def test_plan_is_consecutive_and_fits():
    task = build_pretext(_cfg().pretext, 16)
    rng = np.random.default_rng(0)
    for n in (16, 17, 100):
        plan = task.plan(n, rng)
        (idx,) = plan.clips
        assert np.array_equal(np.diff(idx), np.ones(15)) and idx[0] >= 0 and idx[-1] < n
    short = task.plan(5, rng).clips[0]  # repeats the last frame: no invented motion
    assert short.tolist() == [0, 1, 2, 3, 4] + [4] * 11
    skip = build_pretext(_cfg().pretext, 16, short_video="skip")
    assert skip.plan(5, rng) is None and skip.plan(16, rng) is not None


def test_labels_are_computed_on_the_augmented_clip():
    """The targets describe the pixels the network sees: a flipped crop gets the labels
    of exactly that flipped crop (and so a negated horizontal flow)."""
    task = build_pretext(_cfg().pretext, 16)
    clip = _clip()
    augment = AugmentConfig(resize=None, crop=(48, 48), flip_prob=1.0, jitter_prob=0.0)
    sample = task.make_sample(
        [clip], task.plan(16, np.random.default_rng(0)), np.random.default_rng(3), augment
    )
    assert sample["clip"].shape == (16, 48, 48, 3)
    assert sample["stats"].shape == (NUM_LABELS,) and sample["stats"].dtype == np.int64
    from rayssl.clips.flow import compute_flow

    expected = statistics_labels(sample["clip"], compute_flow(sample["clip"], "dis"))
    assert np.array_equal(sample["stats"], expected)
    assert np.all(sample["stats"] >= 0) and np.all(sample["stats"] < label_classes(16))
    spec = task.target_spec((16, 48, 48, 3))
    assert spec["stats"] == ((NUM_LABELS,), np.int64)


def _batch(n: int = 4, size: int = 32) -> dict[str, np.ndarray]:
    from rayssl.clips.flow import compute_flow

    clips = np.stack([_clip(seed=i, size=size) for i in range(n)])
    stats = np.stack([statistics_labels(c, compute_flow(c, "dis")) for c in clips])
    return {
        "clip": clips,
        "stats": stats.astype(np.int64),
        "valid": np.ones(n, bool),
        "video_id": np.array([f"v{i}" for i in range(n)]),
        "skip_reason": np.array([""] * n),
    }


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_model_fits_a_fixed_batch(head):
    """A few steps on one batch: the loss falls and predictions move to the labels."""
    cfg = _cfg(f"pretext.statistics.head={head}")
    torch.manual_seed(0)
    task = build_pretext(cfg.pretext, 16)
    model = build_model(cfg, task)
    opt, _ = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(), settings)
    first = eval_step(model, batch, settings)
    assert set(first) >= {
        "loss_sum",
        "correct",
        "num_valid",
        "motion_loss_sum",
        "appearance_acc_sum",
    }
    for _ in range(40):
        train_step(model, batch, opt, settings)
    last = eval_step(model, batch, settings)
    assert float(last["loss_sum"]) < 0.5 * float(first["loss_sum"])
    assert float(last["correct"]) > float(first["correct"])
    assert float(last["num_valid"]) == 4.0


def test_regression_loss_is_the_scaled_weighted_l2():
    """loss = lambda_m * mean sq. error of the 14 scaled motion labels + lambda_a * the
    same for the 13 appearance labels, labels scaled by (classes - 1)."""
    cfg = _cfg("pretext.statistics.lambda_appearance=0.5")
    task = build_pretext(cfg.pretext, 16)
    assert isinstance(task, StatisticsPretext)
    classes = torch.as_tensor(label_classes(16))
    labels = torch.stack([torch.arange(27) % classes, torch.zeros(27, dtype=torch.long)])
    pred_m, pred_a = torch.full((2, 14), 0.25), torch.full((2, 13), 0.75)

    class Fixed(torch.nn.Module):
        def forward(self, _):
            return pred_m, pred_a

    class Backbone(torch.nn.Module):
        def forward_map(self, x):
            return x

    batch = {"clip": torch.zeros(2), "stats": labels, "valid": torch.tensor([True, False])}
    loss, metrics = task.compute(Backbone(), Fixed(), batch)
    target = labels[0].float() / (classes - 1).float()
    expected = ((0.25 - target[:14]) ** 2).mean() + 0.5 * ((0.75 - target[14:]) ** 2).mean()
    assert torch.isclose(loss, expected) and float(metrics["num_valid"]) == 1.0
    rounded = torch.round(torch.cat([pred_m[0], pred_a[0]]) * (classes - 1)).long()
    assert float(metrics["correct"]) == pytest.approx(float((rounded == labels[0]).float().mean()))


def test_config_checks():
    with pytest.raises(ConfigError, match="pretext.statistics.head"):
        _cfg("pretext.statistics.head=softmax")
    with pytest.raises(ConfigError, match="pretext.statistics.flow"):
        _cfg("pretext.statistics.flow=lucas_kanade")
    with pytest.raises(ConfigError, match="pretext.statistics.lambda_motion"):
        _cfg("pretext.statistics.lambda_motion=0", "pretext.statistics.lambda_appearance=0")


def test_preview_writes_the_labels_of_the_saved_clips(ray_local, tiny_manifest, tmp_path):
    """`rayssl preview --pretext statistics`: clips.npz `labels` is (N, 27), in
    LABEL_NAMES order, and is exactly what the saved (augmented) clips give."""
    from rayssl.cli import main as cli
    from rayssl.clips.flow import compute_flow
    from rayssl.clips.statistics import LABEL_NAMES

    out = tmp_path / "preview"
    argv = ["preview", str(tiny_manifest), "--out", str(out), "--pretext", "statistics"]
    assert cli([*argv, "--num-clips", "3", "--config", "configs/stats_debug.yaml"]) == 0
    saved = np.load(out / "clips.npz")
    assert saved["labels"].shape == (3, len(LABEL_NAMES)) == (3, 27)
    for clip, labels in zip(saved["clips"], saved["labels"], strict=True):
        assert clip.shape == (16, 64, 64, 3)
        assert np.array_equal(labels, statistics_labels(clip, compute_flow(clip, "dis")))
    import cv2

    sheet = cv2.imread(str(out / "preview.png"))
    # one row per clip (caption bar + 112 px thumbnails), frames then 3 pattern panels
    assert sheet.shape[0] == 3 * (18 + 112) and sheet.shape[1] == (16 + 3) * 112
