"""Action-similarity evaluation (ASLAN-style; J. Wang, "Self-supervised Video Representation
Learning", PhD thesis, CUHK 2020, section 3.6.4).

Protocol
--------
Each evaluation item is a *pair* of videos labelled "same action" or "not same". Every video
has one feature vector per layer (pool3, pool4, pool5: clip features averaged over the video).
:func:`pair_descriptors` L2-normalises each vector, then for each layer computes the 12
(dis)similarities of :data:`MEASURES` between the two videos' vectors; the 12 numbers of the
layers are concatenated (pool3's in columns 0-11, pool4's in 12-23, pool5's in 24-35) into a
36-d pair descriptor. :func:`similarity_eval` runs the cross validation given by the ``fold``
column: for each fold, the other folds are the training part; each descriptor dimension is
z-normalised with the mean and standard deviation of the *training rows only*, a linear SVM
(``sklearn.svm.LinearSVC``) is trained on same / not-same, and the held-out fold is scored by
accuracy and by ROC AUC of the SVM decision function. The result is the mean over folds.

The 12 measures (thesis Table 3.9, after the ASLAN paper)
---------------------------------------------------------
Sums run over feature dimensions i, ``a = x1[i]``, ``b = x2[i]``; "0/0 -> v" says what a term
whose denominator is zero contributes. The printed table is partly garbled; this is the reading
implemented here (deviations from the print are noted):

 1. dot                sum(a*b)
 2. sqrt_dot           sqrt(sum(a*b))
 3. sqrt_bhattacharyya sqrt(sum(sqrt(a)*sqrt(b)))
 4. harmonic           sqrt(sum(a*b / (a+b)))                        0/0 -> 0
 5. cosine             sum(a*b) / (sqrt(sum(a^2)) * sqrt(sum(b^2)))  0 if either norm is 0
 6. chi2               sqrt(sum((a-b)^2 / (a+b)))                    0/0 -> 0; printed as
                       sqrt(sum((x1 x2)^2/(x1+x2))) with the operator lost: read as a minus
                       (the chi-square distance; a product would repeat similarities 1-5
                       instead of being a distance like 7-10)
 7. l1                 sum(|a-b|)                                    printed without | |
 8. hellinger          sqrt(sum((sqrt(a) - sqrt(b))^2))
 9. sym_kl             (sum(a'*log(a'/b')) + sum(b'*log(b'/a'))) / 2 with a' = a + 1e-10,
                       b' = b + 1e-10 (this measure only, so zero entries stay finite; the
                       eps cancels in the weights: computed as sum((a-b)*log(a'/b')) / 2)
10. l2                 sqrt(sum((a-b)^2))
11. max_ratio          sum(sqrt(max(a,b)) / sqrt(a+b))               as printed; a term with
                       a = b = 0 takes its value for any equal inputs, 1/sqrt(2)
12. norm_intersection  sum(min(a,b)) / (sum(a) * sum(b))             as printed; 0 if either
                       sum is 0

The measures assume histogram-like, non-negative features (post-ReLU pooled features are
non-negative anyway): :func:`pair_measures` clips negative inputs at 0 first.

Pairs CSV format
----------------
A header line naming at least the columns ``video_a,video_b,same,fold`` (any order; names are
case-insensitive; other columns are ignored), then one line per pair:

* ``video_a``, ``video_b``: video ids, as used as keys of the feature dictionaries;
* ``same``: whether the two videos show the same action: ``1``/``0``, ``true``/``false``,
  ``yes``/``no`` or ``same``/``not_same`` (case-insensitive; :func:`write_pairs_csv` writes
  ``1``/``0``);
* ``fold``: integer cross-validation fold of the pair (:func:`make_pairs` numbers them 1..K).

Standard CSV quoting applies (ids containing commas are quoted); blank lines are skipped.
Example::

    video_a,video_b,same,fold
    v_0001,v_0042,1,1
    v_0001,v_0107,0,1
    v_0230,v_0231,1,2
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.config import _check_clips, _check_layers, _in_range
from rayssl.evaluate.registry import Evaluation, Outcome, RunContext, register, vectors
from rayssl.io import storage
from rayssl.io.manifest import ManifestError

__all__ = [
    "MEASURES",
    "filter_pairs",
    "make_pairs",
    "pair_descriptors",
    "pair_measures",
    "parse_pairs_csv",
    "similarity_eval",
    "write_pairs_csv",
]

MEASURES: tuple[str, ...] = (
    "dot",
    "sqrt_dot",
    "sqrt_bhattacharyya",
    "harmonic",
    "cosine",
    "chi2",
    "l1",
    "hellinger",
    "sym_kl",
    "l2",
    "max_ratio",
    "norm_intersection",
)

DEFAULT_LAYERS: tuple[str, ...] = ("pool3", "pool4", "pool5")
PAIR_COLUMNS: tuple[str, ...] = ("video_a", "video_b", "same", "fold")

_KL_EPS = 1e-10
_CHUNK_ELEMENTS = 1 << 22  # rows per vectorised chunk = this // D (bounds temporary memory)
_TRUE_TOKENS = frozenset({"1", "true", "yes", "same"})
_FALSE_TOKENS = frozenset({"0", "false", "no", "not_same"})


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


def _measures_block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 12 measures of non-negative float64 rows ``a``, ``b`` (n, D) -> (n, 12)."""
    out = np.empty((a.shape[0], len(MEASURES)), dtype=np.float64)
    ab = a * b
    s = a + b
    diff = a - b
    sqrt_a = np.sqrt(a)
    sqrt_b = np.sqrt(b)
    pos = s > 0

    dot = ab.sum(axis=1)
    out[:, 0] = dot
    out[:, 1] = np.sqrt(dot)
    out[:, 2] = np.sqrt((sqrt_a * sqrt_b).sum(axis=1))
    out[:, 3] = np.sqrt(np.divide(ab, s, out=np.zeros_like(ab), where=pos).sum(axis=1))

    norms = np.sqrt((a * a).sum(axis=1)) * np.sqrt((b * b).sum(axis=1))
    out[:, 4] = np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)

    sq = diff * diff
    out[:, 5] = np.sqrt(np.divide(sq, s, out=np.zeros_like(sq), where=pos).sum(axis=1))
    out[:, 6] = np.abs(diff).sum(axis=1)
    out[:, 7] = np.sqrt(((sqrt_a - sqrt_b) ** 2).sum(axis=1))
    log_ratio = np.log(a + _KL_EPS) - np.log(b + _KL_EPS)
    out[:, 8] = 0.5 * (diff * log_ratio).sum(axis=1)
    out[:, 9] = np.sqrt(sq.sum(axis=1))

    ratio = np.divide(
        np.sqrt(np.maximum(a, b)),
        np.sqrt(s),
        out=np.full_like(s, 1.0 / math.sqrt(2.0)),
        where=pos,
    )
    out[:, 10] = ratio.sum(axis=1)

    inter = np.minimum(a, b).sum(axis=1)
    mass = a.sum(axis=1) * b.sum(axis=1)
    out[:, 11] = np.divide(inter, mass, out=np.zeros_like(inter), where=mass > 0)
    return out


def pair_measures(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """The 12 (dis)similarities of :data:`MEASURES` between paired feature vectors.

    Args:
        x1: (N, D) first vector of each pair.
        x2: (N, D) second vector of each pair.

    Returns:
        (N, 12) float64; column j is measure ``MEASURES[j]`` (see the module docstring).
        Negative inputs are clipped at 0 first. Vectorised over pairs (processed in row
        chunks to bound temporary memory).

    Raises:
        ValueError: if the inputs are not 2-D of equal shape or contain NaN/inf.
    """
    a = np.asarray(x1, dtype=np.float64)
    b = np.asarray(x2, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"x1 and x2 must be 2-D arrays of equal shape (N, D); got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("x1 and x2 must be finite (found NaN or inf)")
    a = np.clip(a, 0.0, None)
    b = np.clip(b, 0.0, None)
    n, d = a.shape
    out = np.empty((n, len(MEASURES)), dtype=np.float64)
    step = max(1, _CHUNK_ELEMENTS // max(d, 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        out[start:stop] = _measures_block(a[start:stop], b[start:stop])
    return out


# --------------------------------------------------------------------------------------------
# Pairs files
# --------------------------------------------------------------------------------------------


def _parse_same(token: str, line: int) -> bool:
    t = token.strip().lower()
    if t in _TRUE_TOKENS:
        return True
    if t in _FALSE_TOKENS:
        return False
    raise ValueError(
        f"pairs CSV line {line}: bad 'same' value {token!r} "
        "(expected 1/0, true/false, yes/no or same/not_same)"
    )


def parse_pairs_csv(text: str) -> dict[str, np.ndarray]:
    """Parse a pairs CSV (format in the module docstring).

    Args:
        text: the file's content.

    Returns:
        ``{"video_a": (N,) str, "video_b": (N,) str, "same": (N,) bool, "fold": (N,) int64}``.

    Raises:
        ValueError: empty text; missing required column(s) (named); a duplicated required
            column; a row with the wrong number of fields, an empty video id, a bad ``same``
            or non-integer ``fold`` value (the message names the line number).
    """
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 0
    index: dict[str, int] = {}
    video_a: list[str] = []
    video_b: list[str] = []
    same: list[bool] = []
    fold: list[int] = []
    try:
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [cell.strip().lower() for cell in row]
                header_line = line
                missing = [c for c in PAIR_COLUMNS if c not in header]
                if missing:
                    raise ValueError(
                        f"pairs CSV is missing column(s) {', '.join(missing)} "
                        f"(header on line {line}: {','.join(header)})"
                    )
                dup = [c for c in PAIR_COLUMNS if header.count(c) > 1]
                if dup:
                    raise ValueError(f"pairs CSV header repeats column(s) {', '.join(dup)}")
                index = {c: header.index(c) for c in PAIR_COLUMNS}
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"pairs CSV line {line}: malformed row, {len(row)} fields where the header "
                    f"(line {header_line}) has {len(header)}"
                )
            va = row[index["video_a"]].strip()
            vb = row[index["video_b"]].strip()
            if not va or not vb:
                raise ValueError(f"pairs CSV line {line}: empty video id")
            s = _parse_same(row[index["same"]], line)
            fold_token = row[index["fold"]].strip()
            try:
                f = int(fold_token)
            except ValueError:
                raise ValueError(
                    f"pairs CSV line {line}: bad 'fold' value {fold_token!r} (expected an integer)"
                ) from None
            video_a.append(va)
            video_b.append(vb)
            same.append(s)
            fold.append(f)
    except csv.Error as exc:
        raise ValueError(f"pairs CSV line {reader.line_num}: malformed row ({exc})") from exc
    if header is None:
        raise ValueError("pairs CSV is empty (no header line)")
    return {
        "video_a": np.array(video_a, dtype=str),
        "video_b": np.array(video_b, dtype=str),
        "same": np.array(same, dtype=bool),
        "fold": np.array(fold, dtype=np.int64),
    }


def write_pairs_csv(
    path: str | os.PathLike[str],
    video_a: Sequence[str] | np.ndarray,
    video_b: Sequence[str] | np.ndarray,
    same: Sequence[bool] | np.ndarray,
    fold: Sequence[int] | np.ndarray,
) -> None:
    """Write a pairs CSV (header ``video_a,video_b,same,fold``; ``same`` as 1/0).

    Args:
        path: output file (parent folders are created).
        video_a: (N,) first video id of each pair.
        video_b: (N,) second video id of each pair.
        same: (N,) bool, whether the pair shows the same action.
        fold: (N,) int cross-validation fold.

    Raises:
        ValueError: if the four columns differ in length.
    """
    cols = [list(video_a), list(video_b), list(same), list(fold)]
    if len({len(c) for c in cols}) != 1:
        raise ValueError(f"columns differ in length: {[len(c) for c in cols]}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(PAIR_COLUMNS)
        for va, vb, s, f in zip(*cols, strict=True):
            writer.writerow([str(va), str(vb), 1 if bool(s) else 0, int(f)])


def filter_pairs(
    pairs: Mapping[str, np.ndarray], available_ids: Iterable[str]
) -> tuple[dict[str, np.ndarray], int]:
    """Keep the pairs whose two videos both have features.

    Args:
        pairs: as from :func:`parse_pairs_csv` (every (N,) array is filtered; other entries
            are copied unchanged).
        available_ids: ids of the videos with features (in every layer used).

    Returns:
        ``(kept_pairs, num_dropped)``: the same keys with (M,) arrays, M = N - num_dropped.
    """
    ids = set(available_ids)
    va = np.asarray(pairs["video_a"])
    vb = np.asarray(pairs["video_b"])
    n = va.shape[0]
    keep = np.fromiter(
        (a in ids and b in ids for a, b in zip(va.tolist(), vb.tolist(), strict=True)),
        dtype=bool,
        count=n,
    )
    kept: dict[str, np.ndarray] = {}
    for key, value in pairs.items():
        arr = np.asarray(value)
        kept[key] = arr[keep] if arr.ndim >= 1 and arr.shape[0] == n else value
    return kept, int(n - keep.sum())


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def pair_descriptors(
    features: Mapping[str, Mapping[str, np.ndarray]],
    pairs: Mapping[str, np.ndarray],
    layers: Sequence[str] = DEFAULT_LAYERS,
) -> np.ndarray:
    """Per-pair descriptors: the 12 measures of each layer's L2-normalised vectors.

    Args:
        features: ``features[layer][video_id]`` is that video's (D_layer,) feature vector.
        pairs: with (N,) ``video_a`` and ``video_b`` (as from :func:`parse_pairs_csv`).
        layers: layers to use, in column order.

    Returns:
        (N, 12 * len(layers)) float64; columns ``12*k .. 12*k+11`` are :data:`MEASURES` of
        layer ``layers[k]``. Each vector is divided by its L2 norm (an all-zero vector stays
        zero) before :func:`pair_measures`, which clips negative entries at 0.

    Raises:
        KeyError: a layer is missing, or a pair's video has no features in a layer (the
            message names the video id(s); see :func:`filter_pairs`).
        ValueError: no layers, vectors that are not 1-D, of differing lengths within a layer,
            or non-finite.
    """
    if len(layers) == 0:
        raise ValueError("layers must not be empty")
    va = np.asarray(pairs["video_a"]).astype(str)
    vb = np.asarray(pairs["video_b"]).astype(str)
    if va.shape != vb.shape or va.ndim != 1:
        raise ValueError(f"video_a and video_b must be (N,) arrays; got {va.shape}, {vb.shape}")
    n = va.shape[0]
    out = np.zeros((n, len(MEASURES) * len(layers)), dtype=np.float64)
    if n == 0:
        return out
    uniq, inverse = np.unique(np.concatenate([va, vb]), return_inverse=True)
    inv_a, inv_b = inverse[:n], inverse[n:]
    for k, layer in enumerate(layers):
        if layer not in features:
            raise KeyError(f"no features for layer {layer!r} (have {sorted(features)})")
        table = features[layer]
        missing = [str(v) for v in uniq if v not in table]
        if missing:
            shown = ", ".join(repr(v) for v in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            raise KeyError(
                f"layer {layer!r} has no features for video(s) {shown}{more} "
                "(drop those pairs first with filter_pairs)"
            )
        rows = []
        for vid in uniq:
            v = np.asarray(table[vid], dtype=np.float64)
            if v.ndim != 1:
                raise ValueError(
                    f"layer {layer!r}, video {str(vid)!r}: feature must be 1-D, got {v.shape}"
                )
            rows.append(v)
        dims = {r.shape[0] for r in rows}
        if len(dims) != 1:
            raise ValueError(f"layer {layer!r}: feature vectors differ in length {sorted(dims)}")
        mat = np.stack(rows)
        if not np.isfinite(mat).all():
            raise ValueError(f"layer {layer!r}: non-finite feature values")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        mat = np.divide(mat, norms, out=np.zeros_like(mat), where=norms > 0)
        cols = slice(len(MEASURES) * k, len(MEASURES) * (k + 1))
        out[:, cols] = pair_measures(mat[inv_a], mat[inv_b])
    return out


# --------------------------------------------------------------------------------------------
# Cross-validated linear SVM
# --------------------------------------------------------------------------------------------


def _train_stats(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (F,) of training rows (n, F); a (numerically) zero std -> 1."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    # A constant column can have a rounding-level std (~1e-17); treat it as zero.
    zero = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
    return mean, np.where(zero, 1.0, std)


def similarity_eval(
    descriptors: np.ndarray,
    same: np.ndarray,
    folds: np.ndarray,
    *,
    C: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """K-fold same/not-same classification of pair descriptors with a linear SVM.

    For each distinct fold f (ascending): train rows ``folds != f``, test rows ``folds == f``;
    every column is z-normalised with the mean / std of the train rows only (a zero std
    becomes 1), then ``LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)`` is
    fit; a training part with a single class predicts that class (constant decision).

    Args:
        descriptors: (N, F) pair descriptors (e.g. from :func:`pair_descriptors`).
        same: (N,) bool labels (True = same action).
        folds: (N,) int fold of each pair.
        C: SVM regularisation.
        seed: SVM random state.

    Returns:
        dict with ``accuracy`` (mean of ``fold_accuracy``), ``accuracy_std`` (their std),
        ``auc`` (mean of the non-NaN ``fold_auc``; NaN if all are NaN), ``fold_accuracy`` and
        ``fold_auc`` (lists of K floats; a test fold with one class only gets NaN AUC),
        ``folds`` (the K fold labels), ``num_folds`` (K), ``num_pairs`` (N).

    Raises:
        ValueError: on inconsistent shapes, non-finite descriptors, non-boolean labels,
            non-integer folds, or fewer than 2 distinct folds.
    """
    x, y, f_arr, fold_ids = _checked_eval_inputs(descriptors, same, folds)
    fold_acc: list[float] = []
    fold_auc: list[float] = []
    for f in fold_ids:
        acc, auc = _fold_scores(x, y, f_arr == f, C=C, seed=seed)
        fold_acc.append(acc)
        fold_auc.append(auc)
    valid_auc = [a for a in fold_auc if not math.isnan(a)]
    return {
        "accuracy": float(np.mean(fold_acc)),
        "accuracy_std": float(np.std(fold_acc)),
        "auc": float(np.mean(valid_auc)) if valid_auc else float("nan"),
        "fold_accuracy": fold_acc,
        "fold_auc": fold_auc,
        "folds": [int(f) for f in fold_ids],
        "num_folds": int(fold_ids.size),
        "num_pairs": int(x.shape[0]),
    }


def _checked_eval_inputs(
    descriptors: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(descriptors float64, same bool, folds int64, the distinct folds) of
    :func:`similarity_eval`'s arguments, or the ValueError it documents."""
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be 2-D (N, F); got shape {x.shape}")
    n = x.shape[0]
    y_raw = np.asarray(same)
    f_raw = np.asarray(folds)
    if y_raw.shape != (n,) or f_raw.shape != (n,):
        raise ValueError(
            f"same and folds must be ({n},) to match descriptors; got {y_raw.shape}, {f_raw.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError("descriptors contain NaN or inf")
    if y_raw.dtype != bool and not np.isin(y_raw, (0, 1)).all():
        raise ValueError("same must be boolean (or 0/1)")
    whole_floats = np.issubdtype(f_raw.dtype, np.floating) and bool(
        np.all(np.isfinite(f_raw) & (f_raw == np.round(f_raw)))
    )
    if not (np.issubdtype(f_raw.dtype, np.integer) or whole_floats):
        raise ValueError(f"folds must be integers; got dtype {f_raw.dtype}")
    fold_ids = np.unique(f_raw.astype(np.int64))
    if fold_ids.size < 2:
        raise ValueError(f"need at least 2 distinct folds; got {fold_ids.tolist()}")
    return x, y_raw.astype(bool), f_raw.astype(np.int64), fold_ids


def _fold_scores(
    x: np.ndarray, y: np.ndarray, test: np.ndarray, *, C: float, seed: int
) -> tuple[float, float]:
    """(accuracy, AUC) on the `test` rows of an SVM fit on the others (z-normalised with
    the training rows' statistics); NaN AUC when the test rows hold one class."""
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import LinearSVC

    train = ~test
    mean, std = _train_stats(x[train])
    z_train = (x[train] - mean) / std
    z_test = (x[test] - mean) / std
    y_train, y_test = y[train], y[test]
    if np.unique(y_train).size == 1:
        label = bool(y_train[0])
        pred = np.full(y_test.shape, label)
        score = np.full(y_test.shape, 1.0 if label else -1.0)
    else:
        clf = LinearSVC(C=C, dual="auto", max_iter=20000, random_state=seed)
        clf.fit(z_train, y_train)
        score = clf.decision_function(z_test)
        pred = score > 0  # classes_ == [False, True]
    accuracy = float(np.mean(pred == y_test))
    if np.unique(y_test).size < 2:
        return accuracy, float("nan")
    return accuracy, float(roc_auc_score(y_test, score))


# --------------------------------------------------------------------------------------------
# Making a pairs set from a labelled video list
# --------------------------------------------------------------------------------------------


def _num_same(sizes: Sequence[int]) -> int:
    return sum(s * (s - 1) // 2 for s in sizes)


def _num_not_same(sizes: Sequence[int]) -> int:
    total = sum(sizes)
    return total * (total - 1) // 2 - _num_same(sizes)


def _sample_pairs(
    rng: np.random.Generator, groups: list[np.ndarray], count: int, same: bool
) -> list[tuple[int, int]]:
    """``count`` distinct unordered pairs (i < j) of video indices, uniformly at random.

    ``groups`` are the per-class index arrays of the videos to pair. ``same`` pairs join two
    videos of one class, not-same pairs two of different classes. Caller checks availability.
    """
    sizes = [len(g) for g in groups]
    available = _num_same(sizes) if same else _num_not_same(sizes)
    if count > available:
        raise ValueError(f"asked for {count} pairs, only {available} exist")
    if count == 0:
        return []
    if 2 * count >= available:  # dense: enumerate all candidates and choose
        cand: list[tuple[int, int]] = []
        for ci, g in enumerate(groups):
            if same:
                iu, ju = np.triu_indices(len(g), k=1)
                cand.extend(zip(g[iu].tolist(), g[ju].tolist(), strict=True))
            else:
                for h in groups[ci + 1 :]:
                    gi, hj = np.meshgrid(g, h, indexing="ij")
                    cand.extend(zip(gi.ravel().tolist(), hj.ravel().tolist(), strict=True))
        pick = rng.choice(len(cand), size=count, replace=False)
        return [(min(cand[i]), max(cand[i])) for i in pick.tolist()]
    # sparse: rejection sampling of distinct pairs, each draw uniform over all candidate pairs:
    # first video weighted by its number of partners, second uniform among its partners.
    members = np.concatenate(groups)
    size_arr = np.array(sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(size_arr)[:-1]])
    cls = np.repeat(np.arange(len(groups)), size_arr)
    size_of = size_arr[cls]
    partners = size_of - 1 if same else len(members) - size_of
    prob = partners / partners.sum()
    chosen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    while len(out) < count:
        batch = 2 * (count - len(out)) + 8
        first = rng.choice(len(members), size=batch, p=prob)
        c = cls[first]
        r = rng.integers(0, partners[first])  # index among the first video's partners
        if same:  # skip the first video itself inside its class block
            r = r + (r >= first - starts[c])
            second = members[starts[c] + r]
        else:  # skip the first video's class block
            r = r + size_of[first] * (r >= starts[c])
            second = members[r]
        for u, v in zip(members[first].tolist(), second.tolist(), strict=True):
            pair = (min(u, v), max(u, v))
            if pair not in chosen and len(out) < count:
                chosen.add(pair)
                out.append(pair)
    return out


def make_pairs(
    video_ids: Sequence[str],
    labels: Sequence[Hashable],
    *,
    num_pairs: int,
    num_folds: int = 10,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Build a balanced same / not-same pairs set with ASLAN-like class-disjoint folds.

    The classes are shuffled and split into ``num_folds`` groups; fold k's pairs join videos
    of group k only, so different folds share no class (and no video). Each fold gets
    ``num_pairs / num_folds`` pairs (spread as evenly as possible), half same, half not-same;
    pairs are distinct, unordered, never a video with itself, drawn uniformly. If that is not
    possible (too few classes: every group needs two classes, one of them with two videos,
    or too few distinct pairs in a group) a ``UserWarning`` is issued and the pairs are
    drawn from all videos instead, folds then assigned round-robin per label (balanced, but
    classes shared across folds).

    Args:
        video_ids: (V,) distinct video ids.
        labels: (V,) action class of each video.
        num_pairs: total number of pairs, even and >= 2 * num_folds.
        num_folds: number of folds K (numbered 1..K), >= 2.
        seed: RNG seed; the result is a deterministic function of the inputs.

    Returns:
        ``{"video_a": (P,) str, "video_b": (P,) str, "same": (P,) bool, "fold": (P,) int64}``
        with P = num_pairs, rows ordered by fold (the format of :func:`parse_pairs_csv`).

    Raises:
        ValueError: bad sizes or arguments, or too few distinct pairs even without the
            class-disjoint folds.
    """
    ids = [str(v) for v in video_ids]
    labs = list(labels)
    _check_pair_args(ids, labs, num_pairs, num_folds)
    rng = np.random.default_rng(seed)
    class_index: dict[Hashable, int] = {}
    for lab in labs:
        class_index.setdefault(lab, len(class_index))
    cls_of = np.array([class_index[lab] for lab in labs], dtype=np.int64)
    by_class = [np.flatnonzero(cls_of == c) for c in range(len(class_index))]
    half = num_pairs // 2
    quota = [len(q) for q in np.array_split(np.arange(half), num_folds)]
    order = rng.permutation(len(by_class))
    class_groups = [
        order[part].tolist() for part in np.array_split(np.arange(len(order)), num_folds)
    ]
    reason = _not_disjoint(class_groups, by_class, quota, num_folds)
    if not reason:
        drawn = _disjoint_pairs(rng, class_groups, by_class, quota)
    else:
        warnings.warn(
            f"make_pairs: folds cannot be class-disjoint ({reason}); pairs are drawn from all "
            "videos and folds share classes",
            UserWarning,
            stacklevel=2,
        )
        drawn = _shared_pairs(rng, by_class, half, num_folds)
    return _arranged(rng, ids, *drawn)


def _check_pair_args(ids: list[str], labs: list, num_pairs: int, num_folds: int) -> None:
    if len(ids) != len(labs):
        raise ValueError(f"{len(ids)} video ids but {len(labs)} labels")
    if len(set(ids)) != len(ids):
        raise ValueError("video ids must be distinct")
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2; got {num_folds}")
    if num_pairs % 2 or num_pairs < 2 * num_folds:
        raise ValueError(
            f"num_pairs must be even and >= 2 * num_folds = {2 * num_folds}; got {num_pairs}"
        )


def _not_disjoint(
    class_groups: list[list[int]], by_class: list[np.ndarray], quota: list[int], num_folds: int
) -> str:
    """Why class-disjoint folds are impossible ('' = they are possible)."""
    for k, classes in enumerate(class_groups):
        sizes = [len(by_class[c]) for c in classes]
        if len(classes) < 2:
            return f"fewer than 2 * num_folds = {2 * num_folds} classes ({len(by_class)})"
        if _num_same(sizes) < quota[k] or _num_not_same(sizes) < quota[k]:
            return f"fold {k + 1}'s classes have too few distinct pairs for {quota[k]} each"
    return ""


_Drawn = tuple[list[tuple[int, int]], list[tuple[int, int]], list[int], list[int]]


def _disjoint_pairs(
    rng: np.random.Generator,
    class_groups: list[list[int]],
    by_class: list[np.ndarray],
    quota: list[int],
) -> _Drawn:
    """(same pairs, not-same pairs, their folds): fold k's pairs from class group k."""
    same_pairs: list[tuple[int, int]] = []
    diff_pairs: list[tuple[int, int]] = []
    fold_same: list[int] = []
    fold_diff: list[int] = []
    for k, classes in enumerate(class_groups):
        groups = [by_class[c] for c in classes]
        s = _sample_pairs(rng, groups, quota[k], same=True)
        d = _sample_pairs(rng, groups, quota[k], same=False)
        same_pairs += s
        diff_pairs += d
        fold_same += [k + 1] * len(s)
        fold_diff += [k + 1] * len(d)
    return same_pairs, diff_pairs, fold_same, fold_diff


def _shared_pairs(
    rng: np.random.Generator, by_class: list[np.ndarray], half: int, num_folds: int
) -> _Drawn:
    """(same pairs, not-same pairs, their folds) from all videos, folds round-robin."""
    sizes = [len(g) for g in by_class]
    if _num_same(sizes) < half or _num_not_same(sizes) < half:
        raise ValueError(
            f"cannot make {half} same and {half} not-same distinct pairs: only "
            f"{_num_same(sizes)} same and {_num_not_same(sizes)} not-same exist"
        )
    same_pairs = _sample_pairs(rng, by_class, half, same=True)
    diff_pairs = _sample_pairs(rng, by_class, half, same=False)
    folds = [i % num_folds + 1 for i in range(half)]
    return same_pairs, diff_pairs, folds, list(folds)


def _arranged(
    rng: np.random.Generator,
    ids: list[str],
    same_pairs: list[tuple[int, int]],
    diff_pairs: list[tuple[int, int]],
    fold_same: list[int],
    fold_diff: list[int],
) -> dict[str, np.ndarray]:
    """The pairs as :func:`make_pairs` returns them: random orientation, by fold,
    shuffled within a fold."""
    pairs = np.array(same_pairs + diff_pairs, dtype=np.int64).reshape(-1, 2)
    same = np.array([True] * len(same_pairs) + [False] * len(diff_pairs))
    fold = np.array(fold_same + fold_diff, dtype=np.int64)
    swap = rng.random(len(pairs)) < 0.5  # random orientation within a pair
    pairs[swap] = pairs[swap][:, ::-1]
    perm = rng.permutation(len(pairs))
    perm = perm[np.argsort(fold[perm], kind="stable")]  # by fold, shuffled within a fold
    pairs, same, fold = pairs[perm], same[perm], fold[perm]
    id_arr = np.array(ids, dtype=str)
    return {
        "video_a": id_arr[pairs[:, 0]],
        "video_b": id_arr[pairs[:, 1]],
        "same": same,
        "fold": fold,
    }


# --------------------------------------------------------------------------- the suite's


def _similarity_layers() -> list[str]:
    return ["pool3", "pool4", "pool5"]


@dataclass
class SimilaritySettings:
    """Action similarity (ASLAN-style): 12 measures per layer, z-norm, linear SVM, k-fold."""

    enabled: bool = False
    pairs: str = "auto"
    """Pairs CSV (video_a,video_b,same,fold; local or s3://), or 'auto': balanced pairs
    made from the manifest's labels with class-disjoint folds (written to DIR/pairs.csv)."""
    layers: list[str] = field(default_factory=_similarity_layers)
    clips: str = "sliding:16:8"
    C: float = 1.0
    num_pairs: int = 600
    """'auto' pairs: how many (fewer when the videos cannot make that many)."""
    num_folds: int = 10

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers)
        _check_clips(f"{prefix}.clips", self.clips)
        _in_range(f"{prefix}.C", self.C, 1e-12, None)
        _in_range(f"{prefix}.num_pairs", self.num_pairs, 4, None)
        _in_range(f"{prefix}.num_folds", self.num_folds, 2, None)


def auto_pairs(ids: list[str], labels: np.ndarray, s: SimilaritySettings, seed: int) -> dict:
    """As many balanced pairs as asked, or as the videos allow (halving on failure)."""
    n = s.num_pairs - s.num_pairs % 2
    folds = min(s.num_folds, max(2, len(set(labels.tolist())) // 2))
    while n >= 2 * folds:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # folds not class-disjoint
                return make_pairs(ids, labels.tolist(), num_pairs=n, num_folds=folds, seed=seed)
        except ValueError:
            n = (n // 2) - (n // 2) % 2
    raise ManifestError(f"similarity: too few labelled videos ({len(ids)}) to make pairs")


@register
class Similarity(Evaluation):
    """Same/not-same accuracy and AUC of the joined layers: "similarity/<l1-l2..>/auc"."""

    name = "similarity"
    settings = SimilaritySettings
    order = 30
    files = ("pairs.csv",)

    def features(self, s: SimilaritySettings, suite: Any) -> dict[str, list[str]]:
        return {s.clips: list(s.layers)}

    def splits(self, s: SimilaritySettings) -> None:
        return None  # pairs may join videos of any split

    def labels(self, s: SimilaritySettings) -> list[tuple[str, str | None]]:
        return [("similarity (auto pairs)", None)] if s.pairs == "auto" else []

    def paths(self, s: SimilaritySettings, suite_dir: Path | None) -> dict[str, str]:
        return {} if s.pairs == "auto" else {"pairs": s.pairs}

    def _pairs(self, s: SimilaritySettings, f: Any, ctx: RunContext) -> dict[str, np.ndarray]:
        if s.pairs != "auto":
            options = storage.StorageOptions(endpoint_url=ctx.suite.data.endpoint_url or None)
            return parse_pairs_csv(storage.read_bytes(s.pairs, options).decode("utf-8"))
        labelled = f.labels >= 0
        ids = [v for v, ok in zip(f.video_ids, labelled, strict=True) if ok]
        pairs = auto_pairs(ids, f.labels[labelled], s, ctx.suite.run.seed)
        write_pairs_csv(ctx.out.path("pairs.csv"), **pairs)
        return pairs

    def run(self, s: SimilaritySettings, ctx: RunContext) -> Outcome:
        f = ctx.features.get(s.clips)
        pairs, dropped = filter_pairs(self._pairs(s, f, ctx), set(f.video_ids))
        per_layer = {
            layer: dict(zip(f.video_ids, vectors(f, layer), strict=True)) for layer in s.layers
        }
        desc = pair_descriptors(per_layer, pairs, layers=s.layers)
        r = similarity_eval(desc, pairs["same"], pairs["fold"], C=s.C, seed=ctx.suite.run.seed)
        key = "-".join(s.layers)
        results = {f"similarity/{key}/accuracy": r["accuracy"]}
        if not math.isnan(r["auc"]):
            results[f"similarity/{key}/auc"] = r["auc"]
        line = (
            f"  {key}: accuracy {r['accuracy']:.3f}, AUC {r['auc']:.3f} "
            f"({r['num_pairs']} pairs, {r['num_folds']} folds, {dropped} pairs without features)"
        )
        return Outcome(results, [f"action similarity ({s.clips})", line])
