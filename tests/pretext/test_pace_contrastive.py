"""Pace + contrastive learning behind the task interface: two clips of one video at two
paces decoded together (same context) or one clip per video (same pace, thesis Alg. 4),
both losses, and a model that fits a fixed batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.contrastive_loss import masked_info_nce, same_context_mask, same_pace_mask
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


@pytest.mark.parametrize(
    "mode,sampling", [("same_context", "auto"), ("same_pace", "auto"), ("same_pace", "two_clips")]
)
def test_model_fits_a_fixed_batch(mode, sampling):
    cfg = _cfg(
        f"pretext.contrastive.mode={mode}",
        f"pretext.contrastive.sampling={sampling}",
        "pretext.contrastive.lambda_ctr=1.0",
    )
    torch.manual_seed(0)
    model = build_model(cfg, build_pretext(cfg.pretext, 16))
    opt, _ = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    # mixed paces among the valid clips, so same pace has positives and negatives
    raw = _batch() | {"label": np.array([0, 1, 0, 1]), "label2": np.array([1, 0, 1, 0])}
    batch = batch_to_device(raw, settings)
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


def test_sampling_defaults_per_mode():
    """The thesis's algorithms: same context draws two clips per video (Alg. 3), same
    pace one (Alg. 4); two clips for same pace is the named variant."""
    for overrides, clips in (
        ([], 2),
        (["pretext.contrastive.mode=same_pace"], 1),
        (["pretext.contrastive.mode=same_pace", "pretext.contrastive.sampling=two_clips"], 2),
        (["pretext.contrastive.mode=same_pace", "pretext.contrastive.sampling=one_clip"], 1),
        (["pretext.contrastive.sampling=two_clips"], 2),
    ):
        assert _cfg(*overrides).pretext.contrastive.clips_per_sample == clips, overrides
    with pytest.raises(ConfigError, match="pretext.contrastive.sampling: same_context needs"):
        _cfg("pretext.contrastive.sampling=one_clip")
    with pytest.raises(ConfigError, match="pretext.contrastive.sampling"):
        _cfg("pretext.contrastive.sampling=three_clips")


def test_same_pace_plans_one_clip_per_video():
    task = build_pretext(_cfg("pretext.contrastive.mode=same_pace").pretext, 16)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(50):
        plan = task.plan(100, rng)
        (idx,) = plan.clips
        assert set(plan.targets) == {"label", "pace"}
        pace = task.paces[int(plan.targets["label"])]
        assert np.array_equal(np.diff(idx), np.full(15, int(pace))) and idx[-1] < 100
        seen.add(int(plan.targets["label"]))
    assert seen == {0, 1, 2, 3}
    spec = task.target_spec((16, 8, 8, 3))
    assert set(spec) == {"clip", "label", "pace"}
    frames = [np.zeros((16, 8, 8, 3), np.uint8)]
    assert set(task.make_sample(frames, plan, rng, augment=None)) == set(spec)


def _logits_and_embeddings(model, batch, clips):
    """The head's outputs for the batch's `clips` stacked in order, (N, paces), (N, D)."""
    return model.head(model.backbone(torch.cat([batch[c] for c in clips])))


def test_same_pace_one_clip_loss_and_mask():
    """Alg. 4: the backbone sees B clips (one per video); positives are the other clips of
    the batch at the same pace; loss = lambda_cls * CE + lambda_ctr * InfoNCE."""
    cfg = _cfg(
        "pretext.contrastive.mode=same_pace",
        "pretext.contrastive.lambda_ctr=0.25",
        "pretext.contrastive.temperature=0.2",
    )
    task = build_pretext(cfg.pretext, 16)
    torch.manual_seed(1)
    model = build_model(cfg, task)
    model.eval()
    batch = _batch(n=4)
    batch["label"] = np.array([0, 1, 0, 1], np.int64)
    del batch["clip2"], batch["label2"]
    batch = batch_to_device(batch, DeviceSettings(torch.device("cpu")))
    assert task.inputs(batch).shape[0] == 4  # no second clip of any video
    with torch.no_grad():
        loss, metrics = task.compute(model.backbone, model.head, batch)
        logits, z = _logits_and_embeddings(model, batch, ["clip"])
        ce = torch.nn.functional.cross_entropy(logits, batch["label"], reduction="none")
        ce = (ce * batch["valid"]).sum() / batch["valid"].sum()
        mask = same_pace_mask(batch["label"])
        ctr, _ = masked_info_nce(z, mask, 0.2, batch["valid"])
    assert torch.isclose(loss, ce + 0.25 * ctr)
    assert mask.tolist() == [
        [False, False, True, False],
        [False, False, False, True],
        [True, False, False, False],
        [False, True, False, False],
    ]
    assert float(metrics["num_valid"]) == 3.0


def test_same_pace_two_clips_own_video_partner_is_a_negative():
    """The named variant (Alg. 3's sampling with Eq. 4.4's positives): 2B clips, and a
    clip's partner from its own video, at another pace, is never a positive."""
    cfg = _cfg(
        "pretext.contrastive.mode=same_pace",
        "pretext.contrastive.sampling=two_clips",
        "pretext.contrastive.lambda_ctr=0.25",
        "pretext.contrastive.temperature=0.2",
    )
    task = build_pretext(cfg.pretext, 16)
    rng = np.random.default_rng(0)
    plans = [task.plan(100, rng) for _ in range(4)]
    assert all(len(p.clips) == 2 for p in plans)
    torch.manual_seed(1)
    model = build_model(cfg, task)
    model.eval()
    batch = _batch(n=4)
    batch["label"] = np.array([int(p.targets["label"]) for p in plans], np.int64)
    batch["label2"] = np.array([int(p.targets["label2"]) for p in plans], np.int64)
    batch = batch_to_device(batch, DeviceSettings(torch.device("cpu")))
    assert task.inputs(batch).shape[0] == 8
    with torch.no_grad():
        loss, _ = task.compute(model.backbone, model.head, batch)
        logits, z = _logits_and_embeddings(model, batch, ["clip", "clip2"])
        labels = torch.cat([batch["label"], batch["label2"]])
        ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        ce = ((ce[:4] + ce[4:]) / 2 * batch["valid"]).sum() / batch["valid"].sum()
        mask = same_pace_mask(labels)
        ctr, _ = masked_info_nce(z, mask, 0.2, torch.cat([batch["valid"], batch["valid"]]))
    assert torch.isclose(loss, ce + 0.25 * ctr)
    assert not any(bool(mask[i, i + 4]) or bool(mask[i + 4, i]) for i in range(4))


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
