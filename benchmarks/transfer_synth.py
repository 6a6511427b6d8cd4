"""Transfer benchmark on generated video: does pre-training help downstream?

A labelled generated dataset (`rayssl synth`: classes are motion families, appearance is
random per video) is split by a seeded hash into an unlabelled pre-training part and a
labelled train / test part. A small backbone is pre-trained on CPU on the first part with
each pretext of --pretexts (pace: configs/debug.yaml; statistics: configs/stats_debug.yaml;
pace_contrastive: configs/pace_ctr_debug.yaml; multitask: configs/pace_stats_debug.yaml,
pace + statistics; all at 48x64 frames and 40 px crops); then
random init and every pre-trained model are compared on the labelled part with the
evaluation suite: retrieval top-1/top-5 (test
queries train), a linear probe (train -> test), and fine-tuning with the test protocol.

    .venv/bin/python benchmarks/transfer_synth.py --out /tmp/transfer [--epochs 40] [...]
    # add a statistics row to an earlier run (same data: generation is seeded):
    .venv/bin/python benchmarks/transfer_synth.py --out /tmp/transfer --pretexts statistics \
        --reuse /tmp/transfer/transfer.json
    # a variant of a pretext: a tag for its row, then key=value pre-training overrides
    .venv/bin/python benchmarks/transfer_synth.py --out /tmp/transfer --pretexts pace_contrastive \
        --tag=-same-pace --reuse /tmp/transfer/transfer.json pretext.contrastive.mode=same_pace

Prints the table and writes OUT/transfer.json. Not a test: it takes ~30 minutes per
pretext on a 2-core CPU (~23 of them pre-training). Results: docs/evaluation.md, section 6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.config import load_config  # noqa: E402
from rayssl.evaluate.suite import comparison_table, evaluate_checkpoint, load_suite  # noqa: E402
from rayssl.io.ids import stable_hash  # noqa: E402
from rayssl.io.manifest import build_manifest, list_entries, write_manifest  # noqa: E402
from rayssl.tools.synthetic import generate_dataset  # noqa: E402

#: Classes are motion families (a video shows one kind of its family: a translation in
#: one of 4 directions, a cw or ccw rotation, a zoom in or out, a horizontal or vertical
#: oscillation). Pace is blind to the direction of a motion, so direction classes would
#: measure something no pace-trained feature can know; `--classes` takes kinds too,
#: e.g. all ten: translate_right,translate_left,...,oscillate_vertical.
DEFAULT_CLASSES = "translate,rotate,zoom,oscillate"

#: The pre-training config of each --pretexts name (in configs/).
PRETEXT_CONFIGS = {
    "pace": "debug.yaml",
    "statistics": "stats_debug.yaml",
    "pace_contrastive": "pace_ctr_debug.yaml",
    "multitask": "pace_stats_debug.yaml",
    "pace_vit": "debug.yaml",
    "videomae": "videomae_vit_debug.yaml",
    "vjepa": "vjepa_vit_debug.yaml",
}

#: The rows on the tiny ViT. A ViT takes multiples of 16 pixels and of its 2-frame
#: tubelet, so its rows use 48 px crops of the same 48x64 frames and 8-frame clips (the
#: CNN rows: 40 px, 16 frames), and one optimiser for all three (AdamW with the ViT
#: recipes' betas, warm-up + cosine): the rows differ by their pretext only.
VIT_ROWS = {"pace_vit", "videomae", "vjepa"}
VIT_OVERRIDES = [
    "model.backbone=vit_tiny",
    "model.width=1.0",
    "data.clip_len=8",
    "data.augment.crop=[48,48]",
    "optim.name=adamw",
    "optim.lr=5.0e-4",
    "optim.weight_decay=0.05",
    "optim.betas=[0.9,0.95]",
    "optim.schedule=warmup_cosine",
    "optim.min_lr=1.0e-5",
]


def make_manifest(videos: Path, out: Path, labelled: float, seed: int) -> dict[str, int]:
    """Splits by a hash of the video id: `pretrain` (labels unused), then `train`/`test`
    halves of the labelled share."""
    from dataclasses import replace

    entries = list_entries(str(videos), "folder")
    split = []
    for e in entries:
        u = (stable_hash(f"{seed}:{e.video_id}") % 10_000) / 10_000
        split.append("pretrain" if u >= labelled else ("train" if u < labelled / 2 else "test"))
    entries = [replace(e, split=s) for e, s in zip(entries, split, strict=True)]
    write_manifest(build_manifest(entries, use_ray=False), str(out))
    return {s: split.count(s) for s in ("pretrain", "train", "test")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; an unknown pretext or a bad override is an error before any work."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/rayssl-transfer")
    ap.add_argument("--num-videos", type=int, default=1500)
    ap.add_argument("--classes", default=DEFAULT_CLASSES)
    ap.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[48, 64],
        metavar=("H", "W"),
        help="rendered frame size (the debug config trains on 48x64 frames, 40 px crops)",
    )
    ap.add_argument("--labelled", type=float, default=0.4, help="share of labelled videos")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--clips-per-video", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-finetune", action="store_true")
    ap.add_argument(
        "--pretexts",
        default="pace",
        help="comma-separated: pace, statistics, pace_contrastive, multitask on C3D/4; "
        "pace_vit, videomae, vjepa on vit_tiny (one row each)",
    )
    ap.add_argument(
        "--reuse", help="transfer.json of an earlier run on the same data: its columns are kept"
    )
    ap.add_argument("--tag", default="", help="appended to the pretext in row labels")
    ap.add_argument(
        "--pretrained",
        default="",
        help="a finished pre-training of the one --pretexts row (a run folder or state.pt "
        "folder): evaluate it instead of pre-training again (e.g. after an evaluation failed)",
    )
    ap.add_argument("pretrain_overrides", nargs="*", help="key=value for the pre-training")
    args = ap.parse_args(argv)
    unknown = [p for p in args.pretexts.split(",") if p not in PRETEXT_CONFIGS]
    if unknown:
        ap.error(f"--pretexts: unknown {unknown}; choose among {sorted(PRETEXT_CONFIGS)}")
    if args.reuse and not Path(args.reuse).is_file():
        ap.error(f"--reuse: no such file {args.reuse}")
    if args.pretrained and ("," in args.pretexts or not Path(args.pretrained).exists()):
        ap.error("--pretrained: an existing folder, with exactly one --pretexts row")
    for pretext in args.pretexts.split(","):  # check the overrides now, not after an hour
        try:
            pretrain_config(pretext, Path("manifest.parquet"), args, Path("out"), "sqlite://")
        except ValueError as e:
            ap.error(f"{pretext}: {e}")
    return args


def pretrain_config(
    pretext: str,
    manifest: Path,
    args: argparse.Namespace,
    out: Path,
    tracking,
    pretrain_videos: int = 0,
):
    """The pre-training config of one row: the pretext's debug config at the benchmark's
    geometry and schedule (a ViT row: `VIT_OVERRIDES`), then the command line's
    overrides. `pretrain_videos` sizes vjepa's EMA momentum rise to the whole run, as
    V-JEPA does."""
    vit: list[str] = []
    if pretext in VIT_ROWS:
        vit = [*VIT_OVERRIDES, f"optim.warmup_epochs={max(1, args.epochs // 10)}"]
    if pretext == "vjepa" and pretrain_videos:
        batch = load_config(ROOT / "configs" / PRETEXT_CONFIGS[pretext]).train.batch_size
        steps = -(-pretrain_videos * args.clips_per_video // batch)
        vit.append(f"pretext.vjepa.momentum_steps={args.epochs * steps}")
    return load_config(
        ROOT / "configs" / PRETEXT_CONFIGS[pretext],
        [
            f"data.manifest={manifest}",
            "data.split=pretrain",
            "data.val_split=test",
            "data.augment.resize=[48,64]",  # one geometry for every pretext
            "data.augment.crop=[40,40]",
            f"data.clips_per_video={args.clips_per_video}",
            f"optim.epochs={args.epochs}",
            f"optim.step_epochs={max(1, int(args.epochs * 0.75))}",
            f"run.name=transfer-{pretext}{args.tag}-{int(time.time())}",
            f"run.storage_path={out / 'runs'}",
            f"run.tracking_uri={tracking}",
            f"run.seed={args.seed}",
            "run.experiment=transfer",
            *vit,
            *args.pretrain_overrides,
        ],
    )


def main() -> int:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_ADDRESS", "local")
    os.environ.setdefault("RAYSSL_NUM_CPUS", "4")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tracking = f"sqlite:///{out / 'mlruns.db'}"
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    if not (out / "videos").exists():
        generate_dataset(
            out / "videos",
            num_videos=args.num_videos,
            num_frames=64,
            height=args.size[0],
            width=args.size[1],
            codec="h264",
            seed=args.seed,
            classes=args.classes.split(","),
        )
    manifest = out / "manifest.parquet"
    splits = make_manifest(out / "videos", manifest, args.labelled, args.seed)
    timings["data_s"] = time.perf_counter() - t0
    print(f"videos: {splits}", flush=True)

    from rayssl.launch import pretrain, run_training

    reused = json.loads(Path(args.reuse).read_text()) if args.reuse else {}
    columns: dict[str, dict] = dict(reused.get("results", {}))
    pretrained: dict[str, dict] = dict(reused.get("pretrain", {}))
    if "checkpoint" in pretrained:  # an earlier, pace-only run
        pretrained = {"pace": pretrained}
    evals: dict[str, dict] = {}
    cfg = None
    for pretext in args.pretexts.split(","):
        cfg = pretrain_config(pretext, manifest, args, out, tracking, splits["pretrain"])
        t0 = time.perf_counter()
        result = pretrain(cfg) if not args.pretrained else finished_run(args.pretrained)
        timings[f"pretrain_{pretext}_s"] = time.perf_counter() - t0
        metrics = result["metrics"]
        pretrained[pretext + args.tag] = {"metrics": metrics, "checkpoint": result["checkpoint"]}
        acc = {k: v for k, v in metrics.items() if k.startswith("val/") and k.endswith("acc")}
        print(
            f"{pretext}: pre-trained {args.epochs} epochs in "
            f"{timings[f'pretrain_{pretext}_s']:.0f}s: {acc}",
            flush=True,
        )
        suite = _suite(manifest, cfg, args, tracking, out)
        label = f"{pretext}{args.tag} pre-trained"
        t0 = time.perf_counter()
        evals[label] = evaluate_checkpoint(
            suite,
            result["checkpoint"],
            out / label.replace(" ", "_"),
            ROOT / "configs",
            train=run_training,  # the fine-tuning evaluation's training jobs
        )
        timings[f"eval_{pretext}_s"] = time.perf_counter() - t0
        columns[label] = evals[label]["results"]
    if "random init" not in columns and cfg is not None:
        from rayssl.evaluate.suite import baseline_suite

        # same backbone and seed as the pre-training started from
        first = next(iter(evals.values()))
        suite = baseline_suite(_suite(manifest, cfg, args, tracking, out), first["source"])
        t0 = time.perf_counter()
        r = evaluate_checkpoint(
            suite, "random", out / "random_init", ROOT / "configs", train=run_training
        )
        timings["eval_random_s"] = time.perf_counter() - t0
        columns["random init"] = r["results"]
    # pre-trained columns first, the random-init baseline last (deltas are against it)
    order = sorted(k for k in columns if k != "random init") + ["random init"]
    columns = {k: columns[k] for k in order if k in columns}
    table = comparison_table(columns)
    print("\n" + table)
    command = "python benchmarks/transfer_synth.py " + " ".join(sys.argv[1:])
    print(f"\ncommand: {command}\ntimings: {json.dumps({k: round(v) for k, v in timings.items()})}")
    (out / "transfer.json").write_text(
        json.dumps(
            {
                "command": command,
                "splits": splits,
                "pretrain": pretrained,
                "results": columns,
                "timings_s": timings,
            },
            indent=1,
            default=str,
        )
    )
    (out / "transfer.txt").write_text(table + "\n")
    return 0


def finished_run(folder: str) -> dict:
    """A finished pre-training as `pretrain` returns it: its checkpoint folder (the run
    folder's latest) and the held-out metrics its MLflow run logged last."""
    import mlflow

    from rayssl.checkpoint import latest_state_uri, read

    state_uri = latest_state_uri(folder)
    state = read(state_uri)  # plain data: weights refused if anything else
    run_id = str(state.get("extra", {}).get("mlflow_run_id") or "")
    tracking = state.get("config", {}).get("run", {}).get("tracking_uri", "")
    metrics = mlflow.MlflowClient(tracking).get_run(run_id).data.metrics if run_id else {}
    return {"checkpoint": str(Path(state_uri).parent), "metrics": dict(metrics)}


def _suite(manifest: Path, cfg, args: argparse.Namespace, tracking: str, out: Path):
    """The evaluation suite at the pre-training's clip geometry (a ViT's: its layers,
    the attentive probe on its tokens, fine-tuning at its clip size)."""
    vit = cfg.model.backbone.startswith("vit")
    return load_suite(
        ROOT / "configs" / ("eval_vit_debug.yaml" if vit else "eval_debug.yaml"),
        [
            f"data.manifest={manifest}",
            f"data.augment.resize={list(cfg.data.augment.resize)}",
            f"data.augment.crop={list(cfg.data.augment.crop)}",
            "retrieval.query_split=test",
            "retrieval.gallery_split=train",
            "retrieval.ks=[1,5,10]",
            "features.inference.clips=uniform:5",
            "features.inference.torch_threads=2",
            "linear.test_split=test",
            "linear.classifier=logreg",
            "similarity.enabled=false",
            "attention.split=test",
            f"finetune.enabled={'false' if args.skip_finetune else 'true'}",
            "knn.query_split=test",
            "attentive_probe.test_split=test",
            "finetune.overrides=["
            + ", ".join(
                [f"optim.epochs={args.finetune_epochs}", "finetune.test_split=test"]
                + (
                    [f"data.clip_len={cfg.data.clip_len}", '"data.augment.crop=[48,48]"']
                    if vit
                    else []
                )
            )
            + "]",
            f"run.tracking_uri={tracking}",
            f"run.storage_path={out / 'runs'}",
            f"run.seed={args.seed}",
            "run.experiment=transfer",
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
