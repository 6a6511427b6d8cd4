"""Scaling-law fits (hand-made data) and the report from a real sqlite MLflow store."""

from __future__ import annotations

import json
import math

import matplotlib.image as mpimg
import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric
from scipy import stats

from rayssl.tune.scaling_law import (
    NO_METRIC,
    TrialRecord,
    fit_groups,
    fit_log_linear,
    log_report,
    records_from_mlflow,
    report,
)

METRIC = "downstream/linear/pool5/accuracy"
FRACTIONS = [0.125, 0.25, 0.5, 1.0]


def _rec(backbone, fraction, metric, seed=0, pretext="pace", status="FINISHED", run_id=""):
    return TrialRecord(
        run_id=run_id or f"{backbone}-{pretext}-{fraction}-{seed}",
        backbone=backbone,
        pretext=pretext,
        fraction=fraction,
        seed=seed,
        metric=metric,
        clips_seen=1000.0 * fraction,
        cpu_hours=2.0 * fraction,
        gpu_hours=0.5 * fraction,
        status=status,
    )


def test_exact_data_recovers_a_b():
    fit = fit_log_linear(FRACTIONS, [0.6 + 0.05 * math.log2(f) for f in FRACTIONS])
    assert fit.a == pytest.approx(0.6) and fit.b == pytest.approx(0.05)
    assert fit.r2 == pytest.approx(1.0)
    assert (fit.n, fit.num_fractions, fit.num_seeds) == (4, 4, 1)
    assert fit.b_ci95 is None  # one seed per fraction
    assert fit.predict([0.0625]) == pytest.approx([0.4])


SEEDED = np.repeat([0.0625, 0.125, 0.25, 0.5, 1.0], 3)  # 3 seeds per fraction


def _noisy(rng: np.random.Generator) -> np.ndarray:
    return 0.5 + 0.04 * np.log2(SEEDED) + rng.normal(0, 0.01, SEEDED.size)


def test_noisy_seeds_ci_matches_ols():
    f, y = SEEDED, _noisy(np.random.default_rng(0))
    fit = fit_log_linear(f, y)
    assert fit.num_seeds == 3 and fit.n == 15
    assert fit.b_ci95 is not None
    lo, hi = fit.b_ci95
    assert lo < fit.b < hi and 0.03 < fit.b < 0.05
    assert 0.9 < fit.r2 < 1.0
    ref = stats.linregress(np.log2(f), y)  # an independent OLS
    assert fit.b == pytest.approx(ref.slope) and fit.a == pytest.approx(ref.intercept)
    assert fit.r2 == pytest.approx(ref.rvalue**2)
    half = stats.t.ppf(0.975, f.size - 2) * ref.stderr
    assert (lo, hi) == pytest.approx((ref.slope - half, ref.slope + half))


def test_ci_contains_true_slope_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    fits = [fit_log_linear(SEEDED, _noisy(rng)) for _ in range(400)]
    covered = [f.b_ci95 is not None and f.b_ci95[0] < 0.04 < f.b_ci95[1] for f in fits]
    assert 0.92 <= np.mean(covered) <= 0.98  # binomial sd ~ 0.011 around 0.95
    assert np.mean([f.b for f in fits]) == pytest.approx(0.04, abs=1e-3)  # unbiased


def test_equal_values_fit_exactly():
    fit = fit_log_linear([0.25, 0.5, 0.5, 1.0], [0.3, 0.3, 0.3, 0.3])
    assert fit.b == pytest.approx(0.0) and fit.a == pytest.approx(0.3)
    assert fit.r2 == 1.0
    assert fit.b_ci95 == pytest.approx((0.0, 0.0))


@pytest.mark.parametrize(
    ("fractions", "values", "match"),
    [
        ([0.5, 0.5, 0.5], [0.1, 0.2, 0.3], "2 distinct fractions"),
        ([0.5], [0.1], "2 distinct fractions"),
        ([0.0, 0.5], [0.1, 0.2], "> 0"),
        ([-0.5, 0.5], [0.1, 0.2], "> 0"),
        ([0.25, 0.5], [0.1], "one value per fraction"),
        ([0.25, 0.5], [0.1, float("nan")], "values must be finite"),
    ],
)
def test_bad_input(fractions, values, match):
    with pytest.raises(ValueError, match=match):
        fit_log_linear(fractions, values)


def _sweep() -> list[TrialRecord]:
    """r21d/pace: b = 0.05; r3d/pace: b = 0.02 (2 seeds); s3dg/pace: one fraction."""
    recs = [_rec("r21d", f, 0.6 + 0.05 * math.log2(f)) for f in FRACTIONS]
    recs += [_rec("r3d", f, 0.5 + 0.02 * math.log2(f) + d, seed=s) for f in FRACTIONS
             for s, d in ((0, 0.003), (1, -0.003))]  # fmt: skip
    recs += [_rec("r21d", 0.5, math.nan, seed=1, status="FAILED")]
    recs += [_rec("r21d", 0.25, 0.99, seed=2, status="KILLED")]  # excluded from the fit
    recs += [_rec("s3dg", 0.5, 0.7), _rec("s3dg", 0.5, 0.71, seed=1)]
    return recs


def test_fit_groups_per_backbone():
    fits = fit_groups(_sweep())
    assert set(fits) == {("r21d", "pace"), ("r3d", "pace")}  # s3dg: one fraction
    assert fits[("r21d", "pace")].b == pytest.approx(0.05)
    assert fits[("r21d", "pace")].n == 4  # FAILED and KILLED trials left out
    assert fits[("r3d", "pace")].b == pytest.approx(0.02)
    assert fits[("r3d", "pace")].b_ci95 is not None


def test_report_files(tmp_path):
    result = report(_sweep(), tmp_path / "out", METRIC)
    md, js, png = (tmp_path / "out" / f"scaling_law.{e}" for e in ("md", "json", "png"))
    assert result["files"] == [str(md), str(js), str(png)]
    assert set(result["fits"]) == {("r21d", "pace"), ("r3d", "pace")}
    text = md.read_text()
    assert text == result["table"]
    assert "| r21d | pace | 4 | 0.6000 | +0.0500 | - | 1.0000 |" in text
    assert "| s3dg | pace | 2 | - | - | - | - | no fit: 1 distinct fraction" in text
    assert "| r21d | pace | 0.5 | 1 | - |" in text and "FAILED" in text  # failed trial listed
    data = json.loads(js.read_text())  # strict JSON: NaN written as null
    assert data["metric"] == METRIC
    by_backbone = {f["backbone"]: f for f in data["fits"]}
    assert by_backbone["r3d"]["b"] == pytest.approx(0.02)
    assert data["unfitted"][0]["backbone"] == "s3dg"
    assert len(data["records"]) == len(_sweep())
    assert any(r["metric"] is None and r["status"] == "FAILED" for r in data["records"])
    image = mpimg.imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0.01  # something drawn


def test_report_without_any_fit(tmp_path):
    result = report([_rec("r21d", 0.5, 0.4)], tmp_path, METRIC)
    assert result["fits"] == {}
    assert "no fit: 1 distinct fraction" in result["table"]
    assert all(mpimg.imread(p).ndim == 3 for p in result["files"] if p.endswith(".png"))


# --------------------------------------------------------------------------- MLflow


def _child(client, exp, parent, backbone, fraction, seed, metric, status="FINISHED", **compute):
    tags = {
        "mlflow.parentRunId": parent,
        "rayssl.sweep.backbone": backbone,
        "rayssl.sweep.pretext": "pace",
        "rayssl.sweep.fraction": str(fraction),
        "rayssl.sweep.seed": str(seed),
    }
    rid = client.create_run(exp, run_name=f"{backbone}-{fraction}-{seed}", tags=tags).info.run_id
    values = {METRIC: metric} if metric is not None else {}
    values.update({f"compute/{k}": v for k, v in compute.items()})
    client.log_batch(rid, metrics=[Metric(k, v, 0, 0) for k, v in values.items()])
    client.set_terminated(rid, status=status)
    return rid


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[str, str, dict]:
    """(tracking URI, parent run id, {fraction or 'failed' / 'nometric': child run id}): a
    sqlite store shared by the module (creating its tables takes seconds)."""
    tmp = tmp_path_factory.mktemp("mlflow")
    tracking = f"sqlite:///{tmp / 'mlruns.db'}"
    client = mlflow.MlflowClient(tracking)
    exp = client.create_experiment("sweep", artifact_location=str(tmp / "artifacts"))
    parent = client.create_run(exp, run_name="sweep").info.run_id
    ids: dict = {}
    for f in FRACTIONS:
        ids[f] = _child(
            client, exp, parent, "r21d", f, 0, 0.6 + 0.05 * math.log2(f),
            clips_seen=1e4 * f, cpu_hours=3.0 * f, gpu_hours=1.5 * f,
        )  # fmt: skip
    ids["failed"] = _child(client, exp, parent, "r21d", 0.5, 1, 0.99, status="FAILED")
    ids["nometric"] = _child(client, exp, parent, "r21d", 0.25, 1, None)
    # not trials: a nested run without sweep tags, a child of another parent
    client.create_run(exp, tags={"mlflow.parentRunId": parent})
    other = client.create_run(exp).info.run_id
    _child(client, exp, other, "r3d", 0.5, 0, 0.1)
    return tracking, parent, ids


def test_records_from_mlflow(sweep):
    tracking, parent, ids = sweep
    records = {r.run_id: r for r in records_from_mlflow(tracking, parent, METRIC)}
    assert set(records) == set(ids.values())
    full = records[ids[1.0]]
    assert (full.backbone, full.pretext, full.fraction, full.seed) == ("r21d", "pace", 1.0, 0)
    assert full.metric == pytest.approx(0.6) and full.status == "FINISHED"
    assert (full.clips_seen, full.cpu_hours, full.gpu_hours) == (1e4, 3.0, 1.5)
    failed = records[ids["failed"]]
    assert failed.status == "FAILED" and math.isnan(failed.metric)  # its 0.99 is not used
    assert failed.clips_seen == 0.0 and failed.gpu_hours == 0.0  # missing -> 0
    nometric = records[ids["nometric"]]
    assert nometric.status == NO_METRIC and math.isnan(nometric.metric)
    fits = fit_groups(records.values())
    assert fits[("r21d", "pace")].n == 4 and fits[("r21d", "pace")].b == pytest.approx(0.05)
    with pytest.raises(ValueError, match="no MLflow run"):
        records_from_mlflow(tracking, "0123456789abcdef", METRIC)


def test_log_report_on_parent(sweep, tmp_path):
    tracking, parent, _ = sweep
    client = mlflow.MlflowClient(tracking)
    result = report(records_from_mlflow(tracking, parent, METRIC), tmp_path / "out", METRIC)
    assert "| r21d | pace | 0.5 | 1 | - |" in result["table"]  # the FAILED child is listed
    log_report(tracking, parent, result)
    names = {a.path for a in client.list_artifacts(parent, "scaling_law")}
    assert names == {f"scaling_law/scaling_law.{e}" for e in ("md", "json", "png")}
    metrics = client.get_run(parent).data.metrics
    assert metrics["scaling/r21d/pace/b"] == pytest.approx(0.05)
    assert metrics["scaling/r21d/pace/r2"] == pytest.approx(1.0)
    assert metrics["scaling/r21d/pace/a"] == pytest.approx(0.6)
    assert "scaling/r21d/pace/b_ci95_low" not in metrics  # one seed: no CI
