"""The weighted kNN classifier against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rayssl.config import ConfigError
from rayssl.evaluate.suite import load_suite
from rayssl.knn import weighted_knn_accuracy, weighted_knn_scores
from tests.conftest import ROOT


def _unit(angle_cos: float, sign: float = 1.0) -> list[float]:
    return [angle_cos, sign * math.sqrt(1 - angle_cos**2)]


# One query (1, 0). Its 3 nearest gallery vectors: one of class 0 at cosine 0.99, two of
# class 1 at cosine 0.5; a class-2 vector at cosine -1 is never among them.
QUERY = np.array([[1.0, 0.0]])
GALLERY = np.array([_unit(0.5), _unit(0.99), _unit(0.5, -1.0), [-1.0, 0.0]])
LABELS = np.array([1, 0, 1, 2])


def test_weighted_vote_differs_from_the_majority_vote():
    """k = 3. Majority: class 1 (2 votes to 1). Weighted, T = 0.1: class 0 gets
    exp(9.9) = 19930, class 1 gets 2 exp(5) = 297: class 0 wins. T = 10: exp(0.099) =
    1.104 against 2 exp(0.05) = 2.103: class 1, as the majority."""
    sharp = weighted_knn_scores(QUERY, GALLERY, LABELS, k=3, temperature=0.1, num_classes=3)
    assert sharp.argmax() == 0
    ratio = sharp[0, 0] / sharp[0, 1]
    assert ratio == pytest.approx(math.exp(0.99 / 0.1) / (2 * math.exp(0.5 / 0.1)))
    assert sharp[0, 2] == 0.0  # the 4th vector does not vote
    flat = weighted_knn_scores(QUERY, GALLERY, LABELS, k=3, temperature=10.0, num_classes=3)
    assert flat.argmax() == 1
    assert flat[0, 1] / flat[0, 0] == pytest.approx(2 * math.exp(0.05) / math.exp(0.099))
    # k = 1: only the nearest votes, whatever the temperature
    assert weighted_knn_scores(QUERY, GALLERY, LABELS, 1, 10.0, 3)[0].tolist()[1:] == [0, 0]


def test_accuracy_top1_and_top5():
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    acc = weighted_knn_accuracy(queries, np.array([0, 1]), GALLERY, LABELS, k=3, temperature=0.1)
    # both queries predict class 0: the first is right; the second's class 1 is second
    assert acc == {"top1": 0.5, "top5": 1.0}
    # a class with no vote never counts as a hit, even within the top 5 of 3 classes
    acc2 = weighted_knn_accuracy(queries, np.array([2, 2]), GALLERY, LABELS, k=3, temperature=0.1)
    assert acc2 == {"top1": 0.0, "top5": 0.0}


def test_ties_and_chunks_and_bad_input():
    gallery = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([1, 0, 0])
    # the two equal vectors tie: k = 1 takes the lower index (class 1)
    assert weighted_knn_scores(QUERY, gallery, labels, 1, 0.07, 2).argmax() == 1
    rng = np.random.default_rng(0)
    q, g, gl = rng.normal(size=(7, 5)), rng.normal(size=(11, 5)), rng.integers(0, 3, 11)
    whole = weighted_knn_scores(q, g, gl, 4, 0.5, 3)
    np.testing.assert_allclose(weighted_knn_scores(q, g, gl, 4, 0.5, 3, chunk_size=2), whole)
    # against a loop over the queries
    for i in range(7):
        sim = (g @ q[i]) / np.linalg.norm(g, axis=1) / np.linalg.norm(q[i])
        top = np.argsort(-sim, kind="stable")[:4]
        expected = np.zeros(3)
        for j in top:
            expected[gl[j]] += math.exp(sim[j] / 0.5)
        np.testing.assert_allclose(whole[i] / whole[i].sum(), expected / expected.sum())
    assert weighted_knn_scores(q, g, gl, 50, 0.5, 3).shape == (7, 3)  # k clipped to 11
    with pytest.raises(ValueError, match="temperature"):
        weighted_knn_scores(q, g, gl, 4, 0.0, 3)
    with pytest.raises(ValueError, match="k must be"):
        weighted_knn_scores(q, g, gl, 0, 0.1, 3)
    with pytest.raises(ValueError, match="gallery labels"):
        weighted_knn_scores(q, g, gl, 4, 0.1, 2)
    with pytest.raises(ValueError, match="gallery is empty"):
        weighted_knn_scores(q, g[:0], gl[:0], 4, 0.1, 3)


def test_knn_settings_are_strict():
    suite = ROOT / "configs" / "eval_debug.yaml"
    s = load_suite(suite, ["data.manifest=m", "knn.ks=[1,20]", "knn.temperature=0.5"]).knn
    assert s.enabled and s.ks == [1, 20] and s.temperature == 0.5
    for bad, key in [
        ("knn.ks=[0]", "knn.ks"),
        ("knn.ks=[5,5]", "knn.ks"),
        ("knn.temperature=0", "knn.temperature"),
        ("knn.query_split=train", "knn.query_split"),
    ]:
        with pytest.raises(ConfigError, match=key):
            load_suite(suite, ["data.manifest=m", bad])
