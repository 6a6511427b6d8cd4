"""`rayssl capacity`: the capacity model's arithmetic, and the command end to end on real
generated videos (decode measured with `sample_row`, training measured with real steps)."""

from __future__ import annotations

import json
import math

import pytest

from rayssl.cli import main
from rayssl.tools.capacity import (
    CapacityError,
    ClusterShape,
    anchor_rate,
    cores_per_gpu,
    data_wait_fraction,
    epoch_clips,
    estimate_shape,
)
from tests.conftest import ROOT, load_benchmark

DEBUG = str(ROOT / "configs" / "debug.yaml")
ANCHOR = ROOT / "benchmarks" / "h100-anchor.json"


# ------------------------------------------------------------------- the model


def test_cores_per_gpu_and_data_wait():
    assert cores_per_gpu(25.0, 750.0) == 30.0
    assert cores_per_gpu(0.0, 750.0) == math.inf
    assert data_wait_fraction(1500.0, 3000.0) == 0.5
    assert data_wait_fraction(4000.0, 3000.0) == 0.0  # more decode than demand: no wait
    assert data_wait_fraction(0.0, 0.0) == 0.0


def test_decode_short_of_demand_waits_half_the_time():
    # 4 GPUs on one 68-CPU node, 2 CPUs per train worker: 60 decode CPUs x 25 = 1500
    # clips/s against 4 x 750 = 3000.
    shape = ClusterShape(gpus=4, nodes=1, cpus_per_node=68, cpus_per_worker=2)
    est = estimate_shape(25.0, 750.0, shape, clips=3000)
    assert est.decode_cpus == 60.0
    assert est.decode_capacity == 1500.0
    assert est.train_demand == 3000.0
    assert est.data_wait_frac == 0.5
    assert est.clips_per_s == 1500.0
    assert est.gpus_fed == 2.0
    assert est.decode_cpus_needed == 120.0
    assert est.epoch_s == 2.0
    assert not est.hangs


def test_enough_decode_cpus_means_no_wait():
    shape = ClusterShape(gpus=2, nodes=2, cpus_per_node=40, cpus_per_worker=2)
    est = estimate_shape(25.0, 750.0, shape, clips=3000)
    assert est.decode_cpus == 76.0
    assert est.decode_capacity == 1900.0
    assert est.data_wait_frac == 0.0
    assert est.clips_per_s == 1500.0  # the GPUs are the limit
    assert est.epoch_s == 2.0


def test_per_pipeline_cpu_cap_limits_decode():
    # 60 decode CPUs, but each of the 4 workers' pipelines may use 10: 40 x 25 = 1000.
    shape = ClusterShape(gpus=4, nodes=1, cpus_per_node=68, cpus_per_worker=2)
    est = estimate_shape(25.0, 750.0, shape, clips=3000, cpus_per_pipeline=10.0)
    assert est.decode_cpus == 40.0 and est.decode_capacity == 1000.0
    assert est.data_wait_frac == 1 - 1000.0 / 3000.0 and est.clips_per_s == 1000.0


def test_cpu_only_nodes_add_decode_cpus():
    # cluster/aws.yaml: 4 g5.xlarge (4 vCPUs, 1 GPU) + 2 c6i.8xlarge (32 vCPUs), 2 CPUs per
    # train worker: (4 x (4 - 2) + 2 x 32) / 4 = 18 decode vCPUs per GPU.
    shape = ClusterShape(gpus=4, nodes=4, cpus_per_node=4, cpus_per_worker=2, extra_cpus=64)
    assert shape.decode_cpus / shape.gpus == 18.0


def test_no_cpu_left_for_decoding_hangs():
    est = estimate_shape(25.0, 750.0, ClusterShape(2, 1, 2, 1), clips=100)
    assert est.hangs and est.decode_cpus == 0.0
    assert est.data_wait_frac == 1.0 and est.clips_per_s == 0.0 and est.epoch_s == math.inf
    # Half a CPU left: a 1-CPU decode task never starts; a 0.5-CPU one does.
    shape = ClusterShape(gpus=1, nodes=1, cpus_per_node=1.5, cpus_per_worker=1)
    assert estimate_shape(25.0, 750.0, shape, 100, cpus_per_task=1.0).hangs
    half = estimate_shape(25.0, 750.0, shape, 100, cpus_per_task=0.5)
    assert not half.hangs and half.decode_capacity == 12.5


def test_epoch_clips_wraps_shards_and_caps_steps():
    assert epoch_clips(9, 2, 1, 16) == 18
    assert epoch_clips(9, 2, 4, 16) == 20  # 18 draws over 4 workers: 5 each
    assert epoch_clips(9, 2, 4, 16, max_steps=1) == 16  # 1 step of 16 / 4 per worker


def test_shape_rejects_nonsense():
    with pytest.raises(CapacityError, match="--gpus 0"):
        ClusterShape(gpus=0, cpus_per_node=8)
    with pytest.raises(CapacityError, match=">= 0"):
        ClusterShape(gpus=1, cpus_per_node=-1)


def test_anchor_lookup_reads_the_reference_file():
    rows = json.loads(ANCHOR.read_text())["train"]
    expected = next(r["clips_s"] for r in rows if (r["model"], r["mode"]) == ("r21d", "bf16cl"))
    rate, info = anchor_rate(ANCHOR, "r21d", "bf16")
    assert rate == expected
    assert info["mode"] == "bf16cl" and info["device"].startswith("NVIDIA H100")
    fp32 = next(r["clips_s"] for r in rows if (r["model"], r["mode"]) == ("r21d", "fp32"))
    assert anchor_rate(ANCHOR, "r21d", "fp32")[0] == fp32
    with pytest.raises(CapacityError, match="no clips/s for backbone 's3dg'"):
        anchor_rate(ANCHOR, "s3dg", "bf16")
    with pytest.raises(CapacityError, match="--precision"):
        anchor_rate(ANCHOR, "r21d", "fp16")


# ----------------------------------------------------------------- the command

TINY = [
    "model.width=0.0625",
    "data.augment.resize=[32,43]",
    "data.augment.crop=[32,32]",
    "train.batch_size=4",
]


def _run_json(capsys, *argv: str) -> dict:
    assert main(["capacity", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _expected_skips(manifest, overrides: list[str], warmup: int, clips: int) -> int:
    """Draws among the ones the command times whose plan does not fit (too short),
    computed from the pipeline's own pieces: epochs 0, 1, ... in training order."""
    from rayssl.clips.pipeline import epoch_rows, usable_videos
    from rayssl.clips.sampling import clip_rng
    from rayssl.config import load_config
    from rayssl.io.manifest import read_manifest
    from rayssl.pretext import build_pretext

    cfg = load_config(DEBUG, [f"data.manifest={manifest}", *overrides])
    videos = usable_videos(read_manifest(str(manifest)), "train")
    rows: list[dict] = []
    epoch = 0
    while len(rows) < warmup + clips:
        rows += epoch_rows(videos, cfg.data.clips_per_video, cfg.run.seed, epoch).to_pylist()
        epoch += 1
    task = build_pretext(cfg.pretext, cfg.data.clip_len, cfg.data.short_video)
    timed = rows[warmup : warmup + clips]
    return sum(
        task.plan(r["num_frames"], clip_rng(cfg.run.seed, r["video_id"], r["epoch"], r["draw"]))
        is None
        for r in timed
    )


def test_capacity_end_to_end_measures_decode_and_training(tiny_manifest, capsys):
    # 40-frame videos with data.short_video=skip: paces 3 and 4 (spans 46, 61) do not fit,
    # so about half the draws are masked `too_short` rows, as in training.
    overrides = [*TINY, "data.short_video=skip"]
    r = _run_json(
        capsys,
        "--config",
        DEBUG,
        "--manifest",
        str(tiny_manifest),
        "--clips",
        "24",
        "--seconds",
        "600",
        "--measure-train",
        "--train-steps",
        "1",
        "--device",
        "cpu",
        "--gpus",
        "2",
        "--nodes",
        "1",
        "--cpus-per-node",
        "8",
        *overrides,
    )
    dec = r["decode"]
    d, t = dec["clips_per_s_per_core"], r["train_clips_per_s_per_gpu"]
    assert dec["clips"] == 24
    skipped = _expected_skips(tiny_manifest, overrides, warmup=1, clips=24)
    assert 0 < skipped < 24
    assert dec["skipped"] == skipped and dec["skip_reasons"] == {"too_short": skipped}
    assert dec["skip_frac"] == pytest.approx(skipped / 24)
    assert math.isfinite(d) and d > 0 and dec["cpu_s"] > 0 and dec["wall_s"] > 0
    assert math.isfinite(t) and t > 0
    assert r["train"]["source"] == "measured" and r["train"]["device"] == "cpu"
    assert r["train"]["batch_size"] == 4  # the config's batch on its 1 worker
    assert r["videos"] == 9 and r["epoch_clips_one_worker"] == 18  # 9 train videos x 2
    assert r["decode_cores_per_gpu"] == pytest.approx(t / d, rel=1e-12)
    assert r["cpus_per_gpu"] == pytest.approx(t / d + 0.5, rel=1e-12)  # debug: 0.5 CPU/worker

    est = r["cluster"]
    assert est["decode_cpus"] == 7.0  # 8 CPUs - 2 workers x 0.5
    assert est["decode_capacity"] == pytest.approx(7.0 * d, rel=1e-12)
    assert est["train_demand"] == pytest.approx(2.0 * t, rel=1e-12)
    rate = min(7.0 * d, 2.0 * t)
    assert est["clips_per_s"] == pytest.approx(rate, rel=1e-12)
    assert est["data_wait_frac"] == pytest.approx(max(0.0, 1 - 7.0 * d / (2.0 * t)), abs=1e-12)
    assert est["epoch_clips"] == 18  # 18 draws over 2 workers
    assert est["epoch_s"] == pytest.approx(18 / rate, rel=1e-12)
    assert not est["hangs"]


def test_capacity_text_report_and_anchor(tiny_manifest, capsys):
    # A pace_contrastive sample is two clips: the anchor's per-clip rate is halved.
    r = _run_json(
        capsys,
        "--manifest",
        str(tiny_manifest),
        "--clips",
        "6",
        "--seconds",
        "600",
        "--anchor",
        str(ANCHOR),
        "--precision",
        "bf16",
        "pretext.name=pace_contrastive",
        "data.augment.resize=[32,43]",
        "data.augment.crop=[32,32]",
    )
    per_clip = anchor_rate(ANCHOR, "r21d", "bf16")[0]
    assert r["decode"]["clips_per_sample"] == 2
    assert r["train_clips_per_s_per_gpu"] == per_clip / 2
    assert any("not this config's" in n for n in r["notes"])  # 32 px vs the anchor's 112

    argv = ["--manifest", str(tiny_manifest), "--clips", "6", "--seconds", "600", *TINY]
    assert main(["capacity", *argv, "--train-clips-per-s", "100", "--gpus", "1"]) == 2
    assert "--gpus needs --cpus-per-node" in capsys.readouterr().err
    shape = ["--gpus", "1", "--cpus-per-node", "4"]
    assert main(["capacity", *argv, "--train-clips-per-s", "100", *shape]) == 0
    text = capsys.readouterr().out
    for line in (
        "decode clips/s per core",
        "skip rate                      0.0%",
        "training clips/s per GPU         100.0   (given)",
        "CPU cores one GPU needs",
        "1 GPU, 1 node x 4 CPUs, 1 CPUs per train worker -> 3 decode CPUs",
        "expected data wait",
        "expected epoch time",
    ):
        assert line in text, text
    assert main(["capacity", *argv, "--anchor", str(ANCHOR), "model.backbone=s3dg"]) == 2
    assert "no clips/s for backbone 's3dg'" in capsys.readouterr().err


# ------------------------------------- the GPU benchmark that writes --anchor files


def test_benchmark_rayssl_mode_converts_clips_as_the_training_step():
    import torch

    from rayssl.train.step import DeviceSettings, clip_to_input

    bench = load_benchmark("train_throughput")
    clip = torch.randint(0, 256, (2, 4, 6, 5, 3), dtype=torch.uint8)
    for channels_last in (False, True):
        ours = clip_to_input(clip, DeviceSettings(torch.device("cpu"), channels_last=channels_last))
        theirs = bench.clip_to_input(clip, channels_last)
        assert torch.equal(ours, theirs) and ours.stride() == theirs.stride()
    assert theirs.is_contiguous(memory_format=torch.channels_last_3d)


def _torch_only_path(folder):
    """A folder of links to torch and the distributions `pip install torch` brings, and
    nothing else (no numpy, Ray, PyAV, ...)."""
    import importlib.metadata as md
    import re

    folder.mkdir()
    todo, seen = ["torch"], set()
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        dist = md.distribution(name)
        todo += [
            re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]
            for req in dist.requires or []
            if "extra ==" not in req
        ]
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            src, dst = dist.locate_file(top), folder / top
            if not dst.exists():
                dst.symlink_to(src)
    return folder
