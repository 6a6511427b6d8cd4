"""Loss curves of a short pace-prediction run per speed setting, against fp32 (plain torch).

The GPU speed settings (bf16 autocast, channels_last_3d, R(2+1)D's factorised convs run
as 2D convs, torch.compile, a fused SGD) must leave the training numerics unchanged. This
script shows it: it trains the same model from the same init on the same batches once per
setting and seed, and compares the loss curves of each setting with fp32's. Settings:

    fp32  TF32 off for matmuls and cuDNN convs, eager, contiguous: the reference
    bf16  bf16 autocast + channels_last_3d model and input, eager: the anchor's setting
    best  bf16 + channels_last_3d + `set_conv_impl(model, "conv2d")` + the backbone
          compiled in place as the training loop compiles it with `train.compile`
          (`nn.Module.compile`, static shapes: it keeps the state_dict keys) +
          `torch.optim.SGD(fused=True)`

TF32 is off in every setting, so bf16 and best differ from fp32 only by what they name;
cuDNN autotuning (`cudnn.benchmark`) is on for all of them on CUDA, as in the training loop.

Data: procedural pace-prediction clips generated on the device (`make_batch`). Per clip a
random smooth texture (3 channels, larger than the frame) drifts in a random direction at a
base speed of `SPEED_RANGE` px/frame; a clip at pace p (1..4, label p-1) takes every p-th
frame of that video, so it moves p times as fast. Plus a little per-frame noise; values are
roughly zero mean, unit variance, (B, 3, T, H, W). Training batch i of seed k is drawn
from its own generator seeded from (k, i), so every setting sees the same batches; 4
held-out batches (the same for every seed) give an eval loss and accuracy at the end, run
without grad in the run's own precision, layout and conv implementation, eagerly (the
compiled backbone runs under `torch.compiler.set_stance("force_eager")`: no_grad would
recompile it),
with BatchNorm on batch statistics as in training (the running statistics lag the weights
after a short run at a raised lr, which made eval-mode accuracy mostly seed noise).

Model: `build_backbone(--model, --width)` + `ClassifierHead(out_dim, 4)`, built after
`torch.manual_seed(seed)`, so the seed fixes both the init and the data. Optimiser: the
pace reference's shape (SGD, momentum 0.9, weight decay 5e-3) but with lr raised from
1e-3 to `--lr` 0.05, so a run of ~100 steps learns visibly: a curve comparison of a model
that does not learn proves nothing. Loss: cross entropy of the float32 logits.

Verdict: per-step losses are averaged over consecutive windows of `--window` steps. For
each setting s and seed k, d(s, k) = max over windows |mean loss(s, k) - mean loss(fp32,
k)| (same init and data: the numerics effect); the noise is the largest such distance
between fp32 runs of two different seeds (the seed effect; needs two seeds). A setting is
"within noise" when every d(s, k) <= `--tolerance` x noise. The tolerance defaults to 2,
not 1, because both sides are single samples of one heavy-tailed statistic. A short run at
this lr is chaotic: bf16 rounding alone moves the gradients at init by tens of percent
(CPU, width 0.25: 40 % median relative error per tensor against fp64; fp32: 1e-6), and in
CPU trials (4 seeds, 80 steps) same-seed bf16-vs-fp32 distances were as large as the
fp32-vs-fp32 distances between seeds (means 0.26 and 0.28 at lr 0.05, 0.15 and 0.16 at lr
0.02), which spread over a factor of ~4. Resampling those distances, a setting with fp32's
numerics would fail the verdict ~65 % of the time at tolerance 1 with 2 seeds and ~15 % at
2; with `--seeds 0 1 2` (three noise pairs) ~50 % and ~1 %. So the same seed buys little
correlation: read the verdict as "no further from fp32 than a different seed is", and use
three seeds for a firmer one. Final-window losses and held-out accuracies are compared
with their own seed noise (recorded, not part of the verdict), and the script says loudly
when fp32 did not learn (final-window loss not below `LEARNED_FRACTION` x ln 4). Timing:
each run's wall time, its first step (with the compile for best, cuDNN autotuning for all)
and clips/s over the other steps (generating the batches on the device included; no
per-step sync). The exit code is 0 whatever the verdict (it is a benchmark); `--json`
records it.

Runs from the repo or as a copy of it on a GPU machine that has only torch installed: it
imports `rayssl.models` from the repo root and nothing else from rayssl (matplotlib only
for `--plot`, when installed). The default run (r21d, width 1, 16 x 112 px, batch 30, 120
steps, seeds 0 and 1) should take about two minutes on an H100-class GPU (estimated from
fp32 ~175 and bf16 ~750 clips/s there; not yet measured), most of it fp32 training and the
compile of best; `--seeds 0 1 2` adds about half. The CPU command below learns (final-window
loss ~0.6) in about 2 minutes on one thread.

    python benchmarks/loss_curves.py --json loss_curves.json --plot loss_curves.png
    python benchmarks/loss_curves.py --device cpu --model r21d --width 0.25 --size 32 \\
        --clip-len 8 --batch-size 16 --steps 80 --compile-backend aot_eager
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rayssl.models import (  # noqa: E402
    BACKBONES,
    ClassifierHead,
    build_backbone,
    set_conv_impl,
)

SETTINGS = ("fp32", "bf16", "best")
NUM_PACES = 4
#: Base drift speed of the texture, px/frame (uniform); a clip at pace p moves p times as
#: fast. Narrower than 1-2 so that the four paces' speed ranges barely overlap.
SPEED_RANGE = (1.0, 1.5)
#: Texture correlation length, px (white noise upsampled from one value per CELL px).
CELL = 6
#: Std of the per-frame noise, relative to the unit-variance texture.
FRAME_NOISE = 0.1
#: Held-out batches, drawn from their own seed stream (the same for every training seed).
EVAL_BATCHES = 4
#: A run "learned" when its final-window loss is below this fraction of ln(4) (chance).
LEARNED_FRACTION = 0.8
CHANCE_LOSS = math.log(NUM_PACES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(SETTINGS),
        choices=SETTINGS,
        help="fp32 always runs too: it is the reference",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="init + data")
    parser.add_argument("--model", default="r21d", choices=list(BACKBONES))
    parser.add_argument("--width", type=float, default=1.0, help="backbone channel multiplier")
    parser.add_argument("--size", type=int, default=112, help="frame height and width")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per clip")
    parser.add_argument("--batch-size", type=int, default=30, help="clips per step")
    parser.add_argument("--steps", type=int, default=120, help="training steps per run")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--window", type=int, default=10, help="steps per averaged window")
    parser.add_argument(
        "--tolerance", type=float, default=2.0, help="within noise: d <= tolerance x noise"
    )
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode (best)")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile backend (best); aot_eager skips inductor's codegen (CPU tests)",
    )
    parser.add_argument("--no-compile", action="store_true", help="best without torch.compile")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="save a PNG of the curves (needs matplotlib)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.window < 1 or args.batch_size < 1:
        parser.error("--steps, --window and --batch-size must be positive")
    args.seeds = list(dict.fromkeys(args.seeds))
    args.settings = list(dict.fromkeys(["fp32", *args.settings]))  # fp32 is the reference
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ data


def batch_seed(seed: int, index: int) -> int:
    """Generator seed of batch `index` of seed `seed` (-1: the held-out batches). A hash,
    32 bits: the CPU generator (mt19937) keeps only the low 32 bits of its seed, so
    `seed * 2**20 + index`-style seeds would collide."""
    digest = hashlib.sha256(f"loss_curves:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_batch(
    seed: int,
    index: int,
    batch_size: int,
    clip_len: int,
    size: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `index` of seed `seed`: float clips (B, 3, T, H, W) and pace labels (B,).

    Deterministic in (seed, index, shape, device type). Labels are a shuffled
    `arange(B) % 4` (balanced); clip b drifts by `speed * pace` px per frame in direction
    `angle`, positions rounded to whole pixels, cropped from its texture by one gather.
    """
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(batch_seed(seed, index))
    b, t = batch_size, clip_len

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=device)

    labels = torch.randperm(b, generator=gen, device=device) % NUM_PACES
    pace = (labels + 1).float()
    speed = SPEED_RANGE[0] + (SPEED_RANGE[1] - SPEED_RANGE[0]) * uniform(b)
    angle = 2 * math.pi * uniform(b)
    step = (speed * pace)[:, None] * torch.stack((torch.sin(angle), torch.cos(angle)), 1)
    # Texture big enough for the longest path (pace 4, top speed) plus a pixel each side.
    travel = math.ceil(SPEED_RANGE[1] * NUM_PACES * (t - 1))
    side = size + travel + 2
    cells = -(-side // CELL) + 1
    coarse = torch.randn(b, 3, cells, cells, generator=gen, device=device)
    texture = nn.functional.interpolate(
        coarse, size=(side, side), mode="bicubic", align_corners=False
    )
    texture = (texture - texture.mean((1, 2, 3), keepdim=True)) / texture.std(
        (1, 2, 3), keepdim=True
    )
    # Top-left corner of frame j: the path (B, T, 2) centred in the texture.
    frames = torch.arange(t, device=device, dtype=torch.float32)
    path = step[:, None, :] * (frames[None, :, None] - (t - 1) / 2)
    corner = (path + (side - size) / 2).round().long().clamp_(0, side - size)
    offsets = torch.arange(size, device=device)
    rows = corner[..., 0, None] + offsets  # (B, T, H)
    cols = corner[..., 1, None] + offsets  # (B, T, W)
    flat = texture.flatten(2)  # (B, 3, side*side)
    index_hw = (rows[..., :, None] * side + cols[..., None, :]).view(b, 1, t * size * size)
    clips = flat.gather(2, index_hw.expand(b, 3, -1)).view(b, 3, t, size, size)
    clips = clips + FRAME_NOISE * torch.randn(clips.shape, generator=gen, device=device)
    return clips, labels


# ---------------------------------------------------------------------------- training


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def build_model(name: str, width: float, seed: int) -> nn.Sequential:
    """Backbone + pace classifier, initialised from `seed`."""
    torch.manual_seed(seed)
    backbone = build_backbone(name, width=width)
    return nn.Sequential(backbone, ClassifierHead(backbone.out_dim, NUM_PACES))


def prepare(
    model: nn.Sequential, setting: str, args: argparse.Namespace, device: torch.device
) -> tuple[nn.Sequential, torch.optim.Optimizer, dict]:
    """Apply `setting` to `model` (moved to `device`); the optimiser and what was done."""
    model = model.to(device)
    done: dict = {"bf16": setting != "fp32", "channels_last": setting != "fp32"}
    if setting != "fp32":
        model = model.to(memory_format=torch.channels_last_3d)
    fused = setting == "best"
    if setting == "best":
        backbone = model[0]
        done["conv2d"] = set_conv_impl(backbone, "conv2d")
        if not args.no_compile:
            torch._dynamo.reset()  # a fresh compile per run: no cache entries of earlier runs
            # As rayssl.train.step.place_model compiles with train.compile: the backbone's
            # forward as one graph (stem, stages and pooling), static shapes (automatic
            # dynamic shapes fail in inductor on the 2D formulation: "cannot determine
            # truth value of Relational").
            kwargs: dict = {"backend": args.compile_backend, "dynamic": False}
            if args.compile_backend == "inductor":
                kwargs["mode"] = args.compile_mode
            backbone.compile(**kwargs)
            done["compiled"] = 1
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-3, fused=fused
    )
    done["fused_sgd"] = fused
    return model, optimizer, done


def train_run(setting: str, seed: int, args: argparse.Namespace, device: torch.device) -> dict:
    """One run: per-step losses and accuracies, held-out loss and accuracy, timings."""
    set_tf32(False)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model, optimizer, done = prepare(
        build_model(args.model, args.width, seed), setting, args, device
    )
    bf16 = setting != "fp32"
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    shape = (args.batch_size, args.clip_len, args.size)

    def to_input(clips: torch.Tensor) -> torch.Tensor:
        return clips.contiguous(memory_format=torch.channels_last_3d) if bf16 else clips

    losses, hits = [], []
    model.train()
    synchronize(device)
    start = time.perf_counter()
    first_step_s = 0.0
    for i in range(args.steps):
        clips, labels = make_batch(seed, i, *shape, device=device)
        with autocast:
            logits = model(to_input(clips))
        loss = nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        hits.append((logits.detach().argmax(1) == labels).float().mean())
        if i == 0:
            synchronize(device)
            first_step_s = time.perf_counter() - start
    synchronize(device)
    train_s = time.perf_counter() - start

    # Held-out batches with BatchNorm on batch statistics, as in the training steps: after
    # ~100 steps at the raised lr the running statistics lag the weights, which made
    # eval-mode losses jump by seed (2.2 vs 0.5 on CPU trials) and hid the comparison.
    eval_loss, eval_hits = 0.0, 0.0
    eager = "compiled" in done  # compiled stages would recompile for no_grad
    with (
        torch.compiler.set_stance("force_eager") if eager else contextlib.nullcontext(),
        torch.no_grad(),
    ):
        for i in range(EVAL_BATCHES):
            clips, labels = make_batch(-1, i, *shape, device=device)
            with autocast:
                logits = model(to_input(clips))
            eval_loss += nn.functional.cross_entropy(logits.float(), labels).item()
            eval_hits += (logits.argmax(1) == labels).float().mean().item()
    elapsed_s = time.perf_counter() - start
    later = args.steps - 1
    return {
        "setting": setting,
        "seed": seed,
        "applied": done,
        "losses": torch.stack(losses).cpu().tolist(),
        "accs": torch.stack(hits).cpu().tolist(),
        "eval_loss": eval_loss / EVAL_BATCHES,
        "eval_acc": eval_hits / EVAL_BATCHES,
        "first_step_s": first_step_s,
        "clips_s": args.batch_size * later / (train_s - first_step_s) if later else None,
        "elapsed_s": elapsed_s,
    }


# ----------------------------------------------------------------------------- verdict


def window_means(values: list[float], window: int) -> list[float]:
    """Means over consecutive full windows of `window` values (one window of all of them
    when there are fewer); a shorter tail is left out."""
    window = min(window, len(values))
    count = len(values) // window
    return [sum(values[i * window : (i + 1) * window]) / window for i in range(count)]


def curve_distance(a: list[float], b: list[float]) -> float:
    """Largest absolute difference between two window-mean curves."""
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def run_name(setting: str, seed: int) -> str:
    return f"{setting}/{seed}"


def within(per_seed: dict[str, dict], noise: dict, key: str, tolerance: float) -> bool | None:
    """Every seed's distance `key` <= tolerance x its seed noise; None without a noise."""
    if noise[key] is None:
        return None
    return all(d[key] <= tolerance * noise[key] for d in per_seed.values())


def compare(runs: dict[str, dict], args: argparse.Namespace) -> dict:
    """Distances to fp32 per setting and seed, the seed noise, the verdict per setting."""
    seeds, fp32 = args.seeds, {s: runs[run_name("fp32", s)] for s in args.seeds}
    pairs = [(a, b) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]

    def seed_noise(key) -> float | None:  # largest difference between fp32 runs of two seeds
        if not pairs:
            return None
        return max(key(fp32[a], fp32[b]) for a, b in pairs)

    noise = {
        "curve": seed_noise(lambda a, b: curve_distance(a["window_means"], b["window_means"])),
        "final_loss": seed_noise(lambda a, b: abs(a["window_means"][-1] - b["window_means"][-1])),
        "eval_acc": seed_noise(lambda a, b: abs(a["eval_acc"] - b["eval_acc"])),
    }
    learned = {
        name: run["window_means"][-1] < LEARNED_FRACTION * CHANCE_LOSS for name, run in runs.items()
    }
    verdict: dict = {}
    for setting in args.settings:
        if setting == "fp32":
            continue
        per_seed = {}
        for seed in seeds:
            run, ref = runs[run_name(setting, seed)], fp32[seed]
            per_seed[str(seed)] = {
                "curve": curve_distance(run["window_means"], ref["window_means"]),
                "final_loss": abs(run["window_means"][-1] - ref["window_means"][-1]),
                "eval_acc": abs(run["eval_acc"] - ref["eval_acc"]),
            }
        tolerance = args.tolerance
        verdict[setting] = {
            "distances": per_seed,
            "max_curve_distance": max(d["curve"] for d in per_seed.values()),
            "within_noise": within(per_seed, noise, "curve", tolerance),  # the verdict
            "final_loss_within_noise": within(per_seed, noise, "final_loss", tolerance),
            "eval_acc_within_noise": within(per_seed, noise, "eval_acc", tolerance),
        }
    return {
        "noise": noise,
        "tolerance": args.tolerance,
        "learned": learned,
        "fp32_learned": all(learned[run_name("fp32", s)] for s in seeds),
        "settings": verdict,
    }


# ----------------------------------------------------------------------------- output


def format_rows(lines: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
            for i, cell in enumerate(line)
        )
        for line in lines
    )


def curves_table(runs: dict[str, dict], window: int) -> str:
    """Window means (rows: windows, columns: runs), then final, held-out and timing rows."""
    names = list(runs)
    window = min(window, len(next(iter(runs.values()))["losses"]))
    lines = [["steps", *names]]
    count = len(runs[names[0]]["window_means"])
    for w in range(count):
        row = [f"{w * window}-{(w + 1) * window - 1}"]
        row += [f"{runs[n]['window_means'][w]:.4f}" for n in names]
        lines.append(row)
    lines.append(["final acc", *(f"{_mean_tail(runs[n]['accs'], window):.3f}" for n in names)])
    lines.append(["eval loss", *(f"{runs[n]['eval_loss']:.4f}" for n in names)])
    lines.append(["eval acc", *(f"{runs[n]['eval_acc']:.3f}" for n in names)])
    lines.append(["1st step s", *(f"{runs[n]['first_step_s']:.1f}" for n in names)])
    lines.append(
        [
            "clips/s",
            *("-" if runs[n]["clips_s"] is None else f"{runs[n]['clips_s']:.1f}" for n in names),
        ]
    )
    lines.append(["run s", *(f"{runs[n]['elapsed_s']:.1f}" for n in names)])
    return format_rows(lines)


def _mean_tail(values: list[float], window: int) -> float:
    tail = values[-window:]
    return sum(tail) / len(tail)


def verdict_lines(result: dict, args: argparse.Namespace) -> list[str]:
    noise = result["noise"]

    def fmt(x: float | None, spec: str = ".4f") -> str:
        return "n/a" if x is None else format(x, spec)

    lines = [
        f"seed noise (fp32 across seeds): curve {fmt(noise['curve'])}, final-window loss "
        f"{fmt(noise['final_loss'])}, eval acc {fmt(noise['eval_acc'], '.3f')}"
    ]
    for setting, v in result["settings"].items():
        parts = ", ".join(
            f"seed {seed}: curve {d['curve']:.4f} final {d['final_loss']:.4f} "
            f"eval acc {d['eval_acc']:.3f}"
            for seed, d in v["distances"].items()
        )
        lines.append(f"{setting} vs fp32 (same seed): {parts}")
    if len(args.seeds) == 2:
        lines.append(
            "note: with 2 seeds the noise is one pair's distance; --seeds 0 1 2 firms it up"
        )
    for setting, v in result["settings"].items():
        if v["within_noise"] is None:
            status = "NO VERDICT (the noise needs two seeds)"
        else:
            status = "within noise" if v["within_noise"] else "NOT within noise"
            status += (
                f": max curve distance {v['max_curve_distance']:.4f} vs "
                f"{args.tolerance:g} x noise {args.tolerance * noise['curve']:.4f}"
            )
        lines.append(f"verdict {setting}: {status}")
    stuck = [name for name, ok in result["learned"].items() if not ok]
    limit = LEARNED_FRACTION * CHANCE_LOSS
    if not result["fp32_learned"]:
        lines.append(
            f"WARNING: fp32 DID NOT LEARN (final-window loss not below {limit:.3f}, chance "
            f"{CHANCE_LOSS:.3f}): a curve comparison of a model that does not learn proves "
            "nothing; raise --steps or --lr"
        )
    elif stuck:
        lines.append(
            f"WARNING: runs that did not learn (final-window loss >= {limit:.3f}): "
            + ", ".join(stuck)
        )
    else:
        lines.append(
            f"every run learned: final-window loss < {limit:.3f} (chance {CHANCE_LOSS:.3f})"
        )
    return lines


def plot_curves(runs: dict[str, dict], window: int, path: Path) -> bool:
    """PNG of moving-average losses: fp32 solid, the others dashed/dotted, a colour per
    seed. False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    styles = {"fp32": "-", "bf16": "--", "best": ":"}
    seeds = list(dict.fromkeys(run["seed"] for run in runs.values()))
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, run in runs.items():
        losses = run["losses"]
        w = min(window, len(losses))
        smooth = [sum(losses[i - w + 1 : i + 1]) / w for i in range(w - 1, len(losses))]
        ax.plot(
            range(w - 1, len(losses)),
            smooth,
            linestyle=styles.get(run["setting"], "-."),
            color=f"C{seeds.index(run['seed'])}",
            label=name,
        )
    ax.axhline(CHANCE_LOSS, color="grey", linewidth=0.8, label="chance (ln 4)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"training loss (moving mean of {window} steps)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    print(
        f"device {device_description(device)}, torch {torch.__version__}, {args.model} width "
        f"{args.width}, batch {args.batch_size} x (3, {args.clip_len}, {args.size}, "
        f"{args.size}), {args.steps} steps, lr {args.lr}, seeds {args.seeds}"
    )
    runs: dict[str, dict] = {}
    start = time.perf_counter()
    failures: dict[str, str] = {}
    for setting in list(args.settings):
        for seed in args.seeds:
            try:
                run = train_run(setting, seed, args, device)
            except Exception as e:  # e.g. a compile failure: compare the settings that ran
                if setting == "fp32":
                    raise
                traceback.print_exc()
                failures[setting] = (
                    f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                )
                print(f"{run_name(setting, seed)} FAILED: {failures[setting]}")
                break
            run["window_means"] = window_means(run["losses"], args.window)
            runs[run_name(setting, seed)] = run
            print(
                f"{run_name(setting, seed)}: {run['elapsed_s']:.1f} s (first step "
                f"{run['first_step_s']:.1f} s), final-window loss {run['window_means'][-1]:.4f}, "
                f"eval acc {run['eval_acc']:.3f}"
            )
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"{len(runs)} runs in {time.perf_counter() - start:.1f} s")
    args.settings = [s for s in args.settings if s not in failures]
    runs = {name: run for name, run in runs.items() if name.split("/")[0] in args.settings}
    result = compare(runs, args)
    result["failures"] = failures
    print(curves_table(runs, args.window))
    for line in verdict_lines(result, args):
        print(line)
    for setting, error in failures.items():
        print(f"verdict {setting}: FAILED to run ({error})")
    if args.plot:
        if plot_curves(runs, args.window, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("plot skipped: matplotlib is not installed")
    report = {
        "device": device_description(device),
        "torch": torch.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": runs,
        **result,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
