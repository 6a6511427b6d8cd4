"""What a model too large for plain DDP needs: activation checkpointing and FSDP.

* `checkpoint_blocks` (`train.activation_checkpointing`): every block of the backbone's
  block list (`schedule.find_blocks`: a ViT's blocks, a CNN's five stages) runs under
  `torch.utils.checkpoint` (non-reentrant) while training: its activations are
  recomputed in the backward pass instead of kept. The recomputation would update a
  BatchNorm's running statistics a second time; they are put back after it, so loss,
  gradients and running statistics are those of the run without checkpointing.
* `shard_model` (`train.fsdp`): torch's FSDP2 `fully_shard` on each block, then on the
  whole model, over all workers (gloo on CPU, NCCL on GPUs). A sharded model's state
  is read and written whole (`full_state`, `FullStateModel`, `FullStateOptimizer`):
  every worker takes part, rank 0 writes the same checkpoint format as a DDP run.

Plain torch; no Ray.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from rayssl.train.schedule import find_blocks

_MARK = "_rayssl_checkpointed"


@contextlib.contextmanager
def _keep_norm_statistics(block: nn.Module) -> Iterator[None]:
    """Put the block's BatchNorm running statistics back as they were on exit."""
    saved = []
    for m in block.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            bufs = [
                b for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None
            ]
            saved.append((bufs, [b.detach().clone() for b in bufs]))
    try:
        yield
    finally:
        with torch.no_grad():
            for bufs, copies in saved:
                for b, c in zip(bufs, copies, strict=True):
                    b.copy_(c)


def _checkpointed_forward(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not (block.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)  # evaluation: nothing to keep for a backward pass

    def contexts() -> tuple[Any, Any]:
        # (around the forward, around its recomputation in the backward pass)
        return contextlib.nullcontext(), _keep_norm_statistics(block)

    return checkpoint(forward, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def checkpoint_blocks(backbone: nn.Module) -> int:
    """Run each block of `backbone` under activation checkpointing (in place; the state
    dict keeps its keys: the wrapped `forward` is an instance attribute). Returns the
    number of blocks. Calling it twice wraps nothing twice."""
    _, blocks = find_blocks(backbone)
    for block in blocks:
        if getattr(block, _MARK, False):
            continue
        wrapped = functools.partial(_checkpointed_forward, block, block.forward)
        block.forward = wrapped  # type: ignore[method-assign]
        setattr(block, _MARK, True)
    return len(blocks)


# --------------------------------------------------------------------------- FSDP


def shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` sharded over the process group's workers with FSDP2 (in place): each
    block of its backbone one unit, the rest (stem, embeddings, head) the root unit.
    The process group must be initialised (Ray Train does)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("train.fsdp needs a torch.distributed process group (num_workers >= 2)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    backbone = getattr(model, "backbone", model)
    _, blocks = find_blocks(backbone)
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) state dicts of a sharded model, whole, on CPU (a collective:
    every worker calls it; rank 0 holds the full tensors). The optimizer's state is keyed
    by parameter name (torch.distributed.checkpoint's format)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    return get_state_dict(model, optimizer, options=_options())


class FullStateModel:
    """A sharded model's whole state, as `save_training_state` / `restore_training_state`
    read and load a model (`state_dict`, `load_state_dict`). Loading is a collective."""

    def __init__(self, model: nn.Module, state: dict[str, Any] | None = None) -> None:
        self.model = model
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(self.model, state, options=_options())


class FullStateOptimizer:
    """A sharded model's optimiser with its whole state (see `FullStateModel`)."""

    def __init__(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict | None = None
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.state = state

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def state_dict(self) -> dict[str, Any]:
        assert self.state is not None
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=_options())
