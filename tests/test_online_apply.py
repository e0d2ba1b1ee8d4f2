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
from tests.token_server import ISSUER, SERVICE, TokenServer

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
    multi: c-old -> C, d -> D, then c-new -> C again (so c-old goes, and C stays)
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
    assert tags == {("app", "old"), ("idx", "v1"), ("multi", "c-old")}

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
    assert "left 1 remove-tag for the storage phase" in err and "the plan keeps that manifest" in err
    assert "remove-blob for the storage phase" in err
    assert "Now make the registry read-only and run `storage-audit apply" in err
    # Online, the manifests are gone while the registry serves; what the plan keeps is not.
    for repo, name in (("app", "A"), ("idx", "X"), ("idx", "x1"), ("idx", "x2")):
        assert not reg.manifest_exists(repo, img[name].digest), name
    assert reg.manifest_exists("app", img["U"].digest)  # tagged since planning: skipped
    assert not reg.manifest_exists("idx", "v1")  # went with X
    assert reg.manifest_exists("multi", "c-old")  # its manifest stays: left for the storage phase
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
        ("multi", "c-old"),
    ):
        assert reg.request("GET", f"/v2/{repo}/manifests/{reference}").status == 404, (repo, reference)
    # A's layer went in the storage phase; U's, kept by its new tag, did not.
    assert reg.request("GET", f"/v2/app/blobs/{sha256(layer('A'))}").status == 404
    assert reg.request("GET", f"/v2/app/blobs/{sha256(layer('U'))}").status == 200

    journal = next(tmp_path.glob("plan.json.*.journal")).read_text()
    texts = [everything(planned), everything(online), everything(offline), plan.read_text(), journal, log, reg.log()]
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
