"""Nearest-neighbour video retrieval on frozen features (the VCOP protocol): the plot
and the table of its results.

Every test-split video (a query) looks up its nearest train-split videos (the gallery)
by cosine similarity; a query scores a hit at k when ANY of its k nearest gallery videos
shares its class, and top-k accuracy is hits / number of queries. The maths (ties,
chunking) are in `rayssl.knn`, which the pre-training monitor shares.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


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
