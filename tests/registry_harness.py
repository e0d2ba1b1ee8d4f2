"""Drive the reference registry (`docker-registry` 2.8) over HTTP and model the storage it leaves behind.

What Debian's 2.8.2 does, as observed (the ledger below encodes it):

- Every kind built here is accepted: Docker schema2 image and manifest list,
  OCI image manifest and index (with or without the optional `mediaType`
  field, as long as the request's Content-Type names the kind), and OCI 1.1
  artifacts (`artifactType`, empty config `application/vnd.oci.empty.v1+json`,
  `subject`). Unknown fields are kept: the stored blob is the request body.
- A manifest PUT requires its config and layers to be linked into the same
  repository (`_layers`) and its children to be revisions of the same
  repository; it does not check `subject`, so a referrer may be pushed before
  its subject or without it. An index whose entry names a layer blob linked
  in the repository is accepted (the child check falls back to `_layers`).
- A request body must match its Content-Type: an OCI manifest sent as
  `application/json`, or a Docker list sent as an OCI index, is rejected
  (`MANIFEST_INVALID`); so is schema1 without its JWS signature.
- A manifest PUT writes the manifest blob and a revision link, never a
  `_layers` link (neither for the manifest nor for the blobs it references).
  A blob upload or a cross-repository mount writes a `_layers` link.
- Tagging writes `tags/<tag>/index/...` and `current/link`; an overwritten tag
  keeps every earlier target in its history.
- DELETE of a manifest by digest removes its revision link (the directory
  stays) and every tag of that repository whose `current` names it; history
  entries of other tags remain; no blob is ever removed.
- There is no API to delete a tag alone.
- An upload that is started and never finished stays as
  `_uploads/<uuid>/{data,startedat,hashstates/sha256/<offset>}`; a mount
  from a repository lacking the blob silently starts such an upload instead.
- `garbage-collect --delete-untagged` aborts ("failed to retrieve tags
  unknown repository") on a repository with a revision but no `tags`
  directory; a repository with only `_layers` is fine.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.facts import Facts, canonical

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
COSIGN_SIGNATURE = "application/vnd.dev.cosign.artifact.sig.v1+json"
COSIGN_SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SPDX_SBOM = "application/spdx+json"

MANIFEST_ACCEPT: tuple[str, ...] = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)

REQUIRE_ENV = "STORAGE_AUDIT_REQUIRE_REGISTRY"


class RegistryError(RuntimeError):
    """The registry did not start, or answered a request other than the API says."""


# --------------------------------------------------------------------------
# Locating and configuring the binary


def registry_binary() -> str | None:
    """Path of the `docker-registry` binary, or None when it is not installed."""
    found = shutil.which("docker-registry")
    if found:
        return found
    fallback = Path("/usr/bin/docker-registry")
    return str(fallback) if fallback.is_file() else None


def required(binary: str | None, missing: str) -> str:
    """`binary`'s path, or skip the calling test saying what is `missing` (fail it when the environment requires it)."""
    if binary is not None:
        return binary
    import pytest

    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{missing} and {REQUIRE_ENV}=1")
    pytest.skip(missing)
    raise AssertionError("unreachable")  # pytest.skip raises; this keeps type checkers content


def require_registry() -> str:
    """Return the binary's path, or skip the calling test (fail it when the environment requires one)."""
    return required(registry_binary(), "docker-registry (distribution 2.8) is not installed")


def read_log(path: Callable[[], Path]) -> str:
    """The text of a server's log, or "" before it started (its path then asserts) or when it cannot be read."""
    try:
        return path().read_text(encoding="utf-8", errors="replace")
    except (AssertionError, OSError):
        return ""


def terminate(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """Stop a server by its process id: SIGTERM, then SIGKILL when it has not ended within `grace` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(
    root: Path,
    port: int,
    *,
    log_level: str = "warn",
    schema1: bool = False,
    storage: Sequence[str] | None = None,
    auth: Sequence[str] | None = None,
    delete: bool = True,
    tls: tuple[Path, Path] | None = None,
) -> str:
    """YAML configuration for a registry storing under `root` and serving on 127.0.0.1:`port`.

    `storage` replaces the `filesystem` driver block with other driver lines
    (indented under `storage:`), and then `root` is not used. `auth` is the
    lines of an `auth:` block (indented under it: `htpasswd_auth`, `token_auth`);
    `delete=False` leaves `storage.delete.enabled` off, as the registry ships;
    `tls` is (certificate, key) in PEM files, for HTTPS.
    """
    q = json.dumps  # a JSON string is a valid YAML scalar, whatever the path holds
    lines = [
        "version: 0.1",
        "log:",
        f"  level: {log_level}",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        *(storage if storage is not None else ["  filesystem:", f"    rootdirectory: {q(str(root.resolve()))}"]),
        "  delete:",
        f"    enabled: {'true' if delete else 'false'}",
        "  cache:",
        "    blobdescriptor: inmemory",
        # The purger would eventually remove the abandoned uploads fixtures keep.
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: {q(f'127.0.0.1:{port}')}",
        f"  secret: {q(os.urandom(16).hex())}",
    ]
    if tls is not None:
        lines += ["  tls:", f"    certificate: {q(str(tls[0]))}", f"    key: {q(str(tls[1]))}"]
    if schema1:
        lines += ["compatibility:", "  schema1:", "    enabled: true"]
    if auth is not None:
        lines += ["auth:", *auth]
    return "\n".join(lines) + "\n"


def htpasswd_auth(path: Path, users: Mapping[str, str]) -> list[str]:
    """Write an htpasswd file of `users` (bcrypt, the only hash the registry takes) and return its `auth:` lines."""
    import bcrypt

    lines = [f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=5)).decode()}" for user, pw in users.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    q = json.dumps
    return ["  htpasswd:", "    realm: storage-audit-tests", f"    path: {q(str(path))}"]


def token_auth(realm: str, service: str, issuer: str, rootcertbundle: Path) -> list[str]:
    """The `auth:` lines of token authentication: tokens from `realm`, signed by a key `rootcertbundle` certifies."""
    q = json.dumps
    return [
        "  token:",
        f"    realm: {q(realm)}",
        f"    service: {q(service)}",
        f"    issuer: {q(issuer)}",
        f"    rootcertbundle: {q(str(rootcertbundle))}",
    ]


def garbage_collect(
    root: Path | str,
    dry_run: bool = True,
    delete_untagged: bool = False,
    *,
    binary: str | None = None,
    check: bool = True,
    storage: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run `docker-registry garbage-collect` on the storage under `root` and return its stdout.

    The registry must not be serving `root` while this deletes; a dry run is safe.
    `storage` and `env` are as for `Registry` (another driver, the process's environment).
    """
    binary = binary or registry_binary()
    if binary is None:
        raise RegistryError("docker-registry is not installed")
    with tempfile.TemporaryDirectory(prefix="registry-gc-") as tmp:
        config = Path(tmp) / "config.yml"
        config.write_text(config_text(Path(root), free_port(), storage=storage), encoding="utf-8")
        args = [binary, "garbage-collect"]
        if dry_run:
            args.append("--dry-run")
        if delete_untagged:
            args.append("--delete-untagged")
        args.append(str(config))
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=300, env=dict(env) if env is not None else None
        )
    if check and proc.returncode != 0:
        raise RegistryError(f"garbage-collect exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc.stdout


_GC_MARK = re.compile(r"^(?P<repo>\S+): marking (?P<what>manifest|blob) (?P<digest>\S+)\s*$")
_GC_ELIGIBLE_MANIFEST = re.compile(r"^manifest eligible for deletion: (?P<rest>.+?)\s*$")
_GC_ELIGIBLE_BLOB = re.compile(r"^blob eligible for deletion: (?P<digest>\S+)\s*$")
_GC_V3_MANIFEST = re.compile(r"^\{(?P<repo>\S+) (?P<digest>[a-z0-9]+:[0-9a-f]+)(?: \[[^\]]*\])?\}$")


def parse_gc_output(
    text: str,
) -> tuple[set[tuple[str, str]], set[str], set[str]]:
    """Parse `garbage-collect --dry-run` stdout: (eligible (repo, manifest)s, eligible blobs, marked blobs).

    2.8 prints, per repository in the order it walks them::

        team/app
        team/app: marking manifest sha256:<hex>␠    (each linked revision; under -m each tagged one)
        team/app: marking blob sha256:<hex>         (its config, layers, index children)
        manifest eligible for deletion: sha256:<hex>   (-m only; repository: the header above)

    then a blank line, `N blobs marked, N blobs and N manifests eligible for
    deletion`, and `blob eligible for deletion: sha256:<hex>` lines in random
    order. v3 prints eligible manifests as `{<repo> <digest> [<tags>]}`,
    which is understood as well. A marked manifest counts as a marked blob.
    """
    eligible_manifests: set[tuple[str, str]] = set()
    eligible_blobs: set[str] = set()
    marked_blobs: set[str] = set()
    current_repo = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if m := _GC_MARK.match(line):
            marked_blobs.add(m["digest"])
            current_repo = m["repo"]
        elif m := _GC_ELIGIBLE_MANIFEST.match(line):
            rest = m["rest"]
            if s := _GC_V3_MANIFEST.match(rest):
                eligible_manifests.add((s["repo"], s["digest"]))
            else:
                eligible_manifests.add((current_repo, rest.split()[0]))
        elif m := _GC_ELIGIBLE_BLOB.match(line):
            eligible_blobs.add(m["digest"])
        elif " " not in line and ":" not in line:
            current_repo = line
    return eligible_manifests, eligible_blobs, marked_blobs


# --------------------------------------------------------------------------
# Content


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no whitespace."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


@dataclass(frozen=True)
class Pushed:
    """A manifest as built (and usually pushed): its bytes, media type and digest."""

    body: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.body)

    @property
    def size(self) -> int:
        return len(self.body)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


def platform(os_arch: str) -> dict[str, str]:
    """`linux/arm64/v8` -> {"os": "linux", "architecture": "arm64", "variant": "v8"}."""
    parts = os_arch.split("/")
    out = {"os": parts[0], "architecture": parts[1]}
    if len(parts) > 2:
        out["variant"] = parts[2]
    return out


# --------------------------------------------------------------------------
# Manifest semantics shared by the ledger


@dataclass(frozen=True)
class ManifestInfo:
    """What a manifest's bytes say: kind, media type, artifact type, subject, references."""

    kind: str
    media_type: str
    artifact_type: str | None
    subject: str | None
    references: tuple[tuple[str, str, str | None], ...]  # (ref_type, digest, platform)


def _platform_text(p: Mapping[str, Any] | None) -> str | None:
    if not p:
        return None
    parts = [p.get("os", ""), p.get("architecture", "")]
    if p.get("variant"):
        parts.append(p["variant"])
    return "/".join(parts)


def describe_manifest(body: bytes) -> ManifestInfo:
    """Classify a manifest the way the facts format does."""
    doc = json.loads(body)
    refs: list[tuple[str, str, str | None]] = []
    if doc.get("schemaVersion") == 1:
        for layer in doc.get("fsLayers", []):
            refs.append(("fslayer", layer["blobSum"], None))
        media = SCHEMA1_SIGNED if "signatures" in doc else SCHEMA1
        return ManifestInfo("schema1", media, None, None, tuple(refs))
    media_type = doc.get("mediaType")
    subject = (doc.get("subject") or {}).get("digest")
    artifact_type = doc.get("artifactType")
    if "manifests" in doc and media_type in (None, OCI_INDEX, DOCKER_LIST):
        for child in doc["manifests"]:
            refs.append(("child", child["digest"], _platform_text(child.get("platform"))))
        if subject:
            refs.append(("subject", subject, None))
        if media_type == DOCKER_LIST:
            return ManifestInfo("docker-list", DOCKER_LIST, None, None, tuple(refs))
        return ManifestInfo("oci-index", OCI_INDEX, artifact_type, subject, tuple(refs))
    if "config" in doc:
        refs.append(("config", doc["config"]["digest"], None))
    for layer in doc.get("layers", []):
        refs.append(("layer", layer["digest"], None))
    if subject:
        refs.append(("subject", subject, None))
    if media_type == DOCKER_MANIFEST:
        return ManifestInfo("docker-v2", DOCKER_MANIFEST, None, None, tuple(refs))
    kind = "oci-artifact" if artifact_type or subject else "oci-manifest"
    return ManifestInfo(kind, OCI_MANIFEST, artifact_type, subject, tuple(refs))


# --------------------------------------------------------------------------
# The ledger: every API call that changes storage, in order


@dataclass(frozen=True)
class BlobPush:
    repository: str
    digest: str
    size: int
    mounted_from: str | None = None


@dataclass(frozen=True)
class ManifestPut:
    repository: str
    reference: str  # a tag, or the digest itself
    digest: str
    body: bytes
    media_type: str


@dataclass(frozen=True)
class ManifestDelete:
    repository: str
    digest: str


@dataclass(frozen=True)
class UploadStart:
    repository: str
    id: str
    bytes: int


Event = BlobPush | ManifestPut | ManifestDelete | UploadStart


@dataclass
class Ledger:
    """Everything pushed through the API, in order, and the storage it must produce."""

    events: list[Event] = field(default_factory=list)

    def record(self, event: Event) -> None:
        self.events.append(event)

    # Convenience views for tests that want to know what went in.

    def tag_history(self, repository: str, tag: str) -> list[str]:
        """Digests `tag` was pushed with, in push order (repeats in a row collapsed, deletes ignored)."""
        out: list[str] = []
        for e in self.events:
            if (
                isinstance(e, ManifestPut)
                and (e.repository, e.reference) == (repository, tag)
                and (not out or out[-1] != e.digest)
            ):
                out.append(e.digest)
        return out

    def manifests(self) -> dict[str, ManifestInfo]:
        return {e.digest: describe_manifest(e.body) for e in self.events if isinstance(e, ManifestPut)}

    def expected_facts(self) -> Facts:
        """Replay the events with the registry's storage rules; the disk is not read."""
        repositories: set[str] = set()
        blobs: dict[str, int] = {}
        layer_links: set[tuple[str, str]] = set()
        revisions: dict[tuple[str, str], bool] = {}
        current: dict[tuple[str, str], str] = {}
        history: dict[tuple[str, str], set[str]] = {}
        uploads: list[UploadStart] = []
        bodies: dict[str, bytes] = {}

        for e in self.events:
            if isinstance(e, BlobPush):
                repositories.add(e.repository)
                blobs[e.digest] = e.size
                layer_links.add((e.repository, e.digest))
            elif isinstance(e, ManifestPut):
                # The manifest is a blob with a revision link, and no `_layers` link of its own.
                repositories.add(e.repository)
                blobs[e.digest] = len(e.body)
                bodies[e.digest] = e.body
                revisions[(e.repository, e.digest)] = True
                if e.reference != e.digest:
                    key = (e.repository, e.reference)
                    history.setdefault(key, set()).add(e.digest)
                    current[key] = e.digest
            elif isinstance(e, ManifestDelete):
                # Only the link goes; the revision directory and every blob stay.
                revisions[(e.repository, e.digest)] = False
                for key in [k for k, d in current.items() if k[0] == e.repository and d == e.digest]:
                    del current[key]
                    del history[key]
            else:
                uploads.append(e)

        # What the links name (revision links, tags' current and history), then what the lists among
        # those name, recursively: a deleted revision's blob stays, but its empty directory (gone on S3,
        # or after a copy) names nothing, unless an index still lists that manifest.
        named = {d for (_, d), linked in revisions.items() if linked}
        named |= set(current.values()) | {d for ds in history.values() for d in ds}
        todo = sorted(named)
        while todo:
            info = describe_manifest(bodies[todo.pop()])
            for ref_type, digest, _ in info.references:
                if ref_type == "child" and digest in bodies and digest not in named:
                    named.add(digest)
                    todo.append(digest)
        manifests = []
        references = []
        for digest in sorted(named):
            info = describe_manifest(bodies[digest])
            manifests.append(
                {
                    "digest": digest,
                    "kind": info.kind,
                    "media_type": info.media_type,
                    "artifact_type": info.artifact_type,
                    "subject": info.subject,
                    "size": len(bodies[digest]),
                }
            )
            references += [
                {"manifest": digest, "ref_type": t, "digest": d, "platform": p} for t, d, p in info.references
            ]
        return canonical(
            {
                "repositories": sorted(repositories),
                "tags": [{"repository": r, "tag": t, "digest": d} for (r, t), d in current.items()],
                "tag_history": [{"repository": r, "tag": t, "digest": d} for (r, t), ds in history.items() for d in ds],
                "revisions": [{"repository": r, "digest": d, "linked": linked} for (r, d), linked in revisions.items()],
                "manifests": manifests,
                "references": references,
                "layer_links": [{"repository": r, "digest": d} for r, d in layer_links],
                "blobs": [{"digest": d, "size": s} for d, s in blobs.items()],
                "uploads": [{"repository": u.repository, "id": u.id, "bytes": u.bytes} for u in uploads],
            }
        )


# --------------------------------------------------------------------------
# The HTTP client


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Login:
    """A user's credentials, answering the registry's challenge as Docker does: basic credentials, or a bearer token
    for the challenged scope fetched from the challenge's realm (kept per scope)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.tokens: dict[str, str] = {}

    def basic(self) -> str:
        import base64

        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()

    def answer(self, challenge: str, renew: bool = False) -> str:
        """The Authorization header that answers `challenge` (a WWW-Authenticate value)."""
        scheme, _, rest = challenge.partition(" ")
        if scheme.lower() == "basic":
            return self.basic()
        fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        scope = fields.get("scope", "")
        if renew or scope not in self.tokens:
            query = urllib.parse.urlencode(
                {k: v for k, v in (("service", fields.get("service")), ("scope", scope)) if v}
            )
            url = urllib.parse.urlsplit(fields["realm"] + "?" + query)
            conn = http.client.HTTPConnection(url.hostname or "", url.port or 80, timeout=30)
            try:
                conn.request("GET", f"{url.path}?{url.query}", headers={"Authorization": self.basic()})
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                raise RegistryError(f"token endpoint: HTTP {resp.status}")
            self.tokens[scope] = json.loads(body)["token"]
        return f"Bearer {self.tokens[scope]}"


class Client:
    """A client of the distribution HTTP API acting as Docker and OCI tools do, recording into a ledger; with a
    `login`, it answers the registry's authentication challenges."""

    def __init__(
        self, host: str, port: int, ledger: Ledger | None = None, login: Login | None = None, https: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.ledger = ledger if ledger is not None else Ledger()
        self.login = login
        self.https = https

    @property
    def base_url(self) -> str:
        return f"{'https' if self.https else 'http'}://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send one request; `target` is a path or an absolute URL on this registry. A 401 is answered once, with the
        login's credentials."""
        resp = self._request(method, target, body, headers)
        if resp.status == 401 and self.login is not None:
            authorization = self.login.answer(resp.headers.get("www-authenticate", ""))
            resp = self._request(method, target, body, {**(headers or {}), "Authorization": authorization})
        return resp

    def _request(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None) -> Response:
        url = urllib.parse.urljoin(self.base_url + "/", target)
        parts = urllib.parse.urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        host, port = parts.hostname or self.host, parts.port or self.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            import ssl

            # The tests' own self-signed certificate: what the tool under test verifies, the harness need not.
            conn = http.client.HTTPSConnection(host, port, timeout=30, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def _expect(self, resp: Response, status: int, what: str) -> Response:
        if resp.status != status:
            raise RegistryError(f"{what}: expected HTTP {status}, got {resp.status}: {resp.body[:500]!r}")
        return resp

    @staticmethod
    def _with_query(location: str, **params: str) -> str:
        sep = "&" if "?" in location else "?"
        return location + sep + urllib.parse.urlencode(params)

    # Blobs

    def _start(self, repo: str) -> Response:
        return self._expect(
            self.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"}),
            202,
            f"start upload to {repo}",
        )

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` monolithically (POST, then PUT with the digest) and return its digest."""
        digest = sha256(data)
        location = self._start(repo).headers["location"]
        resp = self._expect(
            self.request(
                "PUT",
                self._with_query(location, digest=digest),
                body=data,
                headers={"Content-Type": "application/octet-stream"},
            ),
            201,
            f"put blob {digest} to {repo}",
        )
        if resp.headers.get("docker-content-digest") != digest:
            raise RegistryError(f"registry stored {resp.headers.get('docker-content-digest')} for {digest}")
        self.ledger.record(BlobPush(repo, digest, len(data)))
        return digest

    def mount_blob(self, repo: str, digest: str, from_repo: str) -> None:
        """Link a blob of `from_repo` into `repo` without sending it (cross-repository mount)."""
        query = urllib.parse.urlencode({"mount": digest, "from": from_repo})
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/?{query}", headers={"Content-Length": "0"})
        if resp.status == 202:
            # The registry fell back to a fresh upload, which would stay behind if left.
            self.request("DELETE", resp.headers["location"])
        self._expect(resp, 201, f"mount {digest} from {from_repo} into {repo}")
        size = self.head_blob(repo, digest)
        assert size is not None
        self.ledger.record(BlobPush(repo, digest, size, mounted_from=from_repo))

    def start_upload(self, repo: str, partial: bytes) -> str:
        """Start an upload, send `partial` with PATCH and never finish it; return the upload's UUID."""
        start = self._start(repo)
        uuid = start.headers["docker-upload-uuid"]
        resp = self._expect(
            self.request(
                "PATCH",
                start.headers["location"],
                body=partial,
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"0-{max(len(partial) - 1, 0)}",
                },
            ),
            202,
            f"patch upload {uuid} in {repo}",
        )
        assert resp.headers.get("docker-upload-uuid") == uuid
        self.ledger.record(UploadStart(repo, uuid, len(partial)))
        return uuid

    def head_blob(self, repo: str, digest: str) -> int | None:
        """Size of the blob as `repo` serves it, or None when `repo` does not have it."""
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        if resp.status == 404:
            return None
        self._expect(resp, 200, f"head blob {digest} in {repo}")
        return int(resp.headers["content-length"])

    def get_blob(self, repo: str, digest: str) -> bytes:
        resp = self._expect(self.request("GET", f"/v2/{repo}/blobs/{digest}"), 200, f"get blob {digest} from {repo}")
        return resp.body

    # Manifests

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or its digest and return the digest the registry reports."""
        resp = self._expect(
            self.request("PUT", f"/v2/{repo}/manifests/{reference}", body=body, headers={"Content-Type": media_type}),
            201,
            f"put manifest {reference} to {repo}",
        )
        digest = resp.headers.get("docker-content-digest", "")
        if digest != sha256(body):
            raise RegistryError(f"registry reported {digest!r} for a manifest of {sha256(body)}")
        self.ledger.record(ManifestPut(repo, reference, digest, body, media_type))
        return digest

    def get_manifest(
        self, repo: str, reference: str, accept: Sequence[str] = MANIFEST_ACCEPT
    ) -> tuple[bytes, str, str]:
        """Return (body, Content-Type, Docker-Content-Digest) of a manifest by tag or digest."""
        resp = self._expect(
            self.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(accept)}),
            200,
            f"get manifest {reference} from {repo}",
        )
        return resp.body, resp.headers.get("content-type", ""), resp.headers.get("docker-content-digest", "")

    def manifest_exists(self, repo: str, reference: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
        return resp.status == 200

    def delete_manifest(self, repo: str, digest: str) -> None:
        """Delete a manifest by digest: its revision link and every tag on it go."""
        self._expect(self.request("DELETE", f"/v2/{repo}/manifests/{digest}"), 202, f"delete {digest} in {repo}")
        self.ledger.record(ManifestDelete(repo, digest))

    def catalog(self) -> list[str]:
        """Every repository the registry lists, following its pagination (at most 1000 a page)."""
        names: list[str] = []
        target: str | None = "/v2/_catalog?n=1000"
        while target:
            resp = self._expect(self.request("GET", target), 200, "catalog")
            names += resp.json().get("repositories") or []
            link = re.match(r"<([^>]+)>", resp.headers.get("link", ""))
            target = link.group(1) if link else None
        return names

    def tags(self, repo: str) -> list[str]:
        resp = self._expect(self.request("GET", f"/v2/{repo}/tags/list"), 200, f"tags of {repo}")
        return list(resp.json().get("tags") or [])

    # Building and pushing content

    def _put(self, repo: str, body: bytes, media_type: str, tags: Iterable[str]) -> Pushed:
        pushed = Pushed(body, media_type)
        tags = list(tags)
        if not tags:
            self.put_manifest(repo, pushed.digest, body, media_type)
        for tag in tags:
            self.put_manifest(repo, tag, body, media_type)
        return pushed

    def image(
        self,
        repo: str,
        layers: Sequence[bytes],
        config: Mapping[str, Any] | bytes,
        oci: bool = False,
        push: bool = True,
        *,
        tags: Iterable[str] = (),
        media_type_field: bool = True,
        push_blobs: bool = True,
    ) -> Pushed:
        """Build a Docker schema2 or OCI image manifest; push its blobs, then it (by tag, else by digest).

        `push=False` only builds it. `push_blobs=False` pushes the manifest but
        assumes its blobs are already linked into `repo`.
        `media_type_field=False` leaves out the optional OCI `mediaType` field.
        """
        config_bytes = config if isinstance(config, bytes) else canonical_json(config)
        config_type, layer_type, media_type = (
            (OCI_CONFIG, OCI_LAYER, OCI_MANIFEST) if oci else (DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST)
        )
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "config": descriptor(config_type, config_bytes),
            "layers": [descriptor(layer_type, layer) for layer in layers],
        }
        if media_type_field or not oci:
            doc["mediaType"] = media_type
        body = canonical_json(doc)
        if not push:
            return Pushed(body, media_type)
        if push_blobs:
            for blob in (*layers, config_bytes):
                self.push_blob(repo, blob)
        return self._put(repo, body, media_type, tags)

    def index(
        self,
        repo: str,
        children: Sequence[tuple[Pushed, str]],
        oci: bool = True,
        push: bool = True,
        *,
        tags: Iterable[str] = (),
        media_type_field: bool = True,
    ) -> Pushed:
        """Build and push an OCI index (or Docker list) of pushed `(child, "os/arch[/variant]")` pairs."""
        media_type = OCI_INDEX if oci else DOCKER_LIST
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "manifests": [child.descriptor(platform=platform(p)) for child, p in children],
        }
        if media_type_field or not oci:
            doc["mediaType"] = media_type
        body = canonical_json(doc)
        if not push:
            return Pushed(body, media_type)
        return self._put(repo, body, media_type, tags)

    def manifest_list(self, repo: str, children: Sequence[tuple[Pushed, str]], *, tags: Iterable[str] = ()) -> Pushed:
        """A Docker manifest list; see `index`."""
        return self.index(repo, children, oci=False, tags=tags)

    def artifact(
        self,
        repo: str,
        subject: Pushed | None,
        artifact_type: str,
        payload: bytes,
        layer_media_type: str,
        *,
        tags: Iterable[str] = (),
        annotations: Mapping[str, str] | None = None,
        push: bool = True,
    ) -> Pushed:
        """Build an OCI 1.1 artifact (empty config, one layer, `subject`); push it by digest unless tagged."""
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": descriptor(OCI_EMPTY, EMPTY_JSON),
            "layers": [descriptor(layer_media_type, payload)],
        }
        if subject is not None:
            doc["subject"] = subject.descriptor()
        if annotations:
            doc["annotations"] = dict(annotations)
        body = canonical_json(doc)
        if not push:
            return Pushed(body, OCI_MANIFEST)
        self.push_blob(repo, EMPTY_JSON)
        self.push_blob(repo, payload)
        return self._put(repo, body, OCI_MANIFEST, tags)


# --------------------------------------------------------------------------
# The server


class Registry(Client):
    """A `docker-registry serve` process on 127.0.0.1 storing under `root`; a context manager and a client."""

    def __init__(
        self,
        root: Path | str,
        ledger: Ledger | None = None,
        *,
        schema1: bool = False,
        log_level: str = "warn",
        binary: str | None = None,
        startup_timeout: float = 15.0,
        storage: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        auth: Sequence[str] | None = None,
        login: Login | None = None,
        delete: bool = True,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        """`storage` replaces the filesystem driver, `auth` is its `auth:` block, `delete=False` disables deletion
        and `tls` serves HTTPS (see `config_text`); `env` is the server's environment; `login` answers its
        challenges."""
        super().__init__("127.0.0.1", 0, ledger, login, https=tls is not None)
        self.auth = list(auth) if auth is not None else None
        self.delete = delete
        self.tls = tls
        self.root = Path(root).resolve()
        self.schema1 = schema1
        self.log_level = log_level
        self.binary = binary or registry_binary()
        self.startup_timeout = startup_timeout
        self.storage = list(storage) if storage is not None else None
        self.env = dict(env) if env is not None else None
        self._tmp: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        assert self._tmp is not None, "registry not started"
        return self._tmp / "config.yml"

    @property
    def log_path(self) -> Path:
        assert self._tmp is not None, "registry not started"
        return self._tmp / "registry.log"

    def log(self) -> str:
        return read_log(lambda: self.log_path)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.binary is None:
            raise RegistryError("docker-registry is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="registry-"))
        # Another process may take the free port before the registry binds it; try a few.
        for _attempt in range(3):
            self.port = free_port()
            self.config_path.write_text(
                config_text(
                    self.root,
                    self.port,
                    log_level=self.log_level,
                    schema1=self.schema1,
                    storage=self.storage,
                    auth=self.auth,
                    delete=self.delete,
                    tls=self.tls,
                ),
                encoding="utf-8",
            )
            with self.log_path.open("wb") as log:
                self._proc = subprocess.Popen(
                    [self.binary, "serve", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=self.env,
                )
            if self._wait_ready():
                return
            if "address already in use" not in self.log():
                break
        log_text = self.log()
        self.stop()
        raise RegistryError(
            f"docker-registry did not answer 200 on {self.base_url}/v2/ within "
            f"{self.startup_timeout:.0f}s; its log:\n{log_text}"
        )

    def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                # Without credentials: a registry with authentication answers 401 once it serves.
                if self._request("GET", "/v2/", None, None).status in (200, 401):
                    return True
            time.sleep(0.05)
        self._terminate()
        return False

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        terminate(proc)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its configuration; the storage stays."""
        self._terminate()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def garbage_collect(self, dry_run: bool = True, delete_untagged: bool = False) -> str:
        """Run garbage-collect on this registry's storage (stop the server first unless `dry_run`)."""
        return garbage_collect(
            self.root, dry_run, delete_untagged, binary=self.binary, storage=self.storage, env=self.env
        )


# --------------------------------------------------------------------------
# Pulling, as a client would


def pull(client: Client, repo: str, reference: str) -> list[str]:
    """Pull `reference` from `repo` as a client would and return what failed (nothing when it pulls).

    The manifest is fetched with every Accept type and its digest verified;
    index children are fetched by digest, recursively; every config and layer
    is fetched and its digest and size verified.
    """
    problems: list[str] = []
    resp = client.request("GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ", ".join(MANIFEST_ACCEPT)})
    if resp.status != 200:
        return [f"{repo}@{reference}: manifest: HTTP {resp.status}"]
    digest = sha256(resp.body)
    served = resp.headers.get("docker-content-digest")
    if served != digest or (reference.startswith("sha256:") and reference != digest):
        return [f"{repo}@{reference}: manifest served as {served}, its bytes are {digest}"]
    doc = json.loads(resp.body)
    if "manifests" in doc:
        for child in doc["manifests"]:
            problems += pull(client, repo, child["digest"])
        return problems
    blobs = [(layer["blobSum"], None) for layer in doc.get("fsLayers", [])]
    blobs += [(d["digest"], d.get("size")) for d in (doc.get("config"), *doc.get("layers", [])) if d]
    for blob, size in blobs:
        got = client.request("GET", f"/v2/{repo}/blobs/{blob}")
        if got.status != 200:
            problems.append(f"{repo}@{reference}: blob {blob}: HTTP {got.status}")
        elif sha256(got.body) != blob or (size is not None and len(got.body) != size):
            problems.append(f"{repo}@{reference}: blob {blob}: served {len(got.body)} bytes of {sha256(got.body)}")
    return problems


def pull_all(client: Client) -> dict[tuple[str, str], list[str]]:
    """Pull every tag of every repository in the catalog; map (repository, tag) to what failed."""
    out: dict[tuple[str, str], list[str]] = {}
    for repo in client.catalog():
        resp = client.request("GET", f"/v2/{repo}/tags/list")
        # A repository holding only blobs or uploads has no tags to list.
        if resp.status == 404:
            continue
        client._expect(resp, 200, f"tags of {repo}")
        for tag in resp.json().get("tags") or []:
            out[(repo, tag)] = pull(client, repo, tag)
    return out
