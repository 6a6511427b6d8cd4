"""Mid-epoch checkpoints and exact resume, run for real.

A 2-worker job checkpoints every 3 steps. A worker is SIGKILLed in the middle of epoch 2
(`train.max_failures=0`: the job fails); resubmitting it with ONE worker resumes epoch 2
where its last checkpoint left it, the remaining draws dealt to the new worker count.
(Ray Train's own restart of a killed worker group, from the newest checkpoint, is
tests/train/test_node_loss.py.) Every worker writes the draws of every step it trains
(RAYSSL_TEST_TRACE), and the test checks that each epoch trains each of its draws
exactly once, counting the steps a kill loses (at most one checkpoint interval) as not
trained.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest

from rayssl.checkpoint import EpochProgress
from rayssl.clips.pipeline import epoch_order, epoch_rows, usable_videos
from rayssl.localhead import submit_job
from tests.conftest import ROOT, tiny_overrides
from tests.train.test_pretrain import DEBUG, _history, _result_line, _runs

EVERY = 3  # train.checkpoint_every_steps


def _trace(folder: Path) -> list[dict]:
    return [json.loads(line) for f in folder.glob("trace-*.jsonl") for line in f.open()]


def _kept_draws(lines: list[dict], epoch: int, attempts: list[set[int]], starts: list[int]):
    """Draws of `epoch` whose training survived: attempt k's steps below the step the
    next attempt resumed from (a kill loses the steps after the last checkpoint), and
    all of the last attempt's. Returns (kept draws, lost steps)."""
    kept: list[tuple[str, int]] = []
    lost_steps: set[tuple[int, int]] = set()
    for k, pids in enumerate(attempts):
        limit = starts[k + 1] if k + 1 < len(starts) else None
        for line in lines:
            if line["pid"] not in pids or line["epoch"] != epoch:
                continue
            if limit is not None and line["step"] >= limit:
                lost_steps.add((k, line["step"]))
                continue
            kept.extend((v, d) for v, d in line["draws"])
    return kept, lost_steps


@pytest.mark.slow
def test_kill_mid_epoch_resumes_every_draw_exactly_once(ray_head, tiny_manifest, tmp_path):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    trace = tmp_path / "trace"
    trace.mkdir()
    base = [
        *tiny_overrides(tiny_manifest, tmp_path / "runs", "midepoch", tracking),
        "optim.epochs=2",
        "optim.step_epochs=1",
        "optim.gamma=0.5",
        "data.clips_per_video=4",  # 9 videos x 4 = 36 draws: 9 steps of 2 x 2 clips
        f"train.checkpoint_every_steps={EVERY}",
        "train.cpus_per_worker=0.5",
        "train.max_failures=0",
        "train.log_every_steps=100",
        "data.val_split=",
    ]
    kill = tmp_path / "kill.txt"
    # rank 1 dies before step 5 of epoch 2 (checkpoint after step 3: steps 3-4 are lost)
    env = {
        "RAYSSL_TEST_KILL_WORKER": f"{kill}:1:5:1",
        "RAYSSL_TEST_TRACE": str(trace),
    }
    # `ray job submit` to the session's head, as users submit a run: the hooks reach the
    # train workers through the job's runtime env
    cmd = ["python", "jobs/pretrain.py", "--config", DEBUG]
    first = submit_job(
        ray_head, [*cmd, *base, "train.num_workers=2"], ROOT, env, 600, submission_id="mid-1"
    )
    assert kill.exists(), first.stdout[-3000:] + first.stderr[-3000:]
    assert first.returncode != 0, "a dead worker without max_failures fails the job"
    second = submit_job(
        ray_head,
        # a changed batch size is a changed run: resuming under it takes run.resume=force
        [*cmd, *base, "train.num_workers=1", "train.batch_size=2", "run.resume=force"],
        ROOT,
        env,
        600,
        submission_id="mid-2",
    )
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert _result_line(second.stdout)["metrics"]["epoch"] == 1
    assert "epoch 2: resuming after 12 of 36 draws (3 steps)" in second.stdout

    runs = _runs(tracking, "midepoch")
    assert len(runs) == 1, "every attempt continues the same MLflow run"
    run_id = runs.iloc[0]["run_id"]
    assert runs.iloc[0]["status"] == "FINISHED"
    client = mlflow.MlflowClient(tracking)
    starts = sorted(
        (m.timestamp, m.step, m.value)
        for m in client.get_metric_history(run_id, "data/start_epoch")
    )
    # attempt 1 from scratch, attempt 2 resubmitted in epoch 2
    assert [(s, v) for _, s, v in starts] == [(0, 0.0), (1, 1.0)]
    in_epoch = [
        m.value
        for m in sorted(
            client.get_metric_history(run_id, "data/start_step_in_epoch"),
            key=lambda m: m.timestamp,
        )
    ]
    assert in_epoch == [3.0]
    # every epoch's metrics cover all of its 36 draws, the carried part included
    assert _history(tracking, run_id, "train/clips") == [36.0, 36.0]
    # the step schedule went on across the resume: lr halves every epoch
    assert _history(tracking, run_id, "lr") == pytest.approx([1e-3, 5e-4])

    lines = _trace(trace)
    pids_by_start: dict[tuple[int, int], set[int]] = defaultdict(set)
    first_seen: dict[int, tuple[int, int]] = {}
    for line in sorted(lines, key=lambda x: (x["global_step"], x["epoch"], x["step"])):
        first_seen.setdefault(line["pid"], (line["epoch"], line["step"]))
    for pid, where in first_seen.items():
        pids_by_start[where].add(pid)
    attempts = [pids_by_start[k] for k in sorted(pids_by_start)]
    assert sorted(pids_by_start) == [(0, 0), (1, 3)]
    assert [len(a) for a in attempts] == [2, 1]

    table = pq.read_table(tiny_manifest)
    videos = usable_videos(table, "train")
    expected = Counter((v, d) for v in videos["video_id"].to_pylist() for d in range(4))
    lost_report = {}
    for epoch, (att, st) in {
        0: ([attempts[0]], [0]),
        1: ([attempts[0], attempts[1]], [0, 3]),
    }.items():
        kept, lost = _kept_draws(lines, epoch, att, st)
        assert Counter(kept) == expected, f"epoch {epoch + 1}: a draw trained twice or never"
        lost_report[epoch] = sorted({step for _, step in lost})
    # a kill loses at most one checkpoint interval of steps
    assert lost_report[0] == []
    assert lost_report[1] == [3, 4]
    assert all(len(v) <= EVERY for v in lost_report.values())


def test_epoch_rows_leave_out_done_draws_and_reshard(tiny_manifest):
    videos = usable_videos(pq.read_table(tiny_manifest), "train")
    n = videos.num_rows * 3
    rng = np.random.default_rng(0)
    done = rng.random(n) < 0.4
    everything = Counter(
        zip(
            *(epoch_rows(videos, 3, 5, 2)[k].to_pylist() for k in ("video_id", "draw")), strict=True
        )
    )
    trained_before = Counter()
    order = epoch_order(n, 5, 2)
    ids = videos["video_id"].to_pylist()
    for p in np.flatnonzero(done):
        trained_before[(ids[order[p] // 3], int(order[p] % 3))] += 1
    for world in (1, 2, 3, 4):
        shards = [epoch_rows(videos, 3, 5, 2, r, world, done=done) for r in range(world)]
        assert len({s.num_rows for s in shards}) == 1, "every worker takes the same steps"
        rest: Counter = Counter()
        for s in shards:
            for row in s.to_pylist():
                assert not done[row["pos"]]
                if not row["pad"]:
                    rest[(row["video_id"], row["draw"])] += 1
        assert rest + trained_before == everything, f"world {world}"
        assert shards[0].num_rows == -(-(n - done.sum()) // world)


def test_epoch_rows_reject_progress_of_another_epoch_size(tiny_manifest):
    videos = usable_videos(pq.read_table(tiny_manifest), "train")
    with pytest.raises(ValueError, match="progress covers 5 draws, but the epoch has"):
        epoch_rows(videos, 1, 0, 0, done=np.zeros(5, dtype=bool))


def test_epoch_progress_round_trip():
    done = np.random.default_rng(1).random(1001) < 0.5
    p = EpochProgress(4, 17, done, {"loss_sum": 2.5, "num_samples": 40.0}, {"corrupt": 2.0})
    q = EpochProgress.from_state(p.to_state())
    assert (q.epoch, q.steps, q.sums, q.skips) == (4, 17, p.sums, p.skips)
    assert q.done.dtype == bool and np.array_equal(q.done, done)
    assert len(p.to_state()["done_bits"]) == 126  # 1001 draws in packed bits
