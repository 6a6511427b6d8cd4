"""System metrics of a training worker, logged to MLflow beside the training metrics.

Each worker samples its own process (RSS, CPU), its node (memory and CPU in use) and its
GPU (utilisation, memory held by torch); rank 0 logs every worker's figures, so a user
sees a leaking worker, an idle GPU or a saturated decode node without logging into the
cluster. Once per epoch a worker also sums the RSS of every Ray worker process on its
node (the raylet's children: decode tasks, the object store's clients, train workers),
the figure that shows a slow leak of the data pipeline.
"""

from __future__ import annotations

import contextlib

import psutil
import torch

#: Per-worker fields, in the order they are gathered (the loop adds the data-wait share).
FIELDS = (
    "rss_mb",
    "cpu_pct",
    "node_mem_pct",
    "node_cpu_pct",
    "gpu_util_pct",
    "gpu_mem_mb",
    "data_wait_frac",
)

_MB = 1024 * 1024


class SystemSampler:
    """Samples this process, its node and its GPU; CPU figures cover the time since the
    previous sample (psutil's interval semantics)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # starts the interval
        psutil.cpu_percent(None)

    def sample(self) -> dict[str, float]:
        out = {
            "rss_mb": self.process.memory_info().rss / _MB,
            "cpu_pct": self.process.cpu_percent(None),
            "node_mem_pct": psutil.virtual_memory().percent,
            "node_cpu_pct": psutil.cpu_percent(None),
            "gpu_util_pct": -1.0,
            "gpu_mem_mb": -1.0,
        }
        if self.device.type == "cuda":
            out["gpu_mem_mb"] = torch.cuda.memory_reserved(self.device) / _MB
            # needs the NVML bindings (pynvml), absent on some images: then unknown
            with contextlib.suppress(Exception):
                out["gpu_util_pct"] = float(torch.cuda.utilization(self.device))
        return out

    def ray_node_rss_mb(self) -> float:
        """RSS of the Ray worker processes on this node: the raylet's children (this
        worker among them). -1 when this process was not started by a raylet."""
        parent = self.process.parent()
        if parent is None or "raylet" not in parent.name():
            return -1.0
        total = 0
        for proc in parent.children(recursive=True):
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total / _MB


def as_metrics(rows: list[list[float]], prefix: str = "system") -> dict[str, float]:
    """Gathered per-worker samples (one row of FIELDS per rank) -> MLflow metric names;
    unknown (negative) GPU figures are left out."""
    out: dict[str, float] = {}
    for rank, row in enumerate(rows):
        for name, value in zip(FIELDS, row, strict=True):
            if name.startswith("gpu_") and value < 0:
                continue
            out[f"{prefix}/worker{rank}/{name}"] = float(value)
    return out
