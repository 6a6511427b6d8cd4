"""torchvision's video models as rayssl backbones, checked against torchvision's own layout.

torchvision is not a dependency (its CPU wheel for torch 2.13 is built against CUDA
torch and does not import with torch's CPU build), so the reference is recorded from
torchvision 0.28 by make_torchvision_reference.py: every state-dict key and shape, and the
features of a fixed clip under deterministic weights (`reference_state`). A weights file
saved here from those weights is exactly what torchvision's `model.state_dict()` holds
(classifier included), so loading it is loading a torchvision file.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from rayssl.checkpoint import CheckpointError, build_backbone_from, resolve_checkpoint
from rayssl.config import load_config
from rayssl.models import BACKBONES, build_backbone
from rayssl.models.torchvision_video import TORCHVISION_BACKBONES, from_torchvision_state

REFERENCE = Path(__file__).with_name("torchvision_video_reference.json")


def reference_clip() -> torch.Tensor:
    return torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))


def reference_state(keys: dict[str, tuple[list[int], str]]) -> dict[str, torch.Tensor]:
    """Deterministic weights for `keys` (name -> (shape, dtype)), the same wherever they
    are made: each tensor from its own generator seeded by the key's CRC32; BatchNorm
    running variances positive."""
    state = {}
    for key, (shape, dtype) in keys.items():
        gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if dtype == "torch.int64":
            state[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) == 1:  # BatchNorm weight
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = int(np.prod(shape[1:]))
            state[key] = torch.randn(shape, generator=gen) * (2.0 / fan_in) ** 0.5
    return state


def _reference() -> dict:
    return json.loads(REFERENCE.read_text())["models"]


def test_every_torchvision_model_is_a_registered_backbone():
    assert set(TORCHVISION_BACKBONES) <= set(BACKBONES)


@pytest.mark.parametrize("name", sorted(TORCHVISION_BACKBONES))
def test_layout_and_features_match_torchvision(name, tmp_path, capsys):
    ref = _reference()[name]
    keys = {k: tuple(v) for k, v in ref["keys"].items()}
    backbone = build_backbone(name)
    own = {k: [list(v.shape), str(v.dtype)] for k, v in backbone.state_dict().items()}
    tv_backbone = {k: v for k, v in ref["keys"].items() if not k.startswith(("fc.", "classifier."))}
    assert own == tv_backbone  # every key, shape and dtype of torchvision's model
    # a file as torchvision's model.state_dict() saves it, classifier included
    weights = tmp_path / f"{name}.pth"
    torch.save(reference_state(keys), weights)
    cfg = load_config(None, [])
    source = resolve_checkpoint(f"torchvision:{name}={weights}", cfg)
    assert source.kind == "torchvision" and source.model.backbone == name
    loaded = build_backbone_from(source).eval()
    with torch.no_grad():
        # s3d's last stage is 1 x 1 at 32 px: too small for pool5_vcop's (1, 2, 2) pool
        layers = [x for x in loaded.feature_layers if not (name == "s3d" and x == "pool5_vcop")]
        feats = loaded.forward_features(reference_clip(), layers)
    np.testing.assert_allclose(feats["pool5"][0].numpy(), ref["pool5"], atol=1e-4, rtol=1e-4)
    assert feats["pool5"].shape == (1, loaded.out_dim)
    assert [feats[k].dim() for k in ("pool1", "pool2", "pool3", "pool4")] == [5] * 4
    if "pool5_vcop" in feats:
        # the last stage's (C, T', 2, 2) max-pooled to (C, T', 1, 1), flattened
        assert feats["pool5_vcop"].shape[1] % loaded.out_dim == 0
    with torch.no_grad():  # the attention maps of the suite work on them too
        from rayssl.evaluate.attention import attention_maps

        maps = attention_maps(loaded, reference_clip())
    assert maps.shape == (1, 8, 32, 32) and float(maps.max()) <= 1.0


def test_a_torchvision_checkpoint_that_does_not_fit_is_a_one_line_error(tmp_path):
    ref = _reference()["r3d_18"]
    state = reference_state({k: tuple(v) for k, v in ref["keys"].items()})
    cfg = load_config(None, [])
    wrong = tmp_path / "r3d.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match="does not fit backbone r2plus1d_18") as e:
        build_backbone_from(resolve_checkpoint(f"torchvision:r2plus1d_18={wrong}", cfg))
    assert "\n" not in str(e.value)
    for spec, message in [
        ("torchvision:r2plus1d_18", "give the weights file"),
        ("torchvision:resnet50=x.pth", "unknown torchvision video model 'resnet50'"),
        (f"torchvision:r3d_18={tmp_path / 'gone.pth'}", "does not exist"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            resolve_checkpoint(spec, cfg)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pth"
    torch.save({"stem.0.weight": Evil()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        resolve_checkpoint(f"torchvision:r3d_18={evil}", cfg)
    assert not marker.exists()


def test_classifier_keys_are_dropped_and_nothing_else():
    state = {"fc.weight": 1, "classifier.1.bias": 2, "features.0.0.weight": 3, "stem.0.weight": 4}
    assert from_torchvision_state(state) == {"features.0.0.weight": 3, "stem.0.weight": 4}


@pytest.mark.parametrize("name", sorted(TORCHVISION_BACKBONES))
def test_narrow_torchvision_backbones_train_on_small_clips(name):
    """Sweeps pre-train them at small widths too: forward and backward on a tiny clip."""
    backbone = build_backbone(name, width=0.125)
    x = torch.randn(2, 3, 8, 32, 32)
    out = backbone(x)
    assert out.shape == (2, backbone.out_dim)
    out.sum().backward()
    assert all(p.grad is not None for p in backbone.parameters())


@pytest.mark.slow
def test_evaluate_runs_the_debug_suite_on_a_torchvision_checkpoint(
    ray_local, tiny_manifest, tmp_path, capsys
):
    """`rayssl evaluate --checkpoint torchvision:r2plus1d_18=<file> --baseline` on the
    debug suite: a supervised Kinetics-layout model beside its random init."""
    from rayssl.cli import main as cli

    ref = _reference()["r2plus1d_18"]
    weights = tmp_path / "r2plus1d_18.pth"
    torch.save(reference_state({k: tuple(v) for k, v in ref["keys"].items()}), weights)
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        f"torchvision:r2plus1d_18={weights}",
        "--suite",
        str(Path(__file__).resolve().parents[2] / "configs" / "eval_debug.yaml"),
        "--out",
        str(out),
        "--baseline",
        f"data.manifest={tiny_manifest}",
        f"run.tracking_uri=sqlite:///{tmp_path / 'mlruns.db'}",
        f"run.storage_path={tmp_path / 'runs'}",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        "features.inference.clips=uniform:2",
        "similarity.enabled=false",
        "finetune.enabled=false",
    ]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert {"retrieval/pool5/top1", "linear/pool5/accuracy"} <= set(results)
    assert (out / "baseline" / "results.json").exists()
    assert "torchvision" in printed and "random init" in printed
