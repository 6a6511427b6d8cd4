"""Plain-torch training pieces: input conversion, a real step, checkpoints, schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.checkpoint import (
    load_training_state,
    restore_training_state,
    save_training_state,
)
from rayssl.config import load_config
from rayssl.pretext import build_pretext
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


def test_lr_scales_with_the_global_batch():
    base = ["optim.lr=0.001", "optim.lr_batch_size=30"]
    for scaling, batch, expected in [
        ("none", 120, 1e-3),
        ("linear", 120, 4e-3),
        ("linear", 30, 1e-3),
        ("sqrt", 120, 2e-3),
    ]:
        cfg = _cfg(*base, f"optim.lr_scaling={scaling}", f"train.batch_size={batch}")
        opt, sched = build_optimizer(build_model(cfg, build_pretext(cfg.pretext, 16)), cfg)
        assert opt.param_groups[0]["lr"] == pytest.approx(expected), (scaling, batch)
        sched.step()  # the step schedule divides the scaled lr
    cfg = _cfg("optim.lr_scaling=linear", "optim.step_epochs=1", "train.batch_size=60")
    opt, sched = build_optimizer(build_model(cfg, build_pretext(cfg.pretext, 16)), cfg)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 2 * 0.1)


def test_fused_optimizer_takes_the_same_steps():
    """optim.fused: the same SGD and AdamW updates as torch's default, up to rounding,
    for the same gradients. (Through a tiny model the two runs drift apart after a few
    steps: its batch-of-4 BN layers and Adam's normalised steps amplify rounding.)"""
    for name in ("sgd", "adamw"):
        params = []
        for fused in (False, True):
            cfg = _cfg(f"optim.name={name}", f"optim.fused={str(fused).lower()}")
            torch.manual_seed(0)
            model = build_model(cfg, build_pretext(cfg.pretext, 16))
            start = torch.cat([p.detach().flatten() for p in model.parameters()])
            opt, _ = build_optimizer(model, cfg)
            assert bool(opt.param_groups[0]["fused"]) == fused
            grads = torch.Generator().manual_seed(1)
            for _ in range(3):
                for p in model.parameters():
                    p.grad = torch.randn(p.shape, generator=grads)
                opt.step()
            params.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
            assert float((params[-1] - start).abs().max()) > 1e-3  # the steps moved it
        torch.testing.assert_close(params[1], params[0], rtol=1e-5, atol=1e-6)


def test_resume_keeps_the_configured_optimizer_implementation(tmp_path):
    """A checkpoint saved by an unfused run resumes fused when the config now says so
    (Optimizer.load_state_dict alone would bring back the saved run's setting)."""
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, 16)
    model = build_model(cfg, pretext)
    opt, sched = build_optimizer(model, cfg)
    settings = DeviceSettings(torch.device("cpu"))
    train_step(model, batch_to_device(_batch(), settings), opt, settings)
    save_training_state(
        tmp_path, model=model, optimizer=opt, scheduler=sched, epoch=0, sampler={}, extra={}
    )
    fused_cfg = _cfg("optim.fused=true")
    model2 = build_model(fused_cfg, pretext)
    opt2, sched2 = build_optimizer(model2, fused_cfg)
    restore_training_state(load_training_state(tmp_path), model2, opt2, sched2)
    assert opt2.param_groups[0]["fused"] is True
    assert opt.param_groups[0]["fused"] is None
    assert "momentum_buffer" in opt2.state[next(iter(model2.parameters()))]


def test_compiled_model_trains_like_eager_and_keeps_checkpoint_keys():
    """train.compile (aot_eager: the same tracing as inductor without generating code,
    so the test stays quick) with the 2D conv formulation: the same losses as the eager
    reference formulation, the same state-dict keys, and eval mode works."""
    from rayssl.train.step import place_model

    settings = DeviceSettings(torch.device("cpu"))
    batches = [batch_to_device(_batch(t=8, seed=s), settings) for s in range(3)]
    runs = []
    for overrides in (
        [],
        ["train.compile=true", "train.compile_backend=aot_eager", "train.conv_impl=conv2d"],
    ):
        cfg = _cfg("model.backbone=r21d", "data.clip_len=8", *overrides)
        torch._dynamo.utils.counters.clear()
        torch.manual_seed(0)
        model = place_model(build_model(cfg, build_pretext(cfg.pretext, 8)), settings, cfg)
        opt, _ = build_optimizer(model, cfg)
        losses = [float(train_step(model, b, opt, settings)["loss_sum"]) for b in batches]
        runs.append((losses, model.state_dict(), eval_step(model, batches[0], settings)))
        if overrides:  # dynamo really traced the backbone: train and eval graphs
            assert model.backbone._compiled_call_impl is not None
            graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
            assert graphs >= 2, torch._dynamo.utils.counters["stats"]
    (eager_losses, eager_state, eager_eval), (comp_losses, comp_state, comp_eval) = runs
    assert list(comp_state) == list(eager_state)
    assert not any("_orig_mod" in k for k in comp_state)
    assert comp_losses == pytest.approx(eager_losses, rel=1e-4)
    assert float(comp_eval["loss_sum"]) == pytest.approx(float(eager_eval["loss_sum"]), rel=1e-3)
    # the compiled run's weights load into a plain model
    plain = build_model(_cfg("model.backbone=r21d"), build_pretext(_cfg().pretext, 8))
    plain.load_state_dict(comp_state)
