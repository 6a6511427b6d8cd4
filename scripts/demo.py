"""`make demo`: generate videos, index them, and submit pace pre-training to a local
Ray head with `ray job submit`, logging to MLflow (sqlite). Stops the head it started.

    python scripts/demo.py [--storage local|s3] [--workdir demo_data]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.localhead import local_ray_head, submit_job  # noqa: E402


def sh(args: list[str], env: dict | None = None) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True, env=env)


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


@contextlib.contextmanager
def s3_storage(work: Path):
    """A moto S3 server on loopback holding the demo videos (STORAGE=s3)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from s3server import make_bucket, moto_s3_server, s3_env, upload_dir

    with moto_s3_server() as endpoint, s3_env(endpoint) as env:
        make_bucket(endpoint, "rayssl-demo")
        upload_dir(endpoint, work / "videos", "rayssl-demo", "videos")
        yield {
            "videos": "s3://rayssl-demo/videos",
            "manifest": "s3://rayssl-demo/manifest.parquet",
            "runs": "s3://rayssl-demo/runs",
            "env": dict(env),
        }


def main() -> int:
    # A SIGTERM (e.g. a CI timeout) unwinds the context managers, so the Ray head and
    # the S3 server this demo started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", choices=["local", "s3"], default="local")
    ap.add_argument("--workdir", default=str(ROOT / "demo_data"))
    ap.add_argument("--num-videos", type=int, default=120)
    ap.add_argument("overrides", nargs="*", help="extra key=value for the pre-training config")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.time()

    if not (work / "videos").exists():
        sh(
            [
                py,
                "-m",
                "rayssl.cli",
                "synth",
                "--out",
                str(work / "videos"),
                "--num-videos",
                str(args.num_videos),
                "--num-frames",
                "64",
                "--height",
                "128",
                "--width",
                "170",
                "--codec",
                "h264",
                "--num-classes",
                "4",
            ],
            env,
        )

    tracking = f"sqlite:///{ROOT / 'mlruns.db'}"
    run_name = f"demo-{args.storage}-{time.strftime('%Y%m%d-%H%M%S')}"
    with contextlib.ExitStack() as stack:
        if args.storage == "s3":
            s3 = stack.enter_context(s3_storage(work))
            env.update(s3["env"])
            videos, manifest, runs = s3["videos"], s3["manifest"], s3["runs"]
        else:
            videos, manifest, runs = (
                str(work / "videos"),
                str(work / "manifest.parquet"),
                str(work / "runs"),
            )
        sh(
            [
                py,
                "-m",
                "rayssl.cli",
                "manifest",
                videos,
                "--out",
                manifest,
                "--val-fraction",
                "0.2",
            ],
            env,
        )

        job_env = {"MLFLOW_TRACKING_URI": tracking, "RAYSSL_GIT_COMMIT": git_commit()}
        # Credentials reach the job through the head's environment (inherited by every
        # Ray worker), not through --runtime-env-json, which Ray records in job info.
        head_env = {**job_env, **{k: v for k, v in env.items() if k.startswith("AWS_")}}
        print("starting a local Ray head (stopped by pid at the end)", flush=True)
        head = stack.enter_context(
            local_ray_head(num_cpus=4, env=head_env, log_path=work / "ray-head.log")
        )
        print(f"Ray head {head.address}, dashboard {head.dashboard_url}", flush=True)
        entry = [
            "python",
            "jobs/pretrain.py",
            "--config",
            "configs/debug.yaml",
            f"data.manifest={manifest}",
            f"run.storage_path={runs}",
            f"run.name={run_name}",
            *args.overrides,
        ]
        print("+ ray job submit --working-dir . -- " + " ".join(entry), flush=True)
        out = submit_job(head, entry, ROOT, env_vars=job_env, log_path=work / "job.log")
        print(out.stdout[-3000:])
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            print(f"demo: the job failed (log: {work / 'job.log'})", file=sys.stderr)
            return 1

    import mlflow

    mlflow.set_tracking_uri(tracking)
    runs_df = mlflow.search_runs(
        experiment_names=["rayssl-debug"],
        filter_string=f"tags.run_name = '{run_name}'",
        order_by=["start_time DESC"],
    )
    if len(runs_df):
        row = runs_df.iloc[0]
        cols = [c for c in runs_df.columns if c.startswith("metrics.")]
        print("\nfinal metrics of MLflow run", row["run_id"])
        for c in sorted(cols):
            print(f"  {c[len('metrics.') :]:24s} {row[c]:.4g}")
    print(f"\ndemo finished in {time.time() - t0:.0f}s. Open MLflow with:")
    print(f"  .venv/bin/mlflow ui --backend-store-uri {tracking}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
