"""Submit CPU debug configs with `ray job submit` to a local Ray head, one after the
other, and report each job's outcome and last epoch line. Uses the demo's data
(`make demo` makes it; a manifest is indexed here if only the videos exist).

    python scripts/debug_jobs.py configs/pace_ctr_debug.yaml configs/pace_stats_debug.yaml \
        [--workdir demo_data] [key=value ...]      # overrides for every job

Each job: `ray job submit --working-dir . -- python jobs/pretrain.py --config CONFIG
data.manifest=... run.storage_path=DIR/debug-runs run.name=...`, logged to MLflow
(sqlite:///mlruns.db) and to DIR/job-<config>.log. The head is stopped at the end.
Exit status 1 if any job failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.localhead import local_ray_head, submit_job  # noqa: E402
from rayssl.train.loop import PROGRESS_PREFIX  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("items", nargs="+", help="config files (*.yaml), then key=value")
    ap.add_argument("--workdir", type=Path, default=ROOT / "demo_data")
    args = ap.parse_args()
    configs = [Path(c) for c in args.items if c.endswith((".yaml", ".yml"))]
    overrides = [c for c in args.items if not c.endswith((".yaml", ".yml"))]
    work = args.workdir.resolve()
    manifest = work / "manifest.parquet"
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    if not manifest.exists():
        if not (work / "videos").exists():
            raise SystemExit(f"{work / 'videos'}: no videos; run `make demo` first")
        cmd = [sys.executable, "-m", "rayssl.cli", "manifest", str(work / "videos")]
        subprocess.run([*cmd, "--out", str(manifest), "--val-fraction", "0.3"], env=env, check=True)
    tracking = f"sqlite:///{ROOT / 'mlruns.db'}"
    failed = []
    with local_ray_head(
        num_cpus=4, env={"MLFLOW_TRACKING_URI": tracking}, log_path=work / "ray-head-debug.log"
    ) as head:
        for config in configs:
            name = f"{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            entry = ["python", "jobs/pretrain.py", "--config", str(config)]
            entry += [f"data.manifest={manifest}", f"run.storage_path={work / 'debug-runs'}"]
            entry += [f"run.name={name}", *overrides]
            print("ray job submit --working-dir . -- " + " ".join(entry), flush=True)
            epochs: list[str] = []
            t0 = time.time()
            out = submit_job(
                head,
                entry,
                ROOT,
                env_vars={"MLFLOW_TRACKING_URI": tracking},
                log_path=work / f"job-{config.stem}.log",
                on_line=epochs.append,
            )
            status = "SUCCEEDED" if out.returncode == 0 else f"FAILED (rc {out.returncode})"
            print(f"  {status} in {time.time() - t0:.0f} s", flush=True)
            progress = [line for line in epochs if PROGRESS_PREFIX in line]
            if progress:
                print("  " + progress[-1].split(PROGRESS_PREFIX, 1)[1].strip(), flush=True)
            if out.returncode != 0:
                failed.append(str(config))
                print(out.stdout[-2000:] + out.stderr[-2000:], file=sys.stderr)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
