"""The attentive probe (V-JEPA's evaluation protocol, Bardes et al. 2024): a classifier
trained on frozen token maps, whose pooling is learnt: learnable query token(s)
cross-attend over the tokens (multi-head attention), a residual MLP follows, then a
linear layer gives the class logits. The backbone is never trained.

Tokens are stored per video (`rayssl.train.inference.FeatureModel`): each clip's token
map pooled to at most `features.token_grid` (T', H', W') tokens, then averaged over the
video's clips, so a video is one (G, D) array of bounded size (G <= T'H'W').

`AttentivePooler`, `AttentiveProbe` and `train_probe` are plain torch (unit-tested on
toy token sets); the evaluation at the end trains on `train_split` and scores
`test_split`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from rayssl.config import ConfigError, _check_clips, _check_layers, _in_range
from rayssl.evaluate.registry import Evaluation, Outcome, RunContext, clips_or, register
from rayssl.models.heads import feature_layers_of
from rayssl.vocabulary import TOKEN_LAYERS


class AttentivePooler(nn.Module):
    """Tokens (B, N, D) -> pooled (B, D): `num_queries` learnable queries attend over the
    layer-normalised tokens (`nn.MultiheadAttention`, `num_heads` heads), the result is
    added to the queries, a residual MLP (hidden `mlp_ratio` x D) follows, and the
    queries are averaged. `forward(..., return_weights=True)` also returns the attention
    weights (B, heads, queries, N): for each query and head they sum to 1 over tokens."""

    def __init__(
        self, dim: int, num_heads: int = 8, num_queries: int = 1, mlp_ratio: float = 4.0
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"heads: {num_heads} does not divide the token width {dim}")
        self.query = nn.Parameter(torch.zeros(1, num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_tokens = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = max(1, int(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor, return_weights: bool = False):
        kv = self.norm_tokens(tokens)
        q = self.query.expand(tokens.shape[0], -1, -1)
        out, weights = self.attn(q, kv, kv, need_weights=True, average_attn_weights=False)
        x = q + out
        x = x + self.mlp(self.norm_mlp(x))
        pooled = x.mean(dim=1)
        return (pooled, weights) if return_weights else pooled


class AttentiveProbe(nn.Module):
    """`AttentivePooler` then a linear layer: tokens (B, N, D) -> logits (B, num_classes)."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        num_heads: int = 8,
        num_queries: int = 1,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.pooler = AttentivePooler(dim, num_heads, num_queries, mlp_ratio)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooler(tokens))


def as_tokens(features: np.ndarray) -> np.ndarray:
    """Per-video features as token sets (N, G, D) float32: a vector layer (N, D) is one
    token per video."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 2:
        return x[:, None, :]
    if x.ndim != 3:
        raise ValueError(f"expected tokens (N, G, D) or vectors (N, D), got shape {x.shape}")
    return x


def train_probe(
    tokens: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    heads: int = 8,
    queries: int = 1,
    mlp_ratio: float = 4.0,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> AttentiveProbe:
    """An `AttentiveProbe` trained on frozen tokens (N, G, D) with labels (N,): AdamW,
    cosine decay of `lr` over every step, cross-entropy, batches shuffled by `seed`
    (which also seeds the initialisation: same inputs, same probe)."""
    x = torch.from_numpy(as_tokens(tokens))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    if len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{len(x)} token sets for {len(y)} labels (need at least one)")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = AttentiveProbe(x.shape[2], num_classes, heads, queries, mlp_ratio)
    probe = probe.to(device).train()
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = -(-len(y) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(probe(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return probe.eval()


@torch.no_grad()
def probe_logits(
    probe: nn.Module, tokens: np.ndarray, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Logits (N, num_classes) of a trained probe on token sets (N, G, D)."""
    x = torch.from_numpy(as_tokens(tokens))
    out = [
        probe(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- the suite's


@dataclass
class ProbeSettings:
    """Attentive probe on frozen token maps: trained on `train_split`, scored on
    `test_split` (V-JEPA: 16 heads for ViT-L, 20 epochs, AdamW)."""

    enabled: bool = False
    layer: str = ""
    """A layer giving token maps (B, N, D); '' = the backbone's: "tokens" (ViTs) or
    "pool5_map" (CNNs). A vector layer is one token per video."""
    heads: int = 8
    """Attention heads (must divide the token width)."""
    queries: int = 1
    """Learnable query tokens (averaged after the attention)."""
    mlp_ratio: float = 4.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    train_split: str = "train"
    test_split: str = "test"
    clips: str = ""
    """Clip protocol; '' = features.inference.clips."""

    def validate(self, prefix: str) -> None:
        if self.layer:
            _check_layers(f"{prefix}.layer", [self.layer])
        _in_range(f"{prefix}.heads", self.heads, 1, None)
        _in_range(f"{prefix}.queries", self.queries, 1, None)
        _in_range(f"{prefix}.mlp_ratio", self.mlp_ratio, 1e-6, None)
        _in_range(f"{prefix}.epochs", self.epochs, 1, None)
        _in_range(f"{prefix}.batch_size", self.batch_size, 1, None)
        _in_range(f"{prefix}.lr", self.lr, 1e-12, None)
        _in_range(f"{prefix}.weight_decay", self.weight_decay, 0.0, None)
        if self.train_split == self.test_split:
            raise ConfigError(f"{prefix}.train_split: must differ from {prefix}.test_split")
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


def default_token_layer(backbone: Any, key: str = "attentive_probe.layer") -> str:
    """The backbone's token layer: the first of `TOKEN_LAYERS` it has; a ConfigError
    naming `key` and its layers when it has none."""
    have = feature_layers_of(backbone)
    for name in TOKEN_LAYERS:
        if name in have:
            return name
    raise ConfigError(
        f"{key}: backbone {type(backbone).__name__} has no token layer ({list(TOKEN_LAYERS)}); "
        f"name one of its layers {list(have)}"
    )


@register
class AttentiveProbeEval(Evaluation):
    """Attentive-probe accuracy on the token layer: "attentive_probe/<layer>/accuracy"."""

    name = "attentive_probe"
    settings = ProbeSettings
    order = 25
    files = ("attentive_probe.txt",)

    def bind(self, s: ProbeSettings, backbone: Any) -> ProbeSettings:
        if not s.layer:
            s = replace(s, layer=default_token_layer(backbone))
        dim = getattr(backbone, "out_dim", None)  # the width of its token layers
        if s.layer in TOKEN_LAYERS and isinstance(dim, int) and dim % s.heads:
            raise ConfigError(
                f"attentive_probe.heads: {s.heads} does not divide the width {dim} of the "
                f"{s.layer} tokens of backbone {type(backbone).__name__}"
            )
        return s

    def layer_keys(self, s: ProbeSettings, suite: Any) -> dict[str, list[str]]:
        return {"attentive_probe.layer": [s.layer]} if s.layer else {}

    def features(self, s: ProbeSettings, suite: Any) -> dict[str, list[str]]:
        return {clips_or(s.clips, suite): [s.layer]} if s.layer else {}

    def splits(self, s: ProbeSettings) -> set[str]:
        return {s.train_split, s.test_split}

    def labels(self, s: ProbeSettings) -> list[tuple[str, str | None]]:
        return [
            ("attentive probe (train)", s.train_split),
            ("attentive probe (test)", s.test_split),
        ]

    def run(self, s: ProbeSettings, ctx: RunContext) -> Outcome:
        if not s.layer:  # the suite binds it to the backbone first
            raise ConfigError("attentive_probe.layer: not bound to a backbone")
        f = ctx.features.get(clips_or(s.clips, ctx.suite))
        train, test = f.split_mask(s.train_split), f.split_mask(s.test_split)
        train &= f.labels >= 0
        test &= f.labels >= 0
        tokens = as_tokens(f.outputs[s.layer])
        num_classes = int(f.labels.max()) + 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            probe = train_probe(
                tokens[train],
                f.labels[train],
                num_classes,
                heads=s.heads,
                queries=s.queries,
                mlp_ratio=s.mlp_ratio,
                epochs=s.epochs,
                batch_size=s.batch_size,
                lr=s.lr,
                weight_decay=s.weight_decay,
                seed=ctx.suite.run.seed,
                device=device,
            )
        except ValueError as e:
            raise ConfigError(f"attentive_probe: {e} (layer {s.layer})") from None
        logits = probe_logits(probe, tokens[test], device=device)
        accuracy = float((logits.argmax(1) == f.labels[test]).mean())
        g, d = tokens.shape[1:]
        lines = [
            f"attentive probe ({s.layer}: {g} tokens of {d}; {s.heads} heads, {s.epochs} epochs)",
            f"  {s.layer}: accuracy {accuracy:.3f} "
            f"({int(train.sum())} train, {int(test.sum())} tested)",
        ]
        ctx.out.path("attentive_probe.txt").write_text("\n".join(lines) + "\n")
        return Outcome({f"attentive_probe/{s.layer}/accuracy": accuracy}, lines)
