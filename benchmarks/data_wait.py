"""Data wait of the real pipeline end to end: a tiny model vs the real backbone.

Generates a corpus (`rayssl synth`: UCF101-like 240x320 MPEG-4 AVI with B-frames by
default), indexes it, and runs `rayssl.launch.pretrain` (Ray Train, one worker; one Ray
Data pipeline of `sample_row` decode tasks for the whole run) on a local Ray instance
twice, both from configs/debug.yaml (one worker reserving 0.5 CPU, 2 torch threads):

    tiny   C3D width 0.25, 16x40x40 crops of 48x64 frames, no jitter, batch 16
           (the debug / demo model: decoding should be the bottleneck)
    r21d   R(2+1)D width 1.0 on 16x112x112 crops of 128x171 frames with the thesis's
           per-frame colour jitter, batch --r21d-batch, --r21d-steps steps per epoch
           (`train.max_steps_per_epoch`; the real backbone: on a CPU the model is the
           bottleneck)

and reads `train/data_wait_frac` (summed wait for the next batch / epoch time) and
`train/clips_per_s` of every epoch back from the runs' MLflow sqlite store. The first
epoch also starts Ray Data's worker processes, so the table also gives the mean of the
later epochs. Beside it, for the same config:

* `sample_row`'s clips/s per core in this process (`rayssl.tools.capacity.measure_decode`,
  what `rayssl capacity` reports), and the decode cores the run's clips/s amounts to at
  that rate (while a run is data-bound, what decoding really got);
* the pipeline alone, without training (`pipeline_alone`, epochs 0 and 1): seconds to the
  first batch of a new Ray Data execution (cold, then warm: what every epoch paid while
  each epoch built its own pipeline; training now pays it once per run), and its clips/s
  after that.

Training and decoding share this machine's cores: unlike on a GPU node, a bigger model
also takes CPU from the decoders.

    .venv/bin/python benchmarks/data_wait.py                  # ~3 minutes on 2 cores
    .venv/bin/python benchmarks/data_wait.py --json /tmp/data_wait.json --keep /tmp/dw
    .venv/bin/python benchmarks/data_wait.py --use-gpu        # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.config import Config, load_config  # noqa: E402

DEBUG = ROOT / "configs" / "debug.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=24, help="generated videos")
    ap.add_argument("--frames", type=int, default=100, help="frames per video")
    ap.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    ap.add_argument("--codec", default="mpeg4-bframes", help="h264 | mpeg4-bframes | mpeg4")
    ap.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    ap.add_argument("--tiny-epochs", type=int, default=3)
    ap.add_argument("--tiny-clips-per-video", type=int, default=4)
    ap.add_argument("--r21d-epochs", type=int, default=2)
    ap.add_argument("--r21d-steps", type=int, default=2, help="train.max_steps_per_epoch")
    ap.add_argument("--r21d-batch", type=int, default=4)
    ap.add_argument("--runs", default="tiny,r21d", help="which runs, comma-separated")
    ap.add_argument("--use-gpu", action="store_true", help="train.use_gpu=true (1 GPU)")
    ap.add_argument("--decode-seconds", type=float, default=5.0, help="sample_row timing")
    ap.add_argument("--keep", type=Path, help="work folder (kept); default a temporary one")
    ap.add_argument("--json", type=Path, help="write the results here")
    return ap.parse_args(argv)


def run_configs(args: argparse.Namespace, manifest: Path, work: Path) -> dict[str, Config]:
    tracking = f"sqlite:///{work / 'mlruns.db'}"
    stamp = time.strftime("%Y%m%d-%H%M%S")  # a kept work folder: new runs, not resumed ones
    common = [
        f"data.manifest={manifest}",
        "data.val_split=",
        f"run.storage_path={work / 'runs'}",
        f"run.tracking_uri={tracking}",
        "run.experiment=data-wait",
    ]
    if args.use_gpu:
        common += ["train.use_gpu=true", "train.cpus_per_worker=1"]
    runs = {
        "tiny": [
            f"run.name=tiny-{stamp}",
            f"optim.epochs={args.tiny_epochs}",
            f"data.clips_per_video={args.tiny_clips_per_video}",
        ],
        "r21d": [
            f"run.name=r21d-{stamp}",
            "model.backbone=r21d",
            "model.width=1.0",
            "data.augment.resize=[128,171]",
            "data.augment.crop=[112,112]",
            "data.augment.jitter_prob=0.8",
            "data.clips_per_video=1",
            f"train.batch_size={args.r21d_batch}",
            f"train.max_steps_per_epoch={args.r21d_steps}",
            f"optim.epochs={args.r21d_epochs}",
        ],
    }
    chosen = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(chosen) - set(runs))
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; one of {sorted(runs)}")
    return {name: load_config(DEBUG, [*common, *runs[name]]) for name in chosen}


def pipeline_alone(cfg: Config, videos, epoch: int) -> dict[str, float]:
    """One epoch of the training pipeline (`build_clip_dataset` over worker 0's draws, the
    loop's batch size and prefetch) iterated without training: seconds to the first batch
    (the pipeline's start, which every epoch pays) and clips/s after it."""
    from rayssl.clips.pipeline import build_clip_dataset, epoch_rows
    from rayssl.tools.capacity import sampler_spec

    rows = epoch_rows(videos, cfg.data.clips_per_video, cfg.run.seed, epoch)
    ds = build_clip_dataset(rows, sampler_spec(cfg), cfg.data)
    batch_size = max(1, cfg.train.batch_size // max(1, cfg.train.num_workers))
    t0 = time.perf_counter()
    first, first_n, n = 0.0, 0, 0
    batches = ds.iter_batches(
        batch_size=batch_size, batch_format="numpy", prefetch_batches=cfg.data.prefetch_batches
    )
    for batch in batches:
        n += len(batch["valid"])
        if not first:
            first, first_n = time.perf_counter() - t0, n
    total = time.perf_counter() - t0
    rest = total - first
    return {
        "first_batch_s": first,
        "clips": n,
        "seconds": total,
        "clips_per_s_after_first": (n - first_n) / rest if rest > 0 else float("nan"),
    }


def history(tracking: str, run_id: str, key: str) -> list[float]:
    import mlflow

    client = mlflow.MlflowClient(tracking)
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def describe(cfg: Config) -> str:
    crop = "x".join(str(v) for v in cfg.data.augment.crop)
    return f"{cfg.model.backbone} x{cfg.model.width:g}, {cfg.data.clip_len}x{crop}"


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = time.perf_counter()
    work = args.keep or Path(tempfile.mkdtemp(prefix="data_wait_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from rayssl.clips.pipeline import usable_videos
        from rayssl.io.manifest import build_manifest, list_entries, read_manifest, write_manifest
        from rayssl.tools.synthetic import generate_dataset

        manifest = work / "manifest.parquet"
        t0 = time.perf_counter()
        if not manifest.exists():
            generate_dataset(
                work / "videos",
                num_videos=args.videos,
                num_frames=args.frames,
                height=args.size[0],
                width=args.size[1],
                codec=args.codec,
                seed=0,
            )
            table = build_manifest(list_entries(str(work / "videos"), "folder"), use_ray=False)
            write_manifest(table, str(manifest))
        table = read_manifest(str(manifest))
        print(
            f"corpus: {table.num_rows} {args.codec} videos x {args.frames} frames, "
            f"{args.size[1]}x{args.size[0]} ({time.perf_counter() - t0:.0f} s); "
            f"local Ray with {args.num_cpus} logical CPUs on {os.cpu_count()} cores",
            flush=True,
        )
        configs = run_configs(args, manifest, work)

        import ray

        from rayssl.launch import pretrain
        from rayssl.tools.capacity import measure_decode

        results = []
        ray.init(
            address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False
        )
        try:
            for name, cfg in configs.items():
                videos = usable_videos(table, cfg.data.split)
                decode, _ = measure_decode(cfg, videos, args.decode_seconds, 10_000)
                alone = [pipeline_alone(cfg, videos, epoch) for epoch in (0, 1)]
                print(
                    f"{name}: pipeline alone: first batch after "
                    + ", ".join(f"{a['first_batch_s']:.2f} s" for a in alone)
                    + "; then "
                    + ", ".join(f"{a['clips_per_s_after_first']:.1f}" for a in alone)
                    + f" clips/s; sample_row in-process {decode.per_core:.1f} clips/s per core",
                    flush=True,
                )
                t0 = time.perf_counter()
                result = pretrain(cfg)
                wall = time.perf_counter() - t0
                run_id = result["mlflow_run_id"]
                tracking = cfg.run.tracking_uri
                waits = history(tracking, run_id, "train/data_wait_frac")
                rates = history(tracking, run_id, "train/clips_per_s")
                clips = history(tracking, run_id, "train/clips")
                row = {
                    "run": name,
                    "model": describe(cfg),
                    "batch_size": cfg.train.batch_size,
                    "device": "cuda" if cfg.train.use_gpu else "cpu",
                    "epochs": len(waits),
                    "clips_per_epoch": clips,
                    "data_wait_frac": waits,
                    "clips_per_s": rates,
                    "later_data_wait_frac": mean(waits[1:]),
                    "later_clips_per_s": mean(rates[1:]),
                    "sample_row_clips_per_s_per_core": decode.per_core,
                    "sample_row_clips": decode.clips,
                    "pipeline_alone": alone,
                    "wall_s": wall,
                    "mlflow_run_id": run_id,
                }
                row["pipeline_decode_cores"] = row["later_clips_per_s"] / decode.per_core
                results.append(row)
                print(
                    f"{name}: {row['epochs']} epochs in {wall:.0f} s; data wait "
                    + ", ".join(f"{w:.0%}" for w in waits)
                    + "; clips/s "
                    + ", ".join(f"{r:.1f}" for r in rates),
                    flush=True,
                )
        finally:
            ray.shutdown()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    print()
    header = (
        f"{'run':<5} {'model, clip':<22} {'batch':>5} {'clips/ep':>8} {'data wait by epoch':<18} "
        f"{'later':>6} {'clips/s later':>13} {'sample_row/core':>15} {'= cores':>7} "
        f"{'alone: 1st batch s':>18} {'clips/s':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        by_epoch = " ".join(f"{w:.0%}" for w in r["data_wait_frac"])
        warm = r["pipeline_alone"][-1]
        print(
            f"{r['run']:<5} {r['model']:<22} {r['batch_size']:>5} "
            f"{int(r['clips_per_epoch'][0]) if r['clips_per_epoch'] else 0:>8} {by_epoch:<18} "
            f"{r['later_data_wait_frac']:>6.0%} {r['later_clips_per_s']:>13.1f} "
            f"{r['sample_row_clips_per_s_per_core']:>15.1f} {r['pipeline_decode_cores']:>7.2f} "
            f"{warm['first_batch_s']:>18.2f} {warm['clips_per_s_after_first']:>7.1f}"
        )
    elapsed = time.perf_counter() - started
    env = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cores": os.cpu_count(),
        "ray_logical_cpus": args.num_cpus,
        "loadavg_end": os.getloadavg(),
        "elapsed_s": elapsed,
    }
    print(f"\ntotal {elapsed:.0f} s; load average at the end {env['loadavg_end']}")
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {"config": config, "environment": env, "results": results}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
