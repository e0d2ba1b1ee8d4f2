"""The two-phase clean-up against the real registry with authentication on: `apply --registry-url` deletes the
plan's manifests through the API while the registry serves (and pushes go on), then `apply` on storage sweeps the
rest with the registry stopped; every kept tag still pulls, every deleted one is gone, the collector finds nothing
more, and no secret appears anywhere."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Ran, cli
from tests.registry_harness import (
    Login,
    Pushed,
    Registry,
    garbage_collect,
    htpasswd_auth,
    parse_gc_output,
    pull,
    require_registry,
    sha256,
    token_auth,
)
from tests.s3_harness import RegistryInBucket, SeaweedS3, raw_keys, s3_garbage_collect, s3_registry
from tests.token_server import ISSUER, SERVICE, TokenServer, self_signed

pytestmark = pytest.mark.registry

USER = "deployer"
PASSWORD = "pw-Zq7!k3-never-shown"


@dataclass
class Authenticated:
    """A registry with authentication on, its credentials, and whatever secrets it handed out."""

    registry: Registry
    kind: str
    tokens: TokenServer | None = None
    logs: list[str] = field(default_factory=list)

    def secrets(self) -> list[str]:
        encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return [PASSWORD, encoded, *(self.tokens.issued if self.tokens is not None else [])]


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authenticated]:
    require_registry()
    base = tmp_path_factory.mktemp("htpasswd")
    auth = htpasswd_auth(base / "htpasswd", {USER: PASSWORD})
    with Registry(base / "root", auth=auth, login=Login(USER, PASSWORD)) as registry:
        yield Authenticated(registry, "htpasswd")


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authenticated]:
    require_registry()
    base = tmp_path_factory.mktemp("token")
    # Tokens that live a few seconds: the online phase outlives some, and must fetch them again.
    tokens = TokenServer({USER: PASSWORD}, lifetime=3)
    tokens.start()
    try:
        auth = token_auth(tokens.realm, SERVICE, ISSUER, tokens.write_bundle(base / "token.pem"))
        with Registry(base / "root", auth=auth, login=Login(USER, PASSWORD)) as registry:
            yield Authenticated(registry, "token", tokens)
    finally:
        tokens.stop()


def v2(registry: Registry) -> Path:
    return registry.root / "docker" / "registry" / "v2"


@dataclass
class World:
    """What was pushed before planning, by name."""

    images: dict[str, Pushed]


def layer(name: str) -> bytes:
    return f"layer of {name}".encode()


def push_world(reg: Registry) -> World:
    """Three repositories whose newest two tags stay under `--keep-last 2`, pushed in this order:

    app:   old -> A, mid -> B, new -> E, and U pushed by digest (untagged)
    idx:   v1 -> index X (x1, x2), v2 -> index Y (y1, y2), v3 -> image Z
    multi: c-old -> C, d -> D, then c-new -> C again (c-old is beyond the two, but stays with C, which c-new keeps)
    """
    images: dict[str, Pushed] = {}

    def image(repo: str, name: str, tags: list[str]) -> Pushed:
        images[name] = reg.image(repo, [layer(name)], {"name": name}, oci=True, tags=tags)
        return images[name]

    image("app", "A", ["old"])
    image("app", "B", ["mid"])
    image("app", "E", ["new"])
    image("app", "U", [])
    x1, x2 = image("idx", "x1", []), image("idx", "x2", [])
    images["X"] = reg.index("idx", [(x1, "linux/amd64"), (x2, "linux/arm64")], tags=["v1"])
    y1, y2 = image("idx", "y1", []), image("idx", "y2", [])
    images["Y"] = reg.index("idx", [(y1, "linux/amd64"), (y2, "linux/arm64")], tags=["v2"])
    image("idx", "Z", ["v3"])
    image("multi", "C", ["c-old"])
    image("multi", "D", ["d"])
    reg.put_manifest("multi", "c-new", images["C"].body, images["C"].media_type)
    return World(images)


class Pusher(threading.Thread):
    """Pushes images to repositories of its own until stopped: the registry keeps serving during the online phase."""

    def __init__(self, reg: Registry) -> None:
        super().__init__(daemon=True)
        self.reg = reg
        self.pushed: list[tuple[str, str, str]] = []
        self.errors: list[BaseException] = []
        self.halt = threading.Event()

    def run(self) -> None:
        n = 0
        try:
            while not self.halt.is_set() or n < 3:
                repo, tag = f"busy/{n % 3}", f"t{n}"
                pushed = self.reg.image(repo, [layer(f"busy {n}")], {"busy": n}, tags=[tag])
                self.pushed.append((repo, tag, pushed.digest))
                n += 1
        except BaseException as exc:
            self.errors.append(exc)


def everything(ran: Ran) -> str:
    return ran.stdout + ran.stderr


def apply_through(registry: Registry, plan: Path, *options: str, **kwargs: Any) -> Ran:
    """`apply PLAN --registry-url URL --yes OPTIONS...`; `kwargs` as `cli` takes them (env, input)."""
    return cli("apply", plan, "--registry-url", registry.base_url, "--yes", *options, **kwargs)


def online_apply(auth: Authenticated, plan: Path, tmp_path: Path) -> Ran:
    """`apply --registry-url` with the credentials as a user would give them: the password on stdin (htpasswd), or
    `docker login`'s config.json (token)."""
    if auth.kind == "htpasswd":
        return apply_through(auth.registry, plan, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    config = tmp_path / "docker-config"
    config.mkdir(exist_ok=True)
    entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    (config / "config.json").write_text(json.dumps({"auths": {f"127.0.0.1:{auth.registry.port}": entry}}))
    return apply_through(auth.registry, plan, env={"DOCKER_CONFIG": str(config)})


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_two_phase_clean_up_while_the_registry_serves(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    auth: Authenticated = request.getfixturevalue(f"{kind}_registry")
    reg = auth.registry
    world = push_world(reg)
    img = world.images
    plan = tmp_path / "plan.json"
    planned = cli("plan", v2(reg), "--keep-last", "2", "--delete-untagged", "--min-age", "0s", "-o", plan, expect=[0])
    doc = json.loads(plan.read_text())
    revisions = {(a["repository"], a["digest"]) for a in doc["actions"] if a["op"] == "remove-revision"}
    assert revisions == {
        ("app", img["A"].digest),
        ("app", img["U"].digest),
        ("idx", img["X"].digest),
        ("idx", img["x1"].digest),
        ("idx", img["x2"].digest),
    }
    tags = {(a["repository"], a["tag"]) for a in doc["actions"] if a["op"] == "remove-tag"}
    # c-old shares its manifest with c-new, which stays: the plan keeps it with it.
    assert tags == {("app", "old"), ("idx", "v1")}

    # After planning: `old` moves to a new image F, and U gets a tag: both must be noticed online.
    moved = reg.image("app", [layer("F")], {"name": "F"}, oci=True, tags=["old"])
    reg.put_manifest("app", "rescued", img["U"].body, img["U"].media_type)

    pusher = Pusher(reg)
    pusher.start()
    try:
        online = online_apply(auth, plan, tmp_path)
    finally:
        pusher.halt.set()
        pusher.join(timeout=60)
    assert not pusher.errors, pusher.errors
    assert online.exit_code == 0, everything(online)
    err = online.stderr
    assert f"it names {moved.digest} now, not {img['A'].digest} as planned" in err
    assert "remove-tag for the storage phase" not in err
    assert "remove-blob for the storage phase" in err
    assert "Now make the registry read-only and run `storage-audit apply" in err
    # Online, the manifests are gone while the registry serves; what the plan keeps is not.
    for repo, name in (("app", "A"), ("idx", "X"), ("idx", "x1"), ("idx", "x2")):
        assert not reg.manifest_exists(repo, img[name].digest), name
    assert reg.manifest_exists("app", img["U"].digest)  # tagged since planning: skipped
    assert not reg.manifest_exists("idx", "v1")  # went with X
    assert reg.manifest_exists("multi", "c-old")
    # Run again, the online phase finds its own work done in the journal, and leaves the rest as before.
    again = online_apply(auth, plan, tmp_path)
    assert again.exit_code == 0, everything(again)
    assert "removed " not in again.stderr and "remove-tag for the storage phase" not in again.stderr
    log = reg.log()

    # The storage phase, with the registry stopped: the journal resumes where the online phase ended.
    reg.stop()
    try:
        offline = cli("apply", plan, "--yes", expect=[0])
        gc = garbage_collect(reg.root, dry_run=True)
    finally:
        reg.start()
    assert parse_gc_output(gc)[:2] == (set(), set()), gc

    kept = {
        ("app", "old"): moved.digest,
        ("app", "mid"): img["B"].digest,
        ("app", "new"): img["E"].digest,
        ("app", "rescued"): img["U"].digest,
        ("idx", "v2"): img["Y"].digest,
        ("idx", "v3"): img["Z"].digest,
        ("multi", "d"): img["D"].digest,
        ("multi", "c-new"): img["C"].digest,
        ("multi", "c-old"): img["C"].digest,
        **{(repo, tag): digest for repo, tag, digest in pusher.pushed},
    }
    for (repo, tag), digest in kept.items():
        assert pull(reg, repo, tag) == [], (repo, tag)
        assert pull(reg, repo, digest) == [], (repo, digest)
    for repo, reference in (
        ("app", img["A"].digest),
        ("idx", img["X"].digest),
        ("idx", img["x1"].digest),
        ("idx", img["x2"].digest),
        ("idx", "v1"),
    ):
        assert reg.request("GET", f"/v2/{repo}/manifests/{reference}").status == 404, (repo, reference)
    # A's layer went in the storage phase; U's, kept by its new tag, did not.
    assert reg.request("GET", f"/v2/app/blobs/{sha256(layer('A'))}").status == 404
    assert reg.request("GET", f"/v2/app/blobs/{sha256(layer('U'))}").status == 200

    journal = next(tmp_path.glob("plan.json.*.journal")).read_text()
    texts = [
        everything(planned),
        everything(online),
        everything(again),
        everything(offline),
        plan.read_text(),
        journal,
        log,
        reg.log(),
    ]
    for secret in auth.secrets():
        assert not any(secret in text for text in texts)


@pytest.fixture(scope="module")
def undeleting_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """A registry with htpasswd and deletion off (as it ships), holding one untagged manifest, and a plan of it."""
    require_registry()
    base = tmp_path_factory.mktemp("undeleting")
    auth = htpasswd_auth(base / "htpasswd", {USER: PASSWORD})
    with Registry(base / "root", auth=auth, login=Login(USER, PASSWORD), delete=False) as registry:
        registry.image("app", [layer("kept")], {"name": "kept"}, tags=["v1"])
        registry.image("app", [layer("loose")], {"name": "loose"})
        plan = base / "plan.json"
        cli("plan", v2(registry), "--delete-untagged", "--min-age", "0s", "-o", plan, expect=[0])
        yield registry, plan


def test_a_registry_that_does_not_delete_is_refused_naming_the_setting(
    undeleting_registry: tuple[Registry, Path],
) -> None:
    registry, plan = undeleting_registry
    loose = sha256(registry.image("app", [layer("loose")], {"name": "loose"}, push=False).body)
    ran = apply_through(registry, plan, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    assert ran.exit_code == 2
    assert ran.stderr.splitlines() == [
        "storage-audit: error: the registry refuses deletion (HTTP 405): set storage.delete.enabled to true in its "
        "configuration and restart it, or apply the plan on storage with the registry read-only"
    ]
    assert registry.manifest_exists("app", loose)
    assert not list(plan.parent.glob("plan.json.*.journal"))


def test_wrong_credentials_are_one_line_and_never_shown(undeleting_registry: tuple[Registry, Path]) -> None:
    registry, plan = undeleting_registry
    wrong = "not-the-password-9f2"
    ran = apply_through(registry, plan, "--username", USER, env={"STORAGE_AUDIT_REGISTRY_PASSWORD": wrong})
    assert ran.exit_code == 2
    assert ran.stderr.splitlines() == [
        f"storage-audit: error: {registry.base_url} refused the credentials (HTTP 401 on GET /v2/)"
    ]
    anonymous = apply_through(registry, plan, env={"DOCKER_CONFIG": str(plan.parent)})
    assert anonymous.exit_code == 2
    assert "asks for credentials: give --username" in anonymous.stderr
    assert wrong not in everything(ran) and PASSWORD not in everything(ran)


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_the_http_script_authenticates_from_the_environment(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """`plan --format http` writes no secret; run with the credentials in the environment, it deletes what the plan
    deletes through an authenticating registry. (After the two-phase test in this module, which asserts the
    collector finds nothing: the blobs this leaves are the collector's.)"""
    auth: Authenticated = request.getfixturevalue(f"{kind}_registry")
    reg = auth.registry
    kept = reg.image("script/app", [layer("script kept")], {"name": "script kept"}, tags=["v1"])
    loose = reg.image("script/app", [layer("script loose")], {"name": "script loose"})
    script = tmp_path / "plan.sh"
    cli(
        "plan", v2(reg), "--delete-untagged", "--repository", "script/*", "--min-age", "0s", "--format", "http",
        "--registry-url", reg.base_url, "-o", script, "-q", expect=[0],
    )  # fmt: skip
    env = {**os.environ, "REGISTRY_USER": USER, "STORAGE_AUDIT_REGISTRY_PASSWORD": PASSWORD}
    ran = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.splitlines() == [f"deleted script/app@{loose.digest}"]
    assert not reg.manifest_exists("script/app", loose.digest)
    assert pull(reg, "script/app", "v1") == [] and reg.manifest_exists("script/app", kept.digest)
    texts = [script.read_text(), ran.stdout, ran.stderr]
    for secret in auth.secrets():
        assert not any(secret in text for text in texts)
    unauthenticated = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=120)
    assert unauthenticated.returncode != 0
    assert "refused the credentials (HTTP 401)" in unauthenticated.stderr or "no token" in unauthenticated.stderr


def test_tokens_are_per_repository_and_fetched_again_when_they_expire(token_registry: Authenticated) -> None:
    import time

    import jwt

    from storage_audit.registry_api.client import RegistryClient
    from storage_audit.registry_api.credentials import Credentials

    assert token_registry.tokens is not None
    reg, issued = token_registry.registry, token_registry.tokens.issued
    pushed = reg.image("tokens/a", [layer("tokens a")], {"name": "tokens a"}, tags=["v1"])
    client = RegistryClient(reg.base_url, Credentials(USER, PASSWORD))

    def scopes_since(n: int) -> list[list[dict[str, object]]]:
        return [jwt.decode(t, options={"verify_signature": False})["access"] for t in issued[n:]]

    before = len(issued)
    assert client.manifest_digest("tokens/a", "v1") == pushed.digest
    assert client.manifest_digest("tokens/a", pushed.digest) == pushed.digest  # the same token, still fresh
    assert client.manifest_digest("tokens/b", "v1") is None
    wanted = [{"type": "repository", "name": "tokens/a", "actions": ["pull", "delete"]}]
    assert scopes_since(before) == [wanted, [{**wanted[0], "name": "tokens/b"}]]
    time.sleep(3)  # the fixture's tokens live 3 seconds
    again = len(issued)
    assert client.manifest_digest("tokens/a", "v1") == pushed.digest
    assert scopes_since(again) == [wanted]


def test_a_tag_pushed_onto_a_planned_manifest_since_the_scan_keeps_it(htpasswd_registry: Authenticated) -> None:
    """The fresh scan before the revisions vetoes what a tag reaches then; a tag pushed after it is seen live, right
    before the DELETE, which would remove it with the manifest."""
    from storage_audit.cleanup.apply import read_plan
    from storage_audit.cleanup.plan import Op
    from storage_audit.cleanup.removers import plan_storage, remover_for
    from storage_audit.cleanup.removers.registry import RegistryRemover
    from storage_audit.registry_api.client import RegistryClient
    from storage_audit.registry_api.credentials import Credentials

    reg = htpasswd_registry.registry
    loose = reg.image("live/app", [layer("live loose")], {"name": "live loose"})
    path = reg.root.parent / "live-plan.json"
    cli("plan", v2(reg), "--delete-untagged", "--repository", "live/*", "--min-age", "0s", "-o", path, expect=[0])
    plan, _ = read_plan(path)
    [revision] = [a for a in plan.actions if a.op is Op.REMOVE_REVISION]
    remover = RegistryRemover(
        RegistryClient(reg.base_url, Credentials(USER, PASSWORD)), remover_for(plan_storage(plan))
    )
    remover.check(plan)
    [now] = remover.look(plan, [revision])
    assert now is not None and now.changed is None
    reg.put_manifest("live/app", "late", loose.body, loose.media_type)
    [now] = remover.look(plan, [revision])
    assert now is not None and now.changed == "deleting it would delete the tags late, which the plan keeps"


class FlakyProxy:
    """A proxy on 127.0.0.1 in front of a registry that answers every other request 503 or 429 itself, and notes
    when each request came: a registry behind a load balancer on a bad day."""

    def __init__(self, upstream: Registry) -> None:
        import http.client
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        self.times: list[float] = []
        self.refused = 0
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def relay(self) -> None:
                import time

                with lock:
                    proxy.times.append(time.monotonic())
                    refuse = len(proxy.times) % 2 == 1
                if refuse:
                    proxy.refused += 1
                    self.send_response(503 if proxy.refused % 2 else 429)
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                self.send_response(resp.status)
                for name, value in resp.getheaders():
                    if name.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)
                conn.close()

            do_GET = do_HEAD = do_DELETE = relay

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_refusals_of_a_busy_registry_are_tried_again_at_the_rate_asked(
    htpasswd_registry: Authenticated, tmp_path: Path
) -> None:
    reg = htpasswd_registry.registry
    loose = reg.image("flaky/app", [layer("flaky loose")], {"name": "flaky loose"})
    kept = reg.image("flaky/app", [layer("flaky kept")], {"name": "flaky kept"}, tags=["v1"])
    plan = tmp_path / "plan.json"
    cli("plan", v2(reg), "--delete-untagged", "--repository", "flaky/*", "--min-age", "0s", "-o", plan, expect=[0])
    proxy = FlakyProxy(reg)
    try:
        ran = cli(
            "apply", plan, "--registry-url", proxy.url, "--username", USER, "--yes", "--max-requests-per-second", "10",
            env={"STORAGE_AUDIT_REGISTRY_PASSWORD": PASSWORD},
        )  # fmt: skip
    finally:
        proxy.stop()
    assert ran.exit_code == 0, ran.stderr
    assert f"removed repositories/flaky/app/_manifests/revisions/sha256/{loose.digest[7:]}/link" in ran.stderr
    assert not reg.manifest_exists("flaky/app", loose.digest) and pull(reg, "flaky/app", "v1") == []
    assert reg.manifest_exists("flaky/app", kept.digest)
    assert proxy.refused >= 4  # ping, probe, the HEAD and the DELETE each met a 503 or a 429 first
    # Retries go through urllib3 below the rate limit: the requests the client starts (each refused once first)
    # are paced at 10 a second. Over the whole run, so that one request slowed on its way does not count.
    starts = proxy.times[::2]
    assert len(starts) >= 5 and starts[-1] - starts[0] >= 0.8 * (len(starts) - 1) / 10


def serving_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, in PEM files."""
    from cryptography.hazmat.primitives import serialization

    key, cert = self_signed("127.0.0.1", loopback=True)
    certificate, private = folder / "registry.pem", folder / "registry.key"
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificate, private


def test_tls_is_verified_against_the_ca_file_or_skipped_on_loopback_only(tmp_path: Path) -> None:
    require_registry()
    certificate, key = serving_certificate(tmp_path)
    auth = htpasswd_auth(tmp_path / "htpasswd", {USER: PASSWORD})
    login = Login(USER, PASSWORD)
    with Registry(tmp_path / "root", auth=auth, login=login, tls=(certificate, key)) as reg:
        loose = reg.image("tls/app", [layer("tls loose")], {"name": "tls loose"})
        plan = tmp_path / "plan.json"
        cli("plan", v2(reg), "--delete-untagged", "--min-age", "0s", "-o", plan, expect=[0])
        env = {"STORAGE_AUDIT_REGISTRY_PASSWORD": PASSWORD}
        assert reg.base_url.startswith("https://127.0.0.1:")
        unverified = apply_through(reg, plan, "--username", USER, "--dry-run", env=env)
        assert unverified.exit_code == 2
        [line] = unverified.stderr.splitlines()
        assert "CERTIFICATE_VERIFY_FAILED" in line and line.endswith("with --ca-file)")
        for trust in (["--ca-file", str(certificate)], ["--insecure"]):
            ran = apply_through(reg, plan, "--username", USER, "--dry-run", *trust, env=env)
            assert ran.exit_code == 0, ran.stderr
            assert (
                f"would remove repositories/tls/app/_manifests/revisions/sha256/{loose.digest[7:]}/link" in ran.stderr
            )
        assert reg.manifest_exists("tls/app", loose.digest)


def test_a_tag_whose_manifest_the_plan_keeps_is_left_to_the_storage_phase(
    htpasswd_registry: Authenticated, tmp_path: Path
) -> None:
    """The API removes a tag only by deleting its manifest, with every other tag on it: a tag the plan removes from
    a manifest it keeps (here an index child, tagged by itself, of a tagged index) is left, with the reason, to the
    storage phase, which removes the tag alone."""
    reg = htpasswd_registry.registry
    c1 = reg.image("alone/x", [layer("alone c1")], {"name": "alone c1"}, oci=True, tags=["c1-old"])
    c2 = reg.image("alone/x", [layer("alone c2")], {"name": "alone c2"}, oci=True)
    index = reg.index("alone/x", [(c1, "linux/amd64"), (c2, "linux/arm64")], tags=["v1"])
    link = v2(reg) / "repositories/alone/x/_manifests/tags/c1-old/current/link"
    hour_before = link.stat().st_mtime - 3600
    os.utime(link, (hour_before, hour_before))
    plan = tmp_path / "plan.json"
    cli("plan", v2(reg), "--repository", "alone/*", "--keep-last", "1", "--min-age", "0s", "-o", plan, expect=[0])
    actions = json.loads(plan.read_text())["actions"]
    assert [(a["op"], a["tag"]) for a in actions if a["op"] in ("remove-tag", "remove-revision")] == [
        ("remove-tag", "c1-old")
    ]

    online = online_apply(htpasswd_registry, plan, tmp_path)
    assert online.exit_code == 0, everything(online)
    assert "remove-tag for the storage phase" in online.stderr
    assert "the API removes a tag only by deleting its manifest" in online.stderr
    assert reg.manifest_exists("alone/x", "c1-old")  # online, nothing was deleted

    reg.stop()
    try:
        cli("apply", plan, "--yes", expect=[0])
    finally:
        reg.start()
    assert reg.request("GET", "/v2/alone/x/manifests/c1-old").status == 404
    for reference in ("v1", index.digest, c1.digest, c2.digest):
        assert pull(reg, "alone/x", reference) == [], reference


def test_two_phases_on_a_bucket(s3_server: SeaweedS3, tmp_path: Path) -> None:
    """The registry's `s3` driver writes into a bucket: the online phase deletes the plan's manifests through the API
    (htpasswd on), the storage phase sweeps the bucket with the registry stopped, and the collector then finds
    nothing more."""
    require_registry()
    auth = htpasswd_auth(tmp_path / "htpasswd", {USER: PASSWORD})
    rootdirectory = "/online-two-phases"
    bucket = RegistryInBucket(s3_server, rootdirectory)
    with s3_registry(s3_server, rootdirectory, auth=auth, login=Login(USER, PASSWORD)) as reg:
        old = reg.image("app", [layer("bucket old")], {"name": "bucket old"}, oci=True, tags=["old"])
        new = reg.image("app", [layer("bucket new")], {"name": "bucket new"}, oci=True, tags=["new"])
        loose = reg.image("app", [layer("bucket loose")], {"name": "bucket loose"}, oci=True)
        link = "repositories/app/_manifests/tags/old/current/link"
        assert bucket.prefix + link in raw_keys(s3_server, bucket.prefix)
        plan = tmp_path / "plan.json"
        env = s3_server.environment()
        planned = cli(
            "plan",
            bucket.url,
            "--only-tag",
            "^old$",
            "--older-than",
            "0s",
            "--delete-untagged",
            "--min-age",
            "0s",
            "-o",
            plan,
            env=env,
        )
        assert planned.exit_code == 0, everything(planned)
        revisions = {a["digest"] for a in json.loads(plan.read_text())["actions"] if a["op"] == "remove-revision"}
        assert revisions == {old.digest, loose.digest}

        online = apply_through(reg, plan, "--username", USER, "--password-stdin", input=PASSWORD + "\n", env=env)
        assert online.exit_code == 0, everything(online)
        assert "remove-blob for the storage phase" in online.stderr
        assert not reg.manifest_exists("app", old.digest) and not reg.manifest_exists("app", loose.digest)
        # Online, only manifests went: their layers are still in the bucket.
        blob = f"blobs/sha256/{sha256(layer('bucket old'))[7:9]}/{sha256(layer('bucket old'))[7:]}/data"
        assert bucket.prefix + blob in raw_keys(s3_server, bucket.prefix)

        reg.stop()
        try:
            offline = cli("apply", plan, "--yes", env=env)
            assert offline.exit_code == 0, everything(offline)
            gc = s3_garbage_collect(s3_server, rootdirectory, delete_untagged=True)
        finally:
            reg.start()
        assert parse_gc_output(gc)[:2] == (set(), set()), gc
        assert bucket.prefix + blob not in raw_keys(s3_server, bucket.prefix)
        assert pull(reg, "app", "new") == [] and pull(reg, "app", new.digest) == []
        for reference in ("old", old.digest, loose.digest):
            assert reg.request("GET", f"/v2/app/manifests/{reference}").status == 404, reference
        texts = [everything(planned), everything(online), everything(offline), plan.read_text(), reg.log()]
        encoded = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        for secret in (PASSWORD, encoded, s3_server.secret_key):
            assert not any(secret in text for text in texts), secret
