"""The CUDA-only paths, on a GPU: the prefetcher's side stream, `ModelActor` in bf16, the
GPU system metrics, `rayssl capacity --measure-train` on CUDA, and the training loop's
CUDA branch through one local-mode step.

Marked `gpu` and skipped without CUDA (CI and the development machine have none: they
collect these and skip them). `benchmarks/gpu_run.sh` runs them on a lent GPU machine
(`pytest -m gpu`). Their CPU counterparts: tests/train/test_prefetch.py,
tests/tools/test_capacity.py, tests/train/test_pretrain.py.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from rayssl.config import load_config
from tests.conftest import ROOT, tiny_overrides

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEBUG = str(ROOT / "configs" / "debug.yaml")
CUDA = torch.device("cuda", 0) if torch.cuda.is_available() else None


# ------------------------------------------------------------------ the prefetcher


def _host_batches(n: int):
    for i in range(n):
        yield {
            "clip": np.full((4, 8, 32, 32, 3), i % 251, np.uint8),
            "label": np.arange(4) + i,
            "video_id": np.array([f"v{i}-{k}" for k in range(4)]),
        }


def test_prefetcher_copies_on_a_side_stream_in_order_and_intact():
    from rayssl.train.prefetch import DevicePrefetcher, device_batches

    seen = []
    busy = torch.randn(2048, 2048, device=CUDA)
    with DevicePrefetcher(_host_batches(12), CUDA, depth=2) as prefetcher:
        assert prefetcher._stream is not None
        assert prefetcher._stream != torch.cuda.current_stream(CUDA)  # a side stream
        for host, copied in prefetcher:
            # keep the consumer's stream busy while the next copies run on the side one
            for _ in range(4):
                busy = busy @ busy / 2048
            clip = copied["clip"]
            assert clip.device.type == "cuda" and clip.dtype == torch.uint8
            # the consumer's stream waited for the copy: the values are the host's
            assert torch.equal(clip.cpu(), torch.from_numpy(host["clip"]))
            assert torch.equal(copied["label"].cpu(), torch.as_tensor(host["label"]))
            assert copied["video_id"] is host["video_id"]  # host columns stay
            seen.append(int(host["label"][0]))
    assert seen == list(range(12))
    assert torch.isfinite(busy).all()

    def failing():
        yield from _host_batches(2)
        raise OSError("read failed")

    got = []
    with pytest.raises(OSError, match="read failed"):
        for _host, dev in device_batches(failing(), CUDA, lambda k, v: v.float(), depth=1):
            got.append(dev["clip"].dtype)
    assert got == [torch.float32, torch.float32]


# ---------------------------------------------------------------- the model actor


class _Probe(nn.Module):
    """A conv3d and a pooled output; records the dtype the conv computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 8, 3, padding=1)
        self.dtypes: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.conv(x)
        self.dtypes.append(y.dtype)
        return {"pool": y.mean(dim=(2, 3, 4))}


def _eval_batch(n: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    valid = np.array([True, True, False, True, True, False][:n])
    return {
        "clip": rng.integers(0, 256, (n, 8, 32, 32, 3), dtype=np.uint8),
        "video_id": np.array([f"v{i}" for i in range(n)]),
        "label": np.arange(n),
        "clip_index": np.zeros(n, np.int64),
        "valid": valid,
        "skip_reason": np.array(["" if v else "too_short" for v in valid]),
    }


def test_model_actor_runs_bf16_on_the_gpu_and_matches_fp32():
    from rayssl.evaluate.features import ModelActor
    from rayssl.train.inference import infer_batch

    torch.manual_seed(0)
    probe = _Probe()
    reference = infer_batch(copy.deepcopy(probe), _eval_batch(), torch.device("cpu"))
    actor = ModelActor(probe, bf16=True)
    assert actor.device.type == "cuda" and actor.bf16
    out = actor(_eval_batch())
    assert probe.dtypes[-1] == torch.bfloat16  # autocast ran the conv in bf16
    pooled = out["out_pool"]
    assert pooled.dtype == np.float32 and pooled.shape == (6, 8)
    valid = _eval_batch()["valid"]
    assert not pooled[~valid].any()  # skipped rows: zeros
    np.testing.assert_allclose(pooled[valid], reference["out_pool"][valid], rtol=0.05, atol=0.02)
    assert list(out["video_id"]) == [f"v{i}" for i in range(6)]


# ------------------------------------------------------------ GPU system metrics


def test_system_sampler_reads_the_gpus_memory_and_utilisation():
    from rayssl.train.sysmetrics import SystemSampler, as_metrics

    sampler = SystemSampler(CUDA)
    held = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=CUDA)  # 256 MiB
    sample = sampler.sample()
    assert sample["gpu_mem_mb"] >= 256
    # NVML (nvidia-ml-py) answers: a utilisation in percent, not "unknown" (-1)
    assert 0 <= sample["gpu_util_pct"] <= 100, sample
    row = [sample[k] for k in ("rss_mb", "cpu_pct", "node_mem_pct", "node_cpu_pct")]
    metrics = as_metrics([[*row, sample["gpu_util_pct"], sample["gpu_mem_mb"], 0.0]])
    assert metrics["system/worker0/gpu_mem_mb"] >= 256
    assert "system/worker0/gpu_util_pct" in metrics
    del held


# ------------------------------------------------- capacity --measure-train on CUDA


def test_capacity_measures_training_on_cuda_in_the_configs_settings(tiny_manifest, capsys):
    from rayssl.cli import main

    argv = ["capacity", "--config", DEBUG, "--manifest", str(tiny_manifest), "--clips", "8"]
    argv += ["--seconds", "60", "--measure-train", "--train-steps", "2", "--device", "cuda"]
    argv += ["model.width=0.25", "train.batch_size=8", "--json"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    train = r["train"]
    assert train["source"] == "measured" and train["device"] == "cuda"
    assert train["settings"].startswith("bf16 channels_last_3d, ")  # the config's defaults
    assert torch.cuda.get_device_name(CUDA) in train["settings"]
    assert train["clips_per_s"] > 0 and train["batch_size"] == 8
    assert not any("not a GPU" in n for n in r["notes"])
    argv[-1:] = ["train.bf16=false", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["train"]["settings"].startswith("fp32")


# ------------------------------------ the loop's CUDA branch: one local-mode step


def test_local_mode_step_trains_on_the_gpu_and_logs_its_metrics(ray_local, tiny_manifest, tmp_path):
    import mlflow

    from rayssl.launch import pretrain

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    overrides = tiny_overrides(tiny_manifest, tmp_path / "runs", "gpu-local", tracking)
    overrides += [
        "train.num_workers=0",
        "train.use_gpu=true",
        "optim.epochs=1",
        "train.max_steps_per_epoch=2",
        "train.log_every_steps=1",
    ]
    result = pretrain(load_config(DEBUG, overrides))
    assert result["metrics"]["epoch"] == 0
    client = mlflow.MlflowClient(tracking)
    run = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string="tags.run_name = 'gpu-local'",
    )[0]
    metrics = run.data.metrics
    assert metrics["train/loss"] > 0 and metrics["train/clips_per_s"] > 0
    # the system metrics came from the GPU branch: memory reserved on the card
    assert metrics["system/worker0/gpu_mem_mb"] > 0
    assert 0 <= metrics["system/worker0/gpu_util_pct"] <= 100
    assert 0 <= metrics["train/data_wait_frac"] <= 1
