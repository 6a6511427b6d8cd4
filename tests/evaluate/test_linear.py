"""Linear evaluation: fold logic, separable clusters, chance on random labels, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from rayssl.evaluate.linear import (
    CLASSIFIERS,
    LINEAR_PROTOCOLS,
    fold_indices,
    l2_normalize,
    linear_eval,
)


def clusters(per_class: int, num_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight clusters around orthogonal directions: separable even after L2-normalising."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    features = 10.0 * np.eye(8)[labels] + rng.normal(scale=0.5, size=(len(labels), 8))
    order = rng.permutation(len(labels))  # interleave classes, so folds are not class blocks
    return features[order], labels[order]


def assert_partition(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> None:
    """Each fold's train and test are disjoint and together cover 0..n-1."""
    for train, test in folds:
        assert train.dtype.kind == "i" and test.dtype.kind == "i"
        assert len(np.intersect1d(train, test)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, test])), np.arange(n))


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(l2_normalize(x), [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])
    assert not np.isnan(l2_normalize(x)).any()


def test_loo_folds():
    folds = fold_indices(6, "loo")
    assert len(folds) == 6
    assert_partition(folds, 6)
    for i, (train, test) in enumerate(folds):
        np.testing.assert_array_equal(test, [i])
        assert len(train) == 5 and i not in train


def test_kfold_covers_every_sample_once_and_is_stratified():
    labels = np.array([0] * 20 + [1] * 10)
    folds = fold_indices(30, "kfold", k=5, labels=labels, seed=3)
    assert len(folds) == 5
    assert_partition(folds, 30)
    tested = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(30))
    for _, test in folds:
        assert np.bincount(labels[test], minlength=2).tolist() == [4, 2]


def test_kfold_falls_back_when_a_class_is_too_small():
    labels = np.array([0] * 18 + [1] * 2)  # class 1 has fewer than k members
    folds = fold_indices(20, "kfold", k=5, labels=labels)
    assert len(folds) == 5
    assert_partition(folds, 20)
    tested = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(20))
    assert [len(test) for _, test in folds] == [4] * 5


def test_kfold_is_deterministic_for_a_seed():
    def tests(seed: int) -> list[list[int]]:
        return [test.tolist() for _, test in fold_indices(30, "kfold", k=3, seed=seed)]

    assert tests(7) == tests(7)
    assert tests(7) != tests(8)
    assert tests(7) != [list(range(0, 10)), list(range(10, 20)), list(range(20, 30))]  # shuffled


def test_split_respects_mask():
    mask = np.array([True, False, True, True, False])
    (train, test), *rest = fold_indices(5, "split", train_mask=mask)
    assert rest == []
    np.testing.assert_array_equal(train, [0, 2, 3])
    np.testing.assert_array_equal(test, [1, 4])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 5, "protocol": "holdout"}, "unknown protocol"),
        ({"n": 5, "protocol": "kfold", "k": 1}, "2 <= k <= n"),
        ({"n": 5, "protocol": "kfold", "k": 6}, "2 <= k <= n"),
        ({"n": 5, "protocol": "split"}, "train_mask"),
        ({"n": 3, "protocol": "split", "train_mask": np.ones(3, bool)}, "non-empty"),
        ({"n": 3, "protocol": "split", "train_mask": np.zeros(3, bool)}, "non-empty"),
        ({"n": 3, "protocol": "split", "train_mask": np.ones(4, bool)}, "shape"),
        ({"n": 1, "protocol": "loo"}, "at least 2"),
    ],
)
def test_fold_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fold_indices(**kwargs)


@pytest.mark.parametrize("classifier", CLASSIFIERS)
@pytest.mark.parametrize("protocol", LINEAR_PROTOCOLS)
def test_separable_clusters_score_perfectly(protocol, classifier):
    features, labels = clusters(per_class=8)
    mask = np.arange(len(labels)) % 3 != 0  # every class lands on both sides
    result = linear_eval(
        features, labels, protocol=protocol, train_mask=mask, k=4, classifier=classifier
    )
    expected_folds = {"split": 1, "loo": len(labels), "kfold": 4}[protocol]
    assert result["num_folds"] == expected_folds
    assert len(result["fold_accuracy"]) == expected_folds
    assert result["accuracy"] == 1.0
    assert result["fold_accuracy"] == [1.0] * expected_folds
    tested = result["predictions"] >= 0
    assert result["num_test"] == tested.sum() == (len(labels) if protocol != "split" else 8)
    np.testing.assert_array_equal(result["predictions"][tested], labels[tested])


def test_random_labels_score_near_chance():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(1200, 16))
    labels = rng.integers(0, 2, 1200)
    mask = np.arange(1200) < 600
    for classifier in CLASSIFIERS:
        result = linear_eval(features, labels, train_mask=mask, classifier=classifier)
        assert 0.4 < result["accuracy"] < 0.6, (classifier, result["accuracy"])


def test_separable_features_beat_random_labels():
    # The chance test above is only meaningful if the same setup can learn real structure.
    features, labels = clusters(per_class=40, num_classes=2)
    shuffled = np.random.default_rng(1).permutation(labels)
    real = linear_eval(features, labels, protocol="kfold", k=5)["accuracy"]
    fake = linear_eval(features, shuffled, protocol="kfold", k=5)["accuracy"]
    assert real == 1.0 and fake < 0.75


def test_pooled_accuracy_weights_folds_by_size():
    features, labels = clusters(per_class=5, num_classes=2)
    labels = labels.copy()
    labels[:3] = 1 - labels[:3]  # three label errors the classifier cannot fit away
    result = linear_eval(features, labels, protocol="kfold", k=3)
    preds = result["predictions"]
    assert result["accuracy"] == pytest.approx(np.mean(preds == labels))
    assert result["accuracy"] < 1.0
    folds = fold_indices(len(labels), "kfold", k=3, labels=labels)  # the same folds
    sizes = [len(test) for _, test in folds]
    assert len(set(sizes)) > 1  # unequal folds: a plain mean of fold accuracies could differ
    assert result["accuracy"] == pytest.approx(np.average(result["fold_accuracy"], weights=sizes))


def test_negative_labels_raise():
    features, labels = clusters(per_class=4)
    labels = labels.copy()
    labels[2] = -1
    with pytest.raises(ValueError, match="labels missing"):
        linear_eval(features, labels, protocol="loo")


def test_length_mismatch_and_unknown_classifier_raise():
    features, labels = clusters(per_class=4)
    with pytest.raises(ValueError, match="labels"):
        linear_eval(features, labels[:-1], protocol="loo")
    with pytest.raises(ValueError, match="unknown classifier"):
        linear_eval(features, labels, protocol="loo", classifier="knn")
    with pytest.raises(ValueError, match="unknown protocol"):
        linear_eval(features, labels, protocol="holdout")


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_single_class_training_fold_predicts_that_class(classifier):
    # Split: the train side holds only class 1, so every test sample is predicted 1.
    features, labels = clusters(per_class=4, num_classes=2)
    mask = labels == 1
    mask[np.flatnonzero(labels == 1)[0]] = False  # one class-1 sample is tested too
    result = linear_eval(features, labels, train_mask=mask, classifier=classifier)
    tested = ~mask
    np.testing.assert_array_equal(result["predictions"][tested], 1)
    assert result["accuracy"] == pytest.approx(1 / 5)

    # LOO: leaving out the only class-1 sample leaves a class-0-only training fold.
    features, labels = clusters(per_class=3, num_classes=2)
    labels = np.array([0, 0, 0, 1])
    result = linear_eval(features[:4], labels, protocol="loo", classifier=classifier)
    assert result["predictions"][3] == 0
    assert result["fold_accuracy"][3] == 0.0


def test_split_leaves_train_samples_untested():
    features, labels = clusters(per_class=6)
    mask = np.zeros(len(labels), bool)
    mask[::2] = True
    result = linear_eval(features, labels, train_mask=mask)
    assert (result["predictions"][mask] == -1).all()
    assert (result["predictions"][~mask] >= 0).all()
    assert result["num_test"] == (~mask).sum()
    assert result["predictions"].shape == (len(labels),)


def test_normalize_flag_changes_the_features_seen():
    # Classes differ only in feature length: invisible after L2-normalising, learnable before.
    rng = np.random.default_rng(0)
    direction = np.ones(4) / 2.0
    labels = np.repeat([0, 1], 20)
    scale = np.where(labels == 0, 1.0, 5.0) + rng.uniform(-0.1, 0.1, size=40)
    features = scale[:, None] * direction
    raw = linear_eval(features, labels, protocol="kfold", k=4, normalize=False)
    normed = linear_eval(features, labels, protocol="kfold", k=4, normalize=True)
    assert raw["accuracy"] == 1.0
    assert normed["accuracy"] < 0.8
