"""Decoding on CPU nodes, training on "GPU" nodes, on a real multi-node Ray cluster.

Two Ray nodes in separate processes (`ray.cluster_utils.Cluster`): a training node that
advertises `trainer` (standing in for a GPU node) and a decode node that advertises
`decode`. The job pins its two train workers to `trainer` (`train.worker_resources`)
and the Ray Data decode tasks to `decode` (`data.decode_resources`), each worker's
pipeline holding its share of the decode CPUs (`data.decode_cpus_per_worker`). Every
sample says which node decoded it (RAYSSL_TEST_TRACE), so the test checks where each
step's clips came from, and that both workers trained and logged their data wait.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest

from tests.conftest import ROOT, tiny_overrides
from tests.train.test_pretrain import DEBUG, _runs


@pytest.mark.slow
def test_decode_on_cpu_nodes_and_training_on_trainer_nodes(tiny_manifest, tmp_path, monkeypatch):
    from ray.cluster_utils import Cluster

    trace = tmp_path / "trace"
    trace.mkdir()
    # the nodes' workers inherit the raylets' environment: set it before they start
    monkeypatch.setenv("RAYSSL_TEST_TRACE", str(trace))
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={"num_cpus": 2, "resources": {"trainer": 2}, "include_dashboard": False},
    )
    try:
        decode_node = cluster.add_node(num_cpus=3, resources={"decode": 3})
        cluster.wait_for_nodes()
        tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHONUNBUFFERED": "1"}
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "jobs" / "pretrain.py"),
                "--config",
                DEBUG,
                *tiny_overrides(tiny_manifest, tmp_path / "runs", "placed", tracking),
                "optim.epochs=1",
                "data.clips_per_video=4",
                "data.val_split=",
                "train.num_workers=2",
                "train.cpus_per_worker=0.5",
                "train.worker_resources={trainer: 1}",
                "train.log_every_steps=2",
                "data.decode_resources={decode: 1}",
                "data.decode_cpus_per_worker=1.5",
                "data.object_store_mb_per_worker=64",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert out.returncode == 0, out.stderr[-4000:]
        head_id = cluster.head_node.node_id
        lines = [json.loads(x) for f in trace.glob("trace-*.jsonl") for x in f.open()]
        assert {line["rank"] for line in lines} == {0, 1}
        assert {line["node"] for line in lines} == {head_id}, "training left the trainer node"
        decoded = {n for line in lines for n in line["decode_nodes"]}
        assert decoded == {decode_node.node_id}, "decoding left the decode node"
        assert sum(len(line["draws"]) for line in lines) == 36  # 9 videos x 4, each once
        run_id = _runs(tracking, "placed").iloc[0]["run_id"]
        client = mlflow.MlflowClient(tracking)
        for rank in (0, 1):
            waits = client.get_metric_history(run_id, f"system/worker{rank}/data_wait_frac")
            assert waits and all(0.0 <= m.value <= 1.0 for m in waits)
    finally:
        cluster.shutdown()
