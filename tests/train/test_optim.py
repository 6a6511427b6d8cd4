"""What a ViT needs to train (plain torch, no Ray): AdamW betas and param groups, the
warm-up + cosine schedule and its exact resume, layer-wise lr decay, drop path plumbing,
activation checkpointing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rayssl import models
from rayssl.checkpoint import load_training_state, restore_training_state, save_training_state
from rayssl.config import ConfigError, load_config
from rayssl.models import build_backbone
from rayssl.pretext import build_pretext
from rayssl.train.memory import checkpoint_blocks
from rayssl.train.schedule import (
    WarmupCosine,
    current_lr,
    find_blocks,
    layer_ids,
    param_groups,
)
from rayssl.train.step import build_model, build_optimizer


class TinyViT(nn.Module):
    """A ViT-like backbone with timm's names: patch_embed, pos_embed, cls_token,
    blocks.<i>, norm."""

    def __init__(self, dim: int = 8, depth: int = 2, drop_path: float = 0.0) -> None:
        super().__init__()
        self.drop_path = drop_path
        self.patch_embed = nn.Linear(12, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, 4, dim) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 4, 12)
        h = self.patch_embed(x) + self.pos_embed
        h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], dim=1)
        for block in self.blocks:
            h = h + block(h)
        return self.norm(h).mean(dim=1)


class WithHead(nn.Module):
    """backbone + head, named as PretextModel names them."""

    def __init__(self, backbone: nn.Module, classes: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_dim, classes)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _cfg(*overrides: str):
    return load_config(None, ["model.width=0.0625", *overrides])


# --------------------------------------------------------------------------- defaults


def test_default_optimizer_is_the_thesis_one():
    """Defaults keep today's behaviour: SGD over one group of every parameter, StepLR."""
    model = WithHead(TinyViT())
    opt, sched = build_optimizer(model, _cfg())
    assert isinstance(opt, torch.optim.SGD) and isinstance(sched, torch.optim.lr_scheduler.StepLR)
    assert len(opt.param_groups) == 1
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    assert "lr_scale" not in opt.param_groups[0]
    assert opt.param_groups[0]["weight_decay"] == 5e-3


def test_adamw_betas_from_config():
    cfg = _cfg("optim.name=adamw", "optim.betas=[0.9,0.95]")
    opt, _ = build_optimizer(WithHead(TinyViT()), cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.param_groups[0]["betas"] == (0.9, 0.95)
    default, _ = build_optimizer(WithHead(TinyViT()), _cfg("optim.name=adamw"))
    assert default.param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.betas=[0.9]", "optim.betas"),
        ("optim.betas=[0.9,1.0]", "optim.betas[1]"),
        ("optim.layer_decay=1.5", "optim.layer_decay"),
        ("optim.layer_decay=0", "optim.layer_decay"),
        ("optim.warmup_epochs=2", "optim.warmup_epochs"),  # step schedule: no warm-up
        ("model.drop_path=-0.1", "model.drop_path"),
        ("train.fsdp=true", "train.fsdp"),  # one worker: nothing to shard over
    ],
)
def test_bad_settings_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        _cfg(override)


def test_fsdp_with_the_rank0_monitor_is_refused():
    with pytest.raises(ConfigError, match="train.fsdp: the retrieval monitor"):
        _cfg("train.num_workers=2", "train.fsdp=true", "monitor.every_epochs=1")
    assert _cfg("train.num_workers=2", "train.fsdp=true").train.fsdp


def test_cosine_settings_are_checked():
    with pytest.raises(ConfigError, match="optim.warmup_epochs"):
        _cfg("optim.schedule=warmup_cosine", "optim.epochs=4", "optim.warmup_epochs=5")
    with pytest.raises(ConfigError, match="optim.min_lr"):
        _cfg("optim.schedule=warmup_cosine", "optim.lr=1e-3", "optim.min_lr=1e-2")


# --------------------------------------------------------------------------- schedule


def test_warmup_cosine_hand_worked_values():
    """base 1.0, min 0.1, 2 warm-up epochs of 10: lr(1) = 0.5, lr(2) = 1, the cosine's
    middle lr(6) = 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55, lr(10) = 0.1."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosine(opt, 1.0, epochs=10, warmup_epochs=2, min_lr=0.1)
    assert opt.param_groups[0]["lr"] == 0.0  # warm-up starts at 0
    assert s.at(0, 2, 4) == pytest.approx(0.25)  # epoch 0, half way: t = 0.5
    assert s.at(1, 0, 4) == pytest.approx(0.5)
    assert s.at(2, 0, 4) == pytest.approx(1.0)
    assert s.at(6, 0, 4) == pytest.approx(0.55)
    assert s.at(8, 0, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    assert s.lr_at(10.0) == pytest.approx(0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(s.lr_at(8.0))


def _run(cfg, model, opt, sched, epochs, steps_in_epoch, start=(0, 0), stop=None):
    """Train a few steps like the loop does (lr set before each step, sched.step() at
    each epoch end); returns the lrs and stops early at `stop` = (epoch, step)."""
    lrs = []
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 4, 12, generator=gen) for _ in range(epochs * steps_in_epoch)]
    for epoch in range(start[0], epochs):
        first = start[1] if epoch == start[0] else 0
        for step in range(first, steps_in_epoch):
            if stop == (epoch, step):
                return lrs
            sched.at(epoch, step, steps_in_epoch)
            lrs.append([g["lr"] for g in opt.param_groups])
            loss = model.head(model.backbone(xs[epoch * steps_in_epoch + step])).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return lrs


def test_warmup_cosine_resumes_mid_epoch_exactly(tmp_path):
    """Stopped in the middle of epoch 2 (inside the warm-up's end) and resumed from the
    checkpoint: the same lr at every step, and the same weights at the end."""
    cfg = _cfg(
        "optim.name=adamw",
        "optim.schedule=warmup_cosine",
        "optim.epochs=5",
        "optim.warmup_epochs=2.5",
        "optim.min_lr=1e-5",
        "optim.lr=0.01",
        "optim.no_decay_bias_norm=true",
        "optim.layer_decay=0.7",
    )
    torch.manual_seed(0)
    reference = WithHead(TinyViT())
    resumed = copy.deepcopy(reference)
    opt, sched = build_optimizer(reference, cfg)
    full = _run(cfg, reference, opt, sched, epochs=5, steps_in_epoch=4)

    opt1, sched1 = build_optimizer(resumed, cfg)
    first = _run(cfg, resumed, opt1, sched1, epochs=5, steps_in_epoch=4, stop=(2, 3))
    save_training_state(
        tmp_path, model=resumed, optimizer=opt1, scheduler=sched1, epoch=1, sampler={}
    )
    fresh = WithHead(TinyViT())  # other initial weights: the checkpoint replaces them
    opt2, sched2 = build_optimizer(fresh, cfg)
    restore_training_state(load_training_state(tmp_path), fresh, opt2, sched2)
    # the resumed epoch keeps its step count even if the loop now computes another one
    sched2.at(2, 3, 7)
    assert sched2.steps_in_epoch == 4
    rest = _run(cfg, fresh, opt2, sched2, epochs=5, steps_in_epoch=4, start=(2, 3))
    assert first + rest == full
    for a, b in zip(reference.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)
    # the lrs do follow the curve (not a constant), scaled per group
    heads = [max(step) for step in full]
    assert heads[0] == 0.0 and max(heads) == pytest.approx(0.01, rel=0.05)


def test_step_schedule_keeps_layer_ratios():
    """StepLR multiplies every group's lr by gamma: layer-wise scales survive it."""
    cfg = _cfg("optim.layer_decay=0.5", "optim.step_epochs=1", "optim.lr=1.0")
    opt, sched = build_optimizer(WithHead(TinyViT(depth=2)), cfg)
    before = sorted(g["lr"] for g in opt.param_groups)
    opt.step()  # (no gradients: changes nothing)
    sched.step()
    after = sorted(g["lr"] for g in opt.param_groups)
    assert after == pytest.approx([0.1 * lr for lr in before])
    assert current_lr(opt) == pytest.approx(0.1)


def test_loading_another_schedules_state_is_refused():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    step_state = torch.optim.lr_scheduler.StepLR(opt, 3).state_dict()
    with pytest.raises(ValueError, match="not warmup_cosine"):
        WarmupCosine(opt, 1.0, 10).load_state_dict(step_state)


# --------------------------------------------------------------------------- param groups


def test_weight_decay_split_rule():
    """No decay: biases, norm weights (1-D), pos_embed, cls_token; decay: the rest."""
    model = WithHead(TinyViT(depth=2))
    groups = param_groups(model, 0.05, no_decay_bias_norm=True, layer_decay=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    by_decay: dict[float, set[str]] = {}
    for g in groups:
        assert isinstance(g, dict)
        by_decay.setdefault(g["weight_decay"], set()).update(names[id(p)] for p in g["params"])
    assert by_decay[0.05] == {
        "backbone.patch_embed.weight",
        "backbone.blocks.0.1.weight",
        "backbone.blocks.1.1.weight",
        "head.weight",
    }
    assert by_decay[0.0] == {
        "backbone.patch_embed.bias",
        "backbone.pos_embed",
        "backbone.cls_token",
        *(
            f"backbone.blocks.{i}.{j}.{w}"
            for i in (0, 1)
            for j in (0, 1)
            for w in ("weight", "bias")
        ),
        "backbone.norm.weight",
        "backbone.norm.bias",
        "head.bias",
    } - {"backbone.blocks.0.1.weight", "backbone.blocks.1.1.weight"}


def test_layer_ids_vit_hand_worked():
    """2 blocks: num_layers 3; embeddings 0, blocks.0 -> 1, blocks.1 -> 2, the final
    norm and the head 3; decay 0.5 -> lr scales 1/8, 1/4, 1/2, 1."""
    model = WithHead(TinyViT(depth=2))
    ids, num_layers = layer_ids(model)
    assert num_layers == 3
    assert ids["backbone.patch_embed.weight"] == 0
    assert ids["backbone.pos_embed"] == 0 and ids["backbone.cls_token"] == 0
    assert ids["backbone.blocks.0.1.weight"] == 1
    assert ids["backbone.blocks.1.0.bias"] == 2
    assert ids["backbone.norm.weight"] == 3 and ids["head.weight"] == 3
    groups = param_groups(model, 0.0, no_decay_bias_norm=False, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}  # type: ignore[index]
    assert scale["backbone.pos_embed"] == 0.125
    assert scale["backbone.blocks.0.1.weight"] == 0.25
    assert scale["backbone.blocks.1.1.weight"] == 0.5
    assert scale["head.weight"] == 1.0 and scale["backbone.norm.bias"] == 1.0


def test_layer_ids_transformers_names():
    """transformers' VideoMAE names: embeddings.*, encoder.layer.<i>.*, layernorm."""

    class HFLike(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Module()
            self.embeddings.patch_embeddings = nn.Linear(2, 2)
            self.encoder = nn.Module()
            self.encoder.layer = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))
            self.layernorm = nn.LayerNorm(2)

    ids, num_layers = layer_ids(HFLike())
    assert num_layers == 4
    assert ids["embeddings.patch_embeddings.weight"] == 0
    assert [ids[f"encoder.layer.{i}.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["layernorm.weight"] == 4


def test_layer_ids_cnn_by_stage():
    """The CNNs' five stages (stage 0 the stem) are layers 1..5, the head 6: stage i
    trains at decay ** (5 - i) of the lr."""
    cfg = _cfg(
        "model.backbone=r21d",
        "pretext.name=supervised",
        "pretext.num_classes=4",
        "optim.layer_decay=0.5",
    )
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video))
    ids, num_layers = layer_ids(model)
    assert num_layers == 6
    for name, layer in ids.items():
        if name.startswith("backbone.stages."):
            assert layer == int(name.split(".")[2]) + 1
        else:
            assert name.startswith("head.") and layer == 6
    opt, _ = build_optimizer(model, cfg)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["layer1_decay"] == pytest.approx(cfg.optim.lr * 0.5**5)
    assert lrs["layer6_decay"] == pytest.approx(cfg.optim.lr)


def test_a_backbone_without_blocks_is_refused_for_layer_decay():
    with pytest.raises(ValueError, match="no block list"):
        layer_ids(nn.Sequential(nn.Linear(2, 2)))


# --------------------------------------------------------------------------- drop path


def test_drop_path_on_a_cnn_is_a_config_error():
    with pytest.raises(ConfigError, match="model.drop_path: backbone 'c3d' has no stochastic"):
        _cfg("model.backbone=c3d", "model.drop_path=0.1")


def test_drop_path_reaches_a_backbone_that_takes_it(monkeypatch):
    built = {}

    def tiny_vit(width: float = 1.0, drop_path: float = 0.0) -> TinyViT:
        built["drop_path"] = drop_path
        return TinyViT(drop_path=drop_path)

    monkeypatch.setitem(models.BACKBONES, "c3d", tiny_vit)
    cfg = _cfg(
        "model.backbone=c3d",
        "model.drop_path=0.2",
        "pretext.name=supervised",
        "pretext.num_classes=4",
    )
    build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video))
    assert built == {"drop_path": 0.2}
    with pytest.raises(ValueError, match="takes no option"):
        build_backbone("r3d", width=0.1, drop_path=0.1)


# --------------------------------------------------------------------------- checkpointing


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backbone", ["c3d", "r21d", "vit"])
def test_activation_checkpointing_same_loss_gradients_and_bn_stats(backbone):
    torch.manual_seed(0)
    if backbone == "vit":
        plain: nn.Module = TinyViT(depth=3)
        x = torch.randn(2, 4, 12)
    else:
        plain = build_backbone(backbone, width=0.0625)
        x = torch.randn(2, 3, 16, 56, 56)
    ckpt = copy.deepcopy(plain)
    assert checkpoint_blocks(ckpt) == (3 if backbone == "vit" else 5)
    checkpoint_blocks(ckpt)  # twice wraps nothing twice

    calls = []
    block0 = find_blocks(ckpt)[1][0]
    leaf = [m for m in block0.modules() if isinstance(m, (nn.Conv3d, nn.Linear))][0]
    leaf.register_forward_hook(lambda *_: calls.append(1))

    plain.train()
    ckpt.train()
    loss_plain = plain(x).square().sum()
    loss_plain.backward()
    loss_ckpt = ckpt(x).square().sum()
    loss_ckpt.backward()
    assert len(calls) == 2  # the first block ran again in the backward pass
    assert torch.equal(loss_plain, loss_ckpt)
    g1, g2 = _grads(plain), _grads(ckpt)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        assert torch.allclose(g1[name], g2[name], rtol=1e-5, atol=1e-7), name
    # BatchNorm's running statistics were updated once, not twice
    assert plain.state_dict().keys() == ckpt.state_dict().keys()
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # evaluation does not checkpoint (nothing to keep), and gives the same output
    plain.eval()
    ckpt.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), ckpt(x))


def test_activation_checkpointing_from_config():
    cfg = _cfg(
        "train.activation_checkpointing=true", "pretext.name=supervised", "pretext.num_classes=4"
    )
    from rayssl.train.step import DeviceSettings, place_model

    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video))
    keys = list(model.state_dict())
    place_model(model, DeviceSettings(torch.device("cpu")), cfg)
    assert all(getattr(s, "_rayssl_checkpointed", False) for s in model.backbone.stages)
    assert list(model.state_dict()) == keys  # checkpoints keep their keys


def test_block_drop_path_on_transformers_videomae_layers():
    """transformers' VideoMAE has no drop path: the block-level hook drops a block's
    whole residual per sample (timm's scaling), linear rates over depth, identity in
    evaluation, no new state-dict keys."""
    # transformers takes seconds to import: only this test needs it
    from transformers import VideoMAEConfig, VideoMAEModel

    from rayssl.models.droppath import add_block_drop_path

    config = VideoMAEConfig(
        image_size=16, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2,
        hidden_size=8, num_hidden_layers=3, num_attention_heads=2, intermediate_size=16,
    )  # fmt: skip
    model = VideoMAEModel(config)
    keys = list(model.state_dict())
    assert add_block_drop_path(model.encoder.layer, 0.5) == pytest.approx([0.0, 0.25, 0.5])
    assert list(model.state_dict()) == keys
    block = model.encoder.layer[2]
    x = torch.randn(64, 8, 8)
    block.eval()
    with torch.no_grad():
        plain = block(x)
        block.train()
        torch.manual_seed(0)
        out = block(x)
    block.eval()
    residual = plain - x
    dropped = torch.isclose(out, x, atol=1e-6).flatten(1).all(1)
    kept = torch.isclose(out, x + residual / 0.5, atol=1e-5).flatten(1).all(1)
    assert bool((dropped | kept).all())  # each sample: the whole residual dropped or kept x2
    assert 10 < int(dropped.sum()) < 54  # about half of 64 at rate 0.5
    with torch.no_grad():  # the first block's rate is 0: unchanged in training too
        first = model.encoder.layer[0]
        first.train()
        assert torch.equal(first(x), first.eval()(x))
    pixels = torch.randn(2, 4, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(pixels).last_hidden_state, model(pixels).last_hidden_state)
