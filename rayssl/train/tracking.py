"""MLflow tracking: one MLflow run per pre-training job, logged from rank 0.

* Tracking URI: `run.tracking_uri`, else $MLFLOW_TRACKING_URI, else
  `sqlite:///<cwd>/mlruns.db` made absolute where the job is launched (MLflow 3
  refuses the plain file store).
* Credentials come only from the environment: $MLFLOW_TRACKING_URI (`postgresql://u:pw@db/x`,
  `https://u:tok@host`) or MLflow's own MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN. A
  config holds the URI redacted (`https://***@host`, `stored_tracking_uri`), so no secret
  reaches a checkpoint, Ray's job config, MLflow params or a log; `default_tracking_uri`
  gives the redacted URI its credentials back from $MLFLOW_TRACKING_URI where it is used.
* Filter strings quote their values with `filter_literal` (a `'` in a run name works).
* A resumed job continues the same MLflow run: its id travels in the checkpoint.
* Params are the flattened config; tags name the commit, pretext, backbone,
  dataset and data fraction; artifacts are the config file and the final backbone
  weights.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, cast

from rayssl.config import Config, dump_config
from rayssl.io.storage import redact
from rayssl.tracking_uri import default_tracking_uri

RUN_KEY_TAG = "rayssl.run_key"
#: Tag on fine-tuning and evaluation runs: the MLflow run that pre-trained the weights.
PRETRAIN_RUN_TAG = "rayssl.pretrain_run_id"


def filter_literal(value: str) -> str:
    """`value` as a string literal of MLflow's search filter grammar (which has no
    escapes): quoted with the quote character it does not contain; ValueError if it
    holds both."""
    value = str(value)
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for {value!r}: it holds both quote characters")


def filter_tag(key: str, value: str) -> str:
    """The MLflow filter clause `tags.<key> = <value>`, both quoted."""
    if "`" in key:
        raise ValueError(f"cannot search MLflow on tag {key!r}: it holds a backtick")
    return f"tags.`{key}` = {filter_literal(value)}"


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the code (env RAYSSL_GIT_COMMIT wins: `ray job submit` drops .git)."""
    env = os.environ.get("RAYSSL_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def dataset_name(cfg: Config) -> str:
    if cfg.run.dataset_name:
        return cfg.run.dataset_name
    base = cfg.data.manifest.rstrip("/").rsplit("/", 1)[-1]
    return base.removesuffix(".parquet") or "unknown"


def run_tags(cfg: Config, commit: str) -> dict[str, str]:
    return {
        "git_commit": commit,
        "pretext": cfg.pretext.name,
        "backbone": cfg.model.backbone,
        "dataset": dataset_name(cfg),
        "fraction": str(cfg.data.fraction),
        "run_name": cfg.run.name,
        RUN_KEY_TAG: f"{cfg.run.storage_path.rstrip('/')}/{cfg.run.name}",
    }


#: MLflow 3's UI opens an experiment without this tag as a GenAI one (traces, prompts);
#: rayssl's experiments are model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(client, name: str, artifact_location: str = "") -> str:
    """The id of experiment `name`, created (as a model-training experiment) if new."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(
        name, artifact_location=artifact_location or None, tags=EXPERIMENT_KIND
    )


class Tracker:
    """Rank 0's MLflow logger; every method is a no-op when `enabled` is False."""

    def __init__(
        self, cfg: Config, enabled: bool, run_id: str | None = None, commit: str = ""
    ) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        import mlflow  # lazy: mlflow is a heavy import that only this path needs

        self._mlflow = mlflow
        endpoint = (
            cfg.data.endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint and not os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
            os.environ["MLFLOW_S3_ENDPOINT_URL"] = endpoint  # MLflow's own S3 client
        uri = default_tracking_uri(cfg)
        mlflow.set_tracking_uri(uri)
        self.client = mlflow.MlflowClient(uri)
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        tags = run_tags(cfg, commit)
        if cfg.run.parent_run_id:
            exp_id = self.client.get_run(cfg.run.parent_run_id).info.experiment_id
            tags["mlflow.parentRunId"] = cfg.run.parent_run_id
        else:
            exp_id = experiment_id(self.client, cfg.run.experiment, cfg.run.artifact_location)
        # A restart that found no checkpoint (killed before the first one was
        # registered) continues the unfinished MLflow run of the same job.
        unfinished = self.client.search_runs(
            [exp_id],
            filter_string=filter_tag(RUN_KEY_TAG, tags[RUN_KEY_TAG])
            + " and attributes.status = 'RUNNING'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if unfinished:
            self.run_id = unfinished[0].info.run_id
            return
        run = self.client.create_run(exp_id, run_name=cfg.run.name, tags=tags)
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, cfg.flat())
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "config.yaml"
            path.write_text(redact(dump_config(cfg)))
            self.client.log_artifact(self.run_id, str(path))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.enabled:
            return

        # enabled implies __init__ set run_id
        log_metric_values(self.client, cast(str, self.run_id), metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            for k, v in tags.items():
                self.client.set_tag(cast(str, self.run_id), k, v)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def _param(v: Any) -> str:
    text = redact(str(v))
    return text if len(text) <= 6000 else text[:5997] + "..."


#: What MLflow takes in one `log_batch` call.
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """`params` on run `run_id` as strings (credentials redacted, cut to MLflow's 6000
    characters), in batches MLflow accepts."""
    import mlflow  # heavy: imported where used

    items = [mlflow.entities.Param(k, _param(v)) for k, v in params.items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i : i + PARAMS_PER_BATCH])


def log_metric_values(client: Any, run_id: str, values: dict[str, float], step: int = 0) -> None:
    """`values` as metrics of run `run_id` at `step` (None values left out), in batches."""
    import mlflow  # heavy: imported where used

    ts = int(time.time() * 1000)
    items = [
        mlflow.entities.Metric(k, float(v), ts, step) for k, v in values.items() if v is not None
    ]
    for i in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])
