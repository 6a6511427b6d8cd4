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
            (B, T, H, W, 3) batch from host memory, pinned and copied without blocking,
            converted to float, normalised and laid out channels_last_3d on the device,
            bf16 autocast, loss from float32 logits, SGD step, then a device sync (the loop
            syncs every step to time its data wait), and cuDNN autotuning as the loop
            sets it (`train.cudnn_benchmark`, default on). On CPU: no pinning, fp32, as
            the loop

For each model and mode it prints params (M, backbone only), forward GFLOPs per clip
(FlopCounterMode on one clip, head included), clips/s, achieved TFLOP/s (a train step
counted as 3x the forward FLOPs), peak memory (CUDA only) and, with --anchor, the
ratio of clips/s to a reference run of the same model and mode.

All modes run in one process, one after the other, for each model: the anchor's settings
and rayssl's own step side by side. Runs from the repo (`python
benchmarks/train_throughput.py`) or as a copy of the repo on a GPU machine that has only
torch installed: it imports `rayssl.models` from the repo root and nothing else from
rayssl (the `rayssl` mode repeats the few lines of rayssl/train/step.py it needs; a test
checks that they agree).

    python benchmarks/train_throughput.py --anchor benchmarks/h100-anchor.json
    python benchmarks/train_throughput.py --device cpu --size 64 --batch-size 2 --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.models import BACKBONES, ClassifierHead, build_backbone  # noqa: E402

MODES = ("fp32", "tf32", "bf16cl", "rayssl")
NUM_PACES = 4
#: rayssl/train/step.py's pixel normalisation (MEAN, STD), RGB.
MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
# (batch size, timed steps, warmup steps) when not given on the command line.
DEFAULTS = {"cuda": (30, 20, 5), "cpu": (4, 3, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--batch-size", type=int, help="clips per step (default 30 CUDA, 4 CPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=112, help="frame height and width")
    parser.add_argument("--width", type=float, default=1.0, help="backbone channel multiplier")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--anchor", type=Path, help="reference results JSON to compare with")
    return parser.parse_args(argv)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def build_model(name: str, width: float) -> nn.Sequential:
    """Backbone + pace classifier: clips (B, 3, T, H, W) -> logits (B, NUM_PACES)."""
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


def measure(
    name: str, mode: str, args: argparse.Namespace, device: torch.device
) -> dict[str, float]:
    """Time `args.steps` training steps after `args.warmup` ones; clips/s and peak GiB."""
    set_tf32(mode == "tf32")
    cuda = device.type == "cuda"
    if cuda:  # every mode autotunes, as the training loop does (train.cudnn_benchmark)
        torch.backends.cudnn.benchmark = True
    model = build_model(name, args.width).to(device)
    shape = (args.batch_size, 3, args.clip_len, args.size, args.size)
    clips = torch.randn(*shape, device=device) if mode != "rayssl" else None
    labels = torch.randint(0, NUM_PACES, (args.batch_size,), device=device)
    autocast: contextlib.AbstractContextManager = contextlib.nullcontext()
    # rayssl: bf16 + channels_last on CUDA only (DeviceSettings.for_device), fp32 on CPU.
    bf16 = mode == "bf16cl" or (mode == "rayssl" and cuda)
    if bf16:
        model = model.to(memory_format=torch.channels_last_3d)
        if clips is not None:
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    # The host batch the data pipeline hands over: uint8 clips (B, T, H, W, 3).
    host = torch.randint(0, 256, (shape[0], shape[2], shape[3], shape[4], 3), dtype=torch.uint8)
    # The pace reference optimiser settings.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-3)

    def step() -> None:
        x = clips
        if x is None:  # rayssl: batch_to_device + clip_to_input, every step
            t = host.pin_memory() if cuda else host
            x = clip_to_input(t.to(device, non_blocking=cuda), channels_last=bf16)
        with autocast:
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if mode == "rayssl":
            synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    result = {"clips_s": args.batch_size * args.steps / elapsed}
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
    header = ["model", "mode", "params(M)", "GFLOPs/clip", "clips/s", "TFLOP/s", "mem(GiB)"]
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
            f"{row['params_M']:.3f}",
            f"{row['gflops_fwd']:.2f}",
            f"{row['clips_s']:.1f}",
            f"{row['tflops']:.3f}",
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


def speedups(rows: list[dict]) -> list[str]:
    """Per model: each mode's clips/s over fp32's (the reference pattern), and rayssl's
    step over the anchor's bf16cl setting (what the uint8 input path and the per-step
    sync cost)."""
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
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    batch_size, steps, warmup = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    args.batch_size = args.batch_size or batch_size
    args.steps = args.steps or steps
    args.warmup = warmup if args.warmup is None else args.warmup
    anchor = load_anchor(args.anchor) if args.anchor else {}

    print(
        f"device {device_description(device)}, torch {torch.__version__}, "
        f"batch {args.batch_size} x (3, {args.clip_len}, {args.size}, {args.size}), "
        f"width {args.width}, {args.warmup} warmup + {args.steps} timed steps"
    )
    rows: list[dict] = []
    for name in args.models:
        params_m = sum(p.numel() for p in build_backbone(name, args.width).parameters()) / 1e6
        gflops = forward_gflops(name, args.width, args.clip_len, args.size)
        for mode in args.modes:
            if mode == "tf32" and device.type != "cuda":
                print(f"note: {name}/tf32 skipped: TF32 is a CUDA tensor-core mode")
                continue
            row: dict = {"model": name, "mode": mode, "params_M": params_m, "gflops_fwd": gflops}
            try:
                row.update(measure(name, mode, args, device))
            except torch.cuda.OutOfMemoryError:
                row = {"model": name, "mode": mode, "error": "out of memory"}
            else:
                row["tflops"] = 3 * gflops * row["clips_s"] / 1e3
                if (name, mode) in anchor:
                    row["anchor_ratio"] = row["clips_s"] / anchor[name, mode]
            rows.append(row)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(format_table(rows, with_anchor=bool(anchor)))
    for line in speedups(rows):
        print(line)
    if args.json:
        config = {k: getattr(args, k) for k in ("batch_size", "clip_len", "size", "width")}
        config |= {"steps": args.steps, "warmup": args.warmup}
        report = {
            "device": device_description(device),
            "torch": torch.__version__,
            "config": config,
            "train": rows,
        }
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
