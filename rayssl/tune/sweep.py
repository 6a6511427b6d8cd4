"""`rayssl sweep`: a Ray Tune study over any config keys (data fraction x backbone x
pretext x seed for scaling laws), each trial pre-training and then evaluating.

A sweep file (`configs/sweep_*.yaml`) names a pre-training config, an evaluation suite,
the downstream metric (a key of the suite's results, e.g. `linear/pool5/accuracy`) and
the axes: every combination of their values is one trial (a grid). A trial is a Tune
function trainable that

1. pre-trains: the Ray Train job of `rayssl pretrain` (`launch.pretrain`) with the
   trial's overrides, named `<study>-<trial>` so a retried or resumed trial continues
   from its own checkpoint; its MLflow run is a child of the study's run;
2. evaluates the final checkpoint with the suite (`evaluate.suite.evaluate_checkpoint`,
   an MLflow run nested under the trial's run);
3. tags the trial's run (`rayssl.sweep.*`: fraction, backbone, pretext, seed, trial),
   logs the metric as `downstream/<metric>` and the compute (`compute/clips_seen`,
   `compute/wall_hours`, `compute/cpu_hours`, `compute/gpu_hours`: reserved resources x
   wall time), and reports the metric to Tune.

The driver (`run_sweep`) checks every trial's config before anything starts, opens (or
finds again) the study's parent MLflow run, runs the Tuner (or restores it: trials that
finished are not run again; errored ones are retried), then fits the scaling law from
MLflow (`tune.scaling_law`) and logs the report to the parent run.

Fractions are `data.fraction`: nested seeded subsets (`data.sampling.fraction_mask`:
the videos of 1/8 are inside those of 1/4 for one `run.seed`).
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import ray
from ray import tune

from rayssl import preflight, testhooks
from rayssl.checkpoint import CheckpointError
from rayssl.clips.schedule import UnschedulableError, share
from rayssl.config import (
    Config,
    ConfigError,
    check_no_credentials,
    load_config,
    read_yaml,
    typed_from_dict,
)
from rayssl.config import _in_range as in_range
from rayssl.evaluate.features import load_manifest
from rayssl.evaluate.suite import check_labels, check_suite_paths, evaluate_checkpoint, load_suite
from rayssl.export import safe_model_name
from rayssl.io import storage
from rayssl.io.manifest import ManifestError
from rayssl.launch import pretrain, run_training
from rayssl.preflight import resolve_paths
from rayssl.raystart import start_ray
from rayssl.tracking_uri import default_tracking_uri
from rayssl.train.tracking import (
    MODEL_ID_TAG,
    experiment_id,
    filter_tag,
    register_logged_model,
    version_model_id,
)
from rayssl.tune.scaling_law import log_report, records_from_mlflow, report

STUDY_TAG = "rayssl.sweep.study"
#: CPU a trial's own process reserves (it only waits for its Train and Data work, which
#: reserve their own); Tune refuses a trial that reserves nothing.
TRIAL_CPU = 0.05
TAG_PREFIX = "rayssl.sweep."


@dataclass
class Axis:
    """One swept config key and its values (`data.fraction`, `model.backbone`, ...)."""

    key: str = ""
    values: list[Any] = field(default_factory=list)

    def validate(self, prefix: str) -> None:
        if not self.key:
            raise ConfigError(f"{prefix}.key: expected a config key such as data.fraction")
        if not self.values:
            raise ConfigError(f"{prefix}.values: expected at least one value")


@dataclass
class StudySettings:
    name: str = "sweep"
    """Study name: Tune's experiment folder, the parent MLflow run; submitting the same
    name again resumes the study."""
    storage_path: str = "runs"
    """Where Tune's state and every trial's checkpoints go (local path or s3://)."""
    experiment: str = "rayssl-sweeps"
    tracking_uri: str = ""
    """MLflow URI; '' = $MLFLOW_TRACKING_URI or sqlite:///mlruns.db."""
    max_failures: int = 1
    """Retries of a failed trial before it is reported as failed (the study goes on)."""
    max_concurrent: int = 0
    """Trials at once; 0 = as many as the cluster's CPUs and GPUs hold."""
    data_cpus_per_trial: float = 1.0
    """CPUs a trial's decoding needs on top of its train workers (for max_concurrent 0
    and the CPU-hours of the report)."""
    registered_model: str = ""
    """MLflow registered model the best trial's backbone is registered under, with the
    alias `champion` ('' = the study name; load it with --checkpoint
    models:/<name>@champion)."""

    def validate(self, prefix: str) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"{prefix}.name: expected a non-empty name without '/'")
        in_range(f"{prefix}.max_failures", self.max_failures, 0, None)
        in_range(f"{prefix}.max_concurrent", self.max_concurrent, 0, None)
        in_range(f"{prefix}.data_cpus_per_trial", self.data_cpus_per_trial, 0.0, None)
        check_no_credentials(f"{prefix}.tracking_uri", self.tracking_uri)
        if self.registered_model and safe_model_name(self.registered_model) != (
            self.registered_model
        ):
            raise ConfigError(
                f"{prefix}.registered_model: {self.registered_model!r} may hold only "
                "letters, digits, '_', '.' and '-'"
            )


@dataclass
class SweepConfig:
    pretrain: str = "debug.yaml"
    """The pre-training config every trial starts from (relative to the sweep file)."""
    evaluation: str = "eval_debug.yaml"
    """The evaluation suite run on every trial's checkpoint (relative to the sweep file)."""
    metric: str = "linear/pool5/accuracy"
    """The downstream metric: a key of the suite's results."""
    mode: str = "max"
    manifest: str = ""
    """If set, `data.manifest` of both the pre-training and the evaluation."""
    pretrain_overrides: list[str] = field(default_factory=list)
    evaluation_overrides: list[str] = field(default_factory=list)
    axes: list[Axis] = field(default_factory=list)
    study: StudySettings = field(default_factory=StudySettings)

    def validate(self) -> SweepConfig:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"mode: expected max or min, got {self.mode!r}")
        if not self.axes:
            raise ConfigError("axes: expected at least one axis (e.g. data.fraction)")
        keys = [a.key for a in self.axes]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"axes: a key appears twice in {keys}")
        for i, a in enumerate(self.axes):
            a.validate(f"axes[{i}]")
        self.study.validate("study")
        return self


@dataclass(frozen=True)
class Trial:
    slug: str  # unique, readable: fraction-0.5_backbone-c3d_seed-0
    values: dict[str, Any]  # axis key -> value

    @property
    def patch(self) -> dict[str, Any]:
        """The trial's config values as a nested mapping of typed values (`load_config`'s
        patch); the `pretrain` axis names a config file instead (`pretrain_file`)."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            if key == PRETRAIN_AXIS:
                continue
            *parents, leaf = key.split(".")
            node = out
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return out

    def pretrain_file(self, default: str) -> str:
        """The pre-training config this trial starts from."""
        return str(self.values.get(PRETRAIN_AXIS, default))


#: An axis over whole pre-training configs (e.g. one per pretext on its natural backbone):
#: its values are config files, relative to the sweep file.
PRETRAIN_AXIS = "pretrain"


def _slug_value(key: str, v: Any) -> str:
    # a pretrain axis is named by its file's stem (pretrain-videomae_vitb_k400)
    return Path(str(v)).stem if key == PRETRAIN_AXIS else _yaml_value(v)


def _yaml_value(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_yaml_value(x) for x in v) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def load_sweep(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SweepConfig:
    """Read a sweep file; relative `pretrain` / `evaluation` paths become absolute."""
    path = Path(path)
    cfg = typed_from_dict(SweepConfig, read_yaml(path), overrides)
    base = path.resolve().parent
    for name in ("pretrain", "evaluation"):
        p = Path(getattr(cfg, name))
        if not p.is_absolute():
            p = base / p
        if not p.exists():
            raise ConfigError(f"{name}: {p} does not exist")
        setattr(cfg, name, str(p))
    for i, axis in enumerate(cfg.axes):
        if axis.key == PRETRAIN_AXIS:
            axis.values = [_config_file(f"axes[{i}].values", v, base) for v in axis.values]
    return cfg


def _config_file(key: str, value: Any, base: Path) -> str:
    p = Path(str(value))
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise ConfigError(f"{key}: {p} does not exist")
    return str(p)


def trials(cfg: SweepConfig) -> list[Trial]:
    """Every combination of the axes' values, in order (the first axis varies slowest)."""
    out = []
    for combo in itertools.product(*(a.values for a in cfg.axes)):
        values = {a.key: v for a, v in zip(cfg.axes, combo, strict=True)}
        slug = "_".join(f"{k.split('.')[-1]}-{_slug_value(k, v)}" for k, v in values.items())
        out.append(Trial(slug.replace("/", "-").replace(" ", ""), values))
    if len({t.slug for t in out}) != len(out):
        raise ConfigError("axes: two trials get the same name; use distinct values")
    return out


def trial_config(cfg: SweepConfig, trial: Trial, parent_run_id: str = "") -> Config:
    """The pre-training config of one trial (validated, as `rayssl pretrain` would): the
    study's `pretrain_overrides` and the trial's axis values (the user's `key=value`
    strings), then what the study sets, as typed fields."""
    study = cfg.study
    try:
        base = load_config(trial.pretrain_file(cfg.pretrain), cfg.pretrain_overrides, trial.patch)
        run = replace(
            base.run,
            name=f"{study.name}-{trial.slug}",
            storage_path=f"{study.storage_path.rstrip('/')}/{study.name}/trials",
            experiment=study.experiment,
            parent_run_id=parent_run_id,
            tracking_uri=study.tracking_uri or base.run.tracking_uri,
        )
        data = base.data
        if cfg.manifest and "data.manifest" not in trial.values:  # an axis may vary it
            data = replace(data, manifest=cfg.manifest)
        return resolve_paths(replace(base, run=run, data=data).validate())
    except ConfigError as e:
        raise ConfigError(f"trial {trial.slug}: {e}") from None


def evaluation_suite(cfg: SweepConfig, trial_cfg: Config):
    """The trial's evaluation suite: the study's `evaluation_overrides` (strings from the
    sweep file), then the manifest and the trial's tracking store and seed, typed."""
    suite = load_suite(cfg.evaluation, cfg.evaluation_overrides)
    run = replace(
        suite.run,
        tracking_uri=trial_cfg.run.tracking_uri,
        experiment=trial_cfg.run.experiment,
        seed=trial_cfg.run.seed,
    )
    data = replace(suite.data, manifest=cfg.manifest) if cfg.manifest else suite.data
    suite = replace(suite, run=run, data=data)
    suite.validate()
    return suite


def check_sweep(cfg: SweepConfig) -> list[Trial]:
    """Every trial's config and the suite load and validate: errors before any work."""
    grid = trials(cfg)
    for t in grid:
        tcfg = trial_config(cfg, t)
        evaluation_suite(cfg, tcfg)
        if not tcfg.data.manifest:
            raise ConfigError(f"trial {t.slug}: data.manifest is empty; set `manifest`")
    return grid


def check_evaluation_world(cfg: SweepConfig, grid: list[Trial]) -> None:
    """The evaluation suite against what it names, before any trial pre-trains: its
    manifest has the splits and labels every enabled evaluation uses, and every other
    path it names (pairs CSV, fine-tuning config) exists and is not a placeholder."""

    suite = evaluation_suite(cfg, trial_config(cfg, grid[0]))
    try:
        check_suite_paths(suite, Path(cfg.evaluation).parent)
        check_labels(suite, load_manifest(suite.data.manifest, suite.data))
    except (ConfigError, ManifestError) as e:
        raise ConfigError(f"evaluation {Path(cfg.evaluation).name}: {e}") from e


def check_trials_world(cfg: SweepConfig, grid: list[Trial]) -> None:
    """What the trials name, checked before Ray starts (`rayssl.preflight`): manifests,
    clips that fit, writable storage and tracking; once per distinct combination."""

    checked: set[str] = set()
    manifests: dict[str, Any] = {}  # each manifest is read once, whatever its trials vary
    for t in grid:
        rcfg = resolve_paths(trial_config(cfg, t))
        key = repr((rcfg.data, rcfg.pretext, rcfg.run.storage_path, rcfg.run.tracking_uri))
        if key in checked:
            continue
        checked.add(key)
        try:
            if rcfg.data.manifest not in manifests:
                manifests[rcfg.data.manifest] = preflight.read_run_manifest(rcfg)
            preflight.check_data(rcfg, manifests[rcfg.data.manifest])
            preflight.check_outputs(rcfg)
        except ConfigError as e:
            raise ConfigError(f"trial {t.slug}: {e}") from e


# --------------------------------------------------------------------------- a trial


def trial_tags(cfg: Config, slug: str, study_key: str) -> dict[str, str]:
    return {
        TAG_PREFIX + "trial": slug,
        TAG_PREFIX + "fraction": str(cfg.data.fraction),
        TAG_PREFIX + "backbone": cfg.model.backbone,
        TAG_PREFIX + "pretext": cfg.pretext.name,
        TAG_PREFIX + "seed": str(cfg.run.seed),
        STUDY_TAG: study_key,
    }


def compute_used(cfg: Config, wall_s: float, clips_seen: float, data_cpus: float) -> dict:
    """Reserved resources x wall time of a trial's pre-training."""
    hours = wall_s / 3600.0
    workers = max(cfg.train.num_workers, 1)
    gpus = workers * cfg.train.gpus_per_worker if cfg.train.use_gpu else 0.0
    return {
        "compute/clips_seen": clips_seen,
        "compute/wall_hours": hours,
        "compute/cpu_hours": hours * (workers * cfg.train.cpus_per_worker + data_cpus),
        "compute/gpu_hours": hours * gpus,
    }


#: A file in a trial's folder: the one-line deterministic error of its last attempt.
#: A retry that finds it fails at once (no pre-training wasted on a config/data error).
NONRETRYABLE_FILE = "nonretryable_error.txt"


class NonRetryableTrialError(RuntimeError):
    """An earlier attempt of this trial failed with a config or data error."""


def _deterministic(e: BaseException) -> bool:

    return isinstance(e, (ConfigError, ManifestError, CheckpointError, UnschedulableError))


def one_line(e: BaseException) -> str:
    """`Type: first line of the message` of an exception."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def root_exception(e: BaseException) -> BaseException:
    """The user's exception inside Ray's wrappers (RayTaskError, TuneError, chains)."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None)
        if isinstance(inner, BaseException):
            e = inner
        elif e.__cause__ is not None and type(e).__module__.startswith("ray"):
            e = e.__cause__
        else:
            break
    return e


def eval_budget(cfg: SweepConfig, tcfg: Config, resources: dict[str, float]) -> float:
    """CPUs a trial's evaluation may use: the trial's share of the cluster (its train
    workers' CPUs + study.data_cpus_per_trial, at most the cluster's CPUs divided among
    the concurrent trials) less what the trial's own process holds."""
    workers = max(tcfg.train.num_workers, 1)
    need = workers * tcfg.train.cpus_per_worker + cfg.study.data_cpus_per_trial
    concurrent = max_concurrent(cfg, trials(cfg), resources)
    return min(need, float(resources.get("CPU", 1.0)) / concurrent) - TRIAL_CPU


def size_suite(suite, budget_cpu: float):
    """The suite with its model actor and decode tasks sized to `budget_cpu`
    (`data.schedule.share`: fractional CPUs when the configured ones do not fit)."""

    inf = suite.features.inference
    actor, task, tasks = share(budget_cpu, inf.cpus_per_actor, suite.data.num_cpus_per_task)
    if inf.num_actors == 0:
        inf = replace(inf, num_actors=1)
    if inf.decode_tasks == 0 or inf.decode_tasks > tasks:
        inf = replace(inf, decode_tasks=tasks)
    inf = replace(inf, cpus_per_actor=actor)
    return replace(
        suite,
        data=replace(suite.data, num_cpus_per_task=task),
        features=replace(suite.features, inference=inf),
    )


def run_trial(config: dict[str, Any], sweep: dict[str, Any], parent_run_id: str) -> None:
    """Tune function trainable: pre-train, evaluate, log, report (see the module doc).

    A config or data error (deterministic) is written to the trial's folder; Tune's
    retry of that trial then fails at once instead of pre-training again."""

    marker = Path(tune.get_context().get_trial_dir()) / NONRETRYABLE_FILE
    if marker.exists():
        raise NonRetryableTrialError(
            f"not retried: an earlier attempt failed with {marker.read_text().strip()}"
        )
    try:
        _run_trial(config, sweep, parent_run_id)
    except Exception as e:
        if _deterministic(e):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(one_line(e) + "\n")
        raise


def _run_trial(config: dict[str, Any], sweep: dict[str, Any], parent_run_id: str) -> None:
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    cfg = _sweep_from_dict(sweep)
    trial = Trial(config["trial"]["slug"], dict(config["trial"]["values"]))
    testhooks.maybe_pause_trial(trial.slug)
    tcfg = trial_config(cfg, trial, parent_run_id)
    metric_key = f"downstream/{cfg.metric}"
    earlier = finished_trial_run(default_tracking_uri(tcfg), parent_run_id, trial.slug, metric_key)
    if earlier is not None:
        # Tune saves its state every few seconds; a driver killed right after a trial
        # finished restores it as unfinished. MLflow knows: report, do not redo.
        print(f"trial {trial.slug}: finished earlier (MLflow run {earlier[0]}), not run again")
        tune.report({"metric": earlier[1], metric_key: earlier[1], "mlflow_run_id": earlier[0]})
        return
    t0 = time.monotonic()
    result = pretrain(tcfg)
    wall_s = time.monotonic() - t0
    if not result["checkpoint"]:
        raise RuntimeError(f"trial {trial.slug}: pre-training reported no checkpoint")

    suite = size_suite(evaluation_suite(cfg, tcfg), eval_budget(cfg, tcfg, ray.cluster_resources()))
    with tempfile.TemporaryDirectory() as out:
        ev = evaluate_checkpoint(
            suite, result["checkpoint"], out, Path(cfg.evaluation).parent, run_training
        )
    if cfg.metric not in ev["results"]:
        # a config error: every attempt would end the same way, so it is not retried
        raise ConfigError(
            f"metric: {cfg.metric!r} is not a result of {cfg.evaluation}; it has "
            f"{sorted(ev['results'])}"
        )
    value = float(ev["results"][cfg.metric])
    uri = default_tracking_uri(tcfg)
    client = mlflow.MlflowClient(uri)
    run_id = result["mlflow_run_id"]
    clips = sum(m.value for m in client.get_metric_history(run_id, "train/clips"))
    metrics: dict[str, float] = {f"downstream/{cfg.metric}": value}
    metrics.update(compute_used(tcfg, wall_s, clips, cfg.study.data_cpus_per_trial))
    for k, v in metrics.items():
        client.log_metric(run_id, k, v)
    study_key = f"{cfg.study.storage_path.rstrip('/')}/{cfg.study.name}"
    tags = trial_tags(tcfg, trial.slug, study_key)
    tags["rayssl.eval_run"] = ev["mlflow_run_id"]
    for key, text in tags.items():
        client.set_tag(run_id, key, text)
    testhooks.maybe_pause_trial(trial.slug, "logged")
    tune.report({"metric": value, **metrics, "mlflow_run_id": run_id})


def finished_trial_run(
    uri: str, parent_run_id: str, slug: str, metric_key: str
) -> tuple[str, float] | None:
    """(run id, metric) of this study's finished run of trial `slug`, if it has one."""
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    if not parent_run_id:
        return None

    client = mlflow.MlflowClient(uri)
    exp_id = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs(
        [exp_id],
        filter_string=(
            f"{filter_tag('mlflow.parentRunId', parent_run_id)} and "
            f"{filter_tag(f'{TAG_PREFIX}trial', slug)} and attributes.status = 'FINISHED'"
        ),
    )
    for run in runs:
        value = run.data.metrics.get(metric_key)
        if value is not None and math.isfinite(value):
            return run.info.run_id, float(value)
    return None


def _sweep_from_dict(d: dict[str, Any]) -> SweepConfig:
    return typed_from_dict(SweepConfig, d)


# --------------------------------------------------------------------------- the driver


def _parent_run(cfg: SweepConfig, uri: str, grid: list[Trial]) -> str:
    """The study's MLflow run: found again by its tag when the study resumes."""
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    client = mlflow.MlflowClient(uri)
    exp_id = experiment_id(client, cfg.study.experiment)
    key = f"{cfg.study.storage_path.rstrip('/')}/{cfg.study.name}"
    found = client.search_runs(
        [exp_id],
        filter_string=(
            f"{filter_tag(STUDY_TAG, key)} and {filter_tag('rayssl.sweep.role', 'study')}"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = client.create_run(
        exp_id,
        run_name=cfg.study.name,
        tags={STUDY_TAG: key, "rayssl.sweep.role": "study", "rayssl.sweep.trials": str(len(grid))},
    )
    params = {
        "pretrain": Path(cfg.pretrain).name,
        "evaluation": Path(cfg.evaluation).name,
        "metric": cfg.metric,
        **{f"axis.{a.key}": str(a.values) for a in cfg.axes},
    }
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v[:500])
    return run.info.run_id


def max_concurrent(cfg: SweepConfig, grid: list[Trial], resources: dict[str, float]) -> int:
    """Trials at once: the study's setting, else what the cluster's CPUs (and GPUs) hold
    for the most demanding trial."""
    if cfg.study.max_concurrent:
        return cfg.study.max_concurrent
    need_cpu, need_gpu = 0.0, 0.0
    for t in grid:
        tc = trial_config(cfg, t)
        workers = max(tc.train.num_workers, 1)
        need_cpu = max(need_cpu, workers * tc.train.cpus_per_worker + cfg.study.data_cpus_per_trial)
        if tc.train.use_gpu:
            need_gpu = max(need_gpu, workers * tc.train.gpus_per_worker)
    n = int(resources.get("CPU", 1) // max(need_cpu, 1e-9))
    if need_gpu:
        n = min(n, int(resources.get("GPU", 0) // need_gpu))
    return max(1, min(n, len(grid)))


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Run (or resume) the study; returns the report and where everything went."""

    grid = check_sweep(cfg)
    check_trials_world(cfg, grid)
    check_evaluation_world(cfg, grid)
    uri = default_tracking_uri(trial_config(cfg, grid[0]))
    # trials get the URI redacted (Tune stores their config); they connect with
    # default_tracking_uri, which takes the credentials from MLFLOW_TRACKING_URI
    cfg = replace(cfg, study=replace(cfg.study, tracking_uri=storage.redact(uri)))
    start_ray()
    parent = _parent_run(cfg, uri, grid)
    fs, root = storage.get_filesystem(cfg.study.storage_path, storage.StorageOptions())
    path = f"{root.rstrip('/')}/{cfg.study.name}"  # as the filesystem names it
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, sweep=asdict(cfg), parent_run_id=parent), {"CPU": TRIAL_CPU}
    )
    t0 = time.monotonic()
    if tune.Tuner.can_restore(path, storage_filesystem=fs):
        print(f"sweep: resuming {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        concurrent = max_concurrent(cfg, grid, ray.cluster_resources())
        print(f"sweep: {len(grid)} trials, {concurrent} at a time, in {path}", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([asdict(t) for t in grid])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrent,
                trial_name_creator=lambda t: t.config["trial"]["slug"],
                trial_dirname_creator=lambda t: t.config["trial"]["slug"],
            ),
            run_config=tune.RunConfig(
                name=cfg.study.name,
                storage_path=root,
                storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=cfg.study.max_failures),
                verbose=1,
            ),
        )
    results = tuner.fit()
    errors: dict[str, str] = {}
    for i in range(len(results)):
        r = results[i]
        if r.error is not None:
            errors[Path(r.path).name if r.path else str(i)] = error_summary(r.error, r.path)
    records = records_from_mlflow(uri, parent, f"downstream/{cfg.metric}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "report"
        summary = report(records, out, cfg.metric)
        log_report(uri, parent, summary)
        table = (out / "scaling_law.md").read_text()
        local = _local_report_dir(cfg)
        if local is not None:
            local.mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                (local / f.name).write_bytes(f.read_bytes())
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    client = mlflow.MlflowClient(uri)
    done = sum(1 for r in records if r.status == "FINISHED" and math.isfinite(r.metric))
    champion = register_champion(client, cfg, records)
    client.log_metric(parent, "sweep/trials_done", done)
    client.log_metric(parent, "sweep/trials_failed", len(grid) - done)
    client.set_terminated(parent, status="FINISHED" if done == len(grid) else "FAILED")
    return {
        "study": cfg.study.name,
        "parent_run_id": parent,
        "tracking_uri": storage.redact(uri),
        "trials": len(grid),
        "trials_done": done,
        "errors": errors,
        "report_dir": str(local) if local else "",
        "champion": champion,
        "table": table,
        "seconds": time.monotonic() - t0,
    }


#: The alias of the best trial's model version in the registry.
CHAMPION_ALIAS = "champion"


def register_champion(client: Any, cfg: SweepConfig, records: list) -> str:
    """Register the backbone (MLflow LoggedModel) of the best usable trial (by `cfg.mode`)
    under `study.registered_model` (default: the study name) and point the alias
    `champion` at it; returns ``models:/<name>@champion``, or '' when no finished trial
    logged a model. A resumed study registers again only when the best trial changed."""
    import mlflow  # lazy: mlflow is a heavy import that only this path needs

    usable = [r for r in records if r.usable]
    if not usable:
        return ""
    sign = 1.0 if cfg.mode == "max" else -1.0
    best = max(usable, key=lambda r: sign * r.metric)
    model_id = client.get_run(best.run_id).data.tags.get(MODEL_ID_TAG, "")
    if not model_id:
        return ""
    name = cfg.study.registered_model or safe_model_name(cfg.study.name)
    try:
        current = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except mlflow.exceptions.MlflowException:
        current = None
    if current is None or version_model_id(current) != model_id:
        tags = {"metric": cfg.metric, "value": str(best.metric), "run_id": best.run_id}
        register_logged_model(client, name, model_id, CHAMPION_ALIAS, tags)
    return f"models:/{name}@{CHAMPION_ALIAS}"


def error_summary(error: BaseException, trial_path: str | None) -> str:
    """A failed trial in one line: its root exception, and where the traceback is."""
    line = one_line(root_exception(error))[:500]
    where = f"{trial_path.rstrip('/')}/error.txt" if trial_path else "the job log"
    return f"{line} (full traceback: {where})"


def _local_report_dir(cfg: SweepConfig) -> Path | None:

    if storage.is_s3(cfg.study.storage_path):
        return None
    return Path(cfg.study.storage_path) / cfg.study.name / "report"
