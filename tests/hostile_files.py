"""Checkpoint files whose pickle runs code when unpickled with `weights_only=False`: each
one creates a marker file on load, so a test can tell whether any code ran."""

from __future__ import annotations

import builtins
from pathlib import Path

import torch

from rayssl.checkpoint import backbone_file_payload
from rayssl.config import Config
from rayssl.pretext import build_pretext
from rayssl.train.step import build_model, build_optimizer


class MarkerOnLoad:
    """Unpickling this calls builtins.exec, which creates `marker` (a stand-in for a
    shell command)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        code = f"open({self.marker!r}, 'w').write('code ran')"
        return (builtins.exec, (code,))


def evil_backbone(path: Path, cfg: Config, marker: Path) -> Path:
    """A real backbone.pt with one hostile value among its settings."""
    backbone = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len)).backbone
    payload = backbone_file_payload(backbone, cfg.model, {"mlflow_run_id": MarkerOnLoad(marker)})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def evil_state(directory: Path, cfg: Config, marker: Path) -> Path:
    """A real Ray Train state.pt (as the current main writes it) whose `extra` holds a
    hostile value; `directory/state.pt`."""
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    opt, sched = build_optimizer(model, cfg)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "state.pt"
    torch.save(
        {
            "format_version": 1,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": 0,
            "sampler": {"seed": cfg.run.seed, "next_epoch": 1},
            "extra": {"mlflow_run_id": MarkerOnLoad(marker)},
            "config": cfg.to_dict(),
        },
        path,
    )
    return path
