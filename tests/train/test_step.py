"""Plain-torch training pieces: input conversion, a real step, checkpoints, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.config import load_config
from rayssl.pretext import build_pretext
from rayssl.train.checkpoint import (
    load_training_state,
    restore_training_state,
    save_training_state,
)
from rayssl.train.step import (
    MEAN,
    STD,
    DeviceSettings,
    batch_to_device,
    build_model,
    build_optimizer,
    clip_to_input,
    eval_step,
    train_step,
)


def _cfg(*overrides):
    return load_config(None, ["model.width=0.0625", "optim.lr=0.05", *overrides])


def _batch(n=4, t=16, size=32, seed=0, valid=None):
    rng = np.random.default_rng(seed)
    return {
        "clip": rng.integers(0, 256, (n, t, size, size, 3), dtype=np.uint8),
        "label": rng.integers(0, 4, n).astype(np.int64),
        "valid": np.ones(n, bool) if valid is None else np.asarray(valid),
        "video_id": np.array([f"v{i}" for i in range(n)]),
        "skip_reason": np.array([""] * n),
    }


def test_clip_to_input_layout_and_normalisation():
    settings = DeviceSettings(torch.device("cpu"))
    clip = torch.zeros(2, 16, 8, 10, 3, dtype=torch.uint8)
    clip[..., 0] = 255
    x = clip_to_input(clip, settings)
    assert x.shape == (2, 3, 16, 8, 10) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0], torch.full_like(x[:, 0], (1 - MEAN[0]) / STD[0]))
    assert torch.allclose(x[:, 1], torch.full_like(x[:, 1], (0 - MEAN[1]) / STD[1]))


def test_batch_to_device_keeps_strings_on_host():
    out = batch_to_device(_batch(), DeviceSettings(torch.device("cpu")))
    assert out["clip"].shape == (4, 3, 16, 32, 32)
    assert isinstance(out["video_id"], np.ndarray)
    assert out["label"].dtype == torch.int64


def test_training_steps_fit_a_fixed_batch():
    cfg = _cfg()
    torch.manual_seed(0)
    pretext = build_pretext(cfg.pretext, 16)
    model = build_model(cfg, pretext)
    opt, _ = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(), settings)
    first = float(eval_step(model, batch, settings)["loss_sum"])
    for _ in range(30):
        train_step(model, batch, opt, settings)
    metrics = eval_step(model, batch, settings)
    assert float(metrics["loss_sum"]) < 0.5 * first
    assert float(metrics["correct"]) == 4.0


def test_invalid_samples_do_not_count_or_train():
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, 16)
    model = build_model(cfg, pretext)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(valid=[True, False, True, False]), settings)
    _, metrics = model(batch)
    assert float(metrics["num_valid"]) == 2.0
    # A batch with no valid sample gives zero loss and zero gradients.
    empty = batch_to_device(_batch(valid=[False] * 4), settings)
    loss, metrics = model(empty)
    loss.backward()
    assert float(loss) == 0.0 and float(metrics["num_valid"]) == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(float(g.abs().sum()) == 0.0 for g in grads)


def test_step_schedule_divides_lr_every_step_epochs():
    cfg = _cfg("optim.lr=0.001", "optim.step_epochs=6", "optim.gamma=0.1")
    model = build_model(cfg, build_pretext(cfg.pretext, 16))
    opt, sched = build_optimizer(model, cfg)
    lrs = []
    for _ in range(18):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[5] == pytest.approx(1e-3)
    assert lrs[6] == pytest.approx(1e-4) and lrs[12] == pytest.approx(1e-5)
    assert opt.param_groups[0]["momentum"] == 0.9


def test_checkpoint_round_trip_restores_everything(tmp_path):
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, 16)
    settings = DeviceSettings(torch.device("cpu"))
    model = build_model(cfg, pretext)
    opt, sched = build_optimizer(model, cfg)
    batch = batch_to_device(_batch(), settings)
    train_step(model, batch, opt, settings)
    sched.step()
    save_training_state(
        tmp_path,
        model=model,
        optimizer=opt,
        scheduler=sched,
        epoch=3,
        sampler={"seed": 0, "next_epoch": 4},
        extra={"mlflow_run_id": "abc"},
    )
    model2 = build_model(cfg, pretext)
    opt2, sched2 = build_optimizer(model2, cfg)
    state = load_training_state(tmp_path)
    assert restore_training_state(state, model2, opt2, sched2) == 4
    assert state["extra"]["mlflow_run_id"] == "abc"
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # The momentum buffers came back: the next step is identical for both.
    train_step(model, batch, opt, settings)
    train_step(model2, batch, opt2, settings)
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.allclose(a, b)
    assert sched2.last_epoch == sched.last_epoch


def test_load_rejects_a_folder_without_state(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_training_state(tmp_path)
