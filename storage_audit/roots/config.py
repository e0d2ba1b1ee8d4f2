"""Read the registry's own YAML configuration: where its storage is (a local root or an S3 bucket), as it would."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_audit.core.errors import UsageError
from storage_audit.storage.bucket import S3Location, S3Settings

FILESYSTEM_DEFAULT_ROOT = "/var/lib/registry"
"""The filesystem driver's rootdirectory when the configuration names none."""

# Keys under `storage:` that configure the registry, not a driver (distribution's configuration.Storage.Type).
_NOT_DRIVERS = frozenset({"maintenance", "cache", "delete", "redirect", "tag"})
_ENV_PREFIX = "REGISTRY_STORAGE"


@dataclass(frozen=True)
class FilesystemStorage:
    """The `filesystem` driver: ROOT is its rootdirectory."""

    root: Path


@dataclass(frozen=True)
class S3Storage:
    """The `s3` driver: the bucket and rootdirectory, and how to reach them."""

    location: S3Location
    settings: S3Settings


StorageConfig = FilesystemStorage | S3Storage


def _load(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read registry configuration {path}: {exc.__class__.__name__}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The parser's own message quotes the offending lines, which may hold the secret key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise UsageError(f"registry configuration {path} is not valid YAML{where}: {problem}") from exc


def _env_value(text: str) -> Any:
    """An environment value as the registry reads it: YAML, so `false` is a boolean."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_environment(storage: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """`REGISTRY_STORAGE=<driver>` and `REGISTRY_STORAGE_<DRIVER>_<KEY>=...`, as the registry applies them."""
    storage = {k: (dict(v) if isinstance(v, dict) else v) for k, v in storage.items()}
    chosen = env.get(_ENV_PREFIX)
    if chosen:
        chosen = chosen.strip().lower()
        drivers = [k for k in storage if k not in _NOT_DRIVERS]
        # A different driver named in the environment replaces the file's, with none of its parameters.
        if drivers != [chosen]:
            storage = {k: v for k, v in storage.items() if k in _NOT_DRIVERS}
            storage[chosen] = {}
    for name, value in sorted(env.items()):
        if not name.startswith(_ENV_PREFIX + "_"):
            continue
        driver, _, key = name[len(_ENV_PREFIX) + 1 :].lower().partition("_")
        if driver in _NOT_DRIVERS or not key:
            continue
        params = storage.get(driver)
        if not isinstance(params, dict):
            params = storage[driver] = {}
        params[key] = _env_value(value)
    return storage


def _text(params: Mapping[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is None or value == "":
        return None
    return str(value)


def _flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise UsageError(f"storage.s3.{key} must be true or false, not {text!r}")


def _s3(params: Mapping[str, Any]) -> S3Storage:
    bucket = _text(params, "bucket")
    if bucket is None:
        raise UsageError("the registry configuration's s3 storage names no bucket")
    secure = _flag(params, "secure", True)
    endpoint = _text(params, "regionendpoint")
    if endpoint is not None and "://" not in endpoint:
        # The registry's SDK puts the scheme in front of a bare host according to `secure`.
        endpoint = ("https://" if secure else "http://") + endpoint
    access_key, secret_key = _text(params, "accesskey"), _text(params, "secretkey")
    if access_key is None or secret_key is None:
        # The driver falls back to the standard AWS chain unless it is given both.
        access_key = secret_key = None
    root = (_text(params, "rootdirectory") or "").strip("/")
    return S3Storage(
        S3Location(bucket, root),
        S3Settings(
            region=_text(params, "region"),
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            session_token=_text(params, "sessiontoken") if access_key else None,
        ),
    )


def read_registry_config(path: Path, env: Mapping[str, str] | None = None) -> StorageConfig:
    """Where the registry configured by `path` keeps its storage; UsageError for what it cannot be audited on."""
    env = os.environ if env is None else env
    doc = _load(path)
    if not isinstance(doc, dict):
        raise UsageError(f"registry configuration {path} is not a YAML mapping")
    storage = doc.get("storage") or {}
    if not isinstance(storage, dict):
        raise UsageError(f"registry configuration {path}: `storage` is not a mapping")
    storage = _apply_environment(storage, env)
    drivers = sorted(k for k in storage if k not in _NOT_DRIVERS)
    if not drivers:
        raise UsageError(f"registry configuration {path} names no storage driver")
    if len(drivers) > 1:
        raise UsageError(f"registry configuration {path} names several storage drivers: {', '.join(drivers)}")
    driver = drivers[0]
    params = storage[driver] or {}
    if not isinstance(params, dict):
        raise UsageError(f"registry configuration {path}: storage.{driver} is not a mapping")
    if driver == "filesystem":
        return FilesystemStorage(Path(_text(params, "rootdirectory") or FILESYSTEM_DEFAULT_ROOT))
    if driver == "s3":
        return _s3(params)
    raise UsageError(f"storage driver {driver!r} is not supported: storage-audit reads the filesystem and s3 drivers")
