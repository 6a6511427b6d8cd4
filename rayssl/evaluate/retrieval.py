"""Nearest-neighbour video retrieval on frozen features (the VCOP protocol): the plot
and the table of its results.

Every test-split video (a query) looks up its nearest train-split videos (the gallery)
by cosine similarity; a query scores a hit at k when ANY of its k nearest gallery videos
shares its class, and top-k accuracy is hits / number of queries. The maths (ties,
chunking) are in `rayssl.knn`, which the pre-training monitor shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayssl.config import ConfigError, _check_clips, _check_layers
from rayssl.evaluate.registry import (
    Evaluation,
    Outcome,
    RunContext,
    clips_or,
    layers_or,
    register,
    vectors,
)
from rayssl.knn import DEFAULT_KS, topk_accuracy


def _all_ks(results: Mapping[str, Mapping[int, float]]) -> list[int]:
    return sorted({int(k) for per_layer in results.values() for k in per_layer})


def plot_topk(
    results: Mapping[str, Mapping[int, float]], path: str | Path, title: str = ""
) -> None:
    """Write a PNG of top-k accuracy against k, one line per layer.

    Args:
        results: {layer name (e.g. "pool3"): {k: accuracy in [0, 1]}}.
        path: the PNG to write (parent folders are created).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for layer, per_k in results.items():
            ks = sorted(per_k)
            ax.plot(ks, [per_k[k] for k in ks], marker="o", label=layer)
        ax.set_xscale("log")
        ticks = _all_ks(results)
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("k (nearest neighbours)")
        ax.set_ylabel("top-k accuracy")
        if title:
            ax.set_title(title)
        if results:
            ax.legend()
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def format_table(results: Mapping[str, Mapping[int, float]]) -> str:
    """A plain-text table: one row per layer, one "top<k>" column per k, 3 decimals.

    Args:
        results: {layer name: {k: accuracy in [0, 1]}}; a k missing for a layer shows "-".

    Returns:
        The table, lines joined by newlines (no trailing newline).
    """
    ks = _all_ks(results)
    layer_width = max([len("layer"), *(len(name) for name in results)])
    header = ["layer".ljust(layer_width), *(f"top{k}".rjust(7) for k in ks)]
    lines = ["  ".join(header)]
    for layer, per_k in results.items():
        cells = [f"{per_k[k]:.3f}" if k in per_k else "-" for k in ks]
        lines.append("  ".join([layer.ljust(layer_width), *(c.rjust(7) for c in cells)]))
    return "\n".join(lines)


# --------------------------------------------------------------------------- the suite's


@dataclass
class RetrievalSettings:
    """Nearest-neighbour retrieval (VCOP protocol): `query_split` queries `gallery_split`."""

    enabled: bool = True
    layers: list[str] = field(default_factory=list)
    """'' / [] = features.layers."""
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))
    query_split: str = "test"
    gallery_split: str = "train"
    clips: str = ""
    """Clip protocol; '' = features.inference.clips."""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers, allow_empty=True)
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"{prefix}.ks: expected k values >= 1, got {self.ks}")
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


@register
class Retrieval(Evaluation):
    """Top-k retrieval accuracy per layer: results "retrieval/<layer>/top<k>"."""

    name = "retrieval"
    settings = RetrievalSettings
    order = 10
    files = ("retrieval_topk.png", "retrieval.txt")

    def features(self, s: RetrievalSettings, suite: Any) -> dict[str, list[str]]:
        return {clips_or(s.clips, suite): layers_or(s.layers, suite)}

    def splits(self, s: RetrievalSettings) -> set[str]:
        return {s.query_split, s.gallery_split}

    def labels(self, s: RetrievalSettings) -> list[tuple[str, str | None]]:
        return [("retrieval (query)", s.query_split), ("retrieval (gallery)", s.gallery_split)]

    def run(self, s: RetrievalSettings, ctx: RunContext) -> Outcome:
        f = ctx.features.get(clips_or(s.clips, ctx.suite))
        q, g = f.split_mask(s.query_split), f.split_mask(s.gallery_split)
        table: dict[str, dict[int, float]] = {}
        results = {}
        for layer in layers_or(s.layers, ctx.suite):
            x = vectors(f, layer)
            acc = topk_accuracy(x[q], f.labels[q], x[g], f.labels[g], s.ks)
            table[layer] = acc
            results.update({f"retrieval/{layer}/top{k}": v for k, v in acc.items()})
        plot_topk(
            table,
            ctx.out.path("retrieval_topk.png"),
            title=f"retrieval: {s.query_split} -> {s.gallery_split}",
        )
        text = format_table(table)
        ctx.out.path("retrieval.txt").write_text(text + "\n")
        head = f"retrieval ({int(q.sum())} queries, {int(g.sum())} gallery)"
        return Outcome(results, [head, text])
