"""`rayssl evaluate`: strict suite configs, label checks before any work, the comparison
table, and the whole debug suite on CPU from an MLflow run (real Ray, videos, sqlite)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rayssl.checkpoint import backbone_file_payload
from rayssl.cli import main as cli_main
from rayssl.config import ConfigError, dump_config, load_config
from rayssl.evaluate.registry import EVALUATIONS
from rayssl.evaluate.suite import check_labels, comparison_table, config_path, load_suite
from rayssl.io.manifest import ManifestError, read_manifest
from rayssl.pretext import build_pretext
from rayssl.train.step import build_model
from tests.conftest import ROOT

SUITE = ROOT / "configs" / "eval_debug.yaml"


def test_suite_config_is_strict():
    suite = load_suite(SUITE, ["data.manifest=m.parquet", "retrieval.ks=[1,3]"])
    assert suite.retrieval.ks == [1, 3] and suite.finetune.enabled
    with pytest.raises(ConfigError, match="retrieval.kz: unknown key"):
        load_suite(SUITE, ["retrieval.kz=[1]"])
    with pytest.raises(ConfigError, match="features.inference.clips: bad clip spec"):
        load_suite(SUITE, ["features.inference.clips=every:2"])
    with pytest.raises(ConfigError, match="linear.layers: .* not layer names"):
        load_suite(SUITE, ["linear.layers=[pool-9]"])  # names; the backbone's are checked later
    assert load_suite(SUITE, ["retrieval.layers=[pool4,pool5_vcop]"]).retrieval.layers == [
        "pool4",
        "pool5_vcop",
    ]
    with pytest.raises(ConfigError, match="linear.protocol"):
        load_suite(SUITE, ["linear.protocol=bootstrap"])
    with pytest.raises(ConfigError, match="data.manifest"):
        load_suite(SUITE, ["data.manifest="])


@pytest.mark.parametrize("name", ["ucf101", "hmdb51", "yupenn", "aslan", "debug"])
def test_shipped_suites_load(name):
    suite = load_suite(ROOT / "configs" / f"eval_{name}.yaml")
    if suite.finetune.enabled:
        assert config_path(suite.finetune.config, None).exists()
        load_config(config_path(suite.finetune.config, None), suite.finetune.overrides)


def test_labelled_evaluations_refuse_unlabelled_manifests(tiny_manifest):
    table = read_manifest(str(tiny_manifest))
    suite = load_suite(SUITE, [f"data.manifest={tiny_manifest}"])
    check_labels(suite, table)  # labelled: fine
    unlabelled = table.set_column(
        table.schema.get_field_index("label"), "label", pa.array([-1] * table.num_rows, pa.int64())
    )
    with pytest.raises(ManifestError, match="retrieval .query.: the manifest has no class labels"):
        check_labels(suite, unlabelled)
    with pytest.raises(ManifestError, match="split 'test' has no usable video"):
        check_labels(load_suite(SUITE, ["retrieval.query_split=test", "data.manifest=m"]), table)
    only_linear = load_suite(SUITE, ["retrieval.enabled=false", "data.manifest=m"])
    with pytest.raises(ManifestError, match="knn .query."):  # the next labelled one
        check_labels(only_linear, unlabelled)
    only_linear = load_suite(
        SUITE, ["retrieval.enabled=false", "knn.enabled=false", "data.manifest=m"]
    )
    with pytest.raises(ManifestError, match="linear .train."):
        check_labels(only_linear, unlabelled)
    only_probe = load_suite(
        SUITE,
        [
            "data.manifest=m",
            *(f"{e}.enabled=false" for e in ("retrieval", "knn", "linear", "similarity")),
        ],
    )
    with pytest.raises(ManifestError, match="attentive probe .train."):
        check_labels(only_probe, unlabelled)


def test_comparison_table():
    text = comparison_table(
        {"pre": {"retrieval/pool5/top1": 0.5}, "random init": {"retrieval/pool5/top1": 0.25}}
    )
    header, row = text.splitlines()
    assert "pre" in header and "random init" in header and "delta" in header
    assert row.split()[-3:] == ["0.500", "0.250", "+0.250"]
    # more checkpoints: each compared with the last column (the baseline)
    three = comparison_table(
        {
            "pace pre-trained": {"a": 0.5},
            "statistics pre-trained": {"a": 0.375},
            "random init": {"a": 0.25},
        }
    )
    header, row = three.splitlines()
    assert "delta pace" in header and "delta statisti" in header
    assert row.split()[-2:] == ["+0.250", "+0.125"]


def test_config_path_falls_back_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("configs/finetune_debug.yaml", None) == ROOT / "configs/finetune_debug.yaml"
    (tmp_path / "mine.yaml").write_text("{}")
    assert config_path("mine.yaml", None) == Path("mine.yaml")


def _logged_pretraining(tmp_path: Path, tracking: str) -> str:
    """An MLflow run holding a pre-trained backbone.pt and its config.yaml."""
    cfg = load_config(ROOT / "configs" / "debug.yaml", ["model.width=0.0625", "run.seed=4"])
    torch.manual_seed(11)
    backbone = build_model(cfg, build_pretext(cfg.pretext, 16)).backbone
    client = mlflow.MlflowClient(tracking)
    exp = client.create_experiment("pre", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp, tags={"run_name": "pre"}).info.run_id
    torch.save(backbone_file_payload(backbone, cfg.model), tmp_path / "backbone.pt")
    client.log_artifact(run_id, str(tmp_path / "backbone.pt"), "weights")
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    client.log_artifact(run_id, str(tmp_path / "config.yaml"))
    client.set_terminated(run_id)
    return run_id


@pytest.mark.slow
def test_evaluate_whole_debug_suite_on_cpu(ray_local, tiny_manifest, tmp_path, capsys):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id = _logged_pretraining(tmp_path, tracking)
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        f"runs:/{run_id}",
        "--suite",
        str(SUITE),
        "--out",
        str(out),
        f"data.manifest={tiny_manifest}",
        f"run.tracking_uri={tracking}",
        f"run.storage_path={tmp_path / 'runs'}",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        "features.inference.clips=uniform:3",
        "retrieval.layers=[pool3,pool4,pool5,pool5_vcop]",
        "similarity.num_pairs=24",
        "similarity.num_folds=2",
        "finetune.overrides=[optim.epochs=1, data.clips_per_video=1, train.batch_size=4]",
    ]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    expected = {
        *(
            f"retrieval/{layer}/top{k}"
            for layer in ("pool3", "pool4", "pool5", "pool5_vcop")
            for k in (1, 5, 10)
        ),
        *(f"linear/{layer}/accuracy" for layer in ("pool3", "pool4", "pool5")),
        "similarity/pool3-pool4-pool5/accuracy",
        *(f"knn/{layer}/k{k}_top1" for layer in ("pool3", "pool4", "pool5") for k in (5, 10)),
        "attentive_probe/pool5_map/accuracy",
        "finetune/classifier/video_top1",
        "finetune/classifier/clip_top1",
    }
    assert expected <= set(results)
    assert all(0.0 <= v <= 1.0 for v in results.values()), results
    for name in ("retrieval_topk.png", "attention.png", "pairs.csv", "report.txt"):
        assert (out / name).exists(), name
    # every file an evaluation wrote is one it declares (`Evaluation.files`)
    declared = {f for e in EVALUATIONS.values() for f in e.files} | {"results.json", "report.txt"}
    written = {p.name for p in out.iterdir() if not p.name.startswith("features-")}
    assert written <= declared, written - declared
    assert "retrieval/pool5/top1" in printed and "fine-tuning" in printed
    # One MLflow run, nested under the pre-training run and tagged with it.
    client = mlflow.MlflowClient(tracking)
    [ev] = client.search_runs(
        [client.get_run(run_id).info.experiment_id],
        filter_string=f"tags.`rayssl.pretrain_run_id` = '{run_id}' and tags.evaluation = 'suite'",
    )
    assert ev.data.tags["mlflow.parentRunId"] == run_id
    assert ev.data.metrics["retrieval/pool5/top1"] == pytest.approx(results["retrieval/pool5/top1"])
    assert "results.json" in {a.path for a in client.list_artifacts(ev.info.run_id)}

    # The numbers, again from what the run wrote, by this file's own small numpy code:
    # retrieval and the linear probe from the features Parquet ...
    table = pq.read_table(out / "features-uniform-3.parquet").to_pydict()
    labels, splits = np.array(table["label"]), np.array(table["split"])
    query, gallery = splits == "val", splits == "train"
    assert query.sum() == 3 and gallery.sum() == 9 and (labels >= 0).all()
    for layer in ("pool3", "pool4", "pool5", "pool5_vcop"):
        x = np.array(table[layer], dtype=np.float64)
        for k in (1, 5, 10):
            hit = _topk_hits(x[query], labels[query], x[gallery], labels[gallery], k)
            assert results[f"retrieval/{layer}/top{k}"] == pytest.approx(hit.mean()), (layer, k)
    for layer in ("pool3", "pool4", "pool5"):
        x = np.array(table[layer], dtype=np.float64)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        predicted = _logreg_predict(x[gallery], labels[gallery], x[query], C=1.0)
        accuracy = float(np.mean(predicted == labels[query]))
        assert results[f"linear/{layer}/accuracy"] == pytest.approx(accuracy), layer
    # ... and the stored features are the checkpoint's backbone on the decoded clips
    manifest = {r["video_id"]: r for r in read_manifest(str(tiny_manifest)).to_pylist()}
    for i in (int(np.flatnonzero(query)[0]), int(np.flatnonzero(gallery)[0])):
        row = manifest[table["video_id"][i]]
        mine = _features_of(tmp_path / "backbone.pt", row, ["pool3", "pool5"], num_clips=3)
        assert table["num_clips"][i] == 3
        for layer, vector in mine.items():
            np.testing.assert_allclose(table[layer][i], vector, rtol=1e-4, atol=1e-5)


def _topk_hits(q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, k: int):
    """Per query: does one of its k most cosine-similar gallery videos share its class?
    (ties: the lower gallery index first)"""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    nearest = np.argsort(-(q @ g.T), axis=1, kind="stable")[:, :k]
    return (gl[nearest] == ql[:, None]).any(axis=1)


def _logreg_predict(x: np.ndarray, y: np.ndarray, test: np.ndarray, C: float) -> np.ndarray:
    """L2-regularised logistic regression (scikit-learn's objective: C x the summed
    log-loss + |W|^2 / 2, the intercept not penalised; binary for two classes, else
    multinomial), fitted by plain gradient descent to a vanishing gradient."""
    classes = np.unique(y)
    if len(classes) == 1:
        return np.full(len(test), classes[0])
    binary = len(classes) == 2
    k = 1 if binary else len(classes)
    xb = np.hstack([x, np.ones((len(x), 1))])
    onehot = (y[:, None] == classes[None, :]).astype(np.float64)
    target = onehot[:, 1:] if binary else onehot
    w = np.zeros((xb.shape[1], k))
    step = 1.0 / (C * np.linalg.norm(xb, 2) ** 2 + 1.0)
    for _ in range(200_000):
        z = xb @ w
        if binary:
            p = 1.0 / (1.0 + np.exp(-z))
        else:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            p = e / e.sum(axis=1, keepdims=True)
        grad = C * xb.T @ (p - target)
        grad[:-1] += w[:-1]  # the penalty: weights only
        if np.abs(grad).max() < 1e-9:
            break
        w -= step * grad
    else:
        raise AssertionError("the logistic regression did not converge")
    z = np.hstack([test, np.ones((len(test), 1))]) @ w
    return classes[(z[:, 0] > 0).astype(int)] if binary else classes[z.argmax(axis=1)]


def _features_of(checkpoint: Path, row: dict, layers: list[str], num_clips: int) -> dict:
    """Per-video mean features of `num_clips` uniformly placed 16-frame clips: the
    backbone loaded from the checkpoint file, the frames decoded one by one from the
    start (the sequential reference decode), resized to 32x43, centre-cropped to 32x32."""
    from rayssl.io.video import read_all_frames
    from rayssl.models import build_backbone

    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    backbone = build_backbone(payload["model"]["backbone"], payload["model"]["width"])
    backbone.load_state_dict(payload["state_dict"])
    backbone.eval()
    frames = read_all_frames(row["uri"], size=(32, 43))
    assert len(frames) == row["num_frames"]
    starts = np.round(np.linspace(0, len(frames) - 16, num_clips)).astype(int)
    left = int(round((43 - 32) / 2))
    clips = np.stack([frames[s : s + 16, :, left : left + 32] for s in starts])
    x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255.0
    x = (x - 0.45) / 0.225  # rayssl.train.step's MEAN and STD
    with torch.no_grad():
        maps = backbone.forward_features(x, layers)
    return {
        k: (v.flatten(2).mean(2) if v.dim() > 2 else v).mean(0).numpy() for k, v in maps.items()
    }


def test_only_the_splits_an_evaluation_uses_are_extracted():
    from rayssl.evaluate.suite import needed_videos

    table = pa.table(
        {"video_id": ["a", "b", "c", "d"], "split": ["pretrain", "train", "val", "test"]}
    )
    base = ["data.manifest=m", "similarity.enabled=false", "finetune.enabled=false"]
    suite = load_suite(SUITE, [*base, "attention.enabled=false"])  # retrieval+linear: val, train
    assert needed_videos(suite, table)["video_id"].to_pylist() == ["b", "c"]
    with_test = load_suite(SUITE, [*base, "attention.split=test"])
    assert needed_videos(with_test, table)["video_id"].to_pylist() == ["b", "c", "d"]
    loo = load_suite(SUITE, [*base, "linear.protocol=loo"])  # every labelled video
    assert needed_videos(loo, table).num_rows == 4


def _job(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python jobs/X.py ARGS` run in-process (runpy, as `__main__`): its exit code and
    stderr. (A subprocess costs ~10 s of imports per script on a 2-core runner.)"""
    import runpy
    import sys

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", [args[0], *args[1:]])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(args[0], run_name="__main__")
    return int(done.value.code or 0), capsys.readouterr().err


def test_job_entry_points_refuse_bad_configs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _job(
        [
            str(ROOT / "jobs" / "finetune.py"),
            "--config",
            str(ROOT / "configs" / "finetune_debug.yaml"),
            "optim.bogus=1",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "optim.bogus: unknown key" in err
    code, err = _job(
        [
            str(ROOT / "jobs" / "evaluate.py"),
            "--checkpoint",
            "random",
            "--suite",
            str(SUITE),
            "--out",
            "o",
            "retrieval.kz=1",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 2 and "retrieval.kz: unknown key" in err
    assert not (tmp_path / "o").exists()


def test_evaluate_job_entry_point(ray_local, tiny_manifest, tmp_path, monkeypatch, capsys):
    """jobs/evaluate.py as `ray job submit` runs it, in-process on the session's Ray (a
    subprocess would start a Ray of its own: ~20 s more; `make demo` submits it for real).
    Files that were in --out before the run (a stray note, someone's credentials) are not
    uploaded to MLflow: the run's artifacts are exactly the reports it wrote."""
    import runpy
    import sys

    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "notes.txt").write_text("not this run's\n")
    (tmp_path / "ev" / "credentials.json").write_text('{"token": "s3cr3t"}\n')
    argv = [
        "--checkpoint",
        "random",
        "--suite",
        str(SUITE),
        "--out",
        str(tmp_path / "ev"),
        f"data.manifest={tiny_manifest}",
        f"run.tracking_uri=sqlite:///{tmp_path / 'm.db'}",
        "model.width=0.0625",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
        "features.inference.clips=uniform:2",
        "similarity.enabled=false",
        "finetune.enabled=false",
        "attention.enabled=false",
    ]
    monkeypatch.setattr(sys, "argv", ["jobs/evaluate.py", *argv])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "jobs" / "evaluate.py"), run_name="__main__")
    assert done.value.code == 0
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line[len("RESULT ") :])
    assert result["results"] == json.loads((tmp_path / "ev" / "results.json").read_text())
    assert "retrieval/pool5/top1" in result["results"] and result["mlflow_run_id"]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    artifacts = {a.path for a in client.list_artifacts(result["mlflow_run_id"])}
    assert artifacts == {
        *("results.json", "report.txt", "retrieval.txt", "retrieval_topk.png"),
        *("knn.txt", "attentive_probe.txt"),
    }
    metrics = client.get_run(result["mlflow_run_id"]).data.metrics
    for key in ("knn/pool5/k10_top1", "knn/pool3/k5_top5", "attentive_probe/pool5_map/accuracy"):
        assert metrics[key] == pytest.approx(result["results"][key])
    assert (tmp_path / "ev" / "notes.txt").exists()  # left alone, not uploaded


def test_evaluate_checks_every_path_before_extracting(tiny_manifest, tmp_path, capsys):
    """eval_aslan.yaml with only the manifest set: its pairs CSV is still the example's
    placeholder. Refused before Ray starts or a feature is extracted; a missing pairs
    file or fine-tuning config is refused the same way."""
    from rayssl.cli import main as cli_main

    aslan = ROOT / "configs" / "eval_aslan.yaml"
    out = tmp_path / "eval"
    base = ["evaluate", "--checkpoint", "random", "--suite", str(aslan), "--out", str(out)]
    assert cli_main([*base, f"data.manifest={tiny_manifest}"]) == 2
    err = capsys.readouterr().err
    assert "similarity.pairs: s3://YOUR-BUCKET/aslan/pairs.csv is a placeholder" in err
    assert not (out / "results.json").exists() and not list(out.glob("*.parquet"))
    gone = tmp_path / "pairs.csv"
    assert cli_main([*base, f"data.manifest={tiny_manifest}", f"similarity.pairs={gone}"]) == 2
    assert f"similarity.pairs: {gone} does not exist" in capsys.readouterr().err
    debug = [
        "evaluate", "--checkpoint", "random", "--suite", str(SUITE), "--out", str(out),
        f"data.manifest={tiny_manifest}", f"finetune.config={tmp_path / 'nope.yaml'}",
    ]  # fmt: skip
    assert cli_main(debug) == 2
    assert f"finetune.config: {tmp_path / 'nope.yaml'} does not exist" in capsys.readouterr().err
