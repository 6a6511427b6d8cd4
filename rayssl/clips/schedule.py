"""What a Ray Data stage may ask for, checked before it starts; a stage that cannot be
scheduled is an error naming its resources, never a silent wait.

Ray never times out a task or actor whose resources are not free: on a 2-CPU head a
Tune trial holding 0.05 CPU, a 1-CPU model actor and a 1-CPU decode task wait forever
(NOTES: "Ray Data resource deadlock"). Two guards:

* :func:`check_fits` runs before a pipeline starts. It compares what the pipeline needs
  at once (one task of every task stage, the minimum actors of every actor pool) with
  what the cluster can ever give this caller: the total of the cluster's nodes less what the caller
  itself holds while it waits. Too much is a :class:`UnschedulableError` naming the
  stage, what it asks and what there is.
* :class:`StallWatchdog` watches a running pipeline: when no output has come for
  ``stall_s`` seconds *and* the cluster reports a pending resource demand (Ray's
  autoscaler state, which every head keeps) of the kind the pipeline asked for, the
  consumer gets an :class:`UnschedulableError` naming the demand. Output resets the timer.

:func:`share` sizes a pipeline's requests to a budget (fractional CPUs), e.g. the share
of a sweep trial.
"""

from __future__ import annotations

import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

#: Seconds a pipeline may produce nothing while Ray reports its demand pending.
DEFAULT_STALL_S = 300.0


class UnschedulableError(RuntimeError):
    """A stage asks for resources the cluster cannot give (deterministic: not retried)."""


@dataclass(frozen=True)
class Demand:
    """One stage's resource request: `count` units of `resources` needed at once."""

    stage: str
    resources: Mapping[str, float]
    count: int = 1

    def total(self) -> dict[str, float]:
        return {k: v * self.count for k, v in self.resources.items() if v}

    def describe(self) -> str:
        res = ", ".join(f"{k} {v:g}" for k, v in self.resources.items() if v) or "nothing"
        return f"{self.stage} ({self.count} x {{{res}}})"


def _fmt(res: Mapping[str, float]) -> str:
    keep = {k: round(v, 3) for k, v in res.items() if v and not k.startswith(("node:", "memory"))}
    keep = {k: v for k, v in keep.items() if k != "object_store_memory"}
    return "{" + ", ".join(f"'{k}': {v:g}" for k, v in sorted(keep.items())) + "}"


def _base(name: str) -> str:
    """`CPU_group_0_abc` / `CPU_group_abc` (placement-group resources) -> `CPU`."""
    return name.split("_group_")[0]


def held_by_caller() -> dict[str, float]:
    """What the calling task or actor holds (a Tune trial's 0.05 CPU); {} on a driver."""
    import ray  # lazy: Ray is a heavy import that only this path needs

    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return {}
    out: dict[str, float] = {}
    for k, v in ctx.get_assigned_resources().items():
        out[_base(k)] = out.get(_base(k), 0.0) + float(v)
    return out


def capacity() -> tuple[dict[str, float], str]:
    """(resources this caller's pipeline can ever get, where they come from): the
    cluster's. A caller's placement group (a Tune trial's) does not bound it: Ray Data
    tasks and actors carry their own scheduling strategy, so they are never captured in
    it (a 2-CPU sweep trial's 1-CPU model actor ran beside its 0.05-CPU group)."""
    import ray  # lazy: Ray is a heavy import that only this path needs

    return {k: float(v) for k, v in ray.cluster_resources().items()}, "the cluster"


def check_fits(demands: Iterable[Demand], what: str) -> None:
    """Raise :class:`UnschedulableError` when `demands` (needed at the same time) cannot
    fit in what this caller can ever get (:func:`capacity` less :func:`held_by_caller`)."""
    demands = list(demands)
    need: dict[str, float] = {}
    for d in demands:
        for k, v in d.total().items():
            need[k] = need.get(k, 0.0) + v
    total, source = capacity()
    held = held_by_caller()
    free = {k: total.get(k, 0.0) - held.get(k, 0.0) for k in set(total) | set(need)}
    short = {k: v for k, v in need.items() if v > free.get(k, 0.0) + 1e-9}
    if not short:
        return
    stages = " + ".join(d.describe() for d in demands)
    mine = f", this process holds {_fmt(held)}" if any(held.values()) else ""
    raise UnschedulableError(
        f"{what}: needs {_fmt(need)} at once ({stages}) but {source} has {_fmt(total)}"
        f"{mine}; it would wait forever. Lower the stage's CPUs/GPUs "
        f"(e.g. features.inference.cpus_per_actor, data.num_cpus_per_task) or add resources"
    )


def share(budget_cpu: float, actor_cpu: float, task_cpu: float) -> tuple[float, float, int]:
    """(actor CPUs, decode-task CPUs, decode tasks at once) for one model actor and its
    decode tasks within `budget_cpu`: the configured requests when they fit, else the
    budget halved between the actor and one decode task (fractional CPUs)."""
    if budget_cpu <= 0:
        raise UnschedulableError(f"no CPU left for the evaluation (budget {budget_cpu:g})")
    if actor_cpu + task_cpu <= budget_cpu + 1e-9:
        tasks = max(1, math.floor((budget_cpu - actor_cpu) / task_cpu)) if task_cpu else 1
        return actor_cpu, task_cpu, tasks
    half = math.floor(budget_cpu / 2 * 1000) / 1000  # Ray rounds to 1e-4 CPU
    return min(actor_cpu, half), min(task_cpu, half), 1


# --------------------------------------------------------------------------- watchdog


def pending_demands() -> list[dict[str, float]]:
    """Resource shapes Ray reports as waiting for a node (tasks and actors), from the
    GCS's autoscaler state (no dashboard needed)."""
    import ray  # lazy: Ray is a heavy import that only this path needs
    from ray.autoscaler.v2.sdk import (  # lazy: Ray is a heavy import that only this path needs
        get_cluster_status,  # lazy: Ray is a heavy import that only this path needs
    )

    status = get_cluster_status(ray.get_runtime_context().gcs_address)
    out = []
    for d in status.resource_demands.ray_task_actor_demand:
        for b in d.bundles_by_count:
            out.extend([dict(b.bundle)] * int(b.count))
    return out


def _matches(pending: Mapping[str, float], demands: list[Demand]) -> bool:
    for d in demands:
        want = {k: v for k, v in d.resources.items() if v}
        if want and all(abs(pending.get(k, 0.0) - v) < 1e-6 for k, v in want.items()):
            return True
    return False


class StallWatchdog:
    """Iterate a pipeline's output; raise :class:`UnschedulableError` if it stalls.

    `produce()` returns the iterator (run in a thread). When nothing comes for `stall_s`
    seconds and :func:`pending_demands` shows a request of one of `demands`, the consumer
    gets the error; `pending` may be replaced in tests (it is called only after a stall).
    """

    def __init__(
        self,
        what: str,
        demands: Iterable[Demand],
        stall_s: float = DEFAULT_STALL_S,
        pending: Callable[[], list[dict[str, float]]] = pending_demands,
    ) -> None:
        self.what = what
        self.demands = list(demands)
        self.stall_s = stall_s
        self.pending = pending

    def iterate(self, produce: Callable[[], Iterable[T]]) -> Iterator[T]:
        if self.stall_s <= 0:
            yield from produce()
            return
        q: queue.Queue = queue.Queue(maxsize=2)
        done = object()
        stop = threading.Event()

        def run() -> None:
            try:
                for item in produce():
                    while not stop.is_set():
                        try:
                            q.put(("item", item), timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(("end", done))
            except BaseException as e:  # handed to the consumer
                q.put(("error", e))

        thread = threading.Thread(target=run, name=f"watch-{self.what}", daemon=True)
        thread.start()
        last = time.monotonic()
        try:
            while True:
                try:
                    kind, item = q.get(timeout=min(self.stall_s, 5.0))
                except queue.Empty:
                    if time.monotonic() - last < self.stall_s:
                        continue
                    waiting = [p for p in self.pending() if _matches(p, self.demands)]
                    if waiting:
                        raise UnschedulableError(
                            f"{self.what}: no progress for {self.stall_s:g}s while Ray "
                            f"waits for resources it cannot give: pending {_fmt(waiting[0])} "
                            f"({len(waiting)} request(s); stages: "
                            f"{', '.join(d.describe() for d in self.demands)}). Something "
                            "else holds the cluster's resources, or the requests are too big"
                        ) from None
                    last = time.monotonic()  # slow but scheduled: keep waiting
                    continue
                if kind == "end":
                    return
                if kind == "error":
                    raise item
                last = time.monotonic()
                yield item
        finally:
            stop.set()


def stall_seconds(default: float = DEFAULT_STALL_S) -> float:
    """$RAYSSL_STALL_S or `default` (0 turns the watchdog off)."""

    raw = os.environ.get("RAYSSL_STALL_S", "")
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


__all__ = [
    "Demand",
    "StallWatchdog",
    "UnschedulableError",
    "check_fits",
    "held_by_caller",
    "pending_demands",
    "share",
    "stall_seconds",
]
