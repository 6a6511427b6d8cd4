"""The scaling-law report of a data-scaling sweep.

A sweep pre-trains every (backbone, pretext) on several fractions of the pre-training
set (and seeds), evaluates each trial downstream, and logs each trial as a child MLflow
run of one parent run. Following J. Wang, "Self-supervised Video Representation
Learning" (PhD thesis, CUHK 2020, section 3.5.2), where downstream accuracy grows
log-linearly with the fraction of Kinetics-400 used for pre-training, with a different
slope per backbone, each (backbone, pretext) gets the least-squares line

    metric = a + b * log2(fraction)

so `a` is the metric at the full data (fraction 1) and `b` the gain per doubling of data.

The MLflow contract for the child runs of the parent (what the sweep driver logs):

* tags `rayssl.sweep.backbone`, `rayssl.sweep.pretext`, `rayssl.sweep.fraction`
  (a float in (0, 1]) and `rayssl.sweep.seed` (an int); children without them (e.g.
  evaluation runs nested under the parent) are not trials and are ignored;
* the downstream metric as an MLflow metric (its latest value), e.g.
  `downstream/linear/pool5/accuracy`;
* metrics `compute/clips_seen`, `compute/cpu_hours`, `compute/gpu_hours` (0.0 if missing).

Trials that did not finish or lack the metric are reported (with their status) but left
out of the fits. `report` writes DIR/scaling_law.md, .json and .png; `log_report` puts
them on the parent run under `scaling_law/` with the fits as `scaling/<backbone>/<pretext>/*`
metrics.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.io.storage import redact
from rayssl.train.tracking import filter_tag, log_metric_values

TAG_PREFIX = "rayssl.sweep."
BACKBONE_TAG = TAG_PREFIX + "backbone"
PRETEXT_TAG = TAG_PREFIX + "pretext"
FRACTION_TAG = TAG_PREFIX + "fraction"
SEED_TAG = TAG_PREFIX + "seed"
CLIPS_SEEN = "compute/clips_seen"
CPU_HOURS = "compute/cpu_hours"
GPU_HOURS = "compute/gpu_hours"
#: TrialRecord.status of a FINISHED run that did not log the downstream metric.
NO_METRIC = "NO_METRIC"
FILES = ("scaling_law.md", "scaling_law.json", "scaling_law.png")

GroupKey = tuple[str, str]
"""(backbone, pretext)."""


@dataclass
class TrialRecord:
    """One trial of the sweep: a (backbone, pretext, fraction, seed) pre-training run."""

    run_id: str
    backbone: str
    pretext: str
    fraction: float
    seed: int
    metric: float
    """The downstream metric; NaN when the trial failed or did not log it."""
    clips_seen: float
    cpu_hours: float
    gpu_hours: float
    status: str = "FINISHED"
    """The MLflow run status, or NO_METRIC for a finished run without the metric."""

    @property
    def usable(self) -> bool:
        """Whether the trial enters the fits: finished, with a finite metric."""
        return self.status == "FINISHED" and math.isfinite(self.metric)


@dataclass
class Fit:
    """The least-squares line metric = a + b * log2(fraction) of one group of trials."""

    a: float
    """The fitted metric at fraction 1 (all the data)."""
    b: float
    """The fitted gain of the metric per doubling of the data."""
    r2: float
    """Coefficient of determination; 1.0 when all values are equal (a flat line fits
    them exactly, although 1 - SS_res / SS_tot is 0 / 0)."""
    n: int
    """Number of observations."""
    num_fractions: int
    """Number of distinct fractions."""
    num_seeds: int
    """Most observations at one fraction (1: one seed per fraction)."""
    b_ci95: tuple[float, float] | None
    """95% confidence interval of b (Student t, n - 2 dof); None with one seed per
    fraction (the scatter of a single seed says little about the noise) or n <= 2."""

    def predict(self, fractions: Sequence[float] | np.ndarray) -> np.ndarray:
        """The fitted metric at `fractions`."""
        return self.a + self.b * np.log2(np.asarray(fractions, dtype=np.float64))


def fit_log_linear(
    fractions: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray
) -> Fit:
    """Ordinary least squares of value = a + b * log2(fraction).

    Args:
        fractions: data fractions, all > 0 (repeats = several seeds at one fraction).
        values: the metric of each observation, finite.

    Raises:
        ValueError: mismatched lengths, a non-positive or non-finite fraction, a
            non-finite value, or fewer than 2 distinct fractions (no slope to fit).
    """
    f = np.asarray(fractions, dtype=np.float64).ravel()
    y = np.asarray(values, dtype=np.float64).ravel()
    if f.shape != y.shape:
        raise ValueError(f"{f.size} fractions but {y.size} values: one value per fraction")
    if not np.all(np.isfinite(f)) or np.any(f <= 0):
        raise ValueError(f"fractions must be finite and > 0 (log2 is taken), got {f.tolist()}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"values must be finite, got {y.tolist()}")
    distinct, counts = np.unique(f, return_counts=True)
    if distinct.size < 2:
        raise ValueError(
            f"a log-linear fit needs at least 2 distinct fractions, got {distinct.tolist()}"
        )
    x = np.log2(f)
    n = int(f.size)
    x_mean, y_mean = x.mean(), y.mean()
    sxx = float(np.sum((x - x_mean) ** 2))
    b = float(np.sum((x - x_mean) * (y - y_mean)) / sxx)
    a = float(y_mean - b * x_mean)
    residuals = y - (a + b * x)
    ss_res = float(np.sum(residuals**2))
    ss_tot = float(np.sum((y - y_mean) ** 2))
    r2 = 1.0 if np.ptp(y) == 0 else 1.0 - ss_res / ss_tot
    num_seeds = int(counts.max())
    ci: tuple[float, float] | None = None
    if num_seeds > 1 and n > 2:
        from scipy import stats  # lazy: SciPy is a heavy import that only this path needs

        se_b = math.sqrt(ss_res / (n - 2) / sxx)
        half = float(stats.t.ppf(0.975, n - 2)) * se_b
        ci = (b - half, b + half)
    return Fit(
        a=a,
        b=b,
        r2=float(r2),
        n=n,
        num_fractions=int(distinct.size),
        num_seeds=num_seeds,
        b_ci95=ci,
    )


def group_records(records: Iterable[TrialRecord]) -> dict[GroupKey, list[TrialRecord]]:
    """Records by (backbone, pretext), sorted keys, each group by (fraction, seed)."""
    groups: dict[GroupKey, list[TrialRecord]] = {}
    for r in records:
        groups.setdefault((r.backbone, r.pretext), []).append(r)
    return {
        k: sorted(groups[k], key=lambda r: (r.fraction, r.seed, r.run_id)) for k in sorted(groups)
    }


def _why_no_fit(group: Sequence[TrialRecord]) -> str | None:
    """Why a group gets no fit, or None when it can be fitted."""
    usable = [r for r in group if r.usable]
    if not usable:
        return "no finished trial with the metric"
    distinct = len({r.fraction for r in usable})
    if distinct < 2:
        return f"{distinct} distinct fraction among finished trials (a fit needs 2)"
    return None


def fit_groups(records: Iterable[TrialRecord]) -> dict[GroupKey, Fit]:
    """One fit per (backbone, pretext) over its finished trials with a finite metric;
    groups with fewer than 2 distinct fractions among those are left out."""
    fits: dict[GroupKey, Fit] = {}
    for key, group in group_records(records).items():
        if _why_no_fit(group) is None:
            usable = [r for r in group if r.usable]
            fits[key] = fit_log_linear([r.fraction for r in usable], [r.metric for r in usable])
    return fits


# --------------------------------------------------------------------------- report


def _num(v: float, fmt: str = ".4f") -> str:
    return format(v, fmt) if math.isfinite(v) else "-"


def fits_table(
    groups: Mapping[GroupKey, Sequence[TrialRecord]], fits: Mapping[GroupKey, Fit]
) -> str:
    """The markdown table of the fits: one row per (backbone, pretext) of `groups`."""
    lines = [
        "| backbone | pretext | n | a (at fraction 1) | b (per doubling of data) "
        "| 95% CI of b | R^2 | note |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for (backbone, pretext), group in groups.items():
        fit = fits.get((backbone, pretext))
        if fit is None:
            n = sum(r.usable for r in group)
            why = _why_no_fit(group) or ""
            lines.append(f"| {backbone} | {pretext} | {n} | - | - | - | - | no fit: {why} |")
            continue
        ci = f"[{fit.b_ci95[0]:+.4f}, {fit.b_ci95[1]:+.4f}]" if fit.b_ci95 else "-"
        note = "" if fit.b_ci95 else "one seed per fraction: no CI"
        lines.append(
            f"| {backbone} | {pretext} | {fit.n} | {fit.a:.4f} | {fit.b:+.4f} | {ci} "
            f"| {_num(fit.r2)} | {note} |"
        )
    return "\n".join(lines)


def trials_table(records: Iterable[TrialRecord]) -> str:
    """The markdown table of every trial, failed ones included (metric '-')."""
    lines = [
        "| backbone | pretext | fraction | seed | metric | clips seen | CPU-hours "
        "| GPU-hours | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for group in group_records(records).values():
        for r in group:
            lines.append(
                f"| {r.backbone} | {r.pretext} | {r.fraction:g} | {r.seed} | {_num(r.metric)} "
                f"| {r.clips_seen:,.0f} | {r.cpu_hours:.2f} | {r.gpu_hours:.2f} | {r.status} |"
            )
    return "\n".join(lines)


def _markdown(
    records: Sequence[TrialRecord],
    groups: Mapping[GroupKey, Sequence[TrialRecord]],
    fits: Mapping[GroupKey, Fit],
    metric_name: str,
) -> str:
    usable = sum(r.usable for r in records)
    return "\n".join(
        [
            f"# Scaling law: {metric_name} against the pre-training data fraction",
            "",
            f"Least squares of `{metric_name} = a + b * log2(fraction)` per backbone and "
            "pretext over finished trials: a = the metric with all the data, b = its gain "
            "per doubling of the data.",
            "",
            fits_table(groups, fits),
            "",
            f"## Trials ({len(records)}, {usable} used in the fits)",
            "",
            trials_table(records),
            "",
            f"Total compute: {sum(r.clips_seen for r in records):,.0f} clips, "
            f"{sum(r.cpu_hours for r in records):.2f} CPU-hours, "
            f"{sum(r.gpu_hours for r in records):.2f} GPU-hours.",
            "",
        ]
    )


def _json_safe(v: Any) -> Any:
    """NaN / inf -> None (JSON has no NaN), recursively."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_json_safe(x) for x in v]
    return v


def plot_scaling(
    groups: Mapping[GroupKey, Sequence[TrialRecord]],
    fits: Mapping[GroupKey, Fit],
    path: str | Path,
    metric_name: str,
) -> None:
    """Metric against fraction (log2 x axis): one colour per (backbone, pretext), a point
    per finished trial and the fitted line over the fractions swept."""
    import matplotlib  # lazy: matplotlib is a heavy import that only this path needs

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt  # lazy: matplotlib is a heavy import that only this path needs
    from matplotlib.ticker import (  # lazy: matplotlib is a heavy import that only this path needs
        FixedLocator,
        FuncFormatter,
        NullFormatter,
    )

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        colours = plt.get_cmap("tab10")
        ticks: set[float] = set()
        for i, (key, group) in enumerate(groups.items()):
            usable = [r for r in group if r.usable]
            if not usable:
                continue
            colour = colours(i % 10)
            xs = [r.fraction for r in usable]
            ticks.update(xs)
            fit = fits.get(key)
            label = f"{key[0]} / {key[1]}"
            if fit is not None:
                label += f": b = {fit.b:+.3f} / doubling"
            ax.scatter(xs, [r.metric for r in usable], color=colour, label=label, zorder=3)
            if fit is not None:
                line_x = np.geomspace(min(xs), max(xs), 50)
                ax.plot(line_x, fit.predict(line_x), color=colour, linewidth=1.5)
        ax.set_xscale("log", base=2)
        if ticks:
            ax.xaxis.set_major_locator(FixedLocator(sorted(ticks)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no finished trial", transform=ax.transAxes, ha="center")
        ax.set_xlabel("fraction of the pre-training data (log2 scale)")
        ax.set_ylabel(metric_name)
        ax.set_title("scaling law: metric = a + b log2(fraction)")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)


def report(records: Sequence[TrialRecord], out_dir: str | Path, metric_name: str) -> dict[str, Any]:
    """Fit every (backbone, pretext) and write DIR/scaling_law.{md,json,png}.

    Groups that cannot be fitted (fewer than 2 distinct fractions among finished trials)
    are listed in the table with the reason instead of a fit.

    Returns:
        {"fits": {(backbone, pretext): Fit}, "table": the markdown text,
         "files": [the paths written]}.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = list(records)
    groups = group_records(records)
    fits = fit_groups(records)
    text = _markdown(records, groups, fits, metric_name)
    md, js, png = (out / name for name in FILES)
    md.write_text(text)
    payload = {
        "metric": metric_name,
        "model": "metric = a + b * log2(fraction)",
        "fits": [{"backbone": k[0], "pretext": k[1], **asdict(fit)} for k, fit in fits.items()],
        "unfitted": [
            {"backbone": k[0], "pretext": k[1], "reason": _why_no_fit(g)}
            for k, g in groups.items()
            if k not in fits
        ],
        "records": [asdict(r) for g in groups.values() for r in g],
    }
    js.write_text(json.dumps(_json_safe(payload), indent=2) + "\n")
    plot_scaling(groups, fits, png, metric_name)
    return {"fits": fits, "table": text, "files": [str(md), str(js), str(png)]}


# --------------------------------------------------------------------------- MLflow


def _metric_key(*parts: str) -> str:
    """An MLflow metric name: characters MLflow refuses become '_'."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. ]", "_", p) for p in parts)


def records_from_mlflow(tracking_uri: str, parent_run_id: str, metric: str) -> list[TrialRecord]:
    """The trials of a sweep: the child runs of `parent_run_id` (in its experiment) that
    carry the `rayssl.sweep.*` tags (module docstring).

    Raises:
        ValueError: the parent run does not exist, or a trial's fraction / seed tag
            is not a number.
    """
    import mlflow  # lazy: mlflow is a heavy import that only this path needs
    from mlflow.entities import ViewType  # lazy: mlflow is a heavy import that only this path needs
    from mlflow.exceptions import (  # lazy: mlflow is a heavy import that only this path needs
        MlflowException,  # lazy: mlflow is a heavy import that only this path needs
    )

    client = mlflow.MlflowClient(tracking_uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as e:
        raise ValueError(redact(f"no MLflow run {parent_run_id!r} in {tracking_uri}: {e}")) from e
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=filter_tag("mlflow.parentRunId", parent_run_id),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        if not all(t in tags for t in (BACKBONE_TAG, PRETEXT_TAG, FRACTION_TAG, SEED_TAG)):
            continue  # not a trial (e.g. an evaluation run nested under the parent)
        try:
            fraction, seed = float(tags[FRACTION_TAG]), int(tags[SEED_TAG])
        except ValueError as e:
            raise ValueError(
                f"run {run.info.run_id}: bad sweep tag ({FRACTION_TAG}="
                f"{tags[FRACTION_TAG]!r}, {SEED_TAG}={tags[SEED_TAG]!r}): {e}"
            ) from e
        status = run.info.status
        value = float(metrics[metric]) if metric in metrics else math.nan
        if status != "FINISHED":
            value = math.nan
        elif not math.isfinite(value):
            status = NO_METRIC
        records.append(
            TrialRecord(
                run_id=run.info.run_id,
                backbone=tags[BACKBONE_TAG],
                pretext=tags[PRETEXT_TAG],
                fraction=fraction,
                seed=seed,
                metric=value,
                clips_seen=float(metrics.get(CLIPS_SEEN, 0.0)),
                cpu_hours=float(metrics.get(CPU_HOURS, 0.0)),
                gpu_hours=float(metrics.get(GPU_HOURS, 0.0)),
                status=status,
            )
        )
    return records


def log_report(tracking_uri: str, parent_run_id: str, result: Mapping[str, Any]) -> None:
    """Log `report`'s files as artifacts of the parent run under `scaling_law/`, and each
    fit as parent metrics `scaling/<backbone>/<pretext>/{a,b,r2}` (plus `b_ci95_low` /
    `b_ci95_high` when there is a CI; non-finite numbers are skipped)."""

    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    client = mlflow.MlflowClient(tracking_uri)
    for path in result["files"]:
        client.log_artifact(parent_run_id, str(path), "scaling_law")
    metrics: dict[str, float] = {}
    for (backbone, pretext), fit in result["fits"].items():
        values = {"a": fit.a, "b": fit.b, "r2": fit.r2}
        if fit.b_ci95 is not None:
            values["b_ci95_low"], values["b_ci95_high"] = fit.b_ci95
        for name, v in values.items():
            if math.isfinite(v):
                metrics[_metric_key("scaling", backbone, pretext, name)] = float(v)
    log_metric_values(client, parent_run_id, metrics)
