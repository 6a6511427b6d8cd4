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
        assert cfg.pretext.name == pretext.removesuffix("_vit")
        crop = [48, 48] if pretext in tr.VIT_ROWS else [40, 40]  # a ViT takes 16 px patches
        assert list(cfg.data.augment.resize) == [48, 64] and list(cfg.data.augment.crop) == crop
        assert cfg.optim.epochs == 40 and cfg.data.split == "pretrain"


def test_the_vit_rows_differ_by_their_pretext_only():
    """pace, videomae and vjepa on the tiny ViT: one backbone, clip and optimiser; vjepa's
    EMA momentum rises over the whole run (epochs x steps of the pre-training split)."""
    cfgs = {p: _config(["--pretexts", p, "--epochs", "40"]) for p in sorted(tr.VIT_ROWS)}
    for cfg in cfgs.values():
        assert cfg.model.backbone == "vit_tiny" and cfg.data.clip_len == 8
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == (
            "adamw",
            5e-4,
            "warmup_cosine",
        )
        assert list(cfg.optim.betas) == [0.9, 0.95] and cfg.optim.warmup_epochs == 4
        assert cfg.train.batch_size == cfgs["pace_vit"].train.batch_size
    args = tr.parse_args(["--pretexts", "vjepa", "--epochs", "40"])
    cfg = tr.pretrain_config("vjepa", Path("m.parquet"), args, Path("o"), "sqlite://", 879)
    assert cfg.pretext.vjepa.momentum_steps == 40 * 55  # ceil(879 / 16) steps an epoch


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
