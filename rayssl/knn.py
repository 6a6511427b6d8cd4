"""Nearest-neighbour retrieval maths on feature vectors (numpy only): cosine similarity,
top-k accuracy, nearest neighbours. Used by the retrieval evaluation
(`rayssl.evaluate.retrieval`) and by the pre-training monitor (`rayssl.train.monitor`).

A query scores a hit at k when ANY of its k nearest gallery vectors shares its class,
and top-k accuracy is hits / number of queries. Ties in similarity go to the lower
gallery index (a stable sort on descending similarity), so results do not depend on the
sort algorithm or on chunking.

Top-k accuracy never sorts a gallery row: a query hits at k exactly when the best-ranked
gallery video of its class has rank < k, and that rank is a count
(#more similar + #equally similar with a lower index). Queries go through in chunks, so
memory is O(chunk_size * Ng), never O(Nq * Ng).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

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
