"""The one command of a lent GPU machine (benchmarks/gpu_run.sh) runs end to end with
only torch installed: here on the CPU with tiny settings, so the GPU run's device time
is not spent finding a wrong flag or a missing import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.test_capacity import _torch_only_path

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
        "TT_ARGS": "--device cpu --models c3d --modes fp32 rayssl --size 32 --width 0.0625 "
        "--batch-size 2 --steps 1 --warmup 0",
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
    throughput = json.loads((out / "train_throughput.json").read_text())
    assert {(r["model"], r["mode"]) for r in throughput["train"]} == {
        ("c3d", "fp32"),
        ("c3d", "rayssl"),
    }
    assert all(r["clips_s"] > 0 for r in throughput["train"])
    curves = json.loads((out / "loss_curves.json").read_text())
    assert sorted(curves["settings"]) == ["bf16"]
    assert len(curves["runs"]) == 4  # fp32 and bf16, seeds 0 and 1
    assert "torch" in (out / "gpu.txt").read_text()
    assert "train_throughput: exit 0" in done.stdout
    assert "loss_curves: exit 0" in done.stdout
    assert (out / "train_throughput.txt").stat().st_size > 0
