"""Manifests: one Parquet row per video, built by probing every video in parallel.

Importers read datasets the way their public releases ship them:

* ``folder``  — ``SRC/<class>/<video>``; labels are the sorted class folders. An
  optional ``val_fraction`` puts a hash-chosen share of every class in split ``val``.
* ``ucf101``  — ``SRC/**/<Class>/v_*.avi`` plus ``ucfTrainTestlist/`` (classInd.txt,
  trainlist0N.txt, testlist0N.txt); split N chosen by ``split_id``.
* ``hmdb51``  — ``SRC/**/<class>/*.avi`` plus the ``*_test_split<N>.txt`` files
  (one line per video: ``name 1`` train, ``name 2`` test, ``name 0`` unused).
* ``kinetics`` — the annotation CSVs (``label,youtube_id,time_start,time_end,split``)
  and videos named ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under SRC.

Every video is decoded once (`rayssl.io.video.probe_video`) so the manifest holds
the frames that really decode, and the keyframe positions the clip reader seeks to.
A broken file becomes a row with an ``error`` reason, never a crash.

A ``video_id`` names the video's outputs (``rayssl prepare`` writes
``OUT/<video_id>.mp4``), so it must be a plain relative path
(`rayssl.io.storage.relative_path_problem`: no ``..``, leading ``/``, backslash or
control character). An entry whose id is not, or whose file a split list or CSV places
outside the source folder, becomes a row with error ``unsafe_video_id`` and is never
read; `read_manifest` gives the same error to such a row of any manifest it reads.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayssl.io import storage
from rayssl.io.ids import stable_hash
from rayssl.io.video import (
    DEFAULT_ACCESS,
    MIN_BYTES_PER_FRAME,
    VideoAccess,
    VideoError,
    VideoProbe,
    probe_video,
)

VIDEO_EXTENSIONS = {
    ".avi",
    ".mp4",
    ".mkv",
    ".webm",
    ".mov",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".flv",
    ".wmv",
    ".3gp",
}
FORMATS = ("folder", "ucf101", "hmdb51", "kinetics")

SCHEMA = pa.schema(
    [
        ("uri", pa.string()),
        ("video_id", pa.string()),
        ("num_frames", pa.int64()),
        ("fps", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("codec", pa.string()),
        ("size_bytes", pa.int64()),
        ("label", pa.int64()),
        ("label_name", pa.string()),
        ("split", pa.string()),
        ("error", pa.string()),
        ("error_detail", pa.string()),
        ("keyframes", pa.list_(pa.int64())),
        ("keyframe_pts", pa.list_(pa.int64())),
        ("source", pa.string()),
        ("pts_start", pa.int64()),
        ("pts_step", pa.int64()),
    ]
)

#: Columns added after the first manifests were written, with the value an old manifest
#: gets on reading (`read_manifest`): `pts_step` 0 = no pts grid, the reader counts
#: frames and decodes all of them (the path it always had).
ADDED_COLUMNS: dict[str, tuple[pa.DataType, Any]] = {
    "pts_start": (pa.int64(), 0),
    "pts_step": (pa.int64(), 0),
}


#: The `error` of a row whose video_id is not a safe relative path, or whose file an
#: annotation places outside the source folder (the video is never read).
UNSAFE_ID = "unsafe_video_id"


class ManifestError(ValueError):
    """The source cannot be indexed (missing split files, unknown format...)."""


@dataclass(frozen=True)
class Entry:
    """A video found by an importer, before probing; `error` set: it is not probed."""

    uri: str
    video_id: str
    size_bytes: int = -1
    label: int = -1
    label_name: str = ""
    split: str = ""
    error: str = ""
    error_detail: str = ""


def video_id_problem(video_id: object) -> str | None:
    """Why `video_id` cannot name an output (see `UNSAFE_ID`), or None when it can."""
    problem = storage.relative_path_problem(video_id)
    return None if problem is None else f"video_id {video_id!r} {problem}"


def _under(src: str, rel: str) -> tuple[str, str]:
    """(URI, "") of a file an annotation names at `rel` under `src`; when `rel` would leave
    `src`, (its plain join, why): the entry is then an `UNSAFE_ID` row, never read."""
    try:
        return storage.child(src, rel), ""
    except storage.UnsafePathError as e:
        return storage.join(src, rel), f"annotation names a file outside {src}: {e}"


def _checked(entry: Entry, outside: str = "") -> Entry:
    """`entry`, marked `UNSAFE_ID` when its file lies outside the source or its id is unsafe."""
    problem = outside or video_id_problem(entry.video_id)
    if entry.error or not problem:
        return entry
    return replace(entry, error=UNSAFE_ID, error_detail=problem)


# --------------------------------------------------------------------------- listing


def _rel(uri: str, root: str) -> str:
    """`uri` (as listed) relative to the listed folder `root` (any path form)."""
    root = storage.listing_root(root).rstrip("/")
    return uri[len(root) + 1 :] if uri.startswith(root + "/") else posixpath.basename(uri)


def _stem(path: str) -> str:
    return posixpath.splitext(posixpath.basename(path))[0]


def _videos(src: str, options: storage.StorageOptions | None) -> list[storage.FileInfo]:
    return storage.list_files(src, extensions=VIDEO_EXTENSIONS, options=options)


def _read_text(uri: str, options: storage.StorageOptions | None) -> str:
    return storage.read_bytes(uri, options=options).decode("utf-8", errors="replace")


def _find_one(src: str, name: str, options, hint: str) -> str:
    hits = [f.uri for f in storage.list_files(src, options=options) if f.uri.endswith("/" + name)]
    if not hits:
        raise ManifestError(f"{name} not found under {src}: {hint}")
    return sorted(hits, key=len)[0]


def list_folder(src: str, options=None, val_fraction: float = 0.0, seed: int = 0) -> list[Entry]:
    """Folder-per-class layout: SRC/<class>/<video>. Files directly in SRC get no label."""
    files = _videos(src, options)
    classes = sorted({_rel(f.uri, src).split("/")[0] for f in files if "/" in _rel(f.uri, src)})
    index = {c: i for i, c in enumerate(classes)}
    out = []
    for f in files:
        rel = _rel(f.uri, src)
        cls = rel.split("/")[0] if "/" in rel else ""
        vid = posixpath.splitext(rel)[0]
        split = "train"
        if val_fraction > 0 and (stable_hash(f"{seed}:{vid}") % 10_000) < val_fraction * 10_000:
            split = "val"
        out.append(_checked(Entry(f.uri, vid, f.size, index.get(cls, -1), cls, split)))
    return out


def list_ucf101(src: str, options=None, split_id: int = 1, splits_dir: str = "") -> list[Entry]:
    """UCF101 as released: the videos plus ucfTrainTestlist/{classInd,trainlist0N,testlist0N}."""
    hint = "pass --splits DIR with classInd.txt, trainlist0N.txt, testlist0N.txt"
    class_ind = (
        storage.join(splits_dir, "classInd.txt")
        if splits_dir
        else _find_one(src, "classInd.txt", options, hint)
    )
    sdir = storage.parent(class_ind)
    names = {}
    for line in _read_text(class_ind, options).splitlines():
        if line.strip():
            num, name = line.split()
            names[name] = int(num) - 1
    by_name = {_rel(f.uri, src).split("/")[-1]: f for f in _videos(src, options)}
    out = []
    for split, fname in (
        ("train", f"trainlist0{split_id}.txt"),
        ("test", f"testlist0{split_id}.txt"),
    ):
        text = _read_text(storage.join(sdir, fname), options)
        for line in text.splitlines():
            if not line.strip():
                continue
            rel = line.split()[0].replace("\\", "/")
            cls, base = rel.split("/")[0], rel.split("/")[-1]
            f = by_name.get(base)
            uri, outside = (f.uri, "") if f else _under(src, rel)
            entry = Entry(uri, _stem(base), f.size if f else -1, names[cls], cls, split)
            out.append(_checked(entry, outside))
    return out


def list_hmdb51(src: str, options=None, split_id: int = 1, splits_dir: str = "") -> list[Entry]:
    """HMDB51 as released: <class>/*.avi plus <class>_test_split<N>.txt files."""
    suffix = f"_test_split{split_id}.txt"
    root = splits_dir or src
    split_files = [
        f.uri for f in storage.list_files(root, options=options) if f.uri.endswith(suffix)
    ]
    if not split_files:
        raise ManifestError(f"no *{suffix} files under {root}: pass --splits DIR")
    classes = sorted(posixpath.basename(u)[: -len(suffix)] for u in split_files)
    index = {c: i for i, c in enumerate(classes)}
    by_name = {posixpath.basename(f.uri): f for f in _videos(src, options)}
    out = []
    for uri in sorted(split_files):
        cls = posixpath.basename(uri)[: -len(suffix)]
        for line in _read_text(uri, options).splitlines():
            parts = line.split()
            if len(parts) < 2 or parts[1] == "0":
                continue
            split = "train" if parts[1] == "1" else "test"
            f = by_name.get(parts[0])
            vuri, outside = (f.uri, "") if f else _under(src, f"{cls}/{parts[0]}")
            entry = Entry(vuri, _stem(parts[0]), f.size if f else -1, index[cls], cls, split)
            out.append(_checked(entry, outside))
    return out


def list_kinetics(src: str, options=None, annotations: Iterable[str] = ()) -> list[Entry]:
    """Kinetics: CSVs with label,youtube_id,time_start,time_end,split (as released)."""
    csvs = list(annotations) or [
        f.uri for f in storage.list_files(src, extensions={".csv"}, options=options)
    ]
    if not csvs:
        raise ManifestError(f"no annotation CSV under {src}: pass --annotations FILE.csv")
    rows: list[dict[str, Any]] = []
    for uri in csvs:
        reader = csv.DictReader(io.StringIO(_read_text(uri, options)))
        need = {"youtube_id", "time_start", "time_end"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise ManifestError(
                f"{uri}: expected columns label,youtube_id,time_start,time_end,split"
            )
        rows.extend(reader)
    labels = sorted({r["label"] for r in rows if r.get("label")})
    index = {c: i for i, c in enumerate(labels)}
    by_stem = {_stem(f.uri): f for f in _videos(src, options)}
    out = []
    for r in rows:
        stem = (
            f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_{int(float(r['time_end'])):06d}"
        )
        f = by_stem.get(stem)
        uri, outside = (f.uri, "") if f else _under(src, stem + ".mp4")
        label = r.get("label") or ""
        split = {"validate": "val", "valid": "val"}.get(r.get("split", ""), r.get("split", ""))
        entry = Entry(uri, stem, f.size if f else -1, index.get(label, -1), label, split)
        out.append(_checked(entry, outside))
    return out


def list_entries(src: str, fmt: str = "folder", options=None, **kw: Any) -> list[Entry]:
    """Find the videos of a dataset; `fmt` is one of FORMATS."""
    listers: dict[str, Callable[..., list[Entry]]] = {
        "folder": list_folder,
        "ucf101": list_ucf101,
        "hmdb51": list_hmdb51,
        "kinetics": list_kinetics,
    }
    if fmt not in listers:
        raise ManifestError(f"unknown format {fmt!r}; one of {list(FORMATS)}")
    return listers[fmt](src, options=options, **{k: v for k, v in kw.items() if v is not None})


# --------------------------------------------------------------------------- probing


def probe_columns(probe: VideoProbe) -> dict[str, Any]:
    """The manifest columns a probe fills in."""
    return {
        "num_frames": probe.num_frames,
        "fps": probe.fps,
        "height": probe.height,
        "width": probe.width,
        "codec": probe.codec,
        "keyframes": list(probe.keyframes),
        "keyframe_pts": list(probe.keyframe_pts),
        "pts_start": probe.pts_start,
        "pts_step": probe.pts_step,
    }


def probe_entry(
    entry: dict[str, Any],
    options: storage.StorageOptions | None = None,
    access: VideoAccess = DEFAULT_ACCESS,
) -> dict:
    """Probe one video; never raises for a bad video (the row gets an `error`).

    The video is opened under `access` (`VideoAccess`): its size is checked before a byte
    is read, a large S3 object is streamed (bounded memory), and the caps on pixels,
    frames and decode time apply."""
    row: dict[str, Any] = {
        "uri": entry["uri"],
        "video_id": entry["video_id"],
        "num_frames": 0,
        "fps": 0.0,
        "height": 0,
        "width": 0,
        "codec": "",
        "size_bytes": int(entry.get("size_bytes", -1)),
        "label": int(entry.get("label", -1)),
        "label_name": entry.get("label_name", ""),
        "split": entry.get("split", ""),
        "error": None,
        "error_detail": "",
        "keyframes": [],
        "keyframe_pts": [],
        "source": entry.get("source", ""),
        "pts_start": 0,
        "pts_step": 0,
    }
    source = None
    try:
        source = access.source(entry["uri"], options, row["size_bytes"])
        if isinstance(source, bytes):
            row["size_bytes"] = len(source)
        elif isinstance(source, storage.RangedReader):
            row["size_bytes"] = source.size()
        elif isinstance(source, (str, os.PathLike)):
            row["size_bytes"] = storage.size(source)
        row.update(probe_columns(probe_video(source, limits=access.limits)))
    except VideoError as e:
        row["error"], row["error_detail"] = e.reason, e.detail
    except storage.StorageNotFoundError as e:
        row["error"], row["error_detail"] = "missing", storage.redact(str(e))
    except storage.StorageError as e:
        row["error"], row["error_detail"] = "storage_error", storage.redact(str(e))
    except Exception as e:  # one file the decoder trips over must not lose the whole job
        detail = storage.redact(f"{type(e).__name__}: {e}")[:300]
        row["error"], row["error_detail"] = "decode_error", detail
    finally:
        if isinstance(source, storage.RangedReader):
            source.close()
    return row


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in SCHEMA.names}
    return pa.table(cols, schema=SCHEMA).sort_by("uri")


def build_manifest(
    entries: list[Entry],
    options: storage.StorageOptions | None = None,
    use_ray: bool = True,
    num_cpus_per_task: float = 1.0,
    access: VideoAccess = DEFAULT_ACCESS,
) -> pa.Table:
    """Probe every entry (in parallel with Ray Data when `use_ray`) into a table.

    An entry with an `error` (an unsafe id included, `UNSAFE_ID`) is not read: it becomes
    a row with that error. `access`: the caps and streaming settings every probe uses.
    """
    checked = [_checked(e) for e in entries]
    rows = [_unprobed_row(e) for e in checked if e.error]
    items = [e.__dict__ for e in checked if not e.error]
    if not items:
        return rows_to_table(rows)
    if not use_ray:
        return rows_to_table(rows + [probe_entry(i, options, access) for i in items])
    import ray  # lazy: Ray is a heavy import that only this path needs

    ds: ray.data.Dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 256))
    ds = ds.map(lambda r: probe_entry(r, options, access), num_cpus=num_cpus_per_task)
    return rows_to_table(rows + ds.take_all())


_EMPTY = {pa.string(): "", pa.int64(): 0, pa.int32(): 0, pa.float64(): 0.0}


def _unprobed_row(entry: Entry) -> dict[str, Any]:
    """The manifest row of an entry that is not read (it has an `error`)."""
    row: dict[str, Any] = {f.name: _EMPTY.get(f.type, []) for f in SCHEMA}
    row.update(
        uri=entry.uri,
        video_id=entry.video_id,
        size_bytes=entry.size_bytes,
        label=entry.label,
        label_name=entry.label_name,
        split=entry.split,
        error=entry.error,
        error_detail=entry.error_detail,
    )
    return row


def summarize(table: pa.Table) -> dict[str, Any]:
    errors = [e for e in table.column("error").to_pylist() if e]
    return {
        "ok": table.num_rows - len(errors),
        "bad": len(errors),
        "by_reason": dict(Counter(errors)),
    }


def write_manifest(table: pa.Table, uri: str, options=None) -> None:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    storage.write_bytes(uri, sink.getvalue(), options=options)


def read_manifest(uri: str, options=None) -> pa.Table:
    """Read a manifest written by `write_manifest` (local path or s3://)."""
    data = storage.read_bytes(uri, options=options)
    table = pq.read_table(io.BytesIO(data))
    missing = {"uri", "video_id", "num_frames", "error"} - set(table.column_names)
    if missing:
        raise ManifestError(f"{uri}: not a rayssl manifest (missing columns {sorted(missing)})")
    return mark_implausible_frames(mark_unsafe_ids(migrate(table)))


def mark_implausible_frames(table: pa.Table) -> pa.Table:
    """`table` with error `implausible_frames` on every row without an error whose
    `num_frames` cannot fit in its `size_bytes` (`rayssl.io.video.check_frame_count`;
    a row of unknown size, -1, is not checked): nothing downstream allocates clip
    positions, score arrays or draws from a frame count a manifest merely claims."""

    if "size_bytes" not in table.column_names or table.num_rows == 0:
        return table
    frames = table["num_frames"].fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    sizes = table["size_bytes"].fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    ok = table["error"].is_null().to_numpy(zero_copy_only=False)
    marked = ok & (sizes >= 0) & (frames > np.maximum(sizes, 0) // MIN_BYTES_PER_FRAME)
    if not marked.any():
        return table
    details = [
        f"{n} frames claimed in {size} bytes" if m else None
        for n, size, m in zip(frames.tolist(), sizes.tolist(), marked.tolist(), strict=True)
    ]
    mask = pa.array(marked)
    error = pc.if_else(mask, pa.scalar("implausible_frames"), table["error"].cast(pa.string()))
    table = table.set_column(table.column_names.index("error"), "error", error)
    if "error_detail" not in table.column_names:
        table = table.append_column("error_detail", pa.nulls(table.num_rows, pa.string()))
    detail = pc.if_else(mask, pa.array(details, pa.string()), table["error_detail"])
    return table.set_column(table.column_names.index("error_detail"), "error_detail", detail)


def mark_unsafe_ids(table: pa.Table) -> pa.Table:
    """`table` with error `UNSAFE_ID` (and its `error_detail`) on every row without an
    error whose video_id is not a safe relative path (`video_id_problem`); such a row is
    then skipped and counted like any broken video. Vectorised: one regex pass."""

    ids = table["video_id"].cast(pa.string())
    unsafe = pc.fill_null(pc.match_substring_regex(ids, storage.UNSAFE_RELATIVE_PATH), True)
    marked = pc.and_(unsafe, pc.is_null(table["error"]))
    if not pc.any(marked).as_py():
        return table
    details = [
        video_id_problem(v) if m else None
        for v, m in zip(ids.to_pylist(), marked.to_pylist(), strict=True)
    ]
    error = pc.if_else(marked, pa.scalar(UNSAFE_ID), table["error"].cast(pa.string()))
    table = table.set_column(table.column_names.index("error"), "error", error)
    old = (
        table["error_detail"].cast(pa.string())
        if "error_detail" in table.column_names
        else pa.nulls(table.num_rows, pa.string())
    )
    detail = pc.if_else(marked, pa.array(details, pa.string()), old)
    if "error_detail" in table.column_names:
        return table.set_column(table.column_names.index("error_detail"), "error_detail", detail)
    return table.append_column("error_detail", detail)


def migrate(table: pa.Table) -> pa.Table:
    """Add the columns of `ADDED_COLUMNS` a manifest written before them lacks (with the
    value that keeps the old behaviour); nulls in them become that value too."""
    for name, (dtype, default) in ADDED_COLUMNS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([default] * table.num_rows, dtype))
        elif table[name].null_count:
            filled = table[name].fill_null(pa.scalar(default, dtype))
            table = table.set_column(table.column_names.index(name), name, filled)
    return table


def require_labels(table: pa.Table, purpose: str, split: str | None = None) -> pa.Table:
    """The usable rows (no error, frames > 0) of `split` (None = all), all labelled.

    Every labelled evaluation calls this first, so a manifest built without labels (files
    directly in the source folder, a Kinetics CSV without labels) or a split that does not
    exist is a clear error instead of a meaningless number.
    """

    usable = table.filter(pc.and_(pc.is_null(table["error"]), pc.greater(table["num_frames"], 0)))
    if split is not None:
        rows = usable.filter(pc.equal(usable["split"], split))
        if rows.num_rows == 0:
            present = sorted(set(usable["split"].to_pylist()))
            raise ManifestError(
                f"{purpose}: split {split!r} has no usable video in the manifest "
                f"(splits present: {present})"
            )
        usable = rows
    if "label" not in usable.column_names:
        raise ManifestError(f"{purpose}: the manifest has no class labels (no 'label' column)")
    labels = usable["label"].to_numpy(zero_copy_only=False)
    missing = int((labels < 0).sum())
    where = f" in split {split!r}" if split is not None else ""
    if missing == len(labels):
        raise ManifestError(
            f"{purpose}: the manifest has no class labels{where} (every label is -1); build it "
            "from a labelled layout: `rayssl manifest SRC --format folder` with SRC/<class>/"
            "<video>, or --format ucf101 / hmdb51 / kinetics"
        )
    if missing:
        ids = [v for v, lab in zip(usable["video_id"].to_pylist(), labels, strict=True) if lab < 0]
        raise ManifestError(
            f"{purpose}: {missing} of {len(labels)} videos{where} have no class label "
            f"(label -1), e.g. {ids[:3]}"
        )
    return usable
