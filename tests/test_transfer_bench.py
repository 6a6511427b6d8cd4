"""benchmarks/transfer_synth.py: every row's pre-training config (the pretext's debug config
at the benchmark's geometry, then the command line's overrides), checked before any work.
The runs themselves take 40-50 minutes each and are not tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_benchmark

tr = load_benchmark("transfer_synth")


def _config(argv: list[str]):
    args = tr.parse_args(argv)
    [pretext] = args.pretexts.split(",")
    return tr.pretrain_config(pretext, Path("m.parquet"), args, Path("out"), "sqlite://")


def test_every_pretext_builds_at_the_benchmark_geometry():
    for pretext in tr.PRETEXT_CONFIGS:
        cfg = _config(["--pretexts", pretext, "--epochs", "40"])
        assert cfg.pretext.name == pretext
        assert list(cfg.data.augment.resize) == [48, 64] and list(cfg.data.augment.crop) == [40, 40]
        assert cfg.optim.epochs == 40 and cfg.data.split == "pretrain"


def test_same_pace_row_draws_one_clip_per_video():
    """The thesis's same-pace sampling (Alg. 4) by default; the earlier row's variant by name."""
    args = ["--pretexts", "pace_contrastive", "--tag=-same-pace-one-clip"]
    cfg = _config([*args, "pretext.contrastive.mode=same_pace"])
    assert cfg.pretext.contrastive.clips_per_sample == 1
    two = _config(
        [*args, "pretext.contrastive.mode=same_pace", "pretext.contrastive.sampling=two_clips"]
    )
    assert two.pretext.contrastive.clips_per_sample == 2


def test_multitask_row_is_pace_and_statistics():
    cfg = _config(["--pretexts", "multitask", "--tag=-pace-stats"])
    assert cfg.pretext.multitask.tasks == ["pace", "statistics"]
    assert cfg.data.augment.jitter_prob == 0.0  # as every other row of the benchmark


def test_bad_command_lines_fail_before_any_work(tmp_path, capsys):
    for argv, message in (
        (["--pretexts", "pace,vcop"], "unknown ['vcop']"),
        (["--pretexts", "multitask", "pretext.contrastive.sampling=one_clip"], "same_context"),
        (["--reuse", str(tmp_path / "none.json")], "--reuse: no such file"),
    ):
        with pytest.raises(SystemExit):
            tr.parse_args(argv)
        assert message in capsys.readouterr().err
