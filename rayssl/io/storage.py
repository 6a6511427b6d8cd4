"""One way to address data and runs: a local path (or ``file://`` URI) or ``s3://bucket/prefix``.

Everything that touches videos, manifests, checkpoints or run directories goes through this
module, so that the same code works on a laptop and against S3-compatible object storage
(AWS S3, MinIO, Ceph, ...).  It does not import Ray.

Configuration
    :class:`StorageOptions` holds the endpoint, region, retry and timeout settings.  The
    endpoint falls back to ``AWS_ENDPOINT_URL_S3`` then ``AWS_ENDPOINT_URL``; the region to
    ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` then ``us-east-1``.  Credentials are never part of
    the configuration: boto3 and pyarrow resolve them from the standard AWS chain
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, profiles,
    instance metadata).  Settings are resolved in the calling process, so Ray workers need the
    same environment variables (e.g. through ``runtime_env={"env_vars": ...}``).

Errors
    Every failure is raised as :class:`StorageError` (missing objects/files as its subclass
    :class:`StorageNotFoundError`, which is also a ``FileNotFoundError``).  Messages name the
    URI, the number of attempts and the last error code, and pass through :func:`redact` so
    they never contain credentials.

One S3 layer: boto3
    Every S3 request rayssl makes itself (read, ranged read, write, upload, list, stat,
    delete) goes through one cached boto3 client per process and :class:`StorageOptions`
    (:func:`s3_client`).  boto3 rather than pyarrow's ``S3FileSystem``, because its errors are
    structured (an S3 error code and HTTP status, not a message to parse), its retry policy
    can be observed per attempt (its event hooks feed :data:`RETRY_STATS`), it deletes in
    batches, and its 5xx handling has no gap (pyarrow's AWS SDK fails a read smaller than the
    error body at once).  Ray Train and Tune need a ``pyarrow.fs.FileSystem`` for their
    ``storage_path``, so :func:`get_filesystem` builds an ``S3FileSystem`` as an adapter for
    Ray only, from the same options: endpoint, region, timeouts and the AWS SDKs' "standard"
    retry mode with the same ``max_attempts``.  Nothing in rayssl reads or writes through it.

Retries
    Retries are botocore's: ``retries={"mode": "standard", "total_max_attempts":
    max_attempts}``.  Transient errors (HTTP 500/502/503/504, throttling codes such as
    ``SlowDown``, ``RequestTimeout``, dropped connections, connect/read timeouts) are retried
    with jittered exponential backoff; anything else (missing key/bucket, access denied, bad
    request, missing credentials) is not.  A botocore event hook counts every attempt and its
    error code in :data:`RETRY_STATS`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import stat
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit
from urllib.request import url2pathname

import boto3
import botocore.config
import botocore.exceptions
import botocore.retries.standard
import pyarrow.fs as pafs
from botocore.exceptions import ClientError

__all__ = [
    "RETRY_STATS",
    "FileInfo",
    "RangedReader",
    "RetryStats",
    "StorageError",
    "StorageNotFoundError",
    "StorageOptions",
    "UNSAFE_RELATIVE_PATH",
    "UnsafePathError",
    "basename",
    "child",
    "clear_caches",
    "exists",
    "get_filesystem",
    "is_s3",
    "iter_files",
    "join",
    "list_files",
    "parent",
    "parse_s3",
    "read_bytes",
    "real_uris",
    "redact",
    "relative_path_problem",
    "resolve_endpoint",
    "resolve_region",
    "s3_client",
    "size",
    "upload_file",
    "write_bytes",
]

T = TypeVar("T")
PathLike = str | os.PathLike

_S3_PREFIX = "s3://"
_FILE_PREFIX = "file://"
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DEFAULT_REGION = "us-east-1"
_MAX_PAGE_SIZE = 1000  # S3 never returns more than 1000 keys per ListObjectsV2 page


# --------------------------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------------------------

_SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_MIN_SECRET_LEN = 4
# scheme://<userinfo>@ -- greedy up to the LAST '@' before whitespace or a quote, so a
# password containing '@', '/' or ':' is still covered (`https://u:p@ss@host` leaks no
# `ss`); over-redacting an odd '@' in a path is harmless.
_USERINFO_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^\s\"'<>]+@")
# Presigned-URL query parameters carrying the key id / signature / session token.
_PRESIGNED_RE = re.compile(
    r"((?:X-Amz-(?:Credential|Signature|Security-Token)|AWSAccessKeyId|Signature)=)[^&\s\"'<]+",
    re.IGNORECASE,
)
_REDACTED = "***"


def redact(text: str) -> str:
    """Remove credentials from ``text``.

    Replaces with ``***``: any value of ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` /
    ``AWS_ACCESS_KEY_ID`` currently in ``os.environ`` (non-empty, at least 4 characters; also
    their URL-encoded forms), any ``user:secret@`` userinfo in URLs and the credential/signature
    parameters of presigned URLs.
    """
    text = str(text)
    values: set[str] = set()
    for name in _SECRET_ENV_VARS:
        value = os.environ.get(name, "")
        if len(value) >= _MIN_SECRET_LEN:
            values.add(value)
            values.add(quote(value, safe=""))
    for value in sorted(values, key=len, reverse=True):
        text = text.replace(value, _REDACTED)
    text = _USERINFO_RE.sub(rf"\1{_REDACTED}@", text)
    return _PRESIGNED_RE.sub(rf"\1{_REDACTED}", text)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _rebuild_error(cls: type[StorageError], message: str, state: dict) -> StorageError:
    exc = cls.__new__(cls, message)
    exc.args = (message,)
    exc.__dict__.update(state)
    return exc


class StorageError(Exception):
    """A storage operation failed.

    Attributes: ``uri`` (the object or file), ``attempts`` (requests made, retries included),
    ``code`` (the last error's code, e.g. ``SlowDown``, ``AccessDenied``, ``ENOENT``) and
    ``transient`` (whether the last error was considered transient, i.e. retries ran out).
    The message is redacted.  Picklable, so it survives being raised inside a Ray task.
    """

    def __init__(
        self,
        message: str,
        *,
        uri: str | None = None,
        attempts: int | None = None,
        code: str | None = None,
        transient: bool = False,
    ) -> None:
        message = redact(message)
        super().__init__(message)
        self.uri = redact(uri) if uri is not None else None
        self.attempts = attempts
        self.code = code
        self.transient = transient

    def __reduce__(self):  # type: ignore[override]
        message = self.args[0] if self.args else ""
        return (_rebuild_error, (type(self), message, dict(self.__dict__)))


class StorageNotFoundError(StorageError, FileNotFoundError):
    """The object, bucket or file does not exist (never retried)."""

    def __init__(
        self,
        uri: str,
        *,
        code: str | None = None,
        attempts: int | None = None,
        message: str | None = None,
    ) -> None:
        if message is None:
            message = f"{uri}: not found" + (f" ({code})" if code else "")
        super().__init__(message, uri=uri, attempts=attempts, code=code)


# --------------------------------------------------------------------------------------------
# Options and resolution
# --------------------------------------------------------------------------------------------


def _validate_endpoint(url: str) -> str:
    """Return ``url`` normalised (no trailing slash) or raise ValueError (redacted)."""
    if "@" in url:
        # Checked on the raw string: a password containing '/' would make urlsplit put part of
        # it into the path, and urlsplit's own errors could echo it.
        raise ValueError(
            "endpoint_url must not contain credentials (user:password@host); provide them "
            "through the standard AWS credential chain (AWS_ACCESS_KEY_ID / "
            f"AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN or a profile), got {redact(url)!r}"
        )
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 -- validates the port
    except ValueError:
        raise ValueError(f"endpoint_url has an invalid port: {redact(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint_url must look like http(s)://host[:port], got {redact(url)!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"endpoint_url must not have a path or query, got {redact(url)!r}")
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class StorageOptions:
    """Where and how to reach S3.  Never holds credentials.

    Attributes:
        endpoint_url: ``http(s)://host[:port]`` of an S3-compatible service; ``None`` means the
            ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` env vars, else AWS itself.
        region: signing region; ``None`` means ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` /
            ``us-east-1``.
        max_attempts: total attempts per request (first try included), >= 1.
        timeout_s: connect and read/request timeout of a single request.
    """

    endpoint_url: str | None = None
    region: str | None = None
    max_attempts: int = 5
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.endpoint_url:
            _validate_endpoint(self.endpoint_url)
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")


_DEFAULT_OPTIONS = StorageOptions()


def _opts(options: StorageOptions | None) -> StorageOptions:
    return _DEFAULT_OPTIONS if options is None else options


def resolve_endpoint(options: StorageOptions | None = None) -> str | None:
    """The S3 endpoint URL in effect (options, then env), or ``None`` for AWS."""
    opts = _opts(options)
    url = (
        opts.endpoint_url
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or None
    )
    return _validate_endpoint(url) if url else None


def resolve_region(options: StorageOptions | None = None) -> str:
    """The S3 region in effect (options, then env, then ``us-east-1``)."""
    opts = _opts(options)
    return (
        opts.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or _DEFAULT_REGION
    )


def _credential_fingerprint() -> str:
    """Digest of the env-provided identity, so cached clients follow credential changes."""
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    raw = "\0".join(os.environ.get(name, "") for name in names)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def _cache_key(opts: StorageOptions, *extra: Any) -> tuple:
    return (
        os.getpid(),  # clients / AWS SDK state must not cross a fork
        resolve_endpoint(opts),
        resolve_region(opts),
        opts.max_attempts,
        opts.timeout_s,
        _credential_fingerprint(),
        *extra,
    )


_CACHE_LOCK = threading.Lock()
_CLIENTS: dict[tuple, Any] = {}
_SESSIONS: dict[tuple, boto3.session.Session] = {}
_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}


def clear_caches() -> None:
    """Forget cached boto3 clients and pyarrow S3 filesystems (e.g. after changing env)."""
    with _CACHE_LOCK:
        _CLIENTS.clear()
        _SESSIONS.clear()
        _FILESYSTEMS.clear()


def s3_client(options: StorageOptions | None = None) -> Any:
    """A cached, thread-safe boto3 S3 client for ``options``.

    The client uses the resolved endpoint/region, path-style addressing for custom endpoints,
    connect/read timeouts of ``timeout_s`` and botocore ``standard`` retries with
    ``total_max_attempts=max_attempts``; its attempts are counted in :data:`RETRY_STATS`
    when made through this module's functions.
    """
    opts = _opts(options)
    key = _cache_key(opts, "boto3")
    client = _CLIENTS.get(key)
    if client is not None:
        return client
    with _CACHE_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            endpoint = resolve_endpoint(opts)
            region = resolve_region(opts)
            config = botocore.config.Config(
                region_name=region,
                retries={"total_max_attempts": opts.max_attempts, "mode": "standard"},
                connect_timeout=opts.timeout_s,
                read_timeout=opts.timeout_s,
                max_pool_connections=32,
                s3={"addressing_style": "path"} if endpoint else None,
            )
            # Sessions are not thread-safe: used only under the lock.  One per identity, since
            # a session caches the credentials it resolved; sharing it avoids re-loading the
            # S3 service model for every client.
            session_key = (os.getpid(), _credential_fingerprint())
            session = _SESSIONS.get(session_key)
            if session is None:
                session = _SESSIONS[session_key] = boto3.session.Session()
            client = session.client("s3", endpoint_url=endpoint, region_name=region, config=config)
            client.meta.events.register("needs-retry.s3", _observe)
            _CLIENTS[key] = client
    return client


_LOCAL_FS = pafs.LocalFileSystem()


def get_filesystem(
    uri: PathLike, options: StorageOptions | None = None
) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path of ``uri`` inside it, for Ray to write through.

    Local paths give ``(LocalFileSystem(), absolute_path)``; ``s3://bucket/key`` gives a cached
    ``S3FileSystem`` and ``"bucket/key"``, configured from the same :class:`StorageOptions` as
    :func:`s3_client` (endpoint, region, timeouts, the AWS SDK's standard retry mode with
    ``max_attempts``; credentials from the default chain).  For
    ``ray.train.RunConfig(storage_path=path, storage_filesystem=fs)`` and Tune; rayssl's own
    reads and writes use :func:`s3_client`.  The S3 filesystem pickles without credentials.
    """
    text = os.fspath(uri)
    if not is_s3(text):
        return _LOCAL_FS, os.path.abspath(_local_path(text))
    bucket, key = parse_s3(text)
    path = f"{bucket}/{key}".rstrip("/")
    opts = _opts(options)
    cache_key = _cache_key(opts, "pyarrow")
    fs = _FILESYSTEMS.get(cache_key)
    if fs is None:
        with _CACHE_LOCK:
            fs = _FILESYSTEMS.get(cache_key)
            if fs is None:
                kwargs: dict[str, Any] = {
                    "region": resolve_region(opts),
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(
                        max_attempts=opts.max_attempts
                    ),
                    "connect_timeout": opts.timeout_s,
                    "request_timeout": opts.timeout_s,
                }
                endpoint = resolve_endpoint(opts)
                if endpoint:
                    parts = urlsplit(endpoint)
                    kwargs["endpoint_override"] = parts.netloc
                    kwargs["scheme"] = parts.scheme
                fs = pafs.S3FileSystem(**kwargs)
                _FILESYSTEMS[cache_key] = fs
    return fs, path


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------


def is_s3(uri: PathLike) -> bool:
    """Whether ``uri`` is an ``s3://`` URI (anything else is treated as local)."""
    return isinstance(uri, str) and uri[:5].lower() == _S3_PREFIX


def parse_s3(uri: str) -> tuple[str, str]:
    """``"s3://bucket/a/b"`` -> ``("bucket", "a/b")``; the key may be empty."""
    if not is_s3(uri):
        raise ValueError(f"not an s3:// URI: {redact(uri)!r}")
    bucket, _, key = uri[len(_S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {redact(uri)!r}")
    return bucket, key


def _local_path(uri: PathLike) -> str:
    """Filesystem path of a local path or ``file://`` URI."""
    text = os.fspath(uri)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if text[:7].lower() == _FILE_PREFIX:
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {redact(text)!r}")
        return url2pathname(parts.path)
    if _SCHEME_RE.match(text):
        raise ValueError(f"unsupported URI scheme (use a local path or s3://): {redact(text)!r}")
    return os.path.expanduser(text)


def _split_scheme(uri: str) -> tuple[str, str]:
    """``("s3://", "bucket/key")``, ``("file://", "/path")`` or ``("", "path")``."""
    for prefix in (_S3_PREFIX, _FILE_PREFIX):
        if uri[: len(prefix)].lower() == prefix:
            return uri[: len(prefix)], uri[len(prefix) :]
    return "", uri


def join(uri: PathLike, *parts: PathLike) -> str:
    """Append path components with ``/``; works for S3 URIs, ``file://`` URIs and paths.

    Leading/trailing slashes of ``parts`` are stripped, so a part never resets the path to the
    root (unlike ``os.path.join``); empty parts are skipped.
    """
    out = os.fspath(uri)
    for part in parts:
        piece = os.fspath(part).strip("/")
        if not piece:
            continue
        if not out:
            out = piece
        elif out.endswith("/"):
            out += piece
        else:
            out += "/" + piece
    return out


class UnsafePathError(ValueError):
    """A relative path taken from data (a video id, a file name) would leave its folder."""


#: What makes a relative path from data unsafe to put under a folder, as a regular
#: expression that Python's ``re`` and pyarrow's RE2 both read: empty, a leading or
#: trailing ``/``, an empty (``//``), ``.`` or ``..`` component, a backslash (a separator on
#: Windows and to some S3 tools) or a control character (NUL ends a C string).
UNSAFE_RELATIVE_PATH = r"^$|^/|/$|//|\\|[\x00-\x1f\x7f]|(?:^|/)\.\.?(?:/|$)"
_UNSAFE_RELATIVE_RE = re.compile(UNSAFE_RELATIVE_PATH)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def relative_path_problem(rel: object) -> str | None:
    """Why ``rel`` is not a safe relative path (see :data:`UNSAFE_RELATIVE_PATH`), or None.

    Safe: ``"class/video_01"``, ``"a.b/c..d"``; unsafe: ``"../x"``, ``"/etc/x"``,
    ``"a\\b"``, ``"a\\x00b"``, ``"a//b"``, ``"./a"``, ``""``.
    """
    if not isinstance(rel, str):
        return f"is not a string ({type(rel).__name__})"
    if not _UNSAFE_RELATIVE_RE.search(rel):
        return None
    if not rel:
        return "is empty"
    if _CONTROL_RE.search(rel):
        return "contains a control character"
    if "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/"):
        return "is an absolute path"
    if ".." in rel.split("/"):
        return "has a '..' component"
    return "has an empty or '.' component"


def child(root: PathLike, rel: str) -> str:
    """``root`` joined with the relative path ``rel``, checked to stay inside ``root``.

    Every output path built from data goes through here.  ``rel`` must pass
    :func:`relative_path_problem`, so it cannot climb out of ``root`` by its text; for a
    local ``root``, a component of ``rel`` that already exists as a symlink must also
    resolve (``os.path.realpath``) inside ``root``.  S3 keys have no links, so the text is
    all there is to check.  Costs one ``lstat`` per existing component of ``rel``.

    Raises:
        UnsafePathError: naming ``rel`` and why.
    """
    problem = relative_path_problem(rel)
    root_text = os.fspath(root)
    if problem is not None:
        raise UnsafePathError(f"{rel!r} {problem}: it would not stay inside {redact(root_text)}")
    out = join(root_text, rel)
    if not is_s3(out):
        _check_links(root_text, rel)
    return out


def _check_links(root: str, rel: str) -> None:
    base = os.path.abspath(_local_path(root))
    real_root: str | None = None
    path = base
    for part in rel.split("/"):
        path = os.path.join(path, part)
        try:
            st = os.lstat(path)
        except OSError:
            return  # nothing exists below a missing component
        if not stat.S_ISLNK(st.st_mode):
            continue
        if real_root is None:
            real_root = os.path.realpath(base)
        target = os.path.realpath(path)
        if target != real_root and not target.startswith(real_root.rstrip("/") + "/"):
            raise UnsafePathError(
                f"{rel!r}: {path} is a symlink to {target}, outside {redact(root)}"
            )


def real_uris(uris: Iterable[PathLike]) -> list[str]:
    """The locations ``uris`` name, comparable with ``==``: local paths absolute with every
    symlink resolved (as ``os.path.realpath``), S3 URIs as ``s3://bucket/key``.

    Two URIs that compare equal name the same file (hard links aside), so writing one
    overwrites the other.  Cost: one ``realpath`` per distinct local folder, one ``lstat``
    per file.
    """
    folders: dict[str, str] = {}
    out = []
    for uri in uris:
        text = os.fspath(uri)
        if is_s3(text):
            bucket, key = parse_s3(text)
            out.append(f"{_S3_PREFIX}{bucket}/{key}")
            continue
        folder, name = os.path.split(os.path.abspath(_local_path(text)))
        real_folder = folders.get(folder)
        if real_folder is None:
            real_folder = folders[folder] = os.path.realpath(folder)
        path = os.path.join(real_folder, name)
        out.append(os.path.realpath(path) if os.path.islink(path) else path)
    return out


def parent(uri: PathLike) -> str:
    """The containing "directory": ``s3://b/a/c`` -> ``s3://b/a``; ``s3://b/a`` -> ``s3://b``.

    The bucket (``s3://b``) and the filesystem root are their own parent; a bare relative name
    has parent ``""`` (as ``os.path.dirname``).
    """
    text = os.fspath(uri)
    if is_s3(text):
        bucket, key = parse_s3(text)
        key = key.rstrip("/")
        head = key.rpartition("/")[0]
        return f"{_S3_PREFIX}{bucket}/{head}" if head else f"{_S3_PREFIX}{bucket}"
    scheme, rest = _split_scheme(text)
    stripped = rest.rstrip("/") or ("/" if rest.startswith("/") else "")
    return scheme + os.path.dirname(stripped)


def listing_root(uri: PathLike) -> str:
    """The prefix that :func:`list_files` puts before the relative path of what it finds.

    Local paths (relative, ``~``, ``file://``) become the absolute path the listing
    returns; S3 URIs keep their form. A trailing ``/`` is dropped. ``uri`` relative to this
    root is what importers use for class folders and video ids.
    """
    text = os.fspath(uri)
    if is_s3(text):
        bucket, key = parse_s3(text)
        key = key.rstrip("/")
        return f"{_S3_PREFIX}{bucket}/{key}" if key else f"{_S3_PREFIX}{bucket}"
    return os.path.abspath(_local_path(text)).rstrip("/") or "/"


def basename(uri: PathLike) -> str:
    """Last component: ``s3://b/a/c.mp4`` -> ``c.mp4`` (``""`` for a bucket or the root)."""
    text = os.fspath(uri)
    if is_s3(text):
        return parse_s3(text)[1].rstrip("/").rpartition("/")[2]
    return os.path.basename(_split_scheme(text)[1].rstrip("/"))


# --------------------------------------------------------------------------------------------
# Retries: botocore's, counted; errors: one mapping
# --------------------------------------------------------------------------------------------


class RetryStats:
    """Thread-safe counters of the S3 calls this module made in this process.

    ``calls`` (operations), ``attempts`` (HTTP requests, retries included), ``retries``
    (attempts after the first), ``failures`` (calls that raised), ``exhausted`` (calls that
    gave up on a retryable error) and ``error_codes`` (code -> count of every failed attempt).
    """

    _FIELDS = ("calls", "attempts", "retries", "failures", "exhausted")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.calls = self.attempts = self.retries = self.failures = self.exhausted = 0
            self.error_codes: dict[str, int] = {}

    def _record(self, call: _Call, *, failed: bool, exhausted: bool) -> None:
        attempts = call.total_attempts
        with self._lock:
            self.calls += 1
            self.attempts += attempts
            self.retries += attempts - 1
            self.failures += int(failed)
            self.exhausted += int(exhausted)
            for code in call.codes:
                self.error_codes[code] = self.error_codes.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy, e.g. to report as metrics or to diff around a block of work."""
        with self._lock:
            snap: dict[str, Any] = {name: getattr(self, name) for name in self._FIELDS}
            snap["error_codes"] = dict(self.error_codes)
            return snap

    def __getstate__(self) -> dict[str, Any]:
        return self.snapshot()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._lock = threading.Lock()
        for name in self._FIELDS:
            setattr(self, name, state.get(name, 0))
        self.error_codes = dict(state.get("error_codes", {}))

    def __repr__(self) -> str:
        return f"RetryStats({self.snapshot()})"


RETRY_STATS = RetryStats()
"""Process-wide counters of every S3 call made through this module."""


@dataclass
class _Call:
    """What botocore's attempts of one call looked like (filled in by :func:`_observe`)."""

    attempts: int = 0
    codes: list[str] = field(default_factory=list)
    last_failed: bool = False  # botocore saw the last attempt fail
    retryable: bool = False  # botocore's verdict on the last attempt, attempts left aside
    body_cuts: int = 0  # bodies cut after their headers and fetched again (read_bytes)

    @property
    def total_attempts(self) -> int:
        """Requests of this call: botocore's attempts of the last GET, plus the GETs whose
        body was cut and fetched again."""
        return max(self.attempts, 1) + self.body_cuts


_CURRENT = threading.local()  # the _Call in progress in this thread (botocore retries inline)
_ADAPTER = botocore.retries.standard.RetryEventAdapter()
# The conditions of botocore's standard mode, without its attempt limit: would this
# response be retried if attempts were left?
_RETRYABLE = botocore.retries.standard.OrRetryChecker(
    [
        botocore.retries.standard.TransientRetryableChecker(),
        botocore.retries.standard.ThrottledRetryableChecker(),
        botocore.retries.standard.ModeledRetryableChecker(),
    ]
)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})


def _observe(**kwargs: Any) -> None:
    """``needs-retry`` hook: record one attempt of the current call (botocore decides)."""
    call: _Call | None = getattr(_CURRENT, "call", None)
    if call is None:
        return
    context = _ADAPTER.create_retry_context(**kwargs)
    call.attempts = context.attempt_number
    status = context.http_response.status_code if context.http_response is not None else 0
    call.last_failed = context.caught_exception is not None or status >= 300
    if context.caught_exception is not None:
        call.codes.append(type(context.caught_exception).__name__)
    elif call.last_failed:
        call.codes.append(str(context.get_error_code() or status))
    call.retryable = _RETRYABLE.is_retryable(context)


def _s3_call(fn: Callable[[], T], *, what: str, uri: str) -> T:
    """``fn()`` (S3 requests through :func:`s3_client`), counted in :data:`RETRY_STATS`, its
    failure raised as :class:`StorageError` (``what`` names the operation: ``"read s3://b/k"``)."""
    outer = getattr(_CURRENT, "call", None)
    call = _CURRENT.call = _Call()
    try:
        result = fn()
    except Exception as exc:
        error = _s3_error(exc, what=what, uri=uri, call=call)
        if not call.last_failed:  # failed outside botocore's requests (a cut body, no creds)
            call.codes.append(error.code or type(exc).__name__)
        RETRY_STATS._record(call, failed=True, exhausted=error.transient)
        raise error from exc
    finally:
        _CURRENT.call = outer
    RETRY_STATS._record(call, failed=False, exhausted=False)
    return result


def _s3_error(exc: Exception, *, what: str, uri: str, call: _Call) -> StorageError:
    attempts = call.total_attempts
    code = _client_error_info(exc)[0] if isinstance(exc, ClientError) else type(exc).__name__
    if code in _NOT_FOUND_CODES:
        return StorageNotFoundError(uri, code=code, attempts=attempts)
    plural = "attempt" if attempts == 1 else "attempts"
    if call.retryable:
        message = f"{what}: gave up after {attempts} {plural}; last error: "
    elif isinstance(exc, _BODY_ERRORS):  # fetched again by read_bytes, up to max_attempts
        message = f"{what}: response body cut short, gave up after {attempts} {plural}: "
    else:
        message = f"{what}: failed after {attempts} {plural} (not retryable): "
    transient = call.retryable or isinstance(exc, _BODY_ERRORS)
    return StorageError(
        message + _error_detail(exc), uri=uri, attempts=attempts, code=code, transient=transient
    )


_BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
)


def _client_error_info(exc: ClientError) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    code = str(response.get("Error", {}).get("Code") or status or "ClientError")
    return code, status


def _error_detail(exc: BaseException, limit: int = 300) -> str:
    if isinstance(exc, ClientError):
        code, _ = _client_error_info(exc)
        message = (getattr(exc, "response", None) or {}).get("Error", {}).get("Message") or ""
        detail = f"{code}: {message}" if message else code
        operation = getattr(exc, "operation_name", None)
        if operation:
            detail += f" ({operation})"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    detail = redact(" ".join(detail.split()))
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A file or object: its URI (``s3://...`` or an absolute local path) and size in bytes."""

    uri: str
    size: int


def _normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...] | None:
    if not extensions:
        return None
    if isinstance(extensions, str):
        extensions = [extensions]
    return tuple(sorted({"." + e.lower().lstrip(".") for e in extensions}))


def _wanted(name: str, exts: tuple[str, ...] | None) -> bool:
    return exts is None or name.lower().endswith(exts)


_TMP_RE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")  # in-flight write_bytes temp files


def iter_files(
    uri: PathLike,
    extensions: Iterable[str] | None = None,
    recursive: bool = True,
    options: StorageOptions | None = None,
    *,
    page_size: int = _MAX_PAGE_SIZE,
) -> Iterator[FileInfo]:
    """Like :func:`list_files` but streaming and unsorted (S3 yields in key order page by page).

    S3: one ``ListObjectsV2`` request per ``page_size`` keys (each page retried on its own),
    never a request per object.
    """
    exts = _normalise_extensions(extensions)
    text = os.fspath(uri)
    if is_s3(text):
        yield from _iter_s3(text, exts, recursive, _opts(options), page_size)
    else:
        yield from _iter_local(text, exts, recursive)


def list_files(
    uri: PathLike,
    extensions: Iterable[str] | None = None,
    recursive: bool = True,
    options: StorageOptions | None = None,
    *,
    page_size: int = _MAX_PAGE_SIZE,
) -> list[FileInfo]:
    """All files under ``uri`` (a directory/prefix, or a single file/object), sorted by URI.

    ``extensions``: e.g. ``{".mp4", "avi"}``, case-insensitive, leading dot optional; empty or
    ``None`` means all files.  ``recursive=False`` lists only direct children.  An S3 prefix is
    treated as a directory (``s3://b/vid`` lists ``vid/...``, not ``videos/...``); directory
    marker keys (ending in ``/``) are skipped.  Local results are absolute paths; directory
    symlinks are followed (cycles are skipped).  A missing local path or S3 bucket raises
    :class:`StorageNotFoundError`; an empty S3 prefix gives ``[]``.
    """
    return sorted(
        iter_files(uri, extensions, recursive, options, page_size=page_size),
        key=lambda info: info.uri,
    )


def _iter_s3(
    uri: str,
    exts: tuple[str, ...] | None,
    recursive: bool,
    opts: StorageOptions,
    page_size: int,
) -> Iterator[FileInfo]:
    if not 1 <= page_size <= _MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be in [1, {_MAX_PAGE_SIZE}], got {page_size}")
    bucket, key = parse_s3(uri)
    prefix = key if not key or key.endswith("/") else key + "/"
    client = s3_client(opts)
    request: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if not recursive:
        request["Delimiter"] = "/"
    found = False
    while True:
        page = _s3_call(lambda: client.list_objects_v2(**request), what=f"list {uri}", uri=uri)
        for obj in page.get("Contents", ()):
            name = obj["Key"]
            found = True
            if name.endswith("/") or not _wanted(name, exts):
                continue
            yield FileInfo(f"{_S3_PREFIX}{bucket}/{name}", int(obj.get("Size", 0)))
        token = page.get("NextContinuationToken")
        if not page.get("IsTruncated") or not token:
            break
        request["ContinuationToken"] = token
    if not found and key and not key.endswith("/"):
        # Not a prefix: maybe ``uri`` names a single object.
        try:
            n = size(uri, opts)
        except StorageNotFoundError:
            return
        if _wanted(key, exts):
            yield FileInfo(uri, n)


def _iter_local(uri: str, exts: tuple[str, ...] | None, recursive: bool) -> Iterator[FileInfo]:
    root = os.path.abspath(_local_path(uri))
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise StorageNotFoundError(uri, code="ENOENT", attempts=1) from exc
    except OSError as exc:
        raise _local_error("list", uri, exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        if _wanted(root, exts):
            yield FileInfo(root, st.st_size)
        return
    seen = {(st.st_dev, st.st_ino)}  # directory symlinks are followed, cycles skipped
    stack = [root]
    while stack:
        directory = stack.pop()
        found: list[FileInfo] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir():
                            if recursive:
                                dst = entry.stat()
                                if (dst.st_dev, dst.st_ino) not in seen:
                                    seen.add((dst.st_dev, dst.st_ino))
                                    stack.append(entry.path)
                        elif (
                            entry.is_file()
                            and _wanted(entry.name, exts)
                            and not _TMP_RE.match(entry.name)
                        ):
                            found.append(FileInfo(entry.path, entry.stat().st_size))
                    except FileNotFoundError:
                        continue  # deleted while listing
        except OSError as exc:
            raise _local_error("list", directory, exc) from exc
        yield from found


# --------------------------------------------------------------------------------------------
# Objects / files
# --------------------------------------------------------------------------------------------


def _local_error(op: str, uri: str, exc: OSError) -> StorageError:
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return StorageNotFoundError(uri, code=code, attempts=1)
    reason = exc.strerror or str(exc)
    return StorageError(f"{op} {uri} failed: {code}: {reason}", uri=uri, attempts=1, code=code)


def _check_range(byte_range: tuple[int, int] | None) -> tuple[int, int] | None:
    if byte_range is None:
        return None
    start, end = (int(v) for v in byte_range)
    if start < 0 or end < start:
        raise ValueError(f"byte_range must satisfy 0 <= start <= end, got {byte_range}")
    return start, end


def read_bytes(
    uri: PathLike,
    options: StorageOptions | None = None,
    byte_range: tuple[int, int] | None = None,
) -> bytes:
    """The content of a file/object, or of ``byte_range = (start, end)`` of it.

    The range is half-open like a slice: ``read_bytes(u, byte_range=(a, b)) ==
    read_bytes(u)[a:b]`` (also past the end of the object).  S3 reads are retried by botocore
    on transient errors; missing objects raise :class:`StorageNotFoundError` at once.
    """
    rng = _check_range(byte_range)
    text = os.fspath(uri)
    if rng is not None and rng[0] == rng[1]:
        if not exists(text, options):
            raise StorageNotFoundError(text, attempts=1)
        return b""
    if not is_s3(text):
        try:
            with open(_local_path(text), "rb") as f:
                if rng is None:
                    return f.read()
                f.seek(rng[0])
                return f.read(rng[1] - rng[0])
        except OSError as exc:
            raise _local_error("read", text, exc) from exc

    bucket, key = parse_s3(text)
    client = s3_client(options)
    request: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if rng is not None:
        request["Range"] = f"bytes={rng[0]}-{rng[1] - 1}"

    attempts = (options or StorageOptions()).max_attempts

    def get() -> bytes:
        # botocore retries a request, not a body it already handed over: a body cut after
        # the headers (botocore checks its length) is fetched again here, by a new GET,
        # within the same attempt budget. Reads are idempotent, so this is safe.
        for attempt in range(1, attempts + 1):
            try:
                response = client.get_object(**request)
            except ClientError as exc:
                if rng is not None and _client_error_info(exc)[0] in ("InvalidRange", "416"):
                    return b""  # start at/after the end of the object, as a slice would
                raise
            try:
                with contextlib.closing(response["Body"]) as body:
                    return body.read()
            except _BODY_ERRORS as exc:
                if attempt == attempts:
                    raise  # _s3_call records its code
                call = _CURRENT.call
                call.codes.append(type(exc).__name__)
                call.body_cuts += 1
        raise AssertionError("unreachable")

    return _s3_call(get, what=f"read {text}", uri=text)


def _s3_target(text: str) -> tuple[str, str]:
    bucket, key = parse_s3(text)
    if not key or key.endswith("/"):
        raise ValueError(f"cannot write to a bucket or prefix: {redact(text)!r}")
    return bucket, key


def _write_local(text: str, write: Callable[[io.BufferedWriter], object]) -> None:
    """Write through ``write(file)`` to a temporary file beside ``text``, fsync, then
    ``os.replace`` it into place: readers see the old or the new content, never a part."""
    path = os.path.abspath(_local_path(text))
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # honours the umask
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        reason = exc.strerror or str(exc)
        raise StorageError(
            f"write {text} failed: {code}: {reason}", uri=text, attempts=1, code=code
        ) from exc


def write_bytes(
    uri: PathLike, data: bytes | bytearray | memoryview, options: StorageOptions | None = None
) -> None:
    """Store ``data`` at ``uri``, replacing it.

    S3: one ``PutObject`` (retried by botocore).  Local: parent directories are created and
    the data is written to a temporary file in the same directory, fsynced and
    ``os.replace``-d into place, so readers see either the old or the new content.
    """
    text = os.fspath(uri)
    payload = bytes(data) if isinstance(data, memoryview) else data
    if not is_s3(text):
        _write_local(text, lambda f: f.write(payload))
        return
    bucket, key = _s3_target(text)
    client = s3_client(options)
    _s3_call(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=payload),
        what=f"write {text}",
        uri=text,
    )


def upload_file(local_path: PathLike, uri: PathLike, options: StorageOptions | None = None) -> None:
    """Store the local file ``local_path`` at ``uri`` without reading it into memory.

    S3: one ``PutObject`` streamed from the file (up to 5 GiB; botocore rewinds the file
    for a retry).  Local: copied as :func:`write_bytes` writes.
    """
    text = os.fspath(uri)
    if not is_s3(text):

        def copy(f: io.BufferedWriter) -> None:
            with open(local_path, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)

        _write_local(text, copy)
        return
    bucket, key = _s3_target(text)
    client = s3_client(options)

    def put() -> None:
        with open(local_path, "rb") as src:
            client.put_object(Bucket=bucket, Key=key, Body=src)

    _s3_call(put, what=f"write {text}", uri=text)


def _head(uri: str, options: StorageOptions | None) -> dict[str, Any]:
    bucket, key = parse_s3(uri)
    client = s3_client(options)
    return _s3_call(lambda: client.head_object(Bucket=bucket, Key=key), what=f"stat {uri}", uri=uri)


def exists(uri: PathLike, options: StorageOptions | None = None) -> bool:
    """Whether a file/directory (local) or an object, non-empty prefix or bucket (S3) exists.

    Errors other than "not found" (e.g. AccessDenied) raise :class:`StorageError`.
    """
    text = os.fspath(uri)
    if not is_s3(text):
        return os.path.exists(_local_path(text))
    bucket, key = parse_s3(text)
    client = s3_client(options)
    if key:
        try:
            _head(text, options)
            return True
        except StorageNotFoundError:
            pass
        request = {"Bucket": bucket, "Prefix": key.rstrip("/") + "/", "MaxKeys": 1}
    else:
        request = {"Bucket": bucket, "MaxKeys": 1}
    try:
        page = _s3_call(lambda: client.list_objects_v2(**request), what=f"stat {text}", uri=text)
    except StorageNotFoundError:  # NoSuchBucket
        return False
    return not key or bool(page.get("KeyCount") or page.get("Contents"))


def size(uri: PathLike, options: StorageOptions | None = None) -> int:
    """Size in bytes of a file/object; :class:`StorageNotFoundError` if missing."""
    text = os.fspath(uri)
    if not is_s3(text):
        try:
            st = os.stat(_local_path(text))
        except OSError as exc:
            raise _local_error("stat", text, exc) from exc
        if stat.S_ISDIR(st.st_mode):
            raise StorageError(f"stat {text}: is a directory", uri=text, attempts=1, code="EISDIR")
        return st.st_size
    return int(_head(text, options)["ContentLength"])


_size_of = size  # `RangedReader.__init__` has a parameter of that name


class RangedReader(io.RawIOBase):
    """A seekable, read-only file over an object (or a local file), fetched in blocks.

    Each block of ``block_bytes`` is one ranged GET through :func:`read_bytes` (retried
    by botocore on transient errors, counted in :data:`RETRY_STATS`); the last ``cache_blocks``
    blocks are kept, so memory stays at ``block_bytes * cache_blocks`` whatever the
    object's size. Hand it to PyAV (``rayssl.io.video.open_container``): a decoder
    seeking to a keyframe fetches only the blocks it reads. ``bytes_fetched`` and
    ``requests`` count what was transferred.

    ``size``: the object's size when known (a manifest's ``size_bytes``); else one HEAD.
    """

    def __init__(
        self,
        uri: PathLike,
        options: StorageOptions | None = None,
        *,
        size: int | None = None,
        block_bytes: int = 1 << 20,
        cache_blocks: int = 4,
    ) -> None:
        super().__init__()
        if block_bytes < 1 or cache_blocks < 1:
            raise ValueError("block_bytes and cache_blocks must be >= 1")
        self.uri = os.fspath(uri)
        self.options = options
        self._size = int(size) if size is not None and size >= 0 else _size_of(self.uri, options)
        self.block_bytes = int(block_bytes)
        self.cache_blocks = int(cache_blocks)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        self.bytes_fetched = 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = pos
        return pos

    def _block(self, index: int) -> bytes:
        block = self._cache.get(index)
        if block is not None:
            self._cache.move_to_end(index)
            return block
        start = index * self.block_bytes
        end = min(start + self.block_bytes, self._size)
        block = read_bytes(self.uri, self.options, byte_range=(start, end))
        self.requests += 1
        self.bytes_fetched += len(block)
        self._cache[index] = block
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return block

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(self._size - self._pos, 0))
        done = 0
        while done < want:
            index, offset = divmod(self._pos, self.block_bytes)
            block = self._block(index)
            chunk = block[offset : offset + want - done]
            if not chunk:  # the object shrank under us: end of file
                break
            view[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done
