"""Training throughput of the video backbones per precision mode (plain torch, no Ray).

One training step = forward + backward + SGD step of backbone + 4-way pace classifier
on a batch of random clips (B, 3, clip_len, size, size). Modes:

    fp32    TF32 off for matmuls and cuDNN convs (cuDNN convs default to TF32 on): the
            reference code's pattern on a GPU without TF32 (eager fp32)
    tf32    TF32 on for both (CUDA only; skipped on CPU); stock PyTorch runs cuDNN
            convolutions in TF32 already, so fp32 code on an Ampere+ GPU lands near here
    bf16cl  bf16 autocast + channels_last_3d model and input (eager), on float clips
            already on the device: the anchor's setting
    rayssl  rayssl's training step as the loop runs it (rayssl/train/step.py,
            train.bf16 + train.channels_last, the thesis configs): a uint8
            (B, T, H, W, 3) batch from host memory, pinned and copied one step ahead on
            a side stream (rayssl/train/prefetch.py, `train.device_prefetch=1`),
            converted to float, normalised and laid out channels_last_3d on the device,
            bf16 autocast, loss from float32 logits, SGD step, then a device sync (the loop
            syncs every step to time its data wait), and cuDNN autotuning as the loop
            sets it (`train.cudnn_benchmark`, default on). On CPU: no pinning, fp32, as
            the loop

rayssl's speed settings, each on top of the `rayssl` mode (CUDA: bf16 + channels_last):

    inline  rayssl with the pinning and copy in the step (`train.device_prefetch=0`, the
            loop before 2026-11-30; r21d only): what the prefetch thread saves
    fused   + a fused SGD step (`optim.fused`)
    conv2d  + R(2+1)D's factorised convs run as 2D convs (`train.conv_impl=conv2d`;
            r21d only: the other backbones have no factorised convs)
    aligned + R(2+1)D's middle widths rounded up to multiples of 8 (r21d only). NOT a
            rayssl setting: a slightly different network (+0.3% parameters), measured to
            see what the reference widths (83, 42, 230, 460, 921, ...), which bf16
            tensor-core kernels handle badly, cost
    best    + fused + conv2d (r21d) + torch.compile of the backbone as the loop compiles
            it (`train.compile`, static shapes), same batch; its first step (compile
            time) is reported apart
    best2x  best at --big-batch clips per step (default twice --batch-size; with
            `optim.lr_scaling=linear` the lr follows), the per-GPU batch a user would
            pick for a card this size

The compile modes run by default on CUDA only (inductor on a 2-core CPU takes about a
minute per backbone); name them in --modes to run them on the CPU.

For each model and mode it prints params (M, backbone only), forward GFLOPs per clip
(FlopCounterMode on one clip, head included), clips/s, achieved TFLOP/s (a train step
counted as 3x the forward FLOPs), that as a fraction of the card's bf16 matmul rate
measured at the start of the run (an 8192^3 bf16 matmul on CUDA; fp32 on the CPU), the
first step's seconds (compile and cuDNN autotuning), peak memory (CUDA only) and, with
--anchor, the ratio of clips/s to a reference run of the same model and mode. Then, per
model, each mode's speed-up over fp32, and best / bf16cl against the issue's 2x target.

All modes run in one process, one after the other, for each model: the anchor's settings
and rayssl's own step side by side. Runs from the repo (`python
benchmarks/train_throughput.py`) or as a copy of the repo on a GPU machine that has only
torch installed: it imports `rayssl.models` from the repo root and nothing else from
rayssl (the `rayssl` mode repeats the few lines of rayssl/train/step.py it needs; a test
checks that they agree).

    python benchmarks/train_throughput.py --anchor benchmarks/h100-anchor.json
    python benchmarks/train_throughput.py --device cpu --size 64 --batch-size 2 --steps 2
    python benchmarks/train_throughput.py --device cpu --models r21d --modes rayssl best \
        --compile-backend aot_eager --size 32 --width 0.0625 --batch-size 2 --steps 1
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.models import (  # noqa: E402
    BACKBONES,
    ClassifierHead,
    build_backbone,
    r2plus1d_vcop,
    set_conv_impl,
)
from rayssl.train.prefetch import device_batches  # noqa: E402  (torch only)

MODES = (
    "fp32",
    "tf32",
    "bf16cl",
    "rayssl",
    "inline",
    "fused",
    "conv2d",
    "aligned",
    "best",
    "best2x",
)
#: Modes that torch.compile the backbone (not run on the CPU unless named in --modes).
COMPILED = ("best", "best2x")
#: Modes run for R(2+1)D only: factorised convs, or a diagnosis the target needs.
R21D_ONLY = ("conv2d", "aligned", "inline")
NUM_PACES = 4
#: rayssl/train/step.py's pixel normalisation (MEAN, STD), RGB.
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
# (batch size, timed steps, warmup steps) when not given on the command line.
DEFAULTS = {"cuda": (30, 20, 5), "cpu": (4, 3, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--modes", nargs="+", choices=MODES, help="default: all (CPU: no compile)")
    parser.add_argument("--batch-size", type=int, help="clips per step (default 30 CUDA, 4 CPU)")
    parser.add_argument("--big-batch", type=int, help="best2x's clips per step (default 2x)")
    parser.add_argument(
        "--best2x-models", nargs="+", default=["r21d"], help="backbones to run best2x for"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="skip the compiled modes once this many seconds passed (0 = no limit)",
    )
    parser.add_argument("--steps", type=int, help="timed steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=112, help="frame height and width")
    parser.add_argument("--width", type=float, default=1.0, help="backbone channel multiplier")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (best)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--anchor", type=Path, help="reference results JSON to compare with")
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    device = torch.device(
        name if name != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def build_model(name: str, width: float, mid_multiple: int = 1) -> nn.Sequential:
    """Backbone + pace classifier: clips (B, 3, T, H, W) -> logits (B, NUM_PACES)."""
    if mid_multiple != 1:
        backbone: nn.Module = r2plus1d_vcop(width=width, mid_multiple=mid_multiple)
    else:
        backbone = build_backbone(name, width=width)
    return nn.Sequential(backbone, ClassifierHead(backbone.out_dim, NUM_PACES))


def forward_gflops(name: str, width: float, clip_len: int, size: int) -> float:
    """Forward GFLOPs of backbone + head for one clip, counted on the meta device."""
    model = build_model(name, width).to("meta").eval()
    clip = torch.empty(1, 3, clip_len, size, size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(clip)
    return counter.get_total_flops() / 1e9


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_matmul_tflops(device: torch.device) -> dict[str, float]:
    """The card's measured dense matmul rate: bf16 (and tf32) n^3 matmuls on CUDA, fp32
    on the CPU. The denominator of the "of peak" column."""
    cuda = device.type == "cuda"
    n, reps = (8192, 30) if cuda else (1024, 3)
    rates = {}
    for name, dtype in (
        (("bf16", torch.bfloat16), ("tf32", torch.float32)) if cuda else (("fp32", torch.float32),)
    ):
        set_tf32(name == "tf32")
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        synchronize(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        rates[name] = 2 * n**3 * reps / (time.perf_counter() - start) / 1e12
        del a, b
    set_tf32(False)
    return rates


def clip_to_input(clip_bthwc: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 (B, T, H, W, C) on the device -> normalised float (B, C, T, H, W): the same
    operations as rayssl.train.step.clip_to_input."""
    x = clip_bthwc.permute(0, 4, 1, 2, 3).float().div_(255.0)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1, 1)
    x = (x - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return x


def compile_backbone(backbone: nn.Module, mode: str, backend: str) -> None:
    """As rayssl.train.step.place_model compiles with train.compile: the backbone's
    forward, in place, static shapes."""
    backbone.compile(mode=mode, backend=backend, dynamic=False)


def measure(
    name: str, mode: str, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Time `args.steps` training steps after `args.warmup` ones (the first step timed
    apart); clips/s, first-step seconds and peak GiB."""
    set_tf32(mode == "tf32")
    cuda = device.type == "cuda"
    if cuda:  # every mode autotunes, as the training loop does (train.cudnn_benchmark)
        torch.backends.cudnn.benchmark = True
    ours = mode not in ("fp32", "tf32", "bf16cl")  # rayssl's step: uint8 host batches
    batch_size = args.big_batch if mode == "best2x" else args.batch_size
    model = build_model(name, args.width, mid_multiple=8 if mode == "aligned" else 1).to(device)
    shape = (batch_size, 3, args.clip_len, args.size, args.size)
    clips = None if ours else torch.randn(*shape, device=device)
    labels = torch.randint(0, NUM_PACES, (batch_size,), device=device)
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    # rayssl: bf16 + channels_last on CUDA only (DeviceSettings.for_device), fp32 on CPU.
    bf16 = mode == "bf16cl" or (ours and cuda)
    if bf16:
        model = model.to(memory_format=torch.channels_last_3d)
        if clips is not None:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    if mode in ("conv2d", "best", "best2x"):
        set_conv_impl(model, "conv2d")
    if mode in COMPILED:
        compile_backbone(model[0], args.compile_mode, args.compile_backend)
    # The host batch the data pipeline hands over: uint8 clips (B, T, H, W, 3).
    host = torch.randint(0, 256, (shape[0], shape[2], shape[3], shape[4], 3), dtype=torch.uint8)

    def host_batches():
        while True:
            yield {"clip": host}

    # rayssl: pinned and copied one step ahead (the loop's device_batches), or in the step
    feed = device_batches(
        host_batches(),
        device,
        lambda _, t: clip_to_input(t, channels_last=bf16),
        depth=0 if mode == "inline" else 1,
    )
    # The pace reference optimiser settings; fused as optim.fused.
    fused = True if mode in ("fused", "best", "best2x") else None
    optimizer = torch.optim.SGD(
        model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-3, fused=fused
    )

    def step() -> None:
        x = clips
        if x is None:  # rayssl: the next batch from device_batches
            x = next(feed)[1]["clip"]
        with autocast:
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ours:
            synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        start = time.perf_counter()
        step()  # compile, cuDNN autotuning
        synchronize(device)
        first = time.perf_counter() - start
        for _ in range(max(0, args.warmup - 1)):
            step()
        synchronize(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        synchronize(device)
        elapsed = time.perf_counter() - start
    finally:
        feed.close()  # stops the prefetch thread, also after an out-of-memory error
    result = {"clips_s": batch_size * args.steps / elapsed, "batch_size": batch_size}
    result["first_step_s"] = first
    if device.type == "cuda":
        result["mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def load_anchor(path: Path) -> dict[tuple[str, str], float]:
    """(model, mode) -> clips/s of a reference run ({"train": [{"model", "mode", "clips_s"}]})."""
    report = json.loads(path.read_text())
    print(
        f"anchor {path}: {report.get('device', 'unknown device')}, torch "
        f"{report.get('torch', '?')}; ratios compare like with like only at the same "
        "batch size and clip shape"
    )
    rows = report["train"]
    return {(row["model"], row["mode"]): row["clips_s"] for row in rows if "clips_s" in row}


def format_table(rows: list[dict], with_anchor: bool) -> str:
    header = ["model", "mode", "batch", "params(M)", "GFLOPs/clip", "clips/s", "TFLOP/s"]
    header += ["of peak", "1st step s", "mem(GiB)"]
    if with_anchor:
        header.append("vs anchor")
    lines = [header]
    for row in rows:
        if "error" in row:
            lines.append([row["model"], row["mode"], row["error"]])
            continue
        line = [
            row["model"],
            row["mode"],
            str(row["batch_size"]),
            f"{row['params_M']:.3f}",
            f"{row['gflops_fwd']:.2f}",
            f"{row['clips_s']:.1f}",
            f"{row['tflops']:.3f}",
            f"{row['of_peak']:.3f}" if "of_peak" in row else "-",
            f"{row['first_step_s']:.1f}",
            f"{row['mem_GiB']:.2f}" if "mem_GiB" in row else "-",
        ]
        if with_anchor:
            ratio = row.get("anchor_ratio")
            line.append("-" if ratio is None else f"{ratio:.3f}")
        lines.append(line)
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.rjust(widths[i]) if i > 1 else cell.ljust(widths[i]) for i, cell in enumerate(line)
        )
        for line in lines
    )


#: The issue's target: R(2+1)D's best at least this many times eager bf16 + channels_last.
TARGET = 2.0


def speedups(rows: list[dict]) -> list[str]:
    """Per model: each mode's clips/s over fp32's (the reference pattern); rayssl's step
    over the anchor's bf16cl setting (what the uint8 input path and the per-step sync
    cost); and the best setting over bf16cl, against the target."""
    rates = {(r["model"], r["mode"]): r["clips_s"] for r in rows if "clips_s" in r}
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        base = rates.get((model, "fp32"))
        parts = [
            f"{mode} x{rates[model, mode] / base:.2f}"
            for mode in MODES
            if base and mode != "fp32" and (model, mode) in rates
        ]
        if (model, "rayssl") in rates and (model, "bf16cl") in rates:
            parts.append(f"rayssl / bf16cl x{rates[model, 'rayssl'] / rates[model, 'bf16cl']:.2f}")
        if parts:
            lines.append(f"{model}: vs fp32: " + ", ".join(parts))
        best = max(
            (m for m in ("rayssl", "fused", "conv2d", "best", "best2x") if (model, m) in rates),
            key=lambda m: rates[model, m],
            default=None,
        )
        if best is not None and (model, "bf16cl") in rates:
            ratio = rates[model, best] / rates[model, "bf16cl"]
            verdict = "met" if ratio >= TARGET else "NOT met"
            lines.append(
                f"{model}: fastest rayssl setting {best} = x{ratio:.2f} eager bf16cl "
                f"(target x{TARGET:.1f}: {verdict})"
            )
    return lines


def modes_for(name: str, args: argparse.Namespace, device: torch.device) -> list[str]:
    """The modes to run for backbone `name`, with a note for each one left out."""
    chosen = args.modes or [m for m in MODES if device.type == "cuda" or m not in COMPILED]
    modes = []
    for mode in chosen:
        if mode == "tf32" and device.type != "cuda":
            print(f"note: {name}/tf32 skipped: TF32 is a CUDA tensor-core mode")
        elif mode in R21D_ONLY and name != "r21d":
            print(f"note: {name}/{mode} skipped: run for R(2+1)D only")
        elif mode == "best2x" and name not in args.best2x_models:
            print(f"note: {name}/best2x skipped: --best2x-models {' '.join(args.best2x_models)}")
        else:
            modes.append(mode)
    return modes


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    batch_size, steps, warmup = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    args.batch_size = args.batch_size or batch_size
    args.big_batch = args.big_batch or 2 * args.batch_size
    args.steps = args.steps or steps
    args.warmup = warmup if args.warmup is None else args.warmup
    anchor = load_anchor(args.anchor) if args.anchor else {}
    began = time.perf_counter()

    peak = peak_matmul_tflops(device)
    print(
        f"device {device_description(device)}, torch {torch.__version__}, "
        f"batch {args.batch_size} x (3, {args.clip_len}, {args.size}, {args.size}), "
        f"width {args.width}, 1 first + {max(0, args.warmup - 1)} warmup + {args.steps} "
        "timed steps; measured matmul peak "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in peak.items())
    )
    peak_rate = peak.get("bf16", peak.get("fp32"))
    rows: list[dict] = []
    for name in args.models:
        params_m = sum(p.numel() for p in build_backbone(name, args.width).parameters()) / 1e6
        gflops = forward_gflops(name, args.width, args.clip_len, args.size)
        for mode in modes_for(name, args, device):
            spent = time.perf_counter() - began
            if mode in COMPILED and args.budget_s and spent > args.budget_s:
                print(f"note: {name}/{mode} skipped: {spent:.0f} s > --budget-s {args.budget_s}")
                continue
            row: dict = {"model": name, "mode": mode, "gflops_fwd": gflops}
            row["params_M"] = params_m
            if mode == "aligned":
                aligned = build_model(name, args.width, mid_multiple=8)[0]
                row["params_M"] = sum(p.numel() for p in aligned.parameters()) / 1e6
            try:
                row.update(measure(name, mode, args, device))
            except torch.cuda.OutOfMemoryError:
                row = {"model": name, "mode": mode, "error": "out of memory"}
            except Exception as e:  # e.g. a compile failure: the other rows still count
                traceback.print_exc()
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
                row = {"model": name, "mode": mode, "error": error}
            else:
                row["tflops"] = 3 * gflops * row["clips_s"] / 1e3
                if peak_rate:
                    row["of_peak"] = row["tflops"] / peak_rate
                if (name, mode) in anchor:
                    row["anchor_ratio"] = row["clips_s"] / anchor[name, mode]
            rows.append(row)
            print(f"  {name}/{mode}: done at {time.perf_counter() - began:.0f} s", flush=True)
            if args.json:  # after every row: a run cut short still leaves its figures
                write_report(args, device, peak, rows, began)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(format_table(rows, with_anchor=bool(anchor)))
    for line in speedups(rows):
        print(line)
    print(f"total {time.perf_counter() - began:.0f} s")
    if args.json:
        write_report(args, device, peak, rows, began)
        print(f"wrote {args.json}")


def write_report(
    args: argparse.Namespace,
    device: torch.device,
    peak: dict[str, float],
    rows: list[dict],
    began: float,
) -> None:
    config = {k: getattr(args, k) for k in ("batch_size", "clip_len", "size", "width")}
    config |= {"steps": args.steps, "warmup": args.warmup, "big_batch": args.big_batch}
    config |= {"compile_mode": args.compile_mode, "compile_backend": args.compile_backend}
    report = {
        "device": device_description(device),
        "torch": torch.__version__,
        "config": config,
        "peak_tflops": peak,
        "train": rows,
        "seconds": time.perf_counter() - began,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
