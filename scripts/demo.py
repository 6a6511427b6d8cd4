"""`make demo`: generate labelled videos, index them, submit pace pre-training to a local
Ray head with `ray job submit` (logged to MLflow, sqlite), then submit the evaluation of
the pre-trained backbone against the same backbone at random init, and show that it
learned. Stops the head (and the S3 server) it started.

    python scripts/demo.py [--storage local|s3] [--workdir demo_data] [--num-videos N]
                           [--tracking-uri URI] [key=value ...]

The terminal shows one line per epoch and the final table; Ray's own output goes to
DIR/job-pretrain.log, DIR/job-evaluate.log and DIR/ray-head.log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.localhead import local_ray_head, submit_job  # noqa: E402
from rayssl.tracking_uri import run_view_of  # noqa: E402
from rayssl.train.loop import PROGRESS_PREFIX  # noqa: E402

#: Classes of the demo's videos: motion families (each video shows one kind of its
#: family: a translation in one of 4 directions, a cw or ccw rotation, ...). Pace is blind
#: to a motion's direction, so directions as classes would be classes no pace-trained
#: feature can tell apart.
DEMO_CLASSES = "translate,rotate,zoom,oscillate"
_RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)]*\)(\x1b\[[0-9;]*m)?\s*")


def run_quiet(args: list[str], env: dict, log: Path) -> None:
    """Run a step, its output to `log`; on failure show the tail and stop."""
    with log.open("a") as f:
        f.write("+ " + " ".join(args) + "\n")
        f.flush()
        out = subprocess.run(args, env=env, stdout=f, stderr=subprocess.STDOUT)
    if out.returncode != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"demo: step failed: {' '.join(args[:4])} (log: {log})")


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


def show_progress(line: str) -> None:
    """Print the job's one-line-per-epoch progress; everything else stays in the log."""
    text = _RAY_PREFIX.sub("", line)
    if text.startswith(PROGRESS_PREFIX):
        print("  " + text[len(PROGRESS_PREFIX) :].strip(), flush=True)


def result_of(stdout: str) -> dict:
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(lines[-1][len("RESULT ") :]) if lines else {}


def main() -> int:
    # A SIGTERM (e.g. a CI timeout) unwinds the context managers, so the Ray head and
    # the S3 server this demo started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--storage", choices=["local", "s3"], default="local")
    ap.add_argument("--workdir", default=str(ROOT / "demo_data"))
    ap.add_argument("--num-videos", type=int, default=480)
    ap.add_argument(
        "--tracking-uri",
        default=f"sqlite:///{ROOT / 'mlruns.db'}",
        help="MLflow store of both jobs (default: mlruns.db at the repository root)",
    )
    ap.add_argument("overrides", nargs="*", help="extra key=value for the pre-training config")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    t0 = time.time()
    steps_log = work / "steps.log"

    if not (work / "videos").exists():
        print(f"1/4 generating {args.num_videos} labelled videos ({DEMO_CLASSES})", flush=True)
        synth = ["synth", "--out", str(work / "videos"), "--num-videos", str(args.num_videos)]
        synth += ["--num-frames", "64", "--height", "48", "--width", "64", "--codec", "h264"]
        run_quiet([py, "-m", "rayssl.cli", *synth, "--classes", DEMO_CLASSES], env, steps_log)
    else:
        print(f"1/4 reusing the videos in {work / 'videos'}", flush=True)

    tracking = args.tracking_uri
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
        print(f"2/4 indexing them: {manifest} (30% held out as split 'val')", flush=True)
        manifest_cmd = [py, "-m", "rayssl.cli", "manifest", videos, "--out", manifest]
        run_quiet([*manifest_cmd, "--val-fraction", "0.3"], env, steps_log)

        job_env = {"MLFLOW_TRACKING_URI": tracking, "RAYSSL_GIT_COMMIT": git_commit()}
        # Credentials reach the jobs through the head's environment (inherited by every
        # Ray worker), not through --runtime-env-json, which Ray records in job info.
        head_env = {**job_env, **{k: v for k, v in env.items() if k.startswith("AWS_")}}
        head = stack.enter_context(
            local_ray_head(num_cpus=4, env=head_env, log_path=work / "ray-head.log")
        )
        print(f"3/4 pace pre-training on a local Ray head ({head.dashboard_url}):", flush=True)
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
        print("  ray job submit --working-dir . -- " + " ".join(entry), flush=True)
        out = submit_job(
            head,
            entry,
            ROOT,
            env_vars=job_env,
            log_path=work / "job-pretrain.log",
            on_line=show_progress,
        )
        if out.returncode != 0:
            print(out.stdout[-3000:] + out.stderr[-3000:], file=sys.stderr)
            print(f"demo: the job failed (log: {work / 'job-pretrain.log'})", file=sys.stderr)
            return 1
        pretrained = result_of(out.stdout)

        eval_dir = work / "eval"
        print("4/4 evaluating the pre-trained backbone against random init:", flush=True)
        entry = [
            "python",
            "jobs/evaluate.py",
            "--checkpoint",
            pretrained["checkpoint"],
            "--suite",
            "configs/eval_demo.yaml",
            "--out",
            str(eval_dir),
            "--baseline",
            f"data.manifest={manifest}",
            f"run.name={run_name}-eval",
        ]
        print("  ray job submit --working-dir . -- " + " ".join(entry), flush=True)
        out = submit_job(head, entry, ROOT, env_vars=job_env, log_path=work / "job-evaluate.log")
        if out.returncode != 0:
            print(out.stdout[-3000:] + out.stderr[-3000:], file=sys.stderr)
            print(f"demo: evaluation failed (log: {work / 'job-evaluate.log'})", file=sys.stderr)
            return 1
        report(pretrained, eval_dir)
        print(f"\nresult after {time.time() - t0:.0f}s. Logs: {work}/*.log.")
        # the pre-training run (its evaluations are nested under it) in MLflow's
        # model-training view, after the `mlflow ui` command a sqlite store needs
        view = run_view_of(tracking, str(pretrained.get("mlflow_run_id") or ""))
        if view is not None:
            print(view.line(), flush=True)
        print("stopping the Ray head this demo started...", flush=True)
    print(f"demo finished in {time.time() - t0:.0f}s.")
    return 0


def report(pretrained: dict, eval_dir: Path) -> None:
    """The final table: held-out pace accuracy, retrieval and linear probe vs random."""
    m = pretrained.get("metrics", {})
    ours = json.loads((eval_dir / "results.json").read_text())
    base = json.loads((eval_dir / "baseline" / "results.json").read_text())
    classes = len(DEMO_CLASSES.split(","))
    print("\nresult (held-out videos: split 'val'):")
    print(
        f"  held-out pace accuracy   {m.get('val/pace_acc', float('nan')):.3f}   "
        f"(4 paces: chance 0.25; train {m.get('train/pace_acc', float('nan')):.3f})"
    )
    print(f"  {'':24s} {'pre-trained':>12s} {'random init':>12s}   (chance {1 / classes:.2f})")
    for key, name in (
        ("retrieval/pool3/top1", "retrieval top-1 (pool3)"),
        ("retrieval/pool4/top1", "retrieval top-1 (pool4)"),
        ("retrieval/pool5/top1", "retrieval top-1 (pool5)"),
        ("linear/pool3/accuracy", "linear probe (pool3)"),
        ("linear/pool4/accuracy", "linear probe (pool4)"),
        ("linear/pool5/accuracy", "linear probe (pool5)"),
    ):
        print(f"  {name:24s} {ours[key]:12.3f} {base[key]:12.3f}")
    print(f"  plots: {eval_dir}/retrieval_topk.png, {eval_dir}/attention.png")


if __name__ == "__main__":
    sys.exit(main())
