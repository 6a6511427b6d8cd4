"""Whole-object GET vs the ranged-GET stream for clips of S3 videos (bytes and clips/s).

A small and a large H.264 video (grain so that they do not compress to nothing; a keyframe
every 16 frames) are put on a local moto S3 server (tests/s3server.py). For each, N random
16-frame clips are read through `rayssl.clips.pipeline.read_row_frames` twice: with the
streaming threshold above the object's size (one GET of the whole object per clip, the
old path) and below it (`storage.RangedReader`, 1 MiB ranged GETs). Reported per video
and mode: MiB fetched per clip and clips/s on one core (one process, decode threads 1).

    python benchmarks/s3_stream.py --clips 20 --small-frames 300 --large-frames 2400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rayssl.clips.pipeline import read_row_frames  # noqa: E402
from rayssl.io import storage  # noqa: E402
from rayssl.io.video import VideoAccess, probe_video  # noqa: E402
from rayssl.tools.badcorpus import _encode  # noqa: E402
from tests.s3server import make_bucket, moto_s3_server, put_objects, s3_env  # noqa: E402


def make_video(path: Path, frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    out = []
    for i in range(frames):
        f = np.roll(base, 2 * i, axis=1).astype(np.int16) + rng.integers(-40, 40, base.shape)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    opts = {"g": "16", "keyint_min": "16", "sc_threshold": "0", "crf": "18"}
    path.write_bytes(_encode(out, "mp4", "libx264", opts))


class Counting:
    """Counts the bytes `storage.read_bytes` returns (both modes fetch through it)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.calls = 0
        self._orig = storage.read_bytes

    def __enter__(self):
        def counted(*a, **kw):
            data = self._orig(*a, **kw)
            self.bytes += len(data)
            self.calls += 1
            return data

        storage.read_bytes = counted
        return self

    def __exit__(self, *exc):
        storage.read_bytes = self._orig


def run(args: argparse.Namespace) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp, moto_s3_server() as endpoint, s3_env(endpoint):
        make_bucket(endpoint, "bench")
        options = storage.StorageOptions(endpoint_url=endpoint)
        for name, frames in (("small", args.small_frames), ("large", args.large_frames)):
            path = Path(tmp) / f"{name}.mp4"
            make_video(path, frames, seed=frames)
            size = path.stat().st_size
            put_objects(endpoint, "bench", {f"{name}.mp4": path.read_bytes()})
            probe = probe_video(path)
            row = {
                "uri": f"s3://bench/{name}.mp4",
                "num_frames": probe.num_frames,
                "keyframes": probe.keyframes,
                "keyframe_pts": probe.keyframe_pts,
                "pts_start": probe.pts_start,
                "pts_step": probe.pts_step,
                "size_bytes": size,
            }
            rng = np.random.default_rng(0)
            starts = rng.integers(0, probe.num_frames - 16, args.clips)
            for mode, threshold in (("whole", size), ("stream", 0)):
                access = VideoAccess(
                    stream_threshold_bytes=threshold, stream_block_bytes=args.block_bytes
                )
                with Counting() as counter:
                    t0 = time.perf_counter()
                    for s in starts:
                        read_row_frames(
                            row, np.arange(s, s + 16), (128, 171), options, 1, True, access
                        )
                    seconds = time.perf_counter() - t0
                results.append(
                    {
                        "video": name,
                        "frames": probe.num_frames,
                        "size_mib": round(size / 2**20, 2),
                        "mode": mode,
                        "mib_per_clip": round(counter.bytes / args.clips / 2**20, 2),
                        "gets_per_clip": round(counter.calls / args.clips, 1),
                        "clips_per_s": round(args.clips / seconds, 1),
                    }
                )
                print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=20)
    p.add_argument("--small-frames", type=int, default=300)
    p.add_argument("--large-frames", type=int, default=2400)
    p.add_argument("--block-bytes", type=int, default=1 << 20)
    run(p.parse_args())


if __name__ == "__main__":
    main()
