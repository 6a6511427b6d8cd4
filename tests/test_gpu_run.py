"""The one command of a lent GPU machine (benchmarks/gpu_run.sh) runs end to end with
only torch installed: here on the CPU with tiny settings, so the GPU run's device time
is not spent finding a wrong flag or a missing import; and `rayssl capacity` reads the
throughput JSON it writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rayssl.tools.capacity import anchor_rate
from tests.tools.test_capacity import _torch_only_path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_run_script_runs_both_benchmarks_with_only_torch(tmp_path):
    site = _torch_only_path(tmp_path / "site")
    python = tmp_path / "python"  # torch and the stdlib only, as on the GPU machine
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(site),
        "PYTHON": str(python),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "GPU_RUN_PARTS": "throughput curves",  # the other two need Ray: the next test
        # every kind of mode: the anchor's, rayssl's step, an R(2+1)D-only one (skipped for
        # C3D), a compiled one (dynamo's eager backend: the tracing without a compiler)
        "TT_ARGS": "--device cpu --models c3d --size 32 --width 0.0625 --batch-size 2 "
        "--steps 1 --warmup 0 --modes fp32 tf32 bf16cl rayssl conv2d best "
        "--compile-backend eager",
        "LC_ARGS": "--device cpu --width 0.125 --size 32 --clip-len 8 --batch-size 8 "
        "--steps 4 --window 2 --settings fp32 bf16 --seeds 0 1",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: the script finds its files itself
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    path = out / "train_throughput.json"
    report = json.loads(path.read_text())
    runs = {(r["model"], r["mode"]) for r in report["train"]}
    # tf32 is CUDA only, conv2d R(2+1)D only (the R(2+1)D modes: tests/models, test_step)
    assert runs == {("c3d", mode) for mode in ("fp32", "bf16cl", "rayssl", "best")}
    assert all(r["clips_s"] > 0 and math.isfinite(r["clips_s"]) for r in report["train"])
    assert report["peak_tflops"]["fp32"] > 0
    for r in report["train"]:
        assert r["of_peak"] == pytest.approx(r["tflops"] / report["peak_tflops"]["fp32"])
        assert r["first_step_s"] > 0
    text = (out / "train_throughput.txt").read_text()
    assert "rayssl / bf16cl" in text and "(target x2.0: " in text
    assert "c3d/conv2d skipped: run for R(2+1)D only" in text
    # `rayssl capacity --anchor` reads what it wrote, with the settings it ran at.
    bf16cl = next(r for r in report["train"] if r["model"] == "c3d" and r["mode"] == "bf16cl")
    rate, info = anchor_rate(path, "c3d", "bf16")
    assert rate == bf16cl["clips_s"]
    assert info["config_known"] and info["config"]["size"] == 32
    assert info["config"]["batch_size"] == 2 and info["config"]["width"] == 0.0625
    assert anchor_rate(path, "c3d", "best")[0] > 0  # rayssl's own modes too
    curves = json.loads((out / "loss_curves.json").read_text())
    assert sorted(curves["settings"]) == ["bf16"]
    assert len(curves["runs"]) == 4  # fp32 and bf16, seeds 0 and 1
    assert "torch" in (out / "gpu.txt").read_text()
    assert "train_throughput: exit 0" in done.stdout
    assert "loss_curves: exit 0" in done.stdout
    # the plot and any log travel in one archive: the device tool brings back 8 files
    assert {p.name for p in out.iterdir()} <= {
        "gpu.txt",
        "train_throughput.json",
        "train_throughput.txt",
        "loss_curves.json",
        "loss_curves.txt",
        "logs.tar.gz",
    }


def test_e2e_runs_the_benchmarks_fastest_step_mode_at_its_shape():
    from tests.conftest import load_benchmark

    e2e = load_benchmark("gpu_e2e")
    rows = [
        {"model": "r21d", "mode": "bf16cl", "clips_s": 100.0},
        {"model": "r21d", "mode": "rayssl", "clips_s": 110.0},
        {"model": "r21d", "mode": "best", "clips_s": 190.0},
        {"model": "r21d", "mode": "best2x", "clips_s": 260.0},  # another batch: not it
        {"model": "r21d", "mode": "conv2d", "clips_s": float("nan")},
        {"model": "c3d", "mode": "fused", "clips_s": 500.0},
    ]
    report = {"train": rows, "config": {"batch_size": 30, "clip_len": 16, "size": 112}}
    picked = e2e.pick_mode(report, "r21d")
    assert (picked["mode"], picked["model_only_clips_s"]) == ("best", 190.0)
    assert picked["bf16cl_clips_s"] == 100.0
    assert e2e.MODE_OVERRIDES["best"] == [
        "optim.fused=true",
        "train.conv_impl=conv2d",
        "train.compile=true",
    ]
    none = e2e.pick_mode({}, "r21d")  # no benchmark: bf16 + channels_last, no figure
    assert (none["mode"], none["model_only_clips_s"]) == ("rayssl", None)
    args = e2e.parse_args(["--out", "x", "--batch-size", "12"])
    assert e2e.shape_settings(args, report) == {
        "batch_size": 12,  # given
        "clip_len": 16,
        "size": 112,
        "width": 1.0,  # the benchmark did not record it
    }
    assert e2e.resize_of(112) == "[128,171]"
    # a report with every part failed still prints its table, with dashes
    text = e2e.summary({"parts": {"corpus": {"status": "failed", "seconds": 1.0, "error": "E"}}})
    assert "real loop clips/s (last epoch)             -" in text
    assert "part corpus    failed   1.0 s  E" in text


# ------------------------------------------ the end-to-end part, rehearsed on the CPU


def _names(path: Path) -> list[str]:
    return [
        x.split("#")[0].strip() for x in path.read_text().splitlines() if x.split("#")[0].strip()
    ]


def _linked_distributions(folder: Path, names: list[str]) -> list[str]:
    """A site folder of links to the files of the named installed distributions, and of
    nothing else; returns the names not installed here (the image's CUDA and JAX
    packages, which no part of the check imports)."""
    import importlib.metadata as md

    missing = []
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        for f in dist.files or []:
            if f.parts[0] == ".." or "__pycache__" in f.parts:
                continue
            dst = folder / f
            if not dst.exists() and not dst.is_symlink():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(dist.locate_file(f))
    return missing


@pytest.mark.slow
def test_gpu_run_end_to_end_part_with_the_images_packages_and_the_carried_site(tmp_path):
    """gpu_run.sh's gpu tests and end-to-end part as on the GPU machine, with tiny settings
    on the CPU: an interpreter that sees only the image's distributions
    (benchmarks/gpu_image.txt; OpenCV contrib stands in for the image's OpenCV) and, once
    the script unpacks it, a site archive of benchmarks/gpu_wheels.txt's (here: links to
    this environment's files, in place of the cp312 wheels). A distribution missing from
    the wheel list fails an import here, not on the GPU."""
    import tarfile

    bench = ROOT / "benchmarks"
    image = tmp_path / "image"
    missing = _linked_distributions(
        image, [*_names(bench / "gpu_image.txt"), "opencv-contrib-python-headless"]
    )
    assert "torch" not in missing and "numpy" not in missing
    carried = tmp_path / "carried"
    assert _linked_distributions(carried, _names(bench / "gpu_wheels.txt")) == []
    archive = tmp_path / "whl" / "site.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(carried, arcname=".")
    venv = tmp_path / "venv"  # no site-packages of its own: Ray's workers see the same
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    out = tmp_path / "out"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(image),
        "PYTHON": str(venv / "bin" / "python"),
        "GPU_SITE_ARCHIVE": str(archive),
        "GPU_SITE_DIR": str(tmp_path / "site"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
        "RAY_USAGE_STATS_ENABLED": "0",
        "GPU_RUN_PARTS": "throughput gputests e2e",
        # a model-only row for C3D at the e2e's settings: the job runs in its fastest mode
        "TT_ARGS": "--device cpu --models c3d --size 32 --width 0.0625 --batch-size 4 "
        "--steps 1 --warmup 0 --modes bf16cl rayssl fused",
        "E2E_ARGS": "--device cpu --backbone c3d --num-videos 16 --clips-per-video 1 "
        "--video-size 48 64 --num-frames 64 --num-cpus 3 --cpus-per-worker 1 "
        "--pretrain-timeout 400 --eval-timeout 300 train.torch_threads=1",
        "E2E_TIMEOUT": "800",
        "PT_TIMEOUT": "300",
    }
    done = subprocess.run(
        ["bash", str(bench / "gpu_run.sh"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=1500,
    )
    assert done.returncode == 0, (done.stdout[-4000:], done.stderr[-3000:])
    assert "site: unpacked" in done.stdout  # `import ray` failed before the archive
    report = json.loads((out / "e2e.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["corpus", "ray_head", "pretrain", "evaluate"]
    assert all(p["status"] == "ok" for p in parts.values()), parts
    assert parts["ray_head"]["num_gpus"] == 0 and parts["ray_head"]["num_cpus"] == 3
    # the mode and the shape come from the benchmark's JSON
    rows = json.loads((out / "train_throughput.json").read_text())["train"]
    fastest = max((r for r in rows if r["mode"] in ("rayssl", "fused")), key=lambda r: r["clips_s"])
    assert report["speed"]["mode"] == fastest["mode"]
    assert report["speed"]["model_only_clips_s"] == fastest["clips_s"]
    assert report["shape"] == {"batch_size": 4, "clip_len": 16, "size": 32, "width": 0.0625}
    assert "train.batch_size=4" in parts["pretrain"]["command"]
    assert ("optim.fused=true" in parts["pretrain"]["command"]) == (fastest["mode"] == "fused")
    figures = parts["pretrain"]["figures"]
    assert len(figures["loop_clips_s_per_epoch"]) == 2  # two epochs
    assert figures["loop_clips_s"] > 0 and 0 <= figures["data_wait_frac"] <= 1
    assert figures["gpu_util_pct_mean"] is None  # no GPU: the metric is left out
    assert parts["evaluate"]["gpu_actors"] is False
    assert any(k.startswith("retrieval") for k in parts["evaluate"]["results"])
    text = (out / "e2e.txt").read_text()
    for line in (
        "model-only step clips/s",
        "real loop clips/s (last epoch)",
        "data wait (last epoch)",
        "GPU utilisation (system metrics)",
        "part pretrain  ok",
    ):
        assert line in text, text
    summary = (out / "gpu.txt").read_text()
    assert "gpu_tests: exit 0" in summary and "e2e: exit 0" in summary
    assert "5 skipped" in summary  # collected, and skipped without CUDA
    assert {p.name for p in out.iterdir()} == {
        "gpu.txt",
        "train_throughput.json",
        "train_throughput.txt",
        "e2e.json",
        "e2e.txt",
        "logs.tar.gz",
    }
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = set(tar.getnames())
    assert {"logs/gpu_tests.txt", "logs/job-pretrain.log", "logs/job-evaluate.log"} <= logs


# ------------------------------- `rayssl capacity` picks the benchmark mode of the config


@pytest.mark.parametrize(
    "overrides, mode, note",
    [
        ([], "rayssl", None),  # the defaults: bf16, channels_last, prefetch, eager
        (["optim.fused=true"], "fused", None),
        (["train.conv_impl=conv2d"], "conv2d", None),
        (["optim.fused=true", "train.conv_impl=conv2d", "train.compile=true"], "best", None),
        (["train.compile=true"], "best", "differs in optim.fused=False, train.conv_impl=conv3d"),
        (["optim.fused=true", "train.conv_impl=conv2d"], "fused", "train.conv_impl=conv2d"),
        (["train.device_prefetch=0"], "inline", None),
        (["train.bf16=false"], "tf32", None),
        (["train.bf16=false", "train.compile=true"], "tf32", "only with bf16"),
        (["train.channels_last=false"], "rayssl", "channels_last=false"),
        # C3D has no factorised convs: conv_impl does not apply to it
        (["model.backbone=c3d", "train.conv_impl=conv2d"], "rayssl", None),
    ],
)
def test_config_speed_settings_pick_the_benchmark_mode(overrides, mode, note):
    from rayssl.config import load_config
    from rayssl.tools.capacity import config_mode

    picked, notes = config_mode(load_config(None, overrides))
    assert picked == mode
    if note is None:
        assert notes == []
    else:
        assert any(note in n for n in notes), notes


def _anchor_file(path: Path) -> Path:
    rows = [
        {"model": "r21d", "mode": m, "clips_s": rate}
        for m, rate in (("bf16cl", 100.0), ("rayssl", 90.0), ("fused", 95.0), ("best", 180.0))
    ]
    path.write_text(json.dumps({"device": "test card", "torch": "x", "train": rows}))
    return path


def test_capacity_reads_the_mode_of_the_config_and_precision_overrides(
    tiny_manifest, tmp_path, capsys
):
    from rayssl.cli import main

    anchor = _anchor_file(tmp_path / "anchor.json")
    base = ["capacity", "--manifest", str(tiny_manifest), "--clips", "2", "--seconds", "60"]
    base += ["model.width=0.0625", "data.augment.resize=[32,43]", "data.augment.crop=[32,32]"]

    def run(*argv: str) -> dict:
        assert main([*base, *argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    fast = ["optim.fused=true", "train.conv_impl=conv2d", "train.compile=true"]
    r = run("--anchor", str(anchor), *fast)
    assert (r["train"]["mode"], r["train"]["clips_per_s"]) == ("best", 180.0)
    assert r["train"]["mode_from"] == "config"
    assert run("--anchor", str(anchor))["train"]["clips_per_s"] == 90.0  # defaults: rayssl
    assert run("--anchor", str(anchor), "optim.fused=true")["train"]["mode"] == "fused"
    # --precision stays the override
    r = run("--anchor", str(anchor), "--precision", "bf16", *fast)
    assert (r["train"]["mode"], r["train"]["clips_per_s"]) == ("bf16cl", 100.0)
    assert r["train"]["mode_from"] == "--precision"
    # a mode the file lacks (conv2d): the anchor's own bf16 row, said in a note
    r = run("--anchor", str(anchor), "train.conv_impl=conv2d")
    assert (r["train"]["mode"], r["train"]["clips_per_s"]) == ("bf16cl", 100.0)
    assert any("no r21d/conv2d row" in n for n in r["notes"]), r["notes"]
    # the shipped H100 anchor has only the eager modes: the config's compile falls back
    r = run(*fast)
    assert r["train"]["mode"] == "bf16cl"
    assert any("no r21d/best row" in n for n in r["notes"]), r["notes"]
    assert main([*base, "--anchor", str(anchor), *fast]) == 0
    assert "best, mode of the config's speed settings" in capsys.readouterr().out
