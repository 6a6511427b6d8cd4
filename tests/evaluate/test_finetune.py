"""Fine-tuning: the supervised task, the test protocol's metrics on known logits, and a
real fine-tuning run (Ray Train, real videos, sqlite MLflow) initialised from a checkpoint."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from rayssl.config import PretextConfig, load_config
from rayssl.evaluate.finetune import (
    classification_report,
    confusion_matrix,
    finetune_config,
    plot_confusion,
    softmax,
    video_probabilities,
)
from rayssl.io.manifest import ManifestError, read_manifest, write_manifest
from rayssl.pretext import build_pretext
from rayssl.train.step import DeviceSettings, batch_to_device, build_model
from tests.conftest import ROOT


def test_video_prediction_averages_softmax_not_logits():
    # Three clips of one video: two mildly for class 1, one very sure of class 0.
    # Mean logits [3.33, 2.0] pick class 0; the mean softmax [0.37, 0.63] picks class 1.
    logits = np.array([[0.0, 3.0], [10.0, 0.0], [0.0, 3.0]])
    probs = softmax(logits)
    ids, video = video_probabilities(probs, np.array(["v", "v", "v"]))
    assert ids == ["v"]
    assert logits.mean(0).argmax() == 0
    assert video[0].argmax() == 1
    np.testing.assert_allclose(video[0], probs.mean(0))


def test_video_probabilities_groups_in_first_appearance_order():
    probs = np.array([[1, 0], [0, 1], [0.5, 0.5], [0, 1]], float)
    ids, video = video_probabilities(probs, np.array(["b", "a", "b", "a"]))
    assert ids == ["b", "a"]
    np.testing.assert_allclose(video, [[0.75, 0.25], [0, 1]])


def test_classification_report_on_known_predictions():
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 0])
    r = classification_report(probs, labels, num_classes=4)
    assert r["video_top1"] == 0.5
    np.testing.assert_array_equal(r["predictions"], [0, 1, 0, 2])
    assert r["confusion"].tolist() == [[1, 0, 1, 0], [1, 1, 0, 0], [0] * 4, [0] * 4]
    assert r["per_class_accuracy"][:2].tolist() == [0.5, 0.5]
    assert np.isnan(r["per_class_accuracy"][2:]).all()  # no test video of classes 2, 3
    assert confusion_matrix(labels, labels, 2).trace() == 4
    with pytest.raises(ValueError, match="no test video"):
        classification_report(np.zeros((0, 2)), np.zeros(0, int), 2)


def test_plot_confusion_writes_png(tmp_path):
    path = tmp_path / "cm.png"
    plot_confusion(path, np.array([[3, 1], [0, 2]]), ["run", "jump"], "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_supervised_task_clips_and_loss():
    task = build_pretext(PretextConfig(name="supervised", num_classes=3), clip_len=16)
    rng = np.random.default_rng(0)
    for n in (16, 40, 100):
        idx = task.plan(n, rng).clips[0]
        assert (np.diff(idx) == 1).all() and idx[0] >= 0 and idx[-1] < n
    short = task.plan(10, rng).clips[0]
    assert short.tolist() == [*range(10), *[9] * 6]
    cfg = load_config(
        ROOT / "configs" / "finetune_debug.yaml", ["pretext.num_classes=3", "model.width=0.125"]
    )
    model = build_model(cfg, task)
    assert model.head.fc.out_features == 3 and model.head.dropout.p == 0.5
    batch = {
        "clip": np.zeros((2, 16, 32, 32, 3), np.uint8),
        "class_label": np.array([2, -1]),
        "valid": np.array([True, False]),
    }
    loss, metrics = model(batch_to_device(batch, DeviceSettings(torch.device("cpu"))))
    assert float(metrics["num_valid"]) == 1.0 and loss.requires_grad
    with pytest.raises(ValueError, match="num_classes"):
        build_pretext(PretextConfig(name="supervised"), clip_len=16)


def test_finetune_refuses_a_manifest_without_labels(tiny_manifest, tmp_path):
    from rayssl.launch import prepare_config

    table = read_manifest(str(tiny_manifest))
    unlabelled = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array([-1] * table.num_rows, pa.int64())
    )
    path = tmp_path / "unlabelled.parquet"
    write_manifest(unlabelled, str(path))
    cfg = load_config(ROOT / "configs" / "finetune_debug.yaml", [f"data.manifest={path}"])
    with pytest.raises(ManifestError, match="no class labels"):
        prepare_config(finetune_config(cfg, "random"))
    labelled = load_config(
        ROOT / "configs" / "finetune_debug.yaml", [f"data.manifest={tiny_manifest}"]
    )
    assert prepare_config(finetune_config(labelled, "random")).pretext.num_classes == 4


def test_a_test_protocol_in_local_mode_is_refused_before_training():
    """Local mode persists no checkpoint for the test protocol to read: refused up front,
    not skipped after the training."""
    from rayssl.config import ConfigError
    from rayssl.evaluate.finetune import finetune

    cfg = load_config(ROOT / "configs" / "finetune_debug.yaml", ["train.num_workers=0"])
    assert cfg.finetune.test_split

    def never(_cfg):
        raise AssertionError("trained")

    with pytest.raises(ConfigError, match="train.num_workers >= 1"):
        finetune(cfg, "random", never)


@pytest.mark.slow
def test_finetune_from_checkpoint_end_to_end(ray_local, tiny_manifest, tmp_path):
    """Fine-tune (1 Ray Train worker) from a backbone.pt; the test protocol logs to MLflow."""
    import mlflow

    from rayssl.checkpoint import backbone_file_payload
    from rayssl.evaluate.finetune import finetune
    from rayssl.launch import run_training

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    pre = load_config(ROOT / "configs" / "debug.yaml", ["model.width=0.0625"])
    torch.manual_seed(1)
    pretrained = build_model(pre, build_pretext(pre.pretext, 16)).backbone
    weights = tmp_path / "backbone.pt"
    torch.save(backbone_file_payload(pretrained, pre.model, {"mlflow_run_id": "pre123"}), weights)
    cfg = load_config(
        ROOT / "configs" / "finetune_debug.yaml",
        [
            f"data.manifest={tiny_manifest}",
            f"run.storage_path={tmp_path / 'runs'}",
            f"run.tracking_uri={tracking}",
            "run.name=ft",
            "model.width=0.5",  # replaced by the checkpoint's 0.0625
            "data.augment.resize=[32,43]",
            "data.augment.crop=[32,32]",
            "optim.epochs=1",
            "data.clips_per_video=1",
            "train.batch_size=4",
            "finetune.inference.clips=uniform:2",
        ],
    )
    summary = finetune(cfg, str(weights), run_training)
    test = summary["test"]
    assert 0.0 <= test["test/video_top1"] <= 1.0 and 0.0 <= test["test/clip_top1"] <= 1.0
    assert test["test/videos"] == 3  # the tiny manifest's val videos
    client = mlflow.MlflowClient(tracking)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.tags["rayssl.pretrain_run_id"] == "pre123"
    assert run.data.tags["pretext"] == "supervised" and run.data.params["model.width"] == "0.0625"
    assert run.data.metrics["test/video_top1"] == pytest.approx(test["test/video_top1"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "test")}
    assert artifacts == {
        "test/per_class_accuracy.csv",
        "test/confusion_matrix.csv",
        "test/confusion_matrix.png",
    }
