"""`--checkpoint` from anywhere: random, backbone.pt, Ray Train checkpoints and run folders,
runs:/<id> (a real sqlite MLflow store), s3:// (a real moto server); mismatches are errors."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from rayssl.checkpoint import (
    CheckpointError,
    backbone_file_payload,
    build_backbone_from,
    resolve_checkpoint,
    save_training_state,
    with_checkpoint_model,
)
from rayssl.config import dump_config, load_config
from rayssl.pretext import build_pretext
from rayssl.train.step import build_model, build_optimizer
from tests.conftest import ROOT

DEBUG = ROOT / "configs" / "debug.yaml"


def _cfg(*overrides: str):
    return load_config(DEBUG, ["model.width=0.125", *overrides])


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trained_model(cfg, seed: int = 3):
    """A pretext model whose weights differ from any fresh initialisation."""
    torch.manual_seed(seed)
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def _write_ray_checkpoint(directory: Path, cfg, model, run_id: str = "run123") -> Path:
    opt, sched = build_optimizer(model, cfg)
    save_training_state(
        directory,
        model=model,
        optimizer=opt,
        scheduler=sched,
        epoch=1,
        sampler={"seed": 0, "next_epoch": 2},
        extra={"mlflow_run_id": run_id},
        config=cfg.to_dict(),
    )
    return directory


def test_random_is_the_pretraining_initialisation():
    cfg = _cfg("run.seed=5")
    source = resolve_checkpoint("random", cfg)
    assert source.kind == "random" and source.backbone_state is None
    torch.manual_seed(5)  # what the train loop does before build_model
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    assert _same(build_backbone_from(source), model.backbone)
    other = resolve_checkpoint("random", _cfg("run.seed=6"))
    assert not _same(build_backbone_from(source), build_backbone_from(other))


def test_backbone_file_carries_its_settings(tmp_path):
    trained_cfg = _cfg("model.backbone=c3d", "model.width=0.125")
    model = _trained_model(trained_cfg)
    path = tmp_path / "backbone.pt"
    torch.save(
        backbone_file_payload(model.backbone, trained_cfg.model, {"mlflow_run_id": "abc"}), path
    )
    # The evaluation's own config names another backbone: the checkpoint's settings win.
    cfg = _cfg("model.backbone=r21d", "model.width=0.5")
    source = resolve_checkpoint(str(path), cfg)
    assert (source.model.backbone, source.model.width) == ("c3d", 0.125)
    assert source.pretrain_run_id == "abc"
    assert _same(build_backbone_from(source), model.backbone)
    assert with_checkpoint_model(cfg, source).model.backbone == "c3d"


def test_bare_state_dict_uses_the_config_and_mismatch_is_an_error(tmp_path):
    cfg = _cfg()
    model = _trained_model(cfg)
    path = tmp_path / "bare.pt"
    torch.save(model.backbone.state_dict(), path)
    assert _same(build_backbone_from(resolve_checkpoint(str(path), cfg)), model.backbone)
    wider = resolve_checkpoint(str(path), _cfg("model.width=0.25"))
    with pytest.raises(CheckpointError, match="shape mismatches.*checkpoint"):
        build_backbone_from(wider)
    other = resolve_checkpoint(str(path), _cfg("model.backbone=r3d"))
    with pytest.raises(CheckpointError, match="missing keys") as e:
        build_backbone_from(other)
    assert "unexpected keys" in str(e.value)


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    cfg = _cfg()
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "nope.pt"), cfg)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "no_dir"), cfg)
    (tmp_path / "text.pt").write_text("not torch")
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        resolve_checkpoint(str(tmp_path / "text.pt"), cfg)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no Ray Train checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty_run"), cfg)
    with pytest.raises(CheckpointError, match="expected a path"):
        resolve_checkpoint("  ", cfg)


def test_ray_checkpoint_folder_and_run_folder(tmp_path):
    trained_cfg = _cfg("model.width=0.125", "run.seed=9")
    old, new = _trained_model(trained_cfg, 1), _trained_model(trained_cfg, 2)
    run = tmp_path / "runs" / "myrun"
    _write_ray_checkpoint(run / "checkpoint_2026-01-01_00-00-00.000001", trained_cfg, old)
    _write_ray_checkpoint(run / "checkpoint_2026-01-02_00-00-00.000001", trained_cfg, new)
    cfg = _cfg("model.width=0.5")  # the checkpoint's config says 0.125
    direct = resolve_checkpoint(str(run / "checkpoint_2026-01-01_00-00-00.000001"), cfg)
    assert direct.kind == "ray_checkpoint" and direct.pretrain_run_id == "run123"
    assert _same(build_backbone_from(direct), old.backbone)
    assert direct.head_state is not None and "fc.weight" in direct.head_state
    latest = resolve_checkpoint(str(run), cfg)  # a run folder: its newest checkpoint
    assert latest.model.width == 0.125 and latest.seed == 9
    assert _same(build_backbone_from(latest), new.backbone)


def test_mlflow_run(tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    trained_cfg = _cfg("model.width=0.125")
    model = _trained_model(trained_cfg)
    client = mlflow.MlflowClient(tracking)
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    weights = tmp_path / "backbone.pt"
    torch.save(backbone_file_payload(model.backbone, trained_cfg.model), weights)
    client.log_artifact(run_id, str(weights), "weights")
    (tmp_path / "config.yaml").write_text(dump_config(trained_cfg))
    client.log_artifact(run_id, str(tmp_path / "config.yaml"))
    cfg = _cfg("model.width=0.25", f"run.tracking_uri={tracking}")
    source = resolve_checkpoint(f"runs:/{run_id}", cfg)
    assert source.kind == "mlflow_run" and source.pretrain_run_id == run_id
    assert source.model.width == 0.125
    assert yaml.safe_load(dump_config(trained_cfg))["model"] == source.config["model"]
    assert _same(build_backbone_from(source), model.backbone)
    with pytest.raises(CheckpointError, match="no such MLflow run"):
        resolve_checkpoint("runs:/0123456789abcdef", cfg)
    empty = client.create_run(exp).info.run_id
    with pytest.raises(CheckpointError, match="has no artifact"):
        resolve_checkpoint(f"runs:/{empty}", cfg)


def test_s3_backbone_file_and_ray_checkpoint(tmp_path, moto_endpoint):
    from tests.s3server import make_bucket, s3_env, upload_dir

    trained_cfg = _cfg("model.width=0.125")
    model = _trained_model(trained_cfg)
    local = tmp_path / "store"
    local.mkdir()
    torch.save(backbone_file_payload(model.backbone, trained_cfg.model), local / "b.pt")
    _write_ray_checkpoint(local / "run" / f"checkpoint_{time.time():.0f}", trained_cfg, model)
    endpoint = moto_endpoint
    with s3_env(endpoint):
        make_bucket(endpoint, "ckpt")
        upload_dir(endpoint, local, "ckpt", "x")
        cfg = _cfg("model.width=0.5")
        for uri in ("s3://ckpt/x/b.pt", "s3://ckpt/x/run"):
            source = resolve_checkpoint(uri, cfg)
            assert source.model.width == 0.125, uri
            assert _same(build_backbone_from(source), model.backbone), uri
        with pytest.raises(CheckpointError, match="does not exist"):
            resolve_checkpoint("s3://ckpt/x/missing.pt", cfg)
