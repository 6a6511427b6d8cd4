"""Nearest-neighbour retrieval maths on feature vectors (numpy only): cosine similarity,
top-k accuracy, nearest neighbours, and the weighted kNN classifier. Used by the retrieval
evaluation (`rayssl.evaluate.retrieval`), the kNN classifier evaluation
(`rayssl.evaluate.weighted_knn`) and the pre-training monitor (`rayssl.train.monitor`).

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


def weighted_knn_scores(
    query: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    temperature: float,
    num_classes: int,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> np.ndarray:
    """Class votes of the weighted kNN classifier (Wu et al. 2018, InstDisc; DINO's
    `knn_classifier`): each query's k most cosine-similar gallery vectors vote for their
    class with weight exp(sim / temperature).

    Args:
        query: (Nq, D) features; gallery: (Ng, D) features.
        gallery_labels: (Ng,) class ids in [0, num_classes).
        k: neighbours per query (>= 1; clipped to Ng). Ties in similarity go to the lower
            gallery index, as in `nearest_neighbours`.
        temperature: > 0; small values approach a vote of the nearest neighbour alone,
            large ones a plain majority vote of the k.
        num_classes: columns of the result.
        chunk_size: queries handled per block.

    Returns:
        (Nq, num_classes) float64 votes; the prediction is the argmax (ties: lower class).
    """
    query, gallery = _check_features(query, gallery)
    gallery_labels = _check_labels(gallery_labels, gallery.shape[0], "gallery").astype(np.int64)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if gallery_labels.size and (gallery_labels.min() < 0 or gallery_labels.max() >= num_classes):
        raise ValueError(
            f"gallery labels must be in [0, {num_classes}), got "
            f"[{gallery_labels.min()}, {gallery_labels.max()}]"
        )
    _check_chunk_size(chunk_size)
    k = min(k, gallery.shape[0])
    gallery_unit = _unit_rows(gallery)
    votes = np.zeros((query.shape[0], num_classes), np.float64)
    for start in range(0, query.shape[0], chunk_size):
        sim = _unit_rows(query[start : start + chunk_size]) @ gallery_unit.T  # (c, Ng)
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]  # (c, k)
        top_sim = np.take_along_axis(sim, top, axis=1)
        # exp((s - 1) / T): the same ratios as exp(s / T) (s <= 1), never overflows
        weights = np.exp((top_sim - 1.0) / temperature)
        rows = np.repeat(np.arange(len(top)), k)
        np.add.at(
            votes[start : start + len(top)],
            (rows, gallery_labels[top].reshape(-1)),
            weights.reshape(-1),
        )
    return votes


def weighted_knn_accuracy(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    k: int,
    temperature: float,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of the weighted kNN classifier (`weighted_knn_scores`):
    a query is right at top-n when its class is among the n classes with most votes
    (classes with equal votes rank by lower id; a class without votes never counts)."""
    query_labels = _check_labels(query_labels, np.asarray(query).shape[0], "query")
    gallery_labels = np.asarray(gallery_labels)
    num_classes = int(max(gallery_labels.max(initial=-1), query_labels.max(initial=-1))) + 1
    votes = weighted_knn_scores(
        query, gallery, gallery_labels, k, temperature, num_classes, chunk_size=chunk_size
    )
    order = np.argsort(-votes, axis=1, kind="stable")
    ranked_votes = np.take_along_axis(votes, order, axis=1)
    hit = (order == query_labels[:, None]) & (ranked_votes > 0)
    return {
        "top1": float(hit[:, :1].any(axis=1).mean()),
        "top5": float(hit[:, :5].any(axis=1).mean()),
    }
