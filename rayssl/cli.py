"""`rayssl` command line: thin wrappers over the library.

rayssl synth --out S --num-videos 24 --codec mpeg4-bframes
rayssl manifest S --out S.parquet [--format folder|ucf101|hmdb51|kinetics]
rayssl preview S.parquet --pretext pace --num-clips 16 [--no-augment] --out P
rayssl pretrain --config configs/debug.yaml [key=value ...]
rayssl prepare M.parquet --out DST [--short-side 128] [--gop 16]
rayssl score M.parquet --out SCORED.parquet [--clips uniform:1] [--flow dis]
rayssl finetune --checkpoint X --config configs/finetune_ucf101.yaml [key=value ...]
rayssl features --checkpoint X --manifest M --layers pool3 pool5 --clips uniform:10 --out F.parquet
rayssl evaluate --checkpoint X --suite configs/eval_ucf101.yaml --out DIR [--baseline]
rayssl sweep --config configs/sweep_debug.yaml [key=value ...]
rayssl checkpoint convert OLD.pt --out NEW.pt [--endpoint-url URL]   (numpy values -> plain data)
rayssl export --checkpoint X --out DIR [--format torchscript] [--format onnx]
rayssl compare [--experiment E] [--parent RUN] [--runs ID ...] [--tag k=v] [--plot METRIC]
rayssl capacity --config FILE --manifest M [--measure-train] [--gpus N --cpus-per-node C] [--json]

`key=value` config overrides are accepted anywhere on the command line.

Each command imports the library modules it runs inside its function (the imports marked
lazy): torch and Ray take seconds to import, which `rayssl synth`, `manifest` and
`--help` need not pay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from rayssl.config import ConfigError, load_config
from rayssl.raystart import start_ray


def cmd_synth(args: argparse.Namespace) -> int:
    from rayssl.tools.synthetic import generate_dataset  # lazy: see the module docstring

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
        classes=args.classes.split(",") if args.classes else None,
    )
    print(
        f"wrote {len(videos)} {args.codec} videos ({args.num_frames} frames, "
        f"{args.width}x{args.height}) to {args.out} in {time.perf_counter() - t0:.1f}s"
    )
    return 0


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The caps on one video (`data.max_*` of the config; the same defaults)."""
    from rayssl.config import DataConfig  # lazy: see the module docstring

    d = DataConfig()
    parser.add_argument(
        "--max-video-bytes", type=int, default=d.max_video_bytes, help="0 = no cap (too_large)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=d.max_pixels, help="height x width cap (0 = none)"
    )
    parser.add_argument("--max-frames", type=int, default=d.max_frames, help="0 = no cap")
    parser.add_argument(
        "--decode-timeout-s", type=float, default=d.decode_timeout_s, help="per video; 0 = none"
    )
    parser.add_argument(
        "--stream-threshold-bytes",
        type=int,
        default=d.stream_threshold_bytes,
        help="S3 objects above this are streamed by ranged GETs",
    )


def access_from_args(args: argparse.Namespace):
    """The `VideoAccess` of `add_limit_arguments`' arguments."""
    from rayssl.config import DataConfig  # lazy: see the module docstring
    from rayssl.io.video import VideoAccess  # lazy: see the module docstring

    data = DataConfig(
        max_video_bytes=args.max_video_bytes,
        max_pixels=args.max_pixels,
        max_frames=args.max_frames,
        decode_timeout_s=args.decode_timeout_s,
        stream_threshold_bytes=args.stream_threshold_bytes,
    )
    data.validate("args")
    return VideoAccess.from_config(data)


def cmd_manifest(args: argparse.Namespace) -> int:
    from rayssl.io import storage  # lazy: see the module docstring
    from rayssl.io.manifest import (  # lazy: see the module docstring
        build_manifest,
        list_entries,
        summarize,
        write_manifest,
    )

    options = storage.StorageOptions(endpoint_url=args.endpoint_url or None)
    entries = list_entries(
        args.src,
        args.format,
        options=options,
        **_format_kwargs(args),
    )
    if args.use_ray:
        start_ray(quiet=True)
    t0 = time.perf_counter()
    table = build_manifest(entries, options, use_ray=args.use_ray, access=access_from_args(args))
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
    from rayssl.tools.preview import run_preview  # lazy: see the module docstring

    augment: dict[str, Any] = {}
    if args.no_augment:
        augment = {"enabled": False, "resize": list(args.size) if args.size else []}
    elif args.size:
        augment = {"resize": list(args.size)}
    patch: dict[str, Any] = {"data": {"augment": augment}, "pretext": {}, "run": {}}
    if args.pretext is not None:
        patch["pretext"]["name"] = args.pretext
    if args.seed is not None:
        patch["run"]["seed"] = args.seed
    if args.endpoint_url:
        patch["data"]["endpoint_url"] = args.endpoint_url
    cfg = load_config(args.config, args.overrides, patch)
    start_ray(quiet=True)
    summary = run_preview(cfg, args.src, args.out, num_clips=args.num_clips)
    print(json.dumps(summary))
    return 0 if summary["written"] else 1


def cmd_pretrain(args: argparse.Namespace) -> int:
    from rayssl.launch import pretrain  # lazy: see the module docstring
    from rayssl.tracking_uri import default_tracking_uri  # lazy: see the module docstring

    cfg = load_config(args.config, args.overrides)
    result = pretrain(cfg)
    print(json.dumps(result, default=str))
    _print_run_view(lambda: default_tracking_uri(cfg), result.get("mlflow_run_id", ""))
    return 0


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `rayssl finetune` and `jobs/finetune.py` (one definition)."""
    parser.add_argument("--config", required=True, help="fine-tuning config (YAML)")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="pre-trained weights: path, s3://, runs:/<id>, or 'random' (default: model.init)",
    )
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")


def finetune_from_args(args: argparse.Namespace) -> dict:
    from rayssl.evaluate.finetune import finetune  # lazy: see the module docstring
    from rayssl.launch import run_training  # lazy: see the module docstring

    return finetune(load_config(args.config, args.overrides), args.checkpoint, run_training)


def cmd_finetune(args: argparse.Namespace) -> int:
    result = finetune_from_args(args)
    print(json.dumps(result, default=str))
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rayssl.checkpoint import (  # lazy: see the module docstring
        build_backbone_from,
        resolve_checkpoint,
    )
    from rayssl.evaluate.features import (  # lazy: see the module docstring
        extract_features,
        load_manifest,
        write_features,
    )
    from rayssl.evaluate.suite import load_suite  # lazy: see the module docstring
    from rayssl.preflight import resolve_paths  # lazy: see the module docstring

    features: dict[str, Any] = {"inference": {}}
    if args.layers:
        features["layers"] = list(args.layers)
    if args.clips:
        features["inference"]["clips"] = args.clips
    suite = load_suite(
        args.config, args.overrides, {"data": {"manifest": args.manifest}, "features": features}
    )
    cfg = resolve_paths(suite.as_config())
    source = resolve_checkpoint(args.checkpoint, cfg)
    from rayssl.clip_geometry import choose_geometry  # lazy: see the module docstring

    backbone = build_backbone_from(source)
    # the checkpoint's own clips unless --config / an override sets them
    explicit = _explicit_geometry(args.config, args.overrides)
    geometry = choose_geometry(source, cfg.data, explicit, backbone)
    cfg = replace(cfg, data=geometry.apply(cfg.data))
    print(geometry.line(), flush=True)
    from rayssl.models.heads import check_feature_layers  # lazy: see the module docstring

    try:  # the backbone's own layer names, before any work
        key = "--layers (features.layers)"
        check_feature_layers(backbone, suite.features.layers, key, name=source.model.backbone)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    table = load_manifest(cfg.data.manifest, cfg.data)
    start_ray()
    t0 = time.perf_counter()
    inference = replace(suite.features.inference)
    feats = extract_features(
        backbone,
        table,
        cfg.data,
        inference,
        suite.features.layers,
        token_grid=suite.features.token_grid,
        normalisation=geometry.renormalise,
    )
    options = storage_options(cfg.data.endpoint_url)
    write_features(feats, args.out, options=options)
    print(
        json.dumps(
            {
                "out": args.out,
                "videos": len(feats.video_ids),
                "skipped": feats.skipped,
                "layers": {k: v.shape[1] for k, v in feats.outputs.items()},
                "clips": inference.clips,
                "clip_len": geometry.clip_len,
                "crop": list(geometry.crop),
                "checkpoint": source.label,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0 if feats.video_ids else 1


def _explicit_geometry(config: str | None, overrides: Sequence[str]) -> set[str]:
    """The clip geometry keys a command's --config file and overrides set."""
    from rayssl.clip_geometry import explicit_keys  # lazy: see the module docstring
    from rayssl.config import read_yaml  # lazy: see the module docstring

    return explicit_keys(read_yaml(config) if config else {}, overrides)


def _print_run_view(tracking_uri: Callable[[], str], run_id: str) -> None:
    """The last line of a tracked command: its MLflow run in the model-training view, on
    stderr (stdout's last line stays the command's JSON result, for scripts). A hint
    only: a store it cannot name or reach prints nothing and fails nothing."""
    from rayssl.tracking_uri import print_run_view  # lazy: see the module docstring

    with contextlib.suppress(ConfigError, ValueError, OSError):
        print_run_view(tracking_uri(), run_id, file=sys.stderr)


def storage_options(endpoint_url: str):
    from rayssl.io import storage  # lazy: see the module docstring

    return storage.StorageOptions(endpoint_url=endpoint_url or None)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `rayssl evaluate` and `jobs/evaluate.py` (one definition)."""
    parser.add_argument("--checkpoint", required=True, help="path, s3://, runs:/<id> or random")
    parser.add_argument("--suite", required=True, help="evaluation suite (configs/eval_*.yaml)")
    parser.add_argument("--out", required=True, help="output folder (results.json, plots)")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also evaluate the same backbone at random init (same seed) and compare",
    )
    parser.add_argument("overrides", nargs="*", help="key=value suite overrides")


def evaluate_from_args(args: argparse.Namespace) -> dict:
    """Run the suite (and the random-init baseline with --baseline, at the same clip
    geometry); print the table."""
    from dataclasses import replace
    from pathlib import Path

    from rayssl.evaluate.suite import (  # lazy: see the module docstring
        baseline_suite,
        comparison_table,
        evaluate_checkpoint,
        load_suite,
    )
    from rayssl.launch import run_training  # lazy: see the module docstring

    suite = load_suite(args.suite, args.overrides)
    suite_dir = Path(args.suite).resolve().parent
    explicit = _explicit_geometry(args.suite, args.overrides)
    main = evaluate_checkpoint(
        suite, args.checkpoint, args.out, suite_dir, run_training, explicit_geometry=explicit
    )
    print("\n".join(main["report"]))
    columns = {main["source"].label: main["results"]}
    out = {"results": main["results"], "mlflow_run_id": main["mlflow_run_id"], "out": args.out}
    if args.baseline and main["source"].kind != "random":
        baseline = baseline_suite(suite, main["source"])
        if main.get("geometry") is not None:  # the same clips as the checkpoint's
            baseline = replace(baseline, data=main["geometry"].apply(baseline.data))
        base = evaluate_checkpoint(
            baseline,
            "random",
            Path(args.out) / "baseline",
            suite_dir,
            run_training,
        )
        columns["random init"] = base["results"]
        out["baseline"] = {"results": base["results"], "mlflow_run_id": base["mlflow_run_id"]}
    print()
    print(comparison_table(columns))
    print(f"\nresults: {Path(args.out) / 'results.json'}")
    return out


def cmd_evaluate(args: argparse.Namespace) -> int:
    from rayssl.evaluate.suite import load_suite  # lazy: see the module docstring
    from rayssl.tracking_uri import default_tracking_uri  # lazy: see the module docstring

    out = evaluate_from_args(args)
    suite = load_suite(args.suite, args.overrides)
    _print_run_view(lambda: default_tracking_uri(suite.as_config()), out["mlflow_run_id"])
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
    add_limit_arguments(parser)


def prepare_from_args(args: argparse.Namespace) -> dict:
    """Run `rayssl.tools.prepare.run_prepare` with parsed `add_prepare_arguments` arguments."""
    from rayssl.tools.prepare import run_prepare  # lazy: see the module docstring

    return run_prepare(
        args.src,
        args.out,
        short_side=args.short_side,
        gop=args.gop,
        crf=args.crf,
        endpoint_url=args.endpoint_url or None,
        preset=args.preset,
        overwrite=args.overwrite,
        access=access_from_args(args),
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    start_ray(quiet=True)
    try:
        summary = prepare_from_args(args)
    except ValueError as e:  # bad settings, a refused run (PrepareError), ManifestError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `rayssl score` and `jobs/score.py` (one definition)."""
    parser.add_argument("manifest", help="manifest to score (.parquet, local or s3://)")
    parser.add_argument("--out", required=True, help="scored manifest (.parquet, local or s3://)")
    parser.add_argument("--clips", default="uniform:1", help="clips averaged per video")
    parser.add_argument("--flow", default="dis", help="optical flow: dis | farneback | tvl1")
    parser.add_argument(
        "--resize", type=int, nargs=2, default=[128, 171], metavar=("H", "W"), help="resize"
    )
    parser.add_argument("--crop", type=int, default=112, help="centre crop (px)")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--overwrite", action="store_true", help="rescore every video")
    parser.add_argument("--keep-parts", action="store_true", help="keep OUT.parts/ at the end")
    parser.add_argument("--endpoint-url", default="", help="S3 endpoint (else AWS_ENDPOINT_URL_S3)")


def score_from_args(args: argparse.Namespace) -> dict:
    """Run `rayssl.tools.score.run_score` with parsed `add_score_arguments` arguments."""
    from rayssl.tools.score import run_score  # lazy: see the module docstring

    return run_score(
        args.manifest,
        args.out,
        clips=args.clips,
        flow=args.flow,
        resize=(args.resize[0], args.resize[1]),
        crop=args.crop,
        clip_len=args.clip_len,
        endpoint_url=args.endpoint_url or None,
        overwrite=args.overwrite,
        keep_parts=args.keep_parts,
    )


def cmd_score(args: argparse.Namespace) -> int:
    start_ray(quiet=True)
    try:
        summary = score_from_args(args)
    except ValueError as e:  # bad arguments or input (ManifestError included)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from rayssl.tracking_uri import real_tracking_uri  # lazy: see the module docstring
    from rayssl.tune.sweep import load_sweep, run_sweep  # lazy: see the module docstring

    result = run_sweep(load_sweep(args.config, args.overrides))
    print(result.pop("table"))
    print(json.dumps(result, default=str))
    _print_run_view(lambda: real_tracking_uri(result["tracking_uri"]), result["parent_run_id"])
    return 0 if result["trials_done"] == result["trials"] else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from rayssl.tune.compare import main as compare_main  # lazy: see the module docstring

    return compare_main(list(args.args))


def cmd_capacity(args: argparse.Namespace) -> int:
    from rayssl.tools.capacity import (  # lazy: see the module docstring
        CapacityError,
        ClusterShape,
        format_report,
        run_capacity,
    )

    patch = {"data": {"manifest": args.manifest}} if args.manifest else {}
    cfg = load_config(args.config, args.overrides, patch)
    if args.gpus is not None and args.cpus_per_node is None:
        print("error: --gpus needs --cpus-per-node", file=sys.stderr)
        return 2
    try:
        shape = None
        if args.gpus is not None:
            workers_cpus = args.cpus_per_worker
            shape = ClusterShape(
                gpus=args.gpus,
                nodes=args.nodes,
                cpus_per_node=args.cpus_per_node,
                cpus_per_worker=cfg.train.cpus_per_worker if workers_cpus is None else workers_cpus,
                extra_cpus=args.extra_cpus,
            )
        report = run_capacity(
            cfg,
            seconds=args.seconds,
            max_clips=args.clips,
            train_clips_per_s=args.train_clips_per_s,
            measure=args.measure_train,
            device=args.device,
            train_steps=args.train_steps,
            anchor=args.anchor,
            precision=args.precision,
            shape=shape,
        )
    except CapacityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from rayssl import checkpoint as ckpt  # lazy: see the module docstring

    result = ckpt.convert(args.src, args.out, storage_options(args.endpoint_url))
    print(json.dumps(result))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rayssl.checkpoint import (  # lazy: see the module docstring
        build_backbone_from,
        resolve_checkpoint,
    )
    from rayssl.export import ExportError, check_out_dir, export_backbone  # lazy: as above

    cfg = load_config(args.config, args.overrides)
    # the file or folder the checkpoint is read from (torchvision:<model>=<file>: the file)
    spec = args.checkpoint
    inputs = [spec.partition("=")[2] if spec.startswith("torchvision:") else spec]
    try:
        check_out_dir(args.out, inputs)  # before reading anything
        source = resolve_checkpoint(args.checkpoint, cfg)
        backbone = build_backbone_from(source)
        result = export_backbone(
            backbone,
            source.model.backbone,
            source.model.width,
            args.out,
            formats=sorted({"safetensors", *args.format}),
            config=source.config,
            pretrain_run_id=source.pretrain_run_id,
            source=source.label,
            inputs=inputs,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


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
    s.add_argument(
        "--classes",
        default="",
        help="comma-separated motion kinds (e.g. translate_right,rotate_cw,zoom_in); "
        "default: the first --num-classes",
    )
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
    add_limit_arguments(m)
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

    sc = sub.add_parser("score", help="curriculum difficulty of every video (Ray Data)")
    add_score_arguments(sc)
    sc.set_defaults(func=cmd_score)

    f = sub.add_parser("finetune", help="fine-tune for action recognition, then test (Ray Train)")
    add_finetune_arguments(f)
    f.set_defaults(func=cmd_finetune)

    x = sub.add_parser("features", help="per-video features of a manifest (Ray Data) to Parquet")
    x.add_argument("--checkpoint", required=True, help="path, s3://, runs:/<id> or random")
    x.add_argument("--manifest", required=True, help="manifest (.parquet, local or s3://)")
    x.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="the backbone's layers: CNNs pool1..pool5, pool5_vcop, pool5_map; ViTs block<i>, "
        "tokens (default pool3-5)",
    )
    x.add_argument("--clips", default=None, help="uniform:N or sliding:L:O (default uniform:10)")
    x.add_argument("--out", required=True, help="features Parquet (local or s3://)")
    x.add_argument("--config", default=None, help="suite YAML for data sizes / model settings")
    x.add_argument("overrides", nargs="*", help="key=value overrides")
    x.set_defaults(func=cmd_features)

    e = sub.add_parser("evaluate", help="run an evaluation suite on a checkpoint")
    add_evaluate_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    ck = sub.add_parser("checkpoint", help="checkpoint files: convert an old one (numpy values)")
    ck_sub = ck.add_subparsers(dest="action", required=True)
    cv = ck_sub.add_parser(
        "convert",
        help="rewrite an old checkpoint with numpy values as plain data (other globals: refused)",
    )
    cv.add_argument("src", help="state.pt / backbone.pt (local or s3://)")
    cv.add_argument("--out", required=True, help="new file (local or s3://); must not exist")
    cv.add_argument("--endpoint-url", default="", help="S3 endpoint (else AWS_ENDPOINT_URL_S3)")
    cv.set_defaults(func=cmd_checkpoint)

    ex = sub.add_parser(
        "export", help="a checkpoint's backbone as safetensors + settings JSON (+ TorchScript/ONNX)"
    )
    ex.add_argument(
        "--checkpoint",
        required=True,
        help="path, s3://, runs:/<id>, models:/<name>@<alias>, an exported folder, or random",
    )
    ex.add_argument("--out", required=True, help="new local folder (not the checkpoint's)")
    ex.add_argument(
        "--format",
        action="append",
        default=[],
        choices=["safetensors", "torchscript", "onnx"],
        help="a format beside safetensors (always written); repeat for several",
    )
    ex.add_argument("--config", default=None, help="config for 'random' / the tracking URI")
    ex.add_argument("overrides", nargs="*", help="key=value config overrides")
    ex.set_defaults(func=cmd_export)

    w = sub.add_parser("sweep", help="a Ray Tune study: pre-train + evaluate every trial")
    w.add_argument("--config", required=True, help="sweep YAML (configs/sweep_*.yaml)")
    w.add_argument("overrides", nargs="*", help="key=value sweep overrides")
    w.set_defaults(func=cmd_sweep)

    k = sub.add_parser(
        "capacity",
        help="decode clips/s per core, training clips/s per GPU, CPUs per GPU, data wait",
    )
    k.add_argument("--config", default=None, help="YAML config (default: the defaults)")
    k.add_argument("--manifest", default=None, help="manifest (default: data.manifest)")
    k.add_argument("--seconds", type=float, default=10.0, help="decode for this long at most")
    k.add_argument("--clips", type=int, default=200, help="decode this many clips at most")
    rate = k.add_mutually_exclusive_group()
    rate.add_argument("--train-clips-per-s", type=float, default=None, help="GPU clips/s, given")
    rate.add_argument(
        "--measure-train", action="store_true", help="time train steps on this machine's device"
    )
    rate.add_argument(
        "--anchor",
        default=None,
        help="train_throughput.py JSON (default without the other two: the H100 anchor)",
    )
    k.add_argument(
        "--precision",
        default=None,
        help="anchor mode: fp32 | tf32 | bf16, or a rayssl mode of a GPU benchmark run "
        "(rayssl, inline, fused, conv2d, best, best2x) (default: the mode matching the "
        "config's train.bf16/channels_last/device_prefetch/conv_impl/compile, optim.fused)",
    )
    k.add_argument("--device", default="auto", help="--measure-train device: auto | cpu | cuda")
    k.add_argument("--train-steps", type=int, default=3, help="--measure-train timed steps")
    k.add_argument("--gpus", type=int, default=None, help="cluster shape: GPUs (one worker each)")
    k.add_argument("--nodes", type=int, default=1, help="cluster shape: nodes holding the GPUs")
    k.add_argument("--cpus-per-node", type=float, default=None, help="cluster shape: CPUs per node")
    k.add_argument(
        "--cpus-per-worker", type=float, default=None, help="default: train.cpus_per_worker"
    )
    k.add_argument("--extra-cpus", type=float, default=0.0, help="CPUs of CPU-only nodes, in all")
    k.add_argument("--json", action="store_true", help="print the report as JSON")
    k.add_argument("overrides", nargs="*", help="key=value config overrides")
    k.set_defaults(func=cmd_capacity)

    c = sub.add_parser(
        "compare",
        help="compare MLflow runs: a table, or a metric's curves (--help)",
        add_help=False,
    )
    c.add_argument("args", nargs=argparse.REMAINDER, help="rayssl.tune.compare's arguments")
    c.set_defaults(func=cmd_compare)
    return p


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, taking `key=value` overrides wherever they are typed (argparse alone only
    takes positionals before the options that follow them)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if overrides:
        if not hasattr(args, "overrides"):
            parser.error(f"this command takes no key=value overrides: {' '.join(overrides)}")
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from rayssl.checkpoint import CheckpointError  # lazy: see the module docstring
    from rayssl.clips.schedule import UnschedulableError  # lazy: see the module docstring
    from rayssl.io.manifest import ManifestError  # lazy: see the module docstring

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:  # its own parser: options after the subcommand are its own
        from rayssl.tune.compare import main as compare_main  # lazy: see the module docstring

        return compare_main(argv[1:])
    args = parse_args(build_parser(), argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, ManifestError, UnschedulableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
