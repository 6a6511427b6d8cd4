"""Tests of rayssl.io.storage against local files and a real (moto) S3 server on loopback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import traceback
import uuid
from pathlib import Path
from types import SimpleNamespace

import botocore.exceptions
import pyarrow.fs as pafs
import pytest

from rayssl.io import storage
from rayssl.io.storage import (
    FileInfo,
    RetryStats,
    StorageError,
    StorageNotFoundError,
    StorageOptions,
)
from tests.s3server import (
    FAKE_ACCESS_KEY_ID,
    FAKE_SECRET_ACCESS_KEY,
    boto3_client,
    flaky_s3_proxy,
    make_bucket,
    put_objects,
    s3_env,
    upload_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

FAST = StorageOptions(timeout_s=10)


def fast(endpoint: str | None = None, **kwargs) -> StorageOptions:
    return StorageOptions(endpoint_url=endpoint, timeout_s=10, **kwargs)


@pytest.fixture(scope="module")
def s3(moto_endpoint):
    """The session's moto server (each test makes a bucket of its own: `bucket`)."""
    with s3_env(moto_endpoint) as env:
        yield SimpleNamespace(endpoint=moto_endpoint, env=env)


@pytest.fixture
def bucket(s3) -> str:
    name = f"t-{uuid.uuid4().hex[:12]}"
    make_bucket(s3.endpoint, name)
    return name


def exception_text(exc: BaseException) -> str:
    """Everything a log would show about ``exc``: messages, reprs and the chained causes."""
    return "".join(traceback.format_exception(exc)) + "".join(
        f"{e!s}\n{e!r}\n" for e in _chain(exc)
    )


def _chain(exc: BaseException | None):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def assert_no_credentials(text: str) -> None:
    assert FAKE_SECRET_ACCESS_KEY not in text
    assert FAKE_ACCESS_KEY_ID not in text


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": "msg"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )


# ------------------------------------------------------------------------------------ URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket/key", True),
        ("S3://bucket", True),
        ("/data/videos", False),
        ("relative/path", False),
        ("file:///data/x", False),
        ("s3:/bucket", False),
    ],
)
def test_is_s3(uri, expected):
    assert storage.is_s3(uri) is expected


@pytest.mark.parametrize(
    ("base", "parts", "expected"),
    [
        ("s3://bucket", ("a", "b.mp4"), "s3://bucket/a/b.mp4"),
        ("s3://bucket/", ("a/", "/b"), "s3://bucket/a/b"),
        ("s3://bucket/runs/", ("exp1", "", "ckpt"), "s3://bucket/runs/exp1/ckpt"),
        ("/data", ("videos", "x.mp4"), "/data/videos/x.mp4"),
        ("/data/", ("/abs",), "/data/abs"),  # a part never resets to the root
        ("rel", ("a",), "rel/a"),
        ("", ("a", "b"), "a/b"),
        ("file:///data", ("x",), "file:///data/x"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    ("uri", "parent", "name"),
    [
        ("s3://bucket/a/b.mp4", "s3://bucket/a", "b.mp4"),
        ("s3://bucket/a/", "s3://bucket", "a"),
        ("s3://bucket/a", "s3://bucket", "a"),
        ("s3://bucket", "s3://bucket", ""),
        ("/data/videos/x.mp4", "/data/videos", "x.mp4"),
        ("/data/videos/", "/data", "videos"),
        ("/", "/", ""),
        ("file:///data/x.mp4", "file:///data", "x.mp4"),
    ],
)
def test_parent_and_basename(uri, parent, name):
    assert storage.parent(uri) == parent
    assert storage.basename(uri) == name


@pytest.mark.parametrize(
    ("rel", "problem"),
    [
        ("class/video_01", None),
        ("a..b/c..d", None),
        (".hidden/x", None),
        ("../x", "'..'"),
        ("a/../../x", "'..'"),
        ("..", "'..'"),
        ("/etc/x", "absolute"),
        ("..\\..\\x", "backslash"),
        ("a\x00b", "control character"),
        ("a\nb", "control character"),
        ("", "empty"),
        ("a//b", "empty or '.'"),
        ("./a", "empty or '.'"),
        ("a/", "empty or '.'"),
        (None, "not a string"),
    ],
)
def test_relative_path_problem(rel, problem):
    found = storage.relative_path_problem(rel)
    assert found is None if problem is None else problem in found
    if isinstance(rel, str):  # the regex pyarrow applies to a whole manifest agrees
        import pyarrow as pa
        import pyarrow.compute as pc

        [hit] = pc.match_substring_regex(pa.array([rel]), storage.UNSAFE_RELATIVE_PATH).to_pylist()
        assert hit is (problem is not None)


@pytest.mark.parametrize("root", ["/data/out", "s3://bucket/out", "s3://bucket/out/"])
def test_child_refuses_paths_that_leave_the_folder(root):
    assert storage.child(root, "cls/v.mp4") == storage.join(root, "cls/v.mp4")
    for rel in ("../../escaped/x.mp4", "/abs/x.mp4", "..\\x.mp4", "a\x00b.mp4", "a/../../b"):
        with pytest.raises(storage.UnsafePathError, match="would not stay inside"):
            storage.child(root, rel)


def test_child_resolves_symlinks_below_the_folder(tmp_path):
    out, outside = tmp_path / "out", tmp_path / "outside"
    (out / "inner").mkdir(parents=True)
    outside.mkdir()
    (out / "away").symlink_to(outside)  # a folder link that leaves `out`
    (out / "here").symlink_to(out / "inner")  # one that stays inside
    (out / "file.mp4").symlink_to(outside / "f.mp4")  # a file link that leaves
    with pytest.raises(storage.UnsafePathError, match="symlink"):
        storage.child(out, "away/x.mp4")
    with pytest.raises(storage.UnsafePathError, match="symlink"):
        storage.child(out, "file.mp4")
    assert storage.child(out, "here/x.mp4") == f"{out}/here/x.mp4"
    assert storage.child(out, "new/deeper/x.mp4") == f"{out}/new/deeper/x.mp4"
    # `out` itself may be a link (the user chose it): only what lies below is checked
    (tmp_path / "outlink").symlink_to(out)
    assert storage.child(tmp_path / "outlink", "inner/x.mp4") == f"{tmp_path}/outlink/inner/x.mp4"


def test_real_uris_see_through_symlinks(tmp_path):
    (tmp_path / "src" / "cls").mkdir(parents=True)
    (tmp_path / "src" / "cls" / "v.mp4").write_bytes(b"v")
    (tmp_path / "link").symlink_to(tmp_path / "src")
    (tmp_path / "v-link.mp4").symlink_to(tmp_path / "src" / "cls" / "v.mp4")
    real = storage.real_uris(
        [
            tmp_path / "src" / "cls" / "v.mp4",
            f"{tmp_path}/link/cls/v.mp4",
            f"file://{tmp_path}/link/cls/../cls/v.mp4",
            tmp_path / "v-link.mp4",
            tmp_path / "link" / "cls" / "new.mp4",  # not there yet: its folder resolves
            "S3://bucket/a/b.mp4",
        ]
    )
    assert real[:4] == [str((tmp_path / "src" / "cls" / "v.mp4").resolve())] * 4
    assert real[4] == str((tmp_path / "src" / "cls").resolve() / "new.mp4")
    assert real[5] == "s3://bucket/a/b.mp4"


def test_parse_s3_and_bad_uris():
    assert storage.parse_s3("s3://b/k/x") == ("b", "k/x")
    assert storage.parse_s3("s3://b") == ("b", "")
    with pytest.raises(ValueError):
        storage.parse_s3("s3:///key")
    with pytest.raises(ValueError, match="unsupported URI scheme"):
        storage.read_bytes("gs://bucket/key")


# ------------------------------------------------------------------------------------ local


def test_local_write_read_list_exists(tmp_path):
    root = tmp_path / "data"
    storage.write_bytes(root / "a" / "one.mp4", b"1" * 10)  # parents created
    storage.write_bytes(str(root / "a" / "b" / "two.MP4"), b"2" * 20)
    storage.write_bytes(f"file://{root}/three.avi", b"3" * 30)
    storage.write_bytes(root / "notes.txt", b"")

    assert storage.read_bytes(root / "a" / "one.mp4") == b"1" * 10
    assert storage.read_bytes(f"file://{root}/three.avi", byte_range=(1, 4)) == b"333"
    assert storage.read_bytes(root / "three.avi", byte_range=(28, 99)) == b"33"
    assert storage.exists(root / "a") and storage.exists(f"file://{root}/notes.txt")
    assert not storage.exists(root / "nope")
    assert storage.size(root / "a" / "b" / "two.MP4") == 20

    files = storage.list_files(root, extensions={"mp4", ".AVI"})
    assert files == sorted(files, key=lambda f: f.uri)
    assert [(os.path.relpath(f.uri, root), f.size) for f in files] == [
        ("a/b/two.MP4", 20),
        ("a/one.mp4", 10),
        ("three.avi", 30),
    ]
    assert all(os.path.isabs(f.uri) for f in files)
    top = storage.list_files(f"file://{root}", recursive=False)
    assert [os.path.basename(f.uri) for f in top] == ["notes.txt", "three.avi"]
    assert storage.list_files(root / "three.avi") == [FileInfo(str(root / "three.avi"), 30)]

    with storage.RangedReader(root / "a" / "one.mp4", block_bytes=4) as f:
        f.seek(8)
        assert f.read() == b"11"


def test_local_missing(tmp_path):
    for call in (
        lambda: storage.read_bytes(tmp_path / "missing.mp4"),
        lambda: storage.size(tmp_path / "missing.mp4"),
        lambda: storage.list_files(tmp_path / "missing-dir"),
        lambda: storage.RangedReader(tmp_path / "missing.mp4"),
    ):
        with pytest.raises(StorageNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError)
        assert "missing" in str(info.value)


def test_local_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "d" / "f.bin"
    storage.write_bytes(target, b"old")
    new = os.urandom(100_000)
    seen = {}
    real_replace = os.replace

    def spying_replace(src, dst):
        seen["target"] = open(dst, "rb").read()  # noqa: SIM115 - tiny test helper
        seen["tmp"] = open(src, "rb").read()  # noqa: SIM115
        seen["tmp_dir"] = os.path.dirname(src)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spying_replace)
    storage.write_bytes(target, new)
    assert seen == {"target": b"old", "tmp": new, "tmp_dir": str(target.parent)}
    assert target.read_bytes() == new

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError, match="ENOSPC"):
        storage.write_bytes(target, b"partial")
    assert target.read_bytes() == new  # untouched, and the temp file is cleaned up
    assert os.listdir(target.parent) == ["f.bin"]


def test_local_listing_follows_directory_symlinks_without_looping(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "a.mp4").write_bytes(b"a")
    (tmp_path / "real" / "loop").symlink_to(tmp_path)  # a cycle
    (tmp_path / "linked").symlink_to(tmp_path / "real")
    names = [os.path.relpath(f.uri, tmp_path) for f in storage.list_files(tmp_path)]
    assert len(names) == 1 and names[0] in ("real/a.mp4", "linked/a.mp4")


def test_local_listing_skips_in_flight_temp_files(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / ".a.mp4.0123456789ab.tmp").write_bytes(b"partial")
    assert [os.path.basename(f.uri) for f in storage.list_files(tmp_path)] == ["a.mp4"]


# ------------------------------------------------------------------------------------ S3


def test_s3_write_read_list(s3, bucket, tmp_path):
    base = f"s3://{bucket}/videos"
    storage.write_bytes(f"{base}/a/one.mp4", b"1" * 10)
    storage.write_bytes(f"{base}/a/b/two.MP4", bytearray(b"2" * 20))
    storage.write_bytes(f"{base}/three.avi", memoryview(b"3" * 30))
    storage.write_bytes(f"{base}/notes.txt", b"")
    storage.write_bytes(f"s3://{bucket}/videos2/other.mp4", b"x")  # sibling prefix
    boto3_client(s3.endpoint).put_object(Bucket=bucket, Key="videos/dir/", Body=b"")  # marker

    assert storage.read_bytes(f"{base}/a/one.mp4") == b"1" * 10
    assert storage.size(f"{base}/three.avi") == 30
    assert storage.exists(f"{base}/notes.txt")
    assert storage.exists(base) and storage.exists(f"{base}/a/")  # prefixes
    assert storage.exists(f"s3://{bucket}")
    assert not storage.exists(f"{base}/nope.mp4")
    assert not storage.exists(f"s3://{bucket}/vid")  # not a prefix of "videos/"
    assert not storage.exists("s3://no-such-bucket-here/x")

    files = storage.list_files(base, extensions={".mp4", "avi"})
    assert files == [
        FileInfo(f"{base}/a/b/two.MP4", 20),
        FileInfo(f"{base}/a/one.mp4", 10),
        FileInfo(f"{base}/three.avi", 30),
    ]
    assert [f.uri for f in storage.list_files(base + "/", recursive=False)] == [
        f"{base}/notes.txt",
        f"{base}/three.avi",
    ]
    assert storage.list_files(f"{base}/three.avi") == [FileInfo(f"{base}/three.avi", 30)]
    assert storage.list_files(f"s3://{bucket}/vid") == []

    # upload_dir helper + listing of what it uploaded
    (tmp_path / "sub").mkdir()
    (tmp_path / "x.mp4").write_bytes(b"xx")
    (tmp_path / "sub" / "y.mp4").write_bytes(b"yyy")
    uris = upload_dir(s3.endpoint, tmp_path, bucket, "up")
    assert uris == [f"s3://{bucket}/up/sub/y.mp4", f"s3://{bucket}/up/x.mp4"]
    assert [f.size for f in storage.list_files(f"s3://{bucket}/up")] == [3, 2]


def test_s3_list_paginates_one_request_per_page(s3, bucket):
    keys = {f"many/{i:03d}.mp4": b"v" * i for i in range(35)}
    put_objects(s3.endpoint, bucket, keys)
    with flaky_s3_proxy(s3.endpoint, fail_first=0) as (proxy, stats):
        files = storage.list_files(f"s3://{bucket}/many", options=fast(proxy), page_size=10)
        assert [f.uri for f in files] == [f"s3://{bucket}/{k}" for k in sorted(keys)]
        assert [f.size for f in files] == list(range(35))
        assert stats.requests_seen == 4  # 4 pages of <= 10 keys, no per-object requests

        # A failing page is retried on its own; the listing stays complete.
        stats.fail_next(1)
        before = stats.requests_seen
        again = storage.list_files(f"s3://{bucket}/many", options=fast(proxy), page_size=10)
        assert again == files
        assert stats.requests_seen - before == 5
        assert stats.failures_served == 1


def test_s3_ranged_read(s3, bucket):
    data = bytes(range(256)) * 40
    uri = f"s3://{bucket}/r.bin"
    storage.write_bytes(uri, data)
    for start, end in [(0, 1), (100, 4000), (10_000, 10_240), (10_200, 20_000), (5, 5)]:
        assert storage.read_bytes(uri, byte_range=(start, end)) == data[start:end]
    assert storage.read_bytes(uri, byte_range=(50_000, 60_000)) == b""
    with pytest.raises(ValueError):
        storage.read_bytes(uri, byte_range=(10, 5))


def test_s3_ranged_reader_streams(s3, bucket):
    data = os.urandom(300_000)
    uri = f"s3://{bucket}/stream.bin"
    storage.write_bytes(uri, data)
    with storage.RangedReader(uri, block_bytes=1 << 16, cache_blocks=2) as f:
        assert f.seekable() and f.size() == len(data)
        f.seek(1000)
        assert f.read(5000) == data[1000:6000]
        assert f.tell() == 6000
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        assert f.requests == 2 and f.bytes_fetched == (1 << 16) + len(data) % (1 << 16)
    with pytest.raises(StorageNotFoundError):
        storage.RangedReader(f"s3://{bucket}/nope.bin")


def test_ray_filesystem_has_the_same_retry_budget(s3, bucket):
    """The pyarrow filesystem handed to Ray retries like the boto3 client: max_attempts."""
    storage.write_bytes(f"s3://{bucket}/pa/clip.bin", b"checkpoint")
    path = f"{bucket}/pa/clip.bin"
    with flaky_s3_proxy(s3.endpoint, fail_first=1, status=503, methods={"HEAD"}) as (p, stats):
        fs, _ = storage.get_filesystem(f"s3://{path}", fast(p, max_attempts=2))
        assert fs.open_input_file(path).read() == b"checkpoint"
        assert stats.failures_served == 1
    with flaky_s3_proxy(s3.endpoint, fail_first=100, status=503, methods={"HEAD"}) as (p, stats):
        fs, _ = storage.get_filesystem(f"s3://{path}", fast(p, max_attempts=2))
        with pytest.raises(OSError, match="503|SLOW_DOWN|SERVICE_UNAVAILABLE"):
            fs.open_input_file(path)
        assert stats.failures_served == 2


def test_missing_object_is_not_retried(s3, bucket):
    uri = f"s3://{bucket}/missing.mp4"
    before = storage.RETRY_STATS.snapshot()
    with flaky_s3_proxy(s3.endpoint, fail_first=0) as (proxy, stats):
        with pytest.raises(StorageNotFoundError) as info:
            storage.read_bytes(uri, fast(proxy))
        assert stats.requests_seen == 1
    assert info.value.attempts == 1
    assert info.value.code == "NoSuchKey"
    assert info.value.uri == uri and uri in str(info.value)
    assert storage.RETRY_STATS.snapshot()["retries"] == before["retries"]
    with pytest.raises(StorageNotFoundError) as info:
        storage.size(uri)
    with pytest.raises(StorageNotFoundError) as info:
        storage.read_bytes("s3://no-such-bucket-here/x.mp4")
    assert info.value.code == "NoSuchBucket"


def test_access_denied_is_permanent(s3, bucket):
    uri = f"s3://{bucket}/secret.mp4"
    storage.write_bytes(uri, b"x")
    proxy = flaky_s3_proxy(s3.endpoint, fail_first=5, status=403, fail_keys="secret")
    with proxy as (endpoint, stats), pytest.raises(StorageError) as info:
        storage.read_bytes(uri, fast(endpoint))
    assert not isinstance(info.value, StorageNotFoundError)
    assert info.value.attempts == 1 and info.value.code == "AccessDenied"
    assert stats.failures_served == 1
    assert "not retryable" in str(info.value)


def test_flaky_read_succeeds_after_retries(s3, bucket):
    uri = f"s3://{bucket}/flaky/clip.mp4"
    storage.write_bytes(uri, b"video-bytes")
    before = storage.RETRY_STATS.snapshot()
    with flaky_s3_proxy(s3.endpoint, fail_first=2, status=503, fail_keys="flaky/") as (p, stats):
        assert storage.read_bytes(uri, fast(p)) == b"video-bytes"
    assert stats.failures_served == 2
    assert stats.requests_seen == 3
    assert [entry[2] for entry in stats.log] == [503, 503, 200]
    after = storage.RETRY_STATS.snapshot()
    assert after["retries"] - before["retries"] == 2
    assert after["error_codes"].get("SlowDown", 0) - before["error_codes"].get("SlowDown", 0) == 2
    assert (after["calls"] - before["calls"], after["attempts"] - before["attempts"]) == (1, 3)


def test_retries_exhausted(s3, bucket):
    uri = f"s3://{bucket}/always-busy.mp4"
    storage.write_bytes(uri, b"x")
    before = storage.RETRY_STATS.snapshot()
    proxy = flaky_s3_proxy(s3.endpoint, fail_first=100, fail_keys="always-busy")
    with proxy as (endpoint, stats), pytest.raises(StorageError) as info:
        storage.read_bytes(uri, fast(endpoint, max_attempts=3))
    exc = info.value
    assert not isinstance(exc, StorageNotFoundError)
    assert stats.failures_served == 3
    assert (exc.attempts, exc.code, exc.uri, exc.transient) == (3, "SlowDown", uri, True)
    assert uri in str(exc) and "3 attempts" in str(exc) and "SlowDown" in str(exc)
    assert isinstance(exc.__cause__, botocore.exceptions.ClientError)
    after = storage.RETRY_STATS.snapshot()
    assert after["exhausted"] - before["exhausted"] == 1
    assert after["retries"] - before["retries"] == 2
    assert_no_credentials(exception_text(exc))


def test_write_and_dropped_connections_are_retried(s3, bucket):
    uri = f"s3://{bucket}/w/data.bin"
    payload = os.urandom(2 << 20)  # > 1 MiB: botocore sends Expect: 100-continue
    with flaky_s3_proxy(s3.endpoint, fail_first=1, status=500, methods={"PUT"}) as (p, stats):
        storage.write_bytes(uri, payload, fast(p))
        assert stats.failures_served == 1 and stats.forwarded == 1
    with flaky_s3_proxy(s3.endpoint, fail_first=1, status=0) as (p, stats):  # drop connection
        assert storage.read_bytes(uri, fast(p)) == payload
        assert stats.failures_served == 1
    assert storage.read_bytes(uri) == payload


def test_upload_file_is_retried_from_the_start_of_the_file(s3, bucket, tmp_path):
    local = tmp_path / "clip.mp4"
    local.write_bytes(os.urandom(300_000))
    uri = f"s3://{bucket}/up/clip.mp4"
    with flaky_s3_proxy(s3.endpoint, fail_first=1, status=500, methods={"PUT"}) as (p, stats):
        storage.upload_file(local, uri, fast(p))
        assert stats.failures_served == 1 and stats.forwarded == 1
    assert storage.read_bytes(uri) == local.read_bytes()
    with pytest.raises(StorageError, match="ENOENT"):
        storage.upload_file(tmp_path / "gone.mp4", tmp_path / "out.mp4")
    with pytest.raises(StorageError, match=r"write s3://.*FileNotFoundError"):
        storage.upload_file(tmp_path / "gone.mp4", uri)


def test_a_body_cut_short_is_fetched_again_then_one_clear_error(s3, bucket):
    """botocore retries requests, not a body stream it already returned: read_bytes fetches
    a body cut after its headers again (a new GET), within max_attempts; a body cut every
    time fails as one transient StorageError naming the cut and the attempts."""
    uri = f"s3://{bucket}/cut/clip.mp4"
    data = os.urandom(100_000)
    storage.write_bytes(uri, data)
    before = storage.RETRY_STATS.snapshot()
    with flaky_s3_proxy(s3.endpoint, fail_first=1, status=-1, fail_keys="cut/") as (p, stats):
        assert storage.read_bytes(uri, fast(p)) == data  # cut once, fetched again
        assert [entry[2] for entry in stats.log][-2] == -1 and stats.requests_seen == 2
    after = storage.RETRY_STATS.snapshot()
    assert after["retries"] - before["retries"] == 1 and after["failures"] == before["failures"]
    before = after
    with flaky_s3_proxy(s3.endpoint, fail_first=99, status=-1, fail_keys="cut/") as (p, stats):
        with pytest.raises(StorageError) as info:
            storage.read_bytes(uri, fast(p, max_attempts=3))
        assert stats.requests_seen == 3
    exc = info.value
    assert exc.transient and exc.attempts == 3 and "\n" not in str(exc)
    assert f"read {uri}: response body cut short, gave up after 3 attempts" in str(exc)
    assert exc.code in ("IncompleteReadError", "ResponseStreamingError"), exc.code
    after = storage.RETRY_STATS.snapshot()
    assert after["failures"] - before["failures"] == 1
    assert after["error_codes"][exc.code] - before["error_codes"].get(exc.code, 0) == 3


def test_unreachable_endpoint_gives_up(s3, bucket):
    opts = StorageOptions(endpoint_url="http://127.0.0.1:9", max_attempts=2, timeout_s=2)
    with pytest.raises(StorageError) as info:
        storage.read_bytes(f"s3://{bucket}/x", opts)
    assert info.value.attempts == 2
    assert info.value.code == "EndpointConnectionError"
    assert_no_credentials(exception_text(info.value))


def test_get_filesystem_reads_boto3_object(s3, bucket, tmp_path):
    boto3_client(s3.endpoint).put_object(Bucket=bucket, Key="ds/part-0.bin", Body=b"hello arrow")
    fs, path = storage.get_filesystem(f"s3://{bucket}/ds/part-0.bin")
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == f"{bucket}/ds/part-0.bin"
    with fs.open_input_file(path) as f:
        assert f.read() == b"hello arrow"
    infos = fs.get_file_info(pafs.FileSelector(f"{bucket}/ds", recursive=True))
    assert [(i.path, i.size) for i in infos] == [(path, 11)]

    same, dir_path = storage.get_filesystem(f"s3://{bucket}/ds/")
    assert same is fs and dir_path == f"{bucket}/ds"  # cached per endpoint/region/settings
    other, _ = storage.get_filesystem(f"s3://{bucket}", StorageOptions(region="eu-west-1"))
    assert other is not fs
    # Ray ships storage_filesystem to workers by pickling: no credentials inside.
    blob = pickle.dumps(fs)
    assert FAKE_SECRET_ACCESS_KEY.encode() not in blob
    assert FAKE_ACCESS_KEY_ID.encode() not in blob
    assert pickle.loads(blob).open_input_file(path).read() == b"hello arrow"

    local_fs, local_path = storage.get_filesystem(f"file://{tmp_path}/x")
    assert isinstance(local_fs, pafs.LocalFileSystem) and local_path == f"{tmp_path}/x"


def test_s3_client_settings(s3):
    client = storage.s3_client(FAST)
    assert client is storage.s3_client(FAST)
    assert client.meta.endpoint_url == s3.endpoint
    assert client.meta.region_name == "us-east-1"
    assert client.meta.config.retries["total_max_attempts"] == FAST.max_attempts
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.read_timeout == FAST.timeout_s


def test_moto_server_is_reachable_from_another_process(s3, bucket):
    storage.write_bytes(f"s3://{bucket}/shared.txt", b"from the test process")
    code = (
        "from rayssl.io import storage; import sys;"
        f"sys.stdout.write(storage.read_bytes('s3://{bucket}/shared.txt').decode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout == "from the test process"


def test_s3_env_restores_environment(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outer-secret")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with s3_env("http://127.0.0.1:1") as env:
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == env["AWS_SECRET_ACCESS_KEY"]
        assert "AWS_PROFILE" not in os.environ
        assert storage.resolve_endpoint() == "http://127.0.0.1:1"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] == "outer-secret"
    assert os.environ["AWS_PROFILE"] == "dev"
    assert "AWS_ENDPOINT_URL_S3" not in os.environ


# ------------------------------------------------------------------------------------ options


def test_endpoint_and_region_resolution(monkeypatch):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    assert storage.resolve_endpoint() is None
    assert storage.resolve_region() == "us-east-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert storage.resolve_endpoint() == "http://generic:1"
    assert storage.resolve_region() == "eu-central-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://s3.example:9000/")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert storage.resolve_endpoint() == "https://s3.example:9000"
    assert storage.resolve_region() == "eu-west-3"
    opts = StorageOptions(endpoint_url="http://explicit:2", region="ap-south-1")
    assert storage.resolve_endpoint(opts) == "http://explicit:2"
    assert storage.resolve_region(opts) == "ap-south-1"
    fs, _ = storage.get_filesystem("s3://b/k", StorageOptions(endpoint_url="https://h:9000"))
    assert isinstance(fs, pafs.S3FileSystem)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://AKIAUSER:pw-secret-xyz@127.0.0.1:9000",
        "https://AKIAUSER:pw/secret/xyz@s3.example.com",  # '/' in the password
        "http://AKIAUSER:pw-secret-xyz@host:notaport",
    ],
)
def test_endpoint_with_userinfo_is_rejected_without_echoing_it(endpoint, monkeypatch):
    with pytest.raises(ValueError) as info:
        StorageOptions(endpoint_url=endpoint)
    text = exception_text(info.value)
    assert "pw-secret-xyz" not in text and "pw/secret/xyz" not in text
    assert "AKIAUSER" not in text
    assert "credentials" in str(info.value)

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)  # from the env: same treatment
    with pytest.raises(ValueError) as info:
        storage.read_bytes("s3://bucket/key")
    assert "pw-secret-xyz" not in exception_text(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint_url": "ftp://host:21"},
        {"endpoint_url": "http://host:9000/path"},
        {"max_attempts": 0},
        {"timeout_s": 0},
    ],
)
def test_invalid_options(kwargs):
    with pytest.raises(ValueError):
        StorageOptions(**kwargs)


# ------------------------------------------------------------------------------------ retries


@pytest.mark.parametrize(
    ("status", "code", "requests"),
    [
        (500, "InternalError", 2),
        (502, "BadGateway", 2),
        (503, "SlowDown", 2),
        (504, "GatewayTimeout", 2),
        (429, "SlowDown", 2),
        (0, "ConnectionClosedError", 2),  # connection dropped without an answer
        (400, "BadRequest", 1),
        (403, "AccessDenied", 1),
        (404, "NoSuchKey", 1),
    ],
)
def test_which_errors_are_retried(s3, bucket, status, code, requests):
    """botocore's standard policy, observed on the wire: transient errors use up the
    attempts, permanent ones fail at once; the error and RETRY_STATS say which it was."""
    uri = f"s3://{bucket}/policy.bin"
    storage.write_bytes(uri, b"x")
    before = storage.RETRY_STATS.snapshot()
    proxy = flaky_s3_proxy(s3.endpoint, fail_first=100, status=status, fail_keys="policy")
    with proxy as (endpoint, stats), pytest.raises(StorageError) as info:
        storage.read_bytes(uri, fast(endpoint, max_attempts=2))
    assert stats.failures_served == requests
    exc = info.value
    assert (exc.code, exc.attempts, exc.transient) == (code, requests, requests > 1)
    assert isinstance(exc, StorageNotFoundError) is (status == 404)
    if status == 404:
        assert str(exc) == f"{uri}: not found (NoSuchKey)"
    else:
        said = "gave up after 2 attempts" if requests > 1 else "failed after 1 attempt (not retry"
        assert said in str(exc) and uri in str(exc)
    after = storage.RETRY_STATS.snapshot()
    assert after["retries"] - before["retries"] == requests - 1
    assert after["exhausted"] - before["exhausted"] == int(requests > 1)
    assert after["error_codes"][code] - before["error_codes"].get(code, 0) == requests


def test_errors_pickle_with_their_attributes():
    exc = StorageNotFoundError("s3://b/k", code="NoSuchKey", attempts=1)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is StorageNotFoundError and str(back) == str(exc)
    assert (back.uri, back.code, back.attempts) == ("s3://b/k", "NoSuchKey", 1)
    exc = StorageError("read x: gave up", uri="s3://b/x", attempts=3, code="SlowDown")
    back = pickle.loads(pickle.dumps(exc))
    assert (str(back), back.attempts, back.code) == ("read x: gave up", 3, "SlowDown")
    stats = pickle.loads(pickle.dumps(storage.RETRY_STATS))
    assert type(stats) is RetryStats and stats.snapshot() == storage.RETRY_STATS.snapshot()


# ------------------------------------------------------------------------------------ secrets


def test_redact(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalr/XUtnFEMI+K7MDENG")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE123")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "abc")  # too short to redact safely
    text = (
        "key=AKIAEXAMPLE123 secret=wJalr/XUtnFEMI+K7MDENG enc=wJalr%2FXUtnFEMI%2BK7MDENG "
        "url=http://user:p4ss@minio:9000/b token=abc "
        "presigned=https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIAX%2F2024&X-Amz-Signature=ff00"
    )
    out = storage.redact(text)
    for leaked in ("AKIAEXAMPLE123", "wJalr", "p4ss", "user:", "AKIAX", "ff00"):
        assert leaked not in out
    assert "token=abc" in out
    assert "http://***@minio:9000/b" in out
    assert storage.redact("nothing to hide") == "nothing to hide"


def test_no_credentials_in_any_error(s3, bucket, monkeypatch):
    errors: list[BaseException] = []
    attempts = [
        lambda: storage.read_bytes(f"s3://{bucket}/missing"),
        lambda: storage.read_bytes("s3://no-such-bucket-here/missing"),
        lambda: storage.size(f"s3://{bucket}/missing"),
        lambda: storage.read_bytes(
            f"s3://{bucket}/x", StorageOptions(endpoint_url="http://127.0.0.1:9", max_attempts=1)
        ),
        lambda: StorageOptions(
            endpoint_url=f"http://{FAKE_ACCESS_KEY_ID}:{FAKE_SECRET_ACCESS_KEY}@127.0.0.1:1"
        ),
        lambda: storage.parse_s3(f"s3:///{FAKE_SECRET_ACCESS_KEY}"),
    ]
    for call in attempts:
        with pytest.raises((StorageError, ValueError)) as info:
            call()
        errors.append(info.value)
    with flaky_s3_proxy(s3.endpoint, fail_first=100) as (proxy, _):
        with pytest.raises(StorageError) as info:
            storage.read_bytes(f"s3://{bucket}/x", fast(proxy, max_attempts=2))
        errors.append(info.value)
    # A message that would contain the secret (e.g. echoed by a server) is redacted too.
    errors.append(StorageError(f"server said {FAKE_SECRET_ACCESS_KEY}", uri="s3://b/k"))
    for exc in errors:
        assert_no_credentials(exception_text(exc))
