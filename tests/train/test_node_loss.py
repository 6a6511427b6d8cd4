"""Node loss on a real local multi-node Ray cluster, as a spot node is lost on a cloud.

A head with no CPUs (GCS, dashboard, the job driver and the Ray Train controller, as in
cluster/aws.yaml and cluster/kuberay/raycluster.yaml) and `ray start --address` worker
nodes of their own, which hold the train workers and their decode tasks. The
pre-training is submitted with `ray job submit`, waits after its first checkpoint
(RAYSSL_TEST_PAUSE) until Ray Train has registered that checkpoint (its snapshot file),
and then a whole worker node is SIGKILLed (its `ray start`, raylet and every process
under it: a spot VM that vanished).

A third node advertises `decode` and holds no train worker: the job pins its Ray Data
decode tasks there (`data.decode_resources`), as decoding runs on CPU nodes and training
on GPU nodes, and every sample names the node that decoded it (RAYSSL_TEST_TRACE with
RAYSSL_TEST_DECODE_NODE).

The run is elastic (`train.min_workers=1`, `train.num_workers=2`, one worker per node):
after the loss a replacement node joins, and the group restarts from the checkpoint on
the nodes alive then; the run finishes every draw in the same MLflow run. (A fixed-size
run, `min_workers=0`, is the same restart path waiting for the replacement; it ran here
as a test of its own at 79 s of CI time and was folded into this one.)

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
    decode_node: str  # the node id of the decode-only node
    trace: list[dict]  # RAYSSL_TEST_TRACE lines: every trained step's nodes and draws

    def result(self) -> dict:
        lines = [ln for ln in self.out.stdout.splitlines() if ln.startswith("RESULT ")]
        assert lines, self.out.stdout[-3000:]
        return json.loads(lines[-1][len("RESULT ") :])

    def groups(self) -> tuple[list[Any], list[list[Any]]]:
        """The worker group that lost a node, and the groups Ray Train started after it
        (one placement group each)."""
        by_pg: dict[str, list[Any]] = {}
        for w in self.workers:
            by_pg.setdefault(w.placement_group_id, []).append(w)
        (first,) = [g for g in by_pg.values() if self.lost_pid in {w.pid for w in g}]
        restarts = [g for g in by_pg.values() if g is not first]
        assert restarts, f"no restart after the loss: worker groups {by_pg}"
        return first, restarts

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
    decode_cpus: int = 2,
) -> Outcome:
    """Start a CPU-less head and `nodes` worker nodes, submit a 2-epoch pre-training on
    the tiny dataset, SIGKILL the node of rank 0 once the first checkpoint is registered,
    optionally start a replacement node, and wait for the job."""
    runs, pause, logs = tmp_path / "runs", tmp_path / "pause", tmp_path / "logs"
    trace = tmp_path / "trace"
    for folder in (pause, logs, trace):
        folder.mkdir()
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
                    num_cpus=0,
                    # the nodes' workers inherit it: every sample names its decode node
                    env={
                        **FAST_NODE_DEATH,
                        "RAYSSL_TEST_TRACE": str(trace),
                        "RAYSSL_TEST_DECODE_NODE": "1",
                    },
                    log_path=logs / "head.log",
                    stop_grace_s=2,
                )
            )
            pool = stack.enter_context(ThreadPoolExecutor(1))
            # a CPU node for decoding only (`data.decode_resources`), never lost
            decoder = stack.enter_context(
                worker_node(head, decode_cpus, logs / "decode.log", {"decode": decode_cpus})
            )
            wait_for_nodes(head, 1, [decoder])
            started: list[subprocess.Popen] = []
            for i in range(nodes):  # one at a time: nodes starting together race for ports
                started.append(
                    stack.enter_context(
                        worker_node(head, 2, logs / f"node-{i}.log", node_resources)
                    )
                )
                wait_for_nodes(head, i + 2, [decoder, *started])
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
            workers, node_state, decode_node = _train_workers(head)
            head_procs = node_processes_of(head.pid)
    finally:
        for p in head_procs:  # a Ray worker outside the head's process group, if any
            with suppress(psutil.NoSuchProcess):
                p.kill()
    lines = [json.loads(x) for f in trace.glob("trace-*.jsonl") for x in f.open()]
    return Outcome(out, lost_pid, workers, node_state, tracking, decode_node, lines)


def _train_workers(head: Head) -> tuple[list[Any], dict[str, str], str]:
    """Ray Train's worker actors (dead ones included), every node's state, and the
    decode node's id."""
    from ray.util.state import list_actors, list_nodes

    actors = list_actors(
        address=head.dashboard_url,
        filters=[("class_name", "=", "RayTrainWorker")],
        detail=True,
        raise_on_missing_output=False,
    )
    nodes = list_nodes(address=head.dashboard_url, detail=True, raise_on_missing_output=False)
    (decoder,) = [n.node_id for n in nodes if "decode" in (n.resources_total or {})]
    return actors, {n.node_id: n.state for n in nodes}, decoder


@pytest.mark.slow
def test_run_keeps_going_when_a_node_is_lost_and_another_joins(tiny_manifest, tmp_path):
    """Elastic (`train.min_workers=1`, `train.num_workers=2`, one train worker per node):
    the node of rank 0 is lost and a replacement joins right after. Ray Train restarts
    the group from the epoch-0 checkpoint with the workers the cluster holds then (the
    survivor alone, or the survivor and the replacement, depending on when the new node
    registers) and the run finishes every draw of epoch 1 in the same MLflow run."""
    overrides = [
        "train.num_workers=2",
        "train.min_workers=1",
        "train.cpus_per_worker=0.5",
        "train.worker_resources={trainer: 1}",  # one train worker per node
        "train.max_failures=2",
        "data.decode_resources={decode: 1}",  # decoding on the CPU node only
        "data.decode_cpus_per_worker=1",
    ]
    # Right after the loss Ray Train may still see the lost node (its autoscaling
    # coordinator refreshes every 20 s) and try 2 workers first, until this timeout.
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"}
    run = run_and_lose_a_node(
        tmp_path, tiny_manifest, overrides, 2, True, node_resources={"trainer": 1}, job_env=env
    )
    assert run.result()["metrics"]["epoch"] == 1
    first, restarts = run.groups()
    assert len(first) == 2 and run.lost_pid in {w.pid for w in first}
    assert Counter(run.node_state[w.node_id] for w in first) == {"ALIVE": 1, "DEAD": 1}
    for group in restarts:  # every restart ran on live nodes: the survivor, the newcomer
        assert 1 <= len(group) <= 2
        assert all(run.node_state[w.node_id] == "ALIVE" for w in group)
    assert run.metric("data/start_epoch") == [(0, 0.0), (1, 1.0)]
    assert run.metric("train/clips") == [(0, 9.0), (1, 9.0)]  # every draw, either size
    # Decoding ran on the CPU node only, training never did; every trained step's
    # clips came from there, before and after the loss.
    assert run.trace and all(line["decode_nodes"] == [run.decode_node] for line in run.trace)
    assert run.decode_node not in {line["node"] for line in run.trace}
    assert {line["epoch"] for line in run.trace} == {0, 1}
