"""`rayssl compare`: a side-by-side table (and plot) of MLflow runs.

    rayssl compare --experiment rayssl [--parent RUN_ID] [--runs ID ...] [--tag key=value ...]
                   [--metrics m1,m2] [--plot train/loss [--out PNG]] [--tracking-uri URI]

Runs are chosen from any tracking URI (a sqlite file or a server) by experiment names,
a parent run (its child runs, in any experiment), run ids, or tags; the criteria given
are combined with AND. The table has one row per run: its name and short id, status,
the params that differ between the chosen runs, the final metrics, the wall time and the
training throughput (`train/clips_per_s`).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from rayssl.train.tracking import filter_literal

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
CLIPS_PER_S = "train/clips_per_s"
#: Default metric columns: these first (in this order), at most MAX_METRICS of them.
PREFERRED_PREFIXES = ("downstream/", "val/")
PREFERRED_METRICS = ("train/loss",)
MAX_METRICS = 12
MAX_CELL = 40


class CompareError(ValueError):
    """Bad input for `rayssl compare`: no matching run, a missing experiment or metric."""


# --------------------------------------------------------------------------- selection


def _parse_tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CompareError(f"--tag {text!r}: expected key=value")
    return key, value


def _quote(value: str) -> str:
    """`value` as a string literal of MLflow's filter grammar."""

    try:
        return filter_literal(value)
    except ValueError:
        raise CompareError(f"cannot filter on {value!r}: it holds both quote characters") from None


def _filter_string(parent: str | None, tags: Sequence[tuple[str, str]]) -> str:
    clauses = [f"tags.`{PARENT_TAG}` = {_quote(parent)}"] if parent else []
    for key, value in tags:
        if "`" in key:
            raise CompareError(f"cannot filter on tag {key!r}: it holds a backtick")
        clauses.append(f"tags.`{key}` = {_quote(value)}")
    return " and ".join(clauses)


def runs_frame(runs: Sequence[Any]) -> pd.DataFrame:
    """MLflow runs as the DataFrame of `mlflow.search_runs`: run_id, experiment_id,
    status, artifact_uri, start_time, end_time (UTC timestamps), then `metrics.*`,
    `params.*` and `tags.*` columns (NaN / None where a run lacks one)."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True),
        }
        row.update({f"metrics.{k}": float(v) for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    info = list(df.columns[:6])
    rest = sorted(df.columns[6:], key=lambda c: (c.split(".", 1)[0] != "metrics", c))
    df = df[info + rest]
    for col in df.columns:
        if col.startswith("metrics."):
            df[col] = df[col].astype("float64")
    return df


def select_runs(
    tracking_uri: str,
    experiments: Sequence[str] = (),
    parent: str | None = None,
    run_ids: Sequence[str] = (),
    tags: Sequence[str | tuple[str, str]] = (),
) -> pd.DataFrame:
    """The runs matching every criterion given, as a `mlflow.search_runs` DataFrame.

    Args:
        tracking_uri: any MLflow tracking URI.
        experiments: experiment names (default: every active experiment).
        parent: a run id; only its child runs (tag mlflow.parentRunId).
        run_ids: only these runs (in this order).
        tags: "key=value" strings or (key, value) pairs the runs must carry.

    Raises:
        CompareError: no criterion, an experiment or run id that does not exist, a bad
            tag, or no run matching.
    """
    import mlflow  # lazy: mlflow is a heavy import that only this path needs
    from mlflow.entities import ViewType  # lazy: mlflow is a heavy import that only this path needs
    from mlflow.exceptions import (  # lazy: mlflow is a heavy import that only this path needs
        MlflowException,  # lazy: mlflow is a heavy import that only this path needs
    )

    pairs = [_parse_tag(t) if isinstance(t, str) else (t[0], t[1]) for t in tags]
    if not (experiments or parent or run_ids or pairs):
        raise CompareError("choose runs: an experiment, a parent run, run ids or tags")
    client = mlflow.MlflowClient(tracking_uri)
    exp_ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None or exp.lifecycle_stage != "active":
            raise CompareError(f"no experiment named {name!r} in {tracking_uri}")
        exp_ids.append(exp.experiment_id)
    if run_ids:
        runs = []
        for rid in run_ids:
            try:
                runs.append(client.get_run(rid))
            except MlflowException as e:
                raise CompareError(f"no run {rid!r} in {tracking_uri}") from e
        runs = [
            r
            for r in runs
            if (not exp_ids or r.info.experiment_id in exp_ids)
            and (not parent or r.data.tags.get(PARENT_TAG) == parent)
            and all(r.data.tags.get(k) == v for k, v in pairs)
        ]
    else:
        if not exp_ids:
            exp_ids = [e.experiment_id for e in client.search_experiments(ViewType.ACTIVE_ONLY)]
        runs, token = [], None
        while exp_ids:
            page = client.search_runs(
                exp_ids,
                filter_string=_filter_string(parent, pairs),
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                break
    if not runs:
        criteria = [
            *(f"experiment {n!r}" for n in experiments),
            *([f"parent {parent}"] if parent else []),
            *([f"runs {', '.join(run_ids)}"] if run_ids else []),
            *(f"tag {k}={v}" for k, v in pairs),
        ]
        raise CompareError(f"no run matches {' and '.join(criteria)} in {tracking_uri}")
    return runs_frame(runs)


# --------------------------------------------------------------------------- the table


def human_duration(seconds: float) -> str:
    """'1d 02h', '3h 04m', '5m 06s', '7.5s'; '-' when unknown (NaN / negative)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d {h:02d}h"
    if h:
        return f"{h}h {m:02d}m"
    return f"{m}m {s:02d}s"


def _cell(v: Any, fmt: str = ".4g") -> str:
    if v is None or (not isinstance(v, str) and pd.isna(v)):
        return "-"
    text = format(v, fmt) if isinstance(v, float) else str(v)
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 3] + "..."


def differing_params(df: pd.DataFrame) -> list[str]:
    """The param names (without 'params.') whose values are not all the same; a param
    that some runs lack counts as differing."""
    out = []
    for col in sorted(c for c in df.columns if c.startswith("params.")):
        values = {None if pd.isna(v) else str(v) for v in df[col]}
        if len(values) > 1:
            out.append(col.removeprefix("params."))
    return out


def default_metrics(df: pd.DataFrame, limit: int = MAX_METRICS) -> list[str]:
    """The metric columns shown by default: downstream/*, val/*, train/loss when a run
    has any of them, else every metric; never train/clips_per_s (its own column), never
    a metric no run has; at most `limit`."""
    names = [
        c.removeprefix("metrics.")
        for c in df.columns
        if c.startswith("metrics.") and df[c].notna().any()
    ]
    names = [m for m in names if m != CLIPS_PER_S]
    preferred = [m for p in PREFERRED_PREFIXES for m in sorted(names) if m.startswith(p)]
    preferred += [m for m in PREFERRED_METRICS if m in names]
    return (preferred or sorted(names))[:limit]


def _format_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join([line, sep, *body])


def comparison_table(df: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """A plain-text table, one row per run of `df` (a `select_runs` frame): run name and
    short id, status, the params that differ, the final value of `metrics` (default:
    `default_metrics`), wall time and clips/s."""
    if df.empty:
        raise CompareError("no runs to compare")
    params = differing_params(df)
    chosen = list(metrics) if metrics is not None else default_metrics(df)
    header = ["run", "status", *params, *chosen, "wall time", "clips/s"]
    rows = []
    for _, r in df.iterrows():
        name = r.get(f"tags.{RUN_NAME_TAG}")
        short = str(r["run_id"])[:8]
        label = f"{name} ({short})" if isinstance(name, str) and name else short
        wall = (
            (r["end_time"] - r["start_time"]).total_seconds()
            if pd.notna(r["end_time"])
            else math.nan
        )
        rows.append(
            [
                label,
                str(r["status"]),
                *(_cell(r.get(f"params.{p}")) for p in params),
                *(_cell(_float(r.get(f"metrics.{m}"))) for m in chosen),
                human_duration(wall),
                _cell(_float(r.get(f"metrics.{CLIPS_PER_S}")), ".1f"),
            ]
        )
    text = _format_rows(header, rows)
    if metrics is None:
        hidden = sum(
            1
            for c in df.columns
            if c.startswith("metrics.")
            and df[c].notna().any()
            and c.removeprefix("metrics.") not in (*chosen, CLIPS_PER_S)
        )
        if hidden:
            text += f"\n({hidden} more metrics: choose them with --metrics)"
    return text


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


# --------------------------------------------------------------------------- the plot


def plot_metric(
    tracking_uri: str, run_ids: Sequence[str], metric: str, out_png: str | Path
) -> dict[str, list[tuple[int, float]]]:
    """Plot `metric` against step for each run that logged it, one line per run labelled
    with its run name (and short id when names repeat).

    Returns:
        {label: [(step, value), ...]}: the lines drawn.

    Raises:
        CompareError: no chosen run has the metric.
    """
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    client = mlflow.MlflowClient(tracking_uri)
    histories: list[tuple[str, str, list[tuple[int, float]]]] = []
    for rid in run_ids:
        points = sorted(
            (int(m.step), float(m.value)) for m in client.get_metric_history(rid, metric)
        )
        if points:
            name = client.get_run(rid).info.run_name or rid[:8]
            histories.append((name, rid, points))
    if not histories:
        raise CompareError(f"none of the {len(run_ids)} chosen runs logged metric {metric!r}")
    names = [h[0] for h in histories]
    lines = {
        (name if names.count(name) == 1 else f"{name} ({rid[:8]})"): points
        for name, rid, points in histories
    }

    import matplotlib  # lazy: matplotlib is a heavy import that only this path needs

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt  # lazy: matplotlib is a heavy import that only this path needs

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    try:
        for label, points in lines.items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="." if len(points) < 50 else None, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
    return lines


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """Bad arguments raise CompareError (main returns 2) instead of exiting."""

    def error(self, message: str) -> Any:  # argparse's signature returns NoReturn
        raise CompareError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rayssl compare", description=__doc__.split("\n", 1)[0])
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db)",
    )
    p.add_argument("--experiment", action="append", default=[], help="experiment name (repeatable)")
    p.add_argument("--parent", metavar="RUN_ID", help="the child runs of this run")
    p.add_argument("--runs", nargs="+", default=[], metavar="ID", help="these run ids")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="repeatable")
    p.add_argument("--metrics", help="comma-separated metric columns (default: a readable set)")
    p.add_argument("--plot", metavar="METRIC", help="plot this metric's history per run")
    p.add_argument("--out", help="the plot's PNG (default: compare_<metric>.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table (and write the plot); 0, or 2 on bad input."""
    from mlflow.exceptions import (  # lazy: mlflow is a heavy import that only this path needs
        MlflowException,  # lazy: mlflow is a heavy import that only this path needs
    )

    try:
        args = build_parser().parse_args(argv)
        df = select_runs(
            args.tracking_uri,
            experiments=args.experiment,
            parent=args.parent,
            run_ids=args.runs,
            tags=args.tag,
        )
        metrics = (
            [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
        )
        print(comparison_table(df, metrics))
        if args.plot:
            out = args.out or f"compare_{args.plot.replace('/', '_')}.png"
            lines = plot_metric(args.tracking_uri, list(df["run_id"]), args.plot, out)
            print(f"wrote {out} ({len(lines)} runs)")
    except (CompareError, MlflowException) as e:
        message = " ".join(str(e).split())  # one line
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0
