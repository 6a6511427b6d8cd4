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
* The trained backbone is also an MLflow 3 LoggedModel of the run (`log_backbone_model`):
  an exported folder (safetensors + settings JSON) as its artifacts, so
  ``--checkpoint models:/<id>`` (or a registered name) loads weights only.
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
#: Tag on a pre-training run: the id of its latest MLflow LoggedModel (the backbone).
MODEL_ID_TAG = "rayssl.model_id"
#: `model_type` of the LoggedModels rayssl logs (an exported folder, `rayssl.export`).
MODEL_TYPE = "rayssl-backbone"
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

    def log_model(self, backbone: Any, cfg: Config, step: int) -> str:
        """Log `backbone` as an MLflow 3 LoggedModel of this run (`log_backbone_model`);
        returns its id ('' when disabled)."""
        if not self.enabled:
            return ""
        return log_backbone_model(self.client, cast(str, self.run_id), backbone, cfg, step)

    def finish(self, status: str = "FINISHED") -> None:
        if self.enabled and self.run_id:
            self.client.set_terminated(self.run_id, status=status)


def log_backbone_model(client: Any, run_id: str, backbone: Any, cfg: Config, step: int) -> str:
    """Log `backbone` (trained with `cfg`, after `step` epochs) as an MLflow 3 LoggedModel
    of run `run_id`: its artifacts are an exported folder (`rayssl.export`: safetensors and
    a settings JSON, so loading it runs no code; no pickled module, no flavour code), its
    params the backbone settings and the step; the run is tagged with its id
    (`MODEL_ID_TAG`). Returns the model id."""
    from rayssl.export import export_backbone  # lazy: safetensors only where a model is logged

    config = cfg.to_dict()
    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id,
        name=f"{cfg.model.backbone}-backbone",
        source_run_id=run_id,
        params={
            "backbone": cfg.model.backbone,
            "width": str(cfg.model.width),
            "step": str(step),
            "pretext": cfg.pretext.name,
        },
        tags={"rayssl.step": str(step), "rayssl.run_name": cfg.run.name},
        model_type=MODEL_TYPE,
    )
    try:
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "model"
            export_backbone(
                backbone,
                cfg.model.backbone,
                cfg.model.width,
                out,
                config=config,
                pretrain_run_id=run_id,
                source=f"runs:/{run_id}",
            )
            client.log_model_artifacts(model.model_id, str(out))
    except BaseException:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    client.finalize_logged_model(model.model_id, "READY")
    client.set_tag(run_id, MODEL_ID_TAG, model.model_id)
    return model.model_id


def version_model_id(version: Any) -> str:
    """The LoggedModel id of a registered model version ('' if unknown): MLflow 3.17's
    registry returns `model_id` None, so `register_logged_model` also tags it."""
    return version.model_id or (version.tags or {}).get(MODEL_ID_TAG, "")


def register_logged_model(
    client: Any, name: str, model_id: str, alias: str = "", tags: dict[str, str] | None = None
) -> Any:
    """A new version of registered model `name` (created if new) for LoggedModel
    `model_id`, with `alias` pointing at it if given; returns the version.

    The version's source is the model's artifact location, with its `model_id`:
    MLflow 3.17 resolves a ``models:/<id>`` source through the process's global tracking
    URI, not the client's, and would not find the model in another store."""
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    model = client.get_logged_model(model_id)
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    version = client.create_model_version(
        name,
        model.artifact_location,
        run_id=model.source_run_id,
        tags={**(tags or {}), MODEL_ID_TAG: model_id},
        model_id=model_id,
    )
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


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


def log_metric_values(
    client: Any, run_id: str, values: dict[str, float], step: int = 0, model_id: str | None = None
) -> None:
    """`values` as metrics of run `run_id` at `step` (None values left out), in batches;
    with `model_id`, each is also that LoggedModel's metric."""
    import mlflow  # heavy: imported where used

    ts = int(time.time() * 1000)
    items = [
        mlflow.entities.Metric(k, float(v), ts, step, model_id=model_id)
        for k, v in values.items()
        if v is not None
    ]
    for i in range(0, len(items), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=items[i : i + METRICS_PER_BATCH])
