"""Ray Data stages that cannot be scheduled: an error naming the stage and its resources
before the pipeline starts (check_fits), or once Ray reports the demand pending while
nothing comes out (the stall watchdog), never a silent wait."""

from __future__ import annotations

import pytest

from rayssl.clips import schedule
from rayssl.clips.schedule import Demand, UnschedulableError


def test_share_sizes_actor_and_decode_to_a_fractional_budget():
    assert schedule.share(4.0, 1.0, 1.0) == (1.0, 1.0, 3)  # fits: as configured
    actor, task, tasks = schedule.share(1.45, 1.0, 1.0)  # a sweep trial on a 2-CPU head
    assert actor + task <= 1.45 and actor > 0 and task > 0 and tasks == 1
    with pytest.raises(UnschedulableError, match="no CPU left"):
        schedule.share(0.0, 1.0, 1.0)


def test_check_fits_counts_what_the_calling_trial_holds(ray_local):
    """The reproduced hang, as a check: a trial-like actor holding 0.05 CPU asks for a
    model actor and a decode task that only fit the whole cluster."""
    ray = ray_local
    total = ray.cluster_resources()["CPU"]

    @ray.remote(num_cpus=0.05)
    class Trial:
        def check(self, actor_cpu: float, task_cpu: float) -> str:
            demands = [
                Demand("model actors", {"CPU": actor_cpu}),
                Demand("decode", {"CPU": task_cpu}),
            ]
            try:
                schedule.check_fits(demands, "evaluation inference")
            except UnschedulableError as e:
                return str(e)
            return "fits"

    trial = Trial.remote()
    try:
        msg = ray.get(trial.check.remote(total / 2, total / 2))
        assert msg.startswith(f"evaluation inference: needs {{'CPU': {total:g}}}"), msg
        assert "model actors" in msg and "decode" in msg and "holds {'CPU': 0.05}" in msg
        actor, task, _ = schedule.share(total - 0.05, total / 2, total / 2)
        assert ray.get(trial.check.remote(actor, task)) == "fits"
    finally:
        ray.kill(trial)


def test_a_pipeline_that_cannot_be_scheduled_stops_with_the_pending_demand(ray_local):
    """Another holder takes all but 0.5 CPU: a 1-CPU map stage fits the cluster (check_fits
    passes) but can never run now; the watchdog reports Ray's pending demand. The stage is
    unschedulable for the whole test, so the outcome does not depend on the clock."""
    ray = ray_local
    total = ray.cluster_resources()["CPU"]

    @ray.remote(num_cpus=total - 0.5)
    class Holder:
        def ping(self) -> int:
            return 1

    holder = Holder.remote()
    try:
        ray.get(holder.ping.remote())
        demands = [Demand("decode tasks", {"CPU": 1.0})]
        schedule.check_fits(demands, "test pipeline")  # the cluster could give it
        ds = ray.data.range(4, override_num_blocks=2).map_batches(lambda b: b, num_cpus=1.0)
        watchdog = schedule.StallWatchdog("test pipeline", demands, stall_s=0.5)
        with pytest.raises(UnschedulableError) as err:
            list(watchdog.iterate(lambda: ds.iter_batches(batch_size=2)))
        msg = str(err.value)
        assert msg.startswith("test pipeline: no progress for 0.5s")
        assert "pending {'CPU': 1}" in msg and "decode tasks (1 x {CPU 1})" in msg
    finally:
        ray.kill(holder)


def test_watchdog_passes_output_and_errors_through():
    calls = []

    def pending():
        calls.append(1)
        return []

    w = schedule.StallWatchdog("w", [Demand("s", {"CPU": 1.0})], stall_s=30, pending=pending)
    assert list(w.iterate(lambda: iter(range(5)))) == list(range(5))

    def boom():
        yield 1
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        list(w.iterate(boom))
    assert calls == []  # never stalled: Ray was never asked


def test_evaluation_that_cannot_fit_the_cluster_fails_before_decoding(
    ray_local, tiny_manifest, tmp_path, capsys
):
    from rayssl.cli import main as cli_main

    cpus = ray_local.cluster_resources()["CPU"]
    argv = [
        "features", "--checkpoint", "random", "--manifest", str(tiny_manifest),
        "--layers", "pool5", "--clips", "uniform:1", "--out", str(tmp_path / "f.parquet"),
        "model.backbone=c3d", "model.width=0.0625",
        "data.augment.resize=[32,43]", "data.augment.crop=[32,32]",
        f"features.inference.cpus_per_actor={cpus}",
    ]  # fmt: skip
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: evaluation inference: needs {{'CPU': {cpus + 1:g}}} at once" in err
    assert f"model actors (1 x {{CPU {cpus:g}}})" in err
    assert not (tmp_path / "f.parquet").exists()
