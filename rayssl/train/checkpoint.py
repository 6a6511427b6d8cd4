"""Training state on disk: model, optimiser, scheduler, epoch, sampler and run ids.

A checkpoint is a directory holding `state.pt`; Ray Train copies it to the run's
`storage_path` (local or S3) when it is reported. Its format (plain data only, read with
`weights_only=True`) is `rayssl.checkpoint`'s. Plain torch, no Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayssl import checkpoint as ckpt
from rayssl.checkpoint import STATE_FILE

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
    (seed, next epoch, and for a mid-epoch checkpoint the `in_epoch` progress of
    epoch + 1, see `EpochProgress`); every clip's randomness derives from
    (seed, video, epoch, draw).
    `config` is the run's config as a dict: evaluations rebuild the backbone from it.
    """
    path = Path(directory) / STATE_FILE
    return ckpt.save(
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


def load_training_state(directory: str | Path) -> dict[str, Any]:
    """The state in `directory`, read as plain data (`rayssl.checkpoint.read`: a pickle
    that would run code is a `CheckpointError`)."""
    path = Path(directory) / STATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {directory}")
    state = ckpt.read(str(path))
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {directory}: unsupported format "
            f"{state.get('format_version') if isinstance(state, dict) else type(state).__name__}"
        )
    return state


#: Optimizer param-group keys that say how the update runs, not what it is.
OPTIMIZER_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def restore_training_state(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
) -> int:
    """Load a state into the objects; returns the epoch to start from. The optimizer
    keeps how it runs (fused, foreach, ...: `OPTIMIZER_IMPL_KEYS`) as built from the
    current config; `load_state_dict` alone would bring back the saved run's."""
    model.load_state_dict(state["model"])
    impl = [{k: g[k] for k in OPTIMIZER_IMPL_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, keep in zip(optimizer.param_groups, impl, strict=True):
        group.update(keep)
    scheduler.load_state_dict(state["scheduler"])
    return int(state["epoch"]) + 1


@dataclass
class EpochProgress:
    """How far a mid-epoch checkpoint got into its epoch.

    `done` marks, per place in the epoch's draw order (`pipeline.epoch_order`), the
    draws already trained by any worker; a resumed run deals out only the others. `sums`
    and `skips` are the epoch's metric sums so far, reduced over workers, so the epoch's
    logged metrics cover the whole epoch, not only the part after the restart.
    """

    epoch: int
    steps: int
    done: np.ndarray
    sums: dict[str, float] = field(default_factory=dict)
    skips: dict[str, float] = field(default_factory=dict)

    def to_state(self) -> dict[str, Any]:
        done = np.asarray(self.done, dtype=bool)
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "num_draws": len(done),
            "done_bits": np.packbits(done).tobytes(),
            "sums": dict(self.sums),
            "skips": dict(self.skips),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochProgress:
        bits = np.frombuffer(state["done_bits"], dtype=np.uint8)
        done = np.unpackbits(bits, count=int(state["num_draws"])).astype(bool)
        return cls(
            epoch=int(state["epoch"]),
            steps=int(state["steps"]),
            done=done,
            sums={k: float(v) for k, v in state["sums"].items()},
            skips={k: float(v) for k, v in state["skips"].items()},
        )


def epoch_progress(state: dict[str, Any]) -> EpochProgress | None:
    """The mid-epoch progress of a loaded training state (None: an epoch-end state)."""
    progress = state.get("sampler", {}).get("in_epoch")
    return EpochProgress.from_state(progress) if progress else None
