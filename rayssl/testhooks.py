"""Test hooks: environment variables that make a run stop, die or report at a known point,
so a test waits for an event instead of racing the clock. One name, one effect; all
of them are read here and nowhere else. Unset (the default), each is a no-op.

* RAYSSL_TEST_KILL_WORKER `<marker>:<epoch>:<step>:<rank>`: that train worker SIGKILLs
  itself once, before that step;
* RAYSSL_TEST_PAUSE `<folder>:<epoch>`: the train workers wait once after reporting the
  epoch;
* RAYSSL_TEST_SWEEP_PAUSE `<folder>:<trial>[:logged]`: that sweep trial waits once at its
  start (or after logging its results);
* RAYSSL_TEST_TRACE `<folder>`: every train worker appends one JSON line per step trained;
* RAYSSL_TEST_DECODE_NODE (any value): every training sample names the Ray node that
  decoded it (`decode_node`, which the trace lines then list).

A waiting hook writes `<folder>/paused` and waits for `<folder>/release` (or 10 minutes).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np

KILL_WORKER = "RAYSSL_TEST_KILL_WORKER"
PAUSE = "RAYSSL_TEST_PAUSE"
SWEEP_PAUSE = "RAYSSL_TEST_SWEEP_PAUSE"
TRACE = "RAYSSL_TEST_TRACE"
DECODE_NODE = "RAYSSL_TEST_DECODE_NODE"

#: The longest a waiting hook waits for its release file.
MAX_WAIT_S = 600.0


def _wait(folder: str | Path) -> None:
    deadline = time.monotonic() + MAX_WAIT_S
    while not Path(folder, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def maybe_kill_worker(epoch: int, step: int, rank: int) -> None:
    """RAYSSL_TEST_KILL_WORKER: "<marker file>:<epoch>:<step>:<rank>" (several separated
    by ";") makes that worker SIGKILL itself once (the marker records it) before training
    that step of the epoch, to exercise worker-failure recovery for real."""
    for spec in filter(None, os.environ.get(KILL_WORKER, "").split(";")):
        marker, e, s, r = spec.rsplit(":", 3)
        if (epoch, step, rank) == (int(e), int(s), int(r)) and not Path(marker).exists():
            Path(marker).write_text(f"killed pid {os.getpid()} at epoch {epoch} step {step}\n")
            os.kill(os.getpid(), signal.SIGKILL)


def maybe_pause_after_epoch(epoch: int, rank: int) -> None:
    """RAYSSL_TEST_PAUSE: "<folder>:<epoch>" makes the job wait, once, after reporting that
    epoch's checkpoint (rank 0 writes <folder>/paused; every worker waits)."""
    spec = os.environ.get(PAUSE)
    if not spec:
        return
    folder, e = spec.rsplit(":", 1)
    paused = Path(folder) / "paused"
    if epoch != int(e) or paused.exists():
        return
    if rank == 0:
        paused.write_text(f"pid {os.getpid()} after epoch {epoch}\n")
    _wait(folder)


def maybe_pause_trial(slug: str, point: str = "start") -> None:
    """RAYSSL_TEST_SWEEP_PAUSE: "<folder>:<trial>[:logged]" makes that trial wait, once, at
    its start (or, with `:logged`, after its results are in MLflow and before Tune hears
    of them), so a test can kill the driver at a known point."""
    spec = os.environ.get(SWEEP_PAUSE)
    if not spec:
        return
    folder, name, *rest = spec.split(":")
    if name != slug or (rest[0] if rest else "start") != point or Path(folder, "paused").exists():
        return
    Path(folder, "paused").write_text(f"pid {os.getpid()}: trial {slug} at {point}\n")
    _wait(folder)


def trace_step(
    batch: dict[str, np.ndarray], node: str, epoch: int, step: int, global_step: int, rank: int
) -> None:
    """RAYSSL_TEST_TRACE: "<folder>" makes every worker append one JSON line per training
    step to <folder>/trace-<pid>.jsonl: its node, the draws it trained (each with its first
    clip's source frames and `sample_digest`) and (with RAYSSL_TEST_DECODE_NODE) the nodes
    that decoded them."""
    folder = os.environ.get(TRACE)
    if not folder:
        return
    keep = ~np.asarray(batch["pad"], dtype=bool) if "pad" in batch else slice(None)
    line: dict[str, Any] = {
        "pid": os.getpid(),
        "node": node,
        "decode_nodes": sorted({str(n) for n in batch.get("decode_node", [])}),
        "rank": rank,
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "draws": [
            [str(v), int(d)]
            for v, d in zip(batch["video_id"][keep], batch["draw"][keep], strict=True)
        ],
        # per draw: its first clip's source frames (start and pace) and a digest of every
        # target it trained on (the augmented clips and labels)
        "samples": [
            [
                str(batch["video_id"][i]),
                int(batch["draw"][i]),
                [int(x) for x in batch["indices"][i]],
                sample_digest(batch, int(i)),
            ]
            for i in np.arange(len(batch["video_id"]))[keep]
        ],
    }
    with open(Path(folder) / f"trace-{os.getpid()}.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")


#: Batch columns that are bookkeeping, not a sample's content (left out of its digest).
_NOT_CONTENT = frozenset(
    ("video_id", "class_label", "epoch", "draw", "pos", "pad", "part", "run_epoch", "decode_node")
)


def sample_digest(batch: dict[str, Any], i: int | None) -> str:
    """A digest of row `i`'s content: every target array, the validity and skip reason
    (`batch` maps column -> per-row values; a `sample_row` output is one row, i = None)."""
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(k for k in batch if k not in _NOT_CONTENT):
        value = batch[key] if i is None else batch[key][i]
        h.update(key.encode())
        if isinstance(value, (str, bytes, np.str_, np.bytes_)):
            h.update(str(value).encode() if not isinstance(value, bytes) else value)
        else:
            array = np.ascontiguousarray(np.asarray(value))
            h.update(f"{array.dtype.kind}{array.dtype.itemsize}{array.shape}".encode())
            h.update(array.tobytes())
    return h.hexdigest()


def tracing() -> bool:
    """Whether RAYSSL_TEST_TRACE is set (the caller then looks up its node id)."""
    return bool(os.environ.get(TRACE))


def decode_node_column(num_rows: int) -> np.ndarray | None:
    """RAYSSL_TEST_DECODE_NODE: the Ray node id of this decode task, once per row; None
    when the hook is off."""
    if not os.environ.get(DECODE_NODE):
        return None
    import ray  # lazy: only under the hook; the decode task runs in a Ray worker already

    return np.asarray([ray.get_runtime_context().get_node_id()] * num_rows)
