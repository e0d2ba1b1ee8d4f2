"""Read the registry's own YAML configuration: where its storage is (a local root, an S3 or GCS bucket, an Azure
container), as it would."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage_audit.core.errors import UsageError
from storage_audit.storage.base import AccessError, read_regular
from storage_audit.storage.bucket import S3Location, S3Settings
from storage_audit.storage.clouds import AzureSettings, GCSSettings

FILESYSTEM_DEFAULT_ROOT = "/var/lib/registry"
"""The filesystem driver's rootdirectory when the configuration names none."""
CONFIG_LIMIT = 1 << 20
"""Bytes a registry configuration may take: a few kilobytes in practice; a bigger file is something else."""
MAX_NODES = 100_000
"""YAML nodes a configuration may expand to through its aliases: a few hundred in practice."""
MAX_S3_KEY = 1024
"""Bytes of the longest key S3 stores: a rootdirectory longer than that can hold no registry."""

# Keys under `storage:` that configure the registry, not a driver (distribution's configuration.Storage.Type).
_NOT_DRIVERS = frozenset({"maintenance", "cache", "delete", "redirect", "tag"})
_ENV_PREFIX = "REGISTRY_STORAGE"


@dataclass(frozen=True)
class FilesystemStorage:
    """The `filesystem` driver: ROOT is its rootdirectory."""

    root: Path


@dataclass(frozen=True)
class S3Storage:
    """The `s3`, `gcs` or `azure` driver: the bucket (container) and rootdirectory, and how to reach them."""

    location: S3Location
    settings: S3Settings | GCSSettings | AzureSettings


StorageConfig = FilesystemStorage | S3Storage


class ConfigError(UsageError):
    """A file that cannot be a registry configuration; `reason` says why, in a few words."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"registry configuration {path}: {reason}")
        self.reason = reason


def read_document(path: Path) -> Any:
    """The YAML document in the file `path`, read as the registry reads it; ConfigError when it cannot be one.

    ROOT names the file, perhaps through a symbolic link (a mounted ConfigMap is one), which is followed;
    the file itself is read as every file of the tool: regular, never blocking, at most CONFIG_LIMIT bytes.
    """
    import yaml

    try:
        data = read_regular(os.path.realpath(path), CONFIG_LIMIT)
    except AccessError as exc:
        raise ConfigError(path, exc.reason) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "not UTF-8 text") from exc
    try:
        return yaml.load(text, Loader=_loader())  # a safe loader, its aliases capped
    except yaml.YAMLError as exc:
        # The parser's own message quotes the offending lines, which may hold the secret key.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(path, f"not valid YAML{where}: {problem}") from exc
    except _Expanding as exc:
        raise ConfigError(path, str(exc)) from exc
    except RecursionError as exc:
        raise ConfigError(path, "YAML nested too deeply") from exc


class _Expanding(Exception):
    """YAML aliases that would make more of a document than a configuration holds."""


def _children(node: Any) -> list[Any]:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_size(top: Any) -> int:
    """The nodes the document `top` makes once each alias stands for a copy of what it names; _Expanding past
    MAX_NODES, or for an alias inside what it names."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[Any, bool]] = [(top, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            sizes[key] = min(MAX_NODES + 1, 1 + sum(sizes[id(child)] for child in _children(node)))
            open_.discard(key)
            if sizes[key] > MAX_NODES:
                raise _Expanding(f"its YAML aliases expand it to more than {MAX_NODES:,} nodes")
        elif key not in sizes:
            if key in open_:
                raise _Expanding("a YAML alias inside what it names (recursive aliases)")
            open_.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return sizes[id(top)]


@functools.cache
def _loader() -> type:
    """The safe loader (libyaml's where built in, which also caps nesting), sizing a document before making it."""
    import yaml

    base: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[valid-type, misc]
        """Refuses a document whose aliases would make it bigger than any configuration."""

        def get_single_data(self) -> Any:
            node = self.get_single_node()
            if node is None:
                return None
            _expanded_size(node)
            return self.construct_document(node)

    return Loader


def _env_value(text: str) -> Any:
    """An environment value as the registry reads it: YAML, so `false` is a boolean."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # a safe loader, its aliases capped
    except (yaml.YAMLError, _Expanding, RecursionError):
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


def _text(params: Mapping[str, Any], key: str, driver: str = "s3") -> str | None:
    """The string `params[key]` (an integer stands for its digits), None when absent or empty; UsageError for a list,
    a mapping or any other YAML value that no string is, and for a NUL, which no path or name holds."""
    value = params.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UsageError(f"storage.{driver}.{key} is {_what(value)}, not a string")
    text = str(value)
    if "\0" in text:
        raise UsageError(f"storage.{driver}.{key} holds a NUL character")
    return text


def _what(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a YAML {type(value).__name__}"


def _root(params: Mapping[str, Any], driver: str) -> str:
    root = (_text(params, "rootdirectory", driver) or "").strip("/")
    if len(f"{root}/docker/registry/v2/".encode()) >= MAX_S3_KEY:
        raise UsageError(f"storage.{driver}.rootdirectory is longer than a key can be ({MAX_S3_KEY} bytes)")
    return root


def _gcs(params: Mapping[str, Any]) -> S3Storage:
    import json

    bucket = _text(params, "bucket", "gcs")
    if bucket is None:
        raise UsageError("the registry configuration's gcs storage names no bucket")
    credentials = params.get("credentials")
    if credentials is not None and not isinstance(credentials, dict):
        raise UsageError("storage.gcs.credentials is not a mapping (a service account key's fields)")
    return S3Storage(
        S3Location(bucket, _root(params, "gcs"), "gs"),
        GCSSettings(
            keyfile=_text(params, "keyfile", "gcs"),
            credentials=json.dumps(credentials) if credentials else None,
        ),
    )


def _azure(params: Mapping[str, Any]) -> S3Storage:
    container = _text(params, "container", "azure")
    if container is None:
        raise UsageError("the registry configuration's azure storage names no container")
    return S3Storage(
        S3Location(container, _root(params, "azure"), "az"),
        AzureSettings(
            account_name=_text(params, "accountname", "azure"),
            account_key=_text(params, "accountkey", "azure"),
            realm=_text(params, "realm", "azure"),
            endpoint=_text(params, "serviceurl", "azure"),
        ),
    )


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
    if len(f"{root}/docker/registry/v2/".encode()) >= MAX_S3_KEY:
        raise UsageError(f"storage.s3.rootdirectory is longer than an S3 key can be ({MAX_S3_KEY} bytes)")
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
    doc = read_document(path)
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
        return FilesystemStorage(Path(_text(params, "rootdirectory", driver) or FILESYSTEM_DEFAULT_ROOT))
    if driver == "s3":
        return _s3(params)
    if driver == "gcs":
        return _gcs(params)
    if driver == "azure":
        return _azure(params)
    raise UsageError(
        f"storage driver {driver!r} is not supported: storage-audit reads the filesystem, s3, gcs and azure drivers"
    )
