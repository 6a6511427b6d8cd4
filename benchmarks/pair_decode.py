"""Contrastive pairs from one decode vs two independent samples, in clips per core.

A pace + contrastive sample is two clips of one video at two paces. Methods, all on the
same pairs (`pace_contrastive`'s own plan: clip k of video v is
`plan(num_frames, clip_rng(seed, video_id, 0, k))`), decoding at 128x171, one thread:

    two-reads      read_frames(clip 1) and read_frames(clip 2): two opens, two seeks
                   (what two independent pace samples of the video cost)
    one-pass       read_frames(clip 1 + clip 2, gap_seek=False): one open, decode from
                   the keyframe before the first frame through the last (the union once)
    one-open-seek  read_frames(clip 1 + clip 2): one open; where a keyframe lies between
                   the two clips the reader seeks over the gap (the default)
    sample-pair    rayssl.clips.pipeline.sample_row with the pace_contrastive task: the
                   decode above + crop 112, flip, per-frame jitter of both clips
    sample-2x      two sample_row calls with the pace task (two independent samples of
                   the same videos; augmentation as above)

Throughput is clips per CPU-second of this process (= per core, single-threaded); each
pair counts as two clips. Methods run interleaved in rounds; the fastest round of each
is kept. Videos are generated (UCF101-like: 240x320, 25 fps, --frames long) in the
codecs given: MPEG-4 part 2 in AVI (the UCF101 format, a keyframe every 12 frames) and
H.264 at the encoder's default GOP (250: one keyframe per video of 250 frames).

    .venv/bin/python benchmarks/pair_decode.py [--videos 6] [--pairs 60] [--frames 250]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.clips.pipeline import SamplerSpec, sample_row  # noqa: E402
from rayssl.clips.sampling import clip_rng  # noqa: E402
from rayssl.config import AugmentSettings, load_config  # noqa: E402
from rayssl.io.manifest import build_manifest, list_entries  # noqa: E402
from rayssl.io.video import read_frames  # noqa: E402
from rayssl.pretext import build_pretext  # noqa: E402
from rayssl.tools.synthetic import generate_dataset  # noqa: E402

SIZE = (128, 171)
CODECS = {"mpeg4": ("mpeg4-bframes", 12), "h264": ("h264", None)}
METHODS = ("two-reads", "one-pass", "one-open-seek", "sample-pair", "sample-2x")


def _read(row: dict, idx: np.ndarray, gap_seek: bool = True) -> np.ndarray:
    return read_frames(
        row["uri"],
        idx,
        size=SIZE,
        keyframes=row["keyframes"],
        keyframe_pts=row["keyframe_pts"],
        gap_seek=gap_seek,
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6, help="generated videos per codec")
    ap.add_argument("--frames", type=int, default=250, help="frames per video")
    ap.add_argument("--pairs", type=int, default=60, help="timed pairs per method and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    cfg = load_config(None, ["pretext.name=pace_contrastive"])
    pair_task = build_pretext(cfg.pretext, 16)
    pace_task = build_pretext(load_config(None, []).pretext, 16)
    augment = AugmentSettings(resize=list(SIZE), crop=[112, 112], per_frame_jitter=True)
    pair_spec = SamplerSpec(pretext=pair_task, settings=augment, seed=0, train=True)
    pace_spec = SamplerSpec(pretext=pace_task, settings=augment, seed=0, train=True)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.codecs:
            codec, gop = CODECS[name]
            root = Path(tmp) / name
            generate_dataset(
                root,
                num_videos=args.videos,
                num_frames=args.frames,
                height=240,
                width=320,
                codec=codec,
                gop=gop,
                seed=1,
            )
            rows = build_manifest(list_entries(str(root), "folder"), use_ray=False).to_pylist()
            work = []
            for k in range(args.pairs):
                row = rows[k % len(rows)]
                rng = clip_rng(0, row["video_id"], 0, k)
                plan = pair_task.plan(int(row["num_frames"]), rng)
                work.append((dict(row, epoch=0, draw=k), plan.clips))
            gaps = [abs(int(c[1][0]) - int(c[0][0])) for _, c in work]
            best: dict[str, float] = {}
            for r in range(args.rounds):
                for m in METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]:
                    t0 = time.process_time()
                    for k, (row, (c1, c2)) in enumerate(work):
                        if m == "two-reads":
                            _read(row, c1), _read(row, c2)
                        elif m == "one-pass":
                            _read(row, np.concatenate([c1, c2]), gap_seek=False)
                        elif m == "one-open-seek":
                            _read(row, np.concatenate([c1, c2]))
                        elif m == "sample-pair":
                            assert sample_row(row, pair_spec)["valid"]
                        else:
                            for d in (2 * k, 2 * k + 1):
                                assert sample_row(dict(row, draw=d), pace_spec)["valid"]
                    cps = 2 * len(work) / (time.process_time() - t0)
                    best[m] = max(best.get(m, 0.0), cps)
            results[name] = best
            print(
                f"{name}: {len(rows)} videos x {args.frames} frames, keyframes "
                f"{len(rows[0]['keyframes'])}/video, {len(work)} pairs, median gap between "
                f"the clips' starts {np.median(gaps):.0f} frames"
            )
            for m in METHODS:
                base = best["sample-2x" if m.startswith("sample") else "two-reads"]
                print(f"  {m:14s} {best[m]:7.1f} clips/s per core   x{best[m] / base:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, "clips_per_core_s": results},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
