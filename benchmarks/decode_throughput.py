"""Clip decoding throughput per core: rayssl's reader vs decord, cv2 read-all and JPEG frames.

Every method decodes the same random 16-frame pace clips (pace drawn from {1, 2, 3, 4}, a
start so the clip fits, frames start + i * pace) of the same files, in one process, with
every library held to one thread, and returns (16, 128, 171, 3) RGB uint8:

    ours-decode  rayssl.io.video.read_frames with the probe's keyframes (seek to the
                 keyframe before the clip, decode forward, resize 171x128 in swscale)
    ours-full    rayssl.clips.pipeline.sample_row: pace plan + the decode above + crop 112,
                 flip, per-frame colour jitter (output (16, 112, 112, 3))
    decord       (a) decord.VideoReader(path, width=171, height=128, num_threads=1) per clip,
                 get_batch(indices), seek(0), delete (resize inside the decoder, as ours)
    cv2-read-all (b) cv2.VideoCapture, read every frame, pick the 16 (the VCOP reference
                 code's pattern), resize the picked frames to 171x128
    jpeg         (c) frames pre-extracted as JPEG files at native size (cv2.imwrite, quality
                 95, one folder per video, frame_00001.jpg = frame 0), 16 cv2.imread + resize

The clip list is what the pipeline itself would draw: clip k of video v is
`pretext.plan(num_frames, clip_rng(seed, video_id, 0, k))`, so `sample_row` with draw k
decodes exactly the frames the other methods decode.

Throughput is clips per CPU-second of this process (= per core when single-threaded;
a library that used more threads would pay for them here) and clips per wall-second;
cpu/wall above 1.0 means a library used more than one thread, well below 1.0 that other
processes competed for the cores. Methods run interleaved in rounds (the order rotating)
so that background load hits all of them alike; --repeats N keeps the fastest of N runs
of every round. Files are read from the page cache: the numbers are decode cost, not
storage I/O.

Memory: cv2 read-all allocates ~35 MB of frames per 150-frame clip. With glibc's default
(dynamic) thresholds that memory goes back to the kernel after every clip and is faulted
in again, which costs that baseline ~40% (the `sys` column, the kernel's share of CPU
time) and varies with whatever the process allocated before. By default (--malloc reuse)
the benchmark sets glibc's mmap and trim thresholds high so freed memory is reused: every
method runs at its best and the numbers are stable. --malloc default keeps glibc's
behaviour.

Frame-exactness: for the first --check-clips clips, ours (size=None), decord and cv2 at
native size are compared to a sequential decode (rayssl.io.video.read_all_frames). A
frame is right when the reference frame it is closest to (mean absolute difference) is
the one asked for; a clip is wrong when any of its frames is.

    python benchmarks/decode_throughput.py
    python benchmarks/decode_throughput.py --clips 50 --json /tmp/decode.json
    python benchmarks/decode_throughput.py --data /data/ucf101_mp4 --codec-name ucf-h264
"""

from __future__ import annotations

import os

# One thread per library: set before numpy / OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import ctypes  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from bisect import bisect_right  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import av  # noqa: E402
import cv2  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.clips.pipeline import SamplerSpec, sample_row  # noqa: E402
from rayssl.clips.sampling import clip_rng  # noqa: E402
from rayssl.config import AugmentSettings, Config  # noqa: E402
from rayssl.io.video import (  # noqa: E402
    VideoError,
    VideoProbe,
    probe_video,
    read_all_frames,
    read_frames,
)
from rayssl.pretext import Pretext, build_pretext  # noqa: E402
from rayssl.tools.synthetic import generate_dataset  # noqa: E402

CLIP_LEN = 16
SIZE = (128, 171)  # (height, width) every method resizes to
CODECS = ("mpeg4-bframes", "h264")
VIDEO_EXTENSIONS = {".avi", ".mp4", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv"}
METHODS = ("ours-decode", "ours-full", "decord", "cv2-read-all", "jpeg")
BASELINES = {"decord": "a", "cv2-read-all": "b", "jpeg": "c"}
TARGETS = (
    "ours-decode is frame-exact (0 wrong clips)",
    "ours-decode >= decord (a) per core",
    "ours-decode >= 3x cv2 read-all (b) per core",
)


@dataclass
class Video:
    """A video file, its probe (as the manifest stores it) and its JPEG frame folder."""

    path: Path
    video_id: str
    probe: VideoProbe
    jpeg_dir: Path | None = None
    video_bytes: int = 0
    jpeg_bytes: int = 0
    jpeg_disk_bytes: int = 0


@dataclass(frozen=True)
class Clip:
    """One clip to decode: draw `draw` of `video`."""

    video: Video
    indices: np.ndarray  # (CLIP_LEN,) int64
    draw: int


@dataclass
class Timing:
    """Accumulated cost of one method."""

    clips: int = 0
    errors: int = 0
    cpu_s: float = 0.0  # user + system
    sys_s: float = 0.0
    wall_s: float = 0.0
    minor_faults: int = 0
    first_error: str = ""

    @property
    def per_cpu_s(self) -> float:
        return self.clips / self.cpu_s if self.cpu_s > 0 else float("nan")

    @property
    def per_wall_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s > 0 else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=200, help="timed clips per method")
    parser.add_argument("--warmup", type=int, default=5, help="untimed clips per method first")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the clips")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run each round N times, keep the fastest"
    )
    parser.add_argument("--check-clips", type=int, default=40, help="clips checked for exactness")
    parser.add_argument("--videos", type=int, default=8, help="generated videos per codec")
    parser.add_argument("--frames", type=int, default=150, help="frames per generated video")
    parser.add_argument("--codecs", nargs="+", default=list(CODECS), help="generated codecs")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--data", type=Path, help="benchmark this folder of videos instead")
    parser.add_argument("--codec-name", help="label of --data in the table (default its name)")
    parser.add_argument("--workdir", type=Path, help="where data and JPEGs go (kept)")
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--malloc",
        choices=("reuse", "default"),
        default="reuse",
        help="reuse: keep freed memory in the process (glibc mallopt); default: glibc's own",
    )
    parser.add_argument("--profile", type=int, default=0, help="cProfile N ours-decode clips")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if min(args.clips, args.rounds, args.repeats) < 1 or min(args.warmup, args.check_clips) < 0:
        parser.error("--clips, --rounds, --repeats must be >= 1, --warmup, --check-clips >= 0")
    if args.codec_name and not args.data:
        parser.error("--codec-name needs --data")
    return args


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds so that freed buffers are reused instead of
    returned to the kernel (no page faults when the next clip allocates them again)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok_mmap = libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum on 64-bit
    ok_trim = libc.mallopt(m_trim_threshold, 1 << 30)
    return bool(ok_mmap and ok_trim)


# ----------------------------------------------------------------------------- data


def find_videos(root: Path) -> list[Path]:
    """Video files under `root`, recursively, in a stable order."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS
    )


def load_videos(root: Path, paths: list[Path]) -> list[Video]:
    """Probe every file once (as the manifest does); skip the ones too short or broken."""
    videos = []
    for path in paths:
        try:
            probe = probe_video(path, threads=1)
        except VideoError as e:
            print(f"  skip {path}: {e}")
            continue
        if probe.num_frames < CLIP_LEN:
            print(f"  skip {path}: {probe.num_frames} frames < {CLIP_LEN}")
            continue
        video_id = path.relative_to(root).as_posix()
        videos.append(Video(path, video_id, probe, video_bytes=path.stat().st_size))
    return videos


def extract_jpegs(videos: list[Video], out_dir: Path, quality: int) -> None:
    """Write every frame of every video as frame_%05d.jpg (1-based, like ffmpeg) at
    native size, one folder per video, and record the folder's bytes."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    for video in videos:
        folder = out_dir / video.video_id.replace("/", "__")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, frame in enumerate(read_all_frames(video.path)):
            path = folder / f"frame_{i + 1:05d}.jpg"
            if not cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params):
                raise RuntimeError(f"cv2.imwrite failed for {path}")
        stats = [p.stat() for p in folder.iterdir()]
        video.jpeg_dir = folder
        video.jpeg_bytes = sum(s.st_size for s in stats)
        video.jpeg_disk_bytes = sum(s.st_blocks * 512 for s in stats)


def build_clips(videos: list[Video], n: int, pretext: Pretext, seed: int) -> list[Clip]:
    """n clips, each from a random video, indices as `sample_row` with draw k plans them."""
    rng = np.random.default_rng([seed, 1])
    clips = []
    for k in range(n):
        video = videos[int(rng.integers(len(videos)))]
        plan = pretext.plan(video.probe.num_frames, clip_rng(seed, video.video_id, 0, k))
        if plan is None:  # cannot happen for num_frames >= CLIP_LEN
            raise RuntimeError(f"no clip fits {video.path}")
        clips.append(Clip(video, plan.clips[0].astype(np.int64), k))
    return clips


def frames_decoded(method: str, clip: Clip) -> float:
    """Frames a method decodes for a clip (NaN where the library does not say)."""
    probe = clip.video.probe
    if method in ("ours-decode", "ours-full"):  # from the keyframe before the clip, as read_frames
        first, last = int(clip.indices.min()), int(clip.indices.max())
        k = bisect_right(probe.keyframes, first) - 1 if probe.keyframe_pts else -1
        return last - (probe.keyframes[k] if k > 0 else 0) + 1
    if method == "cv2-read-all":
        return probe.num_frames
    if method == "jpeg":
        return len(np.unique(clip.indices))
    return float("nan")


# -------------------------------------------------------------------------- methods


def ours_decode(clip: Clip, size: tuple[int, int] | None = SIZE) -> np.ndarray:
    probe = clip.video.probe
    return read_frames(
        clip.video.path,
        clip.indices,
        size=size,
        keyframes=probe.keyframes,
        keyframe_pts=probe.keyframe_pts,
        threads=1,
    )


def sample_row_input(clip: Clip) -> dict[str, Any]:
    probe = clip.video.probe
    return {
        "uri": str(clip.video.path),
        "video_id": clip.video.video_id,
        "num_frames": probe.num_frames,
        "keyframes": probe.keyframes,
        "keyframe_pts": probe.keyframe_pts,
        "height": probe.height,
        "width": probe.width,
        "epoch": 0,
        "draw": clip.draw,
    }


def make_ours_full(seed: int) -> tuple[Callable[[Clip], np.ndarray], SamplerSpec]:
    """`sample_row` as a clip method (the default pace pretext and augmentation)."""
    pretext = build_pretext(Config().pretext, clip_len=CLIP_LEN)
    spec = SamplerSpec(pretext=pretext, settings=AugmentSettings(), seed=seed)

    def ours_full(clip: Clip) -> np.ndarray:
        sample = sample_row(sample_row_input(clip), spec)
        if not sample["valid"]:
            raise RuntimeError(f"sample_row skipped the clip: {sample['skip_reason']}")
        return sample["clip"]

    return ours_full, spec


def decord_clip(clip: Clip, size: tuple[int, int] | None = SIZE) -> np.ndarray:
    height, width = size if size else (-1, -1)
    vr = decord.VideoReader(str(clip.video.path), width=width, height=height, num_threads=1)
    frames = vr.get_batch([int(i) for i in clip.indices]).asnumpy()
    vr.seek(0)
    del vr
    return frames


def cv2_read_all(clip: Clip, size: tuple[int, int] | None = SIZE) -> np.ndarray:
    cap = cv2.VideoCapture(str(clip.video.path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    frames = []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
    finally:
        cap.release()
    if int(clip.indices.max()) >= len(frames):
        raise IndexError(f"cv2 read {len(frames)} frames, clip needs {int(clip.indices.max())}")
    return np.stack([_bgr_to_rgb(frames[int(i)], size) for i in clip.indices])


def jpeg_clip(clip: Clip, size: tuple[int, int] | None = SIZE) -> np.ndarray:
    folder = clip.video.jpeg_dir
    out = []
    for i in clip.indices:
        frame = cv2.imread(str(folder / f"frame_{int(i) + 1:05d}.jpg"), cv2.IMREAD_COLOR)
        if frame is None:
            raise FileNotFoundError(f"{folder}: no frame {int(i)}")
        out.append(_bgr_to_rgb(frame, size))
    return np.stack(out)


def _bgr_to_rgb(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None:
        frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------- measurement


def time_methods(
    methods: dict[str, Callable[[Clip], np.ndarray]],
    clips: list[Clip],
    warmup: list[Clip],
    rounds: int,
    repeats: int = 1,
) -> dict[str, Timing]:
    """Time every method on all clips, in interleaved rounds with a rotating order.

    With repeats > 1 every (method, round) chunk runs that many times and the repeat with
    the least CPU time counts (filters bursts of load from other processes).
    """
    timings = {name: Timing() for name in methods}
    for fn in methods.values():
        for clip in warmup:
            fn(clip)
    names = list(methods)
    for r, chunk in enumerate(np.array_split(np.arange(len(clips)), rounds)):
        best: dict[str, tuple[float, float, float, int]] = {}
        for _ in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                fn, timing = methods[name], timings[name]
                usage0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
                for k in chunk:
                    try:
                        fn(clips[k])
                    except Exception as e:  # a baseline failing on a file is a result too
                        timing.errors += 1
                        timing.first_error = timing.first_error or f"{type(e).__name__}: {e}"
                wall = time.perf_counter() - wall0
                usage = resource.getrusage(resource.RUSAGE_SELF)
                sys_s = usage.ru_stime - usage0.ru_stime
                cpu = usage.ru_utime - usage0.ru_utime + sys_s
                run = (cpu, sys_s, wall, usage.ru_minflt - usage0.ru_minflt)
                best[name] = min(best.get(name, run), run)
        for name, (cpu, sys_s, wall, faults) in best.items():
            timing = timings[name]
            timing.cpu_s += cpu
            timing.sys_s += sys_s
            timing.wall_s += wall
            timing.minor_faults += faults
            timing.clips += len(chunk)
    for timing in timings.values():
        timing.errors //= repeats
        timing.first_error = timing.first_error[:200]
    return timings


def match_frame(
    frame: np.ndarray, want: int, reference: np.ndarray, coarse: np.ndarray
) -> tuple[int, bool]:
    """(index of the reference frame closest to `frame`, bit-exact to frame `want`).

    A bit-exact frame or one tied for closest with frame `want` matches `want`; closeness is
    the mean absolute difference on `coarse`, the reference subsampled 4x as int16.
    """
    if frame.shape != reference.shape[1:]:
        return -1, False
    if np.array_equal(frame, reference[want]):
        return want, True
    mad = np.abs(coarse - frame[::4, ::4]).mean(axis=(1, 2, 3))
    return (want if mad[want] <= mad.min() else int(mad.argmin())), False


def check_exactness(
    methods: dict[str, Callable[..., np.ndarray]], clips: list[Clip], spec: SamplerSpec | None
) -> dict[str, dict[str, Any]]:
    """Fraction of clips (and frames) with wrong frames, per method, at native size."""
    stats = {
        name: {"clips": 0, "wrong_clips": 0, "frames": 0, "wrong_frames": 0, "exact": 0}
        for name in methods
    }
    example: dict[str, str] = {}
    by_video: dict[Path, list[Clip]] = {}
    for clip in clips:
        by_video.setdefault(clip.video.path, []).append(clip)
    for path, video_clips in by_video.items():
        reference = read_all_frames(path)
        coarse = reference[:, ::4, ::4].astype(np.int16)
        for clip in video_clips:
            if spec is not None:  # sample_row must plan the very frames the clip list holds
                got = sample_row(sample_row_input(clip), spec)["indices"]
                if not np.array_equal(got, clip.indices):
                    raise RuntimeError(f"sample_row planned {got}, clip list has {clip.indices}")
            want = [int(i) for i in clip.indices]
            for name, fn in methods.items():
                s = stats[name]
                try:
                    frames = fn(clip, size=None)
                    results = [
                        match_frame(f, i, reference, coarse)
                        for f, i in zip(frames, want, strict=True)
                    ]
                except Exception as e:
                    results = [(-1, False)] * CLIP_LEN
                    example.setdefault(name, f"{type(e).__name__}: {e}"[:200])
                got = [matched for matched, _ in results]
                wrong = sum(g != w for g, w in zip(got, want, strict=True))
                s["clips"] += 1
                s["frames"] += CLIP_LEN
                s["wrong_frames"] += wrong
                s["wrong_clips"] += wrong > 0
                s["exact"] += sum(exact for _, exact in results)
                if wrong and name not in example:
                    example[name] = f"{clip.video.video_id}: asked {want}, got {got}"
    for name, s in stats.items():
        s["wrong_clip_frac"] = s["wrong_clips"] / s["clips"] if s["clips"] else float("nan")
        s["wrong_frame_frac"] = s["wrong_frames"] / s["frames"] if s["frames"] else float("nan")
        s["bit_exact_frac"] = s["exact"] / s["frames"] if s["frames"] else float("nan")
        if name in example:
            s["example"] = example[name]
    return stats


def profile_ours(clips: list[Clip], n: int, top: int = 12) -> str:
    """cProfile (CPU time) of ours-decode on the first n clips, by own and cumulative time."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for clip in clips[:n]:
        ours_decode(clip)
    profiler.disable()
    out = []
    for key in ("tottime", "cumulative"):
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(key).print_stats(top)
        text = stream.getvalue()
        text = text[max(text.find("   ncalls"), 0) :].rstrip()  # drop pstats' header lines
        out.append(f"--- cProfile (CPU s) of ours-decode on {min(n, len(clips))} clips, by {key}")
        out.append(text)
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------- reporting


def _ratio(a: float, b: float) -> float:
    return a / b if b and b == b and a == a else float("nan")


def _fmt(x: float, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if x != x else f"{x:{spec}}{suffix}"


def result_rows(
    name: str,
    timings: dict[str, Timing],
    exactness: dict[str, dict[str, Any]],
    videos: list[Video],
    clips: list[Clip],
) -> list[dict[str, Any]]:
    base = {m: timings[m].per_cpu_s if m in timings else float("nan") for m in BASELINES}
    video_bytes = sum(v.video_bytes for v in videos)
    rows = []
    for method, t in timings.items():
        row: dict[str, Any] = {
            "codec": name,
            "method": method,
            "clips": t.clips,
            "errors": t.errors,
            "cpu_s": round(t.cpu_s, 4),
            "wall_s": round(t.wall_s, 4),
            "clips_per_cpu_s": t.per_cpu_s,
            "clips_per_wall_s": t.per_wall_s,
            "cpu_per_wall": _ratio(t.cpu_s, t.wall_s),
            "sys_share": _ratio(t.sys_s, t.cpu_s),
            "minor_faults_per_clip": _ratio(t.minor_faults, t.clips),
            "frames_decoded_per_clip": float(np.mean([frames_decoded(method, c) for c in clips])),
        }
        for b, letter in BASELINES.items():
            row[f"vs_{letter}_{b}"] = _ratio(t.per_cpu_s, base[b])
        if method in exactness:
            row.update({f"check_{k}": v for k, v in exactness[method].items()})
        if method == "jpeg":
            row["jpeg_bytes"] = sum(v.jpeg_bytes for v in videos)
            row["jpeg_disk_bytes"] = sum(v.jpeg_disk_bytes for v in videos)
            row["video_bytes"] = video_bytes
            row["jpeg_vs_video_bytes"] = _ratio(row["jpeg_bytes"], video_bytes)
        if t.first_error:
            row["first_error"] = t.first_error
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'codec':<14} {'method':<13} {'clips/s/core':>12} {'wall clips/s':>12} {'cpu/wall':>8} "
        f"{'sys':>4} "
        f"{'vs decord':>9} {'vs cv2-all':>10} {'vs jpeg':>8} {'decoded/clip':>12} "
        f"{'wrong clips':>15} {'bytes vs video':>14}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        wrong = "-"
        if "check_clips" in r:
            wrong = (
                f"{r['check_wrong_clip_frac']:.0%} ({r['check_wrong_clips']}/{r['check_clips']})"
            )
        size = _fmt(r.get("jpeg_vs_video_bytes", float("nan")), ".1f", "x")
        errors = f"  [{r['errors']} errors: {r['first_error']}]" if r["errors"] else ""
        print(
            f"{r['codec']:<14} {r['method']:<13} {r['clips_per_cpu_s']:>12.1f} "
            f"{r['clips_per_wall_s']:>12.1f} {_fmt(r['cpu_per_wall']):>8} "
            f"{_fmt(r['sys_share'] * 100, '.0f', '%'):>4} "
            f"{_fmt(r['vs_a_decord'], '.2f', 'x'):>9} "
            f"{_fmt(r['vs_b_cv2-read-all'], '.2f', 'x'):>10} "
            f"{_fmt(r['vs_c_jpeg'], '.2f', 'x'):>8} "
            f"{_fmt(r['frames_decoded_per_clip'], '.1f'):>12} {wrong:>15} {size:>14}{errors}"
        )


def _no_nan(obj: Any) -> Any:
    """NaN -> None, so the JSON file is strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_no_nan(v) for v in obj]
    return obj


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["method"] != "ours-decode":
            continue
        checks = [
            ("frame-exact", r.get("check_wrong_clips"), lambda v: v == 0),
            (">= decord", r["vs_a_decord"], lambda v: v >= 1.0),
            (">= 3x cv2-read-all", r["vs_b_cv2-read-all"], lambda v: v >= 3.0),
        ]
        for target, value, ok in checks:
            known = value is not None and value == value
            out.append(
                {
                    "codec": r["codec"],
                    "target": target,
                    "value": value,
                    "status": ("PASS" if ok(value) else "FAIL") if known else "not measured",
                }
            )
    return out


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
        "av": av.__version__,
        "ffmpeg (PyAV)": ".".join(str(x) for x in av.library_versions.get("libavcodec", ())),
        "decord": decord.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


# ------------------------------------------------------------------------------ main


def datasets(args: argparse.Namespace, workdir: Path) -> list[tuple[str, Path, list[Path]]]:
    """(name, root, video paths) per dataset to benchmark."""
    if args.data:
        root = args.data.resolve()
        paths = find_videos(root)
        if not paths:
            raise SystemExit(f"no video files ({', '.join(sorted(VIDEO_EXTENSIONS))}) in {root}")
        return [(args.codec_name or root.name, root, paths)]
    out = []
    for codec in args.codecs:
        root = workdir / "videos" / codec
        t0 = time.perf_counter()
        generated = generate_dataset(
            root,
            num_videos=args.videos,
            num_frames=args.frames,
            height=240,
            width=320,
            fps=25,
            codec=codec,
            seed=args.seed,
        )
        print(
            f"generated {len(generated)} {codec} videos x {args.frames} frames "
            f"in {time.perf_counter() - t0:.1f}s -> {root}"
        )
        out.append((codec, root, [v.path for v in generated]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cv2.setNumThreads(1)
    malloc = args.malloc
    if malloc == "reuse" and not keep_freed_memory():
        malloc = "default (not glibc)"
    started = time.perf_counter()
    env = environment()
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="decode_bench_")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    print(__doc__.split("\n\n")[0])
    print("Targets: " + "; ".join(TARGETS))
    print(
        f"{args.clips} timed clips/method (+{args.warmup} warmup) in {args.rounds} interleaved "
        f"rounds (best of {args.repeats}), 1 thread everywhere, output {SIZE[1]}x{SIZE[0]} RGB; "
        f"clips/s/core = clips per CPU-second (user + sys) of this process; sys = kernel share; "
        f"decoded/clip = frames decoded (JPEGs read for jpeg)"
    )
    env["malloc"] = malloc
    print(", ".join(f"{k} {v}" for k, v in env.items()))

    results: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    try:
        for name, root, paths in datasets(args, workdir):
            videos = load_videos(root, paths)
            if not videos:
                print(f"{name}: no usable videos")
                continue
            codecs = "/".join(sorted({v.probe.codec for v in videos}))
            sizes = "/".join(sorted({f"{v.probe.width}x{v.probe.height}" for v in videos}))
            print(
                f"{name}: {len(videos)} videos, {sum(v.probe.num_frames for v in videos)} "
                f"frames, codec {codecs}, {sizes}"
            )
            if "jpeg" in args.methods:
                t0 = time.perf_counter()
                extract_jpegs(videos, workdir / "jpeg" / name, args.jpeg_quality)
                print(f"{name}: JPEG frames extracted in {time.perf_counter() - t0:.1f}s")

            ours_full, spec = make_ours_full(args.seed)
            all_methods: dict[str, Callable[..., np.ndarray]] = {
                "ours-decode": ours_decode,
                "ours-full": ours_full,
                "decord": decord_clip,
                "cv2-read-all": cv2_read_all,
                "jpeg": jpeg_clip,
            }
            methods = {m: all_methods[m] for m in METHODS if m in args.methods}
            clips = build_clips(videos, args.clips + args.warmup, spec.pretext, args.seed)
            warmup, timed = clips[args.clips :], clips[: args.clips]

            t0 = time.perf_counter()
            checked = {
                m: methods[m] for m in ("ours-decode", "decord", "cv2-read-all") if m in methods
            }
            exactness = check_exactness(
                checked, timed[: args.check_clips], spec if "ours-full" in methods else None
            )
            print(
                f"{name}: exactness checked on {min(args.check_clips, len(timed))} clips in "
                f"{time.perf_counter() - t0:.1f}s"
            )

            t0 = time.perf_counter()
            timings = time_methods(methods, timed, warmup, args.rounds, args.repeats)
            print(f"{name}: timed in {time.perf_counter() - t0:.1f}s")
            results += result_rows(name, timings, exactness, videos, timed)
            if args.profile:
                profiles[name] = profile_ours(timed, args.profile)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print_table(results)
    print()
    for r in results:
        if r["method"] == "jpeg":
            print(
                f"{r['codec']}: JPEG folders {r['jpeg_bytes'] / 2**20:.1f} MiB "
                f"({r['jpeg_disk_bytes'] / 2**20:.1f} MiB allocated) vs video files "
                f"{r['video_bytes'] / 2**20:.1f} MiB = {r['jpeg_vs_video_bytes']:.1f}x"
            )
        if "check_example" in r:
            print(f"{r['codec']}: {r['method']} wrong: {r['check_example']}")
    checks = verdicts(results)
    for v in checks:
        value = v["value"]
        if v["status"] == "not measured":
            shown = "-"
        else:
            shown = f"{value:.2f}x" if isinstance(value, float) else f"{value} wrong clips"
        print(f"target {v['codec']:<14} ours-decode {v['target']:<19} {v['status']:<4} ({shown})")
    for name, text in profiles.items():
        print(f"\n[{name}]\n{text}")
    env["loadavg_end"] = os.getloadavg()
    elapsed = time.perf_counter() - started
    print(
        f"\ntotal {elapsed:.0f}s; load average start {env['loadavg_start']}, "
        f"end {env['loadavg_end']}"
    )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        payload = {
            "config": config,
            "environment": env,
            "targets": list(TARGETS),
            "results": results,
            "verdicts": checks,
            "profiles": profiles,
            "elapsed_s": elapsed,
        }
        args.json.write_text(json.dumps(_no_nan(payload), indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
