"""Does a backbone learn the pretext, or memorise its clips? A fixed-draw diagnostic.

Draws one clip of each of the first --train videos of a manifest's pre-training split
(the pretext's own sampling and augmentation, seed 0) and one held-out clip of each of
the next --test videos (evaluation sampling, seed 1), holds them in memory, and trains a
fresh model of the pretext's debug config on the training clips in plain torch (no Ray,
no data pipeline: what is measured is the model, not the loader). Every 100 steps it
prints the training accuracy of the last 50 steps and the held-out accuracy: a model
that learns the task raises both; one that memorises the clips raises the first only.

    .venv/bin/python benchmarks/pretext_fit.py --manifest /tmp/tr/vit/manifest.parquet \\
        --backbone vit_tiny --lrs 5e-4,1e-4 [--patch 8]
    .venv/bin/python benchmarks/pretext_fit.py --manifest ... --backbone c3d --lrs 1e-3

(`--manifest`: a transfer benchmark's, `benchmarks/transfer_synth.py`.) Found with it:
docs/evaluation.md, section 6 (pace on the tiny ViT). Not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rayssl.clips.pipeline import sample_row, sampler_spec  # noqa: E402
from rayssl.config import load_config  # noqa: E402
from rayssl.pretext import build_pretext  # noqa: E402
from rayssl.train.step import DeviceSettings, batch_to_device, build_model, train_step  # noqa: E402

#: The transfer benchmark's geometry for each backbone (its CNN and ViT rows).
GEOMETRY = {
    "c3d": ["model.width=0.25", "data.clip_len=16", "data.augment.crop=[40,40]"],
    "vit_tiny": ["model.width=1.0", "data.clip_len=8", "data.augment.crop=[48,48]"],
}


def draws(rows: list[dict], spec) -> dict[str, np.ndarray]:
    """One sample per row (epoch 0, draw 0), stacked; the arrays a batch needs."""
    samples = [sample_row({**r, "epoch": 0, "draw": 0}, spec) for r in rows]
    keys = [k for k, v in samples[0].items() if isinstance(v, np.ndarray) and k != "indices"]
    out = {k: np.stack([s[k] for s in samples]) for k in keys}
    out["valid"] = np.array([bool(s["valid"]) for s in samples])
    return out


def accuracy(model, data: dict[str, np.ndarray], settings: DeviceSettings) -> float:
    model.eval()
    correct = total = 0.0
    with torch.no_grad():
        for i in range(0, len(data["valid"]), 32):
            batch = batch_to_device({k: v[i : i + 32] for k, v in data.items()}, settings)
            _, m = model(batch)
            correct, total = correct + float(m["correct"]), total + float(m["num_valid"])
    model.train()
    return correct / max(total, 1.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--config", default=str(ROOT / "configs" / "debug.yaml"))
    ap.add_argument("--backbone", default="vit_tiny", choices=sorted(GEOMETRY))
    ap.add_argument("--lrs", default="5e-4", help="comma-separated AdamW learning rates")
    ap.add_argument("--train", type=int, default=512, help="training clips (one per video)")
    ap.add_argument("--test", type=int, default=192, help="held-out clips (other videos)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--patch",
        type=int,
        default=0,
        help="ViT patch size in pixels for this diagnostic (default: the presets' 16)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.patch:  # the presets' one patch size, read when a ViT is built
        import rayssl.models.vit as vit

        vit.PATCH = args.patch
    overrides = [f"data.manifest={args.manifest}", f"model.backbone={args.backbone}"]
    cfg = load_config(Path(args.config), [*overrides, *GEOMETRY[args.backbone]])
    pretext = build_pretext(cfg.pretext, cfg.data.clip_len)
    rows = [r for r in pq.read_table(args.manifest).to_pylist() if r["split"] == "pretrain"]
    if len(rows) < args.train + args.test:
        ap.error(f"--manifest: {len(rows)} pretrain videos, fewer than --train + --test")
    train = draws(rows[: args.train], sampler_spec(cfg.data, pretext, seed=0))
    test = draws(
        rows[args.train : args.train + args.test],
        sampler_spec(cfg.data, pretext, seed=1, train=False),
    )
    settings = DeviceSettings(torch.device("cpu"))
    print(f"{args.backbone} {cfg.pretext.name}: clips {train['clip'].shape[1:]}", flush=True)
    for lr in (float(x) for x in args.lrs.split(",")):
        torch.manual_seed(0)
        model = build_model(cfg, pretext)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, betas=(0.9, 0.95))
        rng, t0, accs = np.random.default_rng(0), time.perf_counter(), []
        for step in range(1, args.steps + 1):
            idx = rng.choice(args.train, args.batch_size, replace=False)
            batch = batch_to_device({k: v[idx] for k, v in train.items()}, settings)
            m = train_step(model, batch, opt, settings)
            accs.append(float(m["correct"]) / max(float(m["num_valid"]), 1.0))
            if step % 100 == 0:
                print(
                    f"lr {lr:g} step {step}: train acc (last 50) {np.mean(accs[-50:]):.3f}, "
                    f"held-out acc {accuracy(model, test, settings):.3f} "
                    f"({time.perf_counter() - t0:.0f}s)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
