"""The run's one dataset (rayssl.clips.pipeline: DrawPlan, build_run_dataset, RunStream):
the rows of every remaining epoch are exactly `epoch_rows`' (curriculum subsets, a resumed
epoch's trained draws left out, the step cap, validation after each epoch), they come
out of ONE Ray Data execution in that order, decoded as `sample_row` does, and the
stream is cut into the loop's batches at every epoch and part boundary."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayssl.clips.pipeline import (
    TRAIN,
    VAL,
    DrawPlan,
    RunStream,
    build_run_dataset,
    epoch_rows,
    sample_row,
    usable_videos,
)
from rayssl.config import DataConfig
from tests.clips.test_pipeline import AUGMENT, spec_for


class _Prefix:
    """A curriculum stand-in: 3 videos in epoch 0, then all (picklable: module-level)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __call__(self, epoch: int) -> pa.Table:
        return self.table.slice(0, 3) if epoch == 0 else self.table


def _ids(rows: pa.Table) -> list[tuple[str, int, int, bool]]:
    return list(
        zip(
            rows["video_id"].to_pylist(),
            rows["draw"].to_pylist(),
            rows["epoch"].to_pylist(),
            rows["pad"].to_pylist(),
            strict=True,
        )
    )


@pytest.fixture(scope="module")
def videos(tiny_manifest):
    table = pq.read_table(tiny_manifest)
    return usable_videos(table, "train"), usable_videos(table, "val")


def test_plan_parts_are_epoch_rows_with_resume_curriculum_and_cap(videos):
    train, val = videos
    done = np.zeros(9 * 2, dtype=bool)
    done[[0, 3, 4, 10]] = True  # a resumed epoch 1: four places already trained
    plan = DrawPlan(
        train,
        2,
        seed=5,
        rank=1,
        world_size=2,
        start_epoch=0,
        epochs=4,
        curriculum=_Prefix(train),
        resumed_epoch=1,
        resumed_done=done,
        resumed_steps=2,
        max_steps=4,
        batch_size=2,
        val_videos=val,
        val_clips_per_video=2,
    )
    parts = list(plan.parts())
    assert [(e, p) for e, p, _ in parts] == [(e, p) for e in range(4) for p in (TRAIN, VAL)]
    expected = {
        0: epoch_rows(train.slice(0, 3), 2, 5, 0, 1, 2),  # 3 rows: under the cap of 8
        1: epoch_rows(train, 2, 5, 1, 1, 2, done=done).slice(0, (4 - 2) * 2),  # 2 steps left
        2: epoch_rows(train, 2, 5, 2, 1, 2).slice(0, 8),
        3: epoch_rows(train, 2, 5, 3, 1, 2).slice(0, 8),
    }
    val_rows = epoch_rows(val, 2, 5, 0, 1, 2, shuffle=False)
    for epoch, part, rows in parts:
        want = expected[epoch] if part == TRAIN else val_rows
        assert rows.equals(want), (epoch, part)
    assert [r.num_rows for _, p, r in parts if p == TRAIN] == [3, 4, 8, 8]
    # the source's blocks: the same rows in the same order, never two parts in one block
    blocks = list(plan.blocks(3))
    assert all(b.num_rows <= 3 and len(set(b["part"].to_pylist())) == 1 for b in blocks)
    joined = pa.concat_tables(blocks)
    assert _ids(joined) == [x for _, _, rows in parts for x in _ids(rows)]


def test_plan_with_every_draw_done_yields_no_rows(videos):
    train, _ = videos
    plan = DrawPlan(train, 1, 0, 0, 1, 0, 2, resumed_epoch=0, resumed_done=np.ones(9, dtype=bool))
    assert [r.num_rows for _, _, r in plan.parts()] == [0, 9]


def _data_cfg(**kw) -> DataConfig:
    return DataConfig(rows_per_task=kw.pop("rows_per_task", 3), **kw)


def test_run_stream_is_one_execution_cut_at_every_epoch_and_part(ray_local, videos):
    train, val = videos
    plan = DrawPlan(
        train, 1, 3, 0, 1, 0, 3, curriculum=_Prefix(train), val_videos=val, val_clips_per_video=1
    )
    spec = spec_for(settings=AUGMENT, seed=3)
    val_spec = spec_for(settings=AUGMENT, seed=3, train=False)
    ds = build_run_dataset(plan, spec, val_spec, _data_cfg())
    stream = RunStream(ds, batch_size=2, prefetch_rows=4)
    for epoch, part, rows in plan.parts():
        batches = list(stream.batches(epoch, part, rows.num_rows))
        sizes = [len(b["video_id"]) for b in batches]
        assert sizes == [2] * (rows.num_rows // 2) + [1] * (rows.num_rows % 2), (epoch, part)
        got = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        assert (got["run_epoch"] == epoch).all() and (got["part"] == part).all()
        assert (got["epoch"] == (epoch if part == TRAIN else 0)).all(), "sampling epoch"
        assert list(got["video_id"]) == rows["video_id"].to_pylist(), "in epoch_rows order"
        assert list(got["draw"]) == rows["draw"].to_pylist()
        # decoded exactly as sample_row does, with the part's settings
        for i in (0, rows.num_rows - 1):
            want = sample_row(rows.slice(i, 1).to_pylist()[0], spec if part == TRAIN else val_spec)
            np.testing.assert_array_equal(got["clip"][i], want["clip"])
            np.testing.assert_array_equal(got["indices"][i], want["indices"])
            assert got["label"][i] == want["label"]
    assert list(stream.batches(3, TRAIN, 0)) == []
    # the whole run was one execution of the one dataset
    assert ds.get_dataset_id().endswith("_0"), ds.get_dataset_id()
    # ... whose decode ran in tasks of rows_per_task draws (30 rows, 3 per task), not in one
    # task: the source's small blocks are not coalesced
    assert "MapBatches(_sample_batch): 10 tasks executed" in ds.stats()


def test_run_stream_refuses_a_stream_out_of_step(ray_local):
    import ray

    rows = [{"run_epoch": 0, "part": TRAIN, "video_id": str(i)} for i in range(3)]
    rows += [{"run_epoch": 1, "part": TRAIN, "video_id": "x"}]
    stream = RunStream(ray.data.from_items(rows), 2, 2)
    with pytest.raises(
        RuntimeError,
        match=r"out of step: expected epoch 1 part 0, got \(epoch, part\) \[.*\(2, 0\)\]",
    ):
        list(stream.batches(0, TRAIN, 4))  # the epoch has 3 rows, not 4
    short = RunStream(ray.data.from_items(rows[:2]), 2, 2)
    with pytest.raises(RuntimeError, match="ended 1 rows before the end of epoch 1"):
        list(short.batches(0, TRAIN, 3))
