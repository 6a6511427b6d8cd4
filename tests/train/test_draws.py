"""The draws a run trains are a function of (seed, epoch) alone, however the pipeline is
built: a short local-mode run with a curriculum (two stages) and validation records every
trained draw (RAYSSL_TEST_TRACE: video, draw, the first clip's source frames and a digest
of every target), and the test checks, epoch by epoch,

* against `sample_row` applied to `epoch_rows` in this process (the loop-free formula):
  the same draws in the same order, with byte-identical clips and labels;
* against `draws_golden.json`, recorded from the code that built one Ray Data pipeline
  per epoch (before the pipeline lived for the whole run): the same videos, draw
  numbers and clip frames (start and pace), in the same multiset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayssl.clips.pipeline import epoch_rows, sample_row, sampler_spec, usable_videos
from rayssl.config import load_config
from rayssl.pretext import build_pretext
from rayssl.testhooks import sample_digest
from rayssl.train.curriculum import easiest, order_by_difficulty, stage_at
from tests.conftest import tiny_overrides
from tests.train.test_pretrain import DEBUG

GOLDEN = Path(__file__).with_name("draws_golden.json")
EPOCHS = 3


def _config(manifest: Path, tmp_path: Path):
    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    return load_config(
        DEBUG,
        [
            *tiny_overrides(manifest, tmp_path / "runs", "draws", tracking),
            "train.num_workers=0",
            f"optim.epochs={EPOCHS}",
            "data.clips_per_video=2",
            "data.augment.flip_prob=0.5",
            "data.augment.jitter_prob=0.5",
            "train.batch_size=3",
            "curriculum.enabled=true",
            "curriculum.step_epochs=2",
        ],
    )


def _expected(cfg, manifest: Path) -> dict[int, list[list]]:
    """Per epoch, [video, draw, frames, digest] of every draw, in the epoch's order."""
    table = pq.read_table(manifest)
    videos = usable_videos(table, cfg.data.split, cfg.data.fraction, cfg.run.seed)
    ordered = order_by_difficulty(videos)
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    spec = sampler_spec(cfg.data, pretext, cfg.run.seed)
    out = {}
    for epoch in range(EPOCHS):
        rows = epoch_rows(
            easiest(ordered, stage_at(cfg.curriculum, epoch)[1]),
            cfg.data.clips_per_video,
            cfg.run.seed,
            epoch,
        )
        out[epoch] = []
        for row in rows.to_pylist():
            sample = sample_row(row, spec)
            frames = [int(x) for x in sample["indices"]]
            out[epoch].append([row["video_id"], row["draw"], frames, sample_digest(sample, None)])
    return out


@pytest.mark.parametrize("rows_per_stream", [2048, 12], ids=["one-stream", "a-stream-per-epoch"])
def test_trained_draws_match_the_formula_and_the_per_epoch_pipeline(
    ray_local, scored_manifest, tmp_path, monkeypatch, rows_per_stream
):
    """One stream for the 3 epochs, or (12 rows per stream: each epoch has 10-18 train
    rows plus 6 validation rows) a new stream every epoch: the same draws."""
    from rayssl.launch import pretrain
    from rayssl.train import loop

    monkeypatch.setattr(loop, "ROWS_PER_STREAM", rows_per_stream)

    trace = tmp_path / "trace"
    trace.mkdir()
    monkeypatch.setenv("RAYSSL_TEST_TRACE", str(trace))
    cfg = _config(scored_manifest, tmp_path)
    pretrain(cfg)
    lines = [json.loads(x) for f in trace.glob("trace-*.jsonl") for x in f.open()]
    got: dict[int, list[list]] = {}
    for line in sorted(lines, key=lambda x: x["global_step"]):
        got.setdefault(line["epoch"], []).extend(line["samples"])
    expected = _expected(cfg, scored_manifest)
    assert sorted(got) == list(range(EPOCHS))
    assert [len(got[e]) for e in range(EPOCHS)] == [10, 10, 18]  # 5, 5, 9 videos x 2 clips
    for epoch in range(EPOCHS):
        assert sorted(got[epoch]) == sorted(expected[epoch]), f"epoch {epoch + 1}"
    golden = json.loads(GOLDEN.read_text())
    for epoch in range(EPOCHS):
        frames = sorted([v, d, f] for v, d, f, _ in got[epoch])
        assert frames == golden[str(epoch)], f"epoch {epoch + 1} differs from the golden draws"
