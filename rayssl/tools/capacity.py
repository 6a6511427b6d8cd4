"""`rayssl capacity`: decode CPUs per GPU, and what a cluster shape gets, for one config.

The model (docs/PERFORMANCE.md). A run moves clips from decode CPUs to GPUs:

* decode rate `d` (clips/s per core): `sample_row` (plan, read, decode, augment: the work
  of a Ray Data task) run single-threaded in this process over a random sample of the
  config's draws on the manifest, counted per CPU-second of this process;
* training rate `t` (clips/s per GPU): given (`--train-clips-per-s`), measured here
  (`--measure-train`: the config's backbone, pretext head, optimiser and per-worker batch,
  on this machine's device) or read from a `benchmarks/train_throughput.py` JSON
  (`--anchor`, e.g. `benchmarks/h100-anchor.json`);
* one GPU needs `t / d` decode cores;
* a cluster of G GPUs (one train worker each, reserving `train.cpus_per_worker` CPUs) has
  `C = nodes x cpus_per_node + extra_cpus - G x cpus_per_worker` decode CPUs, which give
  `D = C x d` clips/s against a demand of `T = G x t`. When D < T the GPUs wait for data
  `1 - D / T` of the time and the run moves D clips/s; otherwise the wait is ~0 and it
  moves T. An epoch of N clips takes N / min(D, T).

"Clips" are samples, the rows of the pipeline: a two-clip `pace_contrastive` sample
(same context) holds two clips and counts once on both sides (an anchor's per-clip rate
is divided by 2).
Masked rows (skipped draws) count too: they cost a slot in the batch.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rayssl.clips import pipeline
from rayssl.clips.pipeline import epoch_rows, sample_row, usable_videos
from rayssl.config import Config
from rayssl.io import storage
from rayssl.io.manifest import read_manifest
from rayssl.pretext import build_pretext
from rayssl.train.step import (
    DeviceSettings,
    batch_to_device,
    build_model,
    build_optimizer,
    place_model,
    train_step,
)

#: `--precision` names -> the modes of benchmarks/train_throughput.py.
PRECISIONS = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16cl", "bf16cl": "bf16cl"}
# rayssl's own step and speed settings (benchmarks/train_throughput.py's other modes)
PRECISIONS |= {m: m for m in ("rayssl", "inline", "fused", "conv2d", "best", "best2x")}

#: The reference training measurement shipped with the repository.
DEFAULT_ANCHOR = Path(__file__).resolve().parents[2] / "benchmarks" / "h100-anchor.json"

#: What benchmarks/train_throughput.py measures on CUDA without options (an anchor file
#: written before it recorded its settings, like h100-anchor.json, was run with these).
ANCHOR_DEFAULTS = {"batch_size": 30, "clip_len": 16, "size": 112, "width": 1.0}


class CapacityError(ValueError):
    """Bad arguments or inputs (a clear message, exit code 2 from the CLI)."""


# ------------------------------------------------------------------------ the model


@dataclass(frozen=True)
class ClusterShape:
    """GPUs (one train worker each) and the CPUs of the nodes that hold them."""

    gpus: int
    nodes: int = 1
    cpus_per_node: float = 0.0
    cpus_per_worker: float = 1.0  # CPUs each train worker reserves (train.cpus_per_worker)
    extra_cpus: float = 0.0  # CPUs of CPU-only nodes, all together

    def __post_init__(self) -> None:
        if self.gpus < 1 or self.nodes < 1:
            raise CapacityError(f"--gpus {self.gpus}, --nodes {self.nodes}: both must be >= 1")
        if min(self.cpus_per_node, self.cpus_per_worker, self.extra_cpus) < 0:
            raise CapacityError("CPU counts must be >= 0")

    @property
    def cpus(self) -> float:
        return self.nodes * self.cpus_per_node + self.extra_cpus

    @property
    def decode_cpus(self) -> float:
        """CPUs left for decode tasks once the train workers hold theirs."""
        return max(0.0, self.cpus - self.gpus * self.cpus_per_worker)


@dataclass(frozen=True)
class ShapeEstimate:
    """What the model expects of one cluster shape (rates in clips/s)."""

    shape: ClusterShape
    decode_cpus: float
    decode_capacity: float  # D: clips/s all decode CPUs give
    train_demand: float  # T: clips/s the GPUs take
    clips_per_s: float  # min(D, T)
    data_wait_frac: float  # max(0, 1 - D / T)
    gpus_fed: float  # D / t: GPUs the decode CPUs keep busy
    decode_cpus_needed: float  # G x t / d
    epoch_clips: int
    epoch_s: float  # inf when no decode task can run
    hangs: bool  # fewer decode CPUs than one decode task reserves


def cores_per_gpu(decode_per_core: float, train_per_gpu: float) -> float:
    """Decode cores that keep one GPU busy: t / d."""
    if decode_per_core <= 0:
        return math.inf
    return train_per_gpu / decode_per_core


def data_wait_fraction(decode_capacity: float, train_demand: float) -> float:
    """Share of the time the GPUs wait for data: 1 - D / T when D < T, else 0."""
    if train_demand <= 0:
        return 0.0
    return max(0.0, 1.0 - decode_capacity / train_demand)


def epoch_clips(
    num_videos: int, clips_per_video: int, workers: int, batch_size: int, max_steps: int = 0
) -> int:
    """Rows through the GPUs in one epoch: every worker takes ceil(N x C / W) rows
    (`rayssl.clips.pipeline.epoch_rows`: up to W - 1 masked pad rows even out the shards;
    they hold a batch slot but are not decoded), capped by `train.max_steps_per_epoch`
    steps of batch_size / W rows."""
    workers = max(1, workers)
    per_worker = -(-num_videos * clips_per_video // workers)
    if max_steps > 0:
        per_worker = min(per_worker, max_steps * max(1, batch_size // workers))
    return per_worker * workers


def estimate_shape(
    decode_per_core: float,
    train_per_gpu: float,
    shape: ClusterShape,
    clips: int,
    cpus_per_task: float = 1.0,
    cpus_per_pipeline: float = 0.0,
) -> ShapeEstimate:
    """The capacity model for one shape; `clips` = rows of one epoch (`epoch_clips`).
    `cpus_per_pipeline` > 0 caps each train worker's decode pipeline at that many CPUs
    (`data.decode_cpus_per_worker`, where the config has it)."""
    decode_cpus = shape.decode_cpus
    if cpus_per_pipeline > 0:
        decode_cpus = min(decode_cpus, shape.gpus * cpus_per_pipeline)
    hangs = decode_cpus < cpus_per_task or decode_cpus <= 0
    capacity = 0.0 if hangs else decode_cpus * decode_per_core
    demand = shape.gpus * train_per_gpu
    rate = min(capacity, demand)
    return ShapeEstimate(
        shape=shape,
        decode_cpus=decode_cpus,
        decode_capacity=capacity,
        train_demand=demand,
        clips_per_s=rate,
        data_wait_frac=1.0 if hangs else data_wait_fraction(capacity, demand),
        gpus_fed=capacity / train_per_gpu if train_per_gpu > 0 else math.inf,
        decode_cpus_needed=shape.gpus * cores_per_gpu(decode_per_core, train_per_gpu),
        epoch_clips=clips,
        epoch_s=clips / rate if rate > 0 else math.inf,
        hangs=hangs,
    )


# ---------------------------------------------------------------------- measurement


@dataclass
class DecodeMeasurement:
    """`sample_row` over a sample of draws, in this process."""

    clips: int = 0  # rows produced, masked included
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # user + system CPU time of this process
    wall_s: float = 0.0
    clips_per_sample: int = 1

    @property
    def per_core(self) -> float:
        return self.clips / self.cpu_s if self.cpu_s > 0 else math.nan

    @property
    def per_wall_s(self) -> float:
        return self.clips / self.wall_s if self.wall_s > 0 else math.nan

    @property
    def skip_frac(self) -> float:
        return self.skipped / self.clips if self.clips else math.nan


def sampler_spec(cfg: Config):
    """The training `SamplerSpec` of a config (pretext, augmentation, seed, storage)."""

    pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    return pipeline.sampler_spec(cfg.data, pretext, cfg.run.seed, True, options)


def draw_rows(cfg: Config, videos, count: int) -> list[dict[str, Any]]:
    """The first `count` draws of epochs 0, 1, ... (one worker's order): a random sample
    of the config's draws, as training would take them (each epoch's order is a
    (seed, epoch) permutation; a small manifest continues into the next epochs)."""

    out: list[dict[str, Any]] = []
    epoch = 0
    while len(out) < count:
        rows = epoch_rows(videos, cfg.data.clips_per_video, cfg.run.seed, epoch)
        out += rows.slice(0, count - len(out)).to_pylist()
        epoch += 1
    return out


def measure_decode(
    cfg: Config, videos, seconds: float, max_clips: int, warmup: int = 1, keep: int = 0
) -> tuple[DecodeMeasurement, list[dict[str, Any]]]:
    """Run `sample_row` single-threaded over random draws until `seconds` of wall time or
    `max_clips` rows, after `warmup` untimed rows. Returns the measurement and up to
    `keep` valid and `keep` masked timed samples (with their rows' `video_id`,
    `class_label`, `epoch`, `draw`): a batch for `measure_train`."""
    import cv2  # lazy: OpenCV is a heavy import that only this path needs

    spec = sampler_spec(cfg)
    shape = spec.output_clip_shape({"height": 0, "width": 0})
    clips_per_sample = sum(1 for k in spec.pretext.target_spec(shape) if k.startswith("clip"))
    rows = draw_rows(cfg, videos, max_clips + warmup)
    result = DecodeMeasurement(clips_per_sample=clips_per_sample)
    kept: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
    reasons: Counter[str] = Counter()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # one core, as a decode task of 1 CPU
    try:
        for row in rows[:warmup]:
            sample_row(row, spec)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for row in rows[warmup:]:
            sample = sample_row(row, spec)
            result.clips += 1
            if not sample["valid"]:
                reasons[str(sample["skip_reason"])] += 1
            if len(kept[bool(sample["valid"])]) < keep:
                for key in ("video_id", "class_label", "epoch", "draw"):
                    sample[key] = row[key]
                kept[bool(sample["valid"])].append(sample)
            if time.perf_counter() - wall0 >= seconds:
                break
        result.cpu_s = time.process_time() - cpu0
        result.wall_s = time.perf_counter() - wall0
    finally:
        cv2.setNumThreads(threads)
    result.skipped = sum(reasons.values())
    result.skip_reasons = dict(sorted(reasons.items()))
    return result, kept[True] + kept[False]


def stack_batch(samples: list[dict[str, Any]], batch_size: int) -> dict[str, np.ndarray]:
    """A training batch (numpy, as Ray Data hands it over) of `batch_size` samples, valid
    ones first, cycling when there are fewer."""
    ordered = [s for s in samples if s["valid"]] + [s for s in samples if not s["valid"]]
    chosen = [ordered[i % len(ordered)] for i in range(batch_size)]
    return {k: np.stack([np.asarray(s[k]) for s in chosen]) for k in chosen[0]}


@dataclass
class TrainMeasurement:
    clips_per_s: float
    device: str
    batch_size: int
    steps: int
    warmup: int
    seconds: float
    settings: str  # precision / layout / threads


def measure_train(
    cfg: Config,
    samples: list[dict[str, Any]],
    device_name: str = "auto",
    steps: int = 3,
    warmup: int = 1,
) -> TrainMeasurement:
    """Train steps of the config's model on a batch of real decoded samples: host batch ->
    device (pinned copy on CUDA) -> forward, loss, backward, optimiser step, as the
    training loop does, on one device, without DDP. Batch = the config's per-worker batch."""
    import torch  # lazy: torch is a heavy import that only this path needs

    if not any(s["valid"] for s in samples):
        raise CapacityError("--measure-train: every decoded sample was skipped; nothing to train")
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    try:
        torch.manual_seed(cfg.run.seed)
        pretext = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
        settings = DeviceSettings.for_device(device, cfg)
        model = place_model(build_model(cfg, pretext), settings, cfg)
        optimizer, _ = build_optimizer(model, cfg)
        batch_size = max(1, cfg.train.batch_size // max(1, cfg.train.num_workers))
        host = stack_batch(samples, batch_size)

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        for _ in range(warmup):
            train_step(model, batch_to_device(host, settings), optimizer, settings)
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(model, batch_to_device(host, settings), optimizer, settings)
        sync()
        elapsed = time.perf_counter() - t0
        what = ("bf16" if settings.bf16 else "fp32") + (
            " channels_last_3d" if settings.channels_last else ""
        )
        if device.type == "cpu":
            what += f", {torch.get_num_threads()} torch threads"
        elif device.type == "cuda":
            what += f", {torch.cuda.get_device_name(device)}"
    finally:
        torch.set_num_threads(threads)
    return TrainMeasurement(
        clips_per_s=batch_size * steps / elapsed,
        device=device.type,
        batch_size=batch_size,
        steps=steps,
        warmup=warmup,
        seconds=elapsed,
        settings=what,
    )


def default_precision(cfg: Config) -> str:
    """The anchor's own mode nearest the config on CUDA: bf16 autocast (+ channels_last)
    or, without bf16, PyTorch's default (cuDNN convolutions in TF32). The fallback of
    `config_mode` for an anchor that has no row of rayssl's step (h100-anchor.json)."""
    return "bf16cl" if cfg.train.bf16 else "tf32"


#: What each rayssl mode of benchmarks/train_throughput.py runs, as config settings
#: (docs/PERFORMANCE.md section 5): (optim.fused, train.conv_impl, train.compile).
_STEP_MODES = {
    "rayssl": (False, "conv3d", False),
    "fused": (True, "conv3d", False),
    "conv2d": (False, "conv2d", False),
    "best": (True, "conv2d", True),
}


def config_mode(cfg: Config) -> tuple[str, list[str]]:
    """The benchmark mode that trains as `cfg` does on CUDA, read from its speed settings
    (train.bf16, channels_last, device_prefetch, conv_impl, compile, optim.fused), and a
    note for each setting the chosen mode does not share (no benchmark mode has it).

    Without bf16 the step runs in TF32 (`tf32`: the benchmark has no fp32 mode of rayssl's
    step). With bf16: `inline` for train.device_prefetch=0, else the mode of `_STEP_MODES`
    that differs from the config in the fewest of (fused, conv_impl, compile), compile
    weighing most (ties: the one without the extra setting)."""
    t = cfg.train
    notes: list[str] = []
    if not t.bf16:
        speed = [
            k for k, on in (("train.compile", t.compile), ("optim.fused", cfg.optim.fused)) if on
        ]
        if t.conv_impl != "conv3d":
            speed.append(f"train.conv_impl={t.conv_impl}")
        if speed:
            notes.append(
                "the benchmark times " + ", ".join(speed) + " only with bf16: the tf32 "
                "rate is of the eager fp32/TF32 step"
            )
        return "tf32", notes
    conv = t.conv_impl if cfg.model.backbone == "r21d" else "conv3d"  # others have none
    if t.device_prefetch == 0 and not (t.compile or cfg.optim.fused or conv != "conv3d"):
        mode = "inline"
    else:
        ours = (bool(cfg.optim.fused), conv, bool(t.compile))

        def distance(m: str) -> tuple[int, int]:
            f, c, k = _STEP_MODES[m]
            return (3 * (k != ours[2]) + (f != ours[0]) + (c != ours[1]), f + (c != "conv3d"))

        mode = min(_STEP_MODES, key=distance)
        f, c, k = _STEP_MODES[mode]
        names = ("optim.fused", "train.conv_impl", "train.compile")
        off = [f"{n}={v}" for n, v, w in zip(names, ours, (f, c, k), strict=True) if v != w]
        if off:
            notes.append(
                f"no benchmark mode has this config's speed settings; {mode!r} is the "
                f"nearest (it differs in {', '.join(off)})"
            )
        if t.device_prefetch == 0:
            notes.append(f"train.device_prefetch=0: {mode!r} copies one step ahead")
    if not t.channels_last:
        notes.append(f"train.channels_last=false: {mode!r} runs channels_last_3d")
    return mode, notes


def anchor_mode(cfg: Config, path: str | Path, precision: str | None) -> tuple[str, list[str]]:
    """The mode to read from the anchor file: `precision` when given (the override), else
    the config's (`config_mode`); where the file has no row of that mode for the config's
    backbone (an anchor measured before rayssl's step was benchmarked, like
    h100-anchor.json), the anchor's own nearest mode (`default_precision`), with a note."""
    if precision:
        return precision, []
    mode, notes = config_mode(cfg)
    try:
        rows = json.loads(Path(path).read_text()).get("train", [])
        have = {r.get("mode") for r in rows if r.get("model") == cfg.model.backbone}
    except (OSError, ValueError, AttributeError):
        return mode, notes  # anchor_rate reports the unreadable file
    if mode not in have:
        fallback = default_precision(cfg)
        notes.append(
            f"the anchor has no {cfg.model.backbone}/{mode} row (the config's speed settings): "
            f"read its {PRECISIONS[fallback]} row instead (the eager step on float clips "
            "already on the GPU); run benchmarks/gpu_run.sh for the config's own mode"
        )
        mode = fallback
    return mode, notes


def anchor_rate(path: str | Path, backbone: str, precision: str) -> tuple[float, dict[str, Any]]:
    """Clips/s of `backbone` in `precision` from a benchmarks/train_throughput.py JSON,
    and what it was measured on ({"device", "torch", "mode", "config", "config_known"})."""
    mode = PRECISIONS.get(precision)
    if mode is None:
        raise CapacityError(f"--precision: {precision!r}; one of {sorted(PRECISIONS)}")
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CapacityError(f"--anchor {path}: cannot read it as JSON ({e})") from e
    rows = report.get("train", []) if isinstance(report, dict) else []
    found = {(r.get("model"), r.get("mode")): r for r in rows if isinstance(r, dict)}
    row = found.get((backbone, mode))
    if row is None or not isinstance(row.get("clips_s"), int | float) or row["clips_s"] <= 0:
        have = sorted(f"{m}/{p}" for (m, p), r in found.items() if r.get("clips_s"))
        raise CapacityError(
            f"--anchor {path}: no clips/s for backbone {backbone!r} in mode {mode!r}; "
            f"it has {', '.join(have) or 'none'}"
        )
    config = report.get("config")
    info = {
        "device": report.get("device", "unknown device"),
        "torch": report.get("torch", "?"),
        "mode": mode,
        "config": config or dict(ANCHOR_DEFAULTS),
        "config_known": bool(config),
    }
    return float(row["clips_s"]), info


def _anchor_mismatch(cfg: Config, info: dict[str, Any], batch_size: int) -> str:
    a = info["config"]
    crop = cfg.data.augment.crop if cfg.data.augment.enabled else cfg.data.augment.resize
    ours = {
        "clip_len": cfg.data.clip_len,
        "size": crop[0] if crop and crop[0] == crop[-1] else tuple(crop),
        "width": cfg.model.width,
        "batch_size": batch_size,
    }
    diff = [f"{k} {a.get(k)} vs {v}" for k, v in ours.items() if a.get(k) != v]
    if not diff:
        return ""
    return (
        "the anchor was measured at other settings than this config's ("
        + ", ".join(diff)
        + "): its clips/s is not this config's; measure with --measure-train on the GPU, "
        "or benchmarks/train_throughput.py with matching --clip-len/--size/--width/--batch-size"
    )


# -------------------------------------------------------------------------- the run


def _finite(x: Any) -> Any:
    """inf / nan -> None, recursively (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def run_capacity(
    cfg: Config,
    *,
    seconds: float = 10.0,
    max_clips: int = 200,
    train_clips_per_s: float | None = None,
    measure: bool = False,
    device: str = "auto",
    train_steps: int = 3,
    train_warmup: int = 1,
    anchor: str | Path | None = None,
    precision: str | None = None,
    shape: ClusterShape | None = None,
) -> dict[str, Any]:
    """Measure and estimate; returns the report as a dict (see `format_report`)."""

    if not cfg.data.manifest:
        raise CapacityError("no manifest: pass --manifest M.parquet or data.manifest=M.parquet")
    if seconds <= 0 or max_clips < 1:
        raise CapacityError("--seconds must be > 0 and --clips >= 1")
    if train_clips_per_s is not None and not train_clips_per_s > 0:
        raise CapacityError("--train-clips-per-s must be > 0")
    options = storage.StorageOptions(endpoint_url=cfg.data.endpoint_url or None)
    table = read_manifest(cfg.data.manifest, options=options)
    videos = usable_videos(table, cfg.data.split, cfg.data.fraction, cfg.run.seed)
    if videos.num_rows == 0:
        raise CapacityError(
            f"{cfg.data.manifest}: no usable video in split {cfg.data.split!r} "
            "(check the manifest's errors, data.split and data.fraction)"
        )

    per_worker_batch = max(1, cfg.train.batch_size // max(1, cfg.train.num_workers))
    keep = per_worker_batch if measure else 0
    decode, samples = measure_decode(cfg, videos, seconds, max_clips, keep=keep)
    d = decode.per_core
    notes: list[str] = []
    train: dict[str, Any]
    if train_clips_per_s is not None:
        t = float(train_clips_per_s)
        train = {"source": "given", "clips_per_s": t}
    elif measure:
        m = measure_train(cfg, samples, device, train_steps, train_warmup)
        t = m.clips_per_s
        train = {"source": "measured", **asdict(m)}
        if m.device != "cuda":
            notes.append(
                f"training was measured on {m.device}, not a GPU: the per-GPU figures are "
                "this device's; run the same command on the GPU machine for the GPU's"
            )
    else:
        path = Path(anchor) if anchor else DEFAULT_ANCHOR
        mode, mode_notes = anchor_mode(cfg, path, precision)
        notes += mode_notes
        per_clip, info = anchor_rate(path, cfg.model.backbone, mode)
        t = per_clip / decode.clips_per_sample
        shown = str(path) if anchor else "benchmarks/h100-anchor.json"
        train = {"source": "anchor", "anchor": shown, "clips_per_s": t, **info}
        train["mode_from"] = "--precision" if precision else "config"
        if not info["config_known"]:
            train["config_assumed"] = True
        mismatch = _anchor_mismatch(cfg, info, per_worker_batch)
        if mismatch:
            notes.append(mismatch)
        if decode.clips_per_sample > 1:
            notes.append(
                f"the anchor's clips/s is per clip; a {cfg.pretext.name} sample holds "
                f"{decode.clips_per_sample} clips, so the GPU takes "
                f"{per_clip:.1f} / {decode.clips_per_sample} samples/s"
            )
    if decode.clips < 30:
        notes.append(
            f"only {decode.clips} clips were timed: the decode rate is rough "
            "(raise --seconds / --clips)"
        )
    notes.append(
        "decode is measured in this process without Ray: Ray Data's task overhead and "
        "object-store copies are not counted, so the cores needed are a lower bound and the "
        "data wait an optimistic estimate; check train/data_wait_frac of a real run"
    )

    videos_n = videos.num_rows
    report: dict[str, Any] = {
        "config": {
            "manifest": cfg.data.manifest,
            "split": cfg.data.split,
            "pretext": cfg.pretext.name,
            "backbone": cfg.model.backbone,
            "width": cfg.model.width,
            "clip_len": cfg.data.clip_len,
            "resize": list(cfg.data.augment.resize),
            "crop": list(cfg.data.augment.crop),
            "batch_size": cfg.train.batch_size,
            "per_worker_batch": per_worker_batch,
            "clips_per_video": cfg.data.clips_per_video,
            "cpus_per_worker": cfg.train.cpus_per_worker,
            "num_cpus_per_task": cfg.data.num_cpus_per_task,
        },
        "videos": videos_n,
        "epoch_clips_one_worker": epoch_clips(
            videos_n, cfg.data.clips_per_video, 1, cfg.train.batch_size
        ),
        "decode": {
            "clips": decode.clips,
            "cpu_s": decode.cpu_s,
            "wall_s": decode.wall_s,
            "clips_per_s_per_core": d,
            "clips_per_wall_s": decode.per_wall_s,
            "skipped": decode.skipped,
            "skip_frac": decode.skip_frac,
            "skip_reasons": decode.skip_reasons,
            "clips_per_sample": decode.clips_per_sample,
        },
        "train": train,
        "train_clips_per_s_per_gpu": t,
        "decode_cores_per_gpu": cores_per_gpu(d, t),
        "cpus_per_gpu": cores_per_gpu(d, t) + cfg.train.cpus_per_worker,
        "notes": notes,
    }
    if shape is not None:
        clips = epoch_clips(
            videos_n,
            cfg.data.clips_per_video,
            shape.gpus,
            cfg.train.batch_size,
            cfg.train.max_steps_per_epoch,
        )
        # data.decode_cpus_per_worker: a newer key; 0 (no cap) where the config lacks it
        cap = float(getattr(cfg.data, "decode_cpus_per_worker", 0.0) or 0.0)
        est = estimate_shape(d, t, shape, clips, cfg.data.num_cpus_per_task, cap)
        report["cluster"] = asdict(est)
    return _finite(report)


# ------------------------------------------------------------------------- printing


def _duration(s: float | None) -> str:
    if s is None:
        return "never (no decode task can run)"
    if s < 10:
        return f"{s:.2f} s"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _num(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else f"{x:{spec}}"


def format_report(r: dict[str, Any]) -> str:
    c, dec, tr = r["config"], r["decode"], r["train"]
    size = "x".join(str(v) for v in c["crop"])
    lines = [
        f"rayssl capacity: {c['pretext']}, {c['backbone']} width {c['width']}, clips "
        f"{c['clip_len']}x{size} (resize {'x'.join(str(v) for v in c['resize']) or 'none'}), "
        f"batch {c['batch_size']} ({c['per_worker_batch']} per worker)",
        f"manifest {c['manifest']}: {r['videos']} usable videos in split "
        f"{c['split']!r} x {c['clips_per_video']} clips = {r['epoch_clips_one_worker']} "
        "clips per epoch",
    ]
    per_sample = (
        f" (a sample = {dec['clips_per_sample']} clips)" if dec["clips_per_sample"] > 1 else ""
    )
    reasons = ", ".join(f"{k} {v}" for k, v in dec["skip_reasons"].items())
    lines += [
        f"decode (sample_row in this process, 1 thread): {dec['clips']} clips in "
        f"{dec['cpu_s']:.2f} CPU-s ({dec['wall_s']:.2f} s wall){per_sample}",
        f"  decode clips/s per core        {_num(dec['clips_per_s_per_core'])}"
        f"   ({_num(dec['clips_per_wall_s'])} per wall-second)",
        f"  skip rate                      {_num(dec['skip_frac'], '.1%')}"
        f"   ({dec['skipped']} of {dec['clips']}{': ' + reasons if reasons else ''})",
    ]
    if tr["source"] == "given":
        source = "given"
    elif tr["source"] == "measured":
        source = (
            f"measured on {tr['device']}: {tr['steps']} steps of {tr['batch_size']} after "
            f"{tr['warmup']} warmup, {tr['settings']}"
        )
    else:
        assumed = ", settings assumed" if tr.get("config_assumed") else ""
        picked = {"config": ", mode of the config's speed settings"}.get(tr.get("mode_from"), "")
        source = f"anchor {tr['anchor']}: {tr['device']}, {tr['mode']}{picked}{assumed}"
    lines += [
        f"training clips/s per GPU         {_num(r['train_clips_per_s_per_gpu'])}   ({source})",
        f"CPU cores one GPU needs          {_num(r['decode_cores_per_gpu'])}   decode cores "
        f"(+ {c['cpus_per_worker']:g} reserved by its train worker = "
        f"{_num(r['cpus_per_gpu'])} CPUs)",
    ]
    est = r.get("cluster")
    if est:
        s = est["shape"]
        extra = f" + {s['extra_cpus']:g} CPU-only" if s["extra_cpus"] else ""
        lines += [
            f"cluster: {_plural(s['gpus'], 'GPU')}, {_plural(s['nodes'], 'node')} x "
            f"{s['cpus_per_node']:g} CPUs{extra}, "
            f"{s['cpus_per_worker']:g} CPUs per train worker -> {est['decode_cpus']:g} decode "
            f"CPUs (needs {_num(est['decode_cpus_needed'])})",
            f"  decode capacity                {_num(est['decode_capacity'])} clips/s"
            f"   (keeps {_num(est['gpus_fed'], '.2f')} GPUs busy)",
            f"  GPU demand                     {_num(est['train_demand'])} clips/s",
            f"  expected data wait             {est['data_wait_frac']:.1%}",
            f"  expected clips/s               {_num(est['clips_per_s'])}",
            f"  expected epoch time            {_duration(est['epoch_s'])}"
            f"   ({est['epoch_clips']} clips)",
        ]
        if est["hangs"]:
            lines.append(
                f"  no decode task fits: {est['decode_cpus']:g} CPUs left < "
                f"data.num_cpus_per_task {c['num_cpus_per_task']:g}; the run hangs "
                "(cluster/local.md, section 5)"
            )
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)
