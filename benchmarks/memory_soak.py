"""Memory over a long CPU run: do workers, the driver or Ray's processes grow?

Generates many short videos, runs `jobs/pretrain.py` (local Ray, configs/debug.yaml, one
train worker) for --minutes with many short epochs, and samples, every --every seconds,
the RSS of every process of the job's tree (the driver, the train worker, Ray Data's
decode workers, raylet, GCS, ...). When the time is up the driver gets SIGINT (Ray shuts
its local instance down) and the curve is printed: per sample the elapsed time, the
epoch reached (from the job log) and the RSS of the driver, the train worker, the
other Ray workers and all processes together, plus a least-squares slope per epoch
over the second half of the run (after warm-up). The per-epoch MLflow figures
`system/worker0/rss_mb` and `system/worker0/node_ray_rss_mb` are read back as well.

    .venv/bin/python benchmarks/memory_soak.py --minutes 30 [--videos 240] [--out soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1024 * 1024


def _tree_rss(root: psutil.Process) -> dict[str, float]:
    """RSS by role of the process tree under `root` (the driver)."""
    out = {"driver": 0.0, "train_worker": 0.0, "ray_workers": 0.0, "ray_system": 0.0}
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            rss = p.memory_info().rss / MB
            name = " ".join(p.cmdline()[:2]) if p.pid != root.pid else ""
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if p.pid == root.pid:
            out["driver"] += rss
        elif "RayTrainWorker" in name:
            out["train_worker"] += rss
        elif name.startswith("ray::"):
            out["ray_workers"] += rss
        else:
            out["ray_system"] += rss  # raylet, gcs_server, dashboard, log monitor, ...
    out["total"] = sum(out.values())
    return out


def _by_process(root: psutil.Process) -> dict[int, tuple[str, float]]:
    out = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            out[p.pid] = (" ".join(p.cmdline())[:60], p.memory_info().rss / MB)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def _slope(x: list[float], y: list[float]) -> float:
    if len(x) < 3:
        return float("nan")
    return float(np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=20.0, help="seconds between samples")
    ap.add_argument("--videos", type=int, default=240)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--work", default="", help="folder for data and runs (default: a temp dir)")
    ap.add_argument("--out", default="", help="write the samples as JSON here")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        help="KEY=VALUE for the job's environment (e.g. RAY_enable_metrics_collection=0)",
    )
    args = ap.parse_args()

    from rayssl.io.manifest import build_manifest, list_entries, write_manifest
    from rayssl.tools.synthetic import generate_dataset

    work = Path(args.work or tempfile.mkdtemp(prefix="rayssl-soak-"))
    data = work / "videos"
    generate_dataset(data, num_videos=args.videos, num_frames=args.frames, height=48, width=64)
    manifest = work / "manifest.parquet"
    entries = list_entries(str(data), "folder", val_fraction=0.1)
    write_manifest(build_manifest(entries, use_ray=False), manifest)
    tracking = f"sqlite:///{work / 'mlruns.db'}"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "pretrain.py"),
        "--config",
        str(ROOT / "configs" / "debug.yaml"),
        f"data.manifest={manifest}",
        f"run.storage_path={work / 'runs'}",
        "run.name=soak",
        f"run.tracking_uri={tracking}",
        "optim.epochs=100000",
        "data.val_split=",
        "data.clips_per_video=1",
        "train.log_every_steps=5",
    ]
    env = dict(os.environ, RAY_ADDRESS="local", RAYSSL_NUM_CPUS="4", PYTHONUNBUFFERED="1")
    env.update(kv.split("=", 1) for kv in args.env)
    log = open(work / "job.log", "w")  # noqa: SIM115  (closed in the finally below)
    job = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    root = psutil.Process(job.pid)
    samples: list[dict] = []
    baseline: tuple[int, dict] = (0, {})
    latest: tuple[int, dict] = (0, {})
    t0 = time.monotonic()
    epoch_re = re.compile(r"\[rayssl\] epoch (\d+)/")
    try:
        while time.monotonic() - t0 < args.minutes * 60 and job.poll() is None:
            time.sleep(args.every)
            epochs = epoch_re.findall((work / "job.log").read_text(errors="replace"))
            rss = _tree_rss(root)
            samples.append(
                {"t_min": (time.monotonic() - t0) / 60, "epoch": int(epochs[-1]) if epochs else 0}
                | rss
            )
            s = samples[-1]
            if len(samples) == 3:  # after warm-up: the per-process baseline
                baseline = (s["epoch"], _by_process(root))
            latest = (s["epoch"], _by_process(root))
            print(
                f"{s['t_min']:6.1f} min  epoch {s['epoch']:4d}  driver {s['driver']:7.1f}  "
                f"train worker {s['train_worker']:7.1f}  ray workers {s['ray_workers']:7.1f}  "
                f"ray system {s['ray_system']:7.1f}  total {s['total']:8.1f} MB",
                flush=True,
            )
    finally:
        if job.poll() is None:
            job.send_signal(signal.SIGINT)
            try:
                job.wait(timeout=120)
            except subprocess.TimeoutExpired:
                job.terminate()
                job.wait(timeout=60)
        log.close()
    failed = job.returncode not in (0, -signal.SIGINT, 130, 1) and not samples
    half = [s for s in samples if s["epoch"] and s["t_min"] >= samples[-1]["t_min"] / 2]
    slopes = {
        k: _slope([s["epoch"] for s in half], [s[k] for s in half])
        for k in ("driver", "train_worker", "ray_workers", "ray_system", "total")
    }
    import mlflow

    client = mlflow.MlflowClient(tracking)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.run_name = 'soak'"
    )
    per_epoch = {}
    if runs:
        for key in ("system/worker0/node_ray_rss_mb", "train/clips_per_s"):
            hist = sorted(client.get_metric_history(runs[0].info.run_id, key), key=lambda m: m.step)
            per_epoch[key] = [(m.step, round(m.value, 1)) for m in hist]
    epochs = max(latest[0] - baseline[0], 1)
    growth = sorted(
        (
            (round((rss - baseline[1][pid][1]) / epochs, 3), name)
            for pid, (name, rss) in latest[1].items()
            if pid in baseline[1]
        ),
        reverse=True,
    )[:8]
    summary = {
        "mb_per_epoch_by_process": growth,
        "minutes": samples[-1]["t_min"] if samples else 0,
        "epochs": samples[-1]["epoch"] if samples else 0,
        "videos": args.videos,
        "slope_mb_per_epoch_second_half": slopes,
        "samples": samples,
        "mlflow_per_epoch": per_epoch,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=1)[:6000])
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
