"""A local Ray head for demos and tests, started and stopped by pid.

`ray stop` would stop every Ray process on the machine (other users', other tests');
this starts `ray start --head --block` in its own process session and kills only that
session on exit, which takes the head's processes with it.

Token authentication (Ray 2.59+) is set with RAY_AUTH_MODE for both the head and the
`ray job submit` client; the default here is `disabled` for loopback-only demos.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Head:
    pid: int
    address: str  # the GCS address, for ray.init(address=...)
    dashboard_url: str  # for `ray job submit --address`
    env: dict[str, str]  # environment to run `ray` clients with


def _bin_dir() -> str:
    return str(Path(sys.executable).parent)


def _ray_cli() -> list[str]:
    """The `ray` command: the script beside this interpreter, or (Ray installed with
    `pip install --target`, as on the lent GPU machine: benchmarks/gpu_run.sh) its module."""
    script = Path(_bin_dir()) / "ray"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "ray.scripts.scripts"]


@contextmanager
def local_ray_head(
    num_cpus: int = 4,
    env: Mapping[str, str] | None = None,
    auth_mode: str = "disabled",
    log_path: str | Path | None = None,
    timeout_s: float = 120.0,
    stop_grace_s: float = 15.0,
    num_gpus: int | None = None,
) -> Iterator[Head]:
    """Start a Ray head on loopback; yield its addresses; kill it (by pid) on exit.

    `env` is added to the head's environment: jobs submitted to it inherit it (their
    `python` is the first on this PATH, the current interpreter's environment). On exit
    the head gets SIGTERM and `stop_grace_s` to drain (Ray 2.60 drains for up to 30 s),
    then SIGKILL. `num_gpus` pins the head's GPU count (None: what Ray detects; the
    tests pin 0 so that they behave the same on a GPU host).
    """
    port, dash_port = free_port(), free_port()
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["RAY_AUTH_MODE"] = auth_mode
    full_env["PATH"] = _bin_dir() + os.pathsep + full_env.get("PATH", "")
    full_env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cmd = [
        *_ray_cli(),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--num-cpus={num_cpus}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash_port}",
        # The agent's default port (52365) is shared by every head on the machine.
        f"--dashboard-agent-listen-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        "--disable-usage-stats",
    ]
    if num_gpus is not None:  # None: Ray detects them
        cmd.append(f"--num-gpus={num_gpus}")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    dashboard = f"http://127.0.0.1:{dash_port}"
    try:
        _wait_for_dashboard(proc, dashboard, timeout_s)
        yield Head(proc.pid, f"127.0.0.1:{port}", dashboard, full_env)
    finally:
        _kill_session(proc, stop_grace_s)
        _forget_cluster(port)
        if log is not subprocess.DEVNULL:
            assert not isinstance(log, int)  # narrowing: not DEVNULL, so the opened file
            log.close()


def _wait_for_dashboard(proc: subprocess.Popen, url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up in {timeout_s:.0f}s")


def _forget_cluster(port: int) -> None:
    """Remove Ray's "current cluster" note if it names our (now dead) head, so a later
    plain ray.init() does not try to connect to it."""
    note = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    with suppress(OSError):
        if note.read_text().strip().endswith(f":{port}"):
            note.unlink()


def _kill_session(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """SIGTERM the head's process group, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)


def submit_job(
    head: Head,
    entrypoint: list[str],
    working_dir: str | Path,
    env_vars: Mapping[str, str] | None = None,
    timeout_s: float = 900.0,
    log_path: str | Path | None = None,
    submission_id: str | None = None,
    wait: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir DIR -- ENTRYPOINT` against the head.

    Waits for the job unless `wait` is False (then returns once it is submitted).
    `on_line` is called with every line of the job's output as it arrives (the
    demo shows its progress lines live); the whole output is still returned.
    """

    cmd = [
        *_ray_cli(),
        "job",
        "submit",
        f"--address={head.dashboard_url}",
        f"--working-dir={working_dir}",
    ]
    # Every process of the job gets this head's address: Ray's state API (which Ray
    # Train's placement-group cleaner uses to check the controller is alive) otherwise
    # picks the newest cluster on the machine, finds no controller there, and removes
    # the run's placement group, killing its workers (seen with a second local cluster
    # started while a job ran).
    job_env = {"RAY_ADDRESS": head.address, **dict(env_vars or {})}
    cmd.append("--runtime-env-json=" + json.dumps({"env_vars": job_env}))
    if submission_id:
        cmd.append(f"--submission-id={submission_id}")
    if not wait:
        cmd.append("--no-wait")
    cmd += ["--", *entrypoint]
    deadline = time.monotonic() + 120
    while True:
        out = _run(cmd, head.env, timeout_s, on_line)
        # A fresh head answers before its job agent is up; that submission was refused
        # (no job was created), so trying again is safe.
        if out.returncode == 0 or "No available agent" not in out.stderr:
            break
        if time.monotonic() > deadline:
            break
        time.sleep(2)
    if log_path:
        Path(log_path).write_text(out.stdout + "\n--- stderr ---\n" + out.stderr)
    return out


def _run(
    cmd: list[str],
    env: Mapping[str, str],
    timeout_s: float,
    on_line: Callable[[str], None] | None,
) -> subprocess.CompletedProcess:
    if on_line is None:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)

    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        # A timer stops a job submission that outlives timeout_s (as subprocess.run would).
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        lines = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                on_line(line.rstrip("\n"))
            proc.wait()
        finally:
            timer.cancel()
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), err.read())


def _ray_job(
    head: Head, command: str, submission_id: str, timeout_s: float, check: bool
) -> subprocess.CompletedProcess:
    """`ray job COMMAND --address=<head> SUBMISSION_ID`."""
    return subprocess.run(
        [
            *_ray_cli(),
            "job",
            command,
            f"--address={head.dashboard_url}",
            submission_id,
        ],
        env=head.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=check,
    )


def stop_job(head: Head, submission_id: str, timeout_s: float = 120.0) -> None:
    """`ray job stop`: the driver is terminated, taking its Ray Train workers with it."""
    _ray_job(head, "stop", submission_id, timeout_s, check=True)


def job_status(head: Head, submission_id: str, timeout_s: float = 60.0) -> str:
    """`ray job status`: PENDING, RUNNING, STOPPED, SUCCEEDED or FAILED ('' if unknown)."""
    out = _ray_job(head, "status", submission_id, timeout_s, check=False)
    for state in ("PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"):
        if f"': {state}" in out.stdout + out.stderr:
            return state
    return ""
