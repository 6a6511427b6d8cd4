"""Fine-tuning for action recognition, and its test protocol.

`finetune(cfg, checkpoint, train)` trains supervised classification with the same Ray Train
loop as pre-training (the `supervised` task): the conv weights come from the checkpoint
(`model.init`), the classifier is new, the schedule is the config's (the thesis: the
pre-training schedule with lr 3e-3). Layer-wise lr decay (`optim.layer_decay`, a ViT
recipe) builds the optimiser's param groups there: `rayssl.train.schedule.layer_ids`
gives embeddings layer 0, block k layer k + 1 (a CNN's stages are its blocks) and the
new classifier the last layer, at the full lr. Then the test protocol of the thesis runs on
`finetune.test_split`: `finetune.inference.clips` (10 uniformly spaced clips) per video,
centre crop, softmax averaged over the clips -> video top-1; also clip top-1, per-class
accuracy and the confusion matrix, logged to the fine-tuning's MLflow run (metrics
`test/*`, artifacts `test/per_class_accuracy.csv`, `test/confusion_matrix.{csv,png}`).

The metric functions at the top are plain numpy (unit-tested on known logits).
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.checkpoint import RANDOM, load_state_strict, read_latest_state
from rayssl.config import Config, ConfigError, load_config, typed_from_dict
from rayssl.evaluate.features import run_inference
from rayssl.evaluate.registry import (
    Evaluation,
    Outcome,
    RunContext,
    TrainingRunner,
    backbone_fields,
    config_path,
    register,
)
from rayssl.io import storage
from rayssl.io.manifest import read_manifest, require_labels
from rayssl.pretext import build_pretext
from rayssl.train.inference import ProbabilityModel
from rayssl.train.step import PretextModel, build_model
from rayssl.train.tracking import Tracker

# --------------------------------------------------------------------------- metrics


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def video_probabilities(clip_probs: np.ndarray, clip_video: np.ndarray) -> tuple[list, np.ndarray]:
    """Average clip softmax outputs (N_clips, C) per video (`clip_video`: (N_clips,) ids).

    Returns the video ids (first-appearance order) and their (N_videos, C) mean softmax:
    the thesis's video prediction is the argmax of the mean of the clips' softmax.
    """
    ids, first, inverse = np.unique(clip_video, return_index=True, return_inverse=True)
    order = np.argsort(first)  # first-appearance order
    sums = np.zeros((len(ids), clip_probs.shape[1]), np.float64)
    np.add.at(sums, inverse, clip_probs)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    mean = sums / counts
    return [ids[i] for i in order], mean[order]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return m


def classification_report(
    video_probs: np.ndarray, labels: np.ndarray, num_classes: int
) -> dict[str, Any]:
    """Video top-1, per-class accuracy and the confusion matrix of mean-softmax outputs
    (N, C) against labels (N,). A class without test videos has accuracy NaN."""
    if len(video_probs) != len(labels):
        raise ValueError(f"{len(video_probs)} predictions for {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no test video to score")
    pred = video_probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, num_classes)
    per_class_total = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(per_class_total > 0, np.diag(cm) / per_class_total, np.nan)
    return {
        "video_top1": float((pred == labels).mean()),
        "per_class_accuracy": per_class,
        "per_class_videos": per_class_total,
        "confusion": cm,
        "predictions": pred,
    }


def write_per_class_csv(path: Path, report: dict[str, Any], names: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "name", "videos", "correct", "accuracy"])
        cm = report["confusion"]
        for c, acc in enumerate(report["per_class_accuracy"]):
            w.writerow([c, names[c], int(cm[c].sum()), int(cm[c, c]), f"{acc:.4f}"])


def write_confusion_csv(path: Path, cm: np.ndarray, names: list[str]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *names])
        for c, row in enumerate(cm):
            w.writerow([names[c], *[int(v) for v in row]])


def plot_confusion(path: Path, cm: np.ndarray, names: list[str], title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG (counts in the cells when few classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(names)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    size = min(4 + 0.25 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names if n <= 60 else [""] * n, rotation=90, fontsize=7)
    ax.set_yticks(ticks, names if n <= 60 else [""] * n, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    color = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title or "confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- the job


def finetune_config(cfg: Config, checkpoint: str | None) -> Config:
    """`cfg` as a fine-tuning config: the supervised task, initialised from `checkpoint`
    (None keeps `model.init`; 'random' = the from-scratch baseline)."""
    model = replace(cfg.model, init=checkpoint) if checkpoint is not None else cfg.model
    return replace(cfg, model=model, pretext=replace(cfg.pretext, name="supervised"))


def finetune(cfg: Config, checkpoint: str | None, train: TrainingRunner) -> dict[str, Any]:
    """Fine-tune with `train` (`rayssl.launch.run_training`: Ray Train), then run the test
    protocol; returns metrics and locations. The launcher is passed in, since it sits
    above the evaluations (it builds the trainer from the run plan)."""
    if cfg.finetune.test_split and cfg.train.num_workers == 0:
        raise ConfigError(
            "finetune.test_split: the test protocol reads the fine-tuned checkpoint, and local "
            "mode (train.num_workers=0) persists none; set train.num_workers >= 1"
        )
    summary, cfg = train(finetune_config(cfg, checkpoint))
    if cfg.finetune.test_split and summary["checkpoint"]:
        summary["test"] = run_test_protocol(cfg, summary["checkpoint"], summary["mlflow_run_id"])
    return summary


def _class_names(table, num_classes: int) -> list[str]:
    names = [str(c) for c in range(num_classes)]
    if "label_name" in table.column_names:
        labels, label_names = table["label"].to_pylist(), table["label_name"].to_pylist()
        for label, name in zip(labels, label_names, strict=True):
            if 0 <= label < num_classes and name:
                names[label] = str(name)
    return names


def run_test_protocol(cfg: Config, checkpoint: str, mlflow_run_id: str = "") -> dict[str, Any]:
    """The thesis's test protocol on `finetune.test_split` with the trained model of
    `checkpoint` (a Ray Train checkpoint: backbone and classifier). Logs to the MLflow
    run `mlflow_run_id` when given; returns the metrics."""

    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    state = read_latest_state(checkpoint, options)
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    model: PretextModel = build_model(cfg, pretext)
    load_state_strict(
        model, state["model"], f"fine-tuned checkpoint {storage.redact(checkpoint)!r}"
    )
    table = read_manifest(cfg.data.manifest, options=options)
    split = cfg.finetune.test_split
    test = require_labels(table, "fine-tuning test", split=split)
    out = run_inference(
        ProbabilityModel(model.backbone, model.head), test, cfg.data, cfg.finetune.inference
    )
    num_classes = cfg.pretext.num_classes
    if not out.video_ids:
        raise RuntimeError(f"fine-tuning test: no video of split {split!r} could be read")
    report = classification_report(out.outputs["probs"], out.labels, num_classes)
    metrics = {
        "test/video_top1": report["video_top1"],
        "test/clip_top1": out.clip_correct / max(out.clip_total, 1),
        "test/videos": float(len(out.video_ids)),
        "test/videos_skipped": float(sum(out.skipped.values())),
        "test/mean_class_accuracy": float(np.nanmean(report["per_class_accuracy"])),
    }
    if mlflow_run_id:
        _log_test(cfg, mlflow_run_id, metrics, report, _class_names(table, num_classes), split)
    return {**metrics, "skipped": out.skipped, "clips": str(cfg.finetune.inference.clips)}


def _log_test(
    cfg: Config,
    run_id: str,
    metrics: dict[str, float],
    report: dict[str, Any],
    names: list[str],
    split: str,
) -> None:

    tracker = Tracker(cfg, enabled=True, run_id=run_id)
    tracker.log_metrics(metrics, step=cfg.optim.epochs)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        write_per_class_csv(root / "per_class_accuracy.csv", report, names)
        write_confusion_csv(root / "confusion_matrix.csv", report["confusion"], names)
        title = f"{split}: video top-1 {report['video_top1']:.3f}"
        plot_confusion(root / "confusion_matrix.png", report["confusion"], names, title)
        for name in ("per_class_accuracy.csv", "confusion_matrix.csv", "confusion_matrix.png"):
            tracker.log_file(root / name, "test")
    tracker.finish()


# --------------------------------------------------------------------------- the suite's


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


def suite_finetune_config(suite: Any, path: Path, overrides: list[str], run_name: str) -> Config:
    """The fine-tuning config at `path` with the suite's manifest, clip geometry, storage,
    tracking and seed (one geometry for every evaluation), then `overrides` (the suite's
    `finetune.overrides`, which win)."""
    cfg = load_config(path)
    data, run = suite.data, suite.run
    augment = replace(
        cfg.data.augment, resize=list(data.augment.resize), crop=list(data.augment.crop)
    )
    cfg = replace(
        cfg,
        data=replace(
            cfg.data,
            manifest=data.manifest,
            clip_len=data.clip_len,
            augment=augment,
            endpoint_url=data.endpoint_url or cfg.data.endpoint_url,
        ),
        run=replace(
            cfg.run,
            name=run_name,
            storage_path=run.storage_path,
            seed=run.seed,
            tracking_uri=run.tracking_uri or cfg.run.tracking_uri,
        ),
    )
    return typed_from_dict(Config, cfg.to_dict(), overrides)


@register
class Finetune(Evaluation):
    """Fine-tuning's test accuracy: "finetune/classifier/{video,clip}_top1"."""

    name = "finetune"
    settings = FinetuneSuiteSettings
    order = 50
    files = ("finetune.json",)

    def paths(self, s: FinetuneSuiteSettings, suite_dir: Path | None) -> dict[str, str]:
        return {"config": str(config_path(s.config, suite_dir))}

    def run(self, s: FinetuneSuiteSettings, ctx: RunContext) -> Outcome:
        source = ctx.source
        run_name = f"{ctx.suite.run.name}-finetune-{source.kind}-{int(time.time())}"
        path = config_path(s.config, ctx.suite_dir)
        cfg = suite_finetune_config(ctx.suite, path, s.overrides, run_name)
        if source.kind == RANDOM:  # the from-scratch baseline: same backbone, same seed
            cfg = replace(cfg, model=replace(cfg.model, **backbone_fields(source.model)))
        if ctx.train is None:
            raise ConfigError(
                "finetune: this entry point cannot launch a training job (pass "
                "evaluate_checkpoint(..., train=rayssl.launch.run_training))"
            )
        summary = finetune(cfg, source.spec, ctx.train)
        test = summary.get("test", {})
        video = test.get("test/video_top1", float("nan"))
        clip = test.get("test/clip_top1", float("nan"))
        ctx.out.path("finetune.json").write_text(json.dumps(summary, default=str, indent=1))
        return Outcome(
            {"finetune/classifier/video_top1": video, "finetune/classifier/clip_top1": clip},
            [
                f"fine-tuning (run {summary.get('mlflow_run_id', '')})",
                f"  video top1 {video:.3f}, clip top1 {clip:.3f}",
            ],
        )
