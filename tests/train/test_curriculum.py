"""Tests of rayssl.train.curriculum: pacing functions (hand-computed sequences), validation
of the settings, easy-first ordering and the subsets."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import pyarrow as pa
import pytest

from rayssl.train.curriculum import (
    check_curriculum,
    curriculum_subset,
    order_by_difficulty,
    pacing_schedule,
    stage_at,
)


@dataclass
class Settings:
    """Stands for rayssl.config.CurriculumSettings (same fields and defaults)."""

    enabled: bool = False
    pacing: str = "single_step"
    start_fraction: float = 0.5
    growth: float = 2.0
    step_epochs: int = 1
    step_epochs_list: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- pacing


def test_single_step_is_the_thesis_schedule():
    # Eq. 3.2: half of the sorted videos until step_length, then all of them.
    assert pacing_schedule(Settings(step_epochs=3), 6) == [
        (0, 0.5),
        (0, 0.5),
        (0, 0.5),
        (1, 1.0),
        (1, 1.0),
        (1, 1.0),
    ]
    assert pacing_schedule(Settings(start_fraction=0.25), 3) == [(0, 0.25), (1, 1.0), (1, 1.0)]
    # Everything from the start: one stage only.
    assert pacing_schedule(Settings(start_fraction=1.0, step_epochs=2), 3) == [(0, 1.0)] * 3


def test_fixed_exp_doubles_every_step():
    s = Settings(pacing="fixed_exp", start_fraction=0.125, growth=2.0, step_epochs=2)
    # 0.125, 0.25, 0.5, 1 (stage 3 saturates), two epochs each.
    assert pacing_schedule(s, 9) == [
        (0, 0.125),
        (0, 0.125),
        (1, 0.25),
        (1, 0.25),
        (2, 0.5),
        (2, 0.5),
        (3, 1.0),
        (3, 1.0),
        (3, 1.0),
    ]
    # Non-power growth: 0.3, 0.3 * 1.5 = 0.45, 0.675, then 1.0125 -> 1.
    t = Settings(pacing="fixed_exp", start_fraction=0.3, growth=1.5, step_epochs=1)
    got = pacing_schedule(t, 5)
    assert [k for k, _ in got] == [0, 1, 2, 3, 3]
    assert [f for _, f in got] == pytest.approx([0.3, 0.45, 0.675, 1.0, 1.0])
    assert stage_at(t, 1000) == (3, 1.0)


def test_varied_exp_has_a_length_per_stage():
    s = Settings(pacing="varied_exp", start_fraction=0.2, growth=2.0, step_epochs_list=[3, 1, 2])
    # stage 0 (0.2): epochs 0-2; stage 1 (0.4): epoch 3; stage 2 (0.8): epochs 4-5;
    # after the list: everything (stage 3).
    assert pacing_schedule(s, 8) == [
        (0, 0.2),
        (0, 0.2),
        (0, 0.2),
        (1, 0.4),
        (2, 0.8),
        (2, 0.8),
        (3, 1.0),
        (3, 1.0),
    ]
    # The fraction reaches 1 inside the list: the stage index stops there too.
    fast = replace(s, start_fraction=0.5, step_epochs_list=[1, 1, 1, 1])
    assert pacing_schedule(fast, 6) == [(0, 0.5), (1, 1.0), (1, 1.0), (1, 1.0), (1, 1.0), (1, 1.0)]


def test_enabled_is_not_consulted():
    on, off = Settings(enabled=True), Settings(enabled=False)
    assert stage_at(on, 0) == stage_at(off, 0) == (0, 0.5)


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"pacing": "linear"}, "curriculum.pacing"),
        ({"start_fraction": 0.0}, "curriculum.start_fraction"),
        ({"start_fraction": 1.5}, "curriculum.start_fraction"),
        ({"start_fraction": float("nan")}, "curriculum.start_fraction"),
        ({"start_fraction": True}, "curriculum.start_fraction"),
        ({"step_epochs": 0}, "curriculum.step_epochs"),
        ({"step_epochs": 1.5}, "curriculum.step_epochs"),
        ({"pacing": "fixed_exp", "growth": 1.0}, "curriculum.growth"),
        ({"pacing": "varied_exp", "growth": 0.5, "step_epochs_list": [1]}, "curriculum.growth"),
        ({"pacing": "fixed_exp", "growth": float("inf")}, "curriculum.growth"),
        ({"pacing": "varied_exp", "step_epochs_list": []}, "curriculum.step_epochs_list"),
        ({"pacing": "varied_exp", "step_epochs_list": [2, 0]}, "curriculum.step_epochs_list"),
        ({"pacing": "varied_exp", "step_epochs_list": [1.5]}, "curriculum.step_epochs_list"),
    ],
)
def test_bad_settings_name_the_key(changes, key):
    bad = replace(Settings(), **changes)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_curriculum(bad)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        stage_at(bad, 0)


def test_settings_a_pacing_does_not_use_are_not_checked():
    check_curriculum(Settings(growth=0.1, step_epochs_list=[-1]))  # single_step
    check_curriculum(Settings(pacing="fixed_exp", step_epochs_list=[]))


@pytest.mark.parametrize("epoch", [-1, 1.0, "2"])
def test_bad_epoch(epoch):
    with pytest.raises(ValueError, match="epoch"):
        stage_at(Settings(), epoch)


# --------------------------------------------------------------------------- ordering


def scored(ids: list[str], difficulty: list[float | None]) -> pa.Table:
    return pa.table(
        {
            "video_id": ids,
            "uri": [f"/v/{i}.mp4" for i in ids],
            "difficulty": pa.array(difficulty, pa.float64()),
        }
    )


def test_order_is_easy_first_with_ties_by_id_and_unscored_last():
    table = scored(
        ["e", "d", "c", "b", "a", "f", "g"],
        [0.2, 0.9, float("nan"), 0.2, 0.5, None, 0.9],
    )
    ordered = order_by_difficulty(table)
    assert ordered["video_id"].to_pylist() == ["d", "g", "a", "b", "e", "c", "f"]
    assert ordered.column_names == table.column_names
    assert ordered["uri"].to_pylist()[0] == "/v/d.mp4"  # whole rows move
    # The input order does not matter.
    shuffled = table.take(pa.array([6, 3, 0, 5, 1, 4, 2]))
    assert order_by_difficulty(shuffled)["video_id"].to_pylist() == ordered["video_id"].to_pylist()


def test_order_needs_the_difficulty_column():
    with pytest.raises(ValueError, match="rayssl score"):
        order_by_difficulty(pa.table({"video_id": ["a"], "uri": ["/a"]}))
    with pytest.raises(ValueError, match="numeric"):
        order_by_difficulty(pa.table({"video_id": ["a"], "difficulty": ["easy"]}))


def test_subset_takes_the_easiest_ceil_fraction():
    ids = [f"v{i:02d}" for i in range(10)]
    table = scored(ids, [i / 10 for i in range(10)])  # v09 is the easiest
    assert curriculum_subset(table, 0.3)["video_id"].to_pylist() == ["v09", "v08", "v07"]
    assert curriculum_subset(table, 0.25).num_rows == 3  # ceil(2.5)
    assert curriculum_subset(table, 0.01).num_rows == 1  # at least one
    assert curriculum_subset(table, 1.0).num_rows == 10
    # Nested subsets.
    small = set(curriculum_subset(table, 0.2)["video_id"].to_pylist())
    assert small <= set(curriculum_subset(table, 0.6)["video_id"].to_pylist())
    assert curriculum_subset(scored([], []), 0.5).num_rows == 0
    # Unscored videos are only used once every scored one is.
    with_nan = scored(["a", "b", "c"], [float("nan"), 0.1, 0.2])
    assert curriculum_subset(with_nan, 0.6)["video_id"].to_pylist() == ["c", "b"]


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.01, math.nan])
def test_subset_rejects_bad_fractions(fraction):
    with pytest.raises(ValueError, match="fraction"):
        curriculum_subset(scored(["a"], [0.5]), fraction)


def test_the_config_dataclass_is_accepted():
    from rayssl.config import CurriculumSettings

    s = CurriculumSettings(pacing="varied_exp", start_fraction=0.25, step_epochs_list=[1, 2])
    assert pacing_schedule(s, 5) == [(0, 0.25), (1, 0.5), (1, 0.5), (2, 1.0), (2, 1.0)]
