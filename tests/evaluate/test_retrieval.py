"""Retrieval: hand-worked angles, ties, chunking against a brute-force loop, plots, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rayssl.evaluate.retrieval import format_table, plot_topk
from rayssl.knn import cosine_similarity_matrix, nearest_neighbours, topk_accuracy

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def unit(degrees: list[float]) -> np.ndarray:
    """(N, 2) unit vectors at the given angles."""
    rad = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Gallery at 0, 30, 90, 180 degrees; queries at angles whose neighbour order is worked out
# by angular distance (no two distances within 5 degrees of each other).
GALLERY_DEG = [0.0, 30.0, 90.0, 180.0]
GALLERY_LABELS = np.array([0, 1, 2, 0])
QUERY_DEG = [10.0, 25.0, 170.0, 55.0, 40.0]
QUERY_LABELS = np.array([0, 2, 0, 0, 7])  # class 7 is not in the gallery
# Neighbour order, by hand:
#   10 deg: g0 (10), g1 (20), g2 (80), g3 (170)   -> class 0 at rank 0
#   25 deg: g1 (5),  g0 (25), g2 (65), g3 (155)   -> class 2 at rank 2
#  170 deg: g3 (10), g2 (80), g1 (140), g0 (170)  -> class 0 at rank 0
#   55 deg: g1 (25), g2 (35), g0 (55), g3 (125)   -> class 0 at rank 2
#   40 deg: g1 (10), g0 (40), g2 (50), g3 (140)   -> class 7 never
EXPECTED_ORDER = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [3, 2, 1, 0], [1, 2, 0, 3], [1, 0, 2, 3]])


def brute_force_topk(query, query_labels, gallery, gallery_labels, ks):
    """Reference: per-pair cosine in a loop, sort each row by (-similarity, index)."""
    hits = {k: 0 for k in ks}
    for qi in range(len(query)):
        sims = []
        for gi in range(len(gallery)):
            q, g = query[qi], gallery[gi]
            denom = np.linalg.norm(q) * np.linalg.norm(g)
            sims.append(float(np.dot(q, g) / denom) if denom > 0 else 0.0)
        order = sorted(range(len(gallery)), key=lambda gi: (-sims[gi], gi))
        for k in ks:
            if any(gallery_labels[gi] == query_labels[qi] for gi in order[:k]):
                hits[k] += 1
    return {k: hits[k] / len(query) for k in ks}, order


def exact_tie_features(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 8) rows with four entries of +-1: norm exactly 2, cosines exactly k/4, many ties."""
    x = np.zeros((n, 8))
    for row in x:
        cols = rng.choice(8, size=4, replace=False)
        row[cols] = rng.choice([-1.0, 1.0], size=4)
    return x


def test_cosine_matrix_matches_angles():
    sim = cosine_similarity_matrix(unit(QUERY_DEG), unit(GALLERY_DEG))
    expected = np.cos(np.deg2rad(np.subtract.outer(QUERY_DEG, GALLERY_DEG)))
    assert sim.shape == (5, 4)
    assert sim.dtype == np.float64
    np.testing.assert_allclose(sim, expected, atol=1e-12)


def test_cosine_zero_row_is_zero_not_nan():
    query = np.array([[0.0, 0.0], [3.0, 4.0]])
    sim = cosine_similarity_matrix(query, np.array([[1.0, 0.0], [0.0, 0.0]]))
    assert not np.isnan(sim).any()
    np.testing.assert_allclose(sim, [[0.0, 0.0], [0.6, 0.0]])


def test_topk_by_hand():
    acc = topk_accuracy(
        unit(QUERY_DEG), QUERY_LABELS, unit(GALLERY_DEG), GALLERY_LABELS, ks=(1, 2, 3, 4)
    )
    # Hits by best rank: 0, 2, 0, 2, never.
    assert acc == {1: 2 / 5, 2: 2 / 5, 3: 4 / 5, 4: 4 / 5}


def test_nearest_neighbours_by_hand():
    order = nearest_neighbours(unit(QUERY_DEG), unit(GALLERY_DEG), k=4)
    assert order.dtype.kind == "i"
    np.testing.assert_array_equal(order, EXPECTED_ORDER)
    np.testing.assert_array_equal(
        nearest_neighbours(unit(QUERY_DEG), unit(GALLERY_DEG), k=2), EXPECTED_ORDER[:, :2]
    )


def test_absent_class_never_hits():
    acc = topk_accuracy(unit([40.0]), [7], unit(GALLERY_DEG), GALLERY_LABELS, ks=(1, 4, 50))
    assert acc == {1: 0.0, 4: 0.0, 50: 0.0}


def test_k_beyond_gallery_is_clipped():
    acc = topk_accuracy(
        unit(QUERY_DEG), QUERY_LABELS, unit(GALLERY_DEG), GALLERY_LABELS, ks=(4, 5, 1000)
    )
    assert acc == {4: 0.8, 5: 0.8, 1000: 0.8}  # keyed by the requested k
    assert nearest_neighbours(unit(QUERY_DEG), unit(GALLERY_DEG), k=100).shape == (5, 4)


def test_cosine_ignores_vector_lengths():
    rng = np.random.default_rng(0)
    query, gallery = unit(QUERY_DEG), unit(GALLERY_DEG)
    scaled_query = query * rng.uniform(0.01, 100.0, size=(len(query), 1))
    scaled_gallery = gallery * rng.uniform(0.01, 100.0, size=(len(gallery), 1))
    ks = (1, 2, 3, 4)
    scaled = topk_accuracy(scaled_query, QUERY_LABELS, scaled_gallery, GALLERY_LABELS, ks)
    assert scaled == {1: 2 / 5, 2: 2 / 5, 3: 4 / 5, 4: 4 / 5}  # as in test_topk_by_hand
    np.testing.assert_array_equal(
        nearest_neighbours(scaled_query, scaled_gallery, 4), EXPECTED_ORDER
    )
    np.testing.assert_allclose(
        cosine_similarity_matrix(scaled_query, scaled_gallery),
        cosine_similarity_matrix(query, gallery),
        atol=1e-12,
    )


def test_ties_go_to_lower_gallery_index():
    # g0 and g2 are the same vector: exactly equal similarity to the query.
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    query = np.array([[1.0, 0.0]])
    np.testing.assert_array_equal(nearest_neighbours(query, gallery, 3), [[0, 2, 1]])
    # Class of g2 only: g0 wins the tie, so top-1 misses and top-2 hits.
    assert topk_accuracy(query, [2], gallery, [0, 1, 2], ks=(1, 2)) == {1: 0.0, 2: 1.0}
    assert topk_accuracy(query, [0], gallery, [0, 1, 2], ks=(1, 2)) == {1: 1.0, 2: 1.0}
    # Swap the labels of the tied pair: the answer follows the index, not the label.
    assert topk_accuracy(query, [0], gallery, [2, 1, 0], ks=(1, 2)) == {1: 0.0, 2: 1.0}
    # A zero query ties with everything: plain index order.
    np.testing.assert_array_equal(nearest_neighbours(np.zeros((1, 2)), gallery, 3), [[0, 1, 2]])


@pytest.mark.parametrize("ties", [False, True], ids=["gaussian", "exact-ties"])
def test_chunked_equals_brute_force(ties):
    rng = np.random.default_rng(1 if ties else 2)
    num_query, num_gallery, num_classes = 37, 53, 5
    if ties:
        query, gallery = exact_tie_features(rng, num_query), exact_tie_features(rng, num_gallery)
    else:
        query, gallery = rng.normal(size=(num_query, 6)), rng.normal(size=(num_gallery, 6))
    query_labels = rng.integers(0, num_classes, num_query)
    gallery_labels = rng.integers(0, num_classes, num_gallery)
    ks = (1, 2, 5, 10, 53, 100)

    expected, _ = brute_force_topk(query, query_labels, gallery, gallery_labels, ks)
    for chunk_size in (1, 7, 36, 1024):
        got = topk_accuracy(query, query_labels, gallery, gallery_labels, ks, chunk_size=chunk_size)
        assert got == expected, chunk_size
        assert got == topk_accuracy(query, query_labels, gallery, gallery_labels, ks)
    # Not a degenerate comparison: accuracy grows with k and reaches 1 at k = Ng.
    assert expected[1] < expected[10] < expected[53] == 1.0


def test_nearest_neighbours_chunked_equals_brute_force():
    rng = np.random.default_rng(3)
    query, gallery = exact_tie_features(rng, 11), exact_tie_features(rng, 40)
    sims = query @ gallery.T / 4.0  # exact: every row has norm 2
    expected = np.array([sorted(range(40), key=lambda g: (-row[g], g))[:9] for row in sims])
    for chunk_size in (1, 4, 256):
        got = nearest_neighbours(query, gallery, 9, chunk_size=chunk_size)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    ("query", "query_labels", "gallery", "gallery_labels", "match"),
    [
        (np.zeros((0, 2)), [], np.ones((3, 2)), [0, 1, 2], "query is empty"),
        (np.ones((2, 2)), [0, 1], np.zeros((0, 2)), [], "gallery is empty"),
        (np.ones((2, 2)), [0], np.ones((3, 2)), [0, 1, 2], "query labels"),
        (np.ones((2, 2)), [0, 1], np.ones((3, 2)), [0, 1], "gallery labels"),
        (np.ones((2, 2)), [0, 1], np.ones((3, 5)), [0, 1, 2], "feature dims differ"),
        (np.ones(2), [0, 1], np.ones((3, 2)), [0, 1, 2], "2-D"),
    ],
)
def test_bad_inputs_raise(query, query_labels, gallery, gallery_labels, match):
    with pytest.raises(ValueError, match=match):
        topk_accuracy(query, query_labels, gallery, gallery_labels)


def test_bad_k_raises():
    with pytest.raises(ValueError, match="k >= 1"):
        topk_accuracy(np.ones((1, 2)), [0], np.ones((1, 2)), [0], ks=(0, 1))
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbours(np.ones((1, 2)), np.ones((1, 2)), 0)
    with pytest.raises(ValueError, match="feature dims differ"):
        cosine_similarity_matrix(np.ones((1, 2)), np.ones((1, 3)))


RESULTS = {
    "pool3": {1: 0.125, 5: 0.25, 10: 0.5, 20: 0.625, 50: 0.75},
    "pool5": {1: 0.2, 5: 0.3, 10: 0.4, 20: 0.5, 50: 0.6},
}


def test_plot_topk_writes_png(tmp_path):
    path = tmp_path / "plots" / "topk.png"  # the parent folder does not exist yet
    plot_topk(RESULTS, path, title="UCF101 split 1")
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 1000


def test_format_table_rows_and_columns():
    table = format_table(RESULTS)
    lines = table.splitlines()
    assert len(lines) == 3
    assert lines[0].split() == ["layer", "top1", "top5", "top10", "top20", "top50"]
    assert lines[1].split() == ["pool3", "0.125", "0.250", "0.500", "0.625", "0.750"]
    assert lines[2].split() == ["pool5", "0.200", "0.300", "0.400", "0.500", "0.600"]
