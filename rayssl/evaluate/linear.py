"""Linear evaluation: a linear classifier on frozen, L2-normalised video features.

Protocols (how samples are split into train/test folds):
  * ``split`` — the dataset's own train/test split (one fold; UCF101/HMDB51 style).
  * ``loo``   — leave-one-out: n folds, fold i tests sample i (YUPENN dynamic scenes).
  * ``kfold`` — k folds, stratified by class when every class has >= k samples.

Predictions are pooled over folds, so accuracy = correct / tested samples overall.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.svm import LinearSVC

from rayssl.config import _check_clips, _check_layers, _in_range
from rayssl.evaluate.registry import (
    Evaluation,
    Outcome,
    RunContext,
    clips_or,
    layers_or,
    register,
    vectors,
)

LINEAR_PROTOCOLS = ("split", "loo", "kfold")
CLASSIFIERS = ("svm", "logreg")

Fold = tuple[np.ndarray, np.ndarray]  # (train_idx, test_idx), int64


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of (N, D) `x` scaled to unit L2 norm, as float64; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def fold_indices(
    n: int,
    protocol: str,
    *,
    k: int = 5,
    labels: np.ndarray | None = None,
    train_mask: np.ndarray | None = None,
    seed: int = 0,
) -> list[Fold]:
    """Train/test index folds over `n` samples.

    Args:
        n: number of samples.
        protocol: one of LINEAR_PROTOCOLS.
        k: folds for "kfold" (2 <= k <= n).
        labels: (n,) class ids; "kfold" stratifies on them when every class has >= k samples.
        train_mask: (n,) bool, required for "split": True = train, False = test.
        seed: shuffling seed for "kfold".

    Returns:
        [(train_idx, test_idx)] int64 arrays, disjoint within each fold.
    """
    if protocol not in LINEAR_PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {LINEAR_PROTOCOLS}")
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    index = np.arange(n, dtype=np.int64)

    if protocol == "split":
        if train_mask is None:
            raise ValueError('protocol "split" needs train_mask (True = train sample)')
        mask = np.asarray(train_mask, dtype=bool)
        if mask.shape != (n,):
            raise ValueError(f"train_mask has shape {mask.shape}, expected ({n},)")
        train, test = index[mask], index[~mask]
        if len(train) == 0 or len(test) == 0:
            raise ValueError(
                f'protocol "split": {len(train)} train and {len(test)} test samples; '
                "both sides must be non-empty"
            )
        return [(train, test)]

    if protocol == "loo":
        if n < 2:
            raise ValueError(f'protocol "loo" needs at least 2 samples, got n={n}')
        return [(np.delete(index, i), index[i : i + 1]) for i in range(n)]

    if not 2 <= k <= n:
        raise ValueError(f'protocol "kfold" needs 2 <= k <= n, got k={k}, n={n}')
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels have shape {labels.shape}, expected ({n},)")
        _, counts = np.unique(labels, return_counts=True)
        if counts.min() >= k:
            splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            return [
                (train.astype(np.int64), test.astype(np.int64))
                for train, test in splitter.split(np.zeros((n, 1)), labels)
            ]
    plain = KFold(n_splits=k, shuffle=True, random_state=seed)
    return [(train.astype(np.int64), test.astype(np.int64)) for train, test in plain.split(index)]


def _make_classifier(classifier: str, C: float, seed: int) -> LinearSVC | LogisticRegression:
    if classifier == "svm":
        return LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)
    return LogisticRegression(C=C, max_iter=5000)


def linear_eval(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    protocol: str = "split",
    train_mask: np.ndarray | None = None,
    k: int = 5,
    classifier: str = "svm",
    C: float = 1.0,
    seed: int = 0,
    normalize: bool = True,
) -> dict[str, Any]:
    """Fit a linear classifier per fold on frozen features and score its test predictions.

    Args:
        features: (n, D) frozen video features.
        labels: (n,) int class ids, all >= 0.
        protocol: one of LINEAR_PROTOCOLS (see fold_indices).
        train_mask: (n,) bool, required for "split".
        k: folds for "kfold".
        classifier: "svm" (LinearSVC) or "logreg" (LogisticRegression).
        C: inverse regularisation strength.
        seed: kfold shuffling and LinearSVC seed.
        normalize: L2-normalise feature rows first.

    Returns:
        {"accuracy": correct / tested, pooled over folds,
         "num_folds": int, "num_test": tested samples,
         "fold_accuracy": [float per fold],
         "predictions": (n,) int64 predicted class, -1 for samples never tested}.
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D (n, D), got shape {features.shape}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"labels have shape {labels.shape} but features have {features.shape[0]} rows"
        )
    if labels.size and labels.min() < 0:
        raise ValueError(
            f"labels missing: {int((labels < 0).sum())} of {labels.size} samples have a "
            "negative label (the manifest has no class labels for them)"
        )
    if classifier not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {classifier!r}; expected one of {CLASSIFIERS}")
    labels = labels.astype(np.int64)
    x = l2_normalize(features) if normalize else features.astype(np.float64)

    folds = fold_indices(
        len(labels), protocol, k=k, labels=labels, train_mask=train_mask, seed=seed
    )
    predictions = np.full(len(labels), -1, dtype=np.int64)
    fold_accuracy: list[float] = []
    for train, test in folds:
        classes = np.unique(labels[train])
        if len(classes) == 1:  # sklearn refuses to fit a single class; it is the only answer
            predicted = np.full(len(test), classes[0], dtype=np.int64)
        else:
            model = _make_classifier(classifier, C, seed).fit(x[train], labels[train])
            predicted = model.predict(x[test]).astype(np.int64)
        predictions[test] = predicted
        fold_accuracy.append(float(np.mean(predicted == labels[test])))

    tested = predictions >= 0
    num_test = int(tested.sum())
    correct = int((predictions[tested] == labels[tested]).sum())
    return {
        "accuracy": correct / num_test,
        "num_folds": len(folds),
        "num_test": num_test,
        "fold_accuracy": fold_accuracy,
        "predictions": predictions,
    }


# --------------------------------------------------------------------------- the suite's


@dataclass
class LinearSettings:
    """Linear probe on L2-normalised video features (YUPENN: protocol loo, sliding:16:8)."""

    enabled: bool = True
    layers: list[str] = field(default_factory=list)
    protocol: Literal["split", "loo", "kfold"] = "split"
    """split: train on train_split, test on test_split; loo: leave-one-out; kfold: k folds
    (loo and kfold use every labelled video)."""
    classifier: Literal["svm", "logreg"] = "svm"
    C: float = 1.0
    folds: int = 5
    train_split: str = "train"
    test_split: str = "test"
    clips: str = ""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers, allow_empty=True)
        _in_range(f"{prefix}.C", self.C, 1e-12, None)
        _in_range(f"{prefix}.folds", self.folds, 2, None)
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


@register
class Linear(Evaluation):
    """Linear-probe accuracy per layer: results "linear/<layer>/accuracy"."""

    name = "linear"
    settings = LinearSettings
    order = 20

    def features(self, s: LinearSettings, suite: Any) -> dict[str, list[str]]:
        return {clips_or(s.clips, suite): layers_or(s.layers, suite)}

    def splits(self, s: LinearSettings) -> set[str] | None:
        return {s.train_split, s.test_split} if s.protocol == "split" else None

    def labels(self, s: LinearSettings) -> list[tuple[str, str | None]]:
        if s.protocol == "split":
            return [("linear (train)", s.train_split), ("linear (test)", s.test_split)]
        return [("linear", None)]

    def run(self, s: LinearSettings, ctx: RunContext) -> Outcome:
        f = ctx.features.get(clips_or(s.clips, ctx.suite))
        if s.protocol == "split":
            keep = f.split_mask(s.train_split) | f.split_mask(s.test_split)
        else:
            keep = f.labels >= 0
        results, lines = {}, []
        for layer in layers_or(s.layers, ctx.suite):
            r = linear_eval(
                vectors(f, layer)[keep],
                f.labels[keep],
                protocol=s.protocol,
                train_mask=f.split_mask(s.train_split)[keep],
                k=s.folds,
                classifier=s.classifier,
                C=s.C,
                seed=ctx.suite.run.seed,
            )
            results[f"linear/{layer}/accuracy"] = r["accuracy"]
            lines.append(f"  {layer}: accuracy {r['accuracy']:.3f} ({r['num_test']} tested)")
        return Outcome(results, [f"linear ({s.classifier}, {s.protocol})", *lines])
