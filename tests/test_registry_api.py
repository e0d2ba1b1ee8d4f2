"""Where registry credentials come from, and what the API client refuses before it sends anything."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from storage_audit.core.errors import UsageError
from storage_audit.registry_api.client import ClientOptions, RegistryClient, base_url
from storage_audit.registry_api.credentials import (
    Credentials,
    CredentialsError,
    from_docker_config,
    resolve_credentials,
)
from tests.conftest import cli

HOST = "registry.example:5000"


def config(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(doc))
    return path


def auth(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


def helper(tmp_path: Path, name: str, script: str) -> Path:
    """A credential helper `docker-credential-NAME`, a shell script, in the folder it returns."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    program = folder / f"docker-credential-{name}"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return folder


def test_auths_by_host_or_by_url(tmp_path: Path) -> None:
    by_host = config(tmp_path, {"auths": {HOST: {"auth": auth("ci", "p:w")}}})
    assert from_docker_config(HOST, by_host) == Credentials("ci", "p:w")
    by_url = config(tmp_path, {"auths": {f"https://{HOST}/v1/": {"auth": auth("ci", "x")}}})
    assert from_docker_config(HOST, by_url) == Credentials("ci", "x")
    assert from_docker_config("other:5000", by_url) is None
    assert from_docker_config(HOST, tmp_path / "absent.json") is None


def test_a_garbled_auth_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = config(tmp_path, {"auths": {HOST: {"auth": "bm90LWEtcGFpcg=="}}})  # "not-a-pair"
    with pytest.raises(CredentialsError, match="not base64 of user:password") as caught:
        from_docker_config(HOST, path)
    assert "not-a-pair" not in str(caught.value)


def test_credential_helpers_per_host_and_as_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    helper(tmp_path, "pass", 'read server; echo "{\\"Username\\": \\"u-$server\\", \\"Secret\\": \\"s\\"}"\n')
    folder = helper(tmp_path, "empty", "echo 'credentials not found in native keychain'; exit 1\n")
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    per_host = config(tmp_path, {"credHelpers": {HOST: "pass"}, "auths": {HOST: {"auth": auth("a", "b")}}})
    assert from_docker_config(HOST, per_host) == Credentials(f"u-{HOST}", "s")
    store = config(tmp_path, {"credsStore": "pass"})
    assert from_docker_config(HOST, store) == Credentials(f"u-{HOST}", "s")
    assert from_docker_config(HOST, config(tmp_path, {"credsStore": "empty"})) is None
    with pytest.raises(CredentialsError, match="docker-credential-missing"):
        from_docker_config(HOST, config(tmp_path, {"credsStore": "missing"}))


def test_username_takes_its_password_from_the_environment_only_when_none_was_given() -> None:
    url = f"https://{HOST}"
    env = {"STORAGE_AUDIT_REGISTRY_PASSWORD": "from-env"}
    assert resolve_credentials(url, "ci", None, env) == Credentials("ci", "from-env")
    assert resolve_credentials(url, "ci", "from-stdin", env) == Credentials("ci", "from-stdin")
    with pytest.raises(CredentialsError, match="--password-stdin"):
        resolve_credentials(url, "ci", None, {})
    assert "from-env" not in repr(Credentials("ci", "from-env"))


def test_what_the_client_refuses(tmp_path: Path) -> None:
    secret = Credentials("ci", "pw")
    with pytest.raises(UsageError, match="must not hold credentials"):
        base_url("https://ci:pw@registry.example")
    with pytest.raises(UsageError, match="loopback"):
        RegistryClient("https://registry.example", None, ClientOptions(insecure=True))
    with pytest.raises(UsageError, match="plain http"):
        RegistryClient("http://registry.example:5000", secret)
    with pytest.raises(UsageError, match="not a file"):
        RegistryClient("https://registry.example", secret, ClientOptions(ca_file=tmp_path / "none.pem"))
    assert RegistryClient("http://127.0.0.1:5000/v2/", secret).url == "http://127.0.0.1:5000"
    assert RegistryClient("https://[::1]:5000", None, ClientOptions(insecure=True)).url == "https://[::1]:5000"


def test_registry_options_need_the_registry(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text("{}")
    ran = cli("apply", plan, "--username", "ci", "--yes")
    assert ran.exit_code == 2
    assert "are for --registry-url" in ran.stderr
    ran = cli("apply", plan, "--registry-url", "http://127.0.0.1:1", "--password-stdin", "--yes", input="pw\n")
    assert ran.exit_code == 2
    assert "--password-stdin needs --username" in ran.stderr
