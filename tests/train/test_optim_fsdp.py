"""FSDP2 sharding (`rayssl.train.memory.shard_model`) on CPU with gloo, 2 processes (no
Ray: the plain-torch part; tests/train/test_optim_run.py runs it through Ray Train): the
parameters are sharded, and one AdamW step of the two shards on half a batch each equals
one step of the whole model on the whole batch, with activation checkpointing on."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rayssl.config import load_config
from tests.train.test_optim import TinyViT, WithHead

OVERRIDES = [
    "optim.name=adamw",
    "optim.lr=0.01",
    "optim.layer_decay=0.8",
    "optim.no_decay_bias_norm=true",
]


def _loss(model, x):
    # through the root's forward: FSDP gathers the root unit's parameters (the head's,
    # the embeddings') in its hooks
    return model(x).square().mean()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from rayssl.train.memory import checkpoint_blocks, full_state, shard_model
    from rayssl.train.step import build_optimizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = WithHead(TinyViT(depth=3))
        x = torch.randn(4, 4, 12, generator=torch.Generator().manual_seed(1))
        checkpoint_blocks(model.backbone)
        shard_model(model, torch.device("cpu"))
        sharded = [n for n, p in model.named_parameters() if type(p).__name__ == "DTensor"]
        opt, _ = build_optimizer(model, load_config(None, OVERRIDES))
        _loss(model, x[rank * 2 : rank * 2 + 2]).backward()  # each worker its half
        opt.step()
        state, optim_state = full_state(model, opt)
        if rank == 0:
            torch.save({"model": state, "sharded": sharded, "optim": optim_state}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp_step_equals_the_whole_models_step(tmp_path):
    from rayssl.train.step import build_optimizer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)

    torch.manual_seed(0)
    model = WithHead(TinyViT(depth=3))
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 4, 12, generator=torch.Generator().manual_seed(1))
    opt, _ = build_optimizer(model, load_config(None, OVERRIDES))
    # the mean of the two half-batch losses: FSDP averages the workers' gradients
    (0.5 * (_loss(model, x[:2]) + _loss(model, x[2:]))).backward()
    opt.step()

    names = [n for n, _ in model.named_parameters()]
    assert set(got["sharded"]) == set(names)  # every parameter is sharded
    assert got["model"].keys() == model.state_dict().keys()
    for name, value in model.state_dict().items():
        assert got["model"][name].shape == value.shape
        assert torch.allclose(got["model"][name], value, atol=1e-6), name
        if name in names:
            assert not torch.equal(value, before[name]), name  # the step changed it
    assert len(got["optim"]["state"]) == len(names)
