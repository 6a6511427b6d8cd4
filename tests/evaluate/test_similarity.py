"""Tests of the ASLAN-style action-similarity evaluation (rayssl.evaluate.similarity)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from rayssl.evaluate.similarity import (
    MEASURES,
    filter_pairs,
    make_pairs,
    pair_descriptors,
    pair_measures,
    parse_pairs_csv,
    similarity_eval,
    write_pairs_csv,
)

EPS = 1e-10


# --------------------------------------------------------------------------------------------
# Reference: the 12 measures, per element with math, written independently of the module.
# --------------------------------------------------------------------------------------------


def ref_measures(a: list[float], b: list[float]) -> list[float]:
    a = [max(0.0, v) for v in a]
    b = [max(0.0, v) for v in b]
    dot = 0.0
    bhat = 0.0
    harm = 0.0
    aa = 0.0
    bb = 0.0
    chi = 0.0
    l1 = 0.0
    hell = 0.0
    kl_ab = 0.0
    kl_ba = 0.0
    l2 = 0.0
    maxr = 0.0
    inter = 0.0
    sa = 0.0
    sb = 0.0
    for x, y in zip(a, b, strict=True):
        dot += x * y
        bhat += math.sqrt(x) * math.sqrt(y)
        if x + y > 0:
            harm += x * y / (x + y)
            chi += (x - y) ** 2 / (x + y)
            maxr += math.sqrt(max(x, y)) / math.sqrt(x + y)
        else:
            maxr += 1 / math.sqrt(2)
        aa += x * x
        bb += y * y
        l1 += abs(x - y)
        hell += (math.sqrt(x) - math.sqrt(y)) ** 2
        xe, ye = x + EPS, y + EPS
        kl_ab += xe * math.log(xe / ye)
        kl_ba += ye * math.log(ye / xe)
        l2 += (x - y) ** 2
        inter += min(x, y)
        sa += x
        sb += y
    cos = dot / (math.sqrt(aa) * math.sqrt(bb)) if aa > 0 and bb > 0 else 0.0
    nint = inter / (sa * sb) if sa > 0 and sb > 0 else 0.0
    return [
        dot,
        math.sqrt(dot),
        math.sqrt(bhat),
        math.sqrt(harm),
        cos,
        math.sqrt(chi),
        l1,
        math.sqrt(hell),
        (kl_ab + kl_ba) / 2,
        math.sqrt(l2),
        maxr,
        nint,
    ]


def test_measure_names_and_order():
    assert MEASURES == (
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


def test_measures_match_loop_reference_on_random_vectors():
    rng = np.random.default_rng(0)
    x1 = rng.random((25, 17))
    x2 = rng.random((25, 17))
    x1[x1 < 0.2] = 0.0  # sprinkle exact zeros (incl. positions where both are 0)
    x2[x2 < 0.2] = 0.0
    x1[3] *= 40.0  # unnormalised scale too
    got = pair_measures(x1, x2)
    assert got.shape == (25, 12)
    assert got.dtype == np.float64
    for i in range(25):
        want = ref_measures(x1[i].tolist(), x2[i].tolist())
        for j, name in enumerate(MEASURES):
            assert got[i, j] == pytest.approx(want[j], rel=1e-9, abs=1e-12), (i, name)


# Hand-worked values; column order as MEASURES.
S2 = math.sqrt(2.0)
KL_DISJOINT = math.log((1 + EPS) / EPS)  # ~ 10 ln 10 = 23.0258509...
HAND_CASES = [
    # a=[1,0], b=[0,1]: no overlap. dot=0, sqrt_dot=0, bhat=0, harmonic terms 0/1=0 -> 0,
    # cosine 0; chi2 = sqrt(1/1+1/1)=sqrt2; l1 = 2; hellinger = sqrt(1+1) = sqrt2;
    # sym_kl = ((1+e)log((1+e)/e) + e log(e/(1+e)) + e log(e/(1+e)) + (1+e) log((1+e)/e))/2
    #        = log((1+e)/e); l2 = sqrt2; max_ratio = 1/1 + 1/1 = 2; norm_int = 0/(1*1) = 0.
    ([1.0, 0.0], [0.0, 1.0], [0, 0, 0, 0, 0, S2, 2, S2, KL_DISJOINT, S2, 2, 0]),
    # a=b=[0.6,0.8] (unit norm): dot = .36+.64 = 1, sqrt_dot 1, bhat sqrt(.6+.8) = sqrt(1.4),
    # harmonic sqrt(sum a/2) = sqrt(.7), cosine 1, distances 0, max_ratio 2*(1/sqrt2) = sqrt2,
    # norm_int = 1.4 / (1.4*1.4) = 1/1.4.
    (
        [0.6, 0.8],
        [0.6, 0.8],
        [1, 1, math.sqrt(1.4), math.sqrt(0.7), 1, 0, 0, 0, 0, 0, S2, 1 / 1.4],
    ),
    # a=b=[1,0] (a zero in both): dot 1, bhat sqrt(1)=1, harmonic sqrt(1/2), cosine 1,
    # distances 0, max_ratio = 1/sqrt2 + (0/0 term) 1/sqrt2 = sqrt2, norm_int = 1/(1*1) = 1.
    ([1.0, 0.0], [1.0, 0.0], [1, 1, 1, math.sqrt(0.5), 1, 0, 0, 0, 0, 0, S2, 1]),
    # a=[4,1], b=[1,1]: dot = 4+1 = 5; bhat = sqrt(2*1 + 1*1) = sqrt3;
    # harmonic = sqrt(4/5 + 1/2) = sqrt(1.3); cosine = 5/(sqrt17*sqrt2) = 5/sqrt34;
    # chi2 = sqrt(9/5 + 0) = sqrt(1.8); l1 = 3; hellinger = sqrt((2-1)^2 + 0) = 1;
    # sym_kl = (4-1)*ln(4/1)/2 = 3 ln2 (eps effect ~1e-10); l2 = 3;
    # max_ratio = sqrt4/sqrt5 + sqrt1/sqrt2 = 2/sqrt5 + 1/sqrt2; norm_int = (1+1)/(5*2) = 0.2.
    (
        [4.0, 1.0],
        [1.0, 1.0],
        [
            5,
            math.sqrt(5),
            math.sqrt(3),
            math.sqrt(1.3),
            5 / math.sqrt(34),
            math.sqrt(1.8),
            3,
            1,
            3 * math.log(2),
            3,
            2 / math.sqrt(5) + 1 / S2,
            0.2,
        ],
    ),
]


@pytest.mark.parametrize("a,b,want", HAND_CASES)
def test_measures_hand_worked(a, b, want):
    got = pair_measures(np.array([a]), np.array([b]))[0]
    for j, name in enumerate(MEASURES):
        assert got[j] == pytest.approx(want[j], rel=1e-8, abs=1e-9), name
    # every measure is symmetric in (a, b)
    np.testing.assert_allclose(pair_measures(np.array([b]), np.array([a]))[0], got, rtol=1e-12)


def test_zero_vectors_are_finite():
    z = np.zeros((2, 5))
    x = np.abs(np.random.default_rng(1).normal(size=(2, 5)))
    for a, b in [(z, z), (z, x), (x, z)]:
        got = pair_measures(a, b)
        assert np.isfinite(got).all()
    both = pair_measures(z, z)[0]
    # all terms 0 except max_ratio: 5 zero terms at 1/sqrt2 each; cosine & norm_int defined 0
    want = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5 / S2, 0]
    np.testing.assert_allclose(both, want, atol=1e-12)
    one = pair_measures(z[:1], x[:1])[0]
    assert one[4] == 0.0 and one[11] == 0.0  # cosine, norm_intersection with a zero vector


def test_negative_inputs_are_clipped():
    rng = np.random.default_rng(2)
    x1 = rng.normal(size=(6, 9))
    x2 = rng.normal(size=(6, 9))
    got = pair_measures(x1, x2)
    np.testing.assert_array_equal(got, pair_measures(np.clip(x1, 0, None), np.clip(x2, 0, None)))
    assert np.isfinite(got).all()


def test_measures_input_validation():
    with pytest.raises(ValueError):
        pair_measures(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError):
        pair_measures(np.zeros(3), np.zeros(3))
    bad = np.ones((1, 3))
    bad[0, 1] = np.nan
    with pytest.raises(ValueError):
        pair_measures(bad, np.ones((1, 3)))


# --------------------------------------------------------------------------------------------
# Pairs CSV
# --------------------------------------------------------------------------------------------


def test_parse_pairs_csv_good():
    text = (
        "video_a,video_b,same,fold\n"
        "v1,v2,1,1\n"
        "v1,v3,0,1\n"
        "\n"
        "v4,v5,TRUE,2\n"
        "v4,v6,false,2\n"
        "v7,v8,Yes,3\n"
        "v7,v9,no,3\n"
        "v10,v11,same,4\n"
        '"v,12",v13,NOT_SAME,4\n'
    )
    p = parse_pairs_csv(text)
    assert set(p) == {"video_a", "video_b", "same", "fold"}
    assert p["video_a"].tolist() == ["v1", "v1", "v4", "v4", "v7", "v7", "v10", "v,12"]
    assert p["video_b"].tolist() == ["v2", "v3", "v5", "v6", "v8", "v9", "v11", "v13"]
    assert p["same"].dtype == bool
    assert p["same"].tolist() == [True, False] * 4
    assert np.issubdtype(p["fold"].dtype, np.integer)
    assert p["fold"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]


def test_parse_pairs_csv_column_order_and_extra_columns():
    text = "fold,note,same,video_b,video_a\r\n3,x,0,b1,a1\r\n7,y,1,b2,a2\r\n"
    p = parse_pairs_csv(text)
    assert p["video_a"].tolist() == ["a1", "a2"]
    assert p["video_b"].tolist() == ["b1", "b2"]
    assert p["same"].tolist() == [False, True]
    assert p["fold"].tolist() == [3, 7]


def test_parse_pairs_csv_header_only():
    p = parse_pairs_csv("video_a,video_b,same,fold\n")
    assert all(len(v) == 0 for v in p.values())


def test_parse_pairs_csv_missing_columns():
    with pytest.raises(ValueError, match="missing column.*same.*fold|missing column.*fold"):
        parse_pairs_csv("video_a,video_b,label\nv1,v2,1\n")
    with pytest.raises(ValueError) as err:
        parse_pairs_csv("video_a,video_b,label\nv1,v2,1\n")
    assert "same" in str(err.value) and "fold" in str(err.value)
    assert "video_a" not in str(err.value).split("missing")[1].split("(")[0]
    with pytest.raises(ValueError, match="empty"):
        parse_pairs_csv("\n\n")


def test_parse_pairs_csv_bad_values_name_the_line():
    head = "video_a,video_b,same,fold\n"
    with pytest.raises(ValueError, match=r"line 3.*'maybe'"):
        parse_pairs_csv(head + "v1,v2,1,1\nv1,v3,maybe,1\n")
    with pytest.raises(ValueError, match=r"line 2.*fold"):
        parse_pairs_csv(head + "v1,v2,1,one\n")
    with pytest.raises(ValueError, match=r"line 4.*malformed"):
        parse_pairs_csv(head + "v1,v2,1,1\nv1,v3,0,1\nv1,v4,0\n")
    with pytest.raises(ValueError, match=r"line 2.*empty video id"):
        parse_pairs_csv(head + ",v2,1,1\n")


def test_write_and_parse_roundtrip(tmp_path: Path):
    out = tmp_path / "sub" / "pairs.csv"
    write_pairs_csv(out, ["a", "b,c"], ["d", "e"], [True, False], [1, 2])
    text = out.read_text()
    assert text.splitlines()[0] == "video_a,video_b,same,fold"
    assert text.splitlines()[1] == "a,d,1,1"
    p = parse_pairs_csv(text)
    assert p["video_a"].tolist() == ["a", "b,c"]
    assert p["same"].tolist() == [True, False]
    assert p["fold"].tolist() == [1, 2]
    with pytest.raises(ValueError):
        write_pairs_csv(out, ["a"], ["b", "c"], [True], [1])


# --------------------------------------------------------------------------------------------
# Descriptors
# --------------------------------------------------------------------------------------------


def _features(rng: np.random.Generator, ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    dims = {"pool3": 8, "pool4": 6, "pool5": 4}
    return {layer: {v: rng.random(d) * 5 for v in ids} for layer, d in dims.items()}


def test_pair_descriptors_layout_and_normalisation():
    rng = np.random.default_rng(3)
    ids = [f"v{i}" for i in range(6)]
    feats = _features(rng, ids)
    pairs = {
        "video_a": np.array(["v0", "v1", "v2", "v5"]),
        "video_b": np.array(["v3", "v1", "v4", "v0"]),
    }
    d = pair_descriptors(feats, pairs)
    assert d.shape == (4, 36)
    for k, layer in enumerate(["pool3", "pool4", "pool5"]):
        a = np.stack([feats[layer][v] for v in pairs["video_a"]])
        b = np.stack([feats[layer][v] for v in pairs["video_b"]])
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        b /= np.linalg.norm(b, axis=1, keepdims=True)
        np.testing.assert_allclose(d[:, 12 * k : 12 * (k + 1)], pair_measures(a, b), rtol=1e-12)
    # L2-normalised: identical videos have dot = cosine = 1; scaling a raw vector changes nothing
    np.testing.assert_allclose(d[1, [0, 4, 12, 16, 24, 28]], 1.0, rtol=1e-12)
    scaled = {layer: dict(t) for layer, t in feats.items()}
    scaled["pool4"]["v0"] = feats["pool4"]["v0"] * 123.0
    np.testing.assert_allclose(pair_descriptors(scaled, pairs), d, rtol=1e-10)
    # layer selection and order
    d54 = pair_descriptors(feats, pairs, layers=("pool5", "pool4"))
    np.testing.assert_allclose(d54, np.concatenate([d[:, 24:36], d[:, 12:24]], axis=1))


def test_pair_descriptors_missing_video_and_filter_pairs():
    rng = np.random.default_rng(4)
    ids = ["v0", "v1", "v2"]
    feats = _features(rng, ids)
    pairs = {
        "video_a": np.array(["v0", "v1", "ghost", "v2"]),
        "video_b": np.array(["v1", "v2", "v0", "v9"]),
        "same": np.array([True, False, True, False]),
        "fold": np.array([1, 1, 2, 2]),
    }
    with pytest.raises(KeyError, match="ghost"):
        pair_descriptors(feats, pairs)
    kept, dropped = filter_pairs(pairs, ids)
    assert dropped == 2
    assert kept["video_a"].tolist() == ["v0", "v1"]
    assert kept["same"].tolist() == [True, False]
    assert kept["fold"].tolist() == [1, 1]
    assert pair_descriptors(feats, kept).shape == (2, 36)


# --------------------------------------------------------------------------------------------
# Cross-validated SVM
# --------------------------------------------------------------------------------------------


def _separable(n: int, num_folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = np.arange(n) % 2 == 0
    x = rng.normal(size=(n, 5))
    x[:, 0] = np.where(same, 1.0, -1.0) * rng.uniform(1.0, 2.0, size=n)
    folds = (np.arange(n) // 2) % num_folds + 1  # each fold gets both classes
    return x, same, folds


def test_similarity_eval_perfect_separation():
    x, same, folds = _separable(200, 10, 5)
    res = similarity_eval(x, same, folds)
    assert res["accuracy"] == 1.0
    assert res["auc"] == 1.0
    assert res["num_folds"] == 10 and res["num_pairs"] == 200
    assert res["fold_accuracy"] == [1.0] * 10
    assert res["fold_auc"] == [1.0] * 10


def test_similarity_eval_random_descriptors_near_chance():
    rng = np.random.default_rng(6)
    n = 2000
    x = rng.normal(size=(n, 36))
    same = rng.random(n) < 0.5
    folds = rng.integers(0, 10, size=n)
    res = similarity_eval(x, same, folds)
    assert 0.44 < res["accuracy"] < 0.56
    assert 0.44 < res["auc"] < 0.56
    assert len(res["fold_accuracy"]) == len(res["fold_auc"]) == 10


def test_similarity_eval_normalises_with_training_folds_only():
    # Fold 2's test rows are normal except one "same" row pushed to an extreme outlier in the
    # "same" direction. With train-only statistics the model is fit on fold 1 alone, so fold 2
    # is still classified perfectly (the outlier lies deeper on the correct side). If the test
    # rows' statistics leaked into the normalisation (test-own or pooled mean/std), the outlier
    # would drag the mean to ~1e4..5e4 and inflate the std: the other fold-2 rows would all fall
    # on one side of the boundary (or the training rows would be squashed to ~1e-5 apart), and
    # fold 2's accuracy would drop to ~0.5.
    x, same, folds = _separable(40, 2, 7)
    x = x[:, :1]
    base = similarity_eval(x, same, folds)
    assert base["fold_accuracy"] == [1.0, 1.0]
    xo = x.copy()
    outlier = np.flatnonzero((folds == 2) & same)[0]
    xo[outlier, 0] = 1e6
    res = similarity_eval(xo, same, folds)
    assert res["fold_accuracy"][1] == 1.0
    assert res["fold_auc"][1] == 1.0


def test_similarity_eval_constant_training_column():
    # A column constant within each training part (0.1 on fold 1, 0.3 on fold 2) has zero std
    # there (0.1 * 6 rows even gives a rounding-level std ~1e-17): it must be treated as std 1,
    # so it is all-zero in training, gets zero weight, and the result equals that without it.
    # Dividing by the raw std would give NaN (exact 0) or ~1e16-sized test values.
    x, same, folds = _separable(12, 2, 9)
    x = x[:, :1]
    const = np.where(folds == 1, 0.1, 0.3)[:, None]
    res = similarity_eval(np.hstack([x, const]), same, folds)
    ref = similarity_eval(x, same, folds)
    assert ref["fold_accuracy"] == [1.0, 1.0]
    assert res["fold_accuracy"] == ref["fold_accuracy"]
    assert res["fold_auc"] == ref["fold_auc"]


def test_similarity_eval_single_class_parts():
    # Fold 2 holds only "same" pairs: evaluating fold 1 trains on one class -> predicts "same"
    # for all of fold 1 (accuracy = its fraction of same, 4/6) with constant scores (AUC 0.5);
    # fold 2's test part has one class -> NaN AUC, excluded from the mean.
    rng = np.random.default_rng(10)
    x = rng.normal(size=(12, 3))
    same = np.array([True, False, True, True, False, True] + [True] * 6)
    folds = np.array([1] * 6 + [2] * 6)
    res = similarity_eval(x, same, folds)
    assert res["fold_accuracy"][0] == pytest.approx(4 / 6)
    assert res["fold_auc"][0] == pytest.approx(0.5)
    assert math.isnan(res["fold_auc"][1])
    assert res["auc"] == pytest.approx(0.5)
    # fold 2 is scored by an SVM trained on fold 1 (random x): only check the mean
    assert res["accuracy"] == pytest.approx(np.mean(res["fold_accuracy"]))


def test_similarity_eval_validation():
    x, same, _ = _separable(20, 2, 8)
    with pytest.raises(ValueError, match="2 distinct folds"):
        similarity_eval(x, same, np.ones(20, dtype=int))
    with pytest.raises(ValueError):
        similarity_eval(x, same[:10], np.arange(20) % 2)
    with pytest.raises(ValueError):
        similarity_eval(x[:, 0], same, np.arange(20) % 2)


# --------------------------------------------------------------------------------------------
# make_pairs
# --------------------------------------------------------------------------------------------


def _labelled(num_classes: int, per_class: int) -> tuple[list[str], list[str]]:
    ids = [f"c{c:02d}_v{i}" for c in range(num_classes) for i in range(per_class)]
    labels = [f"class{c:02d}" for c in range(num_classes) for _ in range(per_class)]
    return ids, labels


def _check_pairs(p: dict, ids: list[str], labels: list[str], num_pairs: int) -> None:
    lab = dict(zip(ids, labels, strict=True))
    assert len(p["video_a"]) == num_pairs
    assert int(p["same"].sum()) == num_pairs // 2  # balanced
    for a, b, s in zip(p["video_a"], p["video_b"], p["same"], strict=True):
        assert a != b
        assert (lab[a] == lab[b]) == bool(s)
    keys = {frozenset((a, b)) for a, b in zip(p["video_a"], p["video_b"], strict=True)}
    assert len(keys) == num_pairs  # distinct pairs


def test_make_pairs_class_disjoint_folds():
    ids, labels = _labelled(40, 5)
    p = make_pairs(ids, labels, num_pairs=200, num_folds=10, seed=0)
    _check_pairs(p, ids, labels, 200)
    lab = dict(zip(ids, labels, strict=True))
    assert sorted(set(p["fold"].tolist())) == list(range(1, 11))
    classes_of_fold = {}
    for f in range(1, 11):
        m = p["fold"] == f
        assert m.sum() == 20 and p["same"][m].sum() == 10  # balanced per fold
        classes_of_fold[f] = {lab[v] for v in np.concatenate([p["video_a"][m], p["video_b"][m]])}
    for f in range(1, 11):
        for g in range(f + 1, 11):
            assert not classes_of_fold[f] & classes_of_fold[g], (f, g)
    # usable end to end through the CSV format
    assert (
        parse_pairs_csv(
            "video_a,video_b,same,fold\n"
            + "".join(
                f"{a},{b},{int(s)},{f}\n"
                for a, b, s, f in zip(p["video_a"], p["video_b"], p["same"], p["fold"], strict=True)
            )
        )["fold"].tolist()
        == p["fold"].tolist()
    )


def test_make_pairs_deterministic():
    ids, labels = _labelled(30, 4)
    p1 = make_pairs(ids, labels, num_pairs=60, num_folds=10, seed=3)
    p2 = make_pairs(ids, labels, num_pairs=60, num_folds=10, seed=3)
    p3 = make_pairs(ids, labels, num_pairs=60, num_folds=10, seed=4)
    for k in p1:
        np.testing.assert_array_equal(p1[k], p2[k])
    assert any(not np.array_equal(p1[k], p3[k]) for k in ("video_a", "video_b"))


def test_make_pairs_sparse_sampling_large_pool():
    # few pairs from many candidates: the rejection-sampling path
    ids, labels = _labelled(20, 30)
    p = make_pairs(ids, labels, num_pairs=40, num_folds=2, seed=1)
    _check_pairs(p, ids, labels, 40)


def test_make_pairs_fallback_with_few_classes():
    ids, labels = _labelled(4, 6)
    with pytest.warns(UserWarning, match="class-disjoint"):
        p = make_pairs(ids, labels, num_pairs=40, num_folds=10, seed=0)
    _check_pairs(p, ids, labels, 40)
    assert sorted(set(p["fold"].tolist())) == list(range(1, 11))
    for f in range(1, 11):
        m = p["fold"] == f
        assert p["same"][m].sum() == 2 and (~p["same"][m]).sum() == 2


def test_make_pairs_validation():
    ids, labels = _labelled(4, 2)
    with pytest.raises(ValueError):
        make_pairs(ids, labels, num_pairs=7, num_folds=2)
    with pytest.raises(ValueError):
        make_pairs(ids, labels[:-1], num_pairs=8, num_folds=2)
    with pytest.raises(ValueError):
        make_pairs(ids, labels, num_pairs=8, num_folds=1)
    with (
        pytest.warns(UserWarning),
        pytest.raises(ValueError, match="cannot make"),
    ):
        make_pairs(ids, labels, num_pairs=20, num_folds=2)  # only 4 same pairs exist
