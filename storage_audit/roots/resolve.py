"""Resolve ROOT once, into what it designates: a local tree, a bucket or a snapshot (from a path, a URL or a config)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storage_audit.core.errors import UsageError
from storage_audit.inventory.schema import METADATA_FILE
from storage_audit.storage.base import LocalStorage

if TYPE_CHECKING:
    from storage_audit.storage.bucket import S3Location, S3Settings
    from storage_audit.storage.s3 import S3Storage

V2_BELOW_ROOT = Path("docker/registry/v2")


class RootError(UsageError):
    """ROOT is neither a registry root, its `v2` directory, nor a snapshot, or cannot be read."""


@dataclass(frozen=True)
class RemoteOptions:
    """How to read a tree in object storage: the manifest cache (default directory: None) and a request rate limit."""

    cache: bool = True
    cache_dir: Path | None = None
    max_requests_per_second: float | None = None


@dataclass(frozen=True)
class LocalTree:
    """A `v2` directory on disk, to scan: with worker processes where the tree is big enough."""

    storage: LocalStorage

    @property
    def location(self) -> str:
        return self.storage.location


@dataclass(frozen=True)
class Bucket:
    """A `v2` tree under a prefix of an S3 bucket, to scan from its listing."""

    storage: S3Storage

    @property
    def location(self) -> str:
        return self.storage.location


@dataclass(frozen=True)
class Snapshot:
    """A whole snapshot directory written by `scan -o`, to read."""

    path: Path

    @property
    def location(self) -> str:
        return str(self.path)


Tree = LocalTree | Bucket
"""A storage tree: what can be scanned, and where a plan applies."""
Root = LocalTree | Bucket | Snapshot
"""What ROOT designates, resolved once: each command matches on it, and never looks at ROOT's text again."""


def _reason(exc: OSError) -> str:
    """The system's words for `exc`, as a message continues them: `permission denied`."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _is(path: Path, test: Callable[[int], bool]) -> bool:
    try:
        return test(os.stat(path).st_mode)
    except OSError:
        return False


def resolve(root: Path | str, remote: RemoteOptions | None = None) -> Root:
    """Find the tree or snapshot that `root` designates; raises RootError, or UsageError for a bad URL or config.

    `root` is an `s3://BUCKET[/ROOTDIRECTORY]` URL, the registry's configuration
    file, a registry root directory, its `v2` directory, or a snapshot.
    """
    from storage_audit.storage.bucket import is_s3_url

    text = str(root)
    if is_s3_url(text):
        from storage_audit.storage.bucket import S3Settings, parse_s3_url

        return _bucket(parse_s3_url(text), S3Settings(), remote)
    path = Path(root)
    # os.stat and os.scandir, not Path.exists: those call a symbolic link loop
    # "missing" and raise PermissionError where ROOT cannot be read.
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise RootError(f"{root}: {_reason(exc)}") from exc
    if stat.S_ISREG(mode) and _is_yaml_mapping(path):
        return _configured(path, remote)
    if not stat.S_ISDIR(mode):
        raise RootError(f"{root}: not a directory, nor a registry configuration file")
    try:
        with os.scandir(path) as entries:
            names = {entry.name for entry in entries}
    except OSError as exc:
        raise RootError(f"{root}: cannot read: {_reason(exc)}") from exc
    if METADATA_FILE in names and _is(path / METADATA_FILE, stat.S_ISREG):
        return Snapshot(path.resolve())
    if V2_BELOW_ROOT.parts[0] in names and _is(path / V2_BELOW_ROOT, stat.S_ISDIR):
        return _local((path / V2_BELOW_ROOT).resolve())
    if path.resolve().name == "v2" or any(
        name in names and _is(path / name, stat.S_ISDIR) for name in ("repositories", "blobs")
    ):
        return _local(path.resolve())
    raise RootError(
        f"{root}: not a registry root (no {V2_BELOW_ROOT}), not a v2 directory, "
        f"and not a snapshot written by `storage-audit scan -o`"
    )


def _is_yaml_mapping(path: Path) -> bool:
    """Whether the file `path` could be a registry configuration: YAML text whose top is a mapping."""
    import yaml

    try:
        return isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def _local(v2: Path) -> LocalTree:
    return LocalTree(LocalStorage(v2))


def _configured(path: Path, remote: RemoteOptions | None) -> Tree:
    """The storage the registry configuration file `path` names."""
    from storage_audit.roots.config import FilesystemStorage, read_registry_config

    config = read_registry_config(path)
    if isinstance(config, FilesystemStorage):
        if config.root.is_file():
            raise RootError(f"{path}: its filesystem rootdirectory {config.root} is not a directory")
        found = resolve(config.root, remote)
        if isinstance(found, Snapshot):
            raise RootError(f"{path}: its filesystem rootdirectory {config.root} is a snapshot, not a registry root")
        return found
    return _bucket(config.location, config.settings, remote)


def _bucket(location: S3Location, settings: S3Settings, remote: RemoteOptions | None) -> Bucket:
    from dataclasses import replace

    from storage_audit.storage.bucket import S3Bucket
    from storage_audit.storage.s3 import ManifestCache, S3Storage, default_cache_dir

    remote = remote or RemoteOptions()
    if remote.max_requests_per_second is not None:
        settings = replace(settings, max_requests_per_second=remote.max_requests_per_second)
    cache = ManifestCache(remote.cache_dir or default_cache_dir()) if remote.cache else None
    return Bucket(S3Storage(S3Bucket(location, settings), cache))
