"""The cluster path end to end, with everything in S3: score, then pre-train the
statistics pretext with a curriculum, stop, resubmit.

A real S3 API (moto server on loopback), a real local Ray head and `ray job submit`:
the videos and manifest are in the bucket; `jobs/score.py` writes the scored manifest
back to it; the statistics pre-training (flow computed in the data tasks) with a
single-step curriculum is stopped after its first checkpoint reached the bucket,
submitted again, and must resume from that S3 checkpoint into the right curriculum
stage and finish the same MLflow run (tracking URI from MLFLOW_TRACKING_URI, as a user
would set it), with a falling loss. No credential may appear in MLflow or the logs.
This is also the `ray job stop` / resubmit test for local storage: the storage layer is
the same code path, so a second local copy would only cost CI time.
"""

from __future__ import annotations

import io
import json
import time

import mlflow
import pytest
import torch
from s3server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    boto3_client,
    make_bucket,
    s3_env,
    upload_dir,
)

from rayssl.cli import main as cli
from rayssl.io.manifest import read_manifest
from rayssl.localhead import stop_job, submit_job
from tests.conftest import ROOT, settle_jobs

BUCKET = "rayssl-test-s3-pretrain"  # the session's moto server: a bucket of its own


def _checkpoint_keys(endpoint: str, prefix: str) -> list[str]:
    s3 = boto3_client(endpoint)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith("/state.pt")]
    return sorted(keys)


def _epoch_of(endpoint: str, key: str) -> int:
    body = boto3_client(endpoint).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return int(torch.load(io.BytesIO(body), weights_only=False)["epoch"])


@pytest.mark.slow
def test_s3_job_submit_stop_resubmit_resumes_from_s3_checkpoint(
    ray_head, moto_endpoint, tiny_manifest, tmp_path
):
    """On the session's head and moto server: the head's environment has the server's
    address and credentials (`ray_head_session`), as a real cluster's nodes would."""
    local = tiny_manifest.parent  # its 12 generated videos (the manifest is made again on S3)
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    endpoint = moto_endpoint
    with s3_env(endpoint):
        make_bucket(endpoint, BUCKET)
        upload_dir(endpoint, local / "videos", BUCKET, "videos")
        manifest = f"s3://{BUCKET}/manifest.parquet"
        assert (
            cli(
                [
                    "manifest",
                    f"s3://{BUCKET}/videos",
                    "--out",
                    manifest,
                    "--no-ray",
                    "--val-fraction",
                    "0.25",
                ]
            )
            == 0
        )
        scored = f"s3://{BUCKET}/scored.parquet"
        overrides = [
            f"data.manifest={scored}",
            f"run.storage_path=s3://{BUCKET}/runs",
            f"run.artifact_location=s3://{BUCKET}/mlflow",
            "run.name=s3run",
            "run.experiment=s3exp",
            "data.clips_per_video=2",
            "data.augment.resize=[32,43]",
            "data.augment.crop=[32,32]",
            "model.width=0.0625",
            "pretext.statistics.hidden_dim=32",
            "train.batch_size=4",
            "optim.lr=3e-3",
            "optim.epochs=4",
            "curriculum.enabled=true",
            "curriculum.step_epochs=2",
        ]
        entry = ["python", "jobs/pretrain.py", "--config", "configs/stats_debug.yaml", *overrides]
        score = ["python", "jobs/score.py", manifest, "--out", scored]
        score += ["--resize", "32", "43", "--crop", "32"]  # the training geometry
        pause = tmp_path / "pause"
        pause.mkdir()
        # The first job waits after epoch 1's checkpoint until it is stopped (no race).
        job_env = {
            "MLFLOW_TRACKING_URI": tracking,
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
            "RAYSSL_TEST_PAUSE": f"{pause}:1",
        }
        # Credentials reach the job through the head's environment, as on a real cluster.
        head = ray_head
        out0 = submit_job(head, score, ROOT, env_vars=job_env, submission_id="s3-score")
        assert out0.returncode == 0, (out0.stdout + out0.stderr)[-4000:]
        scored_table = read_manifest(scored)
        train_scores = [
            d
            for d, s in zip(
                scored_table["difficulty"].to_pylist(),
                scored_table["split"].to_pylist(),
                strict=True,
            )
            if s == "train"
        ]
        assert len(train_scores) == 9 and all(0.0 < d <= 1.0 for d in train_scores)
        out1 = submit_job(
            head,
            entry,
            ROOT,
            env_vars=job_env,
            submission_id="s3-first",
            wait=False,
            timeout_s=120,
        )
        assert out1.returncode == 0, out1.stderr[-3000:]
        deadline = time.monotonic() + 300
        while not (pause / "paused").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (pause / "paused").exists(), "the job never reached epoch 1's checkpoint"
        stop_job(head, "s3-first")
        # stopped, and its train workers gone (still paused: none trains on) before the
        # resubmission starts on the same head
        settle_jobs(head)
        done = _epoch_of(endpoint, _checkpoint_keys(endpoint, "runs/s3run/")[-1])
        assert done == 1
        logs1 = _job_logs(head, "s3-first")

        out2 = submit_job(head, entry, ROOT, env_vars=job_env, submission_id="s3-second")
        assert out2.returncode == 0, (out2.stdout + out2.stderr)[-4000:]
        result = json.loads(
            [ln for ln in out2.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:]
        )
        assert result["metrics"]["epoch"] == 3
        assert result["checkpoint"].startswith(f"s3://{BUCKET}/runs/s3run/")

        mlflow.set_tracking_uri(tracking)
        runs = mlflow.search_runs(experiment_names=["s3exp"])
        assert len(runs) == 1
        run = runs.iloc[0]
        assert run["status"] == "FINISHED"
        client = mlflow.MlflowClient(tracking)

        def history(key: str) -> list[float]:
            return [m.value for m in client.get_metric_history(run["run_id"], key)]

        # Curriculum: the easiest half (5 of 9) for epochs 0-1, then all; the resumed
        # job (epochs 2-3) landed in stage 1.
        assert history("curriculum/stage")[-4:] == [0, 0, 1, 1]
        assert history("curriculum/videos")[-4:] == [5, 5, 9, 9]
        losses = history("train/loss")
        assert losses[-1] < losses[0], losses
        assert history("train/motion_loss") and history("val/label_acc")
        starts = history("data/start_epoch")
        # Resumed from an S3 checkpoint: the latest one Ray had registered when the job
        # was stopped (the newest object may still have been registering then).
        assert starts[0] == 0 and 1 <= starts[-1] <= done + 1
        # The final weights went to the S3 artifact store.
        keys = [
            o["Key"]
            for o in boto3_client(endpoint)
            .list_objects_v2(Bucket=BUCKET, Prefix="mlflow/")
            .get("Contents", [])
        ]
        assert any(k.endswith("weights/backbone.pt") for k in keys), keys

        # No credential anywhere: params, tags, job logs and the client's output.
        secrets = [FAKE_SECRET_ACCESS_KEY, FAKE_ACCESS_KEY_ID]
        texts = [
            json.dumps(run.to_dict(), default=str),
            out0.stdout,
            out0.stderr,
            logs1,
            out2.stdout,
            out2.stderr,
            out1.stdout,
            out1.stderr,
        ]
        for text in texts:
            for secret in secrets:
                assert secret not in text


def _job_logs(head, submission_id: str) -> str:
    import subprocess

    from rayssl.localhead import _bin_dir

    out = subprocess.run(
        [f"{_bin_dir()}/ray", "job", "logs", f"--address={head.dashboard_url}", submission_id],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Reported metrics" in out.stdout or "Reporting training result" in out.stdout
    return out.stdout
