"""The job users run, end to end on one GPU machine (issue 23; the last part of
benchmarks/gpu_run.sh):

1. corpus: generate labelled videos (rayssl.tools.synthetic) and their manifest, in
   process (no Ray yet);
2. a local Ray head (rayssl.localhead: started and stopped by pid) with the machine's
   CPUs and GPUs;
3. pretrain: `ray job submit -- python jobs/pretrain.py`: a 2-epoch pace run of R(2+1)D
   at 112 px on the GPU (one Ray Train worker: NCCL process group, Ray Data feeding it,
   the prefetcher's CUDA stream), in the fastest speed settings that
   benchmarks/train_throughput.py measured for that backbone at the same batch (its
   JSON: `rayssl`, `fused`, `conv2d` or `best`), or bf16 + channels_last (`rayssl`) when
   it has none;
4. evaluate: `ray job submit -- python jobs/evaluate.py` (what `rayssl evaluate` runs)
   on the run's checkpoint: retrieval and a linear probe on features from the model
   actors, which take a GPU each when the cluster has one.

Then it prints side by side: the model-only step's clips/s (the benchmark's row for the
chosen mode), the real loop's clips/s and data wait (the last epoch's, from MLflow), the
GPU utilisation and memory from the run's system metrics (`system/worker0/gpu_*`), and
nvidia-smi's utilisation sampled during each part.

Each part has its own timeout and its own entry in OUT/e2e.json, written after every part
(a failed part costs only its own figures and the parts that need it). Exit status 0 when
every part passed. Logs go to --logs (default OUT/logs). A CPU rehearsal of the same
flow, tiny: tests/test_gpu_run.py.

    python benchmarks/gpu_e2e.py --out OUT [--throughput OUT/train_throughput.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: rayssl's step modes of benchmarks/train_throughput.py -> the config settings that run
#: them (docs/PERFORMANCE.md section 5). best2x (twice the batch) is left out: the loop
#: runs at the benchmark's batch, so the two clips/s compare.
MODE_OVERRIDES = {
    "rayssl": [],
    "fused": ["optim.fused=true"],
    "conv2d": ["train.conv_impl=conv2d"],
    "best": ["optim.fused=true", "train.conv_impl=conv2d", "train.compile=true"],
}

CLASSES = ["translate", "rotate", "zoom", "oscillate"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for e2e.json and e2e.txt")
    ap.add_argument("--logs", default=None, help="folder for the logs (default OUT/logs)")
    ap.add_argument("--throughput", default=None, help="train_throughput.py JSON to read")
    ap.add_argument("--work", default=None, help="corpus and runs (default: a temp folder)")
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--backbone", default="r21d")
    ap.add_argument("--width", type=float, default=None, help="default: the benchmark's, or 1")
    ap.add_argument("--size", type=int, default=None, help="crop; default: benchmark's, or 112")
    ap.add_argument("--clip-len", type=int, default=None, help="default: benchmark's, or 16")
    ap.add_argument("--batch-size", type=int, default=None, help="default: benchmark's, or 30")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--num-videos", type=int, default=96)
    ap.add_argument("--clips-per-video", type=int, default=4)
    ap.add_argument("--video-size", type=int, nargs=2, default=[128, 172], metavar=("H", "W"))
    ap.add_argument("--num-frames", type=int, default=72)
    ap.add_argument("--num-cpus", type=int, default=0, help="Ray head CPUs (0 = all)")
    ap.add_argument("--cpus-per-worker", type=float, default=2.0)
    ap.add_argument("--head-timeout", type=float, default=60.0)
    ap.add_argument("--pretrain-timeout", type=float, default=110.0)
    ap.add_argument("--eval-timeout", type=float, default=60.0)
    ap.add_argument("--suite", default=str(ROOT / "benchmarks" / "gpu_e2e_eval.yaml"))
    ap.add_argument("overrides", nargs="*", help="extra key=value for the pre-training config")
    return ap.parse_args(argv)


# ------------------------------------------------------------------ the settings


def read_throughput(path: str | None) -> dict[str, Any]:
    """The benchmark's JSON ({} when there is none or it cannot be read)."""
    if not path:
        return {}
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def pick_mode(report: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The fastest of rayssl's step modes the benchmark measured for `backbone` (its
    clips/s is the model-only figure), else `rayssl` (bf16 + channels_last) without one."""
    rows = [
        r
        for r in report.get("train", [])
        if isinstance(r, dict)
        and r.get("model") == backbone
        and r.get("mode") in MODE_OVERRIDES
        and isinstance(r.get("clips_s"), int | float)
        and math.isfinite(r["clips_s"])
        and r["clips_s"] > 0
    ]
    eager = next(
        (
            r["clips_s"]
            for r in report.get("train", [])
            if isinstance(r, dict) and r.get("model") == backbone and r.get("mode") == "bf16cl"
        ),
        None,
    )
    if not rows:
        return {
            "mode": "rayssl",
            "model_only_clips_s": None,
            "bf16cl_clips_s": eager,
            "why": "no rayssl step mode measured for this backbone: bf16 + channels_last",
        }
    best = max(rows, key=lambda r: r["clips_s"])
    return {
        "mode": best["mode"],
        "model_only_clips_s": float(best["clips_s"]),
        "bf16cl_clips_s": eager,
        "why": "fastest of " + ", ".join(f"{r['mode']} {r['clips_s']:.1f}" for r in rows),
    }


def shape_settings(args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """Batch, clip length, crop and width: the benchmark's where it recorded them (so
    the loop and the model-only step run the same clips), else the thesis's."""
    bench = report.get("config") or {}
    defaults = {"batch_size": 30, "clip_len": 16, "size": 112, "width": 1.0}
    given = {
        "batch_size": args.batch_size,
        "clip_len": args.clip_len,
        "size": args.size,
        "width": args.width,
    }
    return {k: given[k] if given[k] is not None else bench.get(k, v) for k, v in defaults.items()}


# --------------------------------------------------------------------- the parts


class Report:
    """OUT/e2e.json, rewritten after every part."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"parts": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"status": "running"}
        self.data["parts"][name] = entry
        self.save()
        t0 = time.monotonic()
        print(f"gpu_e2e: {name} ...", flush=True)
        try:
            yield entry
            entry["status"] = "ok"
        except Exception as e:  # one part's failure: recorded, the next parts go on
            entry["status"] = "failed"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=5)
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 1)
            extra = f": {entry['error']}" if "error" in entry else ""
            print(
                f"gpu_e2e: {name} {entry['status']} after {entry['seconds']} s{extra}", flush=True
            )
            self.save()

    def skip(self, name: str, why: str) -> None:
        self.data["parts"][name] = {"status": "skipped", "error": why}
        print(f"gpu_e2e: {name} skipped: {why}", flush=True)
        self.save()


class GpuSampler:
    """nvidia-smi's utilisation and memory every 0.5 s in a thread (nothing without
    nvidia-smi); `window(t0, t1)` summarises a part."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("nvidia-smi")
        if exe is None:
            return
        cmd = [exe, "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
        self.proc = subprocess.Popen(
            [*cmd, "-lms", "500"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = [p.strip() for p in line.split(",")]
            with contextlib.suppress(ValueError, IndexError):
                self.samples.append((time.monotonic(), float(parts[0]), float(parts[1])))

    def window(self, t0: float, t1: float) -> dict[str, Any] | None:
        got = [s for s in self.samples if t0 <= s[0] <= t1]
        if not got:
            return None
        util = [s[1] for s in got]
        return {
            "samples": len(got),
            "util_mean_pct": sum(util) / len(util),
            "util_busy_frac": sum(u > 0 for u in util) / len(util),
            "mem_max_mb": max(s[2] for s in got),
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


def make_corpus(work: Path, args: argparse.Namespace) -> Path:
    from rayssl.io.manifest import build_manifest, list_entries, write_manifest
    from rayssl.tools.synthetic import generate_dataset

    h, w = args.video_size
    generate_dataset(
        work / "videos",
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        height=h,
        width=w,
        codec="h264",
        num_classes=len(CLASSES),
        classes=CLASSES,
        seed=0,
    )
    entries = list_entries(str(work / "videos"), "folder", val_fraction=0.25)
    manifest = work / "manifest.parquet"
    write_manifest(build_manifest(entries, use_ray=False), str(manifest))
    return manifest


def mlflow_figures(tracking: str, run_id: str) -> dict[str, Any]:
    """The run's per-epoch loop figures and its system metrics, from MLflow."""
    import mlflow

    client = mlflow.MlflowClient(tracking)

    def history(key: str) -> list[float]:
        return [
            m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]

    clips = history("train/clips_per_s")
    wait = history("train/data_wait_frac")
    util = history("system/worker0/gpu_util_pct")
    mem = history("system/worker0/gpu_mem_mb")
    return {
        "loop_clips_s_per_epoch": clips,
        "data_wait_per_epoch": wait,
        "loop_clips_s": clips[-1] if clips else None,  # the last epoch: no compile, warm
        "data_wait_frac": wait[-1] if wait else None,
        "gpu_util_pct_mean": sum(util) / len(util) if util else None,
        "gpu_util_samples": len(util),
        "gpu_mem_mb_max": max(mem) if mem else None,
        "train_loss": history("train/loss"),
        "val_pace_acc": history("val/pace_acc"),
    }


def job_error(done: subprocess.CompletedProcess) -> str:
    """The job's exit status and its last error line (the whole output is in the log)."""
    lines = (done.stdout + "\n" + done.stderr).splitlines()
    errors = [x.strip() for x in lines if re.search(r"\w(Error|Exception)\b.*:", x)]
    last = errors[-1] if errors else (lines[-1] if lines else "")
    return f"the job exited {done.returncode}: {last[-400:]}"


def result_of(stdout: str) -> dict[str, Any]:
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def _num(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def summary(data: dict[str, Any]) -> str:
    """The side-by-side table of the figures."""
    parts = data["parts"]
    pre = parts.get("pretrain", {})
    figs = pre.get("figures", {})
    speed = data.get("speed", {})
    model, loop = speed.get("model_only_clips_s"), figs.get("loop_clips_s")
    wait, util = figs.get("data_wait_frac"), figs.get("gpu_util_pct_mean")
    smi = pre.get("nvidia_smi") or {}
    ratio = f"{loop / model:.2f}" if model and loop else "-"
    eval_smi = (parts.get("evaluate", {}).get("nvidia_smi") or {}).get("util_mean_pct")
    mode = speed.get("mode", "?")
    mem = _num(figs.get("gpu_mem_mb_max"), ".0f")
    lines = [
        f"end to end: {data.get('device', '?')}, {data.get('backbone', '?')} "
        f"{data.get('shape', {})}, mode {mode} ({speed.get('why', '')})",
        f"{'model-only step clips/s':<34}{_num(model):>10}   (train_throughput.json, {mode})",
        f"{'real loop clips/s (last epoch)':<34}{_num(loop):>10}   (loop / model-only {ratio})",
        f"{'data wait (last epoch)':<34}{_num(None if wait is None else 100 * wait):>9}%",
        f"{'GPU utilisation (system metrics)':<34}{_num(util):>9}%   "
        f"({figs.get('gpu_util_samples', 0)} samples, GPU memory max {mem} MB)",
        f"{'GPU utilisation (nvidia-smi)':<34}{_num(smi.get('util_mean_pct')):>9}%   "
        f"(pretrain part; evaluate part {_num(eval_smi)}%)",
    ]
    ev = parts.get("evaluate", {}).get("results") or {}
    shown = {k: v for k, v in ev.items() if isinstance(v, int | float)}
    if shown:
        lines.append(
            "evaluation: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(shown.items())[:6])
        )
    for name, p in parts.items():
        lines.append(
            f"part {name:<9} {p.get('status', '?'):<8} {_num(p.get('seconds'))} s"
            + (f"  {p['error']}" if p.get("error") else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(args.logs) if args.logs else out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rayssl-e2e-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(out / "e2e.json")

    import torch  # lazy: after the arguments (a --help needs no torch)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    bench = read_throughput(args.throughput)
    speed = pick_mode(bench, args.backbone)
    shape = shape_settings(args, bench)
    report.data.update(
        device=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        backbone=args.backbone,
        shape=shape,
        speed=speed,
        work=str(work),
    )
    # A SIGTERM (gpu_run.sh's timeout) unwinds the context managers: the Ray head this
    # started is stopped, and the figures so far are written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sampler = GpuSampler()
    try:
        manifest: Path | None = None
        with report.part("corpus") as entry:
            manifest = make_corpus(work, args)
            entry["videos"] = args.num_videos
        tracking = f"sqlite:///{work / 'mlruns.db'}"
        run_name = f"gpu-e2e-{time.strftime('%Y%m%d-%H%M%S')}"
        if manifest is None:
            for name in ("ray_head", "pretrain", "evaluate"):
                report.skip(name, "no corpus")
        else:
            run_jobs(
                args,
                report,
                sampler,
                work,
                manifest,
                tracking,
                run_name,
                device,
                gpus,
                speed,
                shape,
            )
    finally:
        sampler.stop()
        report.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        report.save()
        text = summary(report.data)
        (out / "e2e.txt").write_text(text + "\n")
        print(text, flush=True)
    ok = all(p.get("status") == "ok" for p in report.data["parts"].values())
    return 0 if ok else 1


def run_jobs(
    args: argparse.Namespace,
    report: Report,
    sampler: GpuSampler,
    work: Path,
    manifest: Path,
    tracking: str,
    run_name: str,
    device: str,
    gpus: int,
    speed: dict[str, Any],
    shape: dict[str, Any],
) -> str | None:
    from rayssl.localhead import local_ray_head, submit_job

    # The head's environment is this one (PYTHONPATH with the unpacked site included):
    # its workers and jobs inherit it.
    job_env = {"MLFLOW_TRACKING_URI": tracking, "PYTHONUNBUFFERED": "1"}
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        job_env["TORCHINDUCTOR_CACHE_DIR"] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    num_cpus = args.num_cpus or os.cpu_count() or 4
    checkpoint: str | None = None
    stack = contextlib.ExitStack()
    with stack:
        head = None
        with report.part("ray_head") as entry:
            head = stack.enter_context(
                local_ray_head(
                    num_cpus=num_cpus,
                    num_gpus=gpus,
                    env=job_env,
                    log_path=logs_of(args) / "ray-head.log",
                    timeout_s=args.head_timeout,
                )
            )
            entry.update(num_cpus=num_cpus, num_gpus=gpus, dashboard=head.dashboard_url)
        if head is None:
            report.skip("pretrain", "no Ray head")
            report.skip("evaluate", "no Ray head")
            return None
        with report.part("pretrain") as entry:
            t0 = time.monotonic()
            entry_cmd = [
                sys.executable,
                "jobs/pretrain.py",
                "--config",
                "configs/pace_r21d_ucf101.yaml",
                f"data.manifest={manifest}",
                f"run.storage_path={work / 'runs'}",
                f"run.name={run_name}",
                "run.dataset_name=synthetic",
                f"model.backbone={args.backbone}",
                f"model.width={shape['width']}",
                f"data.clip_len={shape['clip_len']}",
                f"data.augment.resize={resize_of(shape['size'])}",
                f"data.augment.crop=[{shape['size']},{shape['size']}]",
                f"data.clips_per_video={args.clips_per_video}",
                f"train.batch_size={shape['batch_size']}",
                f"optim.epochs={args.epochs}",
                "train.num_workers=1",
                f"train.use_gpu={'true' if device == 'cuda' else 'false'}",
                f"train.cpus_per_worker={args.cpus_per_worker}",
                "train.bf16=true",
                "train.channels_last=true",
                "train.log_every_steps=1",
                "train.max_failures=0",
                *MODE_OVERRIDES[speed["mode"]],
                *args.overrides,
            ]
            entry["command"] = "ray job submit --working-dir . -- " + " ".join(entry_cmd)
            done = submit_job(
                head,
                entry_cmd,
                ROOT,
                env_vars=job_env,
                timeout_s=args.pretrain_timeout,
                log_path=logs_of(args) / "job-pretrain.log",
            )
            entry["nvidia_smi"] = sampler.window(t0, time.monotonic())
            if done.returncode != 0:
                raise RuntimeError(job_error(done))
            result = result_of(done.stdout)
            checkpoint = result.get("checkpoint")
            entry["checkpoint"] = checkpoint
            entry["mlflow_run_id"] = result.get("mlflow_run_id")
            entry["figures"] = mlflow_figures(tracking, str(result.get("mlflow_run_id")))
        if not checkpoint:
            report.skip("evaluate", "no checkpoint from the pre-training")
            return None
        with report.part("evaluate") as entry:
            t0 = time.monotonic()
            eval_dir = work / "eval"
            entry_cmd = [
                sys.executable,
                "jobs/evaluate.py",
                "--checkpoint",
                checkpoint,
                "--suite",
                args.suite,
                "--out",
                str(eval_dir),
                f"data.manifest={manifest}",
                f"data.clip_len={shape['clip_len']}",
                f"data.augment.resize={resize_of(shape['size'])}",
                f"data.augment.crop=[{shape['size']},{shape['size']}]",
                f"run.name={run_name}-eval",
            ]
            entry["command"] = "ray job submit --working-dir . -- " + " ".join(entry_cmd)
            entry["gpu_actors"] = gpus > 0  # features.actor_resources: one per GPU
            done = submit_job(
                head,
                entry_cmd,
                ROOT,
                env_vars=job_env,
                timeout_s=args.eval_timeout,
                log_path=logs_of(args) / "job-evaluate.log",
            )
            entry["nvidia_smi"] = sampler.window(t0, time.monotonic())
            if done.returncode != 0:
                raise RuntimeError(job_error(done))
            entry["results"] = json.loads((eval_dir / "results.json").read_text())
    return checkpoint


def resize_of(size: int) -> str:
    """The thesis's 128x171 frames for 112 px crops, scaled to `size`."""
    return f"[{round(size * 128 / 112)},{round(size * 171 / 112)}]"


def logs_of(args: argparse.Namespace) -> Path:
    return Path(args.logs) if args.logs else Path(args.out) / "logs"


if __name__ == "__main__":
    sys.exit(main())
