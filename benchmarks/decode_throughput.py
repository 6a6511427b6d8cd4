"""Clip decoding throughput per core: rayssl's reader vs decord, cv2 read-all and JPEG frames.

Every method decodes the same random 16-frame pace clips (pace drawn from {1, 2, 3, 4}, a
start so the clip fits, frames start + i * pace) of the same files, in one process, with
every library held to one thread, and returns (16, 128, 171, 3) RGB uint8:

    ours-decode  rayssl.data.video.read_frames with the probe's keyframes (seek to the
                 keyframe before the clip, decode forward, resize 171x128 in swscale)
    ours-full    rayssl.data.pipeline.sample_row: pace plan + the decode above + crop 112,
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
cpu/wall near 1.0 confirms one thread. Methods run interleaved in rounds (the order
rotating) so that background load hits all of them alike. Files are read from the page
cache: the numbers are decode cost, not storage I/O.

Frame-exactness: for the first --check-clips clips, ours (size=None), decord and cv2 at
native size are compared to a sequential decode (rayssl.data.video.read_all_frames). A
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
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import av  # noqa: E402
import cv2  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.config import AugmentSettings, Config  # noqa: E402
from rayssl.data.pipeline import SamplerSpec, sample_row  # noqa: E402
from rayssl.data.sampling import clip_rng  # noqa: E402
from rayssl.data.synthetic import generate_dataset  # noqa: E402
from rayssl.data.video import (  # noqa: E402
    VideoError,
    VideoProbe,
    probe_video,
    read_all_frames,
    read_frames,
)
from rayssl.pretext import build_pretext  # noqa: E402

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
    path: Path
    video_id: str
    probe: VideoProbe
    jpeg_dir: Path | None = None
    video_bytes: int = 0
    jpeg_bytes: int = 0
    jpeg_disk_bytes: int = 0


@dataclass(frozen=True)
class Clip:
    video: Video
    indices: np.ndarray  # (CLIP_LEN,) int64
    draw: int


@dataclass
class Timing:
    clips: int = 0
    errors: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    first_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

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
    parser.add_argument("--profile", type=int, default=0, help="cProfile N ours-decode clips")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.rounds < 1 or args.warmup < 0 or args.check_clips < 0:
        parser.error("--clips and --rounds must be >= 1, --warmup and --check-clips >= 0")
    if args.codec_name and not args.data:
        parser.error("--codec-name needs --data")
    return args


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


def build_clips(videos: list[Video], n: int, pretext, seed: int) -> list[Clip]:
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


def make_ours_full(seed: int) -> tuple[Callable[[Clip], np.ndarray], Any]:
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
) -> dict[str, Timing]:
    """Time every method on all clips, in interleaved rounds with a rotating order."""
    timings = {name: Timing() for name in methods}
    for fn in methods.values():
        for clip in warmup:
            fn(clip)
    chunks = np.array_split(np.arange(len(clips)), rounds)
    names = list(methods)
    for r, chunk in enumerate(chunks):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn, timing = methods[name], timings[name]
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for k in chunk:
                try:
                    fn(clips[k])
                except Exception as e:  # a baseline failing on a file is a result too
                    timing.errors += 1
                    timing.first_error = timing.first_error or f"{type(e).__name__}: {e}"[:200]
            timing.cpu_s += time.process_time() - cpu0
            timing.wall_s += time.perf_counter() - wall0
            timing.clips += len(chunk)
    return timings


def frame_is_right(
    frame: np.ndarray, want: int, reference: np.ndarray, coarse: np.ndarray
) -> tuple[bool, bool]:
    """(closest reference frame is `want`, bit-exact) for one decoded native-size frame.

    `coarse` is the reference subsampled 2x as int16 (closeness = mean absolute difference).
    """
    if frame.shape != reference.shape[1:]:
        return False, False
    mad = np.abs(coarse - frame[::2, ::2]).mean(axis=(1, 2, 3))
    return bool(mad[want] <= mad.min()), bool(np.array_equal(frame, reference[want]))


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
        coarse = reference[:, ::2, ::2].astype(np.int16)
        for clip in video_clips:
            if spec is not None:  # sample_row must plan the very frames the clip list holds
                got = sample_row(sample_row_input(clip), spec)["indices"]
                if not np.array_equal(got, clip.indices):
                    raise RuntimeError(f"sample_row planned {got}, clip list has {clip.indices}")
            for name, fn in methods.items():
                s = stats[name]
                try:
                    frames = fn(clip, size=None)
                    results = [
                        frame_is_right(f, int(i), reference, coarse)
                        for f, i in zip(frames, clip.indices, strict=True)
                    ]
                except Exception as e:
                    results = [(False, False)] * CLIP_LEN
                    example.setdefault(name, f"{type(e).__name__}: {e}"[:200])
                wrong = sum(not right for right, _ in results)
                s["clips"] += 1
                s["frames"] += CLIP_LEN
                s["wrong_frames"] += wrong
                s["wrong_clips"] += wrong > 0
                s["exact"] += sum(exact for _, exact in results)
                if wrong and name not in example:
                    example[name] = f"{clip.video.video_id} frames {clip.indices.tolist()}"
    for name, s in stats.items():
        s["wrong_clip_frac"] = s["wrong_clips"] / s["clips"] if s["clips"] else float("nan")
        s["wrong_frame_frac"] = s["wrong_frames"] / s["frames"] if s["frames"] else float("nan")
        s["bit_exact_frac"] = s["exact"] / s["frames"] if s["frames"] else float("nan")
        if name in example:
            s["example"] = example[name]
    return stats


def profile_ours(clips: list[Clip], n: int, top: int = 12) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for clip in clips[:n]:
        ours_decode(clip)
    profiler.disable()
    out = []
    for key in ("tottime", "cumulative"):
        stream = _StringSink()
        pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats(key).print_stats(top)
        out.append(f"--- cProfile of ours-decode on {min(n, len(clips))} clips, by {key}\n")
        out.append(stream.text())
    return "".join(out)


class _StringSink:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def text(self) -> str:
        text = "".join(self.parts)
        start = text.find("   ncalls")  # drop the header lines pstats prints first
        return (text[start:] if start >= 0 else text).rstrip() + "\n"


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
        f"{'vs decord':>9} {'vs cv2-all':>10} {'vs jpeg':>8} {'wrong clips':>15} "
        f"{'bytes vs video':>14}"
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
            f"{_fmt(r['vs_a_decord'], '.2f', 'x'):>9} "
            f"{_fmt(r['vs_b_cv2-read-all'], '.2f', 'x'):>10} "
            f"{_fmt(r['vs_c_jpeg'], '.2f', 'x'):>8} {wrong:>15} {size:>14}{errors}"
        )


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
    started = time.perf_counter()
    env = environment()
    own_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="decode_bench_")) if own_workdir else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)

    print(__doc__.split("\n\n")[0])
    print("Targets: " + "; ".join(TARGETS))
    print(
        f"{args.clips} timed clips/method (+{args.warmup} warmup) in {args.rounds} interleaved "
        f"rounds, 1 thread everywhere, output {SIZE[1]}x{SIZE[0]} RGB; clips/s/core = clips "
        f"per CPU-second of this process"
    )
    print(", ".join(f"{k} {v}" for k, v in env.items()))

    results: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    try:
        for name, root, paths in datasets(args, workdir):
            videos = load_videos(root, paths)
            if not videos:
                print(f"{name}: no usable videos")
                continue
            t0 = time.perf_counter()
            if "jpeg" in args.methods:
                extract_jpegs(videos, workdir / "jpeg" / name, args.jpeg_quality)
            print(
                f"{name}: {len(videos)} videos, {sum(v.probe.num_frames for v in videos)} "
                f"frames, codec {videos[0].probe.codec}, "
                f"{videos[0].probe.width}x{videos[0].probe.height}; JPEGs extracted in "
                f"{time.perf_counter() - t0:.1f}s"
            )

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
            timings = time_methods(methods, timed, warmup, args.rounds)
            print(f"{name}: timed in {time.perf_counter() - t0:.1f}s")
            results += result_rows(name, timings, exactness, videos)
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
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
