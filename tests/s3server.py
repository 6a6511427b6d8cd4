"""Real S3 servers on loopback for tests: moto, a fault-injecting proxy, and helpers.

Everything listens on a real 127.0.0.1 port, so other processes (Ray workers, subprocesses,
pyarrow's AWS SDK) can reach it.  Nothing here changes global state except :func:`s3_env`,
which sets and then restores AWS environment variables.

Typical use::

    with moto_s3_server() as endpoint, s3_env(endpoint):
        make_bucket(endpoint, "videos")
        upload_dir(endpoint, "tests/assets", "videos", "raw")
        with flaky_s3_proxy(endpoint, fail_first=2) as (proxy, stats):
            read_bytes("s3://videos/raw/a.mp4", StorageOptions(endpoint_url=proxy))
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

import boto3
import botocore.config
import botocore.exceptions

FAKE_ACCESS_KEY_ID = "testing-AKIA-FAKE"
FAKE_SECRET_ACCESS_KEY = "SECRETfake-do-not-log-123456"
FAKE_REGION = "us-east-1"

# Runs in a child interpreter: start moto on an ephemeral port, report the port, then serve
# until stdin closes (the parent exited the context manager -- or died).
_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address=sys.argv[1], port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@contextmanager
def moto_s3_server(
    *, host: str = "127.0.0.1", in_process: bool = False, startup_timeout_s: float = 60.0
) -> Iterator[str]:
    """Run a moto S3 server on a free loopback port and yield ``"http://127.0.0.1:PORT"``.

    By default the server runs in a child interpreter: its state is private (a fresh, empty
    server each time), it does not compete with the test for the GIL, and it stops when the
    context exits or the test process dies.  ``in_process=True`` uses a
    ``ThreadedMotoServer`` thread instead (slightly faster to start; note that all in-process
    moto servers and ``moto.mock_aws`` share one global backend).  Moto does not check
    signatures, so any credentials work.
    """
    if in_process:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address=host, port=0, verbose=False)
        server.start()
        try:
            yield f"http://{host}:{server.get_host_and_port()[1]}"
        finally:
            server.stop()
        return

    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug logs every request there
        text=True,
    )
    try:
        port = _read_port(proc, startup_timeout_s)
        endpoint = f"http://{host}:{port}"
        _wait_http(endpoint, deadline=time.monotonic() + startup_timeout_s)
        yield endpoint
    finally:
        _stop_child(proc)


def _read_port(proc: subprocess.Popen, timeout_s: float) -> int:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise RuntimeError(f"moto server did not start within {timeout_s}s")
    line = proc.stdout.readline().strip()
    if not line.isdigit():
        raise RuntimeError(f"moto server failed to start (exit code {proc.poll()}): {line!r}")
    return int(line)


def _wait_http(endpoint: str, deadline: float) -> None:
    parts = urlsplit(endpoint)
    while True:
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", "/moto-api/data.json")
            conn.getresponse().read()
            conn.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _stop_child(proc: subprocess.Popen) -> None:
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.terminate()  # nothing to flush: moto keeps its state in memory
        proc.wait(timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


@contextmanager
def s3_env(endpoint: str) -> Iterator[dict[str, str]]:
    """Point the standard AWS environment at ``endpoint`` with fake credentials.

    Sets ``AWS_ENDPOINT_URL_S3``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_REGION`` and ``AWS_EC2_METADATA_DISABLED``; isolates from the developer's own AWS
    setup (no profile, session token or generic endpoint; config/credential files set to
    ``os.devnull``).  Restores the previous environment on exit and clears the storage
    module's client caches on entry and exit.  Yields the variables that were set.  Ray
    started inside the block inherits them.
    """
    from rayssl.io import storage

    values = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": FAKE_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET_ACCESS_KEY,
        "AWS_REGION": FAKE_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    removed = ("AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE")
    saved = {name: os.environ.get(name) for name in (*values, *removed)}
    os.environ.update(values)
    for name in removed:
        os.environ.pop(name, None)
    storage.clear_caches()
    try:
        yield dict(values)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        storage.clear_caches()


# --------------------------------------------------------------------------------------------
# Fault-injecting reverse proxy
# --------------------------------------------------------------------------------------------

_ERROR_CODES = {
    400: "BadRequest",
    403: "AccessDenied",
    404: "NoSuchKey",
    429: "SlowDown",
    500: "InternalError",
    502: "BadGateway",
    503: "SlowDown",
    504: "GatewayTimeout",
}
_HOP_BY_HOP = frozenset(  # headers that describe one connection, not the message
    ["connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te"]
    + ["trailer", "trailers", "transfer-encoding", "upgrade", "expect"]
)


@dataclass
class ProxyStats:
    """What a :func:`flaky_s3_proxy` did.  Counters are updated under ``lock``.

    ``requests_seen``: all requests received; ``matched``: requests matching the failure
    filter; ``failures_served``: injected failures; ``forwarded``: requests passed upstream;
    ``log``: ``(method, path, status)`` per request (status 0 = connection dropped, -1 = body
    cut).
    ``fail_remaining`` can be changed (under ``lock``, or with :meth:`fail_next`) to inject
    more failures.
    """

    fail_remaining: int
    status: int
    fail_keys: str | None
    methods: frozenset[str] | None
    requests_seen: int = 0
    matched: int = 0
    failures_served: int = 0
    forwarded: int = 0
    log: list[tuple[str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def fail_next(self, count: int, status: int | None = None) -> None:
        """Fail the next ``count`` matching requests (with ``status`` if given)."""
        with self.lock:
            self.fail_remaining = count
            if status is not None:
                self.status = status

    def _decide(self, method: str, path: str) -> int | None:
        """Count the request; return the status to inject, or None to forward."""
        key_path = unquote(path.split("?", 1)[0])
        with self.lock:
            self.requests_seen += 1
            if self.methods is not None and method not in self.methods:
                return None
            if self.fail_keys is not None and self.fail_keys not in key_path:
                return None
            self.matched += 1
            if self.fail_remaining <= 0:
                return None
            self.fail_remaining -= 1
            self.failures_served += 1
            return self.status

    def _log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: tuple[str, int], stats: ProxyStats) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.stats = stats
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()

    def close_client_sockets(self) -> None:
        with self.sockets_lock:
            sockets = list(self.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a real S3 endpoint
    server: _ProxyServer

    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.sockets_lock:
                self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        body = self._read_body()
        stats = self.server.stats
        inject = stats._decide(self.command, self.path)
        if inject == -1:  # forward, but cut the response body in half
            with stats.lock:
                stats.forwarded += 1
            self._forward(body, cut=True)
        elif inject is not None:
            self._inject(inject)
        else:
            with stats.lock:
                stats.forwarded += 1
            self._forward(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    def _inject(self, status: int) -> None:
        if status == 0:  # drop the connection without answering
            self.server.stats._log(self.command, self.path, status)
            self.close_connection = True
            return
        self._error_response(status)

    def _error_response(self, status: int) -> None:
        self.server.stats._log(self.command, self.path, status)
        code = _ERROR_CODES.get(status, "InternalError")
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>Injected failure (HTTP {status})</Message>"
            f"<Resource>{escape(self.path.split('?', 1)[0])}</Resource>"
            "<RequestId>flaky-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "flaky-proxy")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self, body: bytes, cut: bool = False) -> None:
        host, port = self.server.upstream
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # Host (and so the SigV4 signature input) stays the client's; moto does not verify it.
        if body or self.command in ("PUT", "POST"):
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(host, port, timeout=60)
        try:
            try:
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
            except (OSError, http.client.HTTPException):
                self._error_response(502)  # upstream down: answer like a load balancer would
                return
            self.send_response_only(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            length = response.getheader("Content-Length")
            no_body = self.command == "HEAD" or response.status in (204, 304)
            if length is None and not no_body:
                # Unknown length: stream until EOF and close, the HTTP/1.0 way.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            # logged before the body goes out: a client that has read the whole answer
            # finds its entry in the log (logging after the write raced the client)
            self.server.stats._log(self.command, self.path, -1 if cut else response.status)
            if cut:
                self.wfile.write(response.read()[: int(length or 0) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            if not no_body:
                while chunk := response.read(64 * 1024):
                    self.wfile.write(chunk)
        finally:
            upstream.close()


@contextmanager
def flaky_s3_proxy(
    upstream_endpoint: str,
    fail_first: int = 2,
    status: int = 503,
    fail_keys: str | None = None,
    methods: Collection[str] | None = None,
) -> Iterator[tuple[str, ProxyStats]]:
    """A loopback HTTP reverse proxy to ``upstream_endpoint`` that injects failures.

    The first ``fail_first`` matching requests are answered with ``status`` and an S3-style
    XML error (``<Code>SlowDown</Code>`` for 503/429, ``InternalError`` for 500, ...);
    ``status=0`` drops the connection instead, ``status=-1`` forwards the request but cuts the
    response body in half (headers intact) and closes the connection.  A request matches if
    its path contains ``fail_keys`` (when given) and its method is in ``methods`` (default:
    ``GET`` when ``fail_keys`` is given, otherwise any method).  Other requests are forwarded
    verbatim (method, path, headers, body; responses streamed back with their Content-Length
    / Content-Range).  Yields ``(endpoint_url, stats)``.
    """
    parts = urlsplit(upstream_endpoint)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"upstream endpoint needs host and port: {upstream_endpoint!r}")
    if methods is None:
        methods = {"GET"} if fail_keys is not None else None
    stats = ProxyStats(
        fail_remaining=fail_first,
        status=status,
        fail_keys=fail_keys,
        methods=frozenset(m.upper() for m in methods) if methods is not None else None,
    )
    server = _ProxyServer((parts.hostname, parts.port), stats)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.02,), name="flaky-s3-proxy", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.close_client_sockets()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------------------------
# boto3 helpers
# --------------------------------------------------------------------------------------------


def boto3_client(endpoint: str) -> Any:
    """A plain boto3 S3 client for ``endpoint`` (cached), with the env's credentials if it has
    some, else the fake ones (moto accepts anything)."""
    return _boto3_client(
        endpoint,
        os.environ.get("AWS_ACCESS_KEY_ID") or FAKE_ACCESS_KEY_ID,
        os.environ.get("AWS_SECRET_ACCESS_KEY") or FAKE_SECRET_ACCESS_KEY,
        os.environ.get("AWS_REGION") or FAKE_REGION,
    )


@functools.lru_cache(maxsize=16)
def _boto3_client(endpoint: str, key_id: str, secret: str, region: str) -> Any:
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=botocore.config.Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )


def make_bucket(endpoint: str, name: str) -> str:
    """Create bucket ``name`` (no error if it already exists); returns ``"s3://name"``."""
    try:
        boto3_client(endpoint).create_bucket(Bucket=name)
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
            raise
    return f"s3://{name}"


def upload_dir(
    endpoint: str, local_dir: str | os.PathLike, bucket: str, prefix: str = ""
) -> list[str]:
    """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``.

    Returns the sorted ``s3://`` URIs uploaded.
    """
    client = boto3_client(endpoint)
    root = os.fspath(local_dir)
    prefix = prefix.strip("/")
    jobs: list[tuple[str, str]] = []
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            jobs.append((path, f"{prefix}/{rel}" if prefix else rel))

    def upload(job: tuple[str, str]) -> str:
        path, key = job
        with open(path, "rb") as f:
            client.put_object(Bucket=bucket, Key=key, Body=f.read())
        return f"s3://{bucket}/{key}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sorted(pool.map(upload, jobs))


def put_objects(endpoint: str, bucket: str, objects: dict[str, bytes]) -> list[str]:
    """Upload ``{key: data}`` in parallel; returns the sorted ``s3://`` URIs."""
    client = boto3_client(endpoint)

    def put(item: tuple[str, bytes]) -> str:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])
        return f"s3://{bucket}/{item[0]}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sorted(pool.map(put, objects.items()))
