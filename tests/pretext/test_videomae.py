"""The videomae pretext: tube masks from the draw's generator, per-patch normalised
targets, a loss over the masked tokens only, and a local-mode run of its debug config."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rayssl.clips.pipeline import augment_config
from rayssl.clips.sampling import clip_rng
from rayssl.config import ConfigError, load_config
from rayssl.pretext import build_pretext
from rayssl.pretext.masks import masked_per_frame, multiscale_crop_flip, tube_mask
from rayssl.pretext.videomae import patch_targets, split_tokens
from rayssl.train.step import DeviceSettings, batch_to_device, build_model, train_step
from tests.conftest import ROOT, run_vit_debug

DEBUG = ROOT / "configs" / "videomae_vit_debug.yaml"


def _cfg(*overrides: str):
    return load_config(DEBUG, list(overrides))


def _frames(rng: np.random.Generator, t: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    return rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _batch(pretext, cfg, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n samples made by the pretext's CPU half, stacked like the pipeline's batches."""
    augment = augment_config(cfg.data.augment)
    rows = []
    for i in range(n):
        rng = clip_rng(seed, f"v{i}", 0, 0)
        plan = pretext.plan(40, rng)
        rows.append(pretext.make_sample([_frames(rng)], plan, rng, augment, train=True))
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    batch["valid"] = np.ones(n, dtype=bool)
    return batch


# ------------------------------------------------------------------------------ masks


@pytest.mark.parametrize(
    ("grid", "ratio"), [((4, 3, 3), 0.9), ((8, 14, 14), 0.9), ((2, 4, 4), 0.5)]
)
def test_tube_mask_ratio_is_exact_and_every_frame_the_same(grid, ratio) -> None:
    t, h, w = grid
    for seed in range(5):
        mask = tube_mask(grid, ratio, np.random.default_rng(seed)).reshape(t, h * w)
        assert (mask == mask[0]).all()  # one mask, on every token frame: tubes
        assert mask[0].sum() == int(ratio * h * w) == masked_per_frame(grid, ratio)
    assert masked_per_frame((8, 14, 14), 0.9) == 176  # VideoMAE at 16x224x224: 1568 -> 160


def test_tube_mask_reproducible_from_the_draw_seed_and_different_across_draws() -> None:
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    augment = augment_config(cfg.data.augment)

    def sample(video: str, epoch: int, draw: int) -> dict[str, np.ndarray]:
        rng = clip_rng(cfg.run.seed, video, epoch, draw)
        frames = _frames(np.random.default_rng(7))
        plan = pretext.plan(40, rng)
        return pretext.make_sample([frames], plan, rng, augment, train=True)

    a, b = sample("v", 0, 0), sample("v", 0, 0)
    assert np.array_equal(a["mask"], b["mask"]) and np.array_equal(a["clip"], b["clip"])
    masks = {sample("v", e, d)["mask"].tobytes() for e in range(4) for d in range(3)}
    assert len(masks) > 6  # 9 positions choose 1 visible: repeats happen, not often
    assert a["mask"].shape == (4 * 3 * 3,) and a["mask"].dtype == np.bool_
    spec = pretext.target_spec((8, 48, 48, 3))
    assert spec["mask"] == ((36,), np.bool_)


def test_multiscale_crop_is_reproducible_and_scaled() -> None:
    cfg = _cfg()
    augment = augment_config(cfg.data.augment)
    frames = _frames(np.random.default_rng(0))
    a = multiscale_crop_flip(frames, augment, [1.0, 0.5], np.random.default_rng(3))
    b = multiscale_crop_flip(frames, augment, [1.0, 0.5], np.random.default_rng(3))
    assert a.shape == (8, 48, 48, 3) and np.array_equal(a, b)
    # scale 1 of a 48-pixel short side, no flip: a plain crop of the frame
    exact = multiscale_crop_flip(
        frames,
        augment.__class__(resize=None, crop=(48, 48), flip_prob=0.0),
        [1.0],
        np.random.default_rng(0),
    )
    assert any(np.array_equal(exact, frames[:, :, x : x + 48]) for x in range(17))


# ---------------------------------------------------------------------------- targets


def test_targets_are_the_per_patch_normalised_pixels() -> None:
    """Against a loop over samples, tokens and channels (VideoMAE's norm_pix_loss:
    (p - mean) / (unbiased std + 1e-6) over the 2x16x16 pixels of each channel)."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 4, 32, 48, dtype=torch.float64)
    got = patch_targets(x)
    assert got.shape == (2, 2 * 2 * 3, 2 * 16 * 16 * 3)
    for b in range(2):
        token = 0
        for t in range(2):
            for h in range(2):
                for w in range(3):
                    for c in range(3):
                        patch = x[
                            b, c, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16
                        ]
                        p = patch.reshape(-1)
                        expected = (p - p.mean()) / (p.std(unbiased=True) + 1e-6)
                        torch.testing.assert_close(got[b, token, c::3], expected)
                    token += 1
    raw = patch_targets(x, normalise=False)
    torch.testing.assert_close(raw[1, 5, 0::3], x[1, 0, 0:2, 16:32, 32:48].reshape(-1))


def test_split_tokens_visible_then_masked_in_order() -> None:
    mask = torch.tensor([[True, False, True, False], [False, True, True, False]])
    visible, masked = split_tokens(mask, 2)
    assert visible.tolist() == [[1, 3], [0, 3]]
    assert masked.tolist() == [[0, 2], [1, 2]]


class _FixedDecoder(nn.Module):
    """A decoder whose prediction is a fixed tensor of the right shape (so the test knows
    it), still connected to the encoder's output for the gradient."""

    def __init__(self, pred: torch.Tensor) -> None:
        super().__init__()
        self.pred = pred
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, encoded, visible, masked, n):
        self.seen = (visible, masked)
        return self.pred[:, : masked.shape[1]] + 0 * encoded.sum()


def test_the_loss_covers_the_masked_tokens_only() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    backbone = build_model(cfg, pretext).backbone
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(pretext, cfg, 3), settings)
    pred = torch.randn(3, 32, 1536)
    head = _FixedDecoder(pred)
    loss, metrics = pretext.compute(backbone, head, batch)
    visible, masked = head.seen
    assert masked.shape == (3, 32) and visible.shape == (3, 4)  # 8 of 9 masked, 4 frames
    target = patch_targets(batch["clip"])
    expected = torch.stack(
        [((pred[b] - target[b, masked[b]]) ** 2).mean() for b in range(3)]
    ).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["num_valid"] == 3
    # pixels of the visible tubes change nothing (the decoder here ignores the encoder)
    x = batch["clip"].clone()
    grid_mask = batch["mask"].view(3, 4, 3, 3)
    for b in range(3):
        for t, h, w in zip(*torch.nonzero(~grid_mask[b], as_tuple=True), strict=True):
            x[b, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16] += 3.0
    same, _ = pretext.compute(backbone, _FixedDecoder(pred), {**batch, "clip": x})
    torch.testing.assert_close(same, loss)
    # ... and those of a masked tube do
    y = batch["clip"].clone()
    t, h, w = (int(v) for v in torch.nonzero(grid_mask[0])[0])
    y[0, :, 2 * t : 2 * t + 2, 16 * h : 16 * h + 8, 16 * w : 16 * w + 16] += 3.0
    other, _ = pretext.compute(backbone, _FixedDecoder(pred), {**batch, "clip": y})
    assert not torch.allclose(other, loss)


def test_a_placeholder_row_carries_no_loss() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    model = build_model(cfg, pretext).eval()
    settings = DeviceSettings(torch.device("cpu"))
    host = _batch(pretext, cfg, 3)
    with torch.no_grad():
        alone, _ = model(batch_to_device({k: v[:2] for k, v in host.items()}, settings))
        host["mask"][2] = False  # what the pipeline's placeholder row holds
        host["clip"][2] = 0
        host["valid"][2] = False
        loss, metrics = model(batch_to_device(host, settings))
    torch.testing.assert_close(loss, alone)
    assert metrics["num_valid"] == 2


def test_a_training_step_reaches_the_encoder_and_decoder() -> None:
    torch.manual_seed(0)
    cfg = _cfg()
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    model = build_model(cfg, pretext)
    settings = DeviceSettings(torch.device("cpu"))
    batch = batch_to_device(_batch(pretext, cfg, 4), settings)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = model.backbone.model.embeddings.patch_embeddings.projection.weight.clone()
    metrics = train_step(model, batch, opt, settings)
    assert torch.isfinite(metrics["loss_sum"]) and metrics["loss_sum"] > 0
    assert model.head.mask_token.grad is not None
    assert not torch.equal(
        model.backbone.model.embeddings.patch_embeddings.projection.weight, first
    )


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="not a ViT"):
        _cfg("model.backbone=c3d")
    with pytest.raises(ConfigError, match="multiples of its 16-pixel"):
        _cfg("data.augment.crop=[40,40]")
    with pytest.raises(ConfigError, match="no width multiplier"):
        _cfg("model.width=0.5")
    with pytest.raises(ConfigError, match="tubelets"):
        _cfg("data.clip_len=7")
    with pytest.raises(ConfigError, match="decoder_heads"):
        _cfg("pretext.videomae.decoder_heads=5")
    with pytest.raises(ConfigError, match="mask_ratio"):
        _cfg("pretext.videomae.mask_ratio=1.0")


@pytest.mark.slow
def test_local_mode_run_of_the_debug_config_logs_its_metrics(ray_local, tiny_manifest, tmp_path):
    result, run, client = run_vit_debug(
        DEBUG, tiny_manifest, tmp_path, "videomae_local", "train.num_workers=0"
    )
    assert result["metrics"]["epoch"] == 1
    assert run["status"] == "FINISHED" and run["tags.pretext"] == "videomae"
    losses = [m.value for m in client.get_metric_history(run["run_id"], "train/loss")]
    assert len(losses) == 2 and all(np.isfinite(v) and v > 0 for v in losses)
    assert [m.value for m in client.get_metric_history(run["run_id"], "train/clips")][0] == 9
    assert len(client.get_metric_history(run["run_id"], "val/loss")) == 2
    # a reconstruction has no accuracy: none is logged (not a flat 0)
    assert not [k for k in run.index if k.startswith("metrics.") and k.endswith("acc")]
    assert result["checkpoint"] is None  # local mode persists none (Ray Train keeps it)
