"""`rayssl` command line: thin wrappers over the library.

rayssl synth --out S --num-videos 24 --codec mpeg4-bframes
rayssl manifest S --out S.parquet [--format folder|ucf101|hmdb51|kinetics]
rayssl preview S.parquet --pretext pace --num-clips 16 [--no-augment] --out P
rayssl pretrain --config configs/debug.yaml [key=value ...]
rayssl prepare M.parquet --out DST [--short-side 128] [--gop 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from rayssl.config import ConfigError, load_config


def _init_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)


def cmd_synth(args: argparse.Namespace) -> int:
    from rayssl.data.synthetic import generate_dataset

    t0 = time.perf_counter()
    videos = generate_dataset(
        args.out,
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        fps=args.fps,
        codec=args.codec,
        num_classes=args.num_classes,
        seed=args.seed,
        gop=args.gop,
    )
    print(
        f"wrote {len(videos)} {args.codec} videos ({args.num_frames} frames, "
        f"{args.width}x{args.height}) to {args.out} in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from rayssl.data import storage
    from rayssl.data.manifest import build_manifest, list_entries, summarize, write_manifest

    options = storage.StorageOptions(endpoint_url=args.endpoint_url or None)
    entries = list_entries(
        args.src,
        args.format,
        options=options,
        **_format_kwargs(args),
    )
    if args.use_ray:
        _init_ray()
    t0 = time.perf_counter()
    table = build_manifest(entries, options, use_ray=args.use_ray)
    write_manifest(table, args.out, options=options)
    s = summarize(table)
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["by_reason"].items())) or "none"
    print(
        f"manifest {args.out}: {table.num_rows} videos, ok {s['ok']}, bad {s['bad']} "
        f"({reasons}) in {time.perf_counter() - t0:.1f}s"
    )
    for row in table.filter(table["error"].is_valid()).to_pylist()[: args.show_bad]:
        print(f"  bad: {row['uri']}: {row['error']} {row['error_detail']}")
    if s["ok"] == 0:
        print("error: no usable video found", file=sys.stderr)
        return 1
    return 0


def _format_kwargs(args: argparse.Namespace) -> dict:
    kw: dict = {}
    if args.format in ("ucf101", "hmdb51"):
        kw.update(split_id=args.split_id, splits_dir=args.splits or "")
    elif args.format == "kinetics":
        kw["annotations"] = args.annotations or []
    elif args.format == "folder":
        kw.update(val_fraction=args.val_fraction, seed=args.seed)
    return kw


def cmd_preview(args: argparse.Namespace) -> int:
    from rayssl.preview import run_preview

    overrides = list(args.overrides)
    if args.pretext is not None:
        overrides.append(f"pretext.name={args.pretext}")
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    if args.no_augment:
        overrides.append("data.augment.enabled=false")
        overrides.append(f"data.augment.resize={list(args.size) if args.size else []}")
    elif args.size:
        overrides.append(f"data.augment.resize={list(args.size)}")
    if args.endpoint_url:
        overrides.append(f"data.endpoint_url={args.endpoint_url}")
    cfg = load_config(args.config, overrides)
    _init_ray()
    summary = run_preview(cfg, args.src, args.out, num_clips=args.num_clips)
    print(json.dumps(summary))
    return 0 if summary["written"] else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rayssl.launch import pretrain

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg)
    print(json.dumps(result, default=str))
    return 0


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `rayssl prepare` and `jobs/prepare.py` (one definition)."""
    parser.add_argument("src", help="manifest (.parquet, local or s3://) or a class-folder root")
    parser.add_argument("--out", required=True, help="output folder or s3:// prefix")
    parser.add_argument("--short-side", type=int, default=128, help="output short side (px)")
    parser.add_argument("--gop", type=int, default=16, help="a keyframe every N frames")
    parser.add_argument("--crf", type=int, default=23, help="x264 CRF (lower = better)")
    parser.add_argument("--preset", default="veryfast", help="x264 preset")
    parser.add_argument("--overwrite", action="store_true", help="redo valid existing outputs")
    parser.add_argument("--endpoint-url", default="", help="S3 endpoint (else AWS_ENDPOINT_URL_S3)")


def prepare_from_args(args: argparse.Namespace) -> dict:
    """Run `rayssl.prepare.run_prepare` with parsed `add_prepare_arguments` arguments."""
    from rayssl.prepare import run_prepare

    return run_prepare(
        args.src,
        args.out,
        short_side=args.short_side,
        gop=args.gop,
        crf=args.crf,
        endpoint_url=args.endpoint_url or None,
        preset=args.preset,
        overwrite=args.overwrite,
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    _init_ray()
    summary = prepare_from_args(args)
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rayssl", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write a dataset of generated, encoded videos")
    s.add_argument("--out", required=True)
    s.add_argument("--num-videos", type=int, default=24)
    s.add_argument("--num-frames", type=int, default=64)
    s.add_argument("--height", type=int, default=240)
    s.add_argument("--width", type=int, default=320)
    s.add_argument("--fps", type=float, default=25.0)
    s.add_argument("--codec", default="mpeg4-bframes", help="h264 | mpeg4-bframes | mpeg4")
    s.add_argument("--num-classes", type=int, default=4)
    s.add_argument("--gop", type=int, default=None, help="keyframe interval (frames)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)

    m = sub.add_parser("manifest", help="probe every video of a dataset into a Parquet manifest")
    m.add_argument("src", help="folder or s3://bucket/prefix")
    m.add_argument("--out", required=True, help="manifest path or s3:// URI (.parquet)")
    m.add_argument("--format", default="folder", choices=["folder", "ucf101", "hmdb51", "kinetics"])
    m.add_argument("--split-id", type=int, default=1, help="UCF101/HMDB51 split number")
    m.add_argument("--splits", default="", help="folder of the split files (UCF101/HMDB51)")
    m.add_argument("--annotations", nargs="*", help="Kinetics CSV files")
    m.add_argument("--val-fraction", type=float, default=0.0, help="folder: share put in 'val'")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--endpoint-url", default="", help="S3 endpoint (else AWS_ENDPOINT_URL_S3)")
    m.add_argument("--no-ray", dest="use_ray", action="store_false", help="probe in-process")
    m.add_argument("--show-bad", type=int, default=20, help="bad rows to print")
    m.set_defaults(func=cmd_manifest)

    v = sub.add_parser("preview", help="sample clips with the training pipeline and save them")
    v.add_argument("src", help="manifest (.parquet) or a folder of videos")
    v.add_argument("--out", required=True)
    v.add_argument("--pretext", default=None, help="pretext task (default: the config's)")
    v.add_argument("--num-clips", type=int, default=16)
    v.add_argument("--no-augment", action="store_true", help="no crop, flip or jitter")
    v.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="resize frames")
    v.add_argument("--seed", type=int, default=None, help="default: the config's run.seed")
    v.add_argument("--config", default=None, help="YAML config for data/pretext settings")
    v.add_argument("--endpoint-url", default="")
    v.add_argument("overrides", nargs="*", help="key=value config overrides")
    v.set_defaults(func=cmd_preview)

    t = sub.add_parser("pretrain", help="self-supervised pre-training (Ray Train)")
    t.add_argument("--config", required=True)
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.set_defaults(func=cmd_pretrain)

    r = sub.add_parser("prepare", help="transcode a manifest's videos to training-ready H.264")
    add_prepare_arguments(r)
    r.set_defaults(func=cmd_prepare)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
