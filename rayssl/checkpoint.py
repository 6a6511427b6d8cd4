"""The checkpoint format: what rayssl writes (`state.pt`, `backbone.pt`) and how it reads it.

A checkpoint is read from shared storage (a local folder, S3, an MLflow server), so anyone
who can write there could hand every node a file. Nothing here runs code from a file:

* every read is `torch.load(..., weights_only=True)`: tensors, numbers, strings, bytes,
  lists, tuples and dicts only; a pickle that names any other global (a function to call,
  a class to build) is refused with a one-line `CheckpointError` naming the file, before
  anything in it runs;
* every write type-checks its payload first (`check_plain`), so rayssl never writes a file
  it could not read back (the scheduler state, the config and the mid-epoch progress are
  plain dicts);
* `convert` rewrites an old checkpoint that only a full unpickler reads (numpy values, a
  pickled object) into the plain format: `rayssl checkpoint convert SRC --out DST`, for
  files you trust only, since it unpickles SRC with `weights_only=False`.

`latest_state_uri` finds the checkpoint a run folder resumes from: the one Ray Train's own
snapshot (`checkpoint_manager_snapshot.json`) names, else the direct `checkpoint_*` child
with the highest number; a folder holding several runs is an error listing them.

Plain torch and storage; no Ray, no MLflow.
"""

from __future__ import annotations

import io
import json
import pickle
import posixpath
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayssl.data import storage

STATE_FILE = "state.pt"
BACKBONE_FILE = "backbone.pt"
#: Ray Train V2's record of a run's checkpoints (its `latest_checkpoint_result` resumes).
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
CHECKPOINT_PREFIX = "checkpoint_"
CONVERT_COMMAND = "rayssl checkpoint convert"


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, is refused, or does not fit the backbone."""


_SCALARS = (bool, int, float, str, bytes, type(None))
_CONTAINERS = (list, tuple)
_DICTS = (dict, OrderedDict)


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value of `obj` that `torch.load(weights_only=True)`
    could not read back: only tensors, bool/int/float/str/bytes/None, lists, tuples and
    dicts with str/int keys are allowed (numpy scalars, though floats, are not)."""
    if isinstance(obj, torch.Tensor):
        if type(obj) not in (torch.Tensor, torch.nn.Parameter):
            raise TypeError(f"{where}: a {type(obj).__name__}, not a plain tensor")
        return
    if type(obj) in _SCALARS:
        return
    if type(obj) in _CONTAINERS:
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if type(obj) in _DICTS:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__}, not str or int")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a "
        "checkpoint (only tensors, numbers, strings, bytes, lists and dicts)"
    )


def to_bytes(payload: dict[str, Any]) -> bytes:
    """`payload` as a torch file, after `check_plain`."""
    check_plain(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def save(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` (checked by `check_plain`) to a local file."""
    data = to_bytes(payload)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


_GLOBAL_RE = re.compile(r"(?:GLOBAL|Unsupported class) ([\w.]+)")
_WEIGHTS_ERROR_RE = re.compile(r"(?:WeightsUnpickler error:\s*)?(Unsupported [^\n]+)")


def _refusal(where: str, e: pickle.UnpicklingError) -> CheckpointError:
    text = str(e)
    found = _GLOBAL_RE.search(text)
    what = f"its pickle names {found.group(1) if found else 'a global'}"
    return CheckpointError(
        f"{where}: refused: {what}, which a checkpoint may not load (rayssl reads "
        f"checkpoints with torch.load(weights_only=True), so no code in one runs); if you "
        f"trust this file, convert it once: {CONVERT_COMMAND} {where} --out NEW.pt"
    )


def load_bytes(data: bytes, where: str) -> Any:
    """Unpickle a checkpoint's bytes with `weights_only=True`; `where` (redacted) names it
    in every error: refused (a global in its pickle) or not a torch file."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _GLOBAL_RE.search(str(e)):
            raise _refusal(where, e) from None
        found = _WEIGHTS_ERROR_RE.search(str(e))
        detail = found.group(1).strip() if found else "UnpicklingError"
        raise CheckpointError(f"{where}: not a torch checkpoint ({detail})") from None
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(
            f"{where}: not a torch checkpoint ({type(e).__name__}: {detail})"
        ) from None


def read(uri: str, options: storage.StorageOptions | None = None) -> Any:
    """Read and safely unpickle the checkpoint file at `uri` (local path or s3://)."""
    where = storage.redact(uri)
    try:
        data = storage.read_bytes(uri, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {where!r} does not exist") from e
    return load_bytes(data, where)


# ------------------------------------------------------------------------------ conversion


def to_plain(obj: Any) -> Any:
    """`obj` with what an older writer left in it made plain: numpy arrays become tensors,
    numpy scalars Python numbers, dataclasses and other objects with `to_state()` or
    `__dict__` dicts. Raises TypeError for anything else."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone() if type(obj) is not torch.Tensor else obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in _SCALARS:
        return obj
    if isinstance(obj, (list, tuple)):
        return (
            type(obj)(to_plain(v) for v in obj)
            if type(obj) in _CONTAINERS
            else list(to_plain(v) for v in obj)
        )
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k if type(k) in (str, int) else str(k)] = to_plain(v)
        return out
    if hasattr(obj, "to_state"):
        return to_plain(obj.to_state())
    if hasattr(obj, "__dict__"):
        return to_plain(dict(vars(obj)))
    raise TypeError(f"cannot convert a {type(obj).__name__} to plain checkpoint data")


def convert(src: str, dst: str, options: storage.StorageOptions | None = None) -> dict[str, Any]:
    """Rewrite the TRUSTED checkpoint `src` (it is unpickled with weights_only=False: any
    code in it runs) as plain data at `dst`; returns what was done. `dst` must differ
    from `src` and not exist."""
    if storage.redact(src) != src or storage.redact(dst) != dst:
        raise CheckpointError("convert: give URIs without credentials (use the environment)")
    if src == dst:
        raise CheckpointError(f"convert: --out must differ from {src} (keep the original)")
    if storage.exists(dst, options=options):
        raise CheckpointError(f"convert: {dst} exists; choose a new --out")
    try:
        data = storage.read_bytes(src, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {src!r} does not exist") from e
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    try:
        plain = to_plain(payload)
        out = to_bytes(plain)
    except TypeError as e:
        raise CheckpointError(f"convert {src}: {e}") from None
    storage.write_bytes(dst, out, options=options)
    return {"src": src, "out": dst, "bytes": len(out)}


# ------------------------------------------------------------------- finding the latest one


def _checkpoint_number(name: str) -> tuple[int, ...]:
    """`checkpoint_2026-01-02_03-04-05.000006` -> (2026, 1, 2, 3, 4, 5, 6);
    `checkpoint_000012` -> (12,)."""
    return tuple(int(x) for x in re.findall(r"\d+", name[len(CHECKPOINT_PREFIX) :]))


def _snapshot_choice(uri: str, names: set[str], options) -> str | None:
    """The checkpoint folder Ray Train's snapshot names as its latest, if it is one of
    `names` (a broken or foreign snapshot is ignored: the numbers decide)."""
    snap = storage.join(uri, SNAPSHOT_FILE)
    try:
        state = json.loads(storage.read_bytes(snap, options=options))
        name = state["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (storage.StorageError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) and name in names else None


def latest_state_uri(uri: str, options: storage.StorageOptions | None = None) -> str:
    """`uri/state.pt` if it exists; else, in a run folder, the state.pt of the checkpoint
    Ray Train's snapshot names as latest, else of the direct `checkpoint_*` child with the
    highest number. A folder holding runs (folders of checkpoints) is an error naming them."""
    where = storage.redact(uri)
    direct = storage.join(uri, STATE_FILE)
    if storage.exists(direct, options=options):
        return direct
    try:
        files = storage.list_files(uri, options=options)
    except storage.StorageNotFoundError as e:
        raise CheckpointError(f"checkpoint {where!r} does not exist") from e
    root = storage.listing_root(uri)
    rels = [f.uri[len(root) :].lstrip("/") for f in files if f.uri.startswith(root)]
    names = {
        r.split("/")[0]
        for r in rels
        if r.count("/") == 1 and r.endswith("/" + STATE_FILE) and r.startswith(CHECKPOINT_PREFIX)
    }
    if names:
        chosen = _snapshot_choice(uri, names, options) or max(names, key=_checkpoint_number)
        return storage.join(uri, chosen, STATE_FILE)
    runs = sorted(
        {
            r.split("/")[0]
            for r in rels
            if r.count("/") == 2
            and r.endswith("/" + STATE_FILE)
            and r.split("/")[1].startswith(CHECKPOINT_PREFIX)
        }
    )
    if runs:
        shown = ", ".join(runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10 else "")
        raise CheckpointError(
            f"{where!r} holds {len(runs)} run folder(s), not one run's checkpoints: {shown}; "
            f"name one (e.g. {posixpath.join(where, runs[0])})"
        )
    raise CheckpointError(
        f"{where!r} holds no Ray Train checkpoint ({STATE_FILE} or "
        f"{CHECKPOINT_PREFIX}*/{STATE_FILE}) and is not a {BACKBONE_FILE}"
    )


def run_folder_checkpoint(
    run_uri: str, options: storage.StorageOptions | None = None
) -> str | None:
    """The state.pt a run folder resumes from, or None when it has no checkpoint yet."""
    try:
        if not storage.list_files(run_uri, options=options):
            return None
    except storage.StorageNotFoundError:
        return None
    try:
        return latest_state_uri(run_uri, options)
    except CheckpointError as e:
        if "holds no Ray Train checkpoint" in str(e):
            return None
        raise
