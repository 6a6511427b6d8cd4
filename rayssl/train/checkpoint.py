"""Training state on disk: model, optimiser, scheduler, epoch, sampler and run ids.

A checkpoint is a directory holding `state.pt`; Ray Train copies it to the run's
`storage_path` (local or S3) when it is reported. Plain torch, no Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "state.pt"
FORMAT_VERSION = 1


def save_training_state(
    directory: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    sampler: dict[str, Any],
    extra: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write the state after `epoch` finished; resuming starts at epoch + 1.

    `sampler` holds what the data pipeline needs to continue the same stream
    (seed, next epoch); every clip's randomness derives from (seed, video, epoch, draw).
    `config` is the run's config as a dict: evaluations rebuild the backbone from it.
    """
    path = Path(directory) / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format_version": FORMAT_VERSION,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "sampler": sampler,
            "extra": extra or {},
            "config": config or {},
        },
        path,
    )
    return path


def load_training_state(directory: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {directory}: unsupported format {state.get('format_version')}"
        )
    return state


def restore_training_state(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Load a state into the objects; returns the epoch to start from."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1
