"""Stochastic depth (drop path) for blocks that have none built in.

transformers' `VideoMAEConfig` has no drop-path rate and its `VideoMAELayer` adds both
residuals inside its own `forward` (V-JEPA 2's layers do take `drop_path_rate`). So drop
path is applied to the whole block, from outside, by a forward hook:

    y = x + drop_path(block(x) - x)

with one Bernoulli draw per sample and block, kept residuals scaled by 1 / (1 - rate)
(timm's `drop_path` formula), and the rates growing linearly over depth from 0 to
`rate` (timm's and VideoMAE's `torch.linspace(0, drop_path_rate, depth)`). It drops a
block's two residual branches together (the original stochastic depth of Huang et al.
2016 drops whole residual blocks); timm's blocks draw one mask per branch. Identity in
evaluation mode. The hook holds no parameters: state dicts keep their keys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """timm's `drop_path`: each sample's `x` zeroed with probability `rate`, the kept
    ones scaled by 1 / (1 - rate); `x` itself when not training or rate is 0."""
    if rate <= 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def _hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> Any:
    rate = float(getattr(module, "drop_path_rate", 0.0))
    if rate <= 0.0 or not module.training:
        return output
    x = args[0] if args else kwargs["hidden_states"]
    out = output[0] if isinstance(output, tuple) else output
    dropped = x + drop_path(out - x, rate, True)
    return (dropped, *output[1:]) if isinstance(output, tuple) else dropped


def add_block_drop_path(blocks: nn.ModuleList, rate: float) -> list[float]:
    """Drop path on each residual block of `blocks` (whose forward returns input +
    residuals), at rates linear over depth from 0 to `rate`; returns the rates. Setting
    it again replaces the rates (one hook per block)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop path rate {rate} not in [0, 1)")
    rates = torch.linspace(0.0, rate, len(blocks)).tolist() if len(blocks) else []
    for block, r in zip(blocks, rates, strict=True):
        if not hasattr(block, "drop_path_rate"):
            block.register_forward_hook(_hook, with_kwargs=True)
        block.drop_path_rate = r
    return rates
