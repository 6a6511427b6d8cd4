"""`rayssl evaluate`: a configured set of downstream evaluations of one checkpoint.

    rayssl evaluate --checkpoint X --suite configs/eval_<name>.yaml --out DIR [key=value ...]

The suite YAML (`EvalSuite`) names the labelled manifest (`data.manifest`; one
`data.manifest=M` override points every evaluation at M), the feature layers and clip
protocol, and one section per registered evaluation (`rayssl.evaluate.registry`):
retrieval, linear probe, action similarity, attention maps and fine-tuning. This module
loops over them and never branches on their names: each declares what it needs (checked
before any feature is extracted), features are extracted once per clip protocol (Ray
Data, `rayssl.evaluate.features`) and saved beside the results; the metric code is numpy.

Writes DIR/results.json, a flat object mapping "<evaluation>/<layer>/<metric>" to a
number in [0, 1] (e.g. "retrieval/pool5/top1", "linear/pool5/accuracy",
"similarity/pool3-pool4-pool5/auc", "finetune/classifier/video_top1"), the plots and
tables, and logs everything to an MLflow run tagged with (and nested under) the
pre-training run, so the two are found together (`rayssl.evaluate.results`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from rayssl import preflight
from rayssl.checkpoint import (
    BackboneSource,
    build_backbone_from,
    resolve_checkpoint,
)
from rayssl.clip_geometry import ClipGeometry, choose_geometry
from rayssl.config import (
    Config,
    ConfigError,
    DataConfig,
    InferenceSettings,
    ModelConfig,
    RunSettings,
    _check_layers,
    read_yaml,
    typed_from_dict,
)

# The built-in evaluations: importing their modules registers them.
from rayssl.evaluate import (  # noqa: F401
    attention,
    finetune,
    linear,
    probe,
    retrieval,
    similarity,
    weighted_knn,
)
from rayssl.evaluate.features import VideoOutputs, extract_features, load_manifest, write_features
from rayssl.evaluate.registry import (
    Evaluation,
    RunContext,
    RunFiles,
    TrainingRunner,
    backbone_fields,
    config_path,
    ordered,
)
from rayssl.evaluate.results import ARTIFACT_SUFFIXES, comparison_table, log_to_mlflow
from rayssl.io import storage
from rayssl.io.manifest import require_labels
from rayssl.models.heads import check_feature_layers, feature_layers_of
from rayssl.preflight import resolve_paths
from rayssl.raystart import start_ray
from rayssl.tracking_uri import real_tracking_uri
from rayssl.train.inference import DEFAULT_TOKEN_GRID

__all__ = [
    "ARTIFACT_SUFFIXES",
    "EvalSuite",
    "FeatureSettings",
    "RunFiles",
    "baseline_suite",
    "bind_to_backbone",
    "check_labels",
    "check_suite_paths",
    "comparison_table",
    "config_path",
    "evaluate_checkpoint",
    "load_suite",
    "log_to_mlflow",
    "needed_videos",
    "suite_class",
    "suite_paths",
]

# --------------------------------------------------------------------------- config


def _layers_default() -> list[str]:
    return ["pool3", "pool4", "pool5"]


@dataclass
class FeatureSettings:
    layers: list[str] = field(default_factory=_layers_default)
    """Layers extracted for every evaluation that does not name its own (names of the
    backbone's `feature_layers`: pool1..pool5, pool5_vcop, pool5_map for the CNNs;
    block<i>, tokens for the ViTs)."""
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    token_grid: list[int] = field(default_factory=lambda: list(DEFAULT_TOKEN_GRID))
    """A token layer (tokens, pool5_map) is stored per clip pooled to at most this
    (T', H', W') grid (adaptive average pooling), then averaged over the video's clips:
    at most T'H'W' x D floats per video."""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers)
        self.inference.validate(f"{prefix}.inference")
        if len(self.token_grid) != 3 or min(self.token_grid) < 1:
            raise ConfigError(
                f"{prefix}.token_grid: expected [T, H, W], each >= 1, got {self.token_grid}"
            )


def _eval_run() -> RunSettings:
    return RunSettings(name="eval", experiment="rayssl-eval")


@dataclass
class EvalSuite:
    """Everything `rayssl evaluate` runs (YAML sections map to these fields). The class
    `load_suite` builds (`suite_class()`) adds one section per registered evaluation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone of `--checkpoint random` when no checkpoint gives one."""
    run: RunSettings = field(default_factory=_eval_run)
    features: FeatureSettings = field(default_factory=FeatureSettings)

    evaluations: ClassVar[tuple[Evaluation, ...]] = ()
    """The evaluations whose sections this class holds, in running order."""

    def validate(self) -> EvalSuite:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        if not self.data.manifest:
            raise ConfigError("data.manifest: the suite needs a labelled manifest")
        return self

    def as_config(self) -> Config:
        """The training Config view (data, model, run) used to resolve checkpoints."""
        return Config(data=self.data, model=self.model, run=self.run)

    def enabled(self) -> list[tuple[Evaluation, Any]]:
        """(evaluation, its settings) of every enabled evaluation, in running order."""
        pairs = [(e, getattr(self, e.name)) for e in self.evaluations]
        return [(e, s) for e, s in pairs if s.enabled]

    def __reduce__(self):  # the class is built at run time: pickle by its fields
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return (_suite_from_fields, (values,))


def _suite_from_fields(values: dict[str, Any]) -> EvalSuite:
    return suite_class()(**values)


_SUITE_CLASSES: dict[tuple, type[EvalSuite]] = {}


def suite_class() -> type[EvalSuite]:
    """`EvalSuite` with one section per registered evaluation (its `settings`, under its
    `name`), built once per set of registered evaluations."""
    evaluations = tuple(ordered())
    key = tuple((e.name, type(e)) for e in evaluations)
    if key not in _SUITE_CLASSES:
        sections = [(e.name, e.settings, field(default_factory=e.settings)) for e in evaluations]
        cls = dataclasses.make_dataclass(
            "EvalSuite", sections, bases=(EvalSuite,), namespace={"evaluations": evaluations}
        )
        cls.__module__, cls.__doc__ = __name__, EvalSuite.__doc__
        _SUITE_CLASSES[key] = cls
    return _SUITE_CLASSES[key]


def load_suite(
    path: str | Path | None, overrides: Sequence[str] = (), patch: dict[str, Any] | None = None
) -> EvalSuite:
    """Load a suite YAML (None = defaults) with the command line's key=value overrides,
    then `patch` (typed values a command sets), strictly."""
    values = read_yaml(path) if path is not None else {}
    return typed_from_dict(suite_class(), values, overrides, patch)


def baseline_suite(suite: EvalSuite, source: BackboneSource) -> EvalSuite:
    """The suite for the random-init baseline of `source`: same backbone, same seed."""
    model = replace(suite.model, **backbone_fields(source.model))
    return replace(suite, model=model, run=replace(suite.run, seed=source.seed))


# --------------------------------------------------------------------------- checks


def bind_to_backbone(suite: EvalSuite, backbone: Any, name: str = "") -> EvalSuite:
    """The suite with each enabled evaluation's settings made concrete for `backbone`
    (`Evaluation.bind`: e.g. the attentive probe's token layer), and every layer an
    enabled evaluation reads checked against the backbone's `feature_layers`: a
    ConfigError naming the key and listing the layers the backbone has, before anything
    is extracted. `name`: the backbone's registered name, for the messages."""
    for evaluation, settings in suite.enabled():
        bound = evaluation.bind(settings, backbone)
        if bound is not settings:
            suite = replace(suite, **{evaluation.name: bound})
    for evaluation, settings in suite.enabled():
        for key, layers in evaluation.layer_keys(settings, suite).items():
            try:
                check_feature_layers(backbone, layers, key, name=name)
            except ValueError as e:
                raise ConfigError(str(e)) from None
    return suite


def check_labels(suite: EvalSuite, table: pa.Table) -> None:
    """Every enabled labelled evaluation finds labelled videos in its splits (before any
    feature is extracted)."""
    for evaluation, settings in suite.enabled():
        for what, split in evaluation.labels(settings):
            require_labels(table, what, split)


#: Parts of a path that mark a placeholder copied from an example config.
PLACEHOLDERS = ("YOUR-BUCKET", "YOUR_BUCKET", "YOUR-", "<", ">", "CHANGE-ME", "CHANGEME")


def suite_paths(suite: EvalSuite, suite_dir: Path | None = None) -> dict[str, str]:
    """Every path the enabled evaluations of `suite` read, by config key."""
    paths = {"data.manifest": suite.data.manifest}
    for evaluation, settings in suite.enabled():
        own = evaluation.paths(settings, suite_dir)
        paths.update({f"{evaluation.name}.{key}": uri for key, uri in own.items()})
    return paths


def _check_path(key: str, uri: str, options: storage.StorageOptions) -> None:
    if not uri:
        raise ConfigError(f"{key}: empty path")
    if any(mark in uri for mark in PLACEHOLDERS):
        raise ConfigError(
            f"{key}: {uri} is a placeholder from the example suite; set it to your copy "
            f"(e.g. {key}=s3://my-bucket/...)"
        )
    try:
        found = storage.exists(uri, options)
    except storage.StorageError as e:
        raise ConfigError(f"{key}: cannot read {storage.redact(uri)}: {e}") from None
    except Exception as e:  # e.g. botocore NoCredentialsError
        raise ConfigError(
            f"{key}: cannot read {storage.redact(uri)}: {type(e).__name__}: {e}"
        ) from None
    if not found:
        raise ConfigError(f"{key}: {storage.redact(uri)} does not exist")


def check_suite_paths(suite: EvalSuite, suite_dir: Path | None = None) -> None:
    """Every path the suite names exists and is not a placeholder (`s3://YOUR-BUCKET/..`),
    before any feature is extracted: a ConfigError naming the key and the path."""
    options = storage.StorageOptions(endpoint_url=suite.data.endpoint_url or None)
    for key, uri in suite_paths(suite, suite_dir).items():
        _check_path(key, uri, options)


def needed_videos(suite: EvalSuite, table: pa.Table) -> pa.Table:
    """The manifest rows some enabled evaluation uses: features of other splits (e.g. the
    pre-training split of a benchmark manifest) are not extracted."""
    splits: set[str] = set()
    for evaluation, settings in suite.enabled():
        need = evaluation.splits(settings)
        if need is None:  # every video
            return table
        splits |= need
    return table.filter(pc.is_in(table["split"], pa.array(sorted(splits), pa.string())))


# --------------------------------------------------------------------------- running


class FeatureStore:
    """Features per clip protocol, extracted on first use with the union of the layers
    the evaluations declared for it (`Evaluation.features`)."""

    def __init__(self, suite: EvalSuite, backbone, table: pa.Table, out: RunFiles) -> None:
        self.suite, self.backbone, self.table, self.out = suite, backbone, table, out
        self.wanted: dict[str, set[str]] = {}
        self.cache: dict[str, VideoOutputs] = {}
        self.seconds = 0.0
        # the checkpoint's (mean, std) if not the pipeline's
        self.normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def want(self, needs: dict[str, list[str]]) -> None:
        for clips, layers in needs.items():
            self.wanted.setdefault(clips, set()).update(layers)

    def get(self, clips: str) -> VideoOutputs:
        if clips not in self.wanted:
            raise KeyError(f"features of clips {clips!r}: no evaluation declared them")
        if clips not in self.cache:
            have = feature_layers_of(self.backbone)
            layers = [x for x in have if x in self.wanted[clips]]
            layers += sorted(self.wanted[clips] - set(have))  # refused by FeatureModel
            inference = replace(self.suite.features.inference, clips=clips)
            t0 = time.perf_counter()
            feats = extract_features(
                self.backbone,
                self.table,
                self.suite.data,
                inference,
                layers,
                token_grid=self.suite.features.token_grid,
                normalisation=self.normalisation,
            )
            self.seconds += time.perf_counter() - t0
            name = f"features-{clips.replace(':', '-')}.parquet"
            write_features(feats, str(self.out.path(name)))
            self.cache[clips] = feats
        return self.cache[clips]

    def skipped(self) -> dict[str, int]:
        return {k: v for f in self.cache.values() for k, v in f.skipped.items()}


def _prepare(
    suite: EvalSuite,
    checkpoint: str,
    suite_dir: Path | None,
    explicit_geometry: Collection[str] | None = None,
) -> tuple[EvalSuite, BackboneSource, Any, pa.Table, ClipGeometry | None]:
    """Everything checked before any feature is extracted, then Ray started: the suite
    with resolved paths, the checkpoint, its backbone, the manifest rows needed and the
    clip geometry taken from the checkpoint (`explicit_geometry` not None:
    `rayssl.clip_geometry.choose_geometry`; None: the suite's geometry as it is)."""
    cfg = resolve_paths(suite.as_config())
    suite = replace(suite, data=cfg.data, run=cfg.run)
    check_suite_paths(suite, suite_dir)
    source = resolve_checkpoint(checkpoint, cfg)
    backbone = build_backbone_from(source)
    geometry = None
    if explicit_geometry is not None:
        geometry = choose_geometry(source, suite.data, explicit_geometry, backbone)
        suite = replace(suite, data=geometry.apply(suite.data))
        print(geometry.line(), flush=True)
    suite = bind_to_backbone(suite, backbone, source.model.backbone)
    table = load_manifest(suite.data.manifest, suite.data)
    check_labels(suite, table)
    table = needed_videos(suite, table)
    # the results go to MLflow at the end: an unwritable store must not waste the run
    preflight.check_tracking_uri(real_tracking_uri(suite.run.tracking_uri))
    start_ray()
    return suite, source, backbone, table, geometry


def run_evaluations(ctx: RunContext) -> tuple[dict[str, float], list[str]]:
    """Every enabled evaluation of `ctx.suite`, in order: (results, report lines)."""
    enabled = ctx.suite.enabled()
    for evaluation, settings in enabled:
        ctx.features.want(evaluation.features(settings, ctx.suite))
    results: dict[str, float] = {}
    report: list[str] = []
    for evaluation, settings in enabled:
        outcome = evaluation.run(settings, ctx)
        results.update(outcome.results)
        report += outcome.report
    return results, report


def evaluate_checkpoint(
    suite: EvalSuite,
    checkpoint: str,
    out_dir: str | Path,
    suite_dir: Path | None = None,
    train: TrainingRunner | None = None,
    explicit_geometry: Collection[str] | None = None,
) -> dict[str, Any]:
    """Run the enabled evaluations of `suite` on `checkpoint`; write DIR/results.json and
    the plots; log an MLflow run. Returns {"results", "report", "source", "mlflow_run_id"}.
    `suite_dir` (the suite file's folder) resolves a relative fine-tuning config; `train`
    (`rayssl.launch.run_training`) launches the fine-tuning evaluation's training job.
    `explicit_geometry`: the geometry keys the suite's file / overrides set; given, the
    rest come from the checkpoint when it records them (`rayssl.clip_geometry`)."""
    t0 = time.perf_counter()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = RunFiles(Path(out_dir))
    suite, source, backbone, table, geometry = _prepare(
        suite, checkpoint, suite_dir, explicit_geometry
    )
    feats = FeatureStore(suite, backbone, table, out)
    feats.normalisation = geometry.renormalise if geometry is not None else None
    ctx = RunContext(suite, feats, backbone, table, source, out, suite_dir, train)
    results, report = run_evaluations(ctx)
    skipped = feats.skipped()
    if skipped:
        report.append(f"videos skipped (by reason): {skipped}")
    out.path("results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    out.path("report.txt").write_text("\n".join(report) + "\n")
    run_id = log_to_mlflow(suite, source, checkpoint, results, out.written)
    return {
        "results": results,
        "report": report,
        "source": source,
        "mlflow_run_id": run_id,
        "seconds": time.perf_counter() - t0,
        "feature_seconds": feats.seconds,
        "skipped": skipped,
        "geometry": geometry,  # the checkpoint's clip geometry (ClipGeometry) or None
    }
