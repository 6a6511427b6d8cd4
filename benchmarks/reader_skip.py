"""Frame-exact reader with and without dropping unused non-reference frames, clips/s per core.

Both methods read the same random 16-frame pace clips (pace drawn from --paces, a start
so the clip fits, frames start + i * pace) of the same files with
`rayssl.io.video.read_frames`, the probe's keyframes and pts grid, resized to 128x171
as the pipeline does, one decoder thread:

    count   skip_nonref=False: seek to the keyframe before the clip, decode every frame
            up to the clip's last, counting (today's path; what an old manifest gets)
    skip    skip_nonref=True: the same, but packets of frames the clip does not use go
            to the decoder with skip_frame=NONREF, which drops those nothing else is
            predicted from (B-frames); frames are named by pts

Throughput is clips per CPU-second of this process (= per core); methods run interleaved
in rounds (the order alternating) and the fastest round of each is kept. Videos are
generated UCF101-like (240x320, 25 fps, --frames long): MPEG-4 part 2 in AVI with
B-frames (the UCF101 format, a keyframe every 12 frames), H.264 MP4 at the encoder's
default GOP (x264: B-frames, some of them references), and MPEG-4 AVI without B-frames
(nothing to drop: the cost of the new path alone).

Besides the timing, the profile columns count per clip the frames the decoder decodes
on each path (from the keyframe before the clip through its last frame; a frame is
"droppable" when a decode of the whole file with skip_frame=NONREF leaves it out), by
pace. Every clip of the first round is checked against a sequential decode.

    .venv/bin/python benchmarks/reader_skip.py [--videos 4] [--clips 120] [--rounds 5]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from bisect import bisect_right  # noqa: E402
from pathlib import Path  # noqa: E402

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.io.video import VideoProbe, probe_video, read_all_frames, read_frames  # noqa: E402
from rayssl.tools.synthetic import generate_dataset  # noqa: E402

cv2.setNumThreads(1)
SIZE = (128, 171)
CODECS = {
    "mpeg4-bframes": ("mpeg4-bframes", 12),
    "h264": ("h264", None),
    "mpeg4-no-b": ("mpeg4", 12),
}
METHODS = ("count", "skip")


def _droppable(path: Path, probe: VideoProbe) -> set[int]:
    """Display indices of the frames a decode with skip_frame=NONREF leaves out."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.skip_frame = "NONREF"
        kept = {(int(f.pts) - probe.pts_start) // probe.pts_step for f in c.decode(s)}
    return set(range(probe.num_frames)) - kept


def _decoded(idx: np.ndarray, probe: VideoProbe, drop: set[int]) -> tuple[int, int]:
    """Frames decoded for one clip by the count and the skip path (one segment: a clip
    spans < SEEK_MIN_SKIP frames past a keyframe or is read in one pass)."""
    wanted = set(int(i) for i in idx)
    first, last = min(wanted), max(wanted)
    k = bisect_right(probe.keyframes, first) - 1
    start = probe.keyframes[k] if k > 0 else 0
    span = range(start, last + 1)
    return len(span), sum(1 for i in span if i in wanted or i not in drop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4, help="generated videos per codec")
    ap.add_argument("--frames", type=int, default=180, help="frames per video (UCF101: ~186)")
    ap.add_argument("--clips", type=int, default=120, help="timed clips per method and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paces", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--codecs", nargs="+", default=list(CODECS), choices=list(CODECS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    results: dict[str, dict] = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.codecs:
            codec, gop = CODECS[name]
            root = Path(tmp) / name
            synth = generate_dataset(
                root,
                num_videos=args.videos,
                num_frames=args.frames,
                height=240,
                width=320,
                codec=codec,
                gop=gop,
                seed=1,
            )
            paths = [Path(v.path) for v in synth]
            probes = [probe_video(p) for p in paths]
            assert all(p.pts_step > 0 for p in probes), "no pts grid: nothing to compare"
            drops = [_droppable(p, pr) for p, pr in zip(paths, probes, strict=True)]
            work = []
            for k in range(args.clips):
                v = k % len(paths)
                pace = int(rng.choice(args.paces))
                start = int(rng.integers(probes[v].num_frames - 15 * pace))
                work.append((v, pace, start + np.arange(16) * pace))

            def read(
                v: int, idx: np.ndarray, skip: bool, size=SIZE, paths=paths, probes=probes
            ) -> np.ndarray:
                pr = probes[v]
                return read_frames(
                    paths[v],
                    idx,
                    size=size,
                    keyframes=pr.keyframes,
                    keyframe_pts=pr.keyframe_pts,
                    pts_start=pr.pts_start,
                    pts_step=pr.pts_step,
                    skip_nonref=skip,
                )

            refs = [read_all_frames(p) for p in paths]
            for v, _, idx in work:
                assert np.array_equal(read(v, idx, True, None), refs[v][idx]), (name, idx)
            del refs

            best: dict[str, float] = {}
            for r in range(args.rounds):
                for m in METHODS if r % 2 == 0 else METHODS[::-1]:
                    t0 = time.process_time()
                    for v, _, idx in work:
                        read(v, idx, m == "skip")
                    best[m] = max(best.get(m, 0.0), len(work) / (time.process_time() - t0))
            by_pace: dict[int, list[tuple[int, int]]] = {}
            for v, pace, idx in work:
                by_pace.setdefault(pace, []).append(_decoded(idx, probes[v], drops[v]))
            profile = {
                p: {
                    "count": float(np.mean([a for a, _ in d])),
                    "skip": float(np.mean([b for _, b in d])),
                }
                for p, d in sorted(by_pace.items())
            }
            shares = [len(d) / pr.num_frames for d, pr in zip(drops, probes, strict=True)]
            drop_share = np.mean(shares)
            results[name] = {"clips_per_core_s": best, "decoded_frames_per_clip": profile}
            print(
                f"{name}: {len(paths)} videos x {args.frames} frames 240x320, "
                f"{len(probes[0].keyframes)} keyframes/video, {drop_share:.0%} of frames "
                f"non-reference; {len(work)} clips, paces {args.paces}"
            )
            gain = best["skip"] / best["count"]
            print(f"  count {best['count']:7.1f} clips/s per core")
            print(f"  skip  {best['skip']:7.1f} clips/s per core   x{gain:.2f}")
            for p, d in profile.items():
                print(f"  pace {p}: frames decoded per clip {d['count']:5.1f} -> {d['skip']:5.1f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
