"""A run keeps its own cluster when a second one starts on the same machine.

Ray Train 2.60's placement-group cleaner (a detached actor beside the run's controller)
asks Ray's state API, with no address, whether the controller is alive. With no
address the state API takes the newest `ray start` on the machine (Ray's
ray_current_cluster file): once a second cluster is up it finds no controller there and
removes the live run's placement group, killing its workers. `rayssl` pins each run's
own address in its runtime env (rayssl.raystart.init_local_or_existing), so a job
submitted as the README submits it (no RAY_ADDRESS of its own) must finish.

The failing order: a job on one head (loopback, no token), paused after its first
checkpoint with its placement group live, then a second head started; the job is
released and must end SUCCEEDED with its placement group never removed while it ran.
This test runs the job on the session's head and starts a second cluster on purpose (run
it under the machine's Ray lock), stopping it by pid.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from rayssl.localhead import Head, local_ray_head
from tests.conftest import ROOT, tiny_overrides

#: The cleaner checks the controller once a second (PlacementGroupCleanerCallback's
#: check_interval_s); without the pin it removed the group within 1-2 s of the second
#: head's start. The placement group is watched for this many of its checks.
CLEANER_CHECKS = 6


def _wait_for_file(path: Path, client, job_id: str, timeout_s: float = 300.0) -> None:
    """Wait for the event (the job's pause file), failing early if the job ended."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        status = str(client.get_job_status(job_id))
        if status.endswith(("SUCCEEDED", "FAILED", "STOPPED")):
            pytest.fail(f"the job ended ({status}) before {path.name}:\n{_logs(client, job_id)}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {path.name} after {timeout_s:.0f} s:\n{_logs(client, job_id)}")
        time.sleep(0.2)


def _logs(client, job_id: str) -> str:
    return client.get_job_logs(job_id)[-4000:]


def _train_groups(head: Head) -> dict[str, str]:
    """The placement groups of head's cluster: id -> state (CREATED, REMOVED, ...)."""
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(
        address=head.dashboard_url, detail=True, raise_on_missing_output=False
    )
    return {g.placement_group_id: g.state for g in groups}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_job_finishes_when_a_second_cluster_starts_while_it_trains(
    ray_head, tiny_manifest, tmp_path
):
    """The first cluster is the session's head (a `ray start` head like any); the second
    is this test's own: a second cluster starting while a run trains is the subject."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    pause, logs = tmp_path / "pause", tmp_path / "logs"
    pause.mkdir()
    logs.mkdir()
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = [*tiny_overrides(tiny_manifest, tmp_path / "runs", "two", tracking)]
    overrides.append("data.val_split=")
    entry = ["python", "jobs/pretrain.py", "--config", "configs/debug.yaml", *overrides]
    env = {
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
        # Every worker waits after epoch 0's checkpoint until pause/release exists.
        "RAYSSL_TEST_PAUSE": f"{pause}:0",
    }
    first = ray_head
    client = JobSubmissionClient(first.dashboard_url)
    # As the README submits a run: no RAY_ADDRESS in the job's runtime env.
    job_id = client.submit_job(
        entrypoint=shlex.join(entry),
        runtime_env={"working_dir": str(ROOT), "env_vars": env},
    )
    try:
        _wait_for_file(pause / "paused", client, job_id)
        before = _train_groups(first)
        live = [g for g, state in before.items() if state == "CREATED"]
        assert live, f"no live placement group while the run trains: {before}"
        with local_ray_head(num_cpus=1, log_path=logs / "second.log", stop_grace_s=2):
            # The second head is now the machine's newest cluster (its address is
            # in ray_current_cluster): watch the run's group through the cleaner's
            # checks, then let the run finish while the second head is still up.
            for _ in range(CLEANER_CHECKS):
                time.sleep(1.0)
                states = _train_groups(first)
                assert all(states.get(g) == "CREATED" for g in live), (
                    f"the run's placement group was removed: {states}\n" + _logs(client, job_id)
                )
            (pause / "release").write_text("")
            deadline = time.monotonic() + 300
            status = client.get_job_status(job_id)
            while not status.is_terminal() and time.monotonic() < deadline:
                time.sleep(0.5)
                status = client.get_job_status(job_id)
        assert status == JobStatus.SUCCEEDED, f"{status}:\n{_logs(client, job_id)}"
        assert '"epoch": 1' in client.get_job_logs(job_id)
    finally:
        (pause / "release").write_text("")
        if not client.get_job_status(job_id).is_terminal():
            client.stop_job(job_id)
