"""Host batches to the device one step ahead (plain torch: no Ray, no numpy import).

On CUDA, `device_batches` runs a background thread that pins each host batch's numeric
columns and copies them to the GPU on a side stream while the current step computes,
so the copy and the pinning (a host memcpy of the whole uint8 batch: about 18 MB, a few
ms, for 30 clips of 16x112x112) leave the step's critical path. The training loop and
benchmarks/train_throughput.py (whose machine has only torch) both use it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import torch

#: Batch columns that are not tensors (kept on the host).
HOST_COLUMNS = frozenset({"video_id", "skip_reason", "uri", "pos", "pad", "decode_node"})

Batch = Mapping[str, Any]
B = TypeVar("B", bound=Batch)
Convert = Callable[[str, torch.Tensor], torch.Tensor]
"""(column name, tensor on the device) -> what the step gets (clips: model input)."""


def is_host_column(name: str, value: Any) -> bool:
    """Columns that stay on the host: ids, paths, flags the loop reads in Python, and
    any string/object array."""
    return name in HOST_COLUMNS or getattr(getattr(value, "dtype", None), "kind", "") in (
        "O",
        "U",
        "S",
    )


def _to_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def copy_batch(batch: Batch, device: torch.device, non_blocking: bool) -> dict[str, Any]:
    """Numeric columns as tensors on `device` (pinned first when non_blocking); the
    host columns as they are."""
    out: dict[str, Any] = {}
    for name, value in batch.items():
        if is_host_column(name, value):
            out[name] = value
            continue
        t = _to_tensor(value).contiguous()
        if non_blocking:
            t = t.pin_memory()
        out[name] = t.to(device, non_blocking=non_blocking)
    return out


def device_batches(
    batches: Iterable[B], device: torch.device, convert: Convert, depth: int = 1
) -> Iterator[tuple[B, dict[str, Any]]]:
    """(host batch, device batch) pairs of `batches`, in order. The device batch has the
    numeric columns on `device`, passed through `convert`, and the host columns as they
    are. CUDA: copied `depth` batches ahead by `DevicePrefetcher` (depth 0: pinned and
    copied in line); the CPU: in line, one at a time (a CPU step uses every core
    already)."""
    if device.type == "cuda" and depth > 0:
        with DevicePrefetcher(batches, device, depth) as prefetcher:
            for host, copied in prefetcher:
                yield host, convert_batch(copied, convert)
        return
    cuda = device.type == "cuda"
    for host in batches:
        yield host, convert_batch(copy_batch(host, device, non_blocking=cuda), convert)


def convert_batch(copied: dict[str, Any], convert: Convert) -> dict[str, Any]:
    """`convert` applied to the device columns of a `copy_batch` result."""
    return {
        k: convert(k, v) if isinstance(v, torch.Tensor) and not is_host_column(k, v) else v
        for k, v in copied.items()
    }


_DONE = object()


class DevicePrefetcher(Generic[B]):
    """Iterate (host batch, copied batch) pairs, copying `depth` batches ahead.

    A daemon thread pulls host batches, pins them and issues the host-to-device copies
    on its own CUDA stream (`copy_batch`), recording an event after each batch. The
    consumer's stream waits for that event before using the batch, and each tensor is
    marked as used on the consumer's stream (`record_stream`), so the caching allocator
    does not hand its memory back to the side stream too early. An exception in the
    source (a failed read, a dead Ray task) is raised from the consumer's next(); leaving
    the loop early (or `close()`) stops the thread.
    """

    def __init__(self, batches: Iterable[B], device: torch.device, depth: int = 1) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._cuda = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if self._cuda else None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(iter(batches),), name="rayssl-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, source: Iterator[B]) -> None:
        try:
            if self._cuda and self.device.index is not None:
                torch.cuda.set_device(self.device)  # the thread's current device
            for host in source:
                if self._stop.is_set():
                    return
                if self._stream is not None:
                    with torch.cuda.stream(self._stream):
                        copied = copy_batch(host, self.device, non_blocking=True)
                        event = self._stream.record_event()
                else:
                    copied, event = copy_batch(host, self.device, non_blocking=False), None
                if not self._put((host, copied, event)):
                    return
            self._put(_DONE)
        except BaseException as e:  # raised again in the consumer's thread
            self._put(e)

    def __iter__(self) -> Iterator[tuple[B, dict[str, Any]]]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            host, copied, event = item
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for value in copied.values():
                    if isinstance(value, torch.Tensor):
                        value.record_stream(current)
            yield host, copied

    def close(self) -> None:
        """Stop the thread (it ends at its next batch or within 0.1 s of a full queue)."""
        self._stop.set()
        while True:  # unblock a put waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=5)

    def __enter__(self) -> DevicePrefetcher[B]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
