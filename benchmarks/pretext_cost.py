"""CPU cost per training clip: pace vs spatio-temporal statistics, stage by stage.

Every clip goes through exactly what a Ray Data task runs for it (`sample_row`: plan,
frame-exact decode with resize to 128x171, crop 112, flip, the pretext's targets), in
one process with every library held to one thread, so the figures are CPU-seconds per
clip on one core. The stages are then timed separately on the same clips:

    decode        read_frames of the planned indices (seek + decode + resize)
    augment       crop / flip / colour jitter (pace: the thesis's per-frame jitter;
                  statistics: none, its appearance labels are the clip's colours)
    flow:<algo>   optical flow between the 15 consecutive frame pairs of the 112x112 clip
    labels        the 27 statistics labels from the clip and its flow

    pace          sample_row with the pace pretext (decode + augment + label)
    statistics    sample_row with the statistics pretext (decode + augment + flow + labels)

The videos are generated (`rayssl.tools.synthetic`, H.264, 240x320 unless --size), or
--data gives a folder of real videos. TV-L1 is timed on --tvl1-clips clips only (it
costs ~0.1-0.5 s per frame pair on one core).

    python benchmarks/pretext_cost.py
    python benchmarks/pretext_cost.py --clips 100 --json /tmp/cost.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics as stats  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402

from rayssl.clips.flow import available_flow_algorithms, compute_flow  # noqa: E402
from rayssl.clips.pipeline import (  # noqa: E402
    SamplerSpec,
    augment_config,
    epoch_rows,
    read_row_frames,
    sample_row,
    usable_videos,
)
from rayssl.clips.sampling import clip_rng  # noqa: E402
from rayssl.clips.statistics import statistics_labels  # noqa: E402
from rayssl.clips.transforms import augment_clip  # noqa: E402
from rayssl.config import load_config  # noqa: E402
from rayssl.io.manifest import build_manifest, list_entries  # noqa: E402
from rayssl.pretext import build_pretext  # noqa: E402
from rayssl.tools.synthetic import generate_dataset  # noqa: E402

cv2.setNumThreads(1)


def cpu_ms(fn: Callable[[Any], Any], items: list[Any]) -> tuple[float, list[Any]]:
    """Median CPU milliseconds of fn per item, and the outputs."""
    times, outs = [], []
    for item in items:
        t0 = time.process_time()
        outs.append(fn(item))
        times.append(1000 * (time.process_time() - t0))
    return stats.median(times), outs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=60)
    parser.add_argument("--tvl1-clips", type=int, default=4)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--data", type=Path, help="a folder-per-class folder of real videos")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "videos"
            generate_dataset(
                root,
                num_videos=args.videos,
                num_frames=args.frames,
                height=args.size[0],
                width=args.size[1],
                codec="h264",
                num_classes=4,
                seed=0,
            )
        table = build_manifest(list_entries(str(root), "folder"), use_ray=False)
        videos = usable_videos(table)
        per_video = -(-args.clips // videos.num_rows)
        rows = epoch_rows(videos, per_video, 0, 0).slice(0, args.clips).to_pylist()
        result = measure(rows, args)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def measure(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    pace_cfg = load_config(None, [])  # thesis pace settings: per-frame jitter p=0.8
    stats_cfg = load_config(None, ["pretext.name=statistics", "data.augment.jitter_prob=0"])
    out: dict[str, Any] = {"clips": len(rows), "ms_per_clip": {}}
    ms = out["ms_per_clip"]
    specs = {}
    for name, cfg in (("pace", pace_cfg), ("statistics", stats_cfg)):
        pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
        specs[name] = SamplerSpec(pretext, cfg.data.augment, 0, True)
        sample_row(rows[0], specs[name])  # warm-up: imports, flow objects
        ms[name], samples = cpu_ms(lambda r, s=specs[name]: sample_row(r, s), rows)
        assert all(bool(x["valid"]) for x in samples), "a benchmark clip failed to decode"

    spec = specs["statistics"]

    def decode(row):
        rng = clip_rng(0, str(row["video_id"]), 0, int(row["draw"]))
        plan = spec.pretext.plan(int(row["num_frames"]), rng)
        return read_row_frames(row, plan.clips[0], spec.decode_size, None, 1), rng

    ms["decode"], decoded = cpu_ms(decode, rows)
    pace_aug = augment_config(pace_cfg.data.augment)
    stats_aug = augment_config(stats_cfg.data.augment)
    ms["augment:pace"], _ = cpu_ms(lambda d: augment_clip(d[0], pace_aug, d[1]), decoded)
    ms["augment:statistics"], clips = cpu_ms(lambda d: augment_clip(d[0], stats_aug, d[1]), decoded)
    flows = {}
    for algo in available_flow_algorithms():
        subset = clips if algo != "tvl1" else clips[: args.tvl1_clips]
        ms[f"flow:{algo}"], flows[algo] = cpu_ms(lambda c, a=algo: compute_flow(c, a), subset)
    ms["labels"], _ = cpu_ms(
        lambda cf: statistics_labels(cf[0], cf[1]), list(zip(clips, flows["dis"], strict=True))
    )
    out["ratio_statistics_to_pace"] = ms["statistics"] / ms["pace"]
    out["clip_shape"] = list(clips[0].shape)
    out["source_size"] = [int(rows[0]["height"]), int(rows[0]["width"])]
    return out


def print_table(result: dict[str, Any]) -> None:
    print(
        f"CPU ms per clip (median of {result['clips']} clips, one thread; "
        f"source {result['source_size'][0]}x{result['source_size'][1]}, "
        f"clip {'x'.join(map(str, result['clip_shape']))})"
    )
    for name, value in result["ms_per_clip"].items():
        print(f"  {name:<20} {value:9.1f}")
    print(f"  statistics / pace    {result['ratio_statistics_to_pace']:9.2f}x")


if __name__ == "__main__":
    main()
