"""Checkpoints load no code, and resume only what they saved (issue 19, items 1 and 3).

A `state.pt` / `backbone.pt` whose pickle would create a file is refused by every entry
point, through the command line, with a one-line error naming the file; the file is not
created. Checkpoints the previous format wrote still load; one that only a full unpickler
reads says how to convert it, and `rayssl checkpoint convert` does. A run folder's latest
checkpoint is Ray Train's snapshot's, else the highest-numbered direct child; a resumed
run with another config is refused unless `run.resume=force`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rayssl import checkpoint as ckpt
from rayssl.checkpoint import (
    CheckpointError,
    load_training_state,
    resolve_checkpoint,
    save_training_state,
)
from rayssl.cli import main
from rayssl.config import ConfigError, load_config
from rayssl.launch import RESUME_MAY_CHANGE, check_resume
from rayssl.preflight import resolve_paths
from rayssl.pretext import build_pretext
from rayssl.train.step import build_model, build_optimizer
from tests.conftest import ROOT
from tests.hostile_files import MarkerOnLoad, evil_backbone, evil_state

DEBUG = ROOT / "configs" / "debug.yaml"
FINETUNE = ROOT / "configs" / "finetune_debug.yaml"
SUITE = ROOT / "configs" / "eval_debug.yaml"
SMALL = ["model.width=0.0625"]


def _cfg(*overrides: str):
    return load_config(DEBUG, [*SMALL, *overrides])


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_refused(rc: int, err: str, path: Path, marker: Path) -> None:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:") and "refused" in lines[0], err
    assert str(path) in lines[0], err
    assert "names exec" in lines[0], err  # the global its pickle would call
    assert not marker.exists(), f"the pickle ran: {marker}"


def test_a_hostile_pickle_is_refused_by_every_entry_point(tmp_path, capsys):
    cfg = _cfg()
    marker = tmp_path / "pwned"
    backbone = evil_backbone(tmp_path / "evil" / "backbone.pt", cfg, marker)
    run = tmp_path / "evilruns" / "r"
    state = evil_state(run / "checkpoint_000001", cfg, marker)
    manifest = tmp_path / "nowhere.parquet"
    # the suite checks that its paths exist before it reads the checkpoint; this one is
    # never opened: the hostile checkpoint is refused first
    present = tmp_path / "present.parquet"
    present.write_bytes(b"")
    in_suite = f"data.manifest={present}"
    out = tmp_path / "out"
    cases = [
        (
            [
                "features",
                "--checkpoint",
                backbone,
                "--manifest",
                manifest,
                "--out",
                out / "f.parquet",
            ],
            backbone,
        ),
        (
            ["evaluate", "--checkpoint", backbone, "--suite", SUITE, "--out", out / "e1", in_suite],
            backbone,
        ),
        (["evaluate", "--checkpoint", run, "--suite", SUITE, "--out", out / "e2", in_suite], state),
        (
            [
                "evaluate",
                "--checkpoint",
                state.parent,
                "--suite",
                SUITE,
                "--out",
                out / "e3",
                in_suite,
            ],
            state,
        ),
        (
            [
                "finetune",
                "--config",
                FINETUNE,
                "--checkpoint",
                backbone,
                f"data.manifest={manifest}",
                f"run.storage_path={tmp_path / 'ft'}",
            ],
            backbone,
        ),
        (
            [
                "pretrain",
                "--config",
                DEBUG,
                f"model.init={backbone}",
                f"data.manifest={manifest}",
                f"run.storage_path={tmp_path / 'pt'}",
            ],
            backbone,
        ),
        # resuming run "r": its only checkpoint is hostile
        (
            [
                "pretrain",
                "--config",
                DEBUG,
                f"data.manifest={manifest}",
                f"run.storage_path={tmp_path / 'evilruns'}",
                "run.name=r",
                *SMALL,
            ],
            state,
        ),
    ]
    for argv, named in cases:
        rc, _, err = _run(argv, capsys)
        _assert_refused(rc, err, named, marker)
    assert not (out / "f.parquet").exists()
    # the same file read with the full unpickler (what every entry point did) runs it
    torch.load(backbone, weights_only=False)
    assert marker.exists()


def _main_format_state(directory: Path, cfg, progress: dict | None = None) -> Path:
    """A state.pt exactly as the previous writer saved it (torch.save of the dict)."""
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    opt, sched = build_optimizer(model, cfg)
    directory.mkdir(parents=True, exist_ok=True)
    sampler = {"seed": 0, "next_epoch": 1, **({"in_epoch": progress} if progress else {})}
    torch.save(
        {
            "format_version": 1,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": 0,
            "sampler": sampler,
            "extra": {"mlflow_run_id": "abc", "global_step": 7},
            "config": cfg.to_dict(),
        },
        directory / "state.pt",
    )
    return directory / "state.pt"


def test_checkpoints_of_the_previous_format_still_load(tmp_path):
    from rayssl.checkpoint import EpochProgress, epoch_progress

    cfg = _cfg()
    progress = EpochProgress(1, 3, np.array([True, False, True]), {"loss": 2.0}, {"x": 1.0})
    path = _main_format_state(tmp_path / "checkpoint_000001", cfg, progress.to_state())
    state = load_training_state(path.parent)
    assert state["extra"]["global_step"] == 7
    assert epoch_progress(state).done.tolist() == [True, False, True]
    source = resolve_checkpoint(str(tmp_path), cfg)
    assert source.pretrain_run_id == "abc"


def test_an_old_file_with_numpy_values_says_how_to_convert_and_converts(tmp_path, capsys):
    cfg = _cfg()
    path = _main_format_state(tmp_path / "old", cfg)
    state = torch.load(path, weights_only=False)
    state["extra"]["loss"] = np.float64(1.5)  # what a careless writer left
    state["extra"]["done"] = np.array([1, 2, 3])
    torch.save(state, path)
    with pytest.raises(CheckpointError) as e:
        load_training_state(path.parent)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    assert f"rayssl checkpoint convert {path} --out" in message
    new = tmp_path / "new" / "state.pt"
    rc, out, err = _run(["checkpoint", "convert", path, "--out", new], capsys)
    assert rc == 0, err
    assert json.loads(out)["out"] == str(new) and err == ""  # read as data: nothing to warn of
    converted = load_training_state(new.parent)
    assert converted["extra"]["loss"] == 1.5 and type(converted["extra"]["loss"]) is float
    assert converted["extra"]["done"].tolist() == [1, 2, 3]
    for key, value in state["model"].items():
        assert torch.equal(converted["model"][key], value)
    rc, _, err = _run(["checkpoint", "convert", path, "--out", new], capsys)
    assert rc == 2 and "exists" in err  # never overwrites


def test_convert_runs_no_code_either(tmp_path, capsys):
    """`rayssl checkpoint convert` reads with weights_only=True and admits numpy's
    reconstructors only: a hostile pickle is refused naming its global, and runs nothing."""
    cfg = _cfg()
    marker = tmp_path / "pwned"
    for evil in (
        evil_backbone(tmp_path / "evil" / "backbone.pt", cfg, marker),
        evil_state(tmp_path / "evilrun" / "checkpoint_000001", cfg, marker),
    ):
        out = tmp_path / "converted" / evil.name
        rc, _, err = _run(["checkpoint", "convert", evil, "--out", out], capsys)
        assert rc == 2, err
        assert f"convert {evil}: refused: its pickle names builtins.exec" in err, err
        assert len(err.strip().splitlines()) == 1
        assert not marker.exists() and not out.exists()


def test_the_writer_stores_plain_data_only(tmp_path):
    cfg = _cfg()
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    opt, sched = build_optimizer(model, cfg)
    kwargs = dict(model=model, optimizer=opt, scheduler=sched, epoch=0, config=cfg.to_dict())
    with pytest.raises(TypeError, match=r"numpy.float64"):
        save_training_state(tmp_path, sampler={"seed": np.float64(0)}, **kwargs)
    with pytest.raises(TypeError, match="MarkerOnLoad"):
        save_training_state(tmp_path, sampler={"x": MarkerOnLoad(tmp_path / "m")}, **kwargs)
    assert not (tmp_path / "state.pt").exists()
    save_training_state(tmp_path, sampler={"seed": 0, "next_epoch": 1}, **kwargs)
    assert load_training_state(tmp_path)["sampler"]["next_epoch"] == 1


def _state(folder: Path, epoch: int) -> None:
    ckpt.save({"format_version": 1, "model": {}, "epoch": epoch}, folder / "state.pt")


def test_latest_checkpoint_is_the_highest_number_or_ray_s_snapshot(tmp_path):
    run = tmp_path / "runs" / "a"
    for n in (9, 10, 2):
        _state(run / f"checkpoint_{n:d}", n)
    # lexicographically checkpoint_9 sorts last; the number says 10
    assert ckpt.latest_state_uri(str(run)).endswith("/checkpoint_10/state.pt")
    (run / ckpt.SNAPSHOT_FILE).write_text(
        json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_2"}})
    )
    assert ckpt.latest_state_uri(str(run)).endswith("/checkpoint_2/state.pt")
    (run / ckpt.SNAPSHOT_FILE).write_text("{not json")  # a broken snapshot: numbers decide
    assert ckpt.latest_state_uri(str(run)).endswith("/checkpoint_10/state.pt")
    _state(tmp_path / "runs" / "b" / "checkpoint_1", 1)
    with pytest.raises(CheckpointError) as e:
        ckpt.latest_state_uri(str(tmp_path / "runs"))
    assert "2 run folder(s)" in str(e.value) and "a, b" in str(e.value)
    # a checkpoint deeper than a direct child is no checkpoint of this folder
    _state(tmp_path / "deep" / "x" / "y" / "checkpoint_1", 1)
    with pytest.raises(CheckpointError, match="holds no Ray Train checkpoint"):
        ckpt.latest_state_uri(str(tmp_path / "deep"))


def _saved_run(tmp_path: Path, *overrides: str):
    # the paths as a run resolves them (the debug config's manifest need not exist here)
    cfg = resolve_paths(_cfg(f"run.storage_path={tmp_path / 'runs'}", "run.name=r", *overrides))
    model = build_model(cfg, build_pretext(cfg.pretext, cfg.data.clip_len))
    opt, sched = build_optimizer(model, cfg)
    save_training_state(
        tmp_path / "runs" / "r" / "checkpoint_000001",
        model=model, optimizer=opt, scheduler=sched, epoch=0,
        sampler={"seed": 0, "next_epoch": 1}, config=cfg.to_dict(),
    )  # fmt: skip
    return cfg


def test_a_resumed_run_keeps_its_config_unless_forced(tmp_path, capsys):
    cfg = _saved_run(tmp_path)
    assert check_resume(cfg).endswith("checkpoint_000001/state.pt")
    # resources, checkpoint cadence and logging may change
    allowed = replace(
        cfg,
        train=replace(cfg.train, cpus_per_worker=2.0, log_every_steps=1, checkpoint_every_steps=5),
        run=replace(cfg.run, experiment="other"),
    )
    assert check_resume(allowed)
    assert "train.cpus_per_worker" in RESUME_MAY_CHANGE
    changed = replace(
        cfg, optim=replace(cfg.optim, lr=0.5), data=replace(cfg.data, clips_per_video=5)
    )
    with pytest.raises(ConfigError) as e:
        check_resume(changed)
    assert "data.clips_per_video, optim.lr;" in str(e.value) and "run.resume=force" in str(e.value)
    forced = replace(changed, run=replace(changed.run, resume="force"))
    assert check_resume(forced)
    # through the command line: refused before anything starts
    argv = ["pretrain", "--config", DEBUG, *SMALL, f"run.storage_path={tmp_path / 'runs'}",
            "run.name=r", "optim.lr=0.5"]  # fmt: skip
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "optim.lr" in err and len(err.strip().splitlines()) == 1, err
    # a new name starts afresh: nothing to compare
    assert check_resume(replace(changed, run=replace(changed.run, name="fresh"))) is None
