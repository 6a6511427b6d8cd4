"""What the suite does with its results: log them to MLflow, and the comparison table
of several checkpoints (`rayssl evaluate --baseline`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rayssl.config import flatten
from rayssl.io import storage
from rayssl.tracking_uri import real_tracking_uri
from rayssl.train.tracking import (
    MODEL_ID_TAG,
    PRETRAIN_RUN_TAG,
    experiment_id,
    git_commit,
    log_metric_values,
    log_params,
)

#: The files of an evaluation's folder logged to MLflow (features Parquet stay local).
ARTIFACT_SUFFIXES = (".json", ".png", ".txt", ".csv")


def _experiment(client: Any, suite: Any, source: Any, tags: dict[str, str]) -> str:
    """The pre-training run's experiment (and nest under that run) when the checkpoint
    names a run of this tracking store; else the suite's `run.experiment`."""
    import mlflow  # heavy: imported where used

    if source.pretrain_run_id:
        tags[PRETRAIN_RUN_TAG] = source.pretrain_run_id
        try:
            parent = client.get_run(source.pretrain_run_id)
            tags["mlflow.parentRunId"] = source.pretrain_run_id
            return parent.info.experiment_id
        except mlflow.exceptions.MlflowException:
            pass  # the pre-training run lives in another tracking store
    return experiment_id(client, suite.run.experiment)


def log_to_mlflow(
    suite: Any,
    source: Any,
    checkpoint: str,
    results: dict,
    files: Sequence[Path],
) -> str:
    """One MLflow run per evaluation, nested under (and tagged with) the pre-training run
    when the checkpoint names one; the results as metrics, and as artifacts the `files`
    this run wrote (`RunFiles.written`) that are reports or plots (json, png, txt, csv).
    The metrics are also attached to the checkpoint's MLflow LoggedModel when it has one
    (`evaluated_model_id`)."""
    import mlflow  # heavy: imported where used

    client = mlflow.MlflowClient(real_tracking_uri(suite.run.tracking_uri))
    tags = {
        "checkpoint": storage.redact(checkpoint),
        "checkpoint_kind": source.kind,
        "backbone": source.model.backbone,
        "evaluation": "suite",
        "git_commit": git_commit(),
    }
    exp_id = _experiment(client, suite, source, tags)
    run = client.create_run(exp_id, run_name=f"{suite.run.name}-{source.label}", tags=tags)
    run_id = run.info.run_id
    log_params(client, run_id, flatten(dataclasses.asdict(suite)))
    model_id = evaluated_model_id(client, source)
    if model_id:
        client.set_tag(run_id, MODEL_ID_TAG, model_id)
    # with the LoggedModel's id, each metric is also the model's (MLflow 3 model metrics)
    log_metric_values(client, run_id, results, model_id=model_id or None)
    for p in sorted(files):
        if p.suffix in ARTIFACT_SUFFIXES and p.is_file():
            client.log_artifact(run_id, str(p))
    client.set_terminated(run_id)
    return run_id


def evaluated_model_id(client: Any, source: Any) -> str:
    """The MLflow LoggedModel the evaluated checkpoint is: the one `models:/` named, else
    the one its pre-training run logged last (`MODEL_ID_TAG`), if this store has it;
    '' otherwise (random init, a run of another store, an older run)."""
    import mlflow  # heavy: imported where used

    model_id = getattr(source, "model_id", "") or ""
    if not model_id and source.pretrain_run_id:
        try:
            run = client.get_run(source.pretrain_run_id)
        except mlflow.exceptions.MlflowException:
            return ""
        model_id = run.data.tags.get(MODEL_ID_TAG, "")
    if not model_id:
        return ""
    try:
        client.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException:
        return ""
    return model_id


def comparison_table(columns: dict[str, dict[str, float]]) -> str:
    """Rows = result keys, one column per checkpoint label, then the difference of every
    column but the last to the last (the baseline, e.g. random init): one "delta" column
    for two checkpoints, "delta <name>" columns for more."""
    names = list(columns)
    keys = sorted({k for c in columns.values() for k in c})
    width = max([len(k) for k in keys] + [10])
    head = f"{'':{width}s} " + " ".join(f"{n[:14]:>14s}" for n in names)
    compared = names[:-1] if len(names) >= 2 else []
    if len(compared) == 1:
        head += f" {'delta':>8s}"
    else:
        head += "".join(f" {'delta ' + n.split()[0][:8]:>14s}" for n in compared)
    lines = [head]
    for k in keys:
        vals = [columns[n].get(k, float("nan")) for n in names]
        line = f"{k:{width}s} " + " ".join(f"{v:14.3f}" for v in vals)
        deltas = [v - vals[-1] for v in vals[:-1]] if compared else []
        w = 8 if len(compared) == 1 else 14
        line += "".join(f" {d:+{w}.3f}" for d in deltas)
        lines.append(line)
    return "\n".join(lines)
