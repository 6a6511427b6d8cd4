"""`rayssl evaluate`: a configured set of downstream evaluations of one checkpoint.

    rayssl evaluate --checkpoint X --suite configs/eval_<name>.yaml --out DIR [key=value ...]

The suite YAML (`EvalSuite`) names the labelled manifest (`data.manifest`; one
`data.manifest=M` override points every evaluation at M), the feature layers and clip
protocol, and which evaluations run: retrieval, linear probe, action similarity,
attention maps and fine-tuning. Features are extracted once per clip protocol (Ray Data,
`rayssl.evaluate.features`) and saved beside the results; the metric code is numpy.

Writes DIR/results.json, a flat object mapping "<evaluation>/<layer>/<metric>" to a
number in [0, 1] (e.g. "retrieval/pool5/top1", "linear/pool5/accuracy",
"similarity/pool3-pool4-pool5/auc", "finetune/classifier/video_top1"), the plots and
tables, and logs everything to an MLflow run tagged with (and nested under) the
pre-training run, so the two are found together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from rayssl.checkpoint import (
    RANDOM,
    BackboneSource,
    build_backbone_from,
    resolve_checkpoint,
)
from rayssl.config import (
    Config,
    ConfigError,
    DataConfig,
    InferenceSettings,
    ModelConfig,
    RunSettings,
    _check_clips,
    _check_layers,
    _in_range,
    read_yaml,
    typed_from_dict,
)
from rayssl.data import storage
from rayssl.data.manifest import ManifestError, require_labels
from rayssl.evaluate.features import VideoOutputs, extract_features, load_manifest, write_features
from rayssl.models.heads import POOL_LAYERS

#: The files of an evaluation's folder logged to MLflow (features Parquet stay local).
ARTIFACT_SUFFIXES = (".json", ".png", ".txt", ".csv")

# --------------------------------------------------------------------------- config


def _layers_default() -> list[str]:
    return ["pool3", "pool4", "pool5"]


@dataclass
class FeatureSettings:
    layers: list[str] = field(default_factory=_layers_default)
    """Layers extracted for every evaluation that does not name its own."""
    inference: InferenceSettings = field(default_factory=InferenceSettings)

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers)
        self.inference.validate(f"{prefix}.inference")


@dataclass
class RetrievalSettings:
    """Nearest-neighbour retrieval (VCOP protocol): `query_split` queries `gallery_split`."""

    enabled: bool = True
    layers: list[str] = field(default_factory=list)
    """'' / [] = features.layers."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 20, 50])
    query_split: str = "test"
    gallery_split: str = "train"
    clips: str = ""
    """Clip protocol; '' = features.inference.clips."""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers, allow_empty=True)
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"{prefix}.ks: expected k values >= 1, got {self.ks}")
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


@dataclass
class LinearSettings:
    """Linear probe on L2-normalised video features (YUPENN: protocol loo, sliding:16:8)."""

    enabled: bool = True
    layers: list[str] = field(default_factory=list)
    protocol: Literal["split", "loo", "kfold"] = "split"
    """split: train on train_split, test on test_split; loo: leave-one-out; kfold: k folds
    (loo and kfold use every labelled video)."""
    classifier: Literal["svm", "logreg"] = "svm"
    C: float = 1.0
    folds: int = 5
    train_split: str = "train"
    test_split: str = "test"
    clips: str = ""

    def validate(self, prefix: str) -> None:
        _check_layers(f"{prefix}.layers", self.layers, allow_empty=True)
        _in_range(f"{prefix}.C", self.C, 1e-12, None)
        _in_range(f"{prefix}.folds", self.folds, 2, None)
        if self.clips:
            _check_clips(f"{prefix}.clips", self.clips)


@dataclass
class SimilaritySettings:
    """Action similarity (ASLAN-style): 12 measures per layer, z-norm, linear SVM, k-fold."""

    enabled: bool = False
    pairs: str = "auto"
    """Pairs CSV (video_a,video_b,same,fold; local or s3://), or 'auto': balanced pairs
    made from the manifest's labels with class-disjoint folds (written to DIR/pairs.csv)."""
    layers: list[str] = field(default_factory=_layers_default)
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


@dataclass
class AttentionSettings:
    """Activation-based attention maps of conv5 overlaid on frames (a PNG grid)."""

    enabled: bool = True
    videos: list[str] = field(default_factory=list)
    """Video ids to show; [] = the first video of each class of `split`."""
    num_videos: int = 4
    split: str = "test"
    num_frames: int = 4

    def validate(self, prefix: str) -> None:
        _in_range(f"{prefix}.num_videos", self.num_videos, 1, None)
        _in_range(f"{prefix}.num_frames", self.num_frames, 1, None)


@dataclass
class FinetuneSuiteSettings:
    """Fine-tuning (a Ray Train job) with its test protocol, from the checkpoint."""

    enabled: bool = False
    config: str = "configs/finetune_ucf101.yaml"
    """The fine-tuning config (relative paths: from the current directory)."""
    overrides: list[str] = field(default_factory=list)
    """key=value overrides of that config. The suite's data.manifest, data.clip_len and
    data.augment resize / crop are applied first: one geometry for every evaluation."""

    def validate(self, prefix: str) -> None:
        if self.enabled and not self.config:
            raise ConfigError(f"{prefix}.config: a fine-tuning config is needed")


def _eval_run() -> RunSettings:
    return RunSettings(name="eval", experiment="rayssl-eval")


@dataclass
class EvalSuite:
    """Everything `rayssl evaluate` runs (YAML sections map to these fields)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    """The backbone of `--checkpoint random` when no checkpoint gives one."""
    run: RunSettings = field(default_factory=_eval_run)
    features: FeatureSettings = field(default_factory=FeatureSettings)
    retrieval: RetrievalSettings = field(default_factory=RetrievalSettings)
    linear: LinearSettings = field(default_factory=LinearSettings)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    finetune: FinetuneSuiteSettings = field(default_factory=FinetuneSuiteSettings)

    def validate(self) -> EvalSuite:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        if not self.data.manifest:
            raise ConfigError("data.manifest: the suite needs a labelled manifest")
        return self

    def as_config(self) -> Config:
        """The training Config view (data, model, run) used to resolve checkpoints."""
        return Config(data=self.data, model=self.model, run=self.run)


def load_suite(path: str | Path | None, overrides: Sequence[str] = ()) -> EvalSuite:
    """Load a suite YAML (None = defaults) with key=value overrides, strictly."""
    values = read_yaml(path) if path is not None else {}
    return typed_from_dict(EvalSuite, values, overrides)


# --------------------------------------------------------------------------- running


def _layers(own: list[str], suite: EvalSuite) -> list[str]:
    return list(own) or list(suite.features.layers)


def _clips(own: str, suite: EvalSuite) -> str:
    return own or suite.features.inference.clips


def check_labels(suite: EvalSuite, table: pa.Table) -> None:
    """Every enabled labelled evaluation finds labelled videos in its splits (before any
    feature is extracted)."""
    if suite.retrieval.enabled:
        require_labels(table, "retrieval (query)", suite.retrieval.query_split)
        require_labels(table, "retrieval (gallery)", suite.retrieval.gallery_split)
    if suite.linear.enabled:
        if suite.linear.protocol == "split":
            require_labels(table, "linear (train)", suite.linear.train_split)
            require_labels(table, "linear (test)", suite.linear.test_split)
        else:
            require_labels(table, "linear")
    if suite.similarity.enabled and suite.similarity.pairs == "auto":
        require_labels(table, "similarity (auto pairs)")


#: Parts of a path that mark a placeholder copied from an example config.
PLACEHOLDERS = ("YOUR-BUCKET", "YOUR_BUCKET", "YOUR-", "<", ">", "CHANGE-ME", "CHANGEME")


def suite_paths(suite: EvalSuite, suite_dir: Path | None = None) -> dict[str, str]:
    """Every path the enabled evaluations of `suite` read, by config key."""
    paths = {"data.manifest": suite.data.manifest}
    if suite.similarity.enabled and suite.similarity.pairs != "auto":
        paths["similarity.pairs"] = suite.similarity.pairs
    if suite.finetune.enabled:
        paths["finetune.config"] = str(config_path(suite.finetune.config, suite_dir))
    return paths


def check_suite_paths(suite: EvalSuite, suite_dir: Path | None = None) -> None:
    """Every path the suite names exists and is not a placeholder (`s3://YOUR-BUCKET/..`),
    before any feature is extracted: a ConfigError naming the key and the path."""
    options = storage.StorageOptions(endpoint_url=suite.data.endpoint_url or None)
    for key, uri in suite_paths(suite, suite_dir).items():
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


def needed_videos(suite: EvalSuite, table: pa.Table) -> pa.Table:
    """The manifest rows some enabled evaluation uses: features of other splits (e.g. the
    pre-training split of a benchmark manifest) are not extracted."""
    import pyarrow.compute as pc

    splits: set[str] = set()
    if suite.retrieval.enabled:
        splits |= {suite.retrieval.query_split, suite.retrieval.gallery_split}
    if suite.linear.enabled:
        if suite.linear.protocol != "split":
            return table
        splits |= {suite.linear.train_split, suite.linear.test_split}
    if suite.similarity.enabled or (suite.attention.enabled and not suite.attention.split):
        return table
    if suite.attention.enabled:
        splits.add(suite.attention.split)
    return table.filter(pc.is_in(table["split"], pa.array(sorted(splits), pa.string())))


class RunFiles:
    """The files one evaluation writes in its output folder DIR: each is named through
    `path`, which keeps it inside DIR (`storage.child`) and records it, so only the files
    this run wrote are logged to MLflow (not whatever else DIR holds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.written: list[Path] = []

    def path(self, name: str) -> Path:
        """DIR/`name`, recorded as written by this run."""
        path = Path(storage.child(str(self.root), name))
        if path not in self.written:
            self.written.append(path)
        return path


class _Features:
    """Features per clip protocol, extracted on first use (the union of layers asked)."""

    def __init__(self, suite: EvalSuite, backbone, table: pa.Table, out: RunFiles) -> None:
        self.suite, self.backbone, self.table, self.out = suite, backbone, table, out
        self.wanted: dict[str, set[str]] = {}
        self.cache: dict[str, VideoOutputs] = {}
        self.seconds = 0.0

    def want(self, clips: str, layers: list[str]) -> None:
        self.wanted.setdefault(clips, set()).update(layers)

    def get(self, clips: str) -> VideoOutputs:
        if clips not in self.cache:
            layers = [x for x in POOL_LAYERS if x in self.wanted[clips]]
            inference = replace(self.suite.features.inference, clips=clips)
            t0 = time.perf_counter()
            feats = extract_features(self.backbone, self.table, self.suite.data, inference, layers)
            self.seconds += time.perf_counter() - t0
            name = f"features-{clips.replace(':', '-')}.parquet"
            write_features(feats, str(self.out.path(name)))
            self.cache[clips] = feats
        return self.cache[clips]


def _retrieval(suite: EvalSuite, feats: _Features, out: RunFiles) -> tuple[dict, list[str]]:
    from rayssl.evaluate.retrieval import format_table, plot_topk
    from rayssl.knn import topk_accuracy

    s = suite.retrieval
    f = feats.get(_clips(s.clips, suite))
    q, g = f.split_mask(s.query_split), f.split_mask(s.gallery_split)
    table: dict[str, dict[int, float]] = {}
    results = {}
    for layer in _layers(s.layers, suite):
        acc = topk_accuracy(
            f.outputs[layer][q], f.labels[q], f.outputs[layer][g], f.labels[g], s.ks
        )
        table[layer] = acc
        results.update({f"retrieval/{layer}/top{k}": v for k, v in acc.items()})
    plot_topk(
        table,
        out.path("retrieval_topk.png"),
        title=f"retrieval: {s.query_split} -> {s.gallery_split}",
    )
    text = format_table(table)
    out.path("retrieval.txt").write_text(text + "\n")
    return results, [f"retrieval ({int(q.sum())} queries, {int(g.sum())} gallery)", text]


def _linear(suite: EvalSuite, feats: _Features) -> tuple[dict, list[str]]:
    from rayssl.evaluate.linear import linear_eval

    s = suite.linear
    f = feats.get(_clips(s.clips, suite))
    labelled = f.labels >= 0
    if s.protocol == "split":
        keep = f.split_mask(s.train_split) | f.split_mask(s.test_split)
    else:
        keep = labelled
    results, lines = {}, []
    for layer in _layers(s.layers, suite):
        r = linear_eval(
            f.outputs[layer][keep],
            f.labels[keep],
            protocol=s.protocol,
            train_mask=f.split_mask(s.train_split)[keep],
            k=s.folds,
            classifier=s.classifier,
            C=s.C,
            seed=suite.run.seed,
        )
        results[f"linear/{layer}/accuracy"] = r["accuracy"]
        lines.append(f"  {layer}: accuracy {r['accuracy']:.3f} ({r['num_test']} tested)")
    return results, [f"linear ({s.classifier}, {s.protocol})", *lines]


def _similarity(suite: EvalSuite, feats: _Features, out: RunFiles) -> tuple[dict, list[str]]:
    from rayssl.evaluate.similarity import (
        filter_pairs,
        make_pairs,
        pair_descriptors,
        parse_pairs_csv,
        similarity_eval,
        write_pairs_csv,
    )

    s = suite.similarity
    f = feats.get(s.clips)
    if s.pairs == "auto":
        labelled = f.labels >= 0
        ids = [v for v, ok in zip(f.video_ids, labelled, strict=True) if ok]
        pairs = _auto_pairs(make_pairs, ids, f.labels[labelled], s, suite.run.seed)
        write_pairs_csv(out.path("pairs.csv"), **pairs)
    else:
        options = storage.StorageOptions(endpoint_url=suite.data.endpoint_url or None)
        pairs = parse_pairs_csv(storage.read_bytes(s.pairs, options).decode("utf-8"))
    pairs, dropped = filter_pairs(pairs, set(f.video_ids))
    index = {v: i for i, v in enumerate(f.video_ids)}
    per_layer = {layer: {v: f.outputs[layer][index[v]] for v in f.video_ids} for layer in s.layers}
    desc = pair_descriptors(per_layer, pairs, layers=s.layers)
    r = similarity_eval(desc, pairs["same"], pairs["fold"], C=s.C, seed=suite.run.seed)
    key = "-".join(s.layers)
    results = {f"similarity/{key}/accuracy": r["accuracy"]}
    if not math.isnan(r["auc"]):
        results[f"similarity/{key}/auc"] = r["auc"]
    line = (
        f"  {key}: accuracy {r['accuracy']:.3f}, AUC {r['auc']:.3f} "
        f"({r['num_pairs']} pairs, {r['num_folds']} folds, {dropped} pairs without features)"
    )
    return results, [f"action similarity ({s.clips})", line]


def _auto_pairs(make_pairs, ids: list[str], labels: np.ndarray, s, seed: int) -> dict:
    """As many balanced pairs as asked, or as the videos allow (halving on failure)."""
    import warnings

    n = s.num_pairs - s.num_pairs % 2
    folds = min(s.num_folds, max(2, len(set(labels.tolist())) // 2))
    while n >= 2 * folds:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # folds not class-disjoint
                return make_pairs(ids, labels, num_pairs=n, num_folds=folds, seed=seed)
        except ValueError:
            n = (n // 2) - (n // 2) % 2
    raise ManifestError(f"similarity: too few labelled videos ({len(ids)}) to make pairs")


def _attention(suite: EvalSuite, backbone, table: pa.Table, out: RunFiles) -> list[str]:
    from rayssl.evaluate.attention import attention_grid_png
    from rayssl.train.inference import usable

    s = suite.attention
    shown = attention_grid_png(
        backbone,
        usable(table),
        suite.data,
        out.path("attention.png"),
        video_ids=s.videos,
        num_videos=s.num_videos,
        split=s.split,
        num_frames=s.num_frames,
    )
    return [f"attention maps of {len(shown)} videos: {out.path('attention.png')}"]


def config_path(path: str, suite_dir: Path | None) -> Path:
    """A config named in a suite: as given (absolute, or relative to the current folder),
    else relative to the suite file's folder, else to the repository root."""
    p = Path(path)
    candidates = [p]
    if not p.is_absolute():
        if suite_dir is not None:
            candidates += [suite_dir / p, suite_dir.parent / p]
        candidates.append(Path(__file__).resolve().parents[2] / p)
    return next((c for c in candidates if c.exists()), p)


def _finetune(
    suite: EvalSuite, source: BackboneSource, out: RunFiles, suite_dir: Path | None
) -> tuple[dict, list[str]]:
    from rayssl.config import load_config
    from rayssl.evaluate.finetune import finetune

    s = suite.finetune
    run_name = f"{suite.run.name}-finetune-{source.kind}-{int(time.time())}"
    aug = suite.data.augment
    overrides = [  # the suite's manifest and clip geometry hold for all its evaluations
        f"data.manifest={suite.data.manifest}",
        f"data.clip_len={suite.data.clip_len}",
        f"data.augment.resize={list(aug.resize)}",
        f"data.augment.crop={list(aug.crop)}",
        f"run.name={run_name}",
        f"run.storage_path={suite.run.storage_path}",
        f"run.seed={suite.run.seed}",
        *([f"run.tracking_uri={suite.run.tracking_uri}"] if suite.run.tracking_uri else []),
        *([f"data.endpoint_url={suite.data.endpoint_url}"] if suite.data.endpoint_url else []),
        *s.overrides,
    ]
    cfg = load_config(config_path(s.config, suite_dir), overrides)
    if source.kind == RANDOM:  # the from-scratch baseline: same backbone, same seed
        cfg = replace(cfg, model=replace(cfg.model, **_model_kw(source.model)))
    summary = finetune(cfg, source.spec)
    test = summary.get("test", {})
    results = {
        "finetune/classifier/video_top1": test.get("test/video_top1", float("nan")),
        "finetune/classifier/clip_top1": test.get("test/clip_top1", float("nan")),
    }
    out.path("finetune.json").write_text(json.dumps(summary, default=str, indent=1))
    return results, [
        f"fine-tuning (run {summary.get('mlflow_run_id', '')})",
        f"  video top1 {results['finetune/classifier/video_top1']:.3f}, "
        f"clip top1 {results['finetune/classifier/clip_top1']:.3f}",
    ]


def _model_kw(model: ModelConfig) -> dict[str, Any]:
    return {"backbone": model.backbone, "width": model.width}


def evaluate_checkpoint(
    suite: EvalSuite, checkpoint: str, out_dir: str | Path, suite_dir: Path | None = None
) -> dict[str, Any]:
    """Run the enabled evaluations of `suite` on `checkpoint`; write DIR/results.json and
    the plots; log an MLflow run. Returns {"results", "report", "source", "mlflow_run_id"}.
    `suite_dir` (the suite file's folder) resolves a relative fine-tuning config."""
    from rayssl import preflight
    from rayssl.launch import resolve_paths
    from rayssl.raystart import start_ray
    from rayssl.tracking_uri import real_tracking_uri

    t0 = time.perf_counter()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = RunFiles(Path(out_dir))
    cfg = resolve_paths(suite.as_config())
    suite = replace(suite, data=cfg.data, run=cfg.run)
    check_suite_paths(suite, suite_dir)
    source = resolve_checkpoint(checkpoint, cfg)
    backbone = build_backbone_from(source)
    table = load_manifest(suite.data.manifest, suite.data)
    check_labels(suite, table)
    table = needed_videos(suite, table)
    # the results go to MLflow at the end: an unwritable store must not waste the run
    preflight.check_tracking_uri(real_tracking_uri(suite.run.tracking_uri))
    start_ray()

    feats = _Features(suite, backbone, table, out)
    if suite.retrieval.enabled:
        feats.want(_clips(suite.retrieval.clips, suite), _layers(suite.retrieval.layers, suite))
    if suite.linear.enabled:
        feats.want(_clips(suite.linear.clips, suite), _layers(suite.linear.layers, suite))
    if suite.similarity.enabled:
        feats.want(suite.similarity.clips, suite.similarity.layers)

    results: dict[str, float] = {}
    report: list[str] = []
    if suite.retrieval.enabled:
        r, lines = _retrieval(suite, feats, out)
        results.update(r)
        report += lines
    if suite.linear.enabled:
        r, lines = _linear(suite, feats)
        results.update(r)
        report += lines
    if suite.similarity.enabled:
        r, lines = _similarity(suite, feats, out)
        results.update(r)
        report += lines
    if suite.attention.enabled:
        report += _attention(suite, backbone, table, out)
    if suite.finetune.enabled:
        r, lines = _finetune(suite, source, out, suite_dir)
        results.update(r)
        report += lines
    skipped = {k: v for f in feats.cache.values() for k, v in f.skipped.items()}
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
    }


def log_to_mlflow(
    suite: EvalSuite,
    source: BackboneSource,
    checkpoint: str,
    results: dict,
    files: Sequence[Path],
) -> str:
    """One MLflow run per evaluation, nested under (and tagged with) the pre-training run
    when the checkpoint names one; the results as metrics, and as artifacts the `files`
    this run wrote (`RunFiles.written`) that are reports or plots (json, png, txt, csv)."""
    import mlflow

    from rayssl.config import flatten
    from rayssl.tracking_uri import real_tracking_uri
    from rayssl.train.tracking import (
        PRETRAIN_RUN_TAG,
        experiment_id,
        git_commit,
    )

    client = mlflow.MlflowClient(real_tracking_uri(suite.run.tracking_uri))
    tags = {
        "checkpoint": storage.redact(checkpoint),
        "checkpoint_kind": source.kind,
        "backbone": source.model.backbone,
        "evaluation": "suite",
        "git_commit": git_commit(),
    }
    exp_id = None
    if source.pretrain_run_id:
        tags[PRETRAIN_RUN_TAG] = source.pretrain_run_id
        try:
            parent = client.get_run(source.pretrain_run_id)
            exp_id = parent.info.experiment_id
            tags["mlflow.parentRunId"] = source.pretrain_run_id
        except mlflow.exceptions.MlflowException:
            exp_id = None  # the pre-training run lives in another tracking store
    if exp_id is None:
        exp_id = experiment_id(client, suite.run.experiment)
    run = client.create_run(exp_id, run_name=f"{suite.run.name}-{source.label}", tags=tags)
    run_id = run.info.run_id
    params = {k: str(v)[:500] for k, v in flatten(dataclasses.asdict(suite)).items()}
    items = list(params.items())
    for i in range(0, len(items), 100):
        client.log_batch(
            run_id, params=[mlflow.entities.Param(k, v) for k, v in items[i : i + 100]]
        )
    ts = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, float(v), ts, 0) for k, v in results.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    for p in sorted(files):
        if p.suffix in ARTIFACT_SUFFIXES and p.is_file():
            client.log_artifact(run_id, str(p))
    client.set_terminated(run_id)
    return run_id


def baseline_suite(suite: EvalSuite, source: BackboneSource) -> EvalSuite:
    """The suite for the random-init baseline of `source`: same backbone, same seed."""
    model = replace(suite.model, **_model_kw(source.model))
    return replace(suite, model=model, run=replace(suite.run, seed=source.seed))


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
