"""Registry credentials: from Docker's config.json (`auths`, a credential helper), or a user name with a password
from stdin or the environment; a password is never on the command line, never printed, never stored."""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from storage_audit.core.errors import UsageError

PASSWORD_ENV = "STORAGE_AUDIT_REGISTRY_PASSWORD"
"""The environment variable a password may come from (with `--username`)."""
HELPER_TIMEOUT = 30.0
"""Seconds a credential helper may take (one that prompts would otherwise hang the command)."""


class CredentialsError(UsageError):
    """Credentials that were asked for and cannot be had: a config file that cannot be read, a helper that fails."""


@dataclass(frozen=True)
class Credentials:
    """A user name and its secret; the secret never appears in a repr, so it never reaches a log or a traceback."""

    username: str
    password: str = field(repr=False)


def registry_host(url: str) -> str:
    """The `host[:port]` Docker's config.json keys a registry by."""
    return urlsplit(url).netloc


def docker_config_path(env: dict[str, str] | None = None) -> Path:
    """Docker's config.json: in $DOCKER_CONFIG, else ~/.docker."""
    env = dict(os.environ) if env is None else env
    folder = env.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def from_docker_config(host: str, path: Path) -> Credentials | None:
    """The credentials Docker would use for `host`: its credential helper (`credHelpers`), else its `auths` entry,
    else the `credsStore`; None when the file does not exist or names none. Raises CredentialsError."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"{path}: cannot read Docker's configuration: {exc.__class__.__name__}") from exc
    if not isinstance(doc, dict):
        raise CredentialsError(f"{path}: not a Docker configuration (no JSON object)")
    helpers = doc.get("credHelpers") or {}
    if isinstance(helpers, dict) and isinstance(helpers.get(host), str):
        return _from_helper(helpers[host], host)
    entry = _auths_entry(doc.get("auths") or {}, host)
    if entry is not None:
        found = _from_auth_entry(entry, host, path)
        if found is not None:
            return found
    store = doc.get("credsStore")
    if isinstance(store, str) and store:
        return _from_helper(store, host)
    return None


def _auths_entry(auths: Any, host: str) -> dict[str, Any] | None:
    """The `auths` entry of `host`, whether keyed `host` or as a URL (`https://host/v1/`, as `docker login` did)."""
    if not isinstance(auths, dict):
        return None
    for key, entry in auths.items():
        if isinstance(entry, dict) and (key == host or urlsplit(key).netloc == host):
            return entry
    return None


def _from_auth_entry(entry: dict[str, Any], host: str, path: Path) -> Credentials | None:
    if isinstance(entry.get("username"), str) and isinstance(entry.get("password"), str):
        return Credentials(entry["username"], entry["password"])
    auth = entry.get("auth")
    if not isinstance(auth, str) or not auth:
        return None
    try:
        user, sep, password = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise CredentialsError(f"{path}: the auth of {host} is not base64 of user:password") from exc
    if not sep:
        raise CredentialsError(f"{path}: the auth of {host} is not base64 of user:password")
    return Credentials(user, password)


def _from_helper(helper: str, host: str) -> Credentials | None:
    """Ask `docker-credential-<helper> get` (the server's name on stdin, JSON on stdout); None when it has none."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"], input=host, capture_output=True, text=True, timeout=HELPER_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"credential helper {program}: {exc.__class__.__name__}") from exc
    if proc.returncode != 0:
        # The helper protocol's answer for a server it holds nothing for; its stderr may hold secrets: not shown.
        if "credentials not found" in (proc.stdout + proc.stderr).lower():
            return None
        raise CredentialsError(f"credential helper {program} failed (exit {proc.returncode})")
    try:
        doc = json.loads(proc.stdout)
        return Credentials(str(doc["Username"]), str(doc["Secret"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(f"credential helper {program}: not the JSON of Username and Secret") from exc


def resolve_credentials(
    url: str,
    username: str | None = None,
    password: str | None = None,
    env: dict[str, str] | None = None,
) -> Credentials | None:
    """The credentials for the registry at `url`: `username` with `password` (else the environment's
    STORAGE_AUDIT_REGISTRY_PASSWORD), else Docker's config.json; None for an anonymous registry."""
    env = dict(os.environ) if env is None else env
    if username is not None:
        secret = password if password is not None else env.get(PASSWORD_ENV)
        if secret is None:
            raise CredentialsError(f"--username needs the password on stdin (--password-stdin) or in {PASSWORD_ENV}")
        return Credentials(username, secret)
    if password is not None:
        raise CredentialsError("a password was given without --username")
    return from_docker_config(registry_host(url), docker_config_path(env))


__all__ = [
    "PASSWORD_ENV",
    "Credentials",
    "CredentialsError",
    "docker_config_path",
    "from_docker_config",
    "registry_host",
    "resolve_credentials",
]
