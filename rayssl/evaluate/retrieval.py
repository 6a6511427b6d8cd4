"""Nearest-neighbour video retrieval on frozen features (the VCOP protocol).

Every test-split video (a query) looks up its nearest train-split videos (the gallery)
by cosine similarity; a query scores a hit at k when ANY of its k nearest gallery videos
shares its class, and top-k accuracy is hits / number of queries.

Ties in similarity go to the lower gallery index (a stable sort on descending
similarity), so results do not depend on the sort algorithm or on chunking.

Top-k accuracy never sorts a gallery row: a query hits at k exactly when the best-ranked
gallery video of its class has rank < k, and that rank is a count
(#more similar + #equally similar with a lower index). Queries go through in chunks, so
memory is O(chunk_size * Ng), never O(Nq * Ng).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.config import ConfigError, _check_clips, _check_layers
from rayssl.evaluate.registry import (
    Evaluation,
    Outcome,
    RunContext,
    clips_or,
    layers_or,
    register,
)

DEFAULT_KS = (1, 5, 10, 20, 50)
# 256 queries x 100k gallery videos x 8 bytes = 205 MB per float64 block.
DEFAULT_CHUNK_SIZE = 256


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64; zero rows stay zero (no NaN)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _check_features(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated (Nq, D) and (Ng, D) arrays; ValueError on empty or mismatched input."""
    query, gallery = np.asarray(query), np.asarray(gallery)
    for name, x in (("query", query), ("gallery", gallery)):
        if x.ndim != 2:
            raise ValueError(f"{name} features must be 2-D (N, D), got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: no {name} videos to retrieve with")
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"feature dims differ: query has D={query.shape[1]}, gallery has D={gallery.shape[1]}"
        )
    return query, gallery


def _check_labels(labels: np.ndarray, n: int, name: str) -> np.ndarray:
    """Validated (n,) label array for `n` feature rows."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} labels have shape {labels.shape}, expected ({n},) to match")
    return labels


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def cosine_similarity_matrix(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query row with every gallery row.

    Args:
        query: (Nq, D) features.
        gallery: (Ng, D) features.

    Returns:
        (Nq, Ng) float64; a zero row has similarity 0 with everything.
    """
    query, gallery = _check_features(query, gallery)
    return _unit_rows(query) @ _unit_rows(gallery).T


def topk_accuracy(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[int, float]:
    """Fraction of queries with a same-class video among their k nearest gallery videos.

    Args:
        query: (Nq, D) features of the test split.
        query_labels: (Nq,) class ids.
        gallery: (Ng, D) features of the train split.
        gallery_labels: (Ng,) class ids.
        ks: the k values (each >= 1); a k above Ng is clipped to Ng.
        chunk_size: queries handled per block (bounds memory to chunk_size * Ng floats).

    Returns:
        {k: accuracy in [0, 1]} keyed by the requested (unclipped) k.
    """
    query, gallery = _check_features(query, gallery)
    query_labels = _check_labels(query_labels, query.shape[0], "query")
    gallery_labels = _check_labels(gallery_labels, gallery.shape[0], "gallery")
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty list of k >= 1, got {ks}")
    _check_chunk_size(chunk_size)

    num_gallery = gallery.shape[0]
    gallery_unit = _unit_rows(gallery)
    gallery_index = np.arange(num_gallery)
    # Rank (0 = nearest) of the best-ranked same-class gallery video; Ng if the class is absent.
    best_rank = np.empty(query.shape[0], dtype=np.int64)
    for start in range(0, query.shape[0], chunk_size):
        stop = start + chunk_size
        sim = _unit_rows(query[start:stop]) @ gallery_unit.T  # (c, Ng)
        same = query_labels[start:stop, None] == gallery_labels[None, :]  # (c, Ng)
        same_sim = np.where(same, sim, -np.inf)
        best = np.argmax(same_sim, axis=1)  # first maximum = lowest index among ties
        best_sim = sim[np.arange(len(best)), best][:, None]
        rank = (sim > best_sim).sum(axis=1) + (
            (sim == best_sim) & (gallery_index < best[:, None])
        ).sum(axis=1)
        best_rank[start:stop] = np.where(same.any(axis=1), rank, num_gallery)
    return {k: float(np.mean(best_rank < min(k, num_gallery))) for k in ks}


def nearest_neighbours(
    query: np.ndarray,
    gallery: np.ndarray,
    k: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Indices of each query's k most similar gallery videos, best first.

    Meant for qualitative results (a handful of queries): each gallery row is sorted.

    Args:
        query: (Nq, D) features.
        gallery: (Ng, D) features.
        k: neighbours per query, 1 <= k; clipped to Ng.
        chunk_size: queries handled per block.

    Returns:
        (Nq, min(k, Ng)) int64 gallery indices; ties go to the lower index.
    """
    query, gallery = _check_features(query, gallery)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_chunk_size(chunk_size)
    k = min(k, gallery.shape[0])
    gallery_unit = _unit_rows(gallery)
    out = np.empty((query.shape[0], k), dtype=np.int64)
    for start in range(0, query.shape[0], chunk_size):
        sim = _unit_rows(query[start : start + chunk_size]) @ gallery_unit.T
        out[start : start + chunk_size] = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return out


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
            acc = topk_accuracy(
                f.outputs[layer][q], f.labels[q], f.outputs[layer][g], f.labels[g], s.ks
            )
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
