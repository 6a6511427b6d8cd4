"""Node loss on a real local multi-node Ray cluster, as a spot node is lost on a cloud.

A head with no CPUs (GCS, dashboard, the job driver and the Ray Train controller, as in
cluster/aws.yaml and cluster/kuberay/raycluster.yaml) and `ray start --address` worker
nodes of their own, which hold the train workers and their decode tasks. The
pre-training is submitted with `ray job submit`, waits after its first checkpoint
(RAYSSL_TEST_PAUSE) until Ray Train has registered that checkpoint (its snapshot file),
and then a whole worker node is SIGKILLed (its `ray start`, raylet and every process
under it: a spot VM that vanished).

* Fixed size (`train.num_workers=1`, the default kind of run): the worker group cannot
  restart until a replacement node joins; Ray Train restarts it there from the
  checkpoint (`train.max_failures`) and the run finishes in the same MLflow run.
* Elastic (`train.min_workers=1`, `train.num_workers=2`, one worker per node): the
  group restarts at once on the surviving node with one worker and finishes there.

Every process is started here and stopped here by pid.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import psutil
import pytest

from rayssl.localhead import Head, free_port, local_ray_head, submit_job
from tests.conftest import ROOT, tiny_overrides

RAY = str(Path(sys.executable).parent / "ray")

#: The GCS marks a node dead after 5 failed health checks: one a second instead of
#: Ray's one every 3 s (~15 s of waiting in the test). A dead raylet fails each check at
#: once; a live one on a busy machine keeps Ray's 10 s per check (shorter timeouts
#: had the GCS declare a live node dead under load).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@contextmanager
def worker_node(
    head: Head, num_cpus: int, log_path: Path, resources: dict[str, float] | None = None
) -> Iterator[subprocess.Popen]:
    """`ray start --address=<head> --block`: a worker node of its own, in its own
    process session; killed (by pid, with everything under it) on exit."""
    cmd = [
        RAY,
        "start",
        f"--address={head.address}",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--object-store-memory=200000000",
        # Ports every node on the machine would otherwise share.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        "--disable-usage-stats",
    ]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield proc
        finally:
            kill_node(proc)


def node_processes_of(pid: int) -> list[psutil.Process]:
    """A node's `ray start` and every process under it (raylet, agents, workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_node(proc: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the node's processes, by pid, as a vanished VM would lose them."""
    procs = node_processes_of(proc.pid)
    for p in procs:
        with suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the session we started, if anything is left
    proc.wait(timeout=30)
    psutil.wait_procs(procs, timeout=30)
    return procs


def wait_for(
    path: Path, what: str, job: Future, nodes: list[subprocess.Popen], timeout_s: float = 300.0
) -> None:
    """Wait until `path` exists (the event), failing early if the job or a node ended."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if job.done():
            out = job.result()
            pytest.fail(f"the job ended before {what}:\n{(out.stdout + out.stderr)[-4000:]}")
        for node in nodes:
            if node.poll() is not None:
                pytest.fail(f"a worker node's `ray start` exited (code {node.returncode})")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout_s:.0f} s")
        time.sleep(0.1)


def wait_for_nodes(head: Head, count: int, nodes: list[subprocess.Popen]) -> None:
    """Wait until `count` worker nodes are alive in the GCS (the job checks the
    cluster's resources when it starts, rayssl.preflight)."""
    from ray.util.state import list_nodes

    deadline = time.monotonic() + 300
    while True:
        alive = list_nodes(
            address=head.dashboard_url,
            filters=[("state", "=", "ALIVE"), ("is_head_node", "=", False)],
            raise_on_missing_output=False,
        )
        if len(alive) >= count:
            return
        for node in nodes:
            if node.poll() is not None:
                pytest.fail(f"a worker node's `ray start` exited (code {node.returncode})")
        if time.monotonic() > deadline:
            pytest.fail(f"{len(alive)} of {count} worker nodes joined in 300 s")
        time.sleep(0.5)


@dataclass
class Outcome:
    out: subprocess.CompletedProcess
    lost_pid: int  # the rank-0 train worker that was on the lost node
    workers: list[Any]  # Ray Train's worker actors, dead ones included
    node_state: dict[str, str]  # node id -> ALIVE / DEAD
    tracking: str

    def result(self) -> dict:
        lines = [ln for ln in self.out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, self.out.stdout[-3000:]
        return json.loads(lines[-1][len("RESULT ") :])

    def groups(self) -> tuple[list[Any], list[Any]]:
        """The worker group that lost a node and the one Ray Train restarted (one
        placement group each)."""
        by_pg: dict[str, list[Any]] = {}
        for w in self.workers:
            by_pg.setdefault(w.placement_group_id, []).append(w)
        assert len(by_pg) == 2, f"expected one restart, got worker groups {by_pg}"
        first, second = by_pg.values()
        if self.lost_pid not in {w.pid for w in first}:
            first, second = second, first
        return first, second

    def metric(self, key: str) -> list[tuple[int, float]]:
        mlflow.set_tracking_uri(self.tracking)
        runs = mlflow.search_runs(search_all_experiments=True)
        assert len(runs) == 1, "a restart must continue the same MLflow run"
        assert runs.iloc[0]["status"] == "FINISHED"
        history = mlflow.MlflowClient(self.tracking).get_metric_history(runs.iloc[0]["run_id"], key)
        return sorted((m.step, m.value) for m in history)


def run_and_lose_a_node(
    tmp_path: Path,
    manifest: Path,
    overrides: list[str],
    nodes: int,
    replacement: bool,
    node_resources: dict[str, float] | None = None,
    job_env: dict[str, str] | None = None,
) -> Outcome:
    """Start a CPU-less head and `nodes` worker nodes, submit a 2-epoch pre-training on
    the tiny dataset, SIGKILL the node of rank 0 once the first checkpoint is registered,
    optionally start a replacement node, and wait for the job."""
    runs, pause, logs = tmp_path / "runs", tmp_path / "pause", tmp_path / "logs"
    pause.mkdir()
    logs.mkdir()
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [*tiny_overrides(manifest, runs, "spot", tracking), "data.val_split=", *overrides]
    entry = ["python", "jobs/pretrain.py", "--config", "configs/debug.yaml", *overrides]
    env = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        # Rank 0 writes pause/paused after epoch 0's checkpoint and every worker waits.
        "RAYSSL_TEST_PAUSE": f"{pause}:0",
        **(job_env or {}),
    }
    head_procs: list[psutil.Process] = []
    try:
        with ExitStack() as stack:
            head = stack.enter_context(
                local_ray_head(
                    num_cpus=0, env=FAST_NODE_DEATH, log_path=logs / "head.log", stop_grace_s=2
                )
            )
            pool = stack.enter_context(ThreadPoolExecutor(1))
            started: list[subprocess.Popen] = []
            for i in range(nodes):  # one at a time: nodes starting together race for ports
                started.append(
                    stack.enter_context(
                        worker_node(head, 2, logs / f"node-{i}.log", node_resources)
                    )
                )
                wait_for_nodes(head, i + 1, started)
            job = pool.submit(submit_job, head, entry, ROOT, env, 600.0, logs / "job.log", "job")
            wait_for(pause / "paused", "the first checkpoint", job, started)
            snapshot = runs / "spot" / "checkpoint_manager_snapshot.json"
            wait_for(snapshot, "Ray Train's checkpoint snapshot", job, started)
            lost_pid = int((pause / "paused").read_text().split()[1])
            (victim,) = (
                n for n in started if lost_pid in {p.pid for p in node_processes_of(n.pid)}
            )
            lost = kill_node(victim)
            assert not any(p.is_running() and p.status() != "zombie" for p in lost)
            if replacement:
                stack.enter_context(worker_node(head, 2, logs / "replacement.log", node_resources))
            out = job.result(timeout=600)
            assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
            workers, node_state = _train_workers(head)
            head_procs = node_processes_of(head.pid)
    finally:
        for p in head_procs:  # a Ray worker outside the head's process group, if any
            with suppress(psutil.NoSuchProcess):
                p.kill()
    return Outcome(out, lost_pid, workers, node_state, tracking)


def _train_workers(head: Head) -> tuple[list[Any], dict[str, str]]:
    """Ray Train's worker actors (dead ones included) and every node's state."""
    from ray.util.state import list_actors, list_nodes

    actors = list_actors(
        address=head.dashboard_url,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        raise_on_missing_output=False,
    )
    nodes = list_nodes(address=head.dashboard_url, detail=True, raise_on_missing_output=False)
    return actors, {n.node_id: n.state for n in nodes}


@pytest.mark.slow
def test_lost_node_is_replaced_and_the_run_resumes_from_its_checkpoint(tiny_manifest, tmp_path):
    overrides = ["train.num_workers=1", "train.max_failures=2"]
    run = run_and_lose_a_node(tmp_path, tiny_manifest, overrides, nodes=1, replacement=True)
    assert run.result()["metrics"]["epoch"] == 1  # both epochs
    # Two one-worker groups: the lost one on the dead node, the restart on the
    # replacement (the head has no CPU for it).
    first, second = run.groups()
    assert [w.pid for w in first] == [run.lost_pid]
    assert run.node_state[first[0].node_id] == "DEAD"
    assert len(second) == 1 and run.node_state[second[0].node_id] == "ALIVE"
    # The restart resumed from the checkpoint of epoch 0, in the same MLflow run.
    assert run.metric("data/start_epoch") == [(0, 0.0), (1, 1.0)]
    assert [step for step, _ in run.metric("train/loss")] == [0, 1]


@pytest.mark.slow
def test_elastic_run_continues_with_fewer_workers_after_losing_a_node(tiny_manifest, tmp_path):
    overrides = [
        "train.num_workers=2",
        "train.min_workers=1",
        "train.cpus_per_worker=0.5",
        "train.worker_resources={trainer: 1}",  # one train worker per node
        "train.max_failures=2",
    ]
    # Right after the loss Ray Train may still see the lost node (its autoscaling
    # coordinator refreshes every 20 s) and try 2 workers first, until this timeout.
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"}
    run = run_and_lose_a_node(
        tmp_path, tiny_manifest, overrides, 2, False, node_resources={"trainer": 1}, job_env=env
    )
    assert run.result()["metrics"]["epoch"] == 1
    first, second = run.groups()
    assert len(first) == 2 and run.lost_pid in {w.pid for w in first}
    assert Counter(run.node_state[w.node_id] for w in first) == {"ALIVE": 1, "DEAD": 1}
    # One worker on the surviving node did epoch 1, without a replacement node.
    assert len(second) == 1 and run.node_state[second[0].node_id] == "ALIVE"
    assert run.metric("data/start_epoch") == [(0, 0.0), (1, 1.0)]
    assert run.metric("train/clips") == [(0, 9.0), (1, 9.0)]  # every draw, either size
