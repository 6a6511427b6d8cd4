"""Ray start-up for every rayssl process that drives Ray: `start_ray` joins the
cluster a run belongs to (or starts a local one) and `quiet_ray_data` quiets Ray Data.

The only module that calls ray.init(); the command line, pre-training, evaluation and
the sweep use it. `ray` is imported inside the functions: importing it costs about a
second, and the commands that need no cluster (`rayssl synth`, `manifest`, ...) import
this module too.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any


def quiet_ray_data(progress_logs: bool = False) -> None:
    """Turn Ray Data's per-pipeline progress logs off in this process (unless asked for):
    a run builds a pipeline per epoch and worker, and their logs bury its own output."""
    if progress_logs:
        return
    import ray.data  # lazy: see the module docstring

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _ray_address_file() -> Path:
    """Ray's record of the last `ray start` on this machine (ray_current_cluster)."""
    try:
        from ray._common.utils import get_ray_address_file  # lazy: see the module docstring

        return Path(get_ray_address_file(None))
    except ImportError:  # another Ray layout: its documented default
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        return Path(base) / "ray" / "ray_current_cluster"


def stale_ray_address() -> str | None:
    """The address Ray's ray_current_cluster file names when nothing listens there.

    A head that died without `ray stop` leaves the file behind, and a plain ray.init()
    then retries that address for minutes. None when RAY_ADDRESS is set, when there is
    no file, or when something answers at the address.
    """
    if os.environ.get("RAY_ADDRESS"):
        return None
    try:
        address = _ray_address_file().read_text().strip()
    except OSError:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=2.0):
            return None
    except OSError:
        return address


def _job_env_vars() -> dict[str, str]:
    """The env_vars of the runtime env `ray job submit` gave this driver ({} outside a job)."""
    try:
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        return dict((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError, TypeError):
        return {}


#: What the state API (Ray Train's placement-group cleaner among its callers) reads to
#: find its cluster; without either it takes the newest `ray start` on the machine.
_ADDRESS_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")


def _free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_local_or_existing(num_cpus: int | None = None, **kwargs: Any) -> None:
    """ray.init(): the cluster of RAY_ADDRESS / `ray job submit` / a live `ray start`,
    else a local one; a stale address file is reported and ignored, not retried.

    Every process of the run (Ray Train's controller and its placement-group cleaner,
    the train workers, Tune's trials) gets its own cluster's address in its runtime
    env. Ray's state API, which the cleaner calls with no address to ask whether the
    controller is alive, otherwise asks the newest cluster started on the machine; with
    a second cluster started while a run trains it finds no controller there and
    removes the live run's placement group, killing its workers.
    """
    import ray  # lazy: see the module docstring

    stale = stale_ray_address()
    if stale:
        print(
            f"rayssl: no Ray cluster answers at {stale} (named by {_ray_address_file()}: "
            "a head that stopped without `ray stop`?); starting a local Ray instance",
            flush=True,
        )
    address = os.environ.get("RAY_ADDRESS", "")
    target = None if stale else _cluster_to_join(address)
    local = bool(stale or address == "local" or (num_cpus and address == ""))
    local = local or (target is None and address == "")  # "auto" fails when none is up
    pin: dict[str, str] = {}
    if local:
        kwargs["address"] = "local"
        kwargs["num_cpus"] = num_cpus
        if kwargs.get("include_dashboard") is not False:
            # A fresh local instance writes no address file: its state API is found
            # through the dashboard, on a port chosen here to be named.
            kwargs.setdefault("dashboard_port", _free_local_port())
            host = kwargs.get("dashboard_host") or "127.0.0.1"
            pin["RAY_API_SERVER_ADDRESS"] = f"http://{host}:{kwargs['dashboard_port']}"
    elif target:
        kwargs["address"] = target
        pin["RAY_ADDRESS"] = target
    given = {**_job_env_vars(), **((kwargs.get("runtime_env") or {}).get("env_vars") or {})}
    if pin and not any(var in given for var in _ADDRESS_VARS):
        runtime_env = dict(kwargs.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **pin}
        kwargs["runtime_env"] = runtime_env
    ray.init(**kwargs)


def _cluster_to_join(address: str) -> str | None:
    """The GCS address a plain ray.init() joins: RAY_ADDRESS (`ray job submit` sets it
    for its driver), else the live `ray start` named by Ray's address file. None for a
    fresh local instance or a Ray Client (ray://) address."""
    if address == "local" or "://" in address:
        return None
    if address and address != "auto":
        return address
    try:
        return _ray_address_file().read_text().strip() or None
    except OSError:
        return None


def start_ray(quiet: bool = False) -> None:
    """Connect this process to Ray once (`init_local_or_existing`); a no-op when it is.

    Inside `ray job submit` (or with RAY_ADDRESS / a `ray start` cluster) it joins that
    cluster. RAY_ADDRESS=local forces a fresh local one, whose logical CPU count
    RAYSSL_NUM_CPUS may raise (decode tasks and train workers share a small machine's
    cores). `quiet` (the command line's one-shot jobs: features, evaluate, ...) keeps the
    workers' logs off the driver and starts no dashboard.
    """
    import ray  # lazy: see the module docstring

    if ray.is_initialized():
        return
    num_cpus = os.environ.get("RAYSSL_NUM_CPUS")
    if quiet:
        init_local_or_existing(
            int(num_cpus) if num_cpus else None, log_to_driver=False, include_dashboard=False
        )
    else:
        init_local_or_existing(int(num_cpus) if num_cpus else None, log_to_driver=True)
