"""Curriculum learning (thesis 3.2): order the videos easy-first and feed a growing share.

Scoring is done once, offline, by ``rayssl score`` (:mod:`rayssl.tools.score`): every video of a
manifest gets a ``difficulty`` f in [0, 1], the share of the summed motion-boundary
magnitude that falls in the largest-motion block of the 4x4 grid (the larger of the u and v
ratios).  A large f means one block holds the dominant motion: an *easy* video.  Training
then uses the videos sorted by f descending (:func:`order_by_difficulty`) and, at each epoch,
only the first ``fraction`` of them (:func:`curriculum_subset`), where the fraction comes from
a pacing function (Hacohen & Weinshall, ICML 2019, "On the power of curriculum learning in
training deep networks"), here with stages at epoch boundaries:

* ``single_step`` -- ``start_fraction`` for epochs ``< step_epochs``, then 1 (the thesis's
  choice, Eq. 3.2, with ``start_fraction = 0.5``);
* ``fixed_exp`` -- ``min(1, start_fraction * growth ** floor(epoch / step_epochs))``;
* ``varied_exp`` -- like ``fixed_exp`` but stage k lasts ``step_epochs_list[k]`` epochs; once
  the list is used up the fraction is 1.

The functions take any object with the attributes of ``rayssl.config.CurriculumSettings``
(``pacing``, ``start_fraction``, ``growth``, ``step_epochs``, ``step_epochs_list``); none of
them looks at ``enabled`` -- whether a curriculum is used at all is the caller's decision.
No Ray here.

    ordered = order_by_difficulty(manifest)          # easy first, NaN scores last
    stage, fraction = stage_at(settings, epoch)      # e.g. (0, 0.5) then (1, 1.0)
    videos = curriculum_subset(ordered, fraction)    # the first ceil(fraction * n) rows
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from rayssl.config import check_curriculum
from rayssl.vocabulary import PACINGS

__all__ = [
    "PACINGS",
    "CurriculumLike",
    "check_curriculum",
    "curriculum_subset",
    "easiest",
    "order_by_difficulty",
    "pacing_schedule",
    "stage_at",
]

#: A fraction times a row count is rounded to this many decimals before ``ceil`` so that
#: e.g. 0.3 * 10 = 3.0000000000000004 takes 3 rows, not 4.
_ROUND_DECIMALS = 9


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


class CurriculumLike(Protocol):
    """What the functions read from ``rayssl.config.CurriculumSettings`` (read-only, so a
    ``Literal`` pacing or a ``list`` of lengths matches)."""

    @property
    def pacing(self) -> str: ...
    @property
    def start_fraction(self) -> float: ...
    @property
    def growth(self) -> float: ...
    @property
    def step_epochs(self) -> int: ...
    @property
    def step_epochs_list(self) -> Sequence[int]: ...


def _full_stage(start: float, growth: float) -> int:
    """The first stage k whose fraction ``start * growth ** k`` reaches 1 (as computed by
    :func:`_exp_fraction`, so both agree on floats)."""
    k = 0
    while _exp_fraction(start, growth, k) < 1.0:
        k += 1
    return k


def _exp_fraction(start: float, growth: float, k: int) -> float:
    return min(1.0, float(start) * float(growth) ** k)


def stage_at(settings: CurriculumLike, epoch: int) -> tuple[int, float]:
    """The curriculum stage and the fraction of the easy-first videos used at ``epoch``.

    Args:
        settings: pacing settings (see :func:`check_curriculum`; they are checked here).
        epoch: 0-based training epoch.

    Returns:
        ``(stage, fraction)``: ``stage`` is 0-based and counts the distinct fractions seen so
        far -- it stops growing at the first stage that uses every video (fraction 1.0), so a
        stage change always means a different subset; ``fraction`` is in (0, 1].

        * single_step: ``(0, start_fraction)`` for ``epoch < step_epochs``, then ``(1, 1.0)``
          (``(0, 1.0)`` throughout when ``start_fraction`` is 1);
        * fixed_exp: k = ``epoch // step_epochs``, fraction ``min(1, start * growth ** k)``;
        * varied_exp: k = the stage of ``epoch`` when stage i lasts ``step_epochs_list[i]``
          epochs, fraction ``min(1, start * growth ** k)`` inside the list, 1.0 after it.

    Raises:
        ValueError: bad settings (named by dotted key) or a negative / non-integer epoch.
    """
    check_curriculum(settings)
    if not _is_int(epoch) or epoch < 0:
        raise ValueError(f"epoch: expected an integer >= 0, got {epoch!r}")
    start = float(settings.start_fraction)
    if settings.pacing == "single_step":
        if start >= 1.0:
            return 0, 1.0
        return (0, start) if epoch < settings.step_epochs else (1, 1.0)

    growth = float(settings.growth)
    full = _full_stage(start, growth)
    if settings.pacing == "fixed_exp":
        k = int(epoch) // int(settings.step_epochs)
    else:  # varied_exp
        k, end = 0, 0
        for length in settings.step_epochs_list:
            end += int(length)
            if epoch < end:
                break
            k += 1
        else:  # past the list: everything
            return min(k, full), 1.0
    return min(k, full), _exp_fraction(start, growth, min(k, full))


def pacing_schedule(settings: CurriculumLike, num_epochs: int) -> list[tuple[int, float]]:
    """``[stage_at(settings, e) for e in range(num_epochs)]`` (for logs and plots)."""
    if not _is_int(num_epochs) or num_epochs < 0:
        raise ValueError(f"num_epochs: expected an integer >= 0, got {num_epochs!r}")
    return [stage_at(settings, e) for e in range(int(num_epochs))]


def order_by_difficulty(table: pa.Table) -> pa.Table:
    """The rows of a scored manifest, easy first.

    Args:
        table: a manifest with a float ``difficulty`` column (written by ``rayssl score``)
            and normally ``video_id``.

    Returns:
        The same rows and columns sorted by ``difficulty`` descending (a larger share of the
        motion in one block = easier), ties broken by ``video_id`` ascending so the order does
        not depend on the input's row order; rows whose difficulty is NaN or null (videos
        that could not be scored) come last, among themselves by ``video_id``.  Without a
        ``video_id`` column ties keep the input order.

    Raises:
        ValueError: the table has no ``difficulty`` column, or it is not numeric.
    """
    if "difficulty" not in table.column_names:
        raise ValueError(
            "the manifest has no 'difficulty' column: run `rayssl score MANIFEST --out "
            "SCORED.parquet` first and train on the scored manifest"
        )
    column = table["difficulty"]
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise ValueError(f"the 'difficulty' column must be numeric, got {column.type}")
    values = np.asarray(
        [np.nan if v is None else float(v) for v in column.to_pylist()], dtype=np.float64
    )
    ids = (
        [str(v) for v in table["video_id"].to_pylist()]
        if "video_id" in table.column_names
        else [""] * table.num_rows
    )
    missing = np.isnan(values)  # not scored (null became NaN above)
    order = sorted(
        range(table.num_rows),
        key=lambda i: (bool(missing[i]), 0.0 if missing[i] else -values[i], ids[i]),
    )
    return table.take(pa.array(order, type=pa.int64()))


def curriculum_subset(table: pa.Table, fraction: float) -> pa.Table:
    """The easiest ``ceil(fraction * n)`` videos (at least one) of a scored manifest.

    Args:
        table: a manifest with a ``difficulty`` column, in any order (it is ordered with
            :func:`order_by_difficulty`; ordering an ordered table changes nothing).
        fraction: share of the videos to use, in (0, 1] (e.g. from :func:`stage_at`).

    Returns:
        The first ``max(1, ceil(fraction * n))`` rows of the easy-first order (n = rows of
        ``table``; an empty table gives an empty table).  The subsets are nested: a larger
        fraction always contains the videos of a smaller one.

    Raises:
        ValueError: ``fraction`` outside (0, 1], or no ``difficulty`` column.
    """
    return easiest(order_by_difficulty(table), fraction)


def easiest(ordered: pa.Table, fraction: float) -> pa.Table:
    """The first ``max(1, ceil(fraction * n))`` rows of a table already in easy-first
    order (:func:`order_by_difficulty`): the training loop orders once per run and
    slices per epoch instead of sorting every epoch."""
    if not _is_number(fraction) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    n = ordered.num_rows
    if n == 0:
        return ordered
    keep = max(1, math.ceil(round(float(fraction) * n, _ROUND_DECIMALS)))
    return ordered.slice(0, min(keep, n))


class EpochVideos:
    """The videos of each epoch under a curriculum: `easiest(ordered, stage fraction)`.

    Picklable (a run's data source calls it, epoch by epoch, in its own process)."""

    def __init__(self, ordered: pa.Table, settings: CurriculumLike) -> None:
        self.ordered = ordered
        self.settings = settings

    def __call__(self, epoch: int) -> pa.Table:
        return easiest(self.ordered, stage_at(self.settings, epoch)[1])
