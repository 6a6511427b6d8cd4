"""The vjepa pretext: 3D multi-block masks, the EMA target encoder (its formula, its
schedule, its place in checkpoints and exact resume), and a local-mode run of its debug
config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayssl.checkpoint import load_training_state, restore_training_state, save_training_state
from rayssl.clips.pipeline import augment_config
from rayssl.clips.sampling import clip_rng
from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.masks import block_shape, multiblock_mask
from rayssl.pretext.vjepa import context_and_targets, momentum
from rayssl.train.step import DeviceSettings, batch_to_device, build_model, train_step
from tests.conftest import ROOT, run_vit_debug

DEBUG = ROOT / "configs" / "vjepa_vit_debug.yaml"


def _cfg(*overrides: str):
    return load_config(DEBUG, list(overrides))


def _batch(pretext, cfg, n: int, seed: int = 0, epoch: int = 0) -> dict[str, np.ndarray]:
    augment = augment_config(cfg.data.augment)
    rows = []
    for i in range(n):
        rng = clip_rng(seed, f"v{i}", epoch, 0)
        frames = rng.integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
        plan = pretext.plan(40, rng)
        rows.append(pretext.make_sample([frames], plan, rng, augment, train=True))
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["valid"] = np.ones(n, dtype=bool)
    return batch


# ------------------------------------------------------------------------------ masks


def test_one_block_covers_the_configured_share_of_every_frame_it_spans() -> None:
    grid = (8, 14, 14)
    # 0.25 of 14 x 14 = 49 tokens: a 7 x 7 block at aspect 1, on all 8 token frames
    for seed in range(5):
        mask = multiblock_mask(grid, 1, 0.25, [1.0, 1.0], 1.0, np.random.default_rng(seed))
        frames = mask.reshape(8, 14 * 14)
        assert (frames.sum(1) == 49).all()
    # half the token frames, consecutive
    mask = multiblock_mask(grid, 1, 0.25, [1.0, 1.0], 0.5, np.random.default_rng(0))
    per_frame = mask.reshape(8, -1).sum(1)
    spanned = np.flatnonzero(per_frame)
    assert len(spanned) == 4 and np.all(np.diff(spanned) == 1) and (per_frame[spanned] == 49).all()
    # V-JEPA's block: n = int(scale * H' W') tokens, h = round(sqrt(n a)), w = round(sqrt(n / a))
    assert block_shape(grid, 0.15, 1.0, 1.0) == (8, 5, 5)  # n = 29
    assert block_shape(grid, 0.7, 1.5, 1.0) == (8, 14, 10)  # n = 137: h 14.3 -> the side


def test_the_union_of_blocks_covers_between_one_block_and_their_sum() -> None:
    grid = (8, 14, 14)
    shares = []
    for seed in range(50):
        mask = multiblock_mask(grid, 8, 0.15, [0.75, 1.5], 1.0, np.random.default_rng(seed))
        shares.append(mask.mean())
    shares_arr = np.array(shares)
    single = 25 / 196  # the smallest block (aspect 1: 5 x 5) of the 8
    assert (shares_arr >= 20 / 196).all() and (shares_arr <= min(1.0, 8 * 36 / 196)).all()
    assert single < shares_arr.mean() < 8 * single  # blocks overlap, and do not coincide


def test_masks_reproducible_from_the_draw_seed_and_different_across_draws() -> None:
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    a, b = _batch(pretext, cfg, 4), _batch(pretext, cfg, 4)
    for key in ("mask_short", "mask_long", "clip"):
        assert np.array_equal(a[key], b[key])
    c = _batch(pretext, cfg, 4, epoch=1)
    assert not np.array_equal(a["mask_short"], c["mask_short"])
    assert pretext.target_spec((8, 48, 48, 3)) == {
        "clip": ((8, 48, 48, 3), np.uint8),
        "mask_short": ((36,), np.bool_),
        "mask_long": ((36,), np.bool_),
    }


def test_a_mask_that_would_cover_everything_leaves_context() -> None:
    mask = multiblock_mask((2, 2, 2), 4, 1.0, [1.0, 1.0], 1.0, np.random.default_rng(0))
    assert mask.sum() == 7 and not mask[0]


def test_context_and_targets_keep_the_batchs_smallest_counts() -> None:
    mask = torch.tensor([[True, True, False, False, False], [False, True, True, True, False]])
    ctx, tgt = context_and_targets(mask)
    assert ctx.tolist() == [[2, 3], [0, 4]]  # 2 visible in row 1: both rows keep 2
    assert tgt.tolist() == [[0, 1], [1, 2]]  # 2 masked in row 0: both rows keep 2


# ------------------------------------------------------------------------------- EMA


def test_momentum_schedule() -> None:
    assert momentum(0, 0.998, 1.0, 100) == 0.998
    assert momentum(50, 0.998, 1.0, 100) == pytest.approx(0.999)
    assert momentum(100, 0.998, 1.0, 100) == 1.0 == momentum(500, 0.998, 1.0, 100)
    assert momentum(500, 0.99, 1.0, 0) == 0.99


def test_the_ema_update_equals_its_formula() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    model = build_model(cfg, pretext)
    head, backbone = model.head, model.backbone
    assert all(not p.requires_grad for p in head.target.parameters())
    # the first update copies the backbone (a model.init loaded after building counts)
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(0.1)
    head.ema_update(backbone, 0.5)
    for (name, t), o in zip(head.target.named_parameters(), backbone.parameters(), strict=True):
        assert torch.equal(t, o), name
    # then target = m * target + (1 - m) * online
    with torch.no_grad():
        for p in head.target.parameters():
            p.copy_(torch.randn_like(p))
    before = [t.clone() for t in head.target.parameters()]
    head.ema_update(backbone, 0.9)
    for t0, t, o in zip(before, head.target.parameters(), backbone.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o)
    assert int(head.ema_steps) == 2


def test_a_training_step_moves_the_target_by_the_scheduled_momentum() -> None:
    torch.manual_seed(0)
    cfg = _cfg("pretext.vjepa.momentum_start=0.5", "pretext.vjepa.momentum_steps=0")
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    model = build_model(cfg, pretext)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(pretext, cfg, 4), settings)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, batch, opt, settings)  # copies, then the optimiser moves the backbone
    target = [t.clone() for t in model.head.target.parameters()]
    online = [o.detach().clone() for o in model.backbone.parameters()]
    assert any(not torch.equal(t, o) for t, o in zip(target, online, strict=True))
    metrics = train_step(model, batch, opt, settings)
    for t0, o, t in zip(target, online, model.head.target.parameters(), strict=True):
        torch.testing.assert_close(t, 0.5 * t0 + 0.5 * o)
    assert metrics["ema_momentum_sum"] == pytest.approx(0.5 * 4)
    assert torch.isfinite(metrics["loss_sum"]) and metrics["loss_sum"] > 0
    # evaluation moves nothing
    with torch.no_grad():
        model.eval()
        snapshot = [t.clone() for t in model.head.target.parameters()]
        model(batch)
    assert all(
        torch.equal(a, b) for a, b in zip(snapshot, model.head.target.parameters(), strict=True)
    )


def test_the_ema_state_is_checkpointed_and_resumes_exactly(tmp_path) -> None:
    """4 steps straight == 2 steps, checkpoint, a fresh model restored, 2 more steps:
    every weight (the target encoder's too), the EMA step count and the optimiser state."""
    cfg = _cfg("pretext.vjepa.momentum_steps=3", "pretext.vjepa.momentum_start=0.9")
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    settings = DeviceSettings(torch.device("cpu"))
    batches = [batch_to_device(_batch(pretext, cfg, 2, epoch=e), settings) for e in range(4)]

    def fresh():
        torch.manual_seed(0)
        model = build_model(cfg, pretext)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, 10)

    straight, opt, _ = fresh()
    for b in batches:
        train_step(straight, b, opt, settings)

    first, opt1, sched1 = fresh()
    for b in batches[:2]:
        train_step(first, b, opt1, settings)
    save_training_state(
        tmp_path, model=first, optimizer=opt1, scheduler=sched1, epoch=0, sampler={}
    )
    state = load_training_state(tmp_path)
    assert "head.ema_steps" in state["model"] and int(state["model"]["head.ema_steps"]) == 2
    assert any(k.startswith("head.target.model.encoder.layer.") for k in state["model"])
    resumed, opt2, sched2 = fresh()
    restore_training_state(state, resumed, opt2, sched2)
    for b in batches[2:]:
        train_step(resumed, b, opt2, settings)

    expected, actual = straight.state_dict(), resumed.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert int(actual["head.ema_steps"]) == 4


def test_the_run_s_result_is_the_target_encoder(tmp_path) -> None:
    """V-JEPA evaluates its EMA target encoder: a vjepa `state.pt` given as --checkpoint
    resolves to the target's weights, not the trained context encoder's (they differ
    once a step has run), and `PretextModel.encoder` (what backbone.pt and the logged
    models hold) is the target; a pace state still resolves to its backbone."""
    from rayssl.checkpoint import resolve_checkpoint

    cfg = _cfg("pretext.vjepa.momentum_start=0.5")
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    settings = DeviceSettings(torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(cfg, pretext)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_step(model, batch_to_device(_batch(pretext, cfg, 2), settings), opt, settings)
    assert model.encoder is model.head.target

    def resolved(name: str, model, config):
        """The backbone weights `--checkpoint` finds in a state.pt of `model`."""
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 10)
        folder = tmp_path / name
        state = {"epoch": 0, "sampler": {}, "config": config.to_dict()}
        save_training_state(folder, model=model, optimizer=opt, scheduler=scheduler, **state)
        return resolve_checkpoint(str(folder), config)

    source = resolved("vjepa", model, cfg)
    target, context = model.head.target.state_dict(), model.backbone.state_dict()
    assert source.backbone_state is not None and source.backbone_state.keys() == target.keys()
    assert all(torch.equal(source.backbone_state[k], target[k]) for k in target)
    assert any(not torch.equal(target[k], context[k]) for k in target)

    pace = load_config(ROOT / "configs" / "debug.yaml")
    pace_model = build_model(pace, build_pretext(pace.pretext, pace.data.clip_len))
    assert pace_model.encoder is pace_model.backbone
    source = resolved("pace", pace_model, pace)
    assert source.backbone_state is not None
    assert source.backbone_state.keys() == pace_model.backbone.state_dict().keys()


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="not a ViT"):
        _cfg("model.backbone=r21d")
    with pytest.raises(ConfigError, match="no mask blocks"):
        _cfg("pretext.vjepa.short_blocks=0", "pretext.vjepa.long_blocks=0")
    with pytest.raises(ConfigError, match="aspect_ratio"):
        _cfg("pretext.vjepa.aspect_ratio=[2.0,1.0]")
    with pytest.raises(ConfigError, match="momentum_end"):
        _cfg("pretext.vjepa.momentum_end=1.5")


@pytest.mark.slow
def test_local_mode_run_of_the_debug_config_logs_its_metrics(ray_local, tiny_manifest, tmp_path):
    result, run, client = run_vit_debug(
        DEBUG, tiny_manifest, tmp_path, "vjepa_local", "train.num_workers=0"
    )
    assert result["metrics"]["epoch"] == 1
    assert run["status"] == "FINISHED" and run["tags.pretext"] == "vjepa"
    losses = [m.value for m in client.get_metric_history(run["run_id"], "train/loss")]
    assert len(losses) == 2 and all(np.isfinite(v) and v > 0 for v in losses)
    momenta = [m.value for m in client.get_metric_history(run["run_id"], "train/ema_momentum")]
    assert len(momenta) == 2 and 0.99 <= momenta[0] < momenta[1] <= 1.0
    assert len(client.get_metric_history(run["run_id"], "val/loss")) == 2
    assert not [k for k in run.index if k.startswith("metrics.") and k.endswith("acc")]
    assert result["checkpoint"] is None  # local mode persists none (Ray Train keeps it)


@pytest.mark.slow
def test_the_logged_backbone_is_the_run_s_target_encoder(ray_local, tiny_manifest, tmp_path):
    """A run on a Ray Train worker: the backbone.pt it logs to MLflow holds the EMA target
    encoder, tensor for tensor the `head.target.*` of its last state.pt."""
    from rayssl.checkpoint import resolve_checkpoint

    # the two encoders part after one step at momentum 0.5
    result, _, _ = run_vit_debug(
        DEBUG,
        tiny_manifest,
        tmp_path,
        "vjepa_worker",
        "optim.epochs=1",
        "pretext.vjepa.momentum_start=0.5",
    )
    cfg = _cfg(f"run.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}")
    logged = resolve_checkpoint(f"runs:/{result['mlflow_run_id']}", cfg).backbone_state
    state = load_training_state(result["checkpoint"])["model"]
    assert logged is not None and logged.keys()
    for key, value in logged.items():
        assert torch.equal(value, state[f"head.target.{key}"]), key
    assert any(not torch.equal(v, state[f"backbone.{k}"]) for k, v in logged.items())
